/**
 * The `cuda` backend: tensors in GPU memory (`cuda:N`), GEMM on cuBLASLt/cuBLAS and the small CUDA kernels of
 * `native/cuda/kernels.cu`. float32, float16 and bfloat16 all compute (float32 accumulation); results keep the
 * inputs' dtype.
 *
 * Execution model: one stream per device per process. Every op enqueues its work on the device's stream and
 * returns without a device-wide synchronisation (the Promise-returning ops of {@link DeviceOps} resolve as soon
 * as the work is enqueued); stream order makes a later op see an earlier op's result. Only readbacks
 * (`toFloat32`) wait, and they wait for a CUDA event off the main thread. Memory comes from a stream-ordered
 * pool (`cudaMallocFromPoolAsync`, release threshold at max so freed blocks are reused) and is reported to V8.
 *
 * Loaded lazily by `lib/backend/index.ts` (device dispatch) the first time a cuda device is asked for. Without the addon or a GPU, every cuda op throws a TpkitError
 * (`CUDA_UNAVAILABLE` / `NO_CUDA_DEVICE`); nothing crashes.
 *
 * @module
 * @internal
 */
import { TpkitError } from '../errors';
import { type CudaAddon, loadCuda, type NativeDeviceBuffer } from '../native/cuda';
import { rangeError } from '../validate';
import { DTYPE_CODE, DType, Device, DeviceOps, ITEM_SIZE, Storage } from './types';

/**
 * Storage in device memory: one native DeviceBuffer (`native/cuda/device_buffer.h`).
 * `free()` returns the memory to the device's pool, ordered after every op already enqueued that uses it.
 */
export class CudaStorage implements Storage {
  /** `cuda:N` */
  readonly device: Device;
  /** Element count. */
  readonly numel: number;
  /** Size in bytes. */
  readonly bytes: number;
  readonly #buffer: NativeDeviceBuffer;

  /**
   * @param dtype - element type of the buffer
   * @param buffer - the native buffer this storage owns from now on
   */
  constructor(readonly dtype: DType, buffer: NativeDeviceBuffer) {
    this.#buffer = buffer;
    this.device = `cuda:${buffer.device}`;
    this.numel = buffer.numel;
    this.bytes = buffer.numel * ITEM_SIZE[dtype];
  }

  /** CUDA device index. */
  get deviceIndex(): number {
    return this.#buffer.device;
  }

  /**
   * The native buffer (for the nccl communicator).
   *
   * @throws TpkitError `DISPOSED` after free()
   */
  get buffer(): NativeDeviceBuffer {
    if (this.#buffer.freed) throw new TpkitError('DISPOSED', `device storage on ${this.device} was used after free()`, { backend: 'cuda' });
    return this.#buffer;
  }

  /** Frees the device memory (idempotent, stream-ordered). */
  free(): void {
    this.#buffer.free();
  }
}

let visibleDevices: number | undefined;

/**
 * The CUDA addon, once it is known to have a device.
 *
 * @throws TpkitError `CUDA_UNAVAILABLE` when the addon is not built or cannot load; `NO_CUDA_DEVICE` when no GPU
 *   is visible (cudaGetDeviceCount failed or returned 0)
 */
export function cudaAddon(): CudaAddon {
  const native = loadCuda();
  if (visibleDevices === undefined) visibleDevices = native.status().deviceCount;
  if (visibleDevices === 0) {
    const why = native.status().deviceError ?? 'cudaGetDeviceCount reported 0 devices';
    throw new TpkitError(
      'NO_CUDA_DEVICE',
      `no CUDA device is visible (${why}); cuda tensors need an NVIDIA GPU with its driver (check nvidia-smi and CUDA_VISIBLE_DEVICES)`,
      { backend: 'cuda' },
    );
  }
  return native;
}

/**
 * The index N of `cuda:N`, checked against the visible devices.
 *
 * @throws RangeError when N ≥ the number of visible devices; TpkitError as {@link cudaAddon}
 */
export function cudaDeviceIndex(device: Device): number {
  cudaAddon();
  const count = visibleDevices!;
  const n = device.startsWith('cuda:') ? Number(device.slice(5)) : NaN;
  if (!Number.isInteger(n) || n < 0 || n >= count) {
    throw rangeError(`'cuda:N' with N in [0, ${count})`, 'device', device);
  }
  return n;
}

/**
 * Allocates uninitialised device storage of `numel` elements of `dtype` on device `index`.
 *
 * @throws TpkitError `CUDA_ERROR_MEMORY_ALLOCATION` when the device is out of memory
 */
export function allocCuda(index: number, dtype: DType, numel: number): CudaStorage {
  const native = cudaAddon();
  return new CudaStorage(dtype, new native.DeviceBuffer(index, DTYPE_CODE[dtype], numel));
}

function dev(s: Storage): CudaStorage {
  return s as CudaStorage;
}

function buf(s: Storage): NativeDeviceBuffer {
  return (s as CudaStorage).buffer;
}

function product(dims: readonly number[], from: number, to: number): number {
  let n = 1;
  for (let i = from; i < to; i++) n *= dims[i]!;
  return n;
}

/**
 * Allocates `numel` elements of `dtype` on cuda device `deviceIndex`, runs `fill` on the new buffer, and frees the
 * buffer again when `fill` throws: the one allocate/try/free-on-throw of the cuda backend and the NCCL communicator.
 */
export function allocFilled(deviceIndex: number, dtype: DType, numel: number, fill: (out: NativeDeviceBuffer) => void): CudaStorage {
  const out = allocCuda(deviceIndex, dtype, numel);
  try {
    fill(out.buffer);
  } catch (e) {
    out.free();
    throw e;
  }
  return out;
}

/** {@link allocFilled} for an asynchronous `fill` (a collective): the buffer is freed when it rejects. */
export async function allocFilledAsync(deviceIndex: number, dtype: DType, numel: number,
  fill: (out: NativeDeviceBuffer) => Promise<void>): Promise<CudaStorage> {
  const out = allocCuda(deviceIndex, dtype, numel);
  try {
    await fill(out.buffer);
  } catch (e) {
    out.free();
    throw e;
  }
  return out;
}

/** Allocates the output on `like`'s device (see {@link allocFilled}). */
function produce(like: Storage, dtype: DType, numel: number, fill: (out: NativeDeviceBuffer) => void): CudaStorage {
  return allocFilled(dev(like).deviceIndex, dtype, numel, fill);
}

/** The cuda backend's kernels and transfers (see the module docs for the execution model). */
export const cudaOps: DeviceOps = {
  zeros: (numel, dtype, device) => allocFilled(cudaDeviceIndex(device), dtype, numel, (out) => cudaAddon().zero(out)),
  empty: (numel, dtype, device) => allocCuda(cudaDeviceIndex(device), dtype, numel),
  fromFloat32: (data, dtype, device) => allocFilled(cudaDeviceIndex(device), dtype, data.length, (out) => cudaAddon().upload(out, data)),
  fromBits: (bits, dtype, device) => allocFilled(cudaDeviceIndex(device), dtype, bits.length, (out) => cudaAddon().upload(out, bits)),
  toFloat32: (s) => cudaAddon().download(buf(s)),
  async writeFloat32(s, data) {
    cudaAddon().upload(buf(s), data);
  },
  narrow(s, shape, dim, start, length) {
    const outer = product(shape, 0, dim);
    const inner = product(shape, dim + 1, shape.length);
    return produce(s, s.dtype, outer * length * inner, (out) =>
      cudaAddon().narrow(buf(s), out, outer, shape[dim]!, inner, start, length),
    );
  },
  cat(parts, partShapes, dim) {
    const outer = product(partShapes[0]!, 0, dim);
    const blocks = partShapes.map((sh) => product(sh, dim, sh.length));
    const first = parts[0]!;
    return produce(first, first.dtype, outer * blocks.reduce((a, b) => a + b, 0), (out) =>
      cudaAddon().cat(parts.map(buf), out, outer, blocks),
    );
  },
  cast: (s, dtype) => produce(s, dtype, s.numel, (out) => cudaAddon().cast(buf(s), out)),
  async matmul(a, b, M, N, K, transA, transB, opts) {
    return produce(a, a.dtype, M * N, (out) => cudaAddon().gemm(buf(a), buf(b), out, null, M, N, K, transA, transB, opts.tf32 === true));
  },
  async linear(x, w, bias, rows, inFeatures, outFeatures) {
    // y[rows, out] = x[rows, in] · Wᵀ with W stored [out, in]: GEMM with transB, bias fused in the epilogue.
    return produce(x, x.dtype, rows * outFeatures, (out) =>
      cudaAddon().gemm(buf(x), buf(w), out, bias ? buf(bias) : null, rows, outFeatures, inFeatures, false, true, false),
    );
  },
  async biasAdd(y, bias, rows, cols) {
    cudaAddon().biasAdd(buf(y), buf(bias), rows, cols);
  },
  async siluAndMul(x, rows, d) {
    return produce(x, x.dtype, rows * d, (out) => cudaAddon().siluAndMul(buf(x), out, rows, d));
  },
  async rmsNorm(x, weight, rows, cols, eps) {
    return produce(x, x.dtype, rows * cols, (out) => cudaAddon().rmsNorm(buf(x), buf(weight), out, rows, cols, eps));
  },
  async add(a, b) {
    return produce(a, a.dtype, a.numel, (out) => cudaAddon().add(buf(a), buf(b), out));
  },
  async embedding(table, ids, dim) {
    return produce(table, table.dtype, ids.length * dim, (out) => cudaAddon().embedding(buf(table), ids, out, dim));
  },
  async rotary(x, positions, invFreq, rows, numHeads, headDim, scaling) {
    return produce(x, x.dtype, rows * numHeads * headDim, (out) =>
      cudaAddon().rotary(buf(x), positions, invFreq, out, rows, numHeads, headDim, scaling),
    );
  },
  async attention(q, k, v, T, numHeads, numKvHeads, headDim, kvLength, scale) {
    return produce(q, q.dtype, T * numHeads * headDim, (out) =>
      cudaAddon().attention(buf(q), buf(k), buf(v), out, T, numHeads, numKvHeads, headDim, kvLength, scale),
    );
  },
  async softmax(x, rows, n) {
    return produce(x, x.dtype, rows * n, (out) => cudaAddon().softmax(buf(x), out, rows, n));
  },
  async argmax(x, rows, n) {
    // The kernel stores int32 indices in a float32-typed buffer; download() of a float32 buffer copies its bytes
    // unchanged, so the indices come back exactly and are reinterpreted (no conversion through float values).
    const idx = produce(x, 'float32', rows, (out) => cudaAddon().argmax(buf(x), out, rows, n));
    try {
      const f = await cudaAddon().download(idx.buffer);
      return new Int32Array(f.buffer, f.byteOffset, rows);
    } finally {
      idx.free();
    }
  },
  async copyRows(dst, dstOffset, src, count) {
    cudaAddon().copyRows(buf(dst), dstOffset, buf(src), count);
  },
};

/**
 * The cuda backend's ops, after loading the CUDA addon.
 * @throws TpkitError `CUDA_UNAVAILABLE` when the addon cannot be loaded
 */
export function cudaBackend(): DeviceOps {
  cudaAddon();
  return cudaOps;
}
