/**
 * `tpkit plan` (lib/plan): the course notes' figures reproduced from the formulas; weights and KV cache per
 * GPU against what tpkit's sharded layers really hold (full-scale Llama-3 8B / 70B layer shapes at TP
 * 1/2/4/8, and real small models loaded on 1, 2 and 4 ranks through test/fixtures/dist_plan.ts); layouts
 * the heads cannot divide; the fill-drain simulator against (p−1)/(p+m−1); `--calibrate` with a real bench
 * result; the command's flags and JSON.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import fs, { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear } from '../lib/layers/linear';
import { VocabParallelEmbedding } from '../lib/layers/embedding';
import { ProcessGroup } from '../lib';
import { parseLlamaConfig, type LlamaConfig } from '../lib/models/config';
import { partitionLayers } from '../lib/models/llama';
import {
  BUILTIN_MODELS, GPUS, LINKS, allReduceMessageBytes, allReduceTimeUs, builtinModelConfig, layoutRejection, linkFromBench, pipelineBubble,
  planLayouts, rankKvCacheBytes, rankWeightBytes, ringAllReduceFactor, shardElements, simulateFillDrain, simulatedTimeline, timelineSvg,
  tpForwardBytes, transferTimeUs,
} from '../lib/plan';
import { fitRingModel } from '../bench/model';
import { writeTinyModel, type TinyModelSpec } from './helpers/tiny_models';
import { assertRanksOk, runRanks, sharedRun } from './helpers/run_ranks';
import type { ShardReport } from './fixtures/dist_plan';

const REPO = path.join(__dirname, '..', '..');
const CLI = path.join(REPO, 'dist', 'lib', 'cli.js');
const BENCH_N2 = path.join(REPO, 'bench', 'results', 'all_reduce_gloo_n2.json');

function tpkit(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: REPO }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

// ---- bad flags first: exact one-line messages, exit code 2 ------------------------------------------------

const BAD: [string[], string][] = [
  [['--gpus', '8'], 'tpkit plan: error: Expected exactly one of --model-dir DIR and --model NAME\n'],
  [['--model', 'llama-3-8b'], 'tpkit plan: error: Expected --gpus N (the number of GPUs to plan for)\n'],
  [['--model', 'llama-3-8b', '--gpus', '0'], 'tpkit plan: error: Expected positive integer for --gpus but received "0"\n'],
  [['--model', 'llama-3-8b', '--gpus', 'two'], 'tpkit plan: error: Expected positive integer for --gpus but received "two"\n'],
  [['--model', 'gpt-5', '--gpus', '8'], `tpkit plan: error: Expected one of ${Object.keys(BUILTIN_MODELS).join(', ')} for --model but received "gpt-5"\n`],
  [['--model', 'llama-3-8b', '--model-dir', '/x', '--gpus', '8'], 'tpkit plan: error: Expected exactly one of --model-dir DIR and --model NAME\n'],
  [['--model', 'llama-3-8b', '--gpus', '8', '--dtype', 'int4'], 'tpkit plan: error: Expected one of float32, float16, bfloat16 for --dtype but received "int4"\n'],
  [['--model', 'llama-3-8b', '--gpus', '8', '--link', 'carrier-pigeon'], `tpkit plan: error: Expected one of ${Object.keys(LINKS).join(', ')} for --link but received "carrier-pigeon"\n`],
  [['--model', 'llama-3-8b', '--gpus', '8', '--gpu', 'tpu'], `tpkit plan: error: Expected one of ${Object.keys(GPUS).join(', ')} for --gpu but received "tpu"\n`],
  [['--model', 'llama-3-8b', '--gpus', '8', '--gpu-memory', '24'], 'tpkit plan: error: Expected both --gpu-memory GiB and --gpu-tflops T for a custom GPU\n'],
  [['--model', 'llama-3-8b', '--gpus', '8', '--gpu-memory', '0', '--gpu-tflops', '1'], 'tpkit plan: error: Expected positive number for --gpu-memory but received "0"\n'],
  [['--model', 'llama-3-8b', '--gpus', '12', '--gpus-per-node', '8'], 'tpkit plan: error: Expected --gpus 12 to be a multiple of --gpus-per-node 8\n'],
  [['--model', 'llama-3-8b', '--gpus', '8', '--calibrate', BENCH_N2, '--link', 'ib'], 'tpkit plan: error: Expected either --calibrate FILE or --link/--inter-link, not both\n'],
  [['--model', 'llama-3-8b', '--gpus', '8', '--calibrate', '/nonexistent.json'], "tpkit plan: error: --calibrate /nonexistent.json: ENOENT: no such file or directory, open '/nonexistent.json'\n"],
  [['--model', 'llama-3-8b', '--gpus', '8', '--bogus'], "tpkit plan: error: Unknown option '--bogus'\n"],
  [['--model-dir', '/nonexistent', '--gpus', '8'], 'tpkit plan: error: --model-dir: cannot read /nonexistent/config.json (ENOENT)\n'],
];

for (const [args, message] of BAD) {
  test(`bad flags: tpkit plan ${args.join(' ')} → exit 2, one line`, async (t) => {
    const r = await tpkit(['plan', ...args]);
    t.is(r.code, 2);
    t.is(r.stderr, message);
    t.is(r.stdout, '');
  });
}

test('bad flags: --calibrate with another bench result (gemm) names the schema', async (t) => {
  const r = await tpkit(['plan', '--model', 'llama-3-8b', '--gpus', '2', '--calibrate', path.join(REPO, 'bench', 'results', 'gemm.json')]);
  t.is(r.code, 2);
  t.regex(r.stderr, /^tpkit plan: error: --calibrate .*gemm\.json: expected a tpkit bench collectives --json result \(schema tpkit\.bench\.collectives\/1\) but received schema "tpkit\.bench\.gemm\/1"\n$/);
});

// ---- the course notes' figures -------------------------------------------------------------------------

test('course notes: 393,216 B per all-reduce, ring factor 1.5 at n = 4, ≈ 113 MB per forward, ≈ 0.19 ms at 600 GB/s', (t) => {
  t.is(allReduceMessageBytes(12288, 16, 2), 393_216);
  t.is(ringAllReduceFactor(4), 1.5);
  t.is(ringAllReduceFactor(1), 0);
  t.is(ringAllReduceFactor(2), 1);
  t.is(allReduceMessageBytes(12288, 16, 2) * ringAllReduceFactor(4), 589_824); // "with overhead: 590 KB"
  const perForward = tpForwardBytes({ hidden: 12288, tokens: 16, bytesPerElement: 2, layers: 96, tp: 4 });
  t.is(perForward, 113_246_208); // 2 × 96 × 589,824 — "113 MB per forward pass"
  const us = transferTimeUs(perForward, 600);
  t.true(Math.abs(us / 1e3 - 0.19) < 0.005, `${us} µs`);
  // The α–β form with α = 0 is the same bandwidth term.
  const ring = allReduceTimeUs(393_216, 4, { name: 'x', alphaUs: 0, bandwidthGBs: 600, source: '' });
  t.true(Math.abs(ring * 2 * 96 - us) < 1e-6);
  // KV cache 2 × seq × hidden × layers × bytes for multi-head attention (32K context, the notes' 147 GB),
  // divided by heads / kv heads with grouped-query attention.
  const mha = parseLlamaConfig({ architectures: ['LlamaForCausalLM'], hidden_size: 12288, intermediate_size: 49152, num_hidden_layers: 96, num_attention_heads: 96, vocab_size: 50304 });
  t.is(rankKvCacheBytes(mha, 1, 1, 0, 32768, 1, 'float16'), 2 * 32768 * 12288 * 96 * 2);
  const gqa = parseLlamaConfig({ ...BUILTIN_MODELS['llama-3-70b'] });
  t.is(rankKvCacheBytes(gqa, 1, 1, 0, 4096, 1, 'bfloat16'), (2 * 4096 * 8192 * 80 * 2) / (64 / 8));
  t.is(pipelineBubble(4, 8), 3 / 11);
});

// ---- weights per GPU against the layers' shard shapes, full scale ------------------------------------------

/** A ProcessGroup stand-in of the given size and rank: enough for the layers' constructors (no communication). */
function fakeGroup(size: number, rank: number): ProcessGroup {
  // An object of ProcessGroup's prototype (the layers check `instanceof`) whose own properties shadow the
  // accessors the constructors read.
  const g = Object.create(ProcessGroup.prototype) as ProcessGroup;
  const props = { size, rank, ranks: Array.from({ length: size }, (_, i) => i), isMember: true, backend: 'gloo', allReduce: async () => { throw new Error('no communication'); } };
  for (const [k, value] of Object.entries(props)) Object.defineProperty(g, k, { value });
  return g;
}

/** Elements a rank holds, from the shard shapes of the layers LlamaForCausalLM builds (as parameterBytes counts). */
function layerShardElements(c: LlamaConfig, tp: number, rank: number, pp: number, stage: number): number {
  const group = tp > 1 ? fakeGroup(tp, rank) : undefined;
  const h = c.hiddenSize;
  const hd = c.headDim;
  const emb = new VocabParallelEmbedding(c.vocabSize, h, { group });
  const qkv = new QKVParallelLinear(h, hd, c.numAttentionHeads, c.numKeyValueHeads, { group, bias: c.qkvBias });
  const o = new RowParallelLinear(c.numAttentionHeads * hd, h, { group, bias: c.oProjBias });
  const gu = new MergedColumnParallelLinear(h, [c.intermediateSize, c.intermediateSize], { group, bias: c.mlpBias });
  const down = new RowParallelLinear(c.intermediateSize, h, { group, bias: c.mlpBias });
  const layer =
    2 * h +
    qkv.outputSizePerPartition * h + (c.qkvBias ? qkv.outputSizePerPartition : 0) +
    h * o.inputSizePerPartition + (c.oProjBias ? h : 0) +
    gu.outputSizePerPartition * h + (c.mlpBias ? gu.outputSizePerPartition : 0) +
    h * down.inputSizePerPartition + (c.mlpBias ? h : 0);
  const counts = partitionLayers(c.numHiddenLayers, pp).counts;
  const first = stage === 0;
  const last = stage === pp - 1;
  const table = emb.numEmbeddingsPerPartition * h;
  return counts[stage]! * layer + (first || (last && c.tieWordEmbeddings) ? table : 0) + (last && !c.tieWordEmbeddings ? table : 0) + (last ? h : 0);
}

for (const name of ['llama-3-8b', 'llama-3-70b'] as const) {
  test(`${name}: weights per GPU at TP 1/2/4/8 (and PP 2, 4) equal the layers' shard shapes`, (t) => {
    const c = builtinModelConfig(name);
    for (const tp of [1, 2, 4, 8]) {
      for (const pp of [1, 2, 4]) {
        for (let stage = 0; stage < pp; stage++) {
          for (const rank of new Set([0, tp - 1])) {
            t.is(rankWeightBytes(c, tp, pp, stage, 'bfloat16'), 2 * layerShardElements(c, tp, rank, pp, stage), `TP ${tp} rank ${rank} PP ${pp} stage ${stage}`);
          }
        }
      }
    }
    // The vocabulary padding and kv-head split are visible in the shard: 128256 → 128256 (a multiple of 64),
    // kv heads 8 → 1 per rank at TP 8.
    t.is(shardElements(c, 8, 1, 0).kvHeadsPerRank, 1);
    t.is(shardElements(c, 8, 1, 0).vocabPerRank, 128256 / 8);
    // The JSON's weightBytesPerGpu is the largest over the layout's ranks.
    const r = planLayouts({ config: c, gpus: 8, gpu: { ...GPUS.h100! }, intraLink: LINKS.nvlink!, interLink: LINKS.ib!, dtype: 'bfloat16' });
    for (const l of r.layouts) {
      const per = Array.from({ length: l.pp }, (_, s) => rankWeightBytes(c, l.tp, l.pp, s, 'bfloat16'));
      t.is(l.weightBytesPerGpu, Math.max(...per), `TP ${l.tp} PP ${l.pp}`);
      t.true(Number.isInteger(l.weightBytesPerGpu) && Number.isInteger(l.kvCacheBytesPerGpu) && Number.isInteger(l.allReduceBytes));
    }
  });
}

test('replicated kv heads (TP 16 > 8 kv heads) and odd vocabularies follow QKVParallelLinear and the padding', (t) => {
  const c = builtinModelConfig('llama-3.1-405b');
  t.is(rankWeightBytes(c, 16, 1, 0, 'bfloat16'), 2 * layerShardElements(c, 16, 3, 1, 0));
  t.is(shardElements(c, 16, 1, 0).kvHeadsPerRank, 1);
  const odd = parseLlamaConfig({ ...BUILTIN_MODELS['llama-3-8b'], vocab_size: 1000 });
  t.is(shardElements(odd, 4, 1, 0).vocabPerRank, 1024 / 4);
  t.is(rankWeightBytes(odd, 4, 2, 1, 'float32'), 4 * layerShardElements(odd, 4, 0, 2, 1));
});

// ---- rejected layouts -------------------------------------------------------------------------------------

test('layouts the heads or layers cannot divide are rejected with the reason', (t) => {
  const qwen = builtinModelConfig('qwen2-7b');
  t.is(layoutRejection(qwen, 8, 1), 'num_attention_heads 28 is not divisible by tensor parallel size 8');
  t.is(layoutRejection(qwen, 4, 1), null);
  t.throws(() => shardElements(qwen, 8, 1, 0), { instanceOf: RangeError, message: 'num_attention_heads 28 is not divisible by tensor parallel size 8' });
  const r = planLayouts({ config: qwen, gpus: 8, gpu: { ...GPUS.h100! }, intraLink: LINKS.nvlink!, interLink: LINKS.ib! });
  t.deepEqual(r.rejected.find((x) => x.tp === 8 && x.pp === 1), { tp: 8, pp: 1, dp: 1, reason: 'num_attention_heads 28 is not divisible by tensor parallel size 8' });
  t.false(r.layouts.some((l) => l.tp === 8));
  const kv = parseLlamaConfig({ ...BUILTIN_MODELS['llama-3-8b'], num_attention_heads: 24, num_key_value_heads: 3, hidden_size: 3072 });
  t.is(layoutRejection(kv, 2, 1), 'totalNumKvHeads 3 is not divisible by tensor parallel size 2');
  t.is(layoutRejection(kv, 4, 1), 'tensor parallel size 4 is not divisible by totalNumKvHeads 3');
  const shallow = parseLlamaConfig({ ...BUILTIN_MODELS['llama-3-8b'], num_hidden_layers: 2 });
  t.is(layoutRejection(shallow, 1, 4), 'num_hidden_layers 2 is smaller than the pipeline parallel size 4');
  // TP inside a node unless asked otherwise.
  const c = builtinModelConfig('llama-3-70b');
  const two = planLayouts({ config: c, gpus: 16, gpusPerNode: 8, gpu: { ...GPUS.h100! }, intraLink: LINKS.nvlink!, interLink: LINKS.ib! });
  t.regex(two.rejected.find((x) => x.tp === 16)!.reason, /^tensor parallel size 16 exceeds the 8 GPUs of a node/);
  const across = planLayouts({ config: c, gpus: 16, gpusPerNode: 8, gpu: { ...GPUS.h100! }, intraLink: LINKS.nvlink!, interLink: LINKS.ib!, tpAcrossNodes: true });
  t.true(across.layouts.find((l) => l.tp === 16)!.tpAcrossNodes);
  t.is(across.layouts.find((l) => l.tp === 8 && l.pp === 2)!.ppCrossNodeBoundaries, 1);
  t.deepEqual(across.layouts.find((l) => l.tp === 2 && l.pp === 4)!.ppGroup, [0, 2, 4, 6]);
});

// ---- the pipeline simulator -------------------------------------------------------------------------------

test('fill-drain simulator: idle fraction equals (p−1)/(p+m−1) exactly for every p ≤ 8, m ≤ 64', (t) => {
  let checked = 0;
  for (let p = 1; p <= 8; p++) {
    for (let m = 1; m <= 64; m++) {
      const sim = simulateFillDrain(p, m);
      const { num, den } = sim.idleFraction;
      // Cross-multiplied in integers: num / den = (p − 1) / (p + m − 1).
      if (num * (p + m - 1) !== (p - 1) * den || sim.slots !== p + m - 1 || sim.busy !== p * m) t.fail(`p ${p} m ${m}: ${num}/${den}, ${sim.slots} slots`);
      // Every stage runs every micro-batch once, in order, after the previous stage did.
      for (let s = 0; s < p; s++) {
        const order = sim.grid[s]!.filter((k) => k >= 0);
        if (order.join() !== Array.from({ length: m }, (_, k) => k).join()) t.fail(`p ${p} m ${m} stage ${s}: ${order.join()}`);
        if (s > 0) for (let k = 0; k < m; k++) if (sim.grid[s]!.indexOf(k) <= sim.grid[s - 1]!.indexOf(k)) t.fail(`p ${p} m ${m}: dependency`);
      }
      checked++;
    }
  }
  t.is(checked, 8 * 64);
  t.deepEqual(simulateFillDrain(4, 8).idleFraction, { num: 3, den: 11 });
  t.deepEqual(simulateFillDrain(1, 5).idleFraction, { num: 0, den: 1 });
  t.throws(() => simulateFillDrain(0, 1), { instanceOf: RangeError, message: 'Expected positive integer for p but received 0' });
  const svg = timelineSvg(simulatedTimeline(simulateFillDrain(3, 4)), { title: 'sim', unit: 'slot' });
  t.is((svg.match(/<rect [^>]*><title>compute/g) ?? []).length, 12); // one box per stage and micro-batch
  t.true(svg.startsWith('<svg'));
});

// ---- --calibrate --------------------------------------------------------------------------------------------

test('--calibrate reads a real bench result (bench/results/all_reduce_gloo_n2.json) and its ring fit', async (t) => {
  const json = JSON.parse(fs.readFileSync(BENCH_N2, 'utf8'));
  const l = linkFromBench(BENCH_N2);
  t.is(l.alphaUs, json.model.alphaUs);
  t.true(Math.abs(l.bandwidthGBs - 1 / json.model.betaUsPerByte / 1e3) < 1e-9);
  // Without the file's fit, the rows are fitted with bench/model.ts.
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-plan-'));
  const noModel = path.join(dir, 'nomodel.json');
  delete json.model;
  fs.writeFileSync(noModel, JSON.stringify(json));
  const fit = fitRingModel(json.rows.map((r: { size: number; inPlace: { timeUs: number; p50Us: number | null } }) => ({ size: r.size, worldSize: 2, timeUs: r.inPlace.p50Us ?? r.inPlace.timeUs })))!;
  const l2 = linkFromBench(noModel);
  t.is(l2.alphaUs, fit.alphaUs);
  // The command with it: the all-reduce time of a layout is the calibrated α–β model's.
  const out = path.join(dir, 'plan.json');
  const r = await tpkit(['plan', '--model', 'llama-2-7b', '--gpus', '2', '--calibrate', BENCH_N2, '--gpu-memory', '24', '--gpu-tflops', '0.2', '--dtype', 'float32', '--batch', '1', '--seq', '64', '--json', out]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /links: intra calibrated \(α 252\.8 µs, 1\.202 GB\/s\)/);
  const plan = JSON.parse(fs.readFileSync(out, 'utf8'));
  t.is(plan.schema, 'tpkit.plan/1');
  const tp2 = plan.layouts.find((x: { tp: number }) => x.tp === 2);
  t.is(tp2.allReduceBytes, 4096 * 4);
  t.true(tp2.decode.commMs > (2 * 32 * 2 * l.alphaUs) / 1e3, 'α of 250 µs × 2 per all-reduce × 2 per layer × 32 layers');
  await fsp.rm(dir, { recursive: true, force: true });
});

// ---- the command ---------------------------------------------------------------------------------------------

test('tpkit plan --model-dir needs only config.json; the table, the recommendation and --json', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-plan-'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(BUILTIN_MODELS['llama-3-70b']));
  const out = path.join(dir, 'plan.json');
  const svg = path.join(dir, 'sim.svg');
  const r = await tpkit(['plan', '--model-dir', dir, '--gpus', '8', '--gpu', 'h100', '--batch', '16', '--seq', '4096', '--json', out, '--timeline', svg]);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.regex(lines[4]!, /^#\s+tp\s+pp\s+dp\s+mb\s+weights/);
  t.regex(lines.at(-1)!, /^# recommended: TP \d+ × PP \d+/);
  t.regex(r.stdout, /  NO  /); // TP 1 × DP 8 does not fit in 80 GiB
  const plan = JSON.parse(fs.readFileSync(out, 'utf8'));
  t.true(plan.layouts.length >= 10);
  const decode = plan.layouts.map((l: { decode: { ms: number } }) => l.decode.ms);
  t.deepEqual(decode, decode.slice().sort((a: number, b: number) => a - b)); // sorted by decode latency
  for (const l of plan.layouts) {
    for (const k of ['tp', 'pp', 'dp', 'weightBytesPerGpu', 'kvCacheBytesPerGpu', 'allReduceBytes']) t.true(Number.isInteger(l[k]), k);
    t.is(typeof l.fits, 'boolean');
    t.is(l.tp * l.pp * l.dp, 8);
  }
  const tp8 = plan.layouts.find((l: { tp: number; pp: number }) => l.tp === 8 && l.pp === 1);
  t.is(tp8.allReduceBytes, 16 * 8192 * 2);
  t.is(tp8.kvCacheBytesPerGpu, 80 * 2 * 4096 * 1 * 128 * 2 * 16);
  t.true(fs.readFileSync(svg, 'utf8').startsWith('<svg'));
  const help = await tpkit(['plan', '--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /^usage: tpkit plan/);
  await fsp.rm(dir, { recursive: true, force: true });
});

// ---- real small models on 1, 2 and 4 ranks ---------------------------------------------------------------

/** Small models with the structure of the big ones (float32: the cpu backend's dtype). */
const SPECS: Record<string, TinyModelSpec> = {
  // Llama-3-8B's 32 / 8 heads scaled to 8 / 2 (kv heads replicated at TP 4), vocabulary 1000 → 1024 padded.
  l3_8b: { hiddenSize: 64, intermediateSize: 224, numLayers: 4, numHeads: 8, numKvHeads: 2, vocabSize: 1000, seed: 21 },
  // Llama-3-70B's 64 / 8 heads scaled to 16 / 2, 5 layers (uneven PP splits).
  l3_70b: { hiddenSize: 64, intermediateSize: 224, numLayers: 5, numHeads: 16, numKvHeads: 2, vocabSize: 1000, seed: 22 },
  // Qwen2 (q/k/v biases), tied embeddings (the last stage holds the table too), 6 heads: TP 4 is rejected.
  qwen2: { arch: 'Qwen2ForCausalLM', hiddenSize: 48, intermediateSize: 96, numLayers: 4, numHeads: 6, numKvHeads: 2, vocabSize: 150, tieWordEmbeddings: true, seed: 23 },
  // Llama with o_proj and MLP biases (row-parallel biases whole on every rank), multi-head attention.
  biased: { hiddenSize: 32, numLayers: 4, numHeads: 4, numKvHeads: 4, vocabSize: 97, attentionBias: true, extraConfig: { mlp_bias: true }, seed: 24 },
};
const SEQ = 24;
const BATCH = 3;

let root = '';
const dirs: Record<string, string> = {};
const configs: Record<string, LlamaConfig> = {};

test.before(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-plan-models-'));
  for (const [name, spec] of Object.entries(SPECS)) {
    dirs[name] = path.join(root, name);
    await writeTinyModel(dirs[name]!, spec);
    configs[name] = parseLlamaConfig(JSON.parse(fs.readFileSync(path.join(dirs[name]!, 'config.json'), 'utf8')));
  }
});

test.after.always(async () => {
  if (root) await fsp.rm(root, { recursive: true, force: true });
});

const runs = new Map(
  [1, 2, 4].map((w) => [w, sharedRun(() => runRanks<ShardReport[]>(w, 'dist_plan', 'shards', { timeoutMs: 90_000, args: [...Object.values(dirs), '--', String(SEQ)] }))]),
);

for (const w of [1, 2, 4]) {
  test(`${w} rank(s): parameterBytes and createCache(S).nbytes × B of real models equal the plan's per-rank figures`, async (t) => {
    const out = await runs.get(w)!();
    assertRanksOk(t, out);
    let compared = 0;
    for (const reports of out.results) {
      for (const r of reports!) {
        const name = Object.keys(dirs).find((n) => dirs[n] === r.dir)!;
        const c = configs[name]!;
        const what = `${name} TP ${r.tp} × PP ${r.pp} (tp rank ${r.tpRank}, stage ${r.ppRank})`;
        const why = layoutRejection(c, r.tp, r.pp);
        if (r.error !== undefined) {
          t.is(r.error as string | null, why, what); // the plan rejects it with the layers' own reason
          continue;
        }
        t.is(why, null, what);
        t.is(rankWeightBytes(c, r.tp, r.pp, r.ppRank, 'float32'), r.parameterBytes!, what);
        t.is(rankKvCacheBytes(c, r.tp, r.pp, r.ppRank, SEQ, BATCH, 'float32'), r.cacheBytes! * BATCH, what);
        compared++;
      }
    }
    t.true(compared >= Object.keys(SPECS).length * w, `${compared} rank reports compared`);
    if (w === 4) t.true(out.results.some((rs) => rs!.some((r) => r.error === 'num_attention_heads 6 is not divisible by tensor parallel size 4')));
  });
}
