/**
 * Tests of the microbenchmarks (bench/): the plug-ins' bus-bandwidth factors and counts against nccl-tests'
 * definitions, the #wrong check (planted corruptions, unit and end to end), the JSON schema and validator,
 * the SVG plot, the ring cost model fit, and short end-to-end sweeps of `tpkit bench collectives` at world
 * sizes 1 and 2 (the CLI re-launches itself). The layers benchmark is tested last, against the layer classes
 * of lib/index.ts.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';

import { launch } from '../lib/distributed/launcher';
import { COLLECTIVES, COLLECTIVE_NAMES, type CollCounts, type CollParams, type CollectiveName } from '../bench/collectives';
import { inputValue, matches, reduceValues } from '../bench/data';
import { averageBusBw, countWrong, formatSize, parseSize, sizeSweep, timeOp, type CollRow } from '../bench/harness';
import { fitRingModel, ringAllReduceTime } from '../bench/model';
import { renderCollectivesPlot, renderLineChart } from '../bench/plot';
import { COLLECTIVES_SCHEMA, GEMM_SCHEMA, LAYERS_SCHEMA, validate, type CollectivesResult } from '../bench/schema';
import { gemmCases, gemmValueA, gemmValueB, gemmWrong } from '../bench/gemm';
import { layerGemms } from '../bench/shapes';
import { countOutside, loadLayerClasses } from '../bench/layers';
import { parseProgressLine, PROGRESS_MARK } from '../bench/progress';
import { runTorchAllReducePeer } from '../bench/peers/torch';
import { runBench } from './helpers/spawn_collect';

const CORRUPT_FIXTURE = path.join(__dirname, 'fixtures', 'bench_corrupt.js');

function tmpDir(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-bench-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Data lines of the nccl-tests table (not starting with #). */
function tableRows(stdout: string): string[][] {
  return stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((c) => c.length === 13 && /^\d+$/.test(c[0]!) && ['float', 'half', 'bfloat16'].includes(c[2]!));
}

/** A minimal XML well-formedness check: one root, every tag closed in order, attributes quoted. */
function wellFormedXml(text: string): string | null {
  const body = text.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<!--[\s\S]*?-->/g;
  let last = 0;
  let roots = 0;
  let m: RegExpExecArray | null;
  while ((m = tag.exec(body)) !== null) {
    const between = body.slice(last, m.index);
    if (/[<>]/.test(between)) return `stray markup before offset ${m.index}: ${between.slice(0, 40)}`;
    if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(between)) return `unescaped & near offset ${m.index}`;
    last = tag.lastIndex;
    if (m[0].startsWith('<!--')) continue;
    const [, close, name, , selfClose] = m;
    if (close) {
      if (stack.pop() !== name) return `</${name}> does not close the open tag`;
    } else {
      if (stack.length === 0) roots++;
      if (!selfClose) stack.push(name!);
    }
  }
  if (body.slice(last).trim() !== '') return 'text after the root element';
  if (stack.length) return `unclosed <${stack.join('>, <')}>`;
  return roots === 1 ? null : `${roots} root elements`;
}

// ---------------------------------------------------------------------------------------------------------
// Invalid input, each with its exact message

test('parseSize rejects what is not a size', (t) => {
  t.throws(() => parseSize('12X', '--maxbytes'), { instanceOf: RangeError, message: 'Expected size such as 8, 4K, 64M or 1G for --maxbytes but received 12X of type string' });
  t.throws(() => parseSize('-8'), { instanceOf: RangeError, message: 'Expected size such as 8, 4K, 64M or 1G for size but received -8 of type string' });
});

test('sizeSweep rejects a bad factor and an empty range', (t) => {
  t.throws(() => sizeSweep(8, 64, 0), { instanceOf: RangeError, message: 'Expected integer ≥ 1 for stepfactor but received 0' });
  t.throws(() => sizeSweep(64, 8, 2), { instanceOf: RangeError, message: 'minbytes 64 is larger than maxbytes 8' });
});

test('the CLI rejects bad flags with exit code 2 and the flag named', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['collectives', '-n', '0'], /option '-n, --iters <n>' argument '0' is invalid\. Expected positive integer but received 0\./],
    [['collectives', '-e', '12X'], /option '-e, --maxbytes <size>' argument '12X' is invalid\. Expected size such as 8, 4K, 64M or 1G but received 12X\./],
    [['collectives', '--op', 'all_to_all'], /option '--op <name>' argument 'all_to_all' is invalid\. Allowed choices are all_reduce, all_gather, reduce_scatter, broadcast, alltoall, sendrecv\./],
    [['collectives', '--peers', 'mpich'], /Expected a comma-separated list of native, torch, mpi \(or all, none\) but received mpich\./],
    [['gemm', '--peers', 'mpi'], /Expected a comma-separated list of native, torch \(or all, none\) but received mpi\./],
    [['collectives', '-b', '1M', '-e', '1K'], /--minbytes 1048576 is larger than --maxbytes 1024/],
    [['collectives', '--op', 'broadcast', '--root', '2', '--nproc', '2'], /tpkit bench: Expected root in \[0, 2\) for --root but received 2/],
    [['gemm', '--tokens', '1,x'], /Expected comma-separated positive integers but received 1,x\./],
    [['nonsense'], /unknown command 'nonsense'/],
  ];
  for (const [args, message] of cases) {
    const r = await runBench(args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
  }
});

// ---------------------------------------------------------------------------------------------------------
// Plug-ins: nccl-tests' definitions (docs/PERFORMANCE.md, src/*.cu getCollByteCount / GetBw)

test('busbw factors are nccl-tests\' formulas', (t) => {
  const expected: Record<CollectiveName, (n: number) => number> = {
    all_reduce: (n) => (2 * (n - 1)) / n,
    all_gather: (n) => (n - 1) / n,
    reduce_scatter: (n) => (n - 1) / n,
    alltoall: (n) => (n - 1) / n,
    broadcast: () => 1,
    sendrecv: () => 1,
  };
  t.deepEqual([...COLLECTIVE_NAMES].sort(), Object.keys(expected).sort());
  for (const name of COLLECTIVE_NAMES) {
    for (const n of [1, 2, 3, 4, 8, 16]) {
      t.is(COLLECTIVES[name].busBwFactor(n), expected[name](n), `${name} at ${n} ranks`);
    }
  }
  t.is(COLLECTIVES.all_reduce.busBwFactor(4), 1.5);
  t.is(COLLECTIVES.all_gather.busBwFactor(4), 0.75);
});

test('counts follow nccl-tests (size = total for all_gather / reduce_scatter / alltoall)', (t) => {
  const n = 3;
  const count = 1000; // not divisible by 3: per-rank parts round down as in nccl-tests
  t.deepEqual(COLLECTIVES.all_reduce.counts(count, n), { send: 1000, recv: 1000, param: 1000 });
  t.deepEqual(COLLECTIVES.all_gather.counts(count, n), { send: 333, recv: 999, param: 333 });
  t.deepEqual(COLLECTIVES.reduce_scatter.counts(count, n), { send: 999, recv: 333, param: 333 });
  t.deepEqual(COLLECTIVES.alltoall.counts(count, n), { send: 999, recv: 999, param: 333 });
  t.deepEqual(COLLECTIVES.broadcast.counts(count, n), { send: 1000, recv: 1000, param: 1000 });
  t.deepEqual(COLLECTIVES.sendrecv.counts(count, n), { send: 1000, recv: 1000, param: 1000 });
});

test('algbw and busbw of a row follow from size and time', (t) => {
  const row: CollRow = {
    size: 1_000_000, count: 250_000, type: 'float32', redop: 'sum', root: -1, outOfPlace: null,
    inPlace: { timeUs: 500, p50Us: 480, algbw: 1_000_000 / 500 / 1e3, busbw: (1_000_000 / 500 / 1e3) * COLLECTIVES.all_reduce.busBwFactor(4), wrong: 0 },
  };
  t.is(row.inPlace!.algbw, 2); // 1 MB in 500 µs = 2 GB/s
  t.is(row.inPlace!.busbw, 3);
  t.is(averageBusBw([row, { ...row, inPlace: { ...row.inPlace!, busbw: 1 } }]), 2);
});

// ---------------------------------------------------------------------------------------------------------
// The #wrong check

/** What a correct rank would hold, from the plug-in's own reference. */
function correctOutput(name: CollectiveName, p: CollParams, c: CollCounts): Float32Array {
  const out = new Float32Array(c.recv);
  for (let j = 0; j < c.recv; j++) out[j] = COLLECTIVES[name].expected(inputValue, j, p, c);
  return out;
}

test('#wrong counts planted corruptions (every op, several ranks)', (t) => {
  for (const name of COLLECTIVE_NAMES) {
    for (const [rank, worldSize] of [[0, 1], [1, 2], [3, 4]] as const) {
      const p: CollParams = { rank, worldSize, root: 0, redop: 'sum' };
      const c = COLLECTIVES[name].counts(64, worldSize);
      const out = correctOutput(name, p, c);
      t.is(countWrong(COLLECTIVES[name], out, p, c, 'float32'), 0, `${name} ${rank}/${worldSize} clean`);
      for (const j of [0, 5, c.recv - 1]) out[j] = out[j]! + 0.5;
      t.is(countWrong(COLLECTIVES[name], out, p, c, 'float32'), 3, `${name} ${rank}/${worldSize} corrupted`);
      out[7] = NaN;
      t.is(countWrong(COLLECTIVES[name], out, p, c, 'float32'), 4, `${name} NaN counts as wrong`);
      t.is(countWrong(COLLECTIVES[name], out.subarray(0, c.recv - 2), p, c, 'float32'), 4 - 1 + 2, 'missing elements count as wrong');
    }
  }
});

test('the references are computed from the inputs alone', (t) => {
  // all_reduce on 3 ranks: element j is the sum of inputValue(r, j); alltoall: chunk r of the output comes from rank r
  const p: CollParams = { rank: 1, worldSize: 3, root: 2, redop: 'sum' };
  t.is(COLLECTIVES.all_reduce.expected(inputValue, 10, p, { send: 12, recv: 12, param: 12 }), inputValue(0, 10) + inputValue(1, 10) + inputValue(2, 10));
  t.is(COLLECTIVES.alltoall.expected(inputValue, 5, p, { send: 12, recv: 12, param: 4 }), inputValue(1, 1 * 4 + 1));
  t.is(COLLECTIVES.broadcast.expected(inputValue, 3, p, { send: 4, recv: 4, param: 4 }), inputValue(2, 3));
  t.is(COLLECTIVES.sendrecv.expected(inputValue, 3, p, { send: 4, recv: 4, param: 4 }), inputValue(0, 3));
  t.is(COLLECTIVES.reduce_scatter.expected(inputValue, 2, p, { send: 12, recv: 4, param: 4 }), inputValue(0, 6) + inputValue(1, 6) + inputValue(2, 6));
  t.is(reduceValues([3, -2, 5], 'max'), 5);
  t.is(reduceValues([3, -2, 5], 'avg'), Math.fround(6 * Math.fround(1 / 3)));
  t.true(matches(Math.fround(0.1 * 3), 0.3, 'float32'));
  t.false(matches(2, 2.001, 'float32'));
  t.true(matches(2, 2.001, 'bfloat16'));
});

test('#wrong counts a planted corruption end to end (harness under launch, 2 ranks)', async (t) => {
  let out = '';
  const stdout = new Writable({ write(chunk, _e, cb) { out += chunk.toString(); cb(); } });
  const stderr = new Writable({ write(_c, _e, cb) { cb(); } });
  const r = await launch({ nprocPerNode: 2, script: CORRUPT_FIXTURE, args: ['all_gather', '3'], stdout, stderr });
  t.is(r.exitCode, 0, r.summary);
  const line = out.split('\n').find((l) => l.startsWith('[rank0]: ['))!;
  const rows = JSON.parse(line.slice('[rank0]: '.length)) as CollRow[];
  t.is(rows.length, 2);
  for (const row of rows) {
    t.is(row.outOfPlace!.wrong, 3 * 2, `size ${row.size}: 3 corrupted elements on each of 2 ranks`);
    t.is(row.inPlace, null, 'tpkit has no in-place all-gather');
  }
});

// ---------------------------------------------------------------------------------------------------------
// Sizes, timing, model

test('sizes: nccl-tests sweep and units', (t) => {
  t.deepEqual(sizeSweep(8, 64, 2), [8, 16, 32, 64]);
  t.deepEqual(sizeSweep(8, 100, 4), [8, 32]);
  t.deepEqual(sizeSweep(1024, 1024, 1), [1024]);
  t.is(parseSize('256M'), 256 * 2 ** 20);
  t.is(parseSize('4k'), 4096);
  t.is(parseSize('1GB'), 2 ** 30);
  t.is(formatSize(64 * 2 ** 20), '64M');
  t.is(formatSize(1000), '1000');
});

test('timeOp: warm-up, barrier hook, and both waiting rules', async (t) => {
  for (const sync of ['each', 'batch'] as const) {
    const events: string[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const us = await timeOp(
      async () => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        events.push('op');
        // At least 2 ms by the monotonic clock timeOp reads: a plain setTimeout(2) may fire early, since
        // libuv schedules timers from the loop's cached time (seen in CI: 532 µs per op for three of them).
        const end = process.hrtime.bigint() + 2_000_000n;
        await new Promise<void>((r) => {
          const poll = (): void => void (process.hrtime.bigint() >= end ? r() : setTimeout(poll, 1));
          poll();
        });
        inFlight--;
        return 1;
      },
      { warmup: 2, iters: 3, sync },
      { beforeTimed: async () => void events.push('barrier'), release: () => void events.push('release') },
    );
    // each: ≥ 2 ms per op; batch: the 3 timers overlap, so ≥ 2 ms / 3 per op
    t.true(us >= (sync === 'each' ? 1900 : 600), `${sync}: ${us} µs per op`);
    t.deepEqual(events.slice(0, 5), ['op', 'release', 'op', 'release', 'barrier']);
    t.is(events.filter((e) => e === 'op').length, 5);
    t.is(maxInFlight, sync === 'batch' ? 3 : 1);
  }
});

test('ring model: the fit recovers α and β and predicts t(n) = 2(p−1)α + 2(p−1)/p·n·β', (t) => {
  const alpha = 40;
  const beta = 0.0008; // µs/byte = 1.25 GB/s
  const points = [2, 4].flatMap((p) => sizeSweep(8, 64 * 2 ** 20, 4).map((size) => ({ size, worldSize: p, timeUs: ringAllReduceTime(size, p, alpha, beta) })));
  t.is(ringAllReduceTime(1000, 4, 10, 0.001), 2 * 3 * 10 + 1.5 * 1000 * 0.001);
  const fit = fitRingModel(points)!;
  t.true(Math.abs(fit.alphaUs - alpha) / alpha < 1e-6, `α ${fit.alphaUs}`);
  t.true(Math.abs(fit.betaUsPerByte - beta) / beta < 1e-6, `β ${fit.betaUsPerByte}`);
  t.true(Math.abs(fit.bandwidthGBs - 1.25) < 1e-6);
  t.true(fit.rmsRelError < 1e-9);
  t.is(fitRingModel([{ size: 8, worldSize: 2, timeUs: 10 }]), null, 'one size cannot be fitted');
  const flat = fitRingModel([{ size: 8, worldSize: 2, timeUs: 10 }, { size: 16, worldSize: 2, timeUs: 9 }])!;
  t.true(flat.alphaUs >= 0 && flat.betaUsPerByte >= 0, 'α, β ≥ 0');
});

// ---------------------------------------------------------------------------------------------------------
// Schema, plot

test('the validator reports violations with their path', (t) => {
  const errs = validate(COLLECTIVES_SCHEMA, { schema: 'tpkit.bench.collectives/1', meta: {}, rows: [{ size: 1.5 }], avgBusBw: -1, extra: 1 });
  t.true(errs.includes('$: unexpected property extra'), errs.join('\n'));
  t.true(errs.includes('$.meta: missing required property worldSize'));
  t.true(errs.includes('$.rows[0].size: expected integer but received 1.5'));
  t.true(errs.includes('$.avgBusBw: expected ≥ 0 but received -1'));
  t.true(errs.includes('$.rows[0]: missing required property outOfPlace'));
});

test('SVG chart: well-formed, one path per series, text escaped', (t) => {
  const svg = renderLineChart(
    [
      { label: 'a <n=2> & "b"', points: [{ x: 8, y: 0 }, { x: 1024, y: 1.5 }, { x: 2 ** 20, y: 2 }] },
      { label: 'peer', points: [{ x: 8, y: 0.1 }, { x: 2 ** 20, y: 1 }], dashed: true },
    ],
    { title: 'busbw', xLabel: 'size', yLabel: 'GB/s', subtitle: 'x & y' },
  );
  t.is(wellFormedXml(svg), null);
  t.true(svg.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"'));
  t.is((svg.match(/<path /g) ?? []).length, 2);
  t.true(svg.includes('a &lt;n=2&gt; &amp; &quot;b&quot;'));
  t.true(svg.includes('>1M</text>'), 'log2 x axis labelled with sizes');
  t.throws(() => renderLineChart([{ label: 'x', points: [] }], { title: '', xLabel: '', yLabel: '' }), { instanceOf: RangeError, message: 'plot: no data points to plot' });
});

// ---------------------------------------------------------------------------------------------------------
// End to end: `tpkit bench collectives` at world sizes 1 and 2

const SWEEP = ['-b', '8', '-e', '64K', '-f', '2', '-n', '3', '-w', '1'];
const results = new Map<number, CollectivesResult>();

for (const n of [1, 2]) {
  test.serial(`collectives all_reduce -b 8 -e 64K at world size ${n}: table, footer, JSON (schema-valid), SVG`, async (t) => {
    const dir = tmpDir(t);
    const json = path.join(dir, `ar${n}.json`);
    const svg = path.join(dir, `ar${n}.svg`);
    const r = await runBench(['collectives', '--op', 'all_reduce', ...SWEEP, '--nproc', String(n), '--json', json, '--plot', svg]);
    t.is(r.code, 0, r.stderr);
    t.false(/\[rank\d\]/.test(r.stdout.split('# Avg')[0]!), 'rank 0 lines come without the launcher prefix');
    const rows = tableRows(r.stdout);
    t.is(rows.length, 14, '8 B … 64 KiB, factor 2');
    t.deepEqual(rows.map((c) => Number(c[0])), sizeSweep(8, 65536, 2));
    for (const c of rows) {
      t.deepEqual(c.slice(2, 5), ['float', 'sum', '-1']);
      t.deepEqual(c.slice(5, 9), ['N/A', 'N/A', 'N/A', 'N/A'], 'no out-of-place all-reduce in tpkit');
      t.is(c[12], '0', '#wrong in-place');
    }
    t.regex(r.stdout, /# Out of bounds values : 0 OK/);
    t.regex(r.stdout, /# Avg bus bandwidth {4}: \d+\.\d+/);
    if (n === 2) t.regex(r.stdout, /# Ring all-reduce model/);
    const result = JSON.parse(fs.readFileSync(json, 'utf8')) as CollectivesResult;
    t.deepEqual(validate(COLLECTIVES_SCHEMA, result), []);
    t.is(result.meta.worldSize, n);
    t.is(result.meta.backend, 'gloo');
    t.is(result.rows.length, 14);
    t.true(result.rows.every((row) => row.inPlace!.wrong === 0 && row.inPlace!.timeUs > 0));
    if (n === 2) t.truthy(result.model, 'model fitted at 2 ranks');
    t.is(wellFormedXml(fs.readFileSync(svg, 'utf8')), null);
    results.set(n, result);
  });
}

test.serial('plot merges several JSON results: one line per world size', async (t) => {
  const dir = tmpDir(t);
  const files = [1, 2].filter((n) => results.has(n)).map((n) => {
    const f = path.join(dir, `r${n}.json`);
    fs.writeFileSync(f, JSON.stringify(results.get(n)));
    return f;
  });
  if (files.length < 2) return t.fail('the end-to-end sweeps did not produce results');
  const out = path.join(dir, 'merged.svg');
  const r = await runBench(['plot', ...files, '--out', out]);
  t.is(r.code, 0, r.stderr);
  const svg = fs.readFileSync(out, 'utf8');
  t.is(wellFormedXml(svg), null);
  t.true(svg.includes('tpkit gloo n=1') && svg.includes('tpkit gloo n=2'));
  t.is((svg.match(/<path /g) ?? []).length, 2);
  t.is(renderCollectivesPlot([results.get(2)!]).split('<path ').length - 1, 1);
  const bad = path.join(dir, 'bad.json');
  fs.writeFileSync(bad, '{"schema":"x"}');
  const rb = await runBench(['plot', bad, '--out', out]);
  t.is(rb.code, 1);
  t.regex(rb.stderr, /is not a collectives result/);
});

for (const n of [1, 2]) {
  test(`every collective runs and checks clean at world size ${n}`, async (t) => {
    for (const op of COLLECTIVE_NAMES) {
      const r = await runBench(['collectives', '--op', op, '-b', '8', '-e', '64K', '-f', '8', '-n', '2', '-w', '1', '--nproc', String(n), '--no-model']);
      t.is(r.code, 0, `${op}: ${r.stderr}`);
      const rows = tableRows(r.stdout);
      t.true(rows.length >= 5, `${op}: ${rows.length} rows`);
      for (const c of rows) {
        const wrong = [c[8], c[12]].filter((w) => w !== 'N/A');
        t.is(wrong.length, 1, `${op}: exactly one form measured`);
        t.is(wrong[0], '0', `${op} size ${c[0]}`);
        t.is(c[4], op === 'broadcast' ? '0' : '-1');
      }
    }
  });
}

test('float16 / bfloat16 sweeps check clean, and avg/max reductions', async (t) => {
  for (const args of [['-d', 'bfloat16'], ['-d', 'float16', '--op', 'reduce_scatter'], ['-o', 'avg'], ['-o', 'max', '--op', 'reduce_scatter']]) {
    const r = await runBench(['collectives', ...args, '-b', '64', '-e', '4K', '-f', '8', '-n', '2', '-w', '1', '--nproc', '2', '--no-model']);
    t.is(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stdout, /# Out of bounds values : 0 OK/, args.join(' '));
  }
});

test('progress lines round-trip; peers are skipped with a reason', async (t) => {
  t.deepEqual(parseProgressLine(`[rank0]: ${PROGRESS_MARK}{"done":3,"total":9,"label":"64K"}`), { done: 3, total: 9, label: '64K' });
  t.is(parseProgressLine('#  8 2 float'), null);
  const torch = await runTorchAllReducePeer({ worldSize: 2, minBytes: 8, maxBytes: 64, stepFactor: 2, iters: 1, warmup: 0, threads: 1, env: { ...process.env, TPKIT_BENCH_PYTHON: 'tpkit-no-such-python' } });
  t.is(torch.status.status, 'skipped');
  t.regex(torch.status.reason!, /tpkit-no-such-python cannot be started/);
  t.is(torch.cells.size, 0);
});

// ---------------------------------------------------------------------------------------------------------
// GEMM

test('layer GEMM shapes are Llama-3\'s (and split per TP rank)', (t) => {
  t.deepEqual(layerGemms('llama3-8b').map((l) => [l.name, l.n, l.k]), [
    ['llama3-8b.qkv_proj', 6144, 4096],
    ['llama3-8b.o_proj', 4096, 4096],
    ['llama3-8b.gate_up_proj', 28672, 4096],
    ['llama3-8b.down_proj', 4096, 14336],
  ]);
  t.deepEqual(layerGemms('llama3-70b', 4).map((l) => [l.n, l.k]), [[2560, 8192], [8192, 2048], [14336, 8192], [8192, 7168]]);
  t.throws(() => layerGemms('llama3-8b', 5), { instanceOf: RangeError, message: 'llama3-8b qkv output size 6144 is not divisible by tensor parallel size 5' });
  const cases = gemmCases({ minSize: 256, maxSize: 8192, models: ['llama3-8b'], tokens: [1, 16, 512, 4096], tp: 1 });
  t.is(cases.filter((c) => c.name === 'square').length, 6);
  t.is(cases.length, 6 + 16);
  t.deepEqual(gemmCases({ minSize: 256, maxSize: 1024, models: [], tokens: [1], tp: 1, maxGflop: 1 }).map((c) => c.m), [256, 512], '--max-gflop 1 drops 1024³ (2.1 GFLOP)');
  const shape = { m: 5, n: 7, k: 9, transB: false };
  const c = new Float32Array(5 * 7);
  for (let i = 0; i < 5; i++) for (let j = 0; j < 7; j++) for (let k = 0; k < 9; k++) c[i * 7 + j]! += gemmValueA(i, k) * gemmValueB(k, j);
  t.is(gemmWrong(shape, c), 0);
  t.is(gemmWrong(shape, c.map((v) => v + 1)), 16, 'all 16 sampled elements are checked');
});

test('gemm: short run, exact check, schema-valid JSON', async (t) => {
  const dir = tmpDir(t);
  const json = path.join(dir, 'gemm.json');
  const r = await runBench(['gemm', '--min-size', '64', '--max-size', '256', '--models', 'none', '-n', '2', '-w', '1', '--json', json]);
  t.is(r.code, 0, r.stderr);
  const result = JSON.parse(fs.readFileSync(json, 'utf8')) as { rows: { m: number; wrong: number; tflops: number }[] };
  t.deepEqual(validate(GEMM_SCHEMA, result), []);
  t.deepEqual(result.rows.map((x) => x.m), [64, 128, 256]);
  t.true(result.rows.every((x) => x.wrong === 0 && x.tflops > 0));
});

// ---------------------------------------------------------------------------------------------------------
// Layers (last: the layer classes are the newest part of the library)

test('layers: the sampled-output check counts outliers against the row scale', (t) => {
  t.is(countOutside([1, 2, 3], [1, 2, 3]), 0);
  t.is(countOutside([1, 2.001, NaN], [1, 2, 3]), 2);
});

test('layers: Column→Row block at TP 1 and 2, latency and comm share, schema-valid JSON', async (t) => {
  const classes = loadLayerClasses();
  if (typeof classes === 'string') {
    t.log(`layer classes unavailable: ${classes}`);
    return t.pass();
  }
  const dir = tmpDir(t);
  const json = path.join(dir, 'layers.json');
  const r = await runBench(['layers', '--tp', '1,2', '--hidden', '64', '--intermediate', '256', '--tokens', '1,32', '-n', '3', '-w', '1', '--json', json]);
  t.is(r.code, 0, r.stderr);
  const result = JSON.parse(fs.readFileSync(json, 'utf8')) as { rows: { tp: number; tokens: number; phase: string; commUs: number; commShare: number; wrong: number }[] };
  t.deepEqual(validate(LAYERS_SCHEMA, result), []);
  t.deepEqual(result.rows.map((x) => [x.tp, x.tokens, x.phase]), [[1, 1, 'decode'], [1, 32, 'prefill'], [2, 1, 'decode'], [2, 32, 'prefill']]);
  for (const x of result.rows) {
    t.is(x.wrong, 0);
    if (x.tp === 1) t.is(x.commUs, 0, 'no all-reduce at TP 1');
    else t.true(x.commUs > 0 && x.commShare > 0 && x.commShare <= 1.0001, `share ${x.commShare}`);
  }
});
