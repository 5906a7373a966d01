/**
 * Tests of lib/tensor.ts (and the dtype conversions of native/core/kernels.cc and native/cuda): invalid inputs
 * first, each with its exact message; then, once per device (`[cpu]`, and `[cuda:0]` when a GPU is visible —
 * otherwise one skipped test says why), construction, dtype round trips and rounding (hand-checked values),
 * narrow against a plain-loop reference, reshape's shared memory and views; moving between cpu and cuda (GPU
 * only); dispose semantics, the cuda device without a GPU, and memory over 10,000 create/dispose cycles (cpu).
 */
import { execFile } from 'node:child_process';
import * as path from 'node:path';

import test from 'ava';

import type { HostStorage } from '../lib/backend/cpu';
import type { CudaStorage } from '../lib/backend/cuda';
import { TpkitError } from '../lib/errors';
import { Tensor } from '../lib/tensor';
import { bitsOf, CUDA_DEVICES, cudaSkipReason, DEVICES } from './helpers/devices';
import { arange, narrowRef } from './helpers/reference';

// ---------------------------------------------------------------------------------------------------------
// Invalid input (exact messages)
// ---------------------------------------------------------------------------------------------------------

const DTYPE_MSG = "one of 'float32', 'float16', 'bfloat16'";
const DEVICE_MSG = "'cpu', 'cuda' or 'cuda:N'";

const invalid: Array<[string, () => unknown, typeof TypeError | typeof RangeError, string]> = [
  ['shape not an array', () => Tensor.zeros(3 as never), TypeError, 'Expected array of non-negative integers for shape but received 3 of type number'],
  ['shape with a negative size', () => Tensor.zeros([2, -3]), RangeError, 'Expected array of non-negative integers for shape but received [2, -3] of type array'],
  ['shape with a fraction', () => Tensor.empty([2.5]), RangeError, 'Expected array of non-negative integers for shape but received [2.5] of type array'],
  ['shape with a string', () => Tensor.from([1, 2], ['2'] as never), RangeError, 'Expected array of non-negative integers for shape but received [2] of type array'],
  ['shape with NaN', () => Tensor.zeros([NaN]), RangeError, 'Expected array of non-negative integers for shape but received [NaN] of type array'],
  ['shape of 9 dims', () => Tensor.zeros([1, 1, 1, 1, 1, 1, 1, 1, 2]), RangeError, 'Expected at most 8 dimensions for shape but received [1, 1, 1, 1, 1, 1, 1, 1, …] of type array'],
  ['more than 2^32 elements', () => Tensor.zeros([65536, 65537]), RangeError, 'Expected at most 4294967296 elements for shape but received [65536, 65537] of type array'],
  ['data of the wrong length', () => Tensor.from([1, 2, 3, 4, 5], [2, 3]), RangeError, 'Expected 6 elements for data of shape [2, 3] but received 5'],
  ['data null', () => Tensor.from(null as never, [1]), TypeError, 'Expected array or typed array of numbers for data but received null'],
  ['data a number', () => Tensor.from(5 as never, [1]), TypeError, 'Expected array or typed array of numbers for data but received 5 of type number'],
  ['data with a string element', () => Tensor.from([0, '1'] as never, [2]), TypeError, 'Expected number for data[1] but received 1 of type string'],
  ['data with undefined', () => Tensor.from([0, 1, undefined] as never, [3]), TypeError, 'Expected number for data[2] but received undefined of type undefined'],
  ['dtype int8', () => Tensor.zeros([2], { dtype: 'int8' as never }), RangeError, `Expected ${DTYPE_MSG} for dtype but received int8 of type string`],
  ['dtype number', () => Tensor.zeros([2], { dtype: 16 as never }), TypeError, `Expected ${DTYPE_MSG} for dtype but received 16 of type number`],
  ['dtype float64', () => Tensor.from([1], [1], { dtype: 'float64' as never }), RangeError, `Expected ${DTYPE_MSG} for dtype but received float64 of type string`],
  ['device gpu', () => Tensor.zeros([2], { device: 'gpu' as never }), RangeError, `Expected ${DEVICE_MSG} for device but received gpu of type string`],
  ['device cuda:-1', () => Tensor.zeros([2], { device: 'cuda:-1' as never }), RangeError, `Expected ${DEVICE_MSG} for device but received cuda:-1 of type string`],
  ['device number', () => Tensor.empty([2], { device: 1 as never }), TypeError, `Expected ${DEVICE_MSG} for device but received 1 of type number`],
  ['options array', () => Tensor.zeros([2], [] as never), TypeError, 'Expected object for options but received [] of type array'],
  ['fromBits plain array', () => Tensor.fromBits([0] as never, [1], { dtype: 'float16' }), TypeError, 'Expected Uint16Array for bits but received [0] of type array'],
  ['fromBits float32', () => Tensor.fromBits(new Uint16Array(1), [1], { dtype: 'float32' as never }), RangeError, "Expected 'float16' or 'bfloat16' for dtype but received float32 of type string"],
  ['fromBits wrong length', () => Tensor.fromBits(new Uint16Array(3), [2, 2], { dtype: 'bfloat16' }), RangeError, 'Expected 4 elements for bits of shape [2, 2] but received 3'],
  ['narrow dim out of range', () => Tensor.zeros([2, 3]).narrow(-3, 0, 1), RangeError, 'Expected integer in [-2, 2) for dim but received -3 of type number'],
  ['narrow dim string', () => Tensor.zeros([2, 3]).narrow('1' as never, 0, 1), TypeError, 'Expected integer in [-2, 2) for dim but received 1 of type string'],
  ['narrow start negative', () => Tensor.zeros([2, 3]).narrow(1, -1, 1), RangeError, 'Expected non-negative integer for start but received -1 of type number'],
  ['narrow length string', () => Tensor.zeros([2, 3]).narrow(1, 0, '1' as never), TypeError, 'Expected non-negative integer for length but received 1 of type string'],
  ['narrow past the end', () => Tensor.zeros([2, 3]).narrow(1, 2, 2), RangeError, 'Expected start + length of at most 3 (size of dim 1 of shape [2, 3]) but received 4'],
  ['reshape element count', () => Tensor.zeros([2, 3]).reshape([5]), RangeError, 'cannot reshape tensor of shape [2, 3] to [5]'],
  ['reshape not an array', () => Tensor.zeros([2, 3]).reshape(6 as never), TypeError, 'Expected array of integers for shape but received 6 of type number'],
  ['to dtype', () => Tensor.zeros([2]).to({ dtype: 'half' as never }), RangeError, `Expected ${DTYPE_MSG} for dtype but received half of type string`],
  ['to options number', () => Tensor.zeros([2]).to(3 as never), TypeError, 'Expected object for options but received 3 of type number'],
];

test('rejects reshape with two −1, naming the shape as given', (t) => {
  const err = t.throws(() => Tensor.zeros([2, 3]).reshape([-1, -1]), { instanceOf: RangeError });
  t.true(err?.message.includes('[-1, -1]'), err?.message);
});

for (const [title, fn, ErrorClass, message] of invalid) {
  test(`rejects ${title}`, async (t) => {
    const err = await t.throwsAsync(async () => fn());
    t.true(err instanceof ErrorClass, `${err?.name}: ${err?.message}`);
    t.is(err?.message, message);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Values, once per device: always cpu, and cuda:0 when a GPU is visible (test/helpers/devices.ts)
// ---------------------------------------------------------------------------------------------------------

if (cudaSkipReason) test.skip(`[cuda:0] tensor value tests (construction, dtype round trips, narrow, reshape): ${cudaSkipReason}`, () => {});

for (const device of DEVICES) {
  // -------------------------------------------------------------------------------------------------------
  // Construction
  // -------------------------------------------------------------------------------------------------------

  test(`[${device}] Tensor.from keeps shape, dtype, device and values (array and Float32Array)`, async (t) => {
    // on cpu without options: the default device is cpu
    const a = device === 'cpu' ? Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]) : Tensor.from([1, 2, 3, 4, 5, 6], [2, 3], { device });
    t.deepEqual(a.shape, [2, 3]);
    t.true(Object.isFrozen(a.shape));
    t.is(a.dtype, 'float32');
    t.is(a.device, device);
    t.is(a.numel, 6);
    t.is(a.ndim, 2);
    t.is(a.nbytes, 24);
    t.false(a.isDisposed);
    t.is(a.toString(), `Tensor(shape=[2, 3], dtype=float32, device=${device})`);
    t.deepEqual(Array.from(await a.toFloat32Array()), [1, 2, 3, 4, 5, 6]);
    const src = new Float32Array([7, 8]);
    const b = Tensor.from(src, [2], { device });
    src[0] = 0; // Tensor.from copies
    t.deepEqual(Array.from(await b.toFloat32Array()), [7, 8]);
    const out = await b.toFloat32Array();
    out[1] = 0; // toFloat32Array returns a copy
    t.deepEqual(Array.from(await b.toFloat32Array()), [7, 8]);
  });

  test(`[${device}] zeros, empty, arange, 0-d and empty tensors`, async (t) => {
    t.deepEqual(Array.from(await Tensor.zeros([2, 2], { device }).toFloat32Array()), [0, 0, 0, 0]);
    const e = Tensor.empty([3], { dtype: 'bfloat16', device });
    t.is(e.dtype, 'bfloat16');
    t.is(e.device, device);
    t.is(e.nbytes, 6);
    t.deepEqual(Array.from(await Tensor.arange([2, 2], { scale: 3, offset: 1, device }).toFloat32Array()), [3, 6, 9, 12]);
    const s = Tensor.from([42], [], { device });
    t.is(s.numel, 1);
    t.is(s.ndim, 0);
    t.deepEqual(Array.from(await s.toFloat32Array()), [42]);
    const z = Tensor.zeros([0, 5], { device });
    t.is(z.numel, 0);
    t.deepEqual(Array.from(await z.toFloat32Array()), []);
    t.is(Tensor.zeros([4], { dtype: 'float16', device }).nbytes, 8);
    for (const dtype of ['float16', 'bfloat16'] as const) {
      t.deepEqual(Array.from(await Tensor.zeros([3], { dtype, device }).toFloat32Array()), [0, 0, 0], `${dtype} zeros`);
    }
  });

  // -------------------------------------------------------------------------------------------------------
  // dtypes: exact widening, round to nearest even, specials
  // -------------------------------------------------------------------------------------------------------

  const roundTrip = async (values: number[], dtype: 'float16' | 'bfloat16'): Promise<number[]> =>
    Array.from(await Tensor.from(values, [values.length], { dtype, device }).toFloat32Array());

  /**
   * Widens all 65536 bit patterns of `dtype` to float32 and narrows them back; counts the patterns that do not
   * come back unchanged (NaNs — exponent bits all set, mantissa non-zero — need only stay NaN).
   */
  const badBitPatterns = async (dtype: 'float16' | 'bfloat16', expMask: number, mantMask: number): Promise<number> => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const wide = await Tensor.fromBits(bits, [65536], { dtype, device }).toFloat32Array();
    const back = await bitsOf(await Tensor.from(wide, [65536], { device }).to(dtype));
    let bad = 0;
    for (let i = 0; i < 65536; i++) {
      const isNaN = (i & expMask) === expMask && (i & mantMask) !== 0;
      if (isNaN ? !Number.isNaN(wide[i]!) : back[i] !== i) bad++;
    }
    return bad;
  };

  test(`[${device}] bfloat16 ↔ float32 is exact on representable values`, async (t) => {
    const values = [0, 1, -2, 0.5, 3.140625, 0.0078125, 2 ** 100, -(2 ** -126), 2 ** -133, 65280, 1.9921875];
    t.deepEqual(await roundTrip(values, 'bfloat16'), values);
    // every one of the 65536 bit patterns widens and narrows back unchanged (NaNs stay NaN)
    t.is(await badBitPatterns('bfloat16', 0x7f80, 0x7f), 0);
  });

  test(`[${device}] float16 ↔ float32 is exact on representable values (normals, subnormals, max)`, async (t) => {
    const values = [0, 1, -1.5, 0.333251953125, 65504, -65504, 2 ** -14, 2 ** -24, 3 * 2 ** -24, 1023 * 2 ** -24, 2048, 0.0999755859375];
    t.deepEqual(await roundTrip(values, 'float16'), values);
    t.is(await badBitPatterns('float16', 0x7c00, 0x3ff), 0);
  });

  test(`[${device}] bfloat16 rounds to nearest even (hand-checked values)`, async (t) => {
    t.deepEqual(
      await roundTrip([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -9, -(1 + 3 * 2 ** -8), 3.14159265, 2 ** -134, 3 * 2 ** -134], 'bfloat16'),
      [
        1, // halfway between 1 and 1 + 2^-7: the even one
        1.015625, // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
        1.0078125, // just above halfway: up
        1, // below halfway: down
        -1.015625,
        3.140625,
        0, // halfway between 0 and the smallest subnormal 2^-133: even (0)
        2 ** -132, // halfway between 2^-133 (odd) and 2^-132 (even)
      ],
    );
  });

  test(`[${device}] float16 rounds to nearest even, with subnormals and overflow to infinity (hand-checked values)`, async (t) => {
    const cases: Array<[number, number]> = [
      [1 + 2 ** -11, 1], // halfway: even
      [1 + 3 * 2 ** -11, 1 + 2 ** -9], // halfway: up to even
      [2049, 2048], // spacing 2 above 2048: halfway, even
      [2051, 2052],
      [65519, 65504], // below the midpoint to 65536
      [65520, Infinity], // the midpoint rounds to 65536, which overflows
      [1e6, Infinity],
      [-1e6, -Infinity],
      [2 ** -25, 0], // half the smallest subnormal: even (0)
      [3 * 2 ** -26, 2 ** -24],
      [2 ** -25 + 2 ** -35, 2 ** -24], // just above half
      [1.5 * 2 ** -24, 2 ** -23], // halfway between 1 and 2 ulps: even (2)
      [2.5 * 2 ** -24, 2 ** -23], // halfway between 2 and 3 ulps: even (2)
      [1e-9, 0],
      [1 / 3, 0.333251953125],
    ];
    t.deepEqual(await roundTrip(cases.map((c) => c[0]), 'float16'), cases.map((c) => c[1]));
  });

  test(`[${device}] NaN, ±Infinity and −0 survive float16 and bfloat16`, async (t) => {
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const [nan, inf, ninf, nzero, zero] = await roundTrip([NaN, Infinity, -Infinity, -0, 0], dtype);
      t.true(Number.isNaN(nan), dtype);
      t.is(inf, Infinity);
      t.is(ninf, -Infinity);
      t.true(Object.is(nzero, -0), `${dtype}: −0 keeps its sign`);
      t.true(Object.is(zero, 0));
    }
    t.is((await bitsOf(Tensor.from([-0], [1], { dtype: 'float16', device })))[0], 0x8000);
    t.is((await bitsOf(Tensor.from([Infinity], [1], { dtype: 'float16', device })))[0], 0x7c00);
    t.is((await bitsOf(Tensor.from([-Infinity], [1], { dtype: 'bfloat16', device })))[0], 0xff80);
  });

  test(`[${device}] bfloat16 overflow: float32 max rounds up to infinity`, async (t) => {
    t.deepEqual(await roundTrip([3.4028234663852886e38, 3.3895313892515355e38], 'bfloat16'), [Infinity, 3.3895313892515355e38]);
  });

  test(`[${device}] to() converts dtypes as copies and fromBits keeps raw patterns`, async (t) => {
    const a = Tensor.from([1.5, -2, 1 + 2 ** -8], [3], { device });
    const b = await a.to('bfloat16');
    t.is(b.dtype, 'bfloat16');
    t.is(b.device, device);
    t.deepEqual(Array.from(await bitsOf(b)), [0x3fc0, 0xc000, 0x3f80]);
    const c = await b.to({ dtype: 'float32' });
    t.is(c.device, device);
    t.deepEqual(Array.from(await c.toFloat32Array()), [1.5, -2, 1]);
    const same = await a.to({});
    t.not(same._storage, a._storage, 'to() always copies');
    t.deepEqual(Array.from(await same.toFloat32Array()), Array.from(await a.toFloat32Array()));
    const bits = new Uint16Array([0x3c00, 0xc000]);
    const h = Tensor.fromBits(bits, [2], { dtype: 'float16', device });
    bits[0] = 0;
    t.deepEqual(Array.from(await h.toFloat32Array()), [1, -2], 'fromBits copies');
  });

  // -------------------------------------------------------------------------------------------------------
  // narrow
  // -------------------------------------------------------------------------------------------------------

  test(`[${device}] narrow on each dim of a 3-D tensor matches a plain-loop reference`, async (t) => {
    const shape = [3, 4, 5];
    const data = arange(60, 1, 1);
    const x = Tensor.from(data, shape, { device });
    for (let dim = 0; dim < 3; dim++) {
      for (let start = 0; start < shape[dim]!; start++) {
        for (let length = 0; start + length <= shape[dim]!; length++) {
          const n = x.narrow(dim, start, length);
          const expectedShape = shape.slice();
          expectedShape[dim] = length;
          t.deepEqual(n.shape, expectedShape);
          t.is(n.device, device);
          t.deepEqual(Array.from(await n.toFloat32Array()), narrowRef(data, shape, dim, start, length), `dim ${dim}, start ${start}, length ${length}`);
          n.dispose();
        }
      }
    }
    // negative dims count from the end
    t.deepEqual(Array.from(await x.narrow(-1, 1, 2).toFloat32Array()), narrowRef(data, shape, 2, 1, 2));
    t.deepEqual(Array.from(await x.narrow(-3, 2, 1).toFloat32Array()), narrowRef(data, shape, 0, 2, 1));
  });

  test(`[${device}] narrow is a contiguous copy that keeps the dtype (bfloat16 bits unchanged)`, async (t) => {
    const bits = new Uint16Array(24).map((_, i) => 0x3f80 + i);
    const x = Tensor.fromBits(bits, [2, 3, 4], { dtype: 'bfloat16', device });
    const n = x.narrow(1, 1, 2);
    t.is(n.dtype, 'bfloat16');
    t.deepEqual(Array.from(await bitsOf(n)), narrowRef(bits, [2, 3, 4], 1, 1, 2));
    x.dispose();
    t.deepEqual(n.shape, [2, 2, 4], 'the copy outlives its source');
    t.is((await n.toFloat32Array()).length, 16);
  });

  // -------------------------------------------------------------------------------------------------------
  // reshape and views
  // -------------------------------------------------------------------------------------------------------

  test(`[${device}] reshape shares memory (writes show through) and infers −1`, async (t) => {
    const a = Tensor.arange([2, 3], { device });
    const r = a.reshape([3, -1]);
    t.deepEqual(r.shape, [3, 2]);
    t.is(r._storage, a._storage);
    await a._writeFloat32(new Float32Array([9, 8, 7, 6, 5, 4]));
    t.deepEqual(Array.from(await r.toFloat32Array()), [9, 8, 7, 6, 5, 4]);
    t.deepEqual(a.reshape([6]).shape, [6]);
    t.deepEqual(Tensor.from([5], [1, 1], { device }).reshape([]).shape, []);
  });

  test(`[${device}] views keep storage alive until the last one is disposed; each view throws DISPOSED after its own dispose`, async (t) => {
    const a = Tensor.arange([2, 3], { device });
    const storage = a._storage;
    // Touching the backing memory: HostStorage.data on cpu, CudaStorage.buffer on a GPU (both throw once freed).
    const touch = device === 'cpu' ? () => (storage as HostStorage).data : () => (storage as CudaStorage).buffer;
    const freed =
      device === 'cpu'
        ? { message: 'host storage used after free' }
        : { instanceOf: TpkitError, code: 'DISPOSED', message: `device storage on ${device} was used after free()` };
    const v1 = a.reshape([6]);
    const v2 = v1.reshape([3, 2]);
    a.dispose();
    t.true(a.isDisposed);
    t.deepEqual(Array.from(await v1.toFloat32Array()), [0, 1, 2, 3, 4, 5], 'a view outlives the original');
    v1.dispose();
    t.deepEqual(Array.from(await v2.toFloat32Array()), [0, 1, 2, 3, 4, 5]);
    t.notThrows(touch, 'storage still held by v2');
    v2.dispose();
    t.throws(touch, freed, 'the last dispose frees the storage');
  });
}

// ---------------------------------------------------------------------------------------------------------
// Moving between devices (needs a GPU)
// ---------------------------------------------------------------------------------------------------------

for (const device of CUDA_DEVICES) {
  test(`[${device}] to({ device }) copies cpu → ${device} → cpu keeping dtype, values and 16-bit patterns`, async (t) => {
    const values = [1.5, -2, 1 + 2 ** -8, 0, -0, 65504, 2 ** -24, 3.14159265];
    const host = Tensor.from(values, [2, 4]);
    const onGpu = await host.to({ device: 'cuda' });
    t.is(onGpu.device, device, "'cuda' means cuda:0");
    t.deepEqual(onGpu.shape, [2, 4]);
    const back = await onGpu.to({ device: 'cpu' });
    t.is(back.device, 'cpu');
    t.deepEqual(Array.from(await back.toFloat32Array()), Array.from(new Float32Array(values)));
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const hostBits = await bitsOf(Tensor.from(values, [2, 4], { dtype }));
      const moved = await Tensor.from(values, [2, 4]).to({ device, dtype });
      t.is(moved.dtype, dtype);
      t.deepEqual(Array.from(await bitsOf(moved)), Array.from(hostBits), `${dtype}: the device rounds as the host does`);
      const fromBits = Tensor.fromBits(hostBits, [2, 4], { dtype, device });
      const home = await fromBits.to({ device: 'cpu' });
      t.is(home.dtype, dtype);
      t.deepEqual(Array.from(await bitsOf(home)), Array.from(hostBits), `${dtype}: patterns survive the round trip`);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// dispose (cpu only: device independent, and the message names the device)
// ---------------------------------------------------------------------------------------------------------

test('use after dispose throws TpkitError DISPOSED everywhere; dispose is idempotent', async (t) => {
  const a = Tensor.from([1, 2, 3, 4], [2, 2], { dtype: 'float16' });
  a.dispose();
  a.dispose();
  a[Symbol.dispose]();
  t.true(a.isDisposed);
  t.is(a.toString(), 'Tensor(shape=[2, 2], dtype=float16, device=cpu, disposed)');
  const msg = 'tensor of shape [2, 2] (float16, cpu) was used after dispose()';
  const expectDisposed = { instanceOf: TpkitError, code: 'DISPOSED', message: msg } as const;
  await t.throwsAsync(() => a.toFloat32Array(), expectDisposed);
  t.throws(() => a.narrow(0, 0, 1), expectDisposed);
  t.throws(() => a.reshape([4]), expectDisposed);
  await t.throwsAsync(() => a.to('float32'), expectDisposed);
  t.throws(() => a._storage, expectDisposed);
  await t.throwsAsync(() => a._writeFloat32(new Float32Array(4)), expectDisposed);
  t.deepEqual(a.shape, [2, 2], 'metadata stays readable');
});

test('`using` disposes at the end of the block', async (t) => {
  let outer: Tensor;
  {
    using x = Tensor.zeros([2]);
    outer = x;
    t.false(x.isDisposed);
  }
  t.true(outer!.isDisposed);
});

// ---------------------------------------------------------------------------------------------------------
// Child processes: the cuda device without a GPU, and memory over 10,000 cycles
// ---------------------------------------------------------------------------------------------------------

const ROOT = path.join(__dirname, '..', '..');

function runNode(args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: ROOT, timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

test('Tensor.zeros on cuda throws NO_CUDA_DEVICE / CUDA_UNAVAILABLE without a GPU, and does not crash', async (t) => {
  const script = `
    const { Tensor } = require('./dist/lib/tensor');
    const { backends } = require('./dist/lib/backends');
    const out = { cudaDevices: backends().cudaDevices };
    for (const device of ['cuda', 'cuda:0', 'cuda:7']) {
      try { const x = Tensor.zeros([2], { device }); out[device] = { ok: true, device: x.device }; x.dispose(); }
      catch (e) { out[device] = { ok: false, name: e.name, code: e.code, message: e.message, tpkit: e.constructor.name }; }
    }
    console.log(JSON.stringify(out));`;
  const r = await runNode(['-e', script], 60_000);
  t.is(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, { ok: boolean; code?: string; name?: string; message?: string }> & { cudaDevices: number };
  if (out.cudaDevices > 0) {
    t.log(`${out.cudaDevices} GPU(s) visible: cuda tensors are expected to work`);
    t.like(out.cuda, { ok: true });
    return;
  }
  for (const device of ['cuda', 'cuda:0', 'cuda:7']) {
    const res = out[device]!;
    t.false(res.ok, device);
    t.is(res.name, 'TpkitError');
    t.true(res.code === 'NO_CUDA_DEVICE' || res.code === 'CUDA_UNAVAILABLE', `${device}: ${res.code} ${res.message}`);
    t.true((res.message ?? '').length > 20, 'the message says why');
  }
});

test('10,000 create/dispose cycles leave RSS within 5 % (+ 4 MiB) of the baseline after GC', async (t) => {
  const script = `
    const { Tensor } = require('./dist/lib/tensor');
    const cycle = async (n) => {
      for (let i = 0; i < n; i++) {
        const a = Tensor.arange([64, 64], { scale: i });
        const b = a.narrow(0, 8, 16);
        const c = b.reshape([-1]);
        const d = Tensor.from(await c.toFloat32Array(), [1024], { dtype: i % 2 ? 'bfloat16' : 'float16' });
        a.dispose(); b.dispose(); c.dispose(); d.dispose();
      }
    };
    const rss = async () => { for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setTimeout(r, 10)); } return process.memoryUsage().rss; };
    (async () => {
      // Warm-up: the JIT, V8's heap and malloc's arenas reach their working size first (a plateau, not a leak).
      await cycle(20000);
      const base = await rss();
      await cycle(10000);
      const after = await rss();
      console.log(JSON.stringify({ base, after }));
    })();`;
  // --max-semi-space-size pins V8's young generation, whose growth would otherwise show as RSS steps.
  const r = await runNode(['--expose-gc', '--max-semi-space-size=1', '-e', script], 120_000);
  t.is(r.code, 0, r.stderr);
  const { base, after } = JSON.parse(r.stdout) as { base: number; after: number };
  t.log(`RSS ${(base / 2 ** 20).toFixed(1)} → ${(after / 2 ** 20).toFixed(1)} MiB`);
  t.true(after <= base * 1.05 + 4 * 2 ** 20, `RSS grew from ${base} to ${after} bytes`);
});
