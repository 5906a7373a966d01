import { mkdtempSync, rmSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { type RawTensor, SafetensorsFile, writeSafetensors } from '../lib/checkpoint/safetensors';
import { TpkitError } from '../lib/errors';

const dir = mkdtempSync(join(tmpdir(), 'tpkit-safetensors-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

let fileNo = 0;
function tmpPath(label: string): string {
  return join(dir, `${label}-${fileNo++}.safetensors`);
}

/** Writes a file by hand, following the spec: u64 LE header length, header bytes, data. */
async function handmade(
  label: string, header: string | object, data: Uint8Array = new Uint8Array(0),
  opts: { pad?: number; headerLen?: bigint } = {},
): Promise<string> {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const json = Buffer.concat([Buffer.from(text, 'utf8'), Buffer.alloc(opts.pad ?? 0, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(opts.headerLen ?? BigInt(json.length));
  const p = tmpPath(label);
  await fsp.writeFile(p, Buffer.concat([prefix, json, data]));
  return p;
}

function arangeF32(n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => i * scale - 7.25);
}

function arangeU16(n: number): Uint16Array {
  return Uint16Array.from({ length: n }, (_, i) => (i * 2654435761) >>> 16);
}

function bytesOf(a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Reference slice by plain loops: every output index mapped back to the full array. */
function refSlice<T extends Float32Array | Uint16Array>(data: T, shape: number[], dim: number, start: number, length: number): number[] {
  const out: number[] = [];
  const outShape = shape.slice();
  outShape[dim] = length;
  const n = outShape.reduce((a, b) => a * b, 1);
  for (let flat = 0; flat < n; flat++) {
    let rem = flat;
    const idx = new Array<number>(shape.length).fill(0);
    for (let d = shape.length - 1; d >= 0; d--) {
      idx[d] = rem % outShape[d]!;
      rem = Math.floor(rem / outShape[d]!);
    }
    idx[dim]! += start;
    let src = 0;
    for (let d = 0; d < shape.length; d++) src = src * shape[d]! + idx[d]!;
    out.push(data[src]!);
  }
  return out;
}

async function withFile<T>(p: string, fn: (f: SafetensorsFile) => Promise<T>): Promise<T> {
  const f = await SafetensorsFile.open(p);
  try {
    return await fn(f);
  } finally {
    await f.close();
  }
}

// A small shared fixture: a 3-D F32 tensor, a 1-D F16 tensor, a scalar.
const shape3 = [4, 5, 6];
const data3 = arangeF32(4 * 5 * 6, 0.5);
let fixture: Promise<string> | undefined;
function fixturePath(): Promise<string> {
  fixture ??= (async () => {
    const p = tmpPath('fixture');
    await writeSafetensors(p, {
      cube: { dtype: 'float32', shape: shape3, data: data3 },
      vec: { dtype: 'float16', shape: [7], data: arangeU16(7) },
      scalar: { dtype: 'float32', shape: [], data: Float32Array.of(3.5) },
    });
    return p;
  })();
  return fixture;
}

// ---------------------------------------------------------------------------------------------------------
// Invalid arguments, with their exact messages.

test('slice arguments: start and length must be non-negative integers', async (t) => {
  await withFile(await fixturePath(), async (f) => {
    await t.throwsAsync(f.readRows('cube', -1, 1), {
      instanceOf: RangeError, message: 'Expected non-negative integer for start but received -1 of type number',
    });
    await t.throwsAsync(f.readRows('cube', 0, 1.5), {
      instanceOf: RangeError, message: 'Expected non-negative integer for length but received 1.5 of type number',
    });
    await t.throwsAsync(f.readColumns('cube', '1' as unknown as number, 1), {
      instanceOf: TypeError, message: 'Expected non-negative integer for start but received 1 of type string',
    });
    await t.throwsAsync(f.readSlice('cube', 2, 0, Number.NaN), {
      instanceOf: RangeError, message: 'Expected non-negative integer for length but received NaN of type number',
    });
  });
});

test('slice arguments: start + length must fit the dim, naming tensor, dim and size', async (t) => {
  await withFile(await fixturePath(), async (f) => {
    await t.throwsAsync(f.readRows('cube', 3, 2), {
      instanceOf: RangeError,
      message: "Expected start + length of at most 4 (size of dim 0 of tensor 'cube' of shape [4, 5, 6]) but received 5 (start 3, length 2)",
    });
    await t.throwsAsync(f.readColumns('cube', 5, 1), {
      instanceOf: RangeError,
      message: "Expected start + length of at most 5 (size of dim 1 of tensor 'cube' of shape [4, 5, 6]) but received 6 (start 5, length 1)",
    });
    await t.throwsAsync(f.readSlice('cube', -1, 0, 7), {
      instanceOf: RangeError,
      message: "Expected start + length of at most 6 (size of dim 2 of tensor 'cube' of shape [4, 5, 6]) but received 7 (start 0, length 7)",
    });
  });
});

test('slice arguments: dim and tensor rank', async (t) => {
  await withFile(await fixturePath(), async (f) => {
    await t.throwsAsync(f.readSlice('cube', 3, 0, 1), {
      instanceOf: RangeError, message: 'Expected integer in [-3, 3) for dim but received 3 of type number',
    });
    await t.throwsAsync(f.readSlice('cube', 0.5, 0, 1), {
      instanceOf: RangeError, message: 'Expected integer in [-3, 3) for dim but received 0.5 of type number',
    });
    await t.throwsAsync(f.readColumns('vec', 0, 1), {
      instanceOf: RangeError,
      message: "Expected tensor of at least 2 dimensions for readColumns but received 'vec' of shape [7]",
    });
    await t.throwsAsync(f.readRows('scalar', 0, 1), {
      instanceOf: RangeError,
      message: "Expected tensor of at least 1 dimension for readRows but received 'scalar' of shape []",
    });
  });
});

test('unknown tensor names: RangeError naming the tensor and the file', async (t) => {
  const p = await fixturePath();
  await withFile(p, async (f) => {
    t.throws(() => f.info('nope'), {
      instanceOf: RangeError,
      message: `Expected name of a tensor in ${p} but received 'nope'; the file has 3 tensors: 'cube', 'scalar', 'vec'`,
    });
    await t.throwsAsync(f.read('nope'), { instanceOf: RangeError, message: /received 'nope'/ });
    t.throws(() => f.info(42 as unknown as string), {
      instanceOf: TypeError, message: 'Expected string for name but received 42 of type number',
    });
  });
});

test('open: bad path arguments', async (t) => {
  await t.throwsAsync(SafetensorsFile.open(3 as unknown as string), {
    instanceOf: TypeError, message: 'Expected non-empty string for path but received 3 of type number',
  });
  await t.throwsAsync(SafetensorsFile.open(''), {
    instanceOf: RangeError, message: 'Expected non-empty string for path but received  of type string',
  });
  await t.throwsAsync(SafetensorsFile.open(join(dir, 'missing.safetensors')), { code: 'ENOENT' });
});

test('writeSafetensors: bad tensors', async (t) => {
  const p = tmpPath('bad-write');
  await t.throwsAsync(writeSafetensors(p, { w: { dtype: 'float64' as 'float32', shape: [1], data: new Float32Array(1) } }), {
    instanceOf: RangeError,
    message: "Expected one of 'float32', 'float16', 'bfloat16' for tensors['w'].dtype but received float64 of type string",
  });
  await t.throwsAsync(writeSafetensors(p, { w: { dtype: 'float16', shape: [2], data: new Float32Array(2) } }), {
    instanceOf: TypeError,
    message: "Expected Uint16Array for tensors['w'].data (dtype float16) but received [object Float32Array] of type object",
  });
  await t.throwsAsync(writeSafetensors(p, { w: { dtype: 'float32', shape: [2, 3], data: new Float32Array(5) } }), {
    instanceOf: RangeError, message: "Expected 6 elements (shape [2, 3]) for tensors['w'].data but received 5",
  });
  await t.throwsAsync(writeSafetensors(p, { w: { dtype: 'float32', shape: [-1], data: new Float32Array(0) } }), {
    instanceOf: RangeError,
    message: "Expected array of non-negative integers for tensors['w'].shape but received [-1] of type array",
  });
  await t.throwsAsync(writeSafetensors(p, { __metadata__: { dtype: 'float32', shape: [], data: new Float32Array(1) } }), {
    instanceOf: RangeError, message: 'Expected tensor name other than the reserved __metadata__ for tensors',
  });
  await t.throwsAsync(writeSafetensors(p, {}, { n: 3 as unknown as string }), {
    instanceOf: TypeError, message: "Expected string for metadata['n'] but received 3 of type number",
  });
  await t.throwsAsync(fsp.access(p));
  await t.throwsAsync(fsp.access(`${p}.tmp`));
});

test('close is idempotent; use after close throws DISPOSED', async (t) => {
  const p = await fixturePath();
  const f = await SafetensorsFile.open(p);
  await f.close();
  await f.close();
  t.throws(() => f.list(), { instanceOf: TpkitError, code: 'DISPOSED', message: `SafetensorsFile ${p} is closed` });
  t.throws(() => f.info('cube'), { instanceOf: TpkitError, code: 'DISPOSED' });
  await t.throwsAsync(f.read('cube'), { instanceOf: TpkitError, code: 'DISPOSED' });
  await t.throwsAsync(f.readRows('cube', 0, 1), { instanceOf: TpkitError, code: 'DISPOSED' });
});

test('reading data of a dtype other than F32/F16/BF16 throws UNSUPPORTED; listing works', async (t) => {
  const data = new Uint8Array(8 * 3 + 2);
  const p = await handmade('i64', {
    ids: { dtype: 'I64', shape: [3], data_offsets: [0, 24] },
    mask: { dtype: 'U8', shape: [2], data_offsets: [24, 26] },
  }, data);
  await withFile(p, async (f) => {
    t.deepEqual(f.list().map((i) => [i.name, i.dtype]), [['ids', 'I64'], ['mask', 'U8']]);
    await t.throwsAsync(f.read('ids'), {
      instanceOf: TpkitError, code: 'UNSUPPORTED',
      message: `Cannot read tensor 'ids' of dtype I64 from ${p}: supported dtypes are F32, F16, BF16`,
    });
    await t.throwsAsync(f.readRows('mask', 0, 1), { instanceOf: TpkitError, code: 'UNSUPPORTED', message: /dtype U8/ });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Malformed files: each a CHECKPOINT_INVALID naming the file and the fault.

async function rejectsInvalid(t: import('ava').ExecutionContext, p: string, parts: string[]): Promise<void> {
  const err = await t.throwsAsync(SafetensorsFile.open(p), { instanceOf: TpkitError });
  t.is(err?.code, 'CHECKPOINT_INVALID');
  t.true(err!.message.startsWith(`Invalid safetensors file ${p}: `), err!.message);
  for (const part of parts) t.true(err!.message.includes(part), `${JSON.stringify(part)} not in: ${err!.message}`);
}

test('malformed: file shorter than 8 bytes', async (t) => {
  const p = tmpPath('short');
  await fsp.writeFile(p, Buffer.from([1, 2, 3, 4, 5]));
  await rejectsInvalid(t, p, ['file is 5 bytes, shorter than the 8-byte header length prefix']);
});

test('malformed: truncated file (header length beyond the file)', async (t) => {
  const header = JSON.stringify({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } });
  const full = await handmade('full', header, new Uint8Array(8));
  const bytes = await fsp.readFile(full);
  const p = tmpPath('truncated');
  await fsp.writeFile(p, bytes.subarray(0, 20));
  await rejectsInvalid(t, p, [`header length ${header.length} exceeds the 12 bytes after the 8-byte prefix`]);
});

test('malformed: header length over 100 MB', async (t) => {
  const p = await handmade('huge-header', '{}', new Uint8Array(0), { headerLen: 100_000_001n });
  await fsp.truncate(p, 8 + 100_000_100); // sparse: no 100 MB of real writes
  await rejectsInvalid(t, p, ['header length 100000001 exceeds the limit of 100000000 bytes (100 MB)']);
});

test('malformed: header not JSON, not an object, not UTF-8', async (t) => {
  await rejectsInvalid(t, await handmade('bad-json', '{"w": {"dtype": '), ['header is not valid JSON']);
  await rejectsInvalid(t, await handmade('array', '[1, 2]'), ["header does not start with '{'"]);
  const p = tmpPath('bad-utf8');
  const json = Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  await fsp.writeFile(p, Buffer.concat([prefix, json]));
  await rejectsInvalid(t, p, ['header is not valid UTF-8']);
});

test('malformed: entries with missing fields or wrong types', async (t) => {
  await rejectsInvalid(t, await handmade('no-dtype', { w: { shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)),
    ["header entry for tensor 'w' is missing 'dtype'"]);
  await rejectsInvalid(t, await handmade('no-offsets', { w: { dtype: 'F32', shape: [1] } }, new Uint8Array(4)),
    ["header entry for tensor 'w' is missing 'data_offsets'"]);
  await rejectsInvalid(t, await handmade('neg-shape', { w: { dtype: 'F32', shape: [-1, 2], data_offsets: [0, 4] } },
    new Uint8Array(4)), ["shape of tensor 'w' is [-1, 2] of type array, expected an array of non-negative integers"]);
  await rejectsInvalid(t, await handmade('frac-shape', { w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } },
    new Uint8Array(4)), ["shape of tensor 'w'"]);
  await rejectsInvalid(t, await handmade('str-dtype', { w: { dtype: 32, shape: [1], data_offsets: [0, 4] } },
    new Uint8Array(4)), ["dtype of tensor 'w' is 32 of type number, expected a string"]);
  await rejectsInvalid(t, await handmade('unknown-dtype', { w: { dtype: 'F17', shape: [1], data_offsets: [0, 4] } },
    new Uint8Array(4)), ["dtype of tensor 'w' is 'F17', not a safetensors dtype"]);
  await rejectsInvalid(t, await handmade('entry-array', { w: [1] }), ["header entry for tensor 'w' is [1] of type array"]);
  await rejectsInvalid(t, await handmade('meta', { __metadata__: { step: 3 } }), ["__metadata__ value for 'step' is 3 of type number"]);
});

test('malformed: wrong offsets and sizes', async (t) => {
  await rejectsInvalid(t, await handmade('beyond', { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } },
    new Uint8Array(12)), ["data_offsets [0, 16] of tensor 'w' end beyond the data buffer of 12 bytes"]);
  await rejectsInvalid(t, await handmade('reversed', { w: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } },
    new Uint8Array(8)), ["data_offsets [8, 4] of tensor 'w' end before they begin"]);
  await rejectsInvalid(t, await handmade('mismatch', { w: { dtype: 'BF16', shape: [2, 3], data_offsets: [0, 8] } },
    new Uint8Array(8)), ["tensor 'w' of dtype BF16 and shape [2, 3] needs 12 bytes but data_offsets [0, 8] hold 8"]);
  await rejectsInvalid(t, await handmade('offsets-type', { w: { dtype: 'F32', shape: [1], data_offsets: [0] } },
    new Uint8Array(4)), ["data_offsets of tensor 'w' is [0] of type array, expected [begin, end]"]);
});

test('malformed: holes and overlaps in the data buffer', async (t) => {
  await rejectsInvalid(t, await handmade('hole', {
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'F32', shape: [1], data_offsets: [12, 16] },
  }, new Uint8Array(16)), ["hole of 4 bytes in the data buffer: bytes [8, 12) between tensor 'a' (ends at 8) and tensor 'b'"]);
  await rejectsInvalid(t, await handmade('hole-start', { b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } },
    new Uint8Array(8)), ['hole of 4 bytes in the data buffer: bytes [0, 4) between the start of the data buffer and tensor \'b\'']);
  await rejectsInvalid(t, await handmade('hole-end', { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } },
    new Uint8Array(10)), ['hole of 6 bytes at the end of the data buffer: bytes [4, 10) belong to no tensor']);
  await rejectsInvalid(t, await handmade('overlap', {
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
  }, new Uint8Array(8)), ["tensor 'b' with data_offsets [4, 8] overlaps tensor 'a' (ends at 8)"]);
});

test('file truncated after opening: read throws CHECKPOINT_INVALID', async (t) => {
  const p = tmpPath('shrinks');
  await writeSafetensors(p, { w: { dtype: 'float32', shape: [16], data: arangeF32(16) } });
  await withFile(p, async (f) => {
    const size = (await fsp.stat(p)).size;
    await fsp.truncate(p, size - 4);
    await t.throwsAsync(f.read('w'), {
      instanceOf: TpkitError, code: 'CHECKPOINT_INVALID', message: /while reading tensor 'w' \(truncated after opening\?\)/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Round trips and hand-made files.

test('round trip F32 / F16 / BF16 preserves bits, metadata, sorted list and info', async (t) => {
  const f32 = new Float32Array(6);
  const f32bits = new Uint32Array(f32.buffer);
  f32bits.set([0x3f800000, 0x80000000, 0x7fa00001, 0xffc12345, 0x00000001, 0x7f800000]); // 1, -0, sNaN, NaN, denormal, inf
  const f16 = Uint16Array.of(0x3c00, 0x8000, 0x7e01, 0xfc00, 0x0001, 0x7bff);
  const bf16 = Uint16Array.of(0x3f80, 0x8000, 0x7fc1, 0xff80, 0x0001, 0x7f7f, 0x1234, 0xabcd);
  const p = tmpPath('roundtrip');
  const tensors: Record<string, RawTensor> = {
    'z.f32': { dtype: 'float32', shape: [2, 3], data: f32 },
    'a.f16': { dtype: 'float16', shape: [6], data: f16 },
    'm.bf16': { dtype: 'bfloat16', shape: [2, 2, 2], data: bf16 },
  };
  await writeSafetensors(p, tensors, { format: 'pt', note: 'ünïcödé' });
  await t.throwsAsync(fsp.access(`${p}.tmp`));

  const raw = await fsp.readFile(p);
  const headerLen = Number(raw.readBigUInt64LE(0));
  t.is(headerLen % 8, 0);
  const header = JSON.parse(raw.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, { data_offsets: number[] }>;
  t.deepEqual(Object.keys(header), ['__metadata__', 'a.f16', 'm.bf16', 'z.f32']);
  t.deepEqual(header['a.f16']!.data_offsets, [0, 12]);
  t.deepEqual(header['m.bf16']!.data_offsets, [12, 28]);
  t.deepEqual(header['z.f32']!.data_offsets, [28, 52]);
  t.is(raw.length, 8 + headerLen + 52);

  await withFile(p, async (f) => {
    t.deepEqual(f.metadata, { format: 'pt', note: 'ünïcödé' });
    t.deepEqual(f.list(), [
      { name: 'a.f16', dtype: 'F16', shape: [6], dataOffsets: [0, 12] },
      { name: 'm.bf16', dtype: 'BF16', shape: [2, 2, 2], dataOffsets: [12, 28] },
      { name: 'z.f32', dtype: 'F32', shape: [2, 3], dataOffsets: [28, 52] },
    ]);
    t.deepEqual(f.info('m.bf16'), { name: 'm.bf16', dtype: 'BF16', shape: [2, 2, 2], dataOffsets: [12, 28] });
    f.info('m.bf16').shape[0] = 99; // copies: the file's entry is unchanged
    t.deepEqual(f.info('m.bf16').shape, [2, 2, 2]);

    const a = await f.read('z.f32');
    t.is(a.dtype, 'float32');
    t.deepEqual(a.shape, [2, 3]);
    t.true(a.data instanceof Float32Array);
    t.is(a.data.byteOffset, 0);
    t.deepEqual(Array.from(new Uint32Array(a.data.buffer)), Array.from(f32bits));

    const h = await f.read('a.f16');
    t.is(h.dtype, 'float16');
    t.true(h.data instanceof Uint16Array);
    t.deepEqual(Array.from(h.data), Array.from(f16));

    const b = await f.read('m.bf16');
    t.is(b.dtype, 'bfloat16');
    t.deepEqual(b.shape, [2, 2, 2]);
    t.deepEqual(Array.from(b.data), Array.from(bf16));
  });
});

test('list order is by name for integer-like names; no metadata gives {}', async (t) => {
  const p = tmpPath('names');
  await writeSafetensors(p, {
    '2': { dtype: 'float32', shape: [1], data: Float32Array.of(2) },
    '10': { dtype: 'float32', shape: [1], data: Float32Array.of(10) },
    b: { dtype: 'float32', shape: [1], data: Float32Array.of(-1) },
  });
  await withFile(p, async (f) => {
    t.deepEqual(f.metadata, {});
    t.deepEqual(f.list().map((i) => [i.name, i.dataOffsets]), [['10', [0, 4]], ['2', [4, 8]], ['b', [8, 12]]]);
    t.deepEqual(Array.from((await f.read('10')).data), [10]);
  });
});

test('writeSafetensors replaces an existing file and accepts subarray views', async (t) => {
  const p = tmpPath('replace');
  await writeSafetensors(p, { w: { dtype: 'float32', shape: [1], data: Float32Array.of(1) } });
  const big = arangeF32(10);
  await writeSafetensors(p, { w: { dtype: 'float32', shape: [2, 2], data: big.subarray(3, 7) } });
  await withFile(p, async (f) => {
    t.deepEqual(Array.from((await f.read('w')).data), Array.from(big.subarray(3, 7)));
  });
});

test('hand-made: header padded with spaces, and header length not a multiple of 8', async (t) => {
  const values = Float32Array.of(1.5, -2, 3.25, 8);
  const half = Uint16Array.of(0x3c00, 0xc000);
  const data = new Uint8Array([...bytesOf(half), ...bytesOf(values)]);
  const header = {
    __metadata__: { k: 'v' },
    h: { dtype: 'F16', shape: [2], data_offsets: [0, 4] },
    w: { dtype: 'F32', shape: [2, 2], data_offsets: [4, 20] },
  };
  const text = JSON.stringify(header);
  const padded = await handmade('padded', text, data, { pad: 8 - (text.length % 8) + 8 });
  t.is(text.length % 8, 7);
  const unpadded = await handmade('unpadded', text, data); // header length 135: data starts at an odd offset
  t.is((await fsp.readFile(padded)).readBigUInt64LE(0), 144n);
  for (const p of [padded, unpadded]) {
    await withFile(p, async (f) => {
      t.deepEqual(f.metadata, { k: 'v' });
      t.deepEqual(Array.from((await f.read('w')).data), Array.from(values));
      t.deepEqual(Array.from((await f.read('h')).data), Array.from(half));
      // Data starts right after the header: odd offsets still give aligned typed arrays.
      const rows = await f.readRows('w', 1, 1);
      t.is(rows.data.byteOffset, 0);
      t.deepEqual(Array.from(rows.data), [3.25, 8]);
    });
  }
});

test('empty tensors round trip, and hand-made [x, x] offsets between tensors', async (t) => {
  const p = tmpPath('empty');
  await writeSafetensors(p, {
    e: { dtype: 'bfloat16', shape: [0, 4], data: new Uint16Array(0) },
    f: { dtype: 'float32', shape: [2], data: Float32Array.of(1, 2) },
    g: { dtype: 'float16', shape: [3, 0], data: new Uint16Array(0) },
  });
  await withFile(p, async (f) => {
    t.deepEqual(f.list().map((i) => i.dataOffsets), [[0, 0], [0, 8], [8, 8]]);
    const e = await f.read('e');
    t.deepEqual(e.shape, [0, 4]);
    t.is(e.data.length, 0);
    t.true(e.data instanceof Uint16Array);
    const g = await f.readRows('g', 1, 2);
    t.deepEqual(g.shape, [2, 0]);
    t.is(g.data.length, 0);
    const none = await f.readRows('f', 1, 0);
    t.deepEqual(none.shape, [0]);
    t.deepEqual(Array.from((await f.read('f')).data), [1, 2]);
  });

  const mid = await handmade('empty-mid', {
    a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    z: { dtype: 'F32', shape: [0], data_offsets: [4, 4] },
    b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
  }, bytesOf(Float32Array.of(5, 6)));
  await withFile(mid, async (f) => {
    t.deepEqual((await f.read('z')).shape, [0]);
    t.deepEqual(Array.from((await f.read('b')).data), [6]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Slices against a reference computed by plain loops.

test('readRows / readColumns / readSlice on dims 0, 1, 2 of a 3-D tensor match the reference', async (t) => {
  await withFile(await fixturePath(), async (f) => {
    for (const dim of [0, 1, 2]) {
      const size = shape3[dim]!;
      for (let start = 0; start <= size; start++) {
        for (let length = 0; start + length <= size; length++) {
          const expected = refSlice(data3, shape3, dim, start, length);
          const outShape = shape3.slice();
          outShape[dim] = length;
          const got = await f.readSlice('cube', dim, start, length);
          t.deepEqual(got.shape, outShape);
          t.deepEqual(Array.from(got.data), expected, `dim ${dim} start ${start} length ${length}`);
          const neg = await f.readSlice('cube', dim - 3, start, length);
          t.deepEqual(Array.from(neg.data), expected);
          if (dim === 0) t.deepEqual(Array.from((await f.readRows('cube', start, length)).data), expected);
          if (dim === 1) t.deepEqual(Array.from((await f.readColumns('cube', start, length)).data), expected);
        }
      }
    }
  });
});

test('BF16 readColumns of a 2-D weight matches the reference', async (t) => {
  const p = tmpPath('bf16-2d');
  const shape = [9, 10];
  const data = arangeU16(90);
  await writeSafetensors(p, { w: { dtype: 'bfloat16', shape, data } });
  await withFile(p, async (f) => {
    const cols = await f.readColumns('w', 3, 4);
    t.is(cols.dtype, 'bfloat16');
    t.deepEqual(cols.shape, [9, 4]);
    t.deepEqual(Array.from(cols.data), refSlice(data, shape, 1, 3, 4));
  });
});

// ---------------------------------------------------------------------------------------------------------
// Counting positioned reads.

test('read and readRows do exactly one positioned read of just the rows', async (t) => {
  await withFile(await fixturePath(), async (f) => {
    let before = f.readCount;
    let bytesBefore = f.bytesRead;
    await f.readRows('cube', 1, 2);
    t.is(f.readCount - before, 1);
    t.is(f.bytesRead - bytesBefore, 2 * 5 * 6 * 4);
    before = f.readCount;
    await f.read('cube');
    t.is(f.readCount - before, 1);
    before = f.readCount;
    await f.readSlice('cube', 1, 0, 5); // full dim 1: contiguous
    t.is(f.readCount - before, 1);
    before = f.readCount;
    bytesBefore = f.bytesRead;
    await f.readRows('cube', 2, 0);
    t.is(f.readCount - before, 0);
    t.is(f.bytesRead - bytesBefore, 0);
  });
});

test('readColumns: one read per row when rows are far apart, never the whole tensor', async (t) => {
  const p = tmpPath('wide');
  const shape = [64, 2048]; // rows of 8 KiB
  const data = arangeF32(64 * 2048);
  await writeSafetensors(p, { w: { dtype: 'float32', shape, data } });
  await withFile(p, async (f) => {
    const before = f.readCount;
    const bytesBefore = f.bytesRead;
    const cols = await f.readColumns('w', 1000, 300); // 1200 bytes kept per 8192-byte row
    t.is(f.readCount - before, 64);
    t.is(f.bytesRead - bytesBefore, 64 * 300 * 4);
    t.deepEqual(cols.shape, [64, 300]);
    t.deepEqual(Array.from(cols.data), refSlice(data, shape, 1, 1000, 300));
  });
});

test('readColumns: rows a page apart or less are merged into bounded reads', async (t) => {
  const p = tmpPath('narrow');
  const shape = [4096, 512]; // 8 MiB; rows of 2 KiB
  const data = arangeF32(4096 * 512, 0.25);
  await writeSafetensors(p, { w: { dtype: 'float32', shape, data } });
  await withFile(p, async (f) => {
    const before = f.readCount;
    const bytesBefore = f.bytesRead;
    const cols = await f.readColumns('w', 100, 100);
    const readBytes = f.bytesRead - bytesBefore;
    t.is(f.readCount - before, 2); // 4 MiB scratch spans: 2048 rows each
    t.true(readBytes < 8 * 1024 * 1024, `read ${readBytes} bytes`);
    t.deepEqual(cols.shape, [4096, 100]);
    t.deepEqual(Array.from(cols.data), refSlice(data, shape, 1, 100, 100));

    const small = await withFile(await fixturePath(), async (g) => {
      const b = g.readCount;
      await g.readColumns('cube', 1, 2);
      return g.readCount - b;
    });
    t.is(small, 1);
  });
});
