/**
 * The `cpu` backend: host memory in typed arrays (float32 → Float32Array; float16 / bfloat16 → Uint16Array of
 * raw bits), GEMM on OpenBLAS, the elementwise kernels of `native/core/kernels.cc` and the decoder kernels of
 * `native/core/attention.cc`. Compute is float32: kernels given float16 / bfloat16 storage reject with a TypeError
 * (cast with `t.to('float32')` first); the raw copies (`embedding`, `copyRows`, `narrow`, `cat`) take any dtype.
 *
 * @module
 * @internal
 */
import { loadCore } from '../native';
import { hostWork, releaseHostBuffer, takeHostBuffer } from './host_pool';
import { DType, Device, DeviceOps, ITEM_SIZE, Storage } from './types';

/**
 * Host storage over a typed array. V8 accounts the ArrayBuffer itself. When freed, a buffer that the array
 * spans whole goes to the host pool for the next tensor of its size (host_pool.ts).
 */
export class HostStorage implements Storage {
  readonly device: Device = 'cpu';
  readonly numel: number;
  readonly bytes: number;
  private _data: Float32Array | Uint16Array | null;

  constructor(readonly dtype: DType, data: Float32Array | Uint16Array) {
    this._data = data;
    this.numel = data.length;
    this.bytes = data.length * ITEM_SIZE[dtype];
  }

  /** The elements (raw bits for float16/bfloat16). */
  get data(): Float32Array | Uint16Array {
    if (this._data === null) throw new Error('host storage used after free');
    return this._data;
  }

  /** The elements as Float32Array; throws unless the dtype is float32. */
  get f32(): Float32Array {
    if (this.dtype !== 'float32') {
      throw new TypeError(`Expected float32 tensor for host compute but received ${this.dtype} (cast with t.to('float32'))`);
    }
    return this.data as Float32Array;
  }

  free(): void {
    const d = this._data;
    this._data = null;
    if (d && d.byteOffset === 0 && d.byteLength === d.buffer.byteLength && d.buffer instanceof ArrayBuffer) {
      releaseHostBuffer(d.buffer);
    }
  }
}

function host(s: Storage): HostStorage {
  return s as HostStorage;
}

/** Storage of `numel` elements: a pooled buffer (stale contents unless `zero`) or a fresh zeroed one. */
function alloc(numel: number, dtype: DType, zero = false): HostStorage {
  const Ctor = dtype === 'float32' ? Float32Array : Uint16Array;
  const buf = takeHostBuffer(numel * Ctor.BYTES_PER_ELEMENT);
  if (!buf) return new HostStorage(dtype, new Ctor(freshHostBuffer(numel * Ctor.BYTES_PER_ELEMENT)));
  const data = new Ctor(buf);
  if (zero) data.fill(0);
  return new HostStorage(dtype, data);
}

/** Buffers from this size up are mapped natively with huge pages requested (see {@link freshHostBuffer}). */
const HUGE_PAGE_MIN_BYTES = 4 << 20;

/**
 * A zeroed buffer of fresh memory. From 4 MiB up it is mapped by the core addon with transparent huge pages
 * requested (`madvise(MADV_HUGEPAGE)`): the first touch of fresh memory dominates loading a model, and on the
 * 2-core VM filling 2 GB of fresh small pages took 7.4 s against 3.8 s with huge pages (measured 2026-12-01).
 */
export function freshHostBuffer(bytes: number): ArrayBuffer {
  return bytes >= HUGE_PAGE_MIN_BYTES ? loadCore().allocHostPages(bytes) : new ArrayBuffer(bytes);
}

/** Float32 host memory for `numel` elements: a pooled buffer (stale contents) or fresh zeroed memory. */
export function hostFloat32(numel: number): Float32Array {
  return alloc(numel, 'float32').data as Float32Array;
}

/** @internal Wraps a float32 array the caller hands over (it must hold no other reference) as host storage. */
export function adoptFloat32(data: Float32Array): HostStorage {
  return new HostStorage('float32', data);
}

const CAST_TO_BITS = { bfloat16: 0, float16: 2 } as const;
const CAST_FROM_BITS = { bfloat16: 1, float16: 3 } as const;

/** float32 values → float16/bfloat16 bits (round to nearest even). */
export function floatToBits(data: Float32Array, dtype: 'float16' | 'bfloat16'): Uint16Array {
  const out = new Uint16Array(freshHostBuffer(data.length * 2));
  loadCore().cast(data, out, CAST_TO_BITS[dtype]);
  return out;
}

/** float16/bfloat16 bits → float32 values (exact). */
export function bitsToFloat(bits: Uint16Array, dtype: 'float16' | 'bfloat16'): Float32Array {
  const out = new Float32Array(freshHostBuffer(bits.length * 4));
  loadCore().cast(bits, out, CAST_FROM_BITS[dtype]);
  return out;
}

function toF32(s: HostStorage): Float32Array {
  return s.dtype === 'float32' ? (s.data as Float32Array) : bitsToFloat(s.data as Uint16Array, s.dtype);
}

/** Copies a slice along `dim` (row-major), chunk by contiguous chunk. */
function narrowArray<T extends Float32Array | Uint16Array>(src: T, shape: readonly number[], dim: number, start: number, length: number): T {
  let outer = 1;
  for (let i = 0; i < dim; i++) outer *= shape[i]!;
  let inner = 1;
  for (let i = dim + 1; i < shape.length; i++) inner *= shape[i]!;
  const size = shape[dim]!;
  const out = new (src.constructor as { new (n: number): T })(outer * length * inner);
  const block = length * inner;
  for (let o = 0; o < outer; o++) {
    const from = (o * size + start) * inner;
    out.set(src.subarray(from, from + block), o * block);
  }
  return out;
}

/** Concatenates parts along `dim` (shapes equal except in `dim`). */
function catArrays<T extends Float32Array | Uint16Array>(parts: T[], partShapes: readonly (readonly number[])[], dim: number): T {
  let outer = 1;
  for (let i = 0; i < dim; i++) outer *= partShapes[0]![i]!;
  const blocks = partShapes.map((sh) => {
    let b = 1;
    for (let i = dim; i < sh.length; i++) b *= sh[i]!;
    return b;
  });
  const row = blocks.reduce((a, b) => a + b, 0);
  const out = new (parts[0]!.constructor as { new (n: number): T })(outer * row);
  for (let o = 0; o < outer; o++) {
    let offset = o * row;
    for (let p = 0; p < parts.length; p++) {
      const b = blocks[p]!;
      out.set(parts[p]!.subarray(o * b, (o + 1) * b), offset);
      offset += b;
    }
  }
  return out;
}

/** The cpu backend's kernels. */
export const cpuOps: DeviceOps = {
  zeros: (numel, dtype) => alloc(numel, dtype, true),
  empty: (numel, dtype) => alloc(numel, dtype),
  fromFloat32(data, dtype) {
    return new HostStorage(dtype, dtype === 'float32' ? Float32Array.from(data) : floatToBits(data, dtype));
  },
  fromBits: (bits, dtype) => new HostStorage(dtype, Uint16Array.from(bits)),
  async toFloat32(s) {
    const h = host(s);
    return h.dtype === 'float32' ? Float32Array.from(h.data as Float32Array) : bitsToFloat(h.data as Uint16Array, h.dtype);
  },
  async writeFloat32(s, data) {
    const h = host(s);
    if (h.dtype === 'float32') (h.data as Float32Array).set(data);
    else (h.data as Uint16Array).set(floatToBits(data, h.dtype));
  },
  narrow: (s, shape, dim, start, length) => new HostStorage(s.dtype, narrowArray(host(s).data, shape, dim, start, length)),
  cat: (parts, partShapes, dim) => new HostStorage(parts[0]!.dtype, catArrays(parts.map((p) => host(p).data), partShapes, dim)),
  cast(s, dtype) {
    const h = host(s);
    if (h.dtype === dtype) return new HostStorage(dtype, h.data.slice());
    const f = toF32(h);
    return new HostStorage(dtype, dtype === 'float32' ? (f === h.data ? f.slice() : f) : floatToBits(f, dtype));
  },
  // Each kernel holds a host-pool ticket from before it reads its inputs until the native work settled.
  matmul: (a, b, M, N, K, transA, transB) =>
    hostWork(async () => {
      const out = alloc(M * N, 'float32');
      await loadCore().sgemm(transA, transB, M, N, K, host(a).f32, host(b).f32, out.f32, 0);
      return out;
    }),
  linear: (x, w, bias, rows, inF, outF) =>
    hostWork(async () => {
      const out = alloc(rows * outF, 'float32');
      await loadCore().linear(host(x).f32, host(w).f32, bias ? host(bias).f32 : null, out.f32, rows, inF, outF);
      return out;
    }),
  biasAdd: (y, bias, rows, cols) => hostWork(() => loadCore().biasAdd(host(y).f32, host(bias).f32, rows, cols)),
  siluAndMul: (x, rows, d) =>
    hostWork(async () => {
      const out = alloc(rows * d, 'float32');
      await loadCore().siluAndMul(host(x).f32, out.f32, rows, d);
      return out;
    }),
  rmsNorm: (x, weight, rows, cols, eps) =>
    hostWork(async () => {
      const out = alloc(rows * cols, 'float32');
      await loadCore().rmsNorm(host(x).f32, host(weight).f32, out.f32, rows, cols, eps);
      return out;
    }),
  add: (a, b) =>
    hostWork(async () => {
      const out = alloc(a.numel, 'float32');
      await loadCore().add(host(a).f32, host(b).f32, out.f32, a.numel);
      return out;
    }),
  async embedding(table, ids, dim) {
    // A raw row copy, so float16 / bfloat16 tables gather too. Rows of id −1 are zeroed explicitly: a pooled
    // buffer holds a previous tensor's values.
    const src = host(table).data;
    const out = alloc(ids.length * dim, table.dtype);
    const o = out.data;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id >= 0) o.set(src.subarray(id * dim, (id + 1) * dim), i * dim);
      else o.fill(0, i * dim, (i + 1) * dim);
    }
    return out;
  },
  rotary: (x, positions, invFreq, rows, numHeads, headDim, scaling) =>
    hostWork(async () => {
      const out = alloc(rows * numHeads * headDim, 'float32');
      await loadCore().rotary(host(x).f32, positions, invFreq, out.f32, rows, numHeads, headDim, scaling);
      return out;
    }),
  attention: (q, k, v, T, numHeads, numKvHeads, headDim, kvLength, scale) =>
    hostWork(async () => {
      const out = alloc(T * numHeads * headDim, 'float32');
      await loadCore().attention(host(q).f32, host(k).f32, host(v).f32, out.f32, T, numHeads, numKvHeads, headDim, kvLength, scale);
      return out;
    }),
  softmax: (x, rows, n) =>
    hostWork(async () => {
      const out = alloc(rows * n, 'float32');
      await loadCore().softmax(host(x).f32, out.f32, rows, n);
      return out;
    }),
  argmax: (x, rows, n) =>
    hostWork(async () => {
      const out = new Int32Array(rows);
      await loadCore().argmax(host(x).f32, out, rows, n);
      return out;
    }),
  async copyRows(dst, dstOffset, src, count) {
    // A memcpy (TypedArray.set) of raw elements: any dtype.
    host(dst).data.set(host(src).data.subarray(0, count), dstOffset);
  },
};
