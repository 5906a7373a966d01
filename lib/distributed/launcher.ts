/**
 * The tpkit launcher: starts one Node process per rank on this node with torchrun's environment, prefixes
 * their output with the rank, and stops the whole group as soon as one rank fails (fail-fast), optionally
 * restarting it.
 *
 * Lifecycle of one {@link launch} call, following PyTorch's elastic launcher (`torchrun`):
 * validate options → on node 0, start the job's rendezvous store in this process (a free `MASTER_PORT` when
 * 0) → spawn ranks → wait → on the first non-zero exit or signal, SIGTERM the siblings, SIGKILL them after
 * `graceMs` → restart the whole group while `restarts < maxRestarts`, against the same store under a new run id
 * → close the store → resolve a {@link LaunchResult}.
 *
 * The store lives here rather than in rank 0 (torchrun's agent does the same), so a rank 0 that dies takes
 * nothing else with it and the restarted ranks meet in the same store; each attempt's keys sit under its own
 * `TPKIT_RUN_ID`, so nothing a failed attempt wrote is read by the next.
 *
 * `npx tpkit launch …` reaches {@link launchMain}, which parses the command line, forwards SIGINT/SIGTERM
 * to the ranks and returns the exit code.
 *
 * @module
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { Command, CommanderError, Option } from 'commander';

import { TpkitError } from '../errors';
import { envStoreToken } from './env';
import { TCPStoreServer } from './store';
import {
  describe,
  integerInRange,
  nonEmptyString,
  nonNegativeInteger,
  positiveInteger,
  typeError,
  rangeError,
} from '../validate';

/**
 * Options of {@link launch}. Only `nprocPerNode` and `script` are required; the defaults are torchrun's.
 */
export interface LaunchOptions {
  /** Number of ranks (processes) started on this node: an integer ≥ 1. Becomes `LOCAL_WORLD_SIZE`. */
  nprocPerNode: number;
  /** Number of nodes taking part in the job (default 1). `WORLD_SIZE = nnodes * nprocPerNode`. */
  nnodes?: number;
  /** Index of this node in `[0, nnodes)` (default 0). Becomes `GROUP_RANK`; `RANK = nodeRank * nprocPerNode + LOCAL_RANK`. */
  nodeRank?: number;
  /**
   * Address of node 0, whose launcher hosts the rendezvous store (default `'127.0.0.1'`). Becomes `MASTER_ADDR`.
   * Each rank advertises to its Gloo peers the local address of its connection to it (see initDistributed).
   */
  masterAddr?: string;
  /**
   * TCP port of the rendezvous store on `masterAddr`, in `[0, 65535]` (default 0). Node 0's launcher hosts the
   * store on it; 0 lets it pick a free port (kept for every restart), which is only allowed when `nnodes` is 1,
   * because every node must be given the same port. Becomes `MASTER_PORT`.
   */
  masterPort?: number;
  /** Path of the JavaScript file every rank runs (relative paths resolve against the current directory). */
  script: string;
  /** Arguments passed to the script, unchanged (default none). */
  args?: string[];
  /** How many times the whole group is restarted after a failure (default 0: fail on the first one). */
  maxRestarts?: number;
  /** Milliseconds between SIGTERM and SIGKILL when stopping ranks (default 5000). */
  graceMs?: number;
  /** Base environment of the ranks (default `process.env`); the launcher's variables are set on top of it. */
  env?: NodeJS.ProcessEnv;
  /** Where the ranks' stdout lines go, each prefixed `[rank<K>]: ` (default `process.stdout`). */
  stdout?: NodeJS.WritableStream;
  /** Where the ranks' stderr lines and the launcher's restart notices go (default `process.stderr`). */
  stderr?: NodeJS.WritableStream;
  /** Extra arguments for `node` itself, placed before the script (e.g. `['--enable-source-maps']`). */
  nodeArgs?: string[];
}

/** What {@link launch} resolves to once every rank it started has exited. */
export interface LaunchResult {
  /**
   * 0 when every rank exited with code 0. Otherwise the first failing rank's exit code, or `128 + signo`
   * when it was killed by a signal (shell convention: 137 for SIGKILL), or `128 + signo` of the signal the
   * launcher itself received (130 for SIGINT) when it was interrupted.
   */
  exitCode: number;
  /** Global rank (`RANK`) of the first rank that failed, in the last attempt; absent on success. */
  failedRank?: number;
  /** Exit code of the first failing rank; `null` when it was killed by a signal or could not start. */
  failedExitCode?: number | null;
  /** Name of the signal that killed the first failing rank (`'SIGKILL'`); `null` when it exited by itself. */
  failedSignal?: string | null;
  /** Number of times the whole group was restarted (≤ `maxRestarts`). */
  restarts: number;
  /**
   * One human-readable line, e.g.
   * `tpkit launch: rank 1 exited with code 3 (first failure); stopped ranks 0, 2, 3`.
   */
  summary: string;
}

/**
 * Rank-identity variables of other launchers, removed from the ranks' environment so that the torchrun
 * variables set by this launcher are the only ones `initDistributed` can find (it also reads Slurm's and
 * Open MPI's, for jobs started by `srun` / `mpirun` directly).
 */
const FOREIGN_RANK_VARS = [
  'SLURM_PROCID',
  'SLURM_NTASKS',
  'SLURM_NPROCS',
  'SLURM_LOCALID',
  'SLURM_NODEID',
  'OMPI_COMM_WORLD_RANK',
  'OMPI_COMM_WORLD_SIZE',
  'OMPI_COMM_WORLD_LOCAL_RANK',
  'OMPI_COMM_WORLD_LOCAL_SIZE',
  'OMPI_COMM_WORLD_NODE_RANK',
  'PMI_RANK',
  'PMI_SIZE',
] as const;

/** How long the launcher waits, after a rank exited, for its stdout/stderr pipes to close (a grandchild may hold them). */
const STDIO_CLOSE_TIMEOUT_MS = 2000;
/** A line longer than this many characters without a newline is written out in pieces. */
const MAX_LINE_CHARS = 16 * 1024 * 1024;
const PREFIX = 'tpkit launch: ';

interface ResolvedOptions {
  nproc: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  script: string;
  args: string[];
  maxRestarts: number;
  graceMs: number;
  env: NodeJS.ProcessEnv;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  nodeArgs: string[];
}

function stringArray(value: unknown, name: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw typeError('array of strings', name, value);
  }
  return value.slice() as string[];
}

function writableStream(value: unknown, name: string, fallback: NodeJS.WritableStream): NodeJS.WritableStream {
  if (value === undefined) return fallback;
  if (value === null || typeof value !== 'object' || typeof (value as { write?: unknown }).write !== 'function') {
    throw typeError('writable stream', name, value);
  }
  return value as NodeJS.WritableStream;
}

/** Validates every option of {@link launch} (house-form TypeError / RangeError) and fills in the defaults. */
function resolveOptions(opts: unknown): ResolvedOptions {
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) throw typeError('object', 'options', opts);
  const o = opts as Partial<Record<keyof LaunchOptions, unknown>>;
  const nproc = positiveInteger(o.nprocPerNode, 'nprocPerNode');
  const nnodes = o.nnodes === undefined ? 1 : positiveInteger(o.nnodes, 'nnodes');
  const nodeRank = o.nodeRank === undefined ? 0 : integerInRange(o.nodeRank, 'nodeRank', 0, nnodes);
  const masterAddr = o.masterAddr === undefined ? '127.0.0.1' : nonEmptyString(o.masterAddr, 'masterAddr');
  const masterPort = o.masterPort === undefined ? 0 : integerInRange(o.masterPort, 'masterPort', 0, 65536);
  if (masterPort === 0 && nnodes > 1) {
    throw new RangeError(
      `Expected integer in [1, 65536) for masterPort when nnodes > 1 but received ${describe(masterPort)}`,
    );
  }
  const script = nonEmptyString(o.script, 'script');
  let isFile = false;
  try {
    isFile = statSync(script).isFile();
  } catch {
    isFile = false;
  }
  if (!isFile) throw rangeError('path of an existing file', 'script', script);
  const args = stringArray(o.args, 'args');
  const maxRestarts = o.maxRestarts === undefined ? 0 : nonNegativeInteger(o.maxRestarts, 'maxRestarts');
  const graceMs = o.graceMs === undefined ? 5000 : nonNegativeInteger(o.graceMs, 'graceMs');
  if (o.env !== undefined && (o.env === null || typeof o.env !== 'object' || Array.isArray(o.env))) {
    throw typeError('object', 'env', o.env);
  }
  const env = (o.env as NodeJS.ProcessEnv | undefined) ?? process.env;
  const stdout = writableStream(o.stdout, 'stdout', process.stdout);
  const stderr = writableStream(o.stderr, 'stderr', process.stderr);
  const nodeArgs = stringArray(o.nodeArgs, 'nodeArgs');
  return { nproc, nnodes, nodeRank, masterAddr, masterPort, script, args, maxRestarts, graceMs, env, stdout, stderr, nodeArgs };
}

/** How long node 0's launcher keeps its store up after its own ranks exited, while other nodes' ranks are still connected. */
const STORE_LINGER_MS = 10_000;

/**
 * Starts the rendezvous store of the job in this (node 0's) launcher process, on `masterAddr:masterPort`
 * (port 0 picks a free one, kept for every restart). With several nodes and a host name for `masterAddr`,
 * it listens on every interface (a host name may resolve to 127.0.1.1 on its own host); set
 * `TPKIT_STORE_TOKEN` to authenticate the ranks.
 */
async function startStore(cfg: ResolvedOptions): Promise<TCPStoreServer> {
  const bindHost = cfg.nnodes > 1 && isIP(cfg.masterAddr) === 0 ? '::' : cfg.masterAddr;
  try {
    return await TCPStoreServer.listen(bindHost, cfg.masterPort, { token: envStoreToken(cfg.env) });
  } catch (err) {
    throw new TpkitError('LAUNCH_FAILED', `could not start the rendezvous store on ${cfg.masterAddr}:${cfg.masterPort}: ${(err as Error).message}`, {
      backend: 'launcher',
      details: { masterAddr: cfg.masterAddr, masterPort: cfg.masterPort },
      cause: err,
    });
  }
}

/** `128 + signo`, the shell's exit status for a process killed by `signal`. */
function signalExitCode(signal: string): number {
  const signo = (osConstants.signals as Record<string, number | undefined>)[signal];
  return signo === undefined ? 1 : 128 + signo;
}

/**
 * Writes to one destination stream on behalf of many sources, pausing the sources while the destination
 * is over its high-water mark (one 'drain' listener however many ranks write to it).
 */
class Sink {
  private readonly paused = new Set<Readable>();
  private waiting = false;
  constructor(private readonly dest: NodeJS.WritableStream) {}

  write(text: string, source: Readable): void {
    if (this.dest.write(text)) return;
    if (!source.destroyed) {
      source.pause();
      this.paused.add(source);
    }
    if (this.waiting) return;
    this.waiting = true;
    this.dest.once('drain', () => {
      this.waiting = false;
      for (const s of this.paused) s.resume();
      this.paused.clear();
    });
  }
}

/** Splits one child stream into lines and writes each as `[rank<K>]: line\n`; a trailing partial line is written on flush. */
class LinePrefixer {
  private readonly decoder = new StringDecoder('utf8');
  private buffer = '';
  private flushed = false;
  constructor(
    private readonly prefix: string,
    private readonly sink: Sink,
    private readonly source: Readable,
  ) {
    source.on('data', (chunk: Buffer) => this.push(this.decoder.write(chunk)));
    source.on('end', () => this.flush());
    source.on('error', () => this.flush());
  }

  private push(text: string): void {
    if (this.flushed) return;
    this.buffer += text;
    let nl: number;
    let out = '';
    while ((nl = this.buffer.indexOf('\n')) !== -1) {
      out += this.prefix + this.buffer.slice(0, nl + 1);
      this.buffer = this.buffer.slice(nl + 1);
    }
    while (this.buffer.length >= MAX_LINE_CHARS) {
      out += `${this.prefix}${this.buffer.slice(0, MAX_LINE_CHARS)}\n`;
      this.buffer = this.buffer.slice(MAX_LINE_CHARS);
    }
    if (out) this.sink.write(out, this.source);
  }

  flush(): void {
    if (this.flushed) return;
    this.push(this.decoder.end());
    this.flushed = true;
    if (this.buffer) this.sink.write(`${this.prefix}${this.buffer}\n`, this.source);
    this.buffer = '';
  }
}

/** One rank's process during one attempt. */
interface RankProcess {
  rank: number;
  child: ChildProcess;
  exited: boolean;
  done: Promise<void>;
}

/** The first failure of an attempt. */
interface Failure {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

/** How one attempt (one start of the whole group) ended. */
interface AttemptOutcome {
  failure?: Failure;
  /** Ranks still running when the group was stopped, which were sent SIGTERM (or the forwarded signal). */
  stopped: number[];
  /** Ranks that were still running after the grace period and were sent SIGKILL. */
  killed: number[];
  /** The signal the launcher received during this attempt, if any. */
  interrupted?: NodeJS.Signals;
}

/** Lets {@link launchMain} reach the running group from its signal handlers. */
interface LaunchControl {
  interrupted: NodeJS.Signals | null;
  /** Set while an attempt runs: stops the group with `signal` (forwarded), then SIGKILL after the grace period. */
  interrupt?: (signal: NodeJS.Signals) => void;
  /** Set while an attempt runs: SIGKILLs every rank still alive. */
  killNow?: () => void;
}

function rankEnv(
  cfg: ResolvedOptions,
  localRank: number,
  port: number,
  runId: string,
  restarts: number,
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...cfg.env };
  for (const name of FOREIGN_RANK_VARS) delete env[name];
  Object.assign(env, {
    RANK: String(cfg.nodeRank * cfg.nproc + localRank),
    LOCAL_RANK: String(localRank),
    WORLD_SIZE: String(cfg.nnodes * cfg.nproc),
    LOCAL_WORLD_SIZE: String(cfg.nproc),
    GROUP_RANK: String(cfg.nodeRank),
    GROUP_WORLD_SIZE: String(cfg.nnodes),
    MASTER_ADDR: cfg.masterAddr,
    MASTER_PORT: String(port),
    TPKIT_USE_LAUNCHER_STORE: '1',
    TPKIT_RESTART_COUNT: String(restarts),
    TPKIT_MAX_RESTARTS: String(cfg.maxRestarts),
    TPKIT_RUN_ID: runId,
  });
  return env;
}

/**
 * The rendezvous-store prefix of one attempt. On one node: fresh random bytes. With several nodes every
 * node's launcher must hand out the same id without talking to the others, so it is derived from what they
 * share (master address and port) and the restart count.
 */
function makeRunId(cfg: ResolvedOptions, port: number, restarts: number): string {
  if (cfg.nnodes === 1) return randomBytes(8).toString('hex');
  return `${cfg.masterAddr}:${port}.${restarts}`;
}

/** Starts every local rank once and waits until all of them have exited (fail-fast on the first failure). */
function runAttempt(
  cfg: ResolvedOptions,
  port: number,
  restarts: number,
  control: LaunchControl,
  live: Set<ChildProcess>,
): Promise<AttemptOutcome> {
  const runId = makeRunId(cfg, port, restarts);
  const outSink = new Sink(cfg.stdout);
  const errSink = new Sink(cfg.stderr);
  const procs: RankProcess[] = [];
  const outcome: AttemptOutcome = { stopped: [], killed: [] };
  let stopping = false;
  let killTimer: NodeJS.Timeout | undefined;

  const alive = (): RankProcess[] => procs.filter((p) => !p.exited);
  const killAlive = (): void => {
    for (const p of alive()) {
      if (!outcome.killed.includes(p.rank)) outcome.killed.push(p.rank);
      p.child.kill('SIGKILL');
    }
  };
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    for (const p of alive()) {
      outcome.stopped.push(p.rank);
      p.child.kill(signal);
    }
    if (alive().length > 0) killTimer = setTimeout(killAlive, cfg.graceMs);
  };
  const fail = (failure: Failure): void => {
    if (stopping) return;
    outcome.failure = failure;
    stop('SIGTERM');
  };

  control.interrupt = (signal) => {
    outcome.interrupted ??= signal;
    stop(signal);
  };
  control.killNow = killAlive;

  for (let localRank = 0; localRank < cfg.nproc; localRank++) {
    const rank = cfg.nodeRank * cfg.nproc + localRank;
    const child = spawn(process.execPath, [...cfg.nodeArgs, cfg.script, ...cfg.args], {
      env: rankEnv(cfg, localRank, port, runId, restarts),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: false,
      windowsHide: true,
    });
    live.add(child);
    const prefix = `[rank${rank}]: `;
    const out = new LinePrefixer(prefix, outSink, child.stdout!);
    const err = new LinePrefixer(prefix, errSink, child.stderr!);
    const proc: RankProcess = { rank, child, exited: false, done: Promise.resolve() };
    proc.done = new Promise<void>((resolve) => {
      let closeTimer: NodeJS.Timeout | undefined;
      const finish = (): void => {
        if (closeTimer) clearTimeout(closeTimer);
        out.flush();
        err.flush();
        live.delete(child);
        resolve();
      };
      const exited = (): void => {
        proc.exited = true;
        live.delete(child);
        // A grandchild may keep the pipes open: stop waiting for them after a while.
        closeTimer ??= setTimeout(() => {
          child.stdout?.destroy();
          child.stderr?.destroy();
          finish();
        }, STDIO_CLOSE_TIMEOUT_MS);
      };
      child.once('exit', (code, signal) => {
        exited();
        if (code !== 0 || signal !== null) fail({ rank, code, signal });
      });
      child.on('error', (error) => {
        // Spawn failures emit 'error' without 'exit'; errors of kill() on a live process are ignored.
        if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) return;
        if (proc.exited) return;
        exited();
        fail({ rank, code: null, signal: null, error });
      });
      child.once('close', finish);
    });
    procs.push(proc);
  }

  return Promise.all(procs.map((p) => p.done)).then(() => {
    if (killTimer) clearTimeout(killTimer);
    control.interrupt = undefined;
    control.killNow = undefined;
    return outcome;
  });
}

function rankList(ranks: number[]): string {
  return [...ranks].sort((a, b) => a - b).join(', ');
}

function describeFailure(f: Failure): string {
  if (f.error) return `rank ${f.rank} failed to start: ${f.error.message}`;
  if (f.signal !== null) return `rank ${f.rank} was killed by signal ${f.signal}`;
  return `rank ${f.rank} exited with code ${f.code}`;
}

function describeStops(o: AttemptOutcome, graceMs: number): string {
  let text = o.stopped.length > 0 ? `; stopped ranks ${rankList(o.stopped)}` : '';
  if (o.killed.length > 0) text += `; killed ranks ${rankList(o.killed)} with SIGKILL after ${graceMs} ms`;
  return text;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

async function runLaunch(cfg: ResolvedOptions, control: LaunchControl): Promise<LaunchResult> {
  const live = new Set<ChildProcess>();
  // Never leave a rank behind, even when the launcher exits without waiting (process.exit, uncaught error).
  const onExit = (): void => {
    for (const child of live) child.kill('SIGKILL');
  };
  process.on('exit', onExit);
  // Node 0's launcher hosts the store (as torchrun's agent does): it outlives rank 0 and every restart.
  const store = cfg.nodeRank === 0 ? await startStore(cfg) : undefined;
  const port = store?.port ?? cfg.masterPort;
  try {
    let restarts = 0;
    for (;;) {
      if (control.interrupted) {
        const signal = control.interrupted;
        return { exitCode: signalExitCode(signal), restarts, summary: `${PREFIX}interrupted by ${signal} before starting ranks` };
      }
      const o = await runAttempt(cfg, port, restarts, control, live);
      const after = restarts > 0 ? ` after ${plural(restarts, 'restart')}` : '';
      if (o.interrupted) {
        return {
          exitCode: signalExitCode(o.interrupted),
          restarts,
          summary: `${PREFIX}interrupted by ${o.interrupted}${describeStops(o, cfg.graceMs)}${after}`,
        };
      }
      const f = o.failure;
      if (!f) {
        const which =
          cfg.nnodes === 1
            ? `all ${plural(cfg.nproc, 'rank')}`
            : `all ${plural(cfg.nproc, 'local rank')} (ranks ${cfg.nodeRank * cfg.nproc}..${(cfg.nodeRank + 1) * cfg.nproc - 1})`;
        return { exitCode: 0, restarts, summary: `${PREFIX}${which} exited with code 0${after}` };
      }
      if (restarts < cfg.maxRestarts && !control.interrupted) {
        restarts++;
        cfg.stderr.write(
          `${PREFIX}${describeFailure(f)}; restarting all ${plural(cfg.nproc, 'rank')} (restart ${restarts} of ${cfg.maxRestarts})\n`,
        );
        continue;
      }
      const gaveUp = restarts > 0 ? `; gave up after ${plural(restarts, 'restart')}` : '';
      return {
        exitCode: f.signal !== null ? signalExitCode(f.signal) : f.code !== null && f.code !== 0 ? f.code : 1,
        failedRank: f.rank,
        failedExitCode: f.code,
        failedSignal: f.signal,
        restarts,
        summary: `${PREFIX}${describeFailure(f)} (first failure)${describeStops(o, cfg.graceMs)}${gaveUp}`,
      };
    }
  } finally {
    process.removeListener('exit', onExit);
    if (store) {
      // Ranks of other nodes may still be finishing (their last store ops, their goodbyes): give them a while.
      if (cfg.nnodes > 1) await store.drained(STORE_LINGER_MS);
      await store.close();
    }
  }
}

/**
 * Runs `process.execPath [...nodeArgs] script ...args` once per local rank, with torchrun's environment,
 * and resolves when every rank has exited.
 *
 * Each rank gets the environment of `opts.env` (default `process.env`) plus, as torchrun sets them:
 * `RANK = nodeRank * nprocPerNode + LOCAL_RANK`, `LOCAL_RANK`, `WORLD_SIZE = nnodes * nprocPerNode`,
 * `LOCAL_WORLD_SIZE`, `GROUP_RANK = nodeRank`, `GROUP_WORLD_SIZE = nnodes`, `MASTER_ADDR`, `MASTER_PORT`;
 * and tpkit's `TPKIT_USE_LAUNCHER_STORE=1` (the store is node 0's launcher's, not rank 0's), `TPKIT_RESTART_COUNT`, `TPKIT_MAX_RESTARTS` and `TPKIT_RUN_ID` (a fresh random id for every
 * start of the group on one node — use it as the rendezvous store's key prefix; with `nnodes > 1` it is
 * `MASTER_ADDR:MASTER_PORT.restartCount` so that all nodes agree). Slurm's and Open MPI's rank variables
 * (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `OMPI_COMM_WORLD_*`, `PMI_RANK`, …) are removed, so the
 * torchrun ones are the only rank identity a rank sees. Ranks get no stdin.
 *
 * Every line a rank writes is copied to `opts.stdout` / `opts.stderr` as `[rank<K>]: line` (K = `RANK`);
 * a trailing line without newline is written when the rank exits.
 *
 * Fail-fast (torchrun's): when a rank exits with a non-zero code or is killed by a signal, the ranks still
 * running are sent SIGTERM at once and SIGKILL after `graceMs` ms. While fewer than `maxRestarts` restarts
 * were made, the whole group is then started again (new `TPKIT_RUN_ID`, same store and port) and a notice
 * is written to `opts.stderr`. With `nnodes > 1` only this node's ranks are stopped
 * and restarted; the other nodes learn of it through their collectives' timeouts.
 *
 * No rank outlives the call: ranks are not detached and are SIGKILLed if the launcher process exits
 * early. (A launcher killed by SIGKILL cannot clean up.) This function installs no signal handlers; see
 * {@link launchMain}.
 *
 * @param opts - see {@link LaunchOptions}
 * @returns the outcome; it resolves (never rejects) when ranks fail — look at `exitCode`
 * @throws (as a rejection, before any process is started) `TypeError` / `RangeError` of the form
 *   `Expected positive integer for nprocPerNode but received 0 of type number` for invalid options
 *   (including a `script` that is not an existing file and `masterPort` 0 with `nnodes > 1`);
 *   `TpkitError` with code `LAUNCH_FAILED` when node 0 cannot start the store on `masterAddr:masterPort`.
 *
 * @example
 * ```ts
 * const r = await launch({ nprocPerNode: 4, script: 'dist/examples/llama-layer/main.js' });
 * if (r.exitCode !== 0) console.error(r.summary);
 * ```
 */
export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const cfg = resolveOptions(opts);
  return runLaunch(cfg, { interrupted: null });
}

/** Parses a CLI integer strictly; anything else is handed on as the string, for the validator to name. */
function cliInteger(value: string): number | string {
  return /^-?\d+$/.test(value.trim()) ? Number(value) : value;
}

/**
 * Entry point of `tpkit launch`: parses the command line, runs {@link launch} with process.stdout/stderr,
 * and returns the exit code for the caller to exit with (it never calls `process.exit`).
 *
 * `argv` holds the arguments after `launch`:
 * `--nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P --max-restarts K
 * --grace-ms MS] script [args...]`. Everything after the script (or after `--`) belongs to the script and
 * is passed to it unchanged, `--` and options included. `--nproc-per-node` defaults to 1 and the others to
 * {@link LaunchOptions}' defaults; the ranks' environment follows torchrun (see {@link launch}).
 *
 * While the ranks run, SIGINT and SIGTERM received by this process are forwarded to every rank (no
 * restart follows; SIGKILL after the grace period; a second signal SIGKILLs at once); the handlers are
 * removed before it returns.
 *
 * @param argv - command-line arguments after `launch` (not including `node` or the CLI's path)
 * @returns 0 when every rank exited 0; the first failing rank's exit code (or 128 + signo when it was
 *   killed by a signal); 128 + signo when the launcher was interrupted; 2 for a usage error (bad flag,
 *   invalid option — the message is printed to stderr); 1 when the launch could not start (e.g. no free
 *   port). On failure the summary line is printed to stderr.
 */
export async function launchMain(argv: string[]): Promise<number> {
  const program = new Command('tpkit launch')
    .description('Start one Node process per rank with torchrun environment variables (RANK, WORLD_SIZE, …).')
    .addOption(new Option('--nproc-per-node <n>', 'ranks (processes) on this node').argParser(cliInteger).default(1))
    .addOption(new Option('--nnodes <n>', 'number of nodes').argParser(cliInteger))
    .addOption(new Option('--node-rank <r>', 'index of this node in [0, nnodes)').argParser(cliInteger))
    .addOption(new Option('--master-addr <addr>', 'address of the node hosting rank 0 (default 127.0.0.1)'))
    .addOption(
      new Option('--master-port <port>', 'port of the rendezvous store; 0 picks a free one (nnodes 1 only)').argParser(
        cliInteger,
      ),
    )
    .addOption(new Option('--max-restarts <k>', 'restarts of the whole group after a failure (default 0)').argParser(cliInteger))
    .addOption(new Option('--grace-ms <ms>', 'milliseconds from SIGTERM to SIGKILL when stopping ranks (default 5000)').argParser(cliInteger))
    .argument('<script>', 'JavaScript file run by every rank')
    .argument('[args...]', 'arguments for the script, passed unchanged')
    .passThroughOptions()
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(s),
    });

  try {
    program.parse(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    throw e;
  }
  const flags = program.opts<{
    nprocPerNode: number;
    nnodes?: number;
    nodeRank?: number;
    masterAddr?: string;
    masterPort?: number;
    maxRestarts?: number;
    graceMs?: number;
  }>();
  const [script, args] = program.processedArgs as [string, string[] | undefined];

  let cfg: ResolvedOptions;
  try {
    cfg = resolveOptions({ ...flags, script, args: args ?? [] } satisfies LaunchOptions);
  } catch (e) {
    process.stderr.write(`${PREFIX}${(e as Error).message}\n`);
    return 2;
  }

  const control: LaunchControl = { interrupted: null };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (control.interrupted) {
      control.killNow?.();
      return;
    }
    control.interrupted = signal;
    control.interrupt?.(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const result = await runLaunch(cfg, control);
    if (result.exitCode !== 0) process.stderr.write(`${result.summary}\n`);
    return result.exitCode;
  } catch (e) {
    process.stderr.write(`${PREFIX}${(e as Error).message}\n`);
    return 1;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}
