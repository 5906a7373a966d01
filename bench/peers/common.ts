/**
 * Running a peer program (raw C++ or Python) and reading its JSON-lines output.
 *
 * @module
 */
import { spawn } from 'node:child_process';

/** The size sweep every peer runs, in the harness's terms (bytes, nccl-tests' -b/-e/-f/-n/-w). */
export interface SweepOptions {
  /** Processes (ranks) of the peer. */
  worldSize: number;
  /** Smallest message, bytes. */
  minBytes: number;
  /** Largest message, bytes. */
  maxBytes: number;
  /** Multiplier between sizes. */
  stepFactor: number;
  /** Timed iterations per size. */
  iters: number;
  /** Warm-up iterations per size. */
  warmup: number;
  /** Bound on the whole peer run, ms. */
  timeoutMs?: number;
}

/** What a peer process printed and how it ended. */
export interface PeerProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Parsed JSON objects of its stdout lines (other lines are ignored). */
  records: Record<string, unknown>[];
  /** Its whole stdout (for programs, such as `mpirun --version`, that print no JSON). */
  stdout: string;
  stderr: string;
}

/**
 * Starts `file args` and collects its JSON-line stdout. Rejects only when the program cannot start;
 * a non-zero exit is reported in the result. Killed after `timeoutMs`.
 */
export function runPeerProcess(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<PeerProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const records: Record<string, unknown>[] = [];
      for (const line of out.split('\n')) {
        const s = line.trim();
        if (!s.startsWith('{')) continue;
        try {
          records.push(JSON.parse(s) as Record<string, unknown>);
        } catch {
          // not a record
        }
      }
      resolve({ code, signal, records, stdout: out, stderr: err });
    });
  });
}

/** Shell-quoted command line, for the report. */
export function commandLine(file: string, args: readonly string[]): string {
  return [file, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** The last non-empty line of a program's stderr (for skip reasons). */
export function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines[lines.length - 1] ?? '';
}
