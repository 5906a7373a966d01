import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';

import { launch, type LaunchOptions, type LaunchResult } from '../lib/distributed/launcher';

const fixture = (name: string): string => path.join(__dirname, 'fixtures', name);
const ENV_SCRIPT = fixture('launch_env.js');
const FAIL_SCRIPT = fixture('launch_fail.js');
const RESTART_SCRIPT = fixture('launch_restart.js');
const CLI_SCRIPT = fixture('launch_cli.js');
const STORE_SCRIPT = fixture('launch_store.js');

/** A writable stream that keeps everything written to it. */
class Collector extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.text += chunk.toString('utf8');
    cb();
  }
  lines(): string[] {
    return this.text.split('\n').filter((l) => l.length > 0);
  }
}

/** A fresh folder for the fail fixture's pid files, removed when the test ends. */
function readyDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-launch-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The pids the fail fixture wrote to its ready folder, by rank. */
function readyPids(dir: string): number[] {
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d+$/.test(f))
    .sort((a, b) => Number(a) - Number(b))
    .map((f) => Number(fs.readFileSync(path.join(dir, f), 'utf8')));
}

function assertDead(t: ExecutionContext, pids: number[]): void {
  for (const pid of pids) {
    const err = t.throws(() => process.kill(pid, 0), undefined, `pid ${pid} is still alive`);
    t.is((err as NodeJS.ErrnoException | undefined)?.code, 'ESRCH');
  }
}

async function run(opts: Partial<LaunchOptions> & Pick<LaunchOptions, 'script'>) {
  const stdout = new Collector();
  const stderr = new Collector();
  const started = Date.now();
  const result: LaunchResult = await launch({ nprocPerNode: 2, stdout, stderr, ...opts });
  return { result, stdout, stderr, elapsedMs: Date.now() - started };
}

/** Runs `launchMain` in its own process (the launch_cli fixture) and collects its output. */
function runCli(args: string[], onSpawn?: (child: ReturnType<typeof spawn>) => void) {
  return new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>(
    (resolve, reject) => {
      const child = spawn(process.execPath, [CLI_SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
      onSpawn?.(child);
    },
  );
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Invalid options, each with its exact message (rejected before anything starts)

const invalid: Array<[string, unknown, typeof TypeError | typeof RangeError, string]> = [
  ['options null', null, TypeError, 'Expected object for options but received null'],
  ['nprocPerNode 0', { nprocPerNode: 0 }, RangeError, 'Expected positive integer for nprocPerNode but received 0 of type number'],
  ['nprocPerNode string', { nprocPerNode: '2' }, TypeError, 'Expected positive integer for nprocPerNode but received 2 of type string'],
  ['nprocPerNode 1.5', { nprocPerNode: 1.5 }, RangeError, 'Expected positive integer for nprocPerNode but received 1.5 of type number'],
  ['nnodes 0', { nnodes: 0 }, RangeError, 'Expected positive integer for nnodes but received 0 of type number'],
  ['nodeRank = nnodes', { nnodes: 2, nodeRank: 2, masterPort: 29500 }, RangeError, 'Expected integer in [0, 2) for nodeRank but received 2 of type number'],
  ['nodeRank negative', { nodeRank: -1 }, RangeError, 'Expected integer in [0, 1) for nodeRank but received -1 of type number'],
  ['masterAddr empty', { masterAddr: '' }, RangeError, 'Expected non-empty string for masterAddr but received  of type string'],
  ['masterPort 65536', { masterPort: 65536 }, RangeError, 'Expected integer in [0, 65536) for masterPort but received 65536 of type number'],
  ['masterPort string', { masterPort: '29500' }, TypeError, 'Expected integer in [0, 65536) for masterPort but received 29500 of type string'],
  ['masterPort 0 with nnodes 2', { nnodes: 2, masterPort: 0 }, RangeError, 'Expected integer in [1, 65536) for masterPort when nnodes > 1 but received 0 of type number'],
  ['script number', { script: 42 }, TypeError, 'Expected non-empty string for script but received 42 of type number'],
  ['script missing', { script: '/nonexistent/x.js' }, RangeError, 'Expected path of an existing file for script but received /nonexistent/x.js of type string'],
  ['script directory', { script: os.tmpdir() }, RangeError, `Expected path of an existing file for script but received ${os.tmpdir()} of type string`],
  ['args with a number', { args: ['a', 1] }, TypeError, 'Expected array of strings for args but received [a, 1] of type array'],
  ['maxRestarts -1', { maxRestarts: -1 }, RangeError, 'Expected non-negative integer for maxRestarts but received -1 of type number'],
  ['graceMs NaN', { graceMs: NaN }, RangeError, 'Expected non-negative integer for graceMs but received NaN of type number'],
  ['env string', { env: 'A=1' }, TypeError, 'Expected object for env but received A=1 of type string'],
  ['stdout plain object', { stdout: {} }, TypeError, 'Expected writable stream for stdout but received [object Object] of type object'],
  ['stderr number', { stderr: 2 }, TypeError, 'Expected writable stream for stderr but received 2 of type number'],
  ['nodeArgs string', { nodeArgs: '--inspect' }, TypeError, 'Expected array of strings for nodeArgs but received --inspect of type string'],
];

for (const [title, override, ErrorClass, message] of invalid) {
  test(`rejects ${title}`, async (t) => {
    const opts = override === null ? null : { nprocPerNode: 2, script: ENV_SCRIPT, ...(override as object) };
    await t.throwsAsync(launch(opts as LaunchOptions), { instanceOf: ErrorClass, message });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Environment and output

for (const n of [2, 4]) {
  test(`${n} ranks get torchrun's environment and rank-prefixed output`, async (t) => {
    const { result, stdout, stderr } = await run({
      nprocPerNode: n,
      script: ENV_SCRIPT,
      args: ['--foo', 'bar'],
      env: { ...process.env, SLURM_PROCID: '7', OMPI_COMM_WORLD_RANK: '5', TPKIT_TEST_MARKER: 'kept' },
    });
    t.deepEqual(result, { exitCode: 0, restarts: 0, summary: `tpkit launch: all ${n} ranks exited with code 0` });

    const lines = stdout.lines();
    const envs: Array<Record<string, unknown>> = [];
    for (const line of lines) {
      const m = /^\[rank(\d+)\]: (.*)$/.exec(line);
      if (!m) return t.fail(`unprefixed line ${JSON.stringify(line)}`);
      if (m[2]!.startsWith('{')) {
        const env = JSON.parse(m[2]!) as Record<string, unknown>;
        t.is(env['RANK'], m[1], 'prefix names the rank that wrote the line');
        envs.push(env);
      }
    }
    t.deepEqual(
      envs.map((e) => Number(e['RANK'])).sort((a, b) => a - b),
      Array.from({ length: n }, (_, i) => i),
    );
    const port = envs[0]!['MASTER_PORT'] as string;
    t.true(Number(port) > 0 && Number(port) < 65536);
    const runId = envs[0]!['TPKIT_RUN_ID'] as string;
    t.regex(runId, /^[0-9a-f]{16}$/);
    for (const e of envs) {
      t.is(e['LOCAL_RANK'], e['RANK']);
      t.is(e['WORLD_SIZE'], String(n));
      t.is(e['LOCAL_WORLD_SIZE'], String(n));
      t.is(e['GROUP_RANK'], '0');
      t.is(e['MASTER_ADDR'], '127.0.0.1');
      t.is(e['MASTER_PORT'], port);
      t.is(e['TPKIT_RUN_ID'], runId);
      t.is(e['TPKIT_RESTART_COUNT'], '0');
      t.is(e['SLURM_PROCID'], null);
      t.is(e['OMPI_COMM_WORLD_RANK'], null);
      t.is(e['TPKIT_TEST_MARKER'], 'kept');
      t.deepEqual(e['argv'], ['--foo', 'bar']);
    }
    for (let k = 0; k < n; k++) {
      t.true(lines.includes(`[rank${k}]: line1 ${k}`));
      t.true(lines.includes(`[rank${k}]: line2 ${k}`));
      t.true(lines.includes(`[rank${k}]: partial ${k}`), 'trailing partial line is flushed on exit');
      t.true(stderr.lines().includes(`[rank${k}]: err line from ${k}`));
    }
    t.is(stdout.lines().length, 4 * n);
    t.is(stderr.lines().length, n);
  });
}

test('node 1 of 2 numbers its ranks after node 0 and uses the given port', async (t) => {
  const { result, stdout } = await run({ nprocPerNode: 2, nnodes: 2, nodeRank: 1, masterPort: 29512, script: ENV_SCRIPT });
  t.is(result.exitCode, 0);
  t.is(result.summary, 'tpkit launch: all 2 local ranks (ranks 2..3) exited with code 0');
  const envs = stdout
    .lines()
    .filter((l) => l.includes('{'))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as Record<string, string>);
  t.deepEqual(envs.map((e) => e['RANK']).sort(), ['2', '3']);
  for (const e of envs) {
    t.is(e['LOCAL_RANK'], String(Number(e['RANK']) - 2));
    t.is(e['WORLD_SIZE'], '4');
    t.is(e['LOCAL_WORLD_SIZE'], '2');
    t.is(e['GROUP_RANK'], '1');
    t.is(e['GROUP_WORLD_SIZE'], '2');
    t.is(e['MASTER_PORT'], '29512');
    t.is(e['TPKIT_RUN_ID'], '127.0.0.1:29512.0', 'all nodes derive the same run id');
  }
});

// ---------------------------------------------------------------------------------------------------------
// Fail-fast

test('a rank exiting 3 stops its siblings at once and is named in the result', async (t) => {
  const dir = readyDir(t);
  const { result, elapsedMs } = await run({
    nprocPerNode: 4,
    script: FAIL_SCRIPT,
    args: ['--fail-rank', '1', '--code', '3', '--ready-dir', dir],
  });
  t.true(elapsedMs < 10_000, `took ${elapsedMs} ms`);
  t.deepEqual(result, {
    exitCode: 3,
    failedRank: 1,
    failedExitCode: 3,
    failedSignal: null,
    restarts: 0,
    summary: 'tpkit launch: rank 1 exited with code 3 (first failure); stopped ranks 0, 2, 3',
  });
  const pids = readyPids(dir);
  t.is(pids.length, 4);
  assertDead(t, pids);
});

test('a rank that ignores SIGTERM is SIGKILLed after graceMs', async (t) => {
  const dir = readyDir(t);
  const { result, stdout, elapsedMs } = await run({
    nprocPerNode: 2,
    graceMs: 500,
    script: FAIL_SCRIPT,
    args: ['--fail-rank', '1', '--code', '2', '--ready-dir', dir, '--ignore-term'],
  });
  t.true(elapsedMs >= 500 && elapsedMs < 8000, `took ${elapsedMs} ms`);
  t.is(result.exitCode, 2);
  t.is(result.failedRank, 1);
  t.is(
    result.summary,
    'tpkit launch: rank 1 exited with code 2 (first failure); stopped ranks 0; killed ranks 0 with SIGKILL after 500 ms',
  );
  t.true(stdout.lines().includes('[rank0]: ignoring SIGTERM'), 'SIGTERM came first');
  assertDead(t, readyPids(dir));
});

test('a rank killed by a signal is reported with the signal name', async (t) => {
  const dir = readyDir(t);
  const { result } = await run({
    nprocPerNode: 2,
    script: FAIL_SCRIPT,
    args: ['--fail-rank', '0', '--mode', 'signal', '--ready-dir', dir],
  });
  t.deepEqual(result, {
    exitCode: 128 + os.constants.signals.SIGKILL,
    failedRank: 0,
    failedExitCode: null,
    failedSignal: 'SIGKILL',
    restarts: 0,
    summary: 'tpkit launch: rank 0 was killed by signal SIGKILL (first failure); stopped ranks 1',
  });
  assertDead(t, readyPids(dir));
});

// ---------------------------------------------------------------------------------------------------------
// Restarts

test('maxRestarts restarts the whole group with a new run id', async (t) => {
  const { result, stdout, stderr } = await run({ nprocPerNode: 2, maxRestarts: 2, script: RESTART_SCRIPT });
  t.deepEqual(result, { exitCode: 0, restarts: 1, summary: 'tpkit launch: all 2 ranks exited with code 0 after 1 restart' });
  const rank1 = stdout
    .lines()
    .filter((l) => l.startsWith('[rank1]: '))
    .map((l) => JSON.parse(l.slice('[rank1]: '.length)) as { restart: string; runId: string });
  t.deepEqual(
    rank1.map((r) => r.restart),
    ['0', '1'],
  );
  t.not(rank1[0]!.runId, rank1[1]!.runId);
  t.true(
    stderr.lines().includes('tpkit launch: rank 1 exited with code 5; restarting all 2 ranks (restart 1 of 2)'),
    stderr.text,
  );
});

test('the store lives in the launcher: rank 0 SIGKILLed, the restart meets in the same store and completes', async (t) => {
  const { result, stdout, stderr } = await run({ nprocPerNode: 2, maxRestarts: 1, graceMs: 1000, script: STORE_SCRIPT });
  t.is(result.exitCode, 0, `${result.summary}\n${stderr.text}`);
  t.is(result.restarts, 1);
  t.true(stderr.lines().includes('tpkit launch: rank 0 was killed by signal SIGKILL; restarting all 2 ranks (restart 1 of 1)'), stderr.text);
  const outs = stdout
    .lines()
    .filter((l) => l.includes('{'))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as { rank: number; restart: string; port: number; sum: number[]; sawFirstAttempt: boolean });
  t.is(outs.length, 2, stdout.text);
  for (const o of outs) {
    t.is(o.restart, '1');
    t.deepEqual(o.sum, [3]);
    t.true(o.sawFirstAttempt, `rank ${o.rank} read the key its predecessor left: one store across the restart`);
  }
});

test('maxRestarts gives up after the last restart fails', async (t) => {
  const { result } = await run({ nprocPerNode: 2, maxRestarts: 1, script: RESTART_SCRIPT, args: ['--always-fail'] });
  t.is(result.exitCode, 5);
  t.is(result.restarts, 1);
  t.is(result.failedRank, 1);
  t.regex(result.summary, /^tpkit launch: rank 1 exited with code 5 \(first failure\).*; gave up after 1 restart$/);
});

// ---------------------------------------------------------------------------------------------------------
// launchMain (the `tpkit launch` CLI), each in its own process

test('launchMain passes everything after the script to it unchanged', async (t) => {
  const r = await runCli(['--nproc-per-node', '2', '--max-restarts', '0', ENV_SCRIPT, '--foo', 'bar', '--nproc-per-node', '9', '--', 'x']);
  t.is(r.code, 0, r.stderr);
  const envs = r.stdout
    .split('\n')
    .filter((l) => l.includes('{'))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as Record<string, unknown>);
  t.is(envs.length, 2);
  for (const e of envs) {
    t.is(e['WORLD_SIZE'], '2');
    t.deepEqual(e['argv'], ['--foo', 'bar', '--nproc-per-node', '9', '--', 'x']);
  }
});

test('launchMain accepts --flag=value and -- before the script', async (t) => {
  const r = await runCli(['--nproc-per-node=1', '--master-addr=127.0.0.1', '--', ENV_SCRIPT, '-x']);
  t.is(r.code, 0, r.stderr);
  const env = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'), r.stdout.indexOf('\n'))) as Record<string, unknown>;
  t.is(env['WORLD_SIZE'], '1');
  t.deepEqual(env['argv'], ['-x']);
});

test('launchMain returns the failing code and prints the summary to stderr', async (t) => {
  const dir = readyDir(t);
  const r = await runCli(['--nproc-per-node', '2', '--grace-ms', '500', FAIL_SCRIPT, '--fail-rank', '1', '--code', '3', '--ready-dir', dir]);
  t.is(r.code, 3);
  t.true(r.stderr.includes('tpkit launch: rank 1 exited with code 3 (first failure); stopped ranks 0\n'), r.stderr);
  assertDead(t, readyPids(dir));
});

test('launchMain reports an invalid option with its message and exit code 2', async (t) => {
  const r = await runCli(['--nproc-per-node', '0', ENV_SCRIPT]);
  t.is(r.code, 2);
  t.is(r.stderr, 'tpkit launch: Expected positive integer for nprocPerNode but received 0 of type number\n');
  t.is(r.stdout, '');
  const s = await runCli(['--nproc-per-node', 'two', ENV_SCRIPT]);
  t.is(s.code, 2);
  t.is(s.stderr, 'tpkit launch: Expected positive integer for nprocPerNode but received two of type string\n');
});

test('launchMain reports a missing script and unknown flags with exit code 2', async (t) => {
  const a = await runCli(['--nproc-per-node', '2']);
  t.is(a.code, 2);
  t.regex(a.stderr, /missing required argument 'script'/);
  const b = await runCli(['--bogus', '1', ENV_SCRIPT]);
  t.is(b.code, 2);
  t.regex(b.stderr, /unknown option '--bogus'/);
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`launchMain forwards ${signal} to every rank and exits 128 + signo`, async (t) => {
    const dir = readyDir(t);
    const started = Date.now();
    const r = await runCli(['--nproc-per-node', '2', '--grace-ms', '2000', FAIL_SCRIPT, '--ready-dir', dir], (child) => {
      waitFor(() => readyPids(dir).length === 2, 10_000).then(
        () => child.kill(signal),
        () => child.kill('SIGKILL'),
      );
    });
    t.true(Date.now() - started < 10_000);
    t.is(r.code, 128 + os.constants.signals[signal], r.stderr);
    t.true(r.stderr.includes(`tpkit launch: interrupted by ${signal}; stopped ranks 0, 1\n`), r.stderr);
    assertDead(t, readyPids(dir));
  });
}
