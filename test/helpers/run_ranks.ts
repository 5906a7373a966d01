/**
 * Test-side half of the multi-rank test harness: {@link runRanks} starts `worldSize` ranks of a fixture with
 * `launch()` (lib/distributed/launcher.ts), captures their output, and returns one parsed result per rank.
 *
 * The fixture side is `rank_harness.ts`: a fixture calls `serveScenarios({ name: async (ctx) => … })`, the
 * harness runs the scenario named on the command line and prints one marker line per rank
 * (`@@tpkit:result <json>` or `@@tpkit:error <json>`), after a `@@tpkit:pid <pid>` line that lets the
 * watchdog here SIGKILL every rank when the launch outlives its time bound — a hang fails the test instead of
 * stalling the suite.
 *
 * @example
 * ```ts
 * const out = await runRanks<{ sum: number[] }>(4, 'dist_collectives', 'all', { timeoutMs: 20_000 });
 * assertRanksOk(t, out);
 * for (const r of out.results) t.deepEqual(r!.sum, [0, 10, 20]);
 * ```
 *
 * @module
 */
import * as path from 'node:path';
import { Writable } from 'node:stream';

import type { ExecutionContext } from 'ava';

import { launch, type LaunchResult } from '../../lib/distributed/launcher';
import type { ErrorInfo } from './rank_harness';

export type { ErrorInfo, Settled } from './rank_harness';

/** Marker prefixes shared with rank_harness.ts. */
export const MARK = {
  pid: '@@tpkit:pid ',
  result: '@@tpkit:result ',
  error: '@@tpkit:error ',
  done: '@@tpkit:done ',
  exit: '@@tpkit:exit ',
} as const;

/** Options of {@link runRanks}. */
export interface RunRanksOptions {
  /** Hard bound on the whole launch in ms (default 30 000): then every rank is SIGKILLed and `timedOut` is set. */
  timeoutMs?: number;
  /** Variables added to the ranks' environment (over `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Extra arguments after the scenario name. */
  args?: string[];
  /** Launcher's SIGTERM → SIGKILL grace (default 1000 ms). */
  graceMs?: number;
  /**
   * Ranks ignore the SIGTERM the launcher sends when a sibling dies (they still die by SIGKILL after
   * `graceMs`), so survivors of a killed rank can report what they saw. Default false.
   */
  surviveSiblingDeath?: boolean;
  /** Extra `node` arguments (e.g. `['--expose-gc']`). */
  nodeArgs?: string[];
}

/** What one rank printed. */
export interface RankOutput<T> {
  /** The scenario's resolved value (absent when it threw or the rank died first). */
  result?: T;
  /** The scenario's rejection (absent when it resolved). */
  error?: ErrorInfo;
  /** Process id (from the harness's first line). */
  pid?: number;
  /** Date.now() when the scenario settled. */
  doneAt?: number;
  /** Date.now() in the rank's 'exit' event, and its exit code then (absent when it was killed). */
  exit?: { at: number; code: number };
  /** Every other stdout line of the rank, without the `[rankK]: ` prefix. */
  lines: string[];
  /** stderr lines of the rank. */
  stderr: string[];
}

/** What {@link runRanks} resolves to. */
export interface RanksOutcome<T> {
  /** The launcher's exit code (0 when every rank exited 0). */
  exitCode: number;
  /** The launcher's full result (undefined when the watchdog had to give up on it). */
  launch?: LaunchResult;
  /** Scenario results by rank (undefined where a rank printed none). */
  results: Array<T | undefined>;
  /** Everything each rank printed, by rank. */
  ranks: Array<RankOutput<T>>;
  /** True when the watchdog killed the ranks. */
  timedOut: boolean;
  /** Wall time of the launch in ms. */
  elapsedMs: number;
  /** Raw captured stdout / stderr (prefixed lines), for diagnostics. */
  stdout: string;
  stderr: string;
}

/** Collects prefixed lines from the launcher and calls `onLine(rank, text)` for each. */
class LineSink extends Writable {
  text = '';
  #partial = '';
  constructor(private readonly onLine: (rank: number, text: string) => void) {
    super({ highWaterMark: 1 << 24 });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const s = chunk.toString('utf8');
    this.text += s;
    this.#partial += s;
    let nl: number;
    while ((nl = this.#partial.indexOf('\n')) >= 0) {
      const line = this.#partial.slice(0, nl);
      this.#partial = this.#partial.slice(nl + 1);
      const m = /^\[rank(\d+)\]: (.*)$/s.exec(line);
      if (m) this.onLine(Number(m[1]), m[2]!);
    }
    cb();
  }
}

/** Resolves a fixture name (`dist_collectives`) to its compiled file under dist/test/fixtures. */
export function fixturePath(fixture: string): string {
  if (path.isAbsolute(fixture)) return fixture;
  const file = fixture.endsWith('.js') ? fixture : `${fixture}.js`;
  return path.join(__dirname, '..', 'fixtures', file);
}

/**
 * Runs `scenario` of `fixture` on `worldSize` ranks (one process each) and returns each rank's result.
 * Never rejects for a rank's failure: look at `exitCode`, `ranks[r].error` and `timedOut`.
 *
 * @param worldSize - number of ranks (processes)
 * @param fixture - compiled fixture file: a name under dist/test/fixtures (`dist_faults`) or an absolute path
 * @param scenario - scenario name the fixture's `serveScenarios` dispatches on
 */
export async function runRanks<T = unknown>(
  worldSize: number,
  fixture: string,
  scenario: string,
  opts: RunRanksOptions = {},
): Promise<RanksOutcome<T>> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const ranks: Array<RankOutput<T>> = Array.from({ length: worldSize }, () => ({ lines: [], stderr: [] }));
  const onOut = (rank: number, text: string): void => {
    const r = ranks[rank];
    if (!r) return;
    if (text.startsWith(MARK.pid)) r.pid = Number(text.slice(MARK.pid.length));
    else if (text.startsWith(MARK.result)) r.result = JSON.parse(text.slice(MARK.result.length)) as T;
    else if (text.startsWith(MARK.error)) r.error = JSON.parse(text.slice(MARK.error.length)) as ErrorInfo;
    else if (text.startsWith(MARK.done)) r.doneAt = Number(text.slice(MARK.done.length));
    else if (text.startsWith(MARK.exit)) r.exit = JSON.parse(text.slice(MARK.exit.length)) as { at: number; code: number };
    else r.lines.push(text);
  };
  const stdout = new LineSink(onOut);
  const stderr = new LineSink((rank, text) => ranks[rank]?.stderr.push(text));
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
  if (opts.surviveSiblingDeath) env.TPKIT_TEST_IGNORE_SIGTERM = '1';
  const started = Date.now();
  let timedOut = false;
  let watchdog: NodeJS.Timeout | undefined;
  let giveUp: NodeJS.Timeout | undefined;
  const launched = launch({
    nprocPerNode: worldSize,
    script: fixturePath(fixture),
    args: [scenario, ...(opts.args ?? [])],
    graceMs: opts.graceMs ?? 1000,
    env,
    stdout,
    stderr,
    nodeArgs: opts.nodeArgs,
  });
  const bounded = new Promise<LaunchResult | undefined>((resolve, reject) => {
    watchdog = setTimeout(() => {
      timedOut = true;
      for (const r of ranks) {
        if (r.pid === undefined) continue;
        try {
          process.kill(r.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      // The launcher resolves once its ranks are dead; don't wait for it forever either.
      giveUp = setTimeout(() => resolve(undefined), 5_000);
    }, timeoutMs);
    launched.then(resolve, reject);
  });
  try {
    const result = await bounded;
    return {
      exitCode: result?.exitCode ?? 137,
      launch: result,
      results: ranks.map((r) => r.result),
      ranks,
      timedOut,
      elapsedMs: Date.now() - started,
      stdout: stdout.text,
      stderr: stderr.text,
    };
  } finally {
    clearTimeout(watchdog);
    clearTimeout(giveUp);
  }
}

/** A short diagnostic of a launch: exit code, timeout, each rank's error and the tail of stderr. */
export function describeOutcome(out: RanksOutcome<unknown>): string {
  const parts = [`exit code ${out.exitCode}${out.timedOut ? ' (TIMED OUT: ranks killed by the watchdog)' : ''}`];
  if (out.launch?.summary) parts.push(out.launch.summary);
  out.ranks.forEach((r, i) => {
    if (r.error) parts.push(`rank ${i} threw ${r.error.name} ${r.error.code ?? ''}: ${r.error.message}`);
    else if (r.result === undefined) parts.push(`rank ${i} printed no result`);
  });
  const tail = out.stderr.split('\n').slice(-30).join('\n');
  if (tail.trim()) parts.push(`stderr (tail):\n${tail}`);
  return parts.join('\n');
}

/** Asserts that the launch finished in time, exited 0 and every rank printed a result. */
export function assertRanksOk(t: ExecutionContext, out: RanksOutcome<unknown>): void {
  const ok = !out.timedOut && out.exitCode === 0 && out.ranks.every((r) => r.result !== undefined && !r.error);
  if (!ok) t.fail(describeOutcome(out));
}

/**
 * Memoises one launch so that several ava tests can assert on parts of its results (one launch per world
 * size: process start-up dominates).
 */
export function sharedRun<T>(run: () => Promise<RanksOutcome<T>>): () => Promise<RanksOutcome<T>> {
  let p: Promise<RanksOutcome<T>> | undefined;
  return () => (p ??= run());
}
