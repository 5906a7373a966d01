/**
 * The raw C++ peers (bench/native/): OpenBLAS sgemm and a Gloo all-reduce sweep with no Node in between,
 * so the report can show tpkit / raw (the MPI sweep, run under mpirun, is in ./mpi.ts). They are built by CMake, standalone
 * (`cmake -S bench/native -B build/bench-native && cmake --build build/bench-native`) or as a subdirectory
 * of the addon build.
 *
 * @module
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../lib/native';
import type { PeerCell, PeerStatus } from '../schema';
import { commandLine, lastLine, runPeerProcess, type SweepOptions } from './common';

/** How to build the raw peers (printed when they are missing). */
export const NATIVE_BUILD_HINT = 'cmake -S bench/native -B build/bench-native && cmake --build build/bench-native';

/** The raw peer programs bench/native builds (tpkit_bench_mpi only where CMake finds MPI). */
export type NativePeerProgram = 'tpkit_bench_sgemm' | 'tpkit_bench_gloo' | 'tpkit_bench_mpi';

/**
 * Path of a raw peer program: `$TPKIT_BENCH_NATIVE_DIR`, then build/bench-native (standalone build), then
 * build/bench/native (built from the root CMakeLists), under the package root. Null when not built.
 */
export function findNativePeer(name: NativePeerProgram, env: NodeJS.ProcessEnv = process.env): string | null {
  const root = packageRoot();
  const dirs = [env.TPKIT_BENCH_NATIVE_DIR, path.join(root, 'build', 'bench-native'), path.join(root, 'build', 'bench', 'native')];
  for (const dir of dirs) {
    if (!dir) continue;
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // next
    }
  }
  return null;
}

/**
 * {@link findNativePeer}, building bench/native first (standalone CMake build into build/bench-native) when
 * the program is missing and `cmake` is on the PATH. Progress of the build goes to stderr.
 *
 * @returns the path, or the reason it is not available
 */
export async function ensureNativePeer(name: NativePeerProgram, env: NodeJS.ProcessEnv = process.env): Promise<{ path: string } | { reason: string }> {
  const found = findNativePeer(name, env);
  if (found) return { path: found };
  const root = packageRoot();
  const src = path.join(root, 'bench', 'native');
  if (!fs.existsSync(path.join(src, 'CMakeLists.txt'))) return { reason: `${name} is not built and bench/native is not in this installation` };
  const out = path.join(root, 'build', 'bench-native');
  process.stderr.write(`# building the raw peers: cmake -S ${src} -B ${out} && cmake --build ${out}\n`);
  try {
    for (const args of [['-S', src, '-B', out, '-DCMAKE_BUILD_TYPE=Release'], ['--build', out]]) {
      const r = await runPeerProcess('cmake', args, { timeoutMs: 300_000 });
      if (r.code !== 0) return { reason: `${name} is not built and building it failed (${lastLine(r.stderr)}); build it with ${NATIVE_BUILD_HINT}` };
    }
  } catch (e) {
    return { reason: `${name} is not built and cmake cannot run (${(e as Error).message}); build it with ${NATIVE_BUILD_HINT}` };
  }
  const built = findNativePeer(name, env);
  return built ? { path: built } : { reason: `${name} is still missing after the build; build it with ${NATIVE_BUILD_HINT}` };
}

/** A peer's figures keyed by size (collectives) or shape (GEMM), and its status. */
export interface PeerRun<K> {
  status: PeerStatus;
  cells: Map<K, PeerCell>;
}

function skipped<K>(reason: string, command?: string): PeerRun<K> {
  return { status: { status: 'skipped', reason, ...(command ? { command } : {}) }, cells: new Map() };
}

/**
 * Runs the raw Gloo all-reduce sweep on `worldSize` processes (rendezvous through a FileStore in a fresh
 * temporary directory), float32, with the harness's sizes, warm-up and iterations.
 *
 * @returns cells keyed by size in bytes (rate = busbw, GB/s); status `skipped` with the reason when the
 *   program is not built or fails
 */
export async function runGlooPeer(o: SweepOptions & { checkExchange?: boolean }): Promise<PeerRun<number>> {
  const found = await ensureNativePeer('tpkit_bench_gloo');
  if ('reason' in found) return skipped(found.reason);
  const exe = found.path;
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-gloo-store-'));
  const common = ['--size', String(o.worldSize), '--store', store, '-b', String(o.minBytes), '-e', String(o.maxBytes), '-f', String(o.stepFactor), '-n', String(o.iters), '-w', String(o.warmup)];
  if (o.checkExchange) common.push('--check-exchange');
  const command = commandLine(exe, ['--rank', 'R', ...common]);
  try {
    const runs = Array.from({ length: o.worldSize }, (_, r) => runPeerProcess(exe, ['--rank', String(r), ...common], { timeoutMs: o.timeoutMs }));
    const results = await Promise.all(runs);
    const bad = results.findIndex((r) => r.code !== 0);
    if (bad >= 0) {
      const r = results[bad]!;
      return skipped(`raw Gloo rank ${bad} exited with ${r.signal ?? `code ${r.code}`}: ${lastLine(r.stderr)}`, command);
    }
    const records = results[0]!.records;
    const meta = records.find((x) => x.kind === 'meta');
    const cells = new Map<number, PeerCell>();
    for (const x of records) {
      if (x.kind !== 'row') continue;
      cells.set(x.size as number, { timeUs: x.timeUs as number, p50Us: x.p50Us as number, rate: x.busbw as number, wrong: x.wrong as number });
    }
    return { status: { status: 'ok', version: `Gloo ${String(meta?.gloo ?? '?')}`, command }, cells };
  } catch (e) {
    return skipped(`could not run ${exe}: ${(e as Error).message}`, command);
  } finally {
    fs.rmSync(store, { recursive: true, force: true });
  }
}

/** A GEMM shape: C[M,N] = A[M,K]·op(B). */
export interface GemmShape {
  m: number;
  n: number;
  k: number;
  transB: boolean;
}

/** The key of a shape in peer results: `MxNxK` plus `t` when op(B) = Bᵀ (the raw program's argument form). */
export function shapeKey(s: GemmShape): string {
  return `${s.m}x${s.n}x${s.k}${s.transB ? 't' : ''}`;
}

/**
 * Runs raw OpenBLAS sgemm on `shapes` with `threads` OpenBLAS threads.
 *
 * @returns cells keyed by {@link shapeKey} (rate = TFLOP/s)
 */
export async function runSgemmPeer(o: { shapes: readonly GemmShape[]; iters: number; warmup: number; threads: number; timeoutMs?: number }): Promise<PeerRun<string>> {
  const found = await ensureNativePeer('tpkit_bench_sgemm');
  if ('reason' in found) return skipped(found.reason);
  const exe = found.path;
  const args = ['--threads', String(o.threads), '-n', String(o.iters), '-w', String(o.warmup), ...o.shapes.map(shapeKey)];
  const command = commandLine(exe, args);
  try {
    const r = await runPeerProcess(exe, args, { timeoutMs: o.timeoutMs });
    if (r.code !== 0) return skipped(`raw sgemm exited with ${r.signal ?? `code ${r.code}`}: ${lastLine(r.stderr)}`, command);
    const meta = r.records.find((x) => x.kind === 'meta');
    const cells = new Map<string, PeerCell>();
    for (const x of r.records) {
      if (x.kind !== 'row') continue;
      const key = shapeKey({ m: x.m as number, n: x.n as number, k: x.k as number, transB: x.transB as boolean });
      cells.set(key, { timeUs: x.timeUs as number, rate: x.tflops as number, wrong: x.wrong as number });
    }
    return { status: { status: 'ok', version: String(meta?.config ?? 'OpenBLAS'), command }, cells };
  } catch (e) {
    return skipped(`could not run ${exe}: ${(e as Error).message}`, command);
  }
}
