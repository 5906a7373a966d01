/**
 * The interface each device backend (`cpu`, `cuda`) implements for tensors and their kernels. The
 * TypeScript layers above never branch on the device: they call these through `Tensor` and `ops.ts`.
 *
 * @module
 * @internal
 */

/** Element types. Host compute is float32; float16 / bfloat16 are storage formats (checkpoints). */
export type DType = 'float32' | 'float16' | 'bfloat16';

/** `cpu` or a CUDA device `cuda:N`. */
export type Device = 'cpu' | `cuda:${number}`;

/** Bytes per element of each dtype. */
export const ITEM_SIZE: Readonly<Record<DType, number>> = { float32: 4, float16: 2, bfloat16: 2 };

/** Native dtype codes shared with C++ (`native/core/gloo_comm.cc`, `native/cuda`). */
export const DTYPE_CODE: Readonly<Record<DType, number>> = { float32: 0, float16: 1, bfloat16: 2 };

/** Memory holding a tensor's elements, owned by exactly one backend. Reference-counted by Tensor views. */
export interface Storage {
  readonly device: Device;
  readonly dtype: DType;
  /** element count */
  readonly numel: number;
  /** size in bytes */
  readonly bytes: number;
  /** Frees the memory (idempotent). */
  free(): void;
}

/** Kernels and transfers of one backend. Every method validates nothing: `Tensor`/`ops.ts` already did. */
export interface DeviceOps {
  /** Allocates `numel` zeros. */
  zeros(numel: number, dtype: DType, device: Device): Storage;
  /** Allocates uninitialised memory (zeros on the host). */
  empty(numel: number, dtype: DType, device: Device): Storage;
  /** Copies float32 values into new storage of `dtype` (rounding to nearest even). */
  fromFloat32(data: Float32Array, dtype: DType, device: Device): Storage;
  /** Copies raw 16-bit patterns (float16 / bfloat16) into new storage of that dtype. */
  fromBits(bits: Uint16Array, dtype: 'float16' | 'bfloat16', device: Device): Storage;
  /** Reads the elements back as float32 (a copy). */
  toFloat32(s: Storage): Promise<Float32Array>;
  /** Overwrites the storage's elements from float32 values (converted to its dtype). */
  writeFloat32(s: Storage, data: Float32Array): Promise<void>;
  /** Copy of a slice along `dim` of a tensor of `shape` (contiguous result). */
  narrow(s: Storage, shape: readonly number[], dim: number, start: number, length: number): Storage;
  /** Concatenates parts along `dim`; their shapes (`partShapes`) differ at most in `dim`. */
  cat(parts: Storage[], partShapes: readonly (readonly number[])[], dim: number): Storage;
  /** Converts to another dtype (new storage). */
  cast(s: Storage, dtype: DType): Storage;
  /** C[M,N] = op(A)·op(B). */
  matmul(a: Storage, b: Storage, M: number, N: number, K: number, transA: boolean, transB: boolean, opts: { tf32?: boolean }): Promise<Storage>;
  /** y[rows,out] = x[rows,in]·wᵀ (+ bias). */
  linear(x: Storage, w: Storage, bias: Storage | null, rows: number, inFeatures: number, outFeatures: number): Promise<Storage>;
  /** y[r, c] += bias[c], in place. */
  biasAdd(y: Storage, bias: Storage, rows: number, cols: number): Promise<void>;
  /** out[r, j] = silu(x[r, j]) · x[r, d + j] for x of [rows, 2d]. */
  siluAndMul(x: Storage, rows: number, d: number): Promise<Storage>;
  /** RMSNorm over the last dim: x / sqrt(mean(x²) + eps) · weight. */
  rmsNorm(x: Storage, weight: Storage, rows: number, cols: number, eps: number): Promise<Storage>;
  /** out = a + b (same numel). */
  add(a: Storage, b: Storage): Promise<Storage>;
  /** Rows of `table` [vocab, dim] at `ids` (−1 → a zero row). */
  embedding(table: Storage, ids: Int32Array, dim: number): Promise<Storage>;
  /**
   * Rotate-half RoPE of x [rows, numHeads·headDim] (new storage): angle = positions[t]·invFreq[i] in float32,
   * c = cos(angle)·scaling, s = sin(angle)·scaling; out[i] = x[i]·c − x[i+half]·s, out[i+half] = x[i+half]·c + x[i]·s.
   * `positions` holds the float32 values of the rows' positions, `invFreq` headDim/2 values.
   */
  rotary(x: Storage, positions: Float32Array, invFreq: Float32Array, rows: number, numHeads: number, headDim: number, scaling: number): Promise<Storage>;
  /**
   * Causal grouped-query attention (new storage [T, numHeads·headDim]): q [T, numHeads·headDim]; k, v hold at
   * least kvLength rows of numKvHeads·headDim; query t attends to keys 0..kvLength − T + t; query head h reads kv
   * head h / (numHeads / numKvHeads).
   */
  attention(q: Storage, k: Storage, v: Storage, T: number, numHeads: number, numKvHeads: number, headDim: number, kvLength: number, scale: number): Promise<Storage>;
  /** Max-subtracted softmax over rows of `n` (new storage). */
  softmax(x: Storage, rows: number, n: number): Promise<Storage>;
  /** Index of the largest value of each of `rows` rows of `n` ≥ 1 (first on ties, NaN largest). */
  argmax(x: Storage, rows: number, n: number): Promise<Int32Array>;
  /** In place: dst[dstOffset + i] = src[i] for i < count (elements; same dtype). */
  copyRows(dst: Storage, dstOffset: number, src: Storage, count: number): Promise<void>;
}
