/**
 * Tests of lib/ops.ts on the cpu backend (OpenBLAS GEMM and the kernels of native/core/kernels.cc): argument
 * errors first (exact messages naming both shapes), then every op against a plain-JS reference computed in double
 * precision — integer inputs must match exactly, random inputs within 1e-5 of the output's scale (DESIGN.md) —
 * and a check that a large GEMM runs off the event loop.
 */
import test, { type ExecutionContext } from 'ava';

import type { HostStorage } from '../lib/backend/cpu';
import { add, addBias, cat, linear, matmul, rmsNorm, siluAndMul } from '../lib/ops';
import { Tensor } from '../lib/tensor';
import { maxAbs, maxAbsDiff, numel, rand, randInt, ravel, unravel } from './helpers/reference';

const F32_TOL = 1e-5;

/** C = op(A)·op(B) with A stored [rows, cols] row-major, in double precision. */
function naiveMatmul(a: ArrayLike<number>, aShape: number[], b: ArrayLike<number>, bShape: number[], transA: boolean, transB: boolean): number[] {
  const [M, K] = transA ? [aShape[1]!, aShape[0]!] : [aShape[0]!, aShape[1]!];
  const N = transB ? bShape[0]! : bShape[1]!;
  const A = (i: number, k: number) => (transA ? a[k * aShape[1]! + i]! : a[i * aShape[1]! + k]!);
  const B = (k: number, j: number) => (transB ? b[j * bShape[1]! + k]! : b[k * bShape[1]! + j]!);
  const out: number[] = [];
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A(i, k) * B(k, j);
      out.push(s);
    }
  }
  return out;
}

/** Asserts max |got − ref| ≤ tol · max(1, max |ref|). */
function close(t: ExecutionContext, got: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string): void {
  t.is(got.length, ref.length, `${what}: length`);
  const scale = Math.max(1, maxAbs(ref));
  const d = maxAbsDiff(got, ref);
  t.true(d <= tol * scale, `${what}: max |Δ| ${d} > ${tol} × ${scale}`);
}

async function vals(x: Tensor): Promise<number[]> {
  return Array.from(await x.toFloat32Array());
}

// ---------------------------------------------------------------------------------------------------------
// Argument errors
// ---------------------------------------------------------------------------------------------------------

const z = (shape: number[], dtype: 'float32' | 'bfloat16' | 'float16' = 'float32') => Tensor.zeros(shape, { dtype });
const HOST_F32 = (dtype: string) => `Expected float32 tensor for host compute but received ${dtype} (cast with t.to('float32'))`;

const invalid: Array<[string, () => Promise<unknown> | unknown, typeof TypeError | typeof RangeError, string]> = [
  ['matmul inner dims', () => matmul(z([2, 3]), z([4, 5])), RangeError, 'matmul shape mismatch: a [2, 3] and b [4, 5] (inner dimensions 3 and 4)'],
  ['matmul inner dims with transA', () => matmul(z([2, 3]), z([2, 5]), { transA: false, transB: true }), RangeError, 'matmul shape mismatch: a [2, 3] and b [2, 5]ᵀ (inner dimensions 3 and 5)'],
  ['matmul inner dims with transA and transB', () => matmul(z([3, 2]), z([4, 2]), { transA: true, transB: true }), RangeError, 'matmul shape mismatch: a [3, 2]ᵀ and b [4, 2]ᵀ (inner dimensions 3 and 2)'],
  ['matmul 3-D', () => matmul(z([2, 2, 2]), z([2, 2])), RangeError, 'matmul expects 2-D tensors but received shapes [2, 2, 2] and [2, 2]'],
  ['matmul 0-d', () => matmul(z([]), z([1, 1])), RangeError, 'matmul expects 2-D tensors but received shapes [] and [1, 1]'],
  ['matmul float16 on cpu', () => matmul(z([2, 2], 'float16'), z([2, 2], 'float16')), TypeError, "matmul on cpu computes in float32 but received float16 tensors (cast with t.to('float32'))"],
  ['matmul mixed dtypes', () => matmul(z([2, 2]), z([2, 2], 'float16')), TypeError, 'matmul: tensors have different dtypes (float32 and float16)'],
  ['matmul b not a tensor', () => matmul(z([2, 2]), [[1]] as never), TypeError, 'Expected Tensor for b but received [1] of type array'],
  ['matmul options not an object', () => matmul(z([2, 2]), z([2, 2]), true as never), TypeError, 'Expected object for options but received true of type boolean'],
  ['matmul transB number', () => matmul(z([2, 2]), z([2, 2]), { transB: 1 as never }), TypeError, 'Expected boolean for transB but received 1 of type number'],
  ['linear in-features', () => linear(z([4, 3]), z([5, 4])), RangeError, 'linear shape mismatch: x [4, 3] and weight [5, 4] (expected x of shape [..., 4])'],
  ['linear 3-D weight', () => linear(z([4, 3]), z([5, 3, 1])), RangeError, 'linear expects a 2-D weight [out, in] but received [5, 3, 1]'],
  ['linear 0-d x', () => linear(z([]), z([5, 3])), RangeError, 'linear expects x of shape [..., in] but received []'],
  ['linear bias 2-D', () => linear(z([4, 3]), z([5, 3]), z([1, 5])), RangeError, 'linear shape mismatch: bias [1, 5] and weight [5, 3] (expected bias of shape [5])'],
  ['linear bfloat16 on cpu', () => linear(z([4, 3], 'bfloat16'), z([5, 3], 'bfloat16')), TypeError, "linear on cpu computes in float32 but received bfloat16 tensors (cast with t.to('float32'))"],
  ['linear bias dtype', () => linear(z([4, 3]), z([5, 3]), z([5], 'bfloat16')), TypeError, 'linear: tensors have different dtypes (float32 and bfloat16)'],
  ['linear bias not a tensor', () => linear(z([4, 3]), z([5, 3]), 5 as never), TypeError, 'Expected Tensor for bias but received 5 of type number'],
  ['addBias bias 2-D', () => addBias(z([2, 3]), z([1, 3])), RangeError, 'addBias shape mismatch: y [2, 3] and bias [1, 3]'],
  ['addBias float16', () => addBias(z([2, 3], 'float16'), z([3], 'float16')), TypeError, HOST_F32('float16')],
  ['siluAndMul odd', () => siluAndMul(z([4, 5])), RangeError, 'siluAndMul expects an even last dimension but received shape [4, 5]'],
  ['siluAndMul 0-d', () => siluAndMul(z([])), RangeError, 'siluAndMul expects an even last dimension but received shape []'],
  ['siluAndMul bfloat16', () => siluAndMul(z([2, 4], 'bfloat16')), TypeError, HOST_F32('bfloat16')],
  ['rmsNorm weight', () => rmsNorm(z([2, 4]), z([3])), RangeError, 'rmsNorm shape mismatch: x [2, 4] and weight [3]'],
  ['rmsNorm eps Infinity', () => rmsNorm(z([2, 4]), z([4]), Infinity), RangeError, 'Expected finite number for eps but received Infinity of type number'],
  ['rmsNorm dtypes', () => rmsNorm(z([2, 4]), z([4], 'bfloat16')), TypeError, 'rmsNorm: tensors have different dtypes (float32 and bfloat16)'],
  ['add shapes', () => add(z([2, 3]), z([6])), RangeError, 'add shape mismatch: [2, 3] and [6]'],
  ['add dtypes', () => add(z([2]), z([2], 'float16')), TypeError, 'add: tensors have different dtypes (float32 and float16)'],
  ['cat not an array', () => cat(z([2]) as never, 0), TypeError, 'Expected non-empty array of Tensors for parts'],
  ['cat ranks differ', () => cat([z([2, 3]), z([2, 3, 1])], 0), RangeError, 'cat along dim 0 expects shapes equal except in that dim but received [2, 3] and [2, 3, 1]'],
  ['cat dtypes differ', () => cat([z([2]), z([2], 'bfloat16')], 0), TypeError, 'cat: tensors have different dtypes (float32 and bfloat16)'],
  ['cat dim −3', () => cat([z([2, 3])], -3), RangeError, 'Expected integer in [-2, 2) for dim but received -3 of type number'],
];

for (const [title, fn, ErrorClass, message] of invalid) {
  test(`rejects ${title}`, async (t) => {
    const err = await t.throwsAsync(async () => fn());
    t.true(err instanceof ErrorClass, `${err?.name}: ${err?.message}`);
    t.is(err?.message, message);
  });
}

test('a disposed operand rejects with DISPOSED', async (t) => {
  const a = z([2, 2]);
  a.dispose();
  await t.throwsAsync(() => matmul(a, z([2, 2])), { code: 'DISPOSED' });
  await t.throwsAsync(() => linear(z([2, 2]), a), { code: 'DISPOSED' });
  await t.throwsAsync(() => add(z([2, 2]), a), { code: 'DISPOSED' });
  t.throws(() => cat([z([2, 2]), a], 0), { code: 'DISPOSED' });
});

// ---------------------------------------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------------------------------------

const COMBOS = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
] as const;

for (const [transA, transB] of COMBOS) {
  const label = `transA ${transA}, transB ${transB}`;
  for (const [M, K, N] of [[33, 47, 29], [1, 64, 1], [64, 1, 17], [128, 96, 80]] as const) {
    test(`matmul [${M}×${K}]·[${K}×${N}], ${label}: random data within 1e-5, integers exactly`, async (t) => {
      const aShape = transA ? [K, M] : [M, K];
      const bShape = transB ? [N, K] : [K, N];
      for (const [gen, tol] of [[rand, F32_TOL], [randInt, 0]] as const) {
        const a = gen(M * K, M + K + (transA ? 1 : 0));
        const b = gen(K * N, N * 7 + (transB ? 3 : 0));
        const ta = Tensor.from(a, aShape);
        const tb = Tensor.from(b, bShape);
        const c = await matmul(ta, tb, { transA, transB });
        t.deepEqual(c.shape, [M, N]);
        const ref = naiveMatmul(a, aShape, b, bShape, transA, transB);
        if (tol === 0) t.deepEqual(await vals(c), ref, 'integer inputs give exact results');
        else close(t, await vals(c), ref, tol, `${gen.name}`);
        t.deepEqual(await vals(ta), Array.from(a), 'inputs are not modified');
      }
    });
  }
}

test('matmul with empty dimensions gives empty or zero results', async (t) => {
  t.deepEqual((await matmul(z([0, 3]), z([3, 2]))).shape, [0, 2]);
  const k0 = await matmul(z([2, 0]), z([0, 3]));
  t.deepEqual(k0.shape, [2, 3]);
  t.deepEqual(await vals(k0), [0, 0, 0, 0, 0, 0]);
  t.deepEqual((await matmul(z([2, 3]), z([3, 0]))).shape, [2, 0]);
});

test('concurrent matmuls all return their own products', async (t) => {
  const jobs = Array.from({ length: 6 }, (_, i) => {
    const a = randInt(20 * 30, i);
    const b = randInt(30 * 10, 100 + i);
    return { a, b, p: matmul(Tensor.from(a, [20, 30]), Tensor.from(b, [30, 10])) };
  });
  for (const j of jobs) t.deepEqual(await vals(await j.p), naiveMatmul(j.a, [20, 30], j.b, [30, 10], false, false));
});

test.serial('a timer keeps firing during a 2048×2048 matmul (the GEMM runs off the event loop)', async (t) => {
  const n = 2048;
  const a = Tensor.from(new Float32Array(n * n).fill(0.5), [n, n]);
  const b = Tensor.from(new Float32Array(n * n).fill(2), [n, n]);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const t0 = Date.now();
  const c = await matmul(a, b);
  const ms = Date.now() - t0;
  clearInterval(timer);
  const v = await c.toFloat32Array();
  t.is(v[0], n);
  t.is(v[n * n - 1], n);
  t.log(`2048³ sgemm: ${ms} ms, ${ticks} timer ticks`);
  // A blocked event loop would tick at most once; a free one ticks about every 5 ms.
  t.true(ticks >= 3, `${ticks} ticks during ${ms} ms`);
});

// ---------------------------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------------------------

/** y[..., o] = Σ_i x[..., i] · w[o, i] + b[o] in double precision. */
function naiveLinear(x: ArrayLike<number>, rows: number, inF: number, w: ArrayLike<number>, outF: number, b?: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o]! : 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i]! * w[o * inF + i]!;
      out.push(s);
    }
  }
  return out;
}

for (const xShape of [[24], [5, 24], [2, 3, 24], [2, 1, 2, 24]]) {
  for (const withBias of [false, true]) {
    test(`linear x ${JSON.stringify(xShape)} · W[17, 24]ᵀ ${withBias ? '+ bias' : 'without bias'}`, async (t) => {
      const rows = numel(xShape) / 24;
      for (const [gen, tol] of [[rand, F32_TOL], [randInt, 0]] as const) {
        const x = gen(numel(xShape), 3);
        const w = gen(17 * 24, 4);
        const b = withBias ? gen(17, 5) : undefined;
        const y = await linear(Tensor.from(x, xShape), Tensor.from(w, [17, 24]), b ? Tensor.from(b, [17]) : undefined);
        t.deepEqual(y.shape, [...xShape.slice(0, -1), 17]);
        const ref = naiveLinear(x, rows, 24, w, 17, b);
        if (tol === 0) t.deepEqual(await vals(y), ref);
        else close(t, await vals(y), ref, tol, gen.name);
      }
    });
  }
}

test('linear with a null bias equals linear without one, and equals matmul(x, W, { transB: true })', async (t) => {
  const x = Tensor.from(randInt(6 * 8, 1), [6, 8]);
  const w = Tensor.from(randInt(5 * 8, 2), [5, 8]);
  const a = await vals(await linear(x, w, null));
  t.deepEqual(await vals(await linear(x, w)), a);
  t.deepEqual(await vals(await matmul(x, w, { transB: true })), a);
});

// ---------------------------------------------------------------------------------------------------------
// Elementwise kernels
// ---------------------------------------------------------------------------------------------------------

test('addBias adds the bias to every row and returns a new tensor', async (t) => {
  const y = Tensor.from(rand(2 * 3 * 5, 1), [2, 3, 5]);
  const bias = Tensor.from(rand(5, 2), [5]);
  const before = await vals(y);
  const bv = await vals(bias);
  const out = await addBias(y, bias);
  t.deepEqual(out.shape, [2, 3, 5]);
  t.deepEqual(await vals(out), before.map((v, i) => Math.fround(v + bv[i % 5]!)));
  t.deepEqual(await vals(y), before, 'y is not modified');
});

test('add is elementwise and exact in float32', async (t) => {
  const a = rand(7 * 9, 3);
  const b = rand(7 * 9, 4);
  const out = await add(Tensor.from(a, [7, 9]), Tensor.from(b, [7, 9]));
  t.deepEqual(out.shape, [7, 9]);
  t.deepEqual(await vals(out), Array.from(a).map((v, i) => Math.fround(v + b[i]!)));
});

test('siluAndMul: silu(x[..., :d]) · x[..., d:] (vLLM SiluAndMul)', async (t) => {
  const x = rand(3 * 2 * 16, 5).map((v) => v * 6);
  const out = await siluAndMul(Tensor.from(x, [3, 2, 16]));
  t.deepEqual(out.shape, [3, 2, 8]);
  const ref: number[] = [];
  for (let r = 0; r < 6; r++) {
    for (let j = 0; j < 8; j++) {
      const g = x[r * 16 + j]!;
      ref.push((g / (1 + Math.exp(-g))) * x[r * 16 + 8 + j]!);
    }
  }
  close(t, await vals(out), ref, 1e-6, 'siluAndMul');
  t.deepEqual(await vals(await siluAndMul(Tensor.from([0, -50, 3, 2], [4]))), [0, Math.fround(-50 / (1 + Math.exp(50))) * 2]);
});

test('rmsNorm: x / sqrt(mean(x²) + eps) · weight over the last dim', async (t) => {
  const n = 64;
  const x = rand(4 * n, 6).map((v) => v * 3);
  const w = rand(n, 7);
  for (const eps of [1e-5, 1e-6, 0.5]) {
    const out = await rmsNorm(Tensor.from(x, [2, 2, n]), Tensor.from(w, [n]), eps);
    t.deepEqual(out.shape, [2, 2, n]);
    const ref: number[] = [];
    for (let r = 0; r < 4; r++) {
      let ss = 0;
      for (let i = 0; i < n; i++) ss += x[r * n + i]! ** 2;
      const inv = 1 / Math.sqrt(ss / n + eps);
      for (let i = 0; i < n; i++) ref.push(x[r * n + i]! * inv * w[i]!);
    }
    close(t, await vals(out), ref, 1e-6, `eps ${eps}`);
  }
  // default eps 1e-5: rows of zeros stay zero
  t.deepEqual(await vals(await rmsNorm(Tensor.zeros([2, 4]), Tensor.from([1, 2, 3, 4], [4]))), new Array(8).fill(0));
});

/** Concatenation along `dim` of parts that may differ in that dim, element by element. */
function catGeneral(parts: number[][], shapes: number[][], dim: number): number[] {
  const outShape = shapes[0]!.slice();
  outShape[dim] = shapes.reduce((s, p) => s + p[dim]!, 0);
  const out: number[] = [];
  for (let i = 0; i < numel(outShape); i++) {
    const idx = unravel(i, outShape);
    let p = 0;
    let at = idx[dim]!;
    while (at >= shapes[p]![dim]!) at -= shapes[p++]![dim]!;
    idx[dim] = at;
    out.push(parts[p]![ravel(idx, shapes[p]!)]!);
  }
  return out;
}

for (const dim of [0, 1, 2, -1]) {
  test(`cat along dim ${dim} of 3-D tensors (equal and unequal sizes in that dim)`, async (t) => {
    const d = dim < 0 ? dim + 3 : dim;
    const sizes = [[2, 2, 2], [1, 3, 2]];
    for (const along of sizes) {
      const shapes = along.map((s) => {
        const sh = [2, 3, 4];
        sh[d] = s;
        return sh;
      });
      const parts = shapes.map((sh, i) => Array.from(randInt(numel(sh), 10 + i)));
      const out = cat(parts.map((p, i) => Tensor.from(p, shapes[i]!)), dim);
      const outShape = shapes[0]!.slice();
      outShape[d] = along.reduce((a, b) => a + b, 0);
      t.deepEqual(out.shape, outShape);
      t.deepEqual(await vals(out), catGeneral(parts, shapes, d), `sizes ${along}`);
    }
  });
}

test('cat keeps float16 / bfloat16 bits', async (t) => {
  const a = Tensor.fromBits(new Uint16Array([0x3c00, 0x4000]), [1, 2], { dtype: 'float16' });
  const b = Tensor.fromBits(new Uint16Array([0x4200, 0x4400]), [1, 2], { dtype: 'float16' });
  const out = cat([a, b], 0);
  t.is(out.dtype, 'float16');
  t.deepEqual(Array.from((out._storage as HostStorage).data), [0x3c00, 0x4000, 0x4200, 0x4400]);
});
