/**
 * Tests of the decoder ops of lib/ops.ts (native/core/attention.cc on cpu, native/cuda/kernels.cu on cuda):
 * rotaryEmbedding, attention, softmax, argmax, embedding and copyRows. Argument errors first (exact messages, on
 * cpu), then values against independent float64 references written here, once per device (`[cpu]`, and
 * `[cuda:0]` when a GPU is visible — otherwise one skipped test says why): float32 within 1e-5 of the output's
 * scale (DESIGN.md), and on a GPU float16 / bfloat16 within 5e-3 / 2e-2.
 *
 * Conventions checked (Hugging Face transformers, modeling_llama.py): RoPE in the rotate-half layout with the
 * angle a float32 product float32(position) · invFreq[i] (transformers' float32 matmul of inv_freq and
 * position_ids; the reference takes that product in float32 and everything after it in float64); causal
 * attention where the T queries are the last T positions of the cache, and query head h reads kv head
 * ⌊h / (numHeads / numKvHeads)⌋ (repeat_kv).
 */
import test, { type ExecutionContext } from 'ava';

import type { Device } from '../lib/backend/types';
import { loadCore } from '../lib/native';
import { argmax, attention, copyRows, embedding, rotaryEmbedding, softmax } from '../lib/ops';
import { Tensor } from '../lib/tensor';
import { bitsOf, CUDA_DEVICES, cudaSkipReason, DEVICES } from './helpers/devices';
import { maxAbs, maxAbsDiff, rand, randInt } from './helpers/reference';

const F32_TOL = 1e-5;
const HALF_TOL = { float16: 5e-3, bfloat16: 2e-2 } as const;

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

/** The values of `data` after a round trip through `dtype` (what a float16 / bfloat16 tensor holds). */
async function roundTo(data: Float32Array, dtype: 'float16' | 'bfloat16'): Promise<Float32Array> {
  const t = Tensor.from(data, [data.length], { dtype });
  const out = await t.toFloat32Array();
  t.dispose();
  return out;
}

/** Default RoPE inverse frequencies 1 / base^(2i / headDim) (transformers' `_compute_default_rope_parameters`). */
function defaultInvFreq(headDim: number, base: number): Float32Array {
  return Float32Array.from({ length: headDim / 2 }, (_, i) => 1 / base ** ((2 * i) / headDim));
}

// ---------------------------------------------------------------------------------------------------------
// float64 references
// ---------------------------------------------------------------------------------------------------------

/** Rotate-half RoPE: angle as a float32 product (the convention), cos / sin and the rotation in float64. */
function ropeRef(x: ArrayLike<number>, T: number, numHeads: number, headDim: number, positions: readonly number[], invFreq: Float32Array, scaling: number): number[] {
  const half = headDim / 2;
  const out = new Array<number>(T * numHeads * headDim);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < numHeads; h++) {
      const base = (t * numHeads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(Math.fround(positions[t]!) * invFreq[i]!);
        const c = Math.cos(angle) * scaling;
        const s = Math.sin(angle) * scaling;
        const a = x[base + i]!;
        const b = x[base + i + half]!;
        out[base + i] = a * c - b * s;
        out[base + i + half] = b * c + a * s;
      }
    }
  }
  return out;
}

interface AttnShape {
  T: number;
  C: number;
  kvLength: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** Causal GQA attention in float64, written per query, head and key (no shared code with the kernels). */
function attentionRef(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, s: AttnShape, scale: number): number[] {
  const { T, kvLength, numHeads, numKvHeads, headDim } = s;
  const group = numHeads / numKvHeads;
  const out = new Array<number>(T * numHeads * headDim).fill(0);
  for (let t = 0; t < T; t++) {
    const p = kvLength - T + t;
    for (let h = 0; h < numHeads; h++) {
      const g = Math.floor(h / group);
      const qAt = (d: number) => q[t * numHeads * headDim + h * headDim + d]!;
      const kAt = (j: number, d: number) => k[j * numKvHeads * headDim + g * headDim + d]!;
      const vAt = (j: number, d: number) => v[j * numKvHeads * headDim + g * headDim + d]!;
      const scores: number[] = [];
      for (let j = 0; j <= p; j++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += qAt(d) * kAt(j, d);
        scores.push(dot * scale);
      }
      const m = Math.max(...scores);
      const e = scores.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < headDim; d++) {
        let acc = 0;
        for (let j = 0; j <= p; j++) acc += (e[j]! / z) * vAt(j, d);
        out[t * numHeads * headDim + h * headDim + d] = acc;
      }
    }
  }
  return out;
}

function softmaxRef(x: ArrayLike<number>, n: number): number[] {
  const out: number[] = [];
  for (let r = 0; r * n < x.length; r++) {
    const row = Array.from({ length: n }, (_, j) => x[r * n + j]!);
    const m = Math.max(...row);
    const e = row.map((v) => Math.exp(v - m));
    const z = e.reduce((a, b) => a + b, 0);
    out.push(...e.map((v) => v / z));
  }
  return out;
}

/** The cache rows from kvLength on: NaN and huge values, so that reading any of them shows in the result. */
function garbageCache(data: Float32Array, kvLength: number, width: number): Float32Array {
  const out = Float32Array.from(data);
  for (let i = kvLength * width; i < out.length; i++) out[i] = i % 2 === 0 ? NaN : 3e38;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Argument errors
// ---------------------------------------------------------------------------------------------------------

const z = (shape: number[], dtype: 'float32' | 'bfloat16' | 'float16' = 'float32') => Tensor.zeros(shape, { dtype });
const f = (n: number) => new Float32Array(n);
const HOST_F32 = (dtype: string) => `Expected float32 tensor for host compute but received ${dtype} (cast with t.to('float32'))`;
const rope = { headDim: 8, invFreq: f(4) };
const attn = { numHeads: 2, numKvHeads: 1, headDim: 8, kvLength: 4 };

const invalid: Array<[string, () => Promise<unknown> | unknown, typeof TypeError | typeof RangeError, string]> = [
  ['rotaryEmbedding x not a tensor', () => rotaryEmbedding(3 as never, [0], rope), TypeError, 'Expected Tensor for x but received 3 of type number'],
  ['rotaryEmbedding no options', () => rotaryEmbedding(z([2, 8]), [0, 1], undefined as never), TypeError, 'Expected positive integer for headDim but received undefined of type undefined'],
  ['rotaryEmbedding options not an object', () => rotaryEmbedding(z([2, 8]), [0, 1], 8 as never), TypeError, 'Expected object for options but received 8 of type number'],
  ['rotaryEmbedding headDim 0', () => rotaryEmbedding(z([2, 8]), [0, 1], { headDim: 0, invFreq: f(0) }), RangeError, 'Expected positive integer for headDim but received 0 of type number'],
  ['rotaryEmbedding headDim string', () => rotaryEmbedding(z([2, 8]), [0, 1], { headDim: '8' as never, invFreq: f(4) }), TypeError, 'Expected positive integer for headDim but received 8 of type string'],
  ['rotaryEmbedding headDim odd', () => rotaryEmbedding(z([2, 7]), [0, 1], { headDim: 7, invFreq: f(3) }), RangeError, 'Expected even positive integer for headDim but received 7 of type number'],
  ['rotaryEmbedding invFreq an array', () => rotaryEmbedding(z([2, 8]), [0, 1], { headDim: 8, invFreq: [1, 2, 3, 4] as never }), TypeError, 'Expected Float32Array for invFreq but received [1, 2, 3, 4] of type array'],
  ['rotaryEmbedding invFreq length', () => rotaryEmbedding(z([2, 8]), [0, 1], { headDim: 8, invFreq: f(3) }), RangeError, 'rotaryEmbedding expects invFreq of headDim / 2 = 4 values but received 3'],
  ['rotaryEmbedding attentionScaling NaN', () => rotaryEmbedding(z([2, 8]), [0, 1], { ...rope, attentionScaling: NaN }), RangeError, 'Expected finite number for attentionScaling but received NaN of type number'],
  ['rotaryEmbedding attentionScaling string', () => rotaryEmbedding(z([2, 8]), [0, 1], { ...rope, attentionScaling: '1' as never }), TypeError, 'Expected number for attentionScaling but received 1 of type string'],
  ['rotaryEmbedding x 3-D', () => rotaryEmbedding(z([2, 1, 8]), [0, 1], rope), RangeError, 'rotaryEmbedding expects x of shape [T, numHeads * 8] but received [2, 1, 8]'],
  ['rotaryEmbedding x width not a multiple', () => rotaryEmbedding(z([2, 12]), [0, 1], rope), RangeError, 'rotaryEmbedding expects x of shape [T, numHeads * 8] but received [2, 12]'],
  ['rotaryEmbedding positions not an array', () => rotaryEmbedding(z([2, 8]), 5 as never, rope), TypeError, 'Expected array of non-negative integers for positions but received 5 of type number'],
  ['rotaryEmbedding positions length', () => rotaryEmbedding(z([2, 8]), [0, 1, 2], rope), RangeError, 'rotaryEmbedding expects one position per row of x [2, 8] but received 3 positions'],
  ['rotaryEmbedding negative position', () => rotaryEmbedding(z([2, 8]), [0, -1], rope), RangeError, 'Expected non-negative integer for positions[1] but received -1 of type number'],
  ['rotaryEmbedding fractional position', () => rotaryEmbedding(z([2, 8]), [1.5, 2], rope), RangeError, 'Expected non-negative integer for positions[0] but received 1.5 of type number'],
  ['rotaryEmbedding float16 on cpu', () => rotaryEmbedding(z([2, 8], 'float16'), [0, 1], rope), TypeError, HOST_F32('float16')],
  ['attention q not a tensor', () => attention(null as never, z([4, 8]), z([4, 8]), attn), TypeError, 'Expected Tensor for q but received null'],
  ['attention numHeads 0', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, numHeads: 0 }), RangeError, 'Expected positive integer for numHeads but received 0 of type number'],
  ['attention numKvHeads missing', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, numKvHeads: undefined as never }), TypeError, 'Expected positive integer for numKvHeads but received undefined of type undefined'],
  ['attention headDim 2.5', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, headDim: 2.5 }), RangeError, 'Expected positive integer for headDim but received 2.5 of type number'],
  ['attention kvLength −1', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, kvLength: -1 }), RangeError, 'Expected non-negative integer for kvLength but received -1 of type number'],
  ['attention scale Infinity', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, scale: Infinity }), RangeError, 'Expected finite number for scale but received Infinity of type number'],
  ['attention heads not a multiple', () => attention(z([2, 32]), z([4, 24]), z([4, 24]), { ...attn, numHeads: 4, numKvHeads: 3 }), RangeError, 'attention expects numHeads to be a multiple of numKvHeads but received numHeads 4 and numKvHeads 3'],
  ['attention q width', () => attention(z([2, 15]), z([4, 8]), z([4, 8]), attn), RangeError, 'attention expects q of shape [T, 16] (numHeads × headDim) but received [2, 15]'],
  ['attention q 3-D', () => attention(z([2, 1, 16]), z([4, 8]), z([4, 8]), attn), RangeError, 'attention expects q of shape [T, 16] (numHeads × headDim) but received [2, 1, 16]'],
  ['attention k width', () => attention(z([2, 16]), z([4, 16]), z([4, 16]), attn), RangeError, 'attention expects k of shape [C, 8] (numKvHeads × headDim) but received [4, 16]'],
  ['attention v shape', () => attention(z([2, 16]), z([4, 8]), z([3, 8]), attn), RangeError, 'attention expects k and v of the same shape but received [4, 8] and [3, 8]'],
  ['attention kvLength beyond the cache', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, kvLength: 5 }), RangeError, 'attention expects kvLength in [2, 4] (q [2, 16], cache k [4, 8]) but received 5'],
  ['attention kvLength below T', () => attention(z([2, 16]), z([4, 8]), z([4, 8]), { ...attn, kvLength: 1 }), RangeError, 'attention expects kvLength in [2, 4] (q [2, 16], cache k [4, 8]) but received 1'],
  ['attention dtypes', () => attention(z([2, 16]), z([4, 8], 'bfloat16'), z([4, 8]), attn), TypeError, 'attention: tensors have different dtypes (float32 and bfloat16)'],
  ['attention bfloat16 on cpu', () => attention(z([2, 16], 'bfloat16'), z([4, 8], 'bfloat16'), z([4, 8], 'bfloat16'), attn), TypeError, HOST_F32('bfloat16')],
  ['softmax 0-d', () => softmax(z([])), RangeError, 'softmax expects a tensor of shape [..., n] but received shape []'],
  ['softmax not a tensor', () => softmax([1, 2] as never), TypeError, 'Expected Tensor for x but received [1, 2] of type array'],
  ['softmax float16 on cpu', () => softmax(z([2, 3], 'float16')), TypeError, HOST_F32('float16')],
  ['argmax 0-d', () => argmax(z([])), RangeError, 'argmax expects a tensor of shape [..., n] with n ≥ 1 but received shape []'],
  ['argmax empty last dim', () => argmax(z([3, 0])), RangeError, 'argmax expects a tensor of shape [..., n] with n ≥ 1 but received shape [3, 0]'],
  ['argmax bfloat16 on cpu', () => argmax(z([2, 3], 'bfloat16')), TypeError, HOST_F32('bfloat16')],
  ['embedding table 1-D', () => embedding(z([6]), [0]), RangeError, 'embedding expects a 2-D table [V, D] but received [6]'],
  ['embedding ids not an array', () => embedding(z([6, 2]), 3 as never), TypeError, 'Expected array of integers for ids but received 3 of type number'],
  ['embedding ids a string', () => embedding(z([6, 2]), '12' as never), TypeError, 'Expected array of integers for ids but received 12 of type string'],
  ['embedding id V', () => embedding(z([6, 2]), [0, 5, 6]), RangeError, 'Expected integer in [-1, 6) for ids[2] but received 6 of type number'],
  ['embedding id −2', () => embedding(z([6, 2]), [-2]), RangeError, 'Expected integer in [-1, 6) for ids[0] but received -2 of type number'],
  ['embedding id 1.5', () => embedding(z([6, 2]), new Float64Array([0, 1.5])), RangeError, 'Expected integer in [-1, 6) for ids[1] but received 1.5 of type number'],
  ['copyRows past the end', () => copyRows(z([6, 3]), 5, z([2, 3])), RangeError, 'copyRows: src [2, 3] at rowOffset 5 does not fit in dst [6, 3] (rows 5..6 of 6)'],
  ['copyRows trailing dims', () => copyRows(z([6, 3]), 0, z([2, 4])), RangeError, 'copyRows expects dst [R, ...rest] and src [n, ...rest] but received dst [6, 3] and src [2, 4]'],
  ['copyRows ranks', () => copyRows(z([6, 3]), 0, z([3])), RangeError, 'copyRows expects dst [R, ...rest] and src [n, ...rest] but received dst [6, 3] and src [3]'],
  ['copyRows 0-d', () => copyRows(z([]), 0, z([])), RangeError, 'copyRows expects dst [R, ...rest] and src [n, ...rest] but received dst [] and src []'],
  ['copyRows rowOffset −1', () => copyRows(z([6, 3]), -1, z([2, 3])), RangeError, 'Expected non-negative integer for rowOffset but received -1 of type number'],
  ['copyRows rowOffset string', () => copyRows(z([6, 3]), '1' as never, z([2, 3])), TypeError, 'Expected non-negative integer for rowOffset but received 1 of type string'],
  ['copyRows dtypes', () => copyRows(z([6, 3]), 0, z([2, 3], 'float16')), TypeError, 'copyRows: tensors have different dtypes (float32 and float16)'],
];

for (const [title, fn, ErrorClass, message] of invalid) {
  test(`rejects ${title}`, async (t) => {
    const err = await t.throwsAsync(async () => fn());
    t.true(err instanceof ErrorClass, `${err?.name}: ${err?.message}`);
    t.is(err?.message, message);
  });
}

test('a disposed operand rejects with DISPOSED', async (t) => {
  const a = z([4, 8]);
  a.dispose();
  await t.throwsAsync(() => attention(z([2, 16]), a, z([4, 8]), attn), { code: 'DISPOSED' });
  await t.throwsAsync(() => rotaryEmbedding(a, [0, 1, 2, 3], rope), { code: 'DISPOSED' });
  await t.throwsAsync(() => softmax(a), { code: 'DISPOSED' });
  await t.throwsAsync(() => argmax(a), { code: 'DISPOSED' });
  await t.throwsAsync(() => embedding(a, [0]), { code: 'DISPOSED' });
  await t.throwsAsync(() => copyRows(z([8, 8]), 0, a), { code: 'DISPOSED' });
});

test('the native kernels guard their arrays when the TypeScript checks are bypassed', (t) => {
  const core = loadCore();
  t.throws(() => core.attention(f(32), f(8), f(16), f(32), 2, 2, 1, 8, 2, 1), { instanceOf: RangeError, message: 'Expected at least 16 elements for k but received 8' });
  t.throws(() => core.attention(f(16), f(32), f(32), f(16), 2, 3, 2, 8, 2, 1), { instanceOf: RangeError, message: 'Expected numHeads to be a multiple of numKvHeads' });
  t.throws(() => core.attention(f(16), f(32), f(32), f(16), 3, 2, 1, 8, 2, 1), { instanceOf: RangeError, message: 'Expected T of at most kvLength' });
  t.throws(() => core.rotary(f(16), f(1), f(4), f(16), 2, 1, 8, 1), { instanceOf: RangeError, message: 'Expected at least 2 elements for positions but received 1' });
  t.throws(() => core.rotary(f(14), f(2), f(4), f(14), 2, 1, 7, 1), { instanceOf: RangeError, message: 'Expected even headDim' });
  t.throws(() => core.softmax(f(5), f(6), 2, 3), { instanceOf: RangeError, message: 'Expected at least 6 elements for x but received 5' });
  t.throws(() => core.argmax(f(6), new Int32Array(1), 2, 3), { instanceOf: RangeError, message: 'Expected at least 2 elements for out but received 1' });
  t.throws(() => core.argmax(f(6), f(2) as never, 2, 3), { instanceOf: TypeError, message: 'Expected Int32Array for out' });
  t.throws(() => core.argmax(f(6), new Int32Array(2), 2, 0), { instanceOf: RangeError });
  t.throws(() => core.attention(f(1), f(1), f(1), f(1), 2 ** 30, 2 ** 20, 1, 2 ** 20, 2 ** 30, 1), { instanceOf: RangeError, message: 'element count exceeds 2^40' });
});

// ---------------------------------------------------------------------------------------------------------
// Values, once per device
// ---------------------------------------------------------------------------------------------------------

if (cudaSkipReason) test.skip(`[cuda:0] decoder ops value tests (rotary, attention, softmax, argmax, embedding, copyRows; float16/bfloat16): ${cudaSkipReason}`, () => {});

const ATTN_CASES: Array<[string, AttnShape]> = [
  ['GQA 8:2, prefill T = kvLength = 5', { T: 5, C: 5, kvLength: 5, numHeads: 8, numKvHeads: 2, headDim: 16 }],
  ['MHA 4:4, decode T = 1 over kvLength 7 of a 10-row cache', { T: 1, C: 10, kvLength: 7, numHeads: 4, numKvHeads: 4, headDim: 8 }],
  ['GQA 4:1, chunked prefill T = 3 over kvLength 9 of a 12-row cache', { T: 3, C: 12, kvLength: 9, numHeads: 4, numKvHeads: 1, headDim: 32 }],
  ['MQA 3:1, headDim 5 (off every vector width), T = 4 over kvLength 6', { T: 4, C: 8, kvLength: 6, numHeads: 3, numKvHeads: 1, headDim: 5 }],
  ['GQA 4:2, one query and one key', { T: 1, C: 1, kvLength: 1, numHeads: 4, numKvHeads: 2, headDim: 4 }],
];

for (const device of DEVICES) {
  const on = { device } as const;

  for (const [headDim, numHeads] of [[8, 3], [128, 2]] as const) {
    test(`[${device}] rotaryEmbedding headDim ${headDim}, ${numHeads} heads, positions up to 100000, attentionScaling 1 and 1.25: within 1e-5 of float64`, async (t) => {
      const positions = [0, 1, 2, 7, 31, 1000, 4095, 65537, 100000];
      const T = positions.length;
      const x = rand(T * numHeads * headDim, headDim + numHeads);
      const invFreq = defaultInvFreq(headDim, 500000);
      invFreq[0] = 1; // the fastest rotation: angle = position itself (large arguments of cos / sin)
      for (const attentionScaling of [undefined, 1.25]) {
        const tx = Tensor.from(x, [T, numHeads * headDim], on);
        const y = await rotaryEmbedding(tx, positions, { headDim, invFreq, attentionScaling });
        t.deepEqual(y.shape, [T, numHeads * headDim]);
        t.is(y.device, device);
        t.is(y.dtype, 'float32');
        t.not(y, tx);
        close(t, await vals(y), ropeRef(x, T, numHeads, headDim, positions, invFreq, attentionScaling ?? 1), F32_TOL, `scaling ${attentionScaling}`);
        t.deepEqual(await vals(tx), Array.from(x), 'x is not modified');
      }
    });
  }

  test(`[${device}] rotaryEmbedding at position 0 is the identity (times attentionScaling), and positions may be a typed array`, async (t) => {
    const x = rand(2 * 16, 9);
    const invFreq = defaultInvFreq(8, 10000);
    const y = await rotaryEmbedding(Tensor.from(x, [2, 16], on), new Int32Array([0, 0]), { headDim: 8, invFreq, attentionScaling: 0.5 });
    t.deepEqual(await vals(y), Array.from(x, (v) => Math.fround(v * 0.5)));
  });

  test(`[${device}] rotaryEmbedding takes the angle as a float32 product (transformers' float32 freqs)`, async (t) => {
    // 100003 · 0.7 is 70002.1 in float64 but 70002.1015625 in float32: a float64 angle would give cos/sin
    // differing by ~1.5e-3 and fail the bound.
    const invFreq = Float32Array.of(0.7);
    const x = Float32Array.of(1, 0);
    const y = await vals(await rotaryEmbedding(Tensor.from(x, [1, 2], on), [100003], { headDim: 2, invFreq }));
    const angle = Math.fround(100003 * Math.fround(0.7));
    close(t, y, [Math.cos(angle), Math.sin(angle)], F32_TOL, 'float32 angle');
    t.true(Math.abs(y[0]! - Math.cos(100003 * Math.fround(0.7))) > 1e-4, 'differs from a float64 angle');
  });

  for (const [title, s] of ATTN_CASES) {
    test(`[${device}] attention ${title}: within 1e-5 of float64, unused cache rows never read`, async (t) => {
      const qw = s.numHeads * s.headDim;
      const kw = s.numKvHeads * s.headDim;
      const q = rand(s.T * qw, s.T + qw);
      const k = garbageCache(rand(s.C * kw, 2 * s.C + kw), s.kvLength, kw);
      const v = garbageCache(rand(s.C * kw, 3 * s.C + kw), s.kvLength, kw);
      const opts = { numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim, kvLength: s.kvLength };
      const out = await attention(Tensor.from(q, [s.T, qw], on), Tensor.from(k, [s.C, kw], on), Tensor.from(v, [s.C, kw], on), opts);
      t.deepEqual(out.shape, [s.T, qw]);
      t.is(out.device, device);
      t.is(out.dtype, 'float32');
      const got = await vals(out);
      t.true(got.every(Number.isFinite), 'no NaN from the garbage rows');
      close(t, got, attentionRef(q, k, v, s, 1 / Math.sqrt(s.headDim)), F32_TOL, title);
    });
  }

  test(`[${device}] attention with scores near ±1e4 (exact integers, scale 1 and 0.5): max-subtracted, finite, within 1e-5`, async (t) => {
    // q·k = ±10000 + d_j with small integer d_j: exact in float32; exp(±1e4) would overflow without the max.
    const s: AttnShape = { T: 3, C: 6, kvLength: 6, numHeads: 2, numKvHeads: 1, headDim: 4 };
    const q = Float32Array.of(100, 1, 0, 0, -100, 1, 0, 0, /* t1 */ 100, 0, 1, 0, -100, 0, 1, 0, /* t2 */ 100, 1, 1, 0, -100, 1, 1, 0);
    const k = Float32Array.from({ length: 6 * 4 }, (_, i) => (i % 4 === 0 ? 100 : i % 4 === 3 ? 0 : ((i * 7) % 5) - 2));
    const v = rand(6 * 4, 77);
    for (const scale of [1, 0.5]) {
      const out = await attention(Tensor.from(q, [3, 8], on), Tensor.from(k, [6, 4], on), Tensor.from(v, [6, 4], on), { ...s, scale });
      const got = await vals(out);
      t.true(got.every(Number.isFinite), `scale ${scale}: finite`);
      close(t, got, attentionRef(q, k, v, s, scale), F32_TOL, `scale ${scale}`);
    }
  });

  test(`[${device}] attention at Llama-3-8B shapes (32 q heads, 8 kv heads, headDim 128): T = 16 prefill and T = 1 decode over 64 rows`, async (t) => {
    const shapes: AttnShape[] = [
      { T: 16, C: 64, kvLength: 16, numHeads: 32, numKvHeads: 8, headDim: 128 },
      { T: 1, C: 64, kvLength: 64, numHeads: 32, numKvHeads: 8, headDim: 128 },
    ];
    for (const s of shapes) {
      const q = rand(s.T * 4096, 5);
      const k = garbageCache(rand(s.C * 1024, 6), s.kvLength, 1024);
      const v = garbageCache(rand(s.C * 1024, 7), s.kvLength, 1024);
      const tq = Tensor.from(q, [s.T, 4096], on);
      const tk = Tensor.from(k, [s.C, 1024], on);
      const tv = Tensor.from(v, [s.C, 1024], on);
      const opts = { numHeads: 32, numKvHeads: 8, headDim: 128, kvLength: s.kvLength };
      await attention(tq, tk, tv, opts); // warm-up
      const t0 = process.hrtime.bigint();
      const out = await attention(tq, tk, tv, opts);
      const got = await vals(out);
      t.log(`T ${s.T}, kvLength ${s.kvLength}: ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(2)} ms`);
      close(t, got, attentionRef(q, k, v, s, 1 / Math.sqrt(128)), F32_TOL, `T ${s.T}`);
    }
  });

  test(`[${device}] decoding token by token with copyRows into a KV cache gives the prefill's rows`, async (t) => {
    const s = { numHeads: 4, numKvHeads: 2, headDim: 8 };
    const N = 6;
    const C = 8;
    const q = rand(N * 32, 11);
    const k = rand(N * 16, 12);
    const v = rand(N * 16, 13);
    const kCache = Tensor.zeros([C, 16], on);
    const vCache = Tensor.zeros([C, 16], on);
    const prefill = await vals(await attention(Tensor.from(q, [N, 32], on), Tensor.from(k, [N, 16], on), Tensor.from(v, [N, 16], on), { ...s, kvLength: N }));
    close(t, prefill, attentionRef(q, k, v, { ...s, T: N, C: N, kvLength: N }, 1 / Math.sqrt(8)), F32_TOL, 'prefill');
    for (let p = 0; p < N; p++) {
      await copyRows(kCache, p, Tensor.from(k.subarray(p * 16, (p + 1) * 16), [1, 16], on));
      await copyRows(vCache, p, Tensor.from(v.subarray(p * 16, (p + 1) * 16), [1, 16], on));
      const row = await vals(await attention(Tensor.from(q.subarray(p * 32, (p + 1) * 32), [1, 32], on), kCache, vCache, { ...s, kvLength: p + 1 }));
      close(t, row, prefill.slice(p * 32, (p + 1) * 32), F32_TOL, `decode step ${p}`);
    }
  });

  test(`[${device}] softmax over the last dim: huge, negative and random rows, rows sum to 1`, async (t) => {
    const rows = [
      [1000, 999, 998, -1000],
      [88, 89, 90, 91], // exp(91) overflows float32 without the max
      [-50000, -50000, -50000, -50000],
      [-1e30, 0, 1e30, 5],
      [0, 0, 0, 0],
    ];
    const x = Float32Array.from(rows.flat());
    const y = await vals(await softmax(Tensor.from(x, [5, 4], on)));
    close(t, y, softmaxRef(x, 4), F32_TOL, 'special rows');
    t.deepEqual(y.slice(8, 12), [0.25, 0.25, 0.25, 0.25]);
    t.deepEqual(y.slice(12, 16), [0, 0, 1, 0]);
    const r = rand(3 * 4 * 33, 21).map((v) => v * 30);
    const out = await softmax(Tensor.from(r, [3, 4, 33], on));
    t.deepEqual(out.shape, [3, 4, 33]);
    const ry = await vals(out);
    close(t, ry, softmaxRef(r, 33), F32_TOL, 'random [3, 4, 33]');
    for (let i = 0; i < 12; i++) {
      const sum = ry.slice(i * 33, (i + 1) * 33).reduce((a, b) => a + b, 0);
      t.true(Math.abs(sum - 1) < 1e-5, `row ${i} sums to ${sum}`);
    }
    const one = await vals(await softmax(Tensor.from(Float32Array.of(3), [1], on)));
    t.deepEqual(one, [1]);
    const wide = rand(2 * 32000, 4).map((v) => v * 20);
    close(t, await vals(await softmax(Tensor.from(wide, [2, 32000], on))), softmaxRef(wide, 32000), F32_TOL, 'vocab-sized rows');
  });

  test(`[${device}] argmax: ties go to the first index, negatives, NaN wins, several rows and leading dims`, async (t) => {
    const x = Float32Array.from([
      [1, 3, 3, 2],
      [-5, -2, -7, -2],
      [1, NaN, 5, NaN],
      [-Infinity, -Infinity, -Infinity, -Infinity],
      [0, -0, 0, 0],
      [2, 2, 2, 9],
    ].flat());
    t.deepEqual(Array.from(await argmax(Tensor.from(x, [6, 4], on))), [1, 1, 1, 0, 0, 3]);
    t.deepEqual(Array.from(await argmax(Tensor.from(x, [2, 3, 4], on))), [1, 1, 1, 0, 0, 3], 'leading dims flatten row-major');
    const one = await argmax(Tensor.from(Float32Array.of(4, 8, -1), [3], on));
    t.true(one instanceof Int32Array);
    t.deepEqual(Array.from(one), [1]);
    const V = 128256;
    const logits = rand(3 * V, 31);
    const want = [0, 77777, V - 1];
    want.forEach((j, r) => (logits[r * V + j] = 1.5));
    t.deepEqual(Array.from(await argmax(Tensor.from(logits, [3, V], on))), want);
  });

  test(`[${device}] embedding gathers rows, −1 gives zero rows (also in a recycled buffer)`, async (t) => {
    const table = rand(6 * 5, 41);
    const ids = [3, -1, 0, 5, -1, 3];
    const out = await embedding(Tensor.from(table, [6, 5], on), ids);
    t.deepEqual(out.shape, [6, 5]);
    t.is(out.device, device);
    t.deepEqual(await vals(out), ids.flatMap((id) => (id < 0 ? [0, 0, 0, 0, 0] : Array.from(table.subarray(id * 5, id * 5 + 5)))));
    // A freed tensor of the output's byte size (64 KiB, poolable on the host) leaves its values behind.
    const D = 4096;
    const stale = Tensor.from(new Float32Array(4 * D).fill(7), [4, D], on);
    stale.dispose();
    const big = rand(3 * D, 42);
    const rows = await vals(await embedding(Tensor.from(big, [3, D], on), [-1, 2, -1, 0]));
    t.true(rows.slice(0, D).every((v) => v === 0) && rows.slice(2 * D, 3 * D).every((v) => v === 0), 'masked rows are zero');
    t.deepEqual(rows.slice(D, 2 * D), Array.from(big.subarray(2 * D, 3 * D)));
    t.deepEqual((await embedding(Tensor.from(table, [6, 5], on), [])).shape, [0, 5]);
  });

  test(`[${device}] embedding of a bfloat16 table copies the raw rows`, async (t) => {
    const table = Tensor.from(rand(4 * 3, 43), [4, 3], { device, dtype: 'bfloat16' });
    const out = await embedding(table, [2, -1, 1]);
    t.is(out.dtype, 'bfloat16');
    const src = await bitsOf(table);
    t.deepEqual(Array.from(await bitsOf(out)), [...src.subarray(6, 9), 0, 0, 0, ...src.subarray(3, 6)]);
  });

  test(`[${device}] copyRows writes rows in place at an offset and leaves the others`, async (t) => {
    const dst = Tensor.from(rand(6 * 2 * 3, 51), [6, 2, 3], on);
    const before = await vals(dst);
    const src = rand(2 * 2 * 3, 52);
    await copyRows(dst, 4, Tensor.from(src, [2, 2, 3], on));
    t.deepEqual(await vals(dst), [...before.slice(0, 24), ...Array.from(src)]);
    await copyRows(dst, 0, Tensor.from(src.subarray(0, 6), [1, 2, 3], on));
    t.deepEqual((await vals(dst)).slice(0, 6), Array.from(src.subarray(0, 6)));
    t.deepEqual((await vals(dst)).slice(6, 24), before.slice(6, 24));
    await copyRows(dst, 6, Tensor.zeros([0, 2, 3], on)); // an empty append at the end fits
    const h = Tensor.zeros([3, 2], { device, dtype: 'float16' });
    await copyRows(h, 1, Tensor.from([1, 2, 3, 4], [2, 2], { device, dtype: 'float16' }));
    t.deepEqual(await vals(h), [0, 0, 1, 2, 3, 4]);
    await t.throwsAsync(() => copyRows(dst, 5, Tensor.from(src, [2, 2, 3], on)), {
      instanceOf: RangeError,
      message: 'copyRows: src [2, 2, 3] at rowOffset 5 does not fit in dst [6, 2, 3] (rows 5..6 of 6)',
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// GPU only: float16 / bfloat16 storage (float32 math) and mixed-device errors
// ---------------------------------------------------------------------------------------------------------

for (const device of CUDA_DEVICES) {
  test(`[${device}] decoder ops reject operands on different devices before any work`, async (t) => {
    const g = Tensor.zeros([4, 8], { device });
    const differ = (what: string, first: string, second: string) =>
      ({ instanceOf: RangeError, message: `${what}: tensors are on different devices (${first} and ${second})` }) as const;
    await t.throwsAsync(() => attention(Tensor.zeros([2, 16]), g, g, attn), differ('attention', 'cpu', device));
    await t.throwsAsync(() => copyRows(g, 0, Tensor.zeros([1, 8])), differ('copyRows', device, 'cpu'));
  });

  test(`[${device}] attention with headDim above the kernel's limit is a RangeError`, async (t) => {
    const g = Tensor.zeros([1, 8192], { device });
    await t.throwsAsync(() => attention(g, g, g, { numHeads: 1, numKvHeads: 1, headDim: 8192, kvLength: 1 }), { instanceOf: RangeError });
  });

  for (const dtype of ['float16', 'bfloat16'] as const) {
    const tol = HALF_TOL[dtype];
    const on = { device, dtype } as const;

    test(`[${device}] rotaryEmbedding ${dtype}, headDim 128: within ${tol}`, async (t) => {
      const positions = [0, 3, 100, 8191, 100000];
      const x = await roundTo(rand(5 * 256, 61), dtype);
      const invFreq = defaultInvFreq(128, 500000);
      const y = await rotaryEmbedding(Tensor.from(x, [5, 256], on), positions, { headDim: 128, invFreq, attentionScaling: 1.1 });
      t.is(y.dtype, dtype);
      close(t, await vals(y), ropeRef(x, 5, 2, 128, positions, invFreq, 1.1), tol, dtype);
    });

    for (const [title, s] of ATTN_CASES) {
      test(`[${device}] attention ${dtype} ${title}: within ${tol}`, async (t) => {
        const qw = s.numHeads * s.headDim;
        const kw = s.numKvHeads * s.headDim;
        const q = await roundTo(rand(s.T * qw, s.T + qw), dtype);
        const k = await roundTo(rand(s.C * kw, 2 * s.C + kw), dtype);
        const v = await roundTo(rand(s.C * kw, 3 * s.C + kw), dtype);
        const opts = { numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim, kvLength: s.kvLength };
        const out = await attention(Tensor.from(q, [s.T, qw], on), Tensor.from(k, [s.C, kw], on), Tensor.from(v, [s.C, kw], on), opts);
        t.is(out.dtype, dtype);
        close(t, await vals(out), attentionRef(q, k, v, s, 1 / Math.sqrt(s.headDim)), tol, title);
      });
    }

    test(`[${device}] softmax and argmax ${dtype}: within ${tol}, first index on ties`, async (t) => {
      const x = await roundTo(rand(4 * 1000, 71).map((v) => v * 8), dtype);
      close(t, await vals(await softmax(Tensor.from(x, [4, 1000], on))), softmaxRef(x, 1000), tol, 'softmax');
      const want = Array.from({ length: 4 }, (_, r) => {
        let best = 0;
        for (let j = 1; j < 1000; j++) if (x[r * 1000 + j]! > x[r * 1000 + best]!) best = j;
        return best;
      });
      t.deepEqual(Array.from(await argmax(Tensor.from(x, [4, 1000], on))), want);
    });
  }
}
