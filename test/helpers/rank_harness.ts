/**
 * Fixture-side half of the multi-rank test harness (see run_ranks.ts). A fixture is a script started once per
 * rank by the launcher; it calls {@link serveScenarios} with its scenarios, and the harness
 *
 * 1. prints `@@tpkit:pid <pid>` (so the test's watchdog can SIGKILL a hung rank),
 * 2. runs the scenario named by the first script argument with a {@link RankContext},
 * 3. prints `@@tpkit:result <json>` with what it resolved to, or `@@tpkit:error <json>` ({@link ErrorInfo})
 *    and exits 1 when it threw,
 * 4. prints `@@tpkit:done <Date.now()>`, then lets the process end by itself, printing
 *    `@@tpkit:exit {"at", "code"}` on exit (so a test can bound the time from done to exit: an exit hang is a bug).
 *
 * Values are JSON-encoded; typed arrays become plain arrays.
 *
 * @module
 */
import { TpkitError } from '../../lib/errors';

/** A serialisable description of a thrown value. */
export interface ErrorInfo {
  name: string;
  message: string;
  /** TpkitError code (or a Node error code). */
  code?: string;
  backend?: string;
  details?: Record<string, unknown>;
  isTpkitError: boolean;
  isTypeError: boolean;
  isRangeError: boolean;
}

/** A settled promise with its timing: `ms` from start to settlement, `at` the wall clock (Date.now()) then. */
export type Settled<T> =
  | { ok: true; value: T; ms: number; at: number }
  | { ok: false; error: ErrorInfo; ms: number; at: number };

/** What a scenario receives. */
export interface RankContext {
  /** `RANK` from the launcher. */
  rank: number;
  /** `WORLD_SIZE` from the launcher. */
  worldSize: number;
  /** Arguments after the scenario name. */
  args: string[];
  /** Prints a free-form line (kept in `ranks[r].lines` by runRanks). */
  log(text: string): void;
}

/** A scenario: resolves to this rank's JSON-serialisable result. */
export type Scenario = (ctx: RankContext) => Promise<unknown>;

/** Describes any thrown value as {@link ErrorInfo}. */
export function errorInfo(e: unknown): ErrorInfo {
  if (e instanceof Error) {
    const te = e as TpkitError;
    return {
      name: e.name,
      message: e.message,
      code: typeof te.code === 'string' ? te.code : undefined,
      backend: te.backend,
      details: te.details ? JSON.parse(JSON.stringify(te.details)) : undefined,
      isTpkitError: e instanceof TpkitError,
      isTypeError: e instanceof TypeError,
      isRangeError: e instanceof RangeError,
    };
  }
  return { name: typeof e, message: String(e), isTpkitError: false, isTypeError: false, isRangeError: false };
}

/** Awaits `p` and records whether it resolved or rejected, and when. Never rejects. */
export async function settle<T>(p: Promise<T> | (() => Promise<T>)): Promise<Settled<T>> {
  const t0 = Date.now();
  try {
    const value = await (typeof p === 'function' ? p() : p);
    return { ok: true, value, ms: Date.now() - t0, at: Date.now() };
  } catch (e) {
    return { ok: false, error: errorInfo(e), ms: Date.now() - t0, at: Date.now() };
  }
}

/** Runs `fn` synchronously and describes what it threw (undefined when it did not throw). */
export function thrown(fn: () => unknown): ErrorInfo | undefined {
  try {
    const r = fn();
    if (r instanceof Promise) r.catch(() => {});
    return undefined;
  } catch (e) {
    return errorInfo(e);
  }
}

/** Sleeps `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function replacer(_key: string, value: unknown): unknown {
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) return Array.from(value as unknown as ArrayLike<number>);
  if (typeof value === 'bigint') return value.toString();
  return value;
}

function print(line: string): void {
  // stdout is a pipe: writes are synchronous on Linux, so a line printed right before SIGKILL still arrives.
  process.stdout.write(`${line}\n`);
}

/**
 * Runs the scenario named by `process.argv[2]` (see the module comment). Call it once, at the top level of
 * a fixture.
 */
export function serveScenarios(scenarios: Record<string, Scenario>): void {
  print(`@@tpkit:pid ${process.pid}`);
  if (process.env.TPKIT_TEST_IGNORE_SIGTERM === '1') process.on('SIGTERM', () => {});
  const [name, ...args] = process.argv.slice(2);
  const ctx: RankContext = {
    rank: Number(process.env.RANK ?? 0),
    worldSize: Number(process.env.WORLD_SIZE ?? 1),
    args,
    log: (text) => print(text),
  };
  const scenario = name === undefined ? undefined : scenarios[name];
  if (!scenario) {
    print(`@@tpkit:error ${JSON.stringify(errorInfo(new Error(`unknown scenario ${String(name)}; known: ${Object.keys(scenarios).join(', ')}`)))}`);
    process.exitCode = 1;
    return;
  }
  let settled = false;
  // A process that ends while the scenario still awaits something (typically nothing kept its event loop alive:
  // an unref'd handle under a pending promise) is reported, instead of exiting 0 without a result.
  process.on('exit', (code) => {
    print(`@@tpkit:exit ${JSON.stringify({ at: Date.now(), code })}`);
    if (settled) return;
    print(`@@tpkit:error ${JSON.stringify(errorInfo(new Error(`process exited (code ${code}) while scenario ${name} was still pending (process.exit() was called, or the event loop emptied under a pending promise)`)))}`);
    process.exitCode = 99;
  });
  scenario(ctx).then(
    (value) => {
      settled = true;
      print(`@@tpkit:result ${JSON.stringify(value ?? null, replacer)}`);
      print(`@@tpkit:done ${Date.now()}`);
    },
    (e: unknown) => {
      settled = true;
      print(`@@tpkit:error ${JSON.stringify(errorInfo(e))}`);
      print(`@@tpkit:done ${Date.now()}`);
      if (e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
      process.exitCode = 1;
    },
  );
}
