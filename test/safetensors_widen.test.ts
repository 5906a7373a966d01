/**
 * `SafetensorsFile.readSliceAsFloat32` (the loading path of float32 host layers) against `readSlice` followed by
 * the exact widening: every dtype, every dim, strided and contiguous slices, slices larger than the 4 MiB
 * staging buffer, and every 16-bit pattern; and the layers built on it hold the same values as with loadWeight.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ColumnParallelLinear, RowParallelLinear, SafetensorsFile, Tensor, writeSafetensors } from '../lib';
import type { RawTensor } from '../lib';
import { bitsToFloat, freshHostBuffer, hostFloat32 } from '../lib/backend/cpu';

let dir = '';
let file = '';

/** Deterministic 16-bit patterns covering every value (including subnormals, infinities and NaNs). */
function patterns(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = i < 65536 ? i : x >>> 16;
  }
  return out;
}

const TENSORS: Record<string, RawTensor> = {
  bf16: { dtype: 'bfloat16', shape: [300, 7, 40], data: patterns(300 * 7 * 40, 1) },
  f16: { dtype: 'float16', shape: [70000, 33], data: patterns(70000 * 33, 2) }, // 4.6 MB: several staging pieces
  f32: { dtype: 'float32', shape: [50, 12, 3], data: Float32Array.from({ length: 50 * 36 }, (_, i) => i * 0.25 - 100) },
  wide: { dtype: 'bfloat16', shape: [3, 1_500_000], data: patterns(3 * 1_500_000, 3) }, // one row spans pieces
};

test.before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-widen-'));
  file = path.join(dir, 'x.safetensors');
  await writeSafetensors(file, TENSORS);
});

test.after.always(async () => {
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

function widened(raw: RawTensor): Float32Array {
  return raw.dtype === 'float32' ? (raw.data as Float32Array) : bitsToFloat(raw.data as Uint16Array, raw.dtype);
}

/** Equal as bit patterns (NaN payloads included, as the widening keeps them). */
function sameBits(t: import('ava').ExecutionContext, a: Float32Array, b: Float32Array, what: string): void {
  t.is(a.length, b.length, what);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let bad = -1;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) { bad = i; break; }
  t.is(bad, -1, `${what}: first differing element ${bad}`);
}

test('readSliceAsFloat32 equals readSlice + exact widening for every dtype, dim and slice', async (t) => {
  const f = await SafetensorsFile.open(file);
  try {
    for (const [name, raw] of Object.entries(TENSORS)) {
      for (let dim = 0; dim < raw.shape.length; dim++) {
        const size = raw.shape[dim]!;
        for (const [start, length] of [[0, size], [1, size - 2], [size - 1, 1], [Math.floor(size / 3), Math.floor(size / 3)], [0, 0]] as [number, number][]) {
          const expected = await f.readSlice(name, dim, start, length);
          const got = await f.readSliceAsFloat32(name, dim, start, length, hostFloat32);
          t.deepEqual(got.shape, expected.shape, `${name} dim ${dim} [${start}, +${length})`);
          sameBits(t, got.data, widened(expected), `${name} dim ${dim} [${start}, +${length})`);
        }
      }
    }
    await t.throwsAsync(f.readSliceAsFloat32('bf16', 0, 299, 2, hostFloat32), { instanceOf: RangeError, message: /start \+ length of at most 300/ });
    await t.throwsAsync(f.readSliceAsFloat32('bf16', 0, 0, 2, () => new Float32Array(3)), { instanceOf: RangeError, message: 'alloc returned 3 elements, expected 560' });
  } finally {
    await f.close();
  }
});

test('fresh host buffers are zeroed, from both allocators', (t) => {
  for (const bytes of [16, 65536, 4 << 20, (8 << 20) + 4]) {
    const b = new Uint8Array(freshHostBuffer(bytes));
    t.is(b.length, bytes);
    t.true(b.every((x) => x === 0), `${bytes} bytes`);
  }
});

test('layers loaded from a bfloat16 file hold the same float32 values as loadWeight of the widened tensor', async (t) => {
  const w: RawTensor = { dtype: 'bfloat16', shape: [96, 80], data: patterns(96 * 80, 9).map((x) => x & 0x3fff) };
  const p = path.join(dir, 'w.safetensors');
  await writeSafetensors(p, { w });
  const f = await SafetensorsFile.open(p);
  const full = Tensor.from(bitsToFloat(w.data as Uint16Array, 'bfloat16'), w.shape);
  try {
    for (const Layer of [ColumnParallelLinear, RowParallelLinear]) {
      const a = new Layer(80, 96, { bias: false });
      const b = new Layer(80, 96, { bias: false });
      await a.loadWeightFrom(f, 'w');
      await b.loadWeight(full);
      t.is(a.weight.dtype, 'float32');
      sameBits(t, await a.weight.toFloat32Array(), await b.weight.toFloat32Array(), Layer.name);
      a.dispose();
      b.dispose();
    }
  } finally {
    full.dispose();
    await f.close();
  }
});
