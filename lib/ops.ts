/**
 * Dense math on tensors: GEMM (OpenBLAS `cblas_sgemm` on the host, cuBLAS on a GPU), the elementwise
 * kernels the parallel layers need, and the ops of a Llama-family decoder (rotary embedding, causal grouped-query
 * attention over a KV cache, softmax, argmax, embedding gather, KV-cache append). Every function validates its arguments before any work and resolves a
 * new Tensor; the heavy work runs on a worker thread (host) or the rank's stream (GPU), so the event loop
 * never blocks.
 *
 * @module
 */
import { Tensor, checkTensor, formatShape } from './tensor';
import {
  dimIndex,
  finiteNumber,
  integerInRange,
  nonNegativeInteger,
  optionalBoolean,
  options,
  positiveInteger,
  rangeError,
  typeError,
} from './validate';

function sameDevice(a: Tensor, b: Tensor, what: string): void {
  if (a.device !== b.device) throw new RangeError(`${what}: tensors are on different devices (${a.device} and ${b.device})`);
  if (a.dtype !== b.dtype) throw new TypeError(`${what}: tensors have different dtypes (${a.dtype} and ${b.dtype})`);
}

function rows(t: Tensor): number {
  let n = 1;
  for (let i = 0; i < t.ndim - 1; i++) n *= t.shape[i]!;
  return n;
}

/** Options of {@link matmul}. */
export interface MatmulOptions {
  /** Use op(A) = Aᵀ (A stored `[K, M]`). */
  transA?: boolean;
  /** Use op(B) = Bᵀ (B stored `[N, K]`). */
  transB?: boolean;
  /** On a GPU, allow TF32 tensor cores for float32 (off by default: full float32 precision). */
  tf32?: boolean;
}

/**
 * Matrix product C = op(A)·op(B) of 2-D tensors: `[M, K] × [K, N] → [M, N]` (float32 accumulation).
 * Host tensors must be float32; cuda tensors may be float32, float16 or bfloat16.
 *
 * @throws TypeError for non-tensors or mismatched dtypes; RangeError naming both shapes when they do not
 *   multiply, or when the tensors are not 2-D or live on different devices
 */
export async function matmul(a: Tensor, b: Tensor, opts?: MatmulOptions): Promise<Tensor> {
  checkTensor(a, 'a');
  checkTensor(b, 'b');
  const o = options<MatmulOptions>(opts, 'options');
  const transA = optionalBoolean(o.transA, 'transA', false);
  const transB = optionalBoolean(o.transB, 'transB', false);
  const tf32 = optionalBoolean(o.tf32, 'tf32', false);
  sameDevice(a, b, 'matmul');
  if (a.ndim !== 2 || b.ndim !== 2) {
    throw new RangeError(`matmul expects 2-D tensors but received shapes ${formatShape(a.shape)} and ${formatShape(b.shape)}`);
  }
  const [M, K] = transA ? [a.shape[1]!, a.shape[0]!] : [a.shape[0]!, a.shape[1]!];
  const [K2, N] = transB ? [b.shape[1]!, b.shape[0]!] : [b.shape[0]!, b.shape[1]!];
  if (K !== K2) {
    throw new RangeError(
      `matmul shape mismatch: a ${formatShape(a.shape)}${transA ? 'ᵀ' : ''} and b ${formatShape(b.shape)}${transB ? 'ᵀ' : ''} (inner dimensions ${K} and ${K2})`,
    );
  }
  if (a.device === 'cpu' && a.dtype !== 'float32') {
    throw new TypeError(`matmul on cpu computes in float32 but received ${a.dtype} tensors (cast with t.to('float32'))`);
  }
  const out = await a._ops.matmul(a._storage, b._storage, M, N, K, transA, transB, { tf32 });
  return Tensor._wrap(out, [M, N]);
}

/**
 * y = x·Wᵀ + b (PyTorch's `F.linear`): x `[..., in]`, weight `[out, in]`, bias `[out]` → y `[..., out]`.
 * On the host the bias is folded into the GEMM (C pre-filled, β = 1).
 *
 * @throws TypeError / RangeError naming the shapes when they do not fit, or for device / dtype mismatches
 */
export async function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Promise<Tensor> {
  checkTensor(x, 'x');
  checkTensor(weight, 'weight');
  sameDevice(x, weight, 'linear');
  if (weight.ndim !== 2) throw new RangeError(`linear expects a 2-D weight [out, in] but received ${formatShape(weight.shape)}`);
  if (x.ndim < 1) throw new RangeError(`linear expects x of shape [..., in] but received ${formatShape(x.shape)}`);
  const [outF, inF] = weight.shape as [number, number];
  if (x.shape[x.ndim - 1] !== inF) {
    throw new RangeError(`linear shape mismatch: x ${formatShape(x.shape)} and weight ${formatShape(weight.shape)} (expected x of shape [..., ${inF}])`);
  }
  if (bias !== undefined && bias !== null) {
    checkTensor(bias, 'bias');
    sameDevice(x, bias, 'linear');
    if (bias.ndim !== 1 || bias.shape[0] !== outF) {
      throw new RangeError(`linear shape mismatch: bias ${formatShape(bias.shape)} and weight ${formatShape(weight.shape)} (expected bias of shape [${outF}])`);
    }
  }
  if (x.device === 'cpu' && x.dtype !== 'float32') {
    throw new TypeError(`linear on cpu computes in float32 but received ${x.dtype} tensors (cast with t.to('float32'))`);
  }
  return linearUnchecked(x, weight, bias ?? null);
}

/**
 * @internal {@link linear} without its argument checks, for callers that have validated x, weight and bias
 * themselves (the parallel layers: one validation pass per forward).
 */
export async function linearUnchecked(x: Tensor, weight: Tensor, bias: Tensor | null): Promise<Tensor> {
  const [outF, inF] = weight.shape as [number, number];
  const out = await x._ops.linear(x._storage, weight._storage, bias ? bias._storage : null, rows(x), inF, outF);
  return Tensor._wrap(out, [...x.shape.slice(0, -1), outF]);
}

/**
 * y + bias broadcast over the last dim (a new tensor): y `[..., n]`, bias `[n]`.
 *
 * @throws RangeError when the bias does not match the last dim
 */
export async function addBias(y: Tensor, bias: Tensor): Promise<Tensor> {
  checkTensor(y, 'y');
  checkTensor(bias, 'bias');
  sameDevice(y, bias, 'addBias');
  const n = y.shape[y.ndim - 1];
  if (bias.ndim !== 1 || bias.shape[0] !== n) {
    throw new RangeError(`addBias shape mismatch: y ${formatShape(y.shape)} and bias ${formatShape(bias.shape)}`);
  }
  const out = y._ops.cast(y._storage, y.dtype);
  try {
    await y._ops.biasAdd(out, bias._storage, rows(y), n!);
  } catch (e) {
    out.free(); // the copy belongs to no tensor yet (device memory on cuda)
    throw e;
  }
  return Tensor._wrap(out, y.shape);
}

/**
 * vLLM's `SiluAndMul`: for x `[..., 2d]`, returns silu(x[..., :d]) · x[..., d:] of shape `[..., d]`, where
 * silu(v) = v / (1 + e^(−v)) (Llama's gated MLP activation).
 *
 * @throws RangeError when the last dim is odd
 */
export async function siluAndMul(x: Tensor): Promise<Tensor> {
  checkTensor(x, 'x');
  const last = x.shape[x.ndim - 1] ?? 0;
  if (x.ndim < 1 || last % 2 !== 0) throw new RangeError(`siluAndMul expects an even last dimension but received shape ${formatShape(x.shape)}`);
  const d = last / 2;
  const out = await x._ops.siluAndMul(x._storage, rows(x), d);
  return Tensor._wrap(out, [...x.shape.slice(0, -1), d]);
}

/**
 * RMSNorm (Zhang & Sennrich 2019, as in Llama): y = x / sqrt(mean(x²) + eps) · weight over the last dim.
 * x `[..., n]`, weight `[n]`; the mean is accumulated in double precision on the host.
 *
 * @throws RangeError when the weight does not match the last dim; TypeError for a non-number eps, RangeError for
 *   a non-finite or negative one
 */
export async function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-5): Promise<Tensor> {
  checkTensor(x, 'x');
  checkTensor(weight, 'weight');
  sameDevice(x, weight, 'rmsNorm');
  if (finiteNumber(eps, 'eps') < 0) throw new RangeError(`Expected finite non-negative number for eps but received ${eps} of type number`);
  const n = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== n) {
    throw new RangeError(`rmsNorm shape mismatch: x ${formatShape(x.shape)} and weight ${formatShape(weight.shape)}`);
  }
  const out = await x._ops.rmsNorm(x._storage, weight._storage, rows(x), n!, eps);
  return Tensor._wrap(out, x.shape);
}

/**
 * Elementwise a + b of equal shapes (a new tensor).
 *
 * @throws RangeError when the shapes differ
 */
export async function add(a: Tensor, b: Tensor): Promise<Tensor> {
  checkTensor(a, 'a');
  checkTensor(b, 'b');
  sameDevice(a, b, 'add');
  if (formatShape(a.shape) !== formatShape(b.shape)) {
    throw new RangeError(`add shape mismatch: ${formatShape(a.shape)} and ${formatShape(b.shape)}`);
  }
  return Tensor._wrap(await a._ops.add(a._storage, b._storage), a.shape);
}

/**
 * Concatenates tensors along `dim` (a new tensor): shapes must agree except in `dim`.
 *
 * @throws TypeError for an empty list or non-tensors; RangeError when shapes, dtypes or devices differ
 */
export function cat(parts: readonly Tensor[], dim: number): Tensor {
  if (!Array.isArray(parts) || parts.length === 0) throw new TypeError('Expected non-empty array of Tensors for parts');
  const first = checkTensor(parts[0], 'parts[0]');
  if (first.ndim === 0) throw new RangeError(`cat needs tensors of at least one dimension but parts[0] has shape ${formatShape(first.shape)}`);
  const d = dimIndex(dim, first.ndim);
  parts.forEach((p, i) => {
    checkTensor(p, `parts[${i}]`);
    sameDevice(first, p, 'cat');
    const same = p.ndim === first.ndim && p.shape.every((s: number, j: number) => j === d || s === first.shape[j]);
    if (!same) throw new RangeError(`cat along dim ${d} expects shapes equal except in that dim but received ${formatShape(first.shape)} and ${formatShape(p.shape)}`);
  });
  const shape = first.shape.slice();
  shape[d] = parts.reduce((n, p) => n + p.shape[d]!, 0);
  return Tensor._wrap(first._ops.cat(parts.map((p) => p._storage), parts.map((p) => p.shape), d), shape);
}

/** Throws unless `value` is array-like (an array or a typed array); returns its length. */
function arrayLength(value: unknown, name: string, expected: string): number {
  const ok = Array.isArray(value) || ArrayBuffer.isView(value);
  if (!ok || typeof (value as ArrayLike<number>).length !== 'number') throw typeError(expected, name, value);
  return (value as ArrayLike<number>).length;
}

/** Options of {@link rotaryEmbedding}. */
export interface RotaryOptions {
  /** Size of one head (even): x's last dim is numHeads × headDim. */
  headDim: number;
  /**
   * The headDim / 2 inverse frequencies, float32: `1 / base^(2i / headDim)` for default RoPE
   * (transformers' `rope_init_fn`, llama3 scaling already applied).
   */
  invFreq: Float32Array;
  /** Factor on cos and sin (transformers' `attention_scaling`, 1 except for YaRN / LongRoPE). Default 1. */
  attentionScaling?: number;
}

/**
 * Rotary position embedding (RoPE; Su et al. 2021) in Hugging Face transformers' rotate-half layout
 * (`apply_rotary_pos_emb` / `rotate_half` of `modeling_llama.py`): the two halves of each head are rotated
 * together. For row t, each head, half = headDim / 2 and i < half:
 *
 * angle = float32(positions[t]) · invFreq[i] (one float32 product), c = cos(angle) · attentionScaling,
 * s = sin(angle) · attentionScaling (float32, like transformers' float32 cos/sin times `attention_scaling`);
 * out[i] = x[i]·c − x[i+half]·s, out[i+half] = x[i+half]·c + x[i]·s.
 *
 * @param x - `[T, numHeads · headDim]` (queries or keys of T tokens); float32 on cpu, float32 / float16 /
 *   bfloat16 on cuda (float32 math, one rounding on store)
 * @param positions - T non-negative integers: the position of each row
 * @returns a new tensor of x's shape, dtype and device
 * @throws TypeError for a non-tensor, non-array positions, a non-Float32Array invFreq, non-number options, or
 *   a float16 / bfloat16 tensor on cpu; RangeError when headDim is not a positive even integer, x is not 2-D or
 *   its last dim not a multiple of headDim, positions or invFreq have the wrong length, a position is not a
 *   non-negative integer, or attentionScaling is not finite
 */
export async function rotaryEmbedding(x: Tensor, positions: ArrayLike<number>, opts: RotaryOptions): Promise<Tensor> {
  checkTensor(x, 'x');
  const o = options<RotaryOptions>(opts, 'options');
  const headDim = positiveInteger(o.headDim, 'headDim');
  if (headDim % 2 !== 0) throw rangeError('even positive integer', 'headDim', headDim);
  if (!(o.invFreq instanceof Float32Array)) throw typeError('Float32Array', 'invFreq', o.invFreq);
  const invFreq = o.invFreq;
  const scaling = o.attentionScaling === undefined ? 1 : finiteNumber(o.attentionScaling, 'attentionScaling');
  if (x.ndim !== 2 || x.shape[1]! % headDim !== 0) {
    throw new RangeError(`rotaryEmbedding expects x of shape [T, numHeads * ${headDim}] but received ${formatShape(x.shape)}`);
  }
  const half = headDim / 2;
  if (invFreq.length !== half) {
    throw new RangeError(`rotaryEmbedding expects invFreq of headDim / 2 = ${half} values but received ${invFreq.length}`);
  }
  const [T, width] = x.shape as [number, number];
  const n = arrayLength(positions, 'positions', 'array of non-negative integers');
  if (n !== T) throw new RangeError(`rotaryEmbedding expects one position per row of x ${formatShape(x.shape)} but received ${n} positions`);
  const pos = new Float32Array(T);
  for (let t = 0; t < T; t++) pos[t] = nonNegativeInteger(positions[t], `positions[${t}]`);
  const out = await x._ops.rotary(x._storage, pos, invFreq, T, width / headDim, headDim, scaling);
  return Tensor._wrap(out, x.shape);
}

/** Options of {@link attention}. */
export interface AttentionOptions {
  /** Query heads (on this rank): q's last dim is numHeads × headDim. */
  numHeads: number;
  /** Key/value heads (on this rank); numHeads must be a multiple of it (grouped-query attention). */
  numKvHeads: number;
  /** Size of one head. */
  headDim: number;
  /** Valid rows of the cache k / v (the sequence length so far, including the T new tokens). */
  kvLength: number;
  /** Factor on q·k. Default 1 / sqrt(headDim). */
  scale?: number;
}

/**
 * Causal scaled-dot-product attention with grouped-query heads over a KV cache, as transformers'
 * `LlamaAttention` (eager path, `repeat_kv`): softmax(scale · q·kᵀ + causal mask) · v per head.
 *
 * The T queries are the last T positions of the sequence: query t sits at absolute position
 * p = kvLength − T + t and attends to the cache rows j = 0..p. Query head h reads kv head
 * ⌊h / (numHeads / numKvHeads)⌋. Scores, the max-subtracted softmax and the weighted sum of v accumulate in
 * float32 (or better). Covers prefill (T = kvLength), chunked prefill (T < kvLength) and decode (T = 1).
 *
 * @param q - `[T, numHeads · headDim]`
 * @param k - the key cache `[C, numKvHeads · headDim]`, C ≥ kvLength; rows from kvLength on are not read
 * @param v - the value cache, shaped like k
 * @returns a new tensor `[T, numHeads · headDim]` of q's dtype and device (float32 on cpu; float32 / float16 /
 *   bfloat16 on cuda)
 * @throws TypeError for non-tensors, non-number options, mixed dtypes, or float16 / bfloat16 tensors on cpu;
 *   RangeError naming the shapes when q, k or v do not fit the head counts, for a numHeads that is not a multiple
 *   of numKvHeads, a kvLength outside [T, C], a non-finite scale, or tensors on different devices
 */
export async function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Promise<Tensor> {
  checkTensor(q, 'q');
  checkTensor(k, 'k');
  checkTensor(v, 'v');
  const o = options<AttentionOptions>(opts, 'options');
  const numHeads = positiveInteger(o.numHeads, 'numHeads');
  const numKvHeads = positiveInteger(o.numKvHeads, 'numKvHeads');
  const headDim = positiveInteger(o.headDim, 'headDim');
  const kvLength = nonNegativeInteger(o.kvLength, 'kvLength');
  const scale = o.scale === undefined ? 1 / Math.sqrt(headDim) : finiteNumber(o.scale, 'scale');
  if (numHeads % numKvHeads !== 0) {
    throw new RangeError(`attention expects numHeads to be a multiple of numKvHeads but received numHeads ${numHeads} and numKvHeads ${numKvHeads}`);
  }
  sameDevice(q, k, 'attention');
  sameDevice(q, v, 'attention');
  if (q.ndim !== 2 || q.shape[1] !== numHeads * headDim) {
    throw new RangeError(`attention expects q of shape [T, ${numHeads * headDim}] (numHeads × headDim) but received ${formatShape(q.shape)}`);
  }
  if (k.ndim !== 2 || k.shape[1] !== numKvHeads * headDim) {
    throw new RangeError(`attention expects k of shape [C, ${numKvHeads * headDim}] (numKvHeads × headDim) but received ${formatShape(k.shape)}`);
  }
  if (formatShape(v.shape) !== formatShape(k.shape)) {
    throw new RangeError(`attention expects k and v of the same shape but received ${formatShape(k.shape)} and ${formatShape(v.shape)}`);
  }
  const T = q.shape[0]!;
  const C = k.shape[0]!;
  if (kvLength < T || kvLength > C) {
    throw new RangeError(`attention expects kvLength in [${T}, ${C}] (q ${formatShape(q.shape)}, cache k ${formatShape(k.shape)}) but received ${kvLength}`);
  }
  const out = await q._ops.attention(q._storage, k._storage, v._storage, T, numHeads, numKvHeads, headDim, kvLength, scale);
  return Tensor._wrap(out, q.shape);
}

/**
 * Softmax over the last dim (a new tensor of x's shape, dtype and device): exp(x − max) / Σ exp(x − max), the
 * row max subtracted first so that large inputs do not overflow; float32 math (the sum in double on the host).
 * A row holding NaN or +∞ gives NaN, like torch.softmax.
 *
 * @param x - `[..., n]`; float32 on cpu, float32 / float16 / bfloat16 on cuda
 * @throws TypeError for a non-tensor or a float16 / bfloat16 tensor on cpu; RangeError for a 0-d tensor
 */
export async function softmax(x: Tensor): Promise<Tensor> {
  checkTensor(x, 'x');
  if (x.ndim < 1) throw new RangeError(`softmax expects a tensor of shape [..., n] but received shape ${formatShape(x.shape)}`);
  const n = x.shape[x.ndim - 1]!;
  const out = await x._ops.softmax(x._storage, rows(x), n);
  return Tensor._wrap(out, x.shape);
}

/**
 * Index of the largest value over the last dim, per row of x `[..., n]`: an Int32Array of the leading dims'
 * product (1 for a 1-D x), row-major. Ties go to the first index; NaN counts as larger than every number, so
 * the first NaN of a row wins (torch.argmax's convention).
 *
 * @param x - `[..., n]` with n ≥ 1; float32 on cpu, float32 / float16 / bfloat16 on cuda
 * @throws TypeError for a non-tensor or a float16 / bfloat16 tensor on cpu; RangeError for a 0-d tensor or an
 *   empty last dim
 */
export async function argmax(x: Tensor): Promise<Int32Array> {
  checkTensor(x, 'x');
  const n = x.ndim < 1 ? 0 : x.shape[x.ndim - 1]!;
  if (n < 1) throw new RangeError(`argmax expects a tensor of shape [..., n] with n ≥ 1 but received shape ${formatShape(x.shape)}`);
  if (n > 2 ** 31 - 1) throw new RangeError(`argmax expects a last dim below 2^31 but received shape ${formatShape(x.shape)}`);
  return x._ops.argmax(x._storage, rows(x), n);
}

/**
 * Rows of an embedding table (`F.embedding`): table `[V, D]`, ids integers → a new tensor `[ids.length, D]` of
 * the table's dtype and device. An id of −1 gives a zero row (the vocab-parallel mask of
 * `VocabParallelEmbedding`: ids outside this rank's shard become −1, the all-reduce fills them in).
 *
 * @param ids - integers in [0, V), or −1
 * @throws TypeError for a non-tensor or non-array ids; RangeError for a table that is not 2-D, or an id outside
 *   [−1, V) (naming its index)
 */
export async function embedding(table: Tensor, ids: ArrayLike<number>): Promise<Tensor> {
  checkTensor(table, 'table');
  if (table.ndim !== 2) throw new RangeError(`embedding expects a 2-D table [V, D] but received ${formatShape(table.shape)}`);
  const [V, D] = table.shape as [number, number];
  const n = arrayLength(ids, 'ids', 'array of integers');
  const local = new Int32Array(n);
  for (let i = 0; i < n; i++) local[i] = integerInRange(ids[i], `ids[${i}]`, -1, V);
  const out = await table._ops.embedding(table._storage, local, D);
  return Tensor._wrap(out, [n, D]);
}

/**
 * Writes src into rows rowOffset .. rowOffset + n − 1 of dst, in place (a KV-cache append): dst `[R, ...rest]`,
 * src `[n, ...rest]` with the same trailing dims, dtype and device. Resolves when the copy is done (on cuda,
 * when it is enqueued on the device's stream: later ops see it).
 *
 * @throws TypeError for non-tensors or mixed dtypes; RangeError for 0-d tensors, different trailing dims, tensors
 *   on different devices, a rowOffset that is not a non-negative integer, or rows that do not fit in dst
 */
export async function copyRows(dst: Tensor, rowOffset: number, src: Tensor): Promise<void> {
  checkTensor(dst, 'dst');
  checkTensor(src, 'src');
  const offset = nonNegativeInteger(rowOffset, 'rowOffset');
  sameDevice(dst, src, 'copyRows');
  const trailing = (t: Tensor) => formatShape(t.shape.slice(1));
  if (dst.ndim < 1 || src.ndim !== dst.ndim || trailing(src) !== trailing(dst)) {
    throw new RangeError(`copyRows expects dst [R, ...rest] and src [n, ...rest] but received dst ${formatShape(dst.shape)} and src ${formatShape(src.shape)}`);
  }
  const R = dst.shape[0]!;
  const n = src.shape[0]!;
  if (offset + n > R) {
    throw new RangeError(`copyRows: src ${formatShape(src.shape)} at rowOffset ${offset} does not fit in dst ${formatShape(dst.shape)} (rows ${offset}..${offset + n - 1} of ${R})`);
  }
  if (dst._storage === src._storage) return; // the same tensor fits only at rowOffset 0: nothing to copy
  const inner = dst.shape.slice(1).reduce((a, b) => a * b, 1);
  await dst._ops.copyRows(dst._storage, offset * inner, src._storage, src.numel);
}
