/**
 * Loads the core addon (`tpkit_core.node`) once and describes its native surface. The CUDA addon is loaded
 * lazily by `lib/native/cuda.ts`, so a machine without CUDA never maps cuBLAS or NCCL.
 *
 * @module
 * @internal
 */
import fs from 'node:fs';
import path from 'node:path';
import { TpkitError } from '../errors';

/** Settles when the job finishes; rejects with a TpkitError built by the addon. */
export type NativePromise = Promise<void>;

/**
 * The operations both native communicators (Gloo TCP and shared memory) take with the same arguments, so that
 * lib/distributed/gloo.ts drives either one. Buffers are Float32Array; counts are elements.
 */
export interface NativeCollectives {
  allReduce(buf: Float32Array, count: number, redop: number, seq: number, dtype: number, timeoutMs?: number): NativePromise;
  /** `shape`: the input's shape, part of the descriptor every rank checks (the gathered layout depends on it). */
  allGather(input: Float32Array, output: Float32Array, count: number, seq: number, dtype: number, dim: number, timeoutMs?: number, shape?: readonly number[]): NativePromise;
  /** `work` may be overwritten (Gloo's ring reduces in it). */
  reduceScatter(work: Float32Array, output: Float32Array, chunk: number, redop: number, seq: number, dtype: number, dim: number, timeoutMs?: number, shape?: readonly number[]): NativePromise;
  broadcast(buf: Float32Array, count: number, root: number, seq: number, dtype: number, timeoutMs?: number): NativePromise;
  allToAll(input: Float32Array, output: Float32Array, count: number, seq: number, dtype: number, timeoutMs?: number, shape?: readonly number[]): NativePromise;
  /** Uneven all-to-all: row counts per rank, rows of `rowElems` floats. */
  allToAllV(input: Float32Array, output: Float32Array, rowElems: number, inputSplits: number[], outputSplits: number[], seq: number, dtype: number, timeoutMs?: number): NativePromise;
  barrier(seq: number, timeoutMs?: number): NativePromise;
  send(buf: Float32Array, count: number, dst: number, p2pSeq: number, timeoutMs?: number): NativePromise;
  recv(buf: Float32Array, count: number, src: number, p2pSeq: number, timeoutMs?: number): NativePromise;
  close(): void;
  /** close() for a broken group, plus what makes peers waiting on this rank fail at once. */
  abort(): void;
}

/** The native Gloo communicator (one per process group; native/core/gloo_comm.cc). */
export interface NativeGlooComm extends NativeCollectives {
  /**
   * Rendezvous through `storeFn` (`value`: the bytes to set; `timeoutMs`: how long a get may wait, the time left
   * of the communicator's timeout); ends within that timeout (native/core/gloo_comm.cc, Rendezvous).
   */
  connect(storeFn: (op: string, key: string, value: Buffer | undefined, timeoutMs: number) => Promise<Buffer | void>): NativePromise;
}

/** The core addon's exports (see native/core/addon.cc). */
export interface CoreAddon {
  setErrorClass(cls: typeof TpkitError): void;
  sgemm(transA: boolean, transB: boolean, M: number, N: number, K: number, a: Float32Array, b: Float32Array, c: Float32Array, beta: number): NativePromise;
  linear(x: Float32Array, w: Float32Array, bias: Float32Array | null, y: Float32Array, rows: number, inFeatures: number, outFeatures: number): NativePromise;
  setBlasThreads(n: number): void;
  getBlasThreads(): number;
  blasConfig(): string;
  /** kind: 0 f32→bf16, 1 bf16→f32, 2 f32→f16, 3 f16→f32 */
  cast(src: Float32Array | Uint16Array, dst: Float32Array | Uint16Array, kind: 0 | 1 | 2 | 3): void;
  /** A zeroed ArrayBuffer of `bytes` fresh anonymous pages (transparent huge pages requested), freed by GC. */
  allocHostPages(bytes: number): ArrayBuffer;
  biasAdd(y: Float32Array, bias: Float32Array, rows: number, cols: number): NativePromise;
  siluAndMul(x: Float32Array, out: Float32Array, rows: number, d: number): NativePromise;
  rmsNorm(x: Float32Array, weight: Float32Array, out: Float32Array, rows: number, cols: number, eps: number): NativePromise;
  add(a: Float32Array, b: Float32Array, out: Float32Array, n: number): NativePromise;
  /** Rotate-half RoPE (native/core/attention.h). */
  rotary(x: Float32Array, positions: Float32Array, invFreq: Float32Array, out: Float32Array, rows: number, numHeads: number, headDim: number, scaling: number): NativePromise;
  /** Causal grouped-query attention over the first kvLength rows of k / v (native/core/attention.h). */
  attention(q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, T: number, numHeads: number, numKvHeads: number, headDim: number, kvLength: number, scale: number): NativePromise;
  softmax(x: Float32Array, out: Float32Array, rows: number, n: number): NativePromise;
  /** out[r] = index of the largest value of row r (first on ties, NaN largest); n ≥ 1. */
  argmax(x: Float32Array, out: Int32Array, rows: number, n: number): NativePromise;
  GlooComm: new (rank: number, size: number, hostname: string, timeoutMs: number, check: boolean, ioPriority: number) => NativeGlooComm;
}

let core: CoreAddon | undefined;

/** Directory holding the package root (where build/ lives), from dist/lib/native or lib/native. */
export function packageRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  return path.resolve(__dirname, '..', '..', '..');
}

/** Loads the core addon once; throws TpkitError `NATIVE_LOAD_FAILED` saying what was tried and how to build it. */
export function loadCore(): CoreAddon {
  if (core) return core;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => CoreAddon;
    core = bindings({ bindings: 'tpkit_core', module_root: packageRoot() });
  } catch (e) {
    throw new TpkitError(
      'NATIVE_LOAD_FAILED',
      `could not load the core addon tpkit_core.node (looked under ${packageRoot()}/build): ${(e as Error).message}. ` +
        'Build it with `npm run build:native` after `sudo apt-get install cmake g++ libopenblas-dev libgloo-dev`.',
      { backend: 'cpu', cause: e },
    );
  }
  core.setErrorClass(TpkitError);
  return core;
}

/**
 * The native shared-memory communicator (native/core/shm_comm.h): one segment per process group whose ranks share
 * a host. Set up by lib/distributed/shm.ts (create on rank 0 → open on the others → unlink → start); the ops
 * take the same arguments as {@link NativeGlooComm}'s and reject with the same codes (`TIMEOUT`, `PEER_LOST`,
 * `COLLECTIVE_MISMATCH`, `GROUP_BROKEN`, `GROUP_DESTROYED`).
 */
export interface NativeShmComm extends NativeCollectives {
  /** Rank 0: creates (O_EXCL, 0600), reserves and maps the segment; returns its size in bytes. Throws `SHM_UNAVAILABLE`. */
  create(path: string): number;
  /** Other ranks: maps rank 0's segment after checking owner, mode and size; returns its size in bytes. Throws `SHM_UNAVAILABLE`. */
  open(path: string): number;
  /** Removes the segment's name; false when it was already gone. */
  unlink(path: string): boolean;
  /** Every rank has mapped the segment: reads the peers' pids (liveness checks). */
  start(): void;
  /** Whether send/recv go through shared memory (groups of at most 16 ranks); else they throw. */
  p2p(): boolean;
  /**
   * Drives a one-round op that did not complete on the calling thread: true once none is being polled (it
   * completed, or the communicator's thread has it now), false while the peers are still expected (call again
   * from a later turn of the event loop).
   */
  poll(): boolean;
}

// Declaration merging: the core addon's shared-memory communicator class.
export interface CoreAddon {
  ShmComm: new (rank: number, size: number, timeoutMs: number, check: boolean) => NativeShmComm;
}
