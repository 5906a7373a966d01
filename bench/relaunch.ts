/**
 * Self-launch: `tpkit bench collectives --nproc N` run outside a launcher starts N ranks of itself with
 * `launch()` (lib/distributed/launcher.ts) and stays behind as the reporter. Rank 0's lines come back
 * without the launcher's `[rank0]: ` prefix (the table reads as nccl-tests'); other ranks' lines keep it.
 * Rank 0 hands its result to the parent as JSON in a temporary file ({@link RESULT_ENV}).
 *
 * @module
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { launch } from '../lib/distributed/launcher';
import { parseProgressLine, PROGRESS_ENV, ProgressRelay, terminalBar } from './progress';

/** Environment variable naming the file where rank 0 writes its result for the parent. */
export const RESULT_ENV = 'TPKIT_BENCH_RESULT';

/** The script every rank runs: dist/bench/entry.js (it calls benchMain with its arguments). */
export function entryScript(): string {
  return path.join(__dirname, 'entry.js');
}

/** Splits written text into lines and hands each to `onLine`. */
class LineWriter extends Writable {
  #buffer = '';
  constructor(private readonly onLine: (line: string) => void) {
    super({ decodeStrings: false });
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#buffer += chunk.toString();
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) !== -1) {
      this.onLine(this.#buffer.slice(0, nl));
      this.#buffer = this.#buffer.slice(nl + 1);
    }
    cb();
  }
  override _final(cb: (err?: Error | null) => void): void {
    if (this.#buffer) this.onLine(this.#buffer);
    this.#buffer = '';
    cb();
  }
}

const RANK0 = '[rank0]: ';

/** What the parent gets back from its ranks. */
export interface RelaunchResult<T> {
  exitCode: number;
  /** The launcher's one-line summary (non-empty on failure). */
  summary: string;
  /** Rank 0's result, or null when it wrote none (failure). */
  result: T | null;
}

/**
 * Runs `args` (a `tpkit bench …` command line, without `bench`) on `nproc` ranks and waits for them.
 *
 * @param o.progress - draw rank 0's progress lines as a bar on this process's stderr (a terminal)
 * @param o.stdout / o.stderr - where rank output goes (default this process's)
 */
export async function relaunch<T>(o: {
  nproc: number;
  args: string[];
  progress: boolean;
  env?: NodeJS.ProcessEnv;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
}): Promise<RelaunchResult<T>> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-bench-'));
  const resultFile = path.join(dir, 'result.json');
  const outDest = o.stdout ?? process.stdout;
  const errDest = o.stderr ?? process.stderr;
  const relay = new ProgressRelay(o.progress ? terminalBar() : null);
  const stdout = new LineWriter((line) => {
    relay.print(`${line.startsWith(RANK0) ? line.slice(RANK0.length) : line}\n`, outDest);
  });
  const stderr = new LineWriter((line) => {
    const p = parseProgressLine(line);
    if (p) relay.handle(p);
    else relay.print(`${line}\n`, errDest);
  });
  const env: NodeJS.ProcessEnv = { ...(o.env ?? process.env), [RESULT_ENV]: resultFile };
  if (o.progress) env[PROGRESS_ENV] = 'lines';
  else delete env[PROGRESS_ENV];
  try {
    const r = await launch({ nprocPerNode: o.nproc, script: entryScript(), args: o.args, env, stdout, stderr, nodeArgs: ['--enable-source-maps'] });
    relay.stop();
    let result: T | null = null;
    if (fs.existsSync(resultFile)) result = JSON.parse(fs.readFileSync(resultFile, 'utf8')) as T;
    return { exitCode: r.exitCode, summary: r.exitCode === 0 ? '' : r.summary, result };
  } finally {
    relay.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Writes a rank-0 result where the parent asked for it (no-op when not self-launched). */
export function handResultToParent(result: unknown, env: NodeJS.ProcessEnv = process.env): void {
  const file = env[RESULT_ENV];
  if (file) fs.writeFileSync(file, JSON.stringify(result));
}
