/**
 * Child processes for tests: run one to its end and collect what it printed.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';

/** What a finished child printed, and its exit code (null: killed by a signal, e.g. at the time limit). */
export interface Collected {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `cmd args` to its end (SIGKILL after `timeoutMs`, default 120 s) and collects stdout and stderr. */
export function spawnCollect(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Collected> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** dist/bench/entry.js, the `tpkit bench` entry point. */
export const BENCH_ENTRY = path.join(__dirname, '..', '..', 'bench', 'entry.js');

/**
 * Runs `tpkit bench …` in its own process with `env` over this one's, without the launcher's variables (RANK,
 * WORLD_SIZE, …), so that it launches its ranks itself.
 */
export function runBench(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Collected> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const k of ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_PORT', 'TPKIT_BENCH_RESULT', 'TPKIT_BENCH_PROGRESS']) delete childEnv[k];
  return spawnCollect(process.execPath, [BENCH_ENTRY, ...args], { env: childEnv, timeoutMs: 600_000 });
}
