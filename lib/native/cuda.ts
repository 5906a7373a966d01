/**
 * Loads the CUDA addon (`build/Release/tpkit_cuda.node`: cuBLAS/cuBLASLt GEMM, CUDA kernels, NCCL) lazily, the
 * first time a `cuda` tensor, the `nccl` backend or {@link cudaStatus} is asked for, so that a CPU-only program
 * never maps cuBLAS or NCCL (~160 MB). Describes the addon's native surface.
 *
 * @module
 * @internal
 */
import fs from 'node:fs';
import path from 'node:path';
import { TpkitError } from '../errors';
import { packageRoot } from './index';

/**
 * Device memory of one cuda tensor's storage (native `DeviceBuffer`, `native/cuda/device_buffer.h`): allocated
 * with `cudaMallocFromPoolAsync` on the device's stream, freed stream-ordered. Its bytes are reported to V8
 * (`AdjustExternalMemory`); the GC finalizer frees a buffer that was never freed.
 */
export interface NativeDeviceBuffer {
  /** CUDA device index. */
  readonly device: number;
  /** Native dtype code (`DTYPE_CODE`: float32 0, float16 1, bfloat16 2). */
  readonly dtype: number;
  /** Element count. */
  readonly numel: number;
  /** Size in bytes. */
  readonly bytes: number;
  /** True once `free()` was called. */
  readonly freed: boolean;
  /** Returns the memory to the device's pool (stream-ordered). Idempotent. */
  free(): void;
}

/** `new DeviceBuffer(device, dtype, numel)`: uninitialised device memory. */
export type NativeDeviceBufferCtor = new (device: number, dtype: number, numel: number) => NativeDeviceBuffer;

/**
 * A native NCCL communicator (`native/cuda/nccl_comm.h`). Buffers are DeviceBuffers on the communicator's
 * device; counts come from their element counts. Every op settles when its completion event has completed
 * on the device's stream, and rejects with a TpkitError `TIMEOUT` / `NCCL_<NAME>` / `GROUP_BROKEN` /
 * `GROUP_DESTROYED`.
 */
export interface NativeNcclComm {
  /** `ncclCommInitRankConfig` (non-blocking) with the 128-byte unique id of rank 0; polled until ready or the timeout. */
  connect(uniqueId: Uint8Array): Promise<void>;
  /** In place; `redop` is a `REDOP_CODE` (avg = ncclAvg). */
  allReduce(buf: NativeDeviceBuffer, redop: number, timeoutMs?: number): Promise<void>;
  /** `output` holds `size × input.numel` elements, rank-major. */
  allGather(input: NativeDeviceBuffer, output: NativeDeviceBuffer, timeoutMs?: number): Promise<void>;
  /** `input` holds `size` rank-major chunks of `output.numel` elements; `output` gets this rank's reduced chunk. */
  reduceScatter(input: NativeDeviceBuffer, output: NativeDeviceBuffer, redop: number, timeoutMs?: number): Promise<void>;
  /** In place; `root` is a rank of this communicator. */
  broadcast(buf: NativeDeviceBuffer, root: number, timeoutMs?: number): Promise<void>;
  /** `ncclAlltoAll`: chunk j of `input` goes to rank j; chunk i of `output` comes from rank i. */
  allToAll(input: NativeDeviceBuffer, output: NativeDeviceBuffer, timeoutMs?: number): Promise<void>;
  /** Uneven all-to-all: rows of `rowElems` elements, `inputSplits[j]` rows to rank j, `outputSplits[i]` rows from rank i. */
  allToAllV(input: NativeDeviceBuffer, output: NativeDeviceBuffer, rowElems: number, inputSplits: number[], outputSplits: number[], timeoutMs?: number): Promise<void>;
  /** A one-element all-reduce, settled when it completed on the stream. */
  barrier(timeoutMs?: number): Promise<void>;
  /** `ncclSend` of the whole buffer to rank `dst` (≠ this rank). */
  send(buf: NativeDeviceBuffer, dst: number, timeoutMs?: number): Promise<void>;
  /** `ncclRecv` of the whole buffer from rank `src` (≠ this rank). */
  recv(buf: NativeDeviceBuffer, src: number, timeoutMs?: number): Promise<void>;
  /** `ncclCommSplit`: members pass color ≥ 0, their new rank as key and an unconnected child; others -1 and null. */
  split(color: number, key: number, child: NativeNcclComm | null, timeoutMs?: number): Promise<void>;
  /** Idempotent: queued ops reject with GROUP_DESTROYED, ops in flight finish, then finalize + destroy (abort when broken). */
  close(): void;
  /** True once an async error or a timeout aborted the communicator. */
  isBroken(): boolean;
}

/** What the addon reports about the CUDA runtime and libraries (never throws). */
export interface NativeCudaRuntimeStatus {
  /** Visible CUDA devices (0 when cudaGetDeviceCount fails, e.g. error 35 without a driver, 100 without a GPU). */
  deviceCount: number;
  /** Why deviceCount is 0 (cudaGetDeviceCount's error), or null. */
  deviceError: string | null;
  /** CUDA runtime version the addon was built with (`13.0`). */
  cudaRuntime: string | null;
  /** CUDA version the installed driver supports, or null without a driver. */
  cudaDriver: string | null;
  /** cuBLAS version (`13.1.1`). */
  cublas: string | null;
  /** cuBLASLt version (`13.1.1`). */
  cublasLt: string | null;
  /** NCCL version (`2.30.7`). */
  nccl: string | null;
}

/** Device memory facts in bytes (`cudaMemGetInfo` and the tensors' memory pool). */
export interface CudaMemoryInfo {
  /** Free device memory (bytes). */
  free: number;
  /** Total device memory (bytes). */
  total: number;
  /** Bytes of the pool in use by live device buffers. */
  poolUsed: number;
  /** Bytes the pool holds from the driver (used + cached for reuse). */
  poolReserved: number;
}

/** The CUDA addon's exports (see native/cuda/addon.cc). Sizes are element counts. */
export interface CudaAddon {
  /** Registers the constructor native code uses for coded errors. */
  setErrorClass(cls: typeof TpkitError): void;
  /** Runtime and library facts; never throws. */
  status(): NativeCudaRuntimeStatus;
  /** Device memory facts (no synchronisation: call `synchronize` first to include every enqueued free). */
  memoryInfo(device: number): CudaMemoryInfo;
  /** Settles when everything enqueued so far on the device's stream completed. */
  synchronize(device: number): Promise<void>;
  /** `new DeviceBuffer(device, dtype, numel)`: stream-ordered allocation from the device's pool. */
  DeviceBuffer: NativeDeviceBufferCtor;
  /** `cudaMemsetAsync(0)` of the whole buffer. */
  zero(buf: NativeDeviceBuffer): void;
  /** Float32Array values are converted to the buffer's dtype; Uint16Array holds raw float16/bfloat16 bits. */
  upload(dst: NativeDeviceBuffer, src: Float32Array | Uint16Array): void;
  /** The elements as float32, resolved when the copy's event completed (off the main thread). */
  download(src: NativeDeviceBuffer): Promise<Float32Array>;
  /** `dst[o, l, i] = src[o, start + l, i]` (a 2-D strided copy: `outer` rows of `length·inner` elements). */
  narrow(src: NativeDeviceBuffer, dst: NativeDeviceBuffer, outer: number, size: number, inner: number, start: number, length: number): void;
  /** `dst[o, p, ·] = parts[p][o, ·]`: concatenation along a dim; part p contributes `blocks[p]` elements per outer row. */
  cat(parts: NativeDeviceBuffer[], dst: NativeDeviceBuffer, outer: number, blocks: number[]): void;
  /** `dst = src` converted to dst's dtype (round to nearest even); equal element counts. */
  cast(src: NativeDeviceBuffer, dst: NativeDeviceBuffer): void;
  /** `c[M,N] = op(a)·op(b) (+ bias[N])`, row-major, one dtype, float32 accumulation (TF32 only when `tf32`). */
  gemm(a: NativeDeviceBuffer, b: NativeDeviceBuffer, c: NativeDeviceBuffer, bias: NativeDeviceBuffer | null, M: number, N: number, K: number, transA: boolean, transB: boolean, tf32: boolean): void;
  /** `y[r, c] += bias[c]` in place. */
  biasAdd(y: NativeDeviceBuffer, bias: NativeDeviceBuffer, rows: number, cols: number): void;
  /** `out[r, j] = silu(x[r, j]) · x[r, d + j]`. */
  siluAndMul(x: NativeDeviceBuffer, out: NativeDeviceBuffer, rows: number, d: number): void;
  /** `out = x / sqrt(mean(x²) + eps) · weight` per row (float32 accumulation). */
  rmsNorm(x: NativeDeviceBuffer, weight: NativeDeviceBuffer, out: NativeDeviceBuffer, rows: number, cols: number, eps: number): void;
  /** `out = a + b`. */
  add(a: NativeDeviceBuffer, b: NativeDeviceBuffer, out: NativeDeviceBuffer): void;
  /** Rows of `table [vocab, dim]` at `ids`; ids outside [0, vocab) give a zero row. */
  embedding(table: NativeDeviceBuffer, ids: Int32Array, out: NativeDeviceBuffer, dim: number): void;
  /**
   * Rotate-half RoPE of x `[rows, numHeads·headDim]` into out (float32 math); `positions` (rows) and `invFreq`
   * (headDim/2) are float32 host arrays, staged to the device before the call returns.
   */
  rotary(x: NativeDeviceBuffer, positions: Float32Array, invFreq: Float32Array, out: NativeDeviceBuffer, rows: number, numHeads: number, headDim: number, scaling: number): void;
  /** Causal grouped-query attention over the first kvLength rows of k / v into out `[T, numHeads·headDim]`. */
  attention(q: NativeDeviceBuffer, k: NativeDeviceBuffer, v: NativeDeviceBuffer, out: NativeDeviceBuffer, T: number, numHeads: number, numKvHeads: number, headDim: number, kvLength: number, scale: number): void;
  /** Max-subtracted softmax of each row of `n` (float32 math). */
  softmax(x: NativeDeviceBuffer, out: NativeDeviceBuffer, rows: number, n: number): void;
  /**
   * Index of the largest value of each row (first on ties, NaN largest), stored as int32 bit patterns in `out`,
   * a float32 buffer of ≥ rows elements (download() copies float32 bytes unchanged).
   */
  argmax(x: NativeDeviceBuffer, out: NativeDeviceBuffer, rows: number, n: number): void;
  /** `dst[dstOffset + i] = src[i]` for i < count (elements, same dtype): a device-to-device cudaMemcpyAsync. */
  copyRows(dst: NativeDeviceBuffer, dstOffset: number, src: NativeDeviceBuffer, count: number): void;
  /** Fills `out` (≥ 128 bytes) with a fresh ncclUniqueId (runs on the libuv pool). */
  ncclUniqueId(out: Uint8Array): Promise<void>;
  /** `new NcclComm(rank, size, device, timeoutMs)`. */
  NcclComm: new (rank: number, size: number, device: number, timeoutMs: number) => NativeNcclComm;
}

/**
 * What {@link cudaStatus} reports: whether cuda tensors and the nccl backend can be used in this process.
 */
export interface CudaStatus {
  /** True when the addon loaded and at least one GPU is visible. */
  cuda: boolean;
  /** True when NCCL can be used (the addon loaded, it links NCCL, and a GPU is visible). */
  nccl: boolean;
  /** Number of visible CUDA devices (0 without a GPU or driver). */
  cudaDevices: number;
  /** Why `cuda` is false: the addon is not built, failed to load (with the loader's error), or no GPU is visible. */
  reason?: string;
  /** Versions of the libraries the addon loaded (when it loaded). */
  versions?: { cudaRuntime?: string; cudaDriver?: string; cublas?: string; nccl?: string };
}

/** Where the CUDA addon is expected after `npm run build:native`. */
export function cudaAddonPath(): string {
  return path.join(packageRoot(), 'build', 'Release', 'tpkit_cuda.node');
}

const BUILD_HINT =
  'To build it: install the CUDA toolkit (nvcc), make cuBLAS and NCCL findable (set CUBLAS_ROOT / NCCL_ROOT, e.g. to the ' +
  'nvidia/cu13 and nvidia/nccl folders of the nvidia-cublas and nvidia-nccl-cu13 wheels, or install them under ' +
  '/usr/local/cuda or /usr), then run `npm run build:native`.';

let addon: CudaAddon | undefined;
let loadError: TpkitError | undefined;

/**
 * Loads the CUDA addon once (success and failure are both cached).
 *
 * @throws TpkitError `CUDA_UNAVAILABLE` naming the path that was tried, the loader's error, and how to build it
 */
export function loadCuda(): CudaAddon {
  if (addon) return addon;
  if (loadError) throw loadError;
  const file = cudaAddonPath();
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => CudaAddon;
    const loaded = bindings({ bindings: 'tpkit_cuda', module_root: packageRoot() });
    loaded.setErrorClass(TpkitError);
    addon = loaded;
    return loaded;
  } catch (e) {
    const detail = (e as Error)?.message ?? String(e);
    const what = fs.existsSync(file)
      ? `the cuda addon ${file} failed to load: ${detail}`
      : `the cuda addon is not built (looked for ${file})`;
    loadError = new TpkitError('CUDA_UNAVAILABLE', `${what}. ${BUILD_HINT}`, { backend: 'cuda', cause: e });
    throw loadError;
  }
}

/**
 * Whether cuda tensors and the nccl backend are usable, and why not. Never throws; loads the CUDA addon on
 * first call (cuBLAS and NCCL get mapped) when it is built. `lib/index.ts` reports it through `backends()`.
 *
 * @example
 * ```ts
 * const s = cudaStatus();
 * if (!s.cuda) console.log(`running on cpu: ${s.reason}`);
 * ```
 */
export function cudaStatus(): CudaStatus {
  let native: CudaAddon;
  try {
    native = loadCuda();
  } catch (e) {
    return { cuda: false, nccl: false, cudaDevices: 0, reason: (e as Error).message };
  }
  try {
    const s = native.status();
    const versions: NonNullable<CudaStatus['versions']> = {};
    if (s.cudaRuntime) versions.cudaRuntime = s.cudaRuntime;
    if (s.cudaDriver) versions.cudaDriver = s.cudaDriver;
    if (s.cublas) versions.cublas = s.cublas;
    if (s.nccl) versions.nccl = s.nccl;
    const cuda = s.deviceCount > 0;
    const out: CudaStatus = { cuda, nccl: cuda && s.nccl !== null, cudaDevices: s.deviceCount, versions };
    if (!cuda) out.reason = `no CUDA device is visible: ${s.deviceError ?? 'cudaGetDeviceCount reported 0 devices'}`;
    return out;
  } catch (e) {
    return { cuda: false, nccl: false, cudaDevices: 0, reason: `the cuda addon could not report its status: ${(e as Error).message}` };
  }
}
