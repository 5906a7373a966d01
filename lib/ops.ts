/**
 * Dense math on tensors: GEMM (OpenBLAS `cblas_sgemm` on the host, cuBLAS on a GPU) and the elementwise
 * kernels the parallel layers need. Every function validates its arguments before any work and resolves a
 * new Tensor; the heavy work runs on a worker thread (host) or the rank's stream (GPU), so the event loop
 * never blocks.
 *
 * @module
 */
import { Tensor, checkTensor, formatShape } from './tensor';
import { dimIndex, finiteNumber, optionalBoolean, options } from './validate';

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
  const d = dimIndex(dim, Math.max(1, first.ndim));
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
