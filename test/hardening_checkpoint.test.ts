/**
 * Issue 14 item 8 (checkpoints): hostile safetensors files and bad arguments to the loaders, each a typed error
 * naming what is wrong, never a hang or a V8 error.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { SafetensorsFile, writeSafetensors } from '../lib/checkpoint/safetensors';
import { TpkitError } from '../lib/errors';
import { ColumnParallelLinear, RowParallelLinear } from '../lib/layers/linear';
import { VocabParallelEmbedding } from '../lib/layers/embedding';

const dir = mkdtempSync(join(tmpdir(), 'tpkit-hardening-ckpt-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** Writes a safetensors file from a header text and data bytes. */
function write(name: string, header: string, data: Uint8Array = new Uint8Array(0)): string {
  const h = Buffer.from(header);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(h.length));
  const p = join(dir, name);
  writeFileSync(p, Buffer.concat([prefix, h, data]));
  return p;
}

async function invalid(t: import('ava').ExecutionContext, p: Promise<unknown>, message: string | RegExp): Promise<void> {
  const e = await t.throwsAsync(p);
  t.true(e instanceof TpkitError, String(e));
  t.is((e as TpkitError).code, 'CHECKPOINT_INVALID');
  if (typeof message === 'string') t.is(e!.message, message);
  else t.regex(e!.message, message);
}

test('SafetensorsFile.open on a FIFO rejects at once (regular files only) instead of blocking', async (t) => {
  const fifo = join(dir, 'fifo.safetensors');
  execFileSync('mkfifo', [fifo]);
  const started = Date.now();
  const timer = new Promise<'hang'>((r) => setTimeout(() => r('hang'), 3000).unref());
  const result = await Promise.race([SafetensorsFile.open(fifo).then(() => 'opened', (e: unknown) => e), timer]);
  t.not(result, 'hang', 'open of a FIFO must not block');
  t.true(result instanceof TpkitError, String(result));
  t.is((result as TpkitError).code, 'CHECKPOINT_INVALID');
  t.is((result as TpkitError).message, `Invalid safetensors file ${fifo}: not a regular file (a FIFO)`);
  t.true(Date.now() - started < 3000);
});

test('SafetensorsFile.open on a directory rejects with CHECKPOINT_INVALID', async (t) => {
  await invalid(t, SafetensorsFile.open(dir), `Invalid safetensors file ${dir}: not a regular file (a directory)`);
});

test('a deeply nested JSON header is CHECKPOINT_INVALID, not a stack overflow', async (t) => {
  const p = write('nested.safetensors', `{"a":${'['.repeat(200_000)}${']'.repeat(200_000)}}`);
  await invalid(t, SafetensorsFile.open(p), `Invalid safetensors file ${p}: header nests deeper than 64 levels`);
});

for (const dtype of ['toString', '__proto__', 'constructor', 'hasOwnProperty']) {
  test(`dtype '${dtype}' is named as not a safetensors dtype`, async (t) => {
    const p = write(`dtype-${dtype}.safetensors`, `{"w":{"dtype":"${dtype}","shape":[2],"data_offsets":[0,8]}}`, new Uint8Array(8));
    await invalid(t, SafetensorsFile.open(p), new RegExp(`^Invalid safetensors file .*: dtype of tensor 'w' is '${dtype}', not a safetensors dtype \\(BOOL, `));
  });
}

test('a __metadata__ key __proto__ is kept as an ordinary key', async (t) => {
  const p = write('meta-proto.safetensors', '{"__metadata__":{"__proto__":"x","a":"b"}}');
  const f = await SafetensorsFile.open(p);
  t.deepEqual(Object.keys(f.metadata).sort(), ['__proto__', 'a']);
  t.is(Object.getOwnPropertyDescriptor(f.metadata, '__proto__')?.value, 'x');
  t.is(Object.getPrototypeOf(f.metadata), Object.prototype);
  await f.close();
});

test('loadWeightFrom / loadBiasFrom with a file that is not a SafetensorsFile throw a TypeError naming it', async (t) => {
  const p = join(dir, 'ok.safetensors');
  await writeSafetensors(p, { w: { dtype: 'float32', shape: [2, 2], data: new Float32Array(4) } });
  const col = new ColumnParallelLinear(2, 2);
  const row = new RowParallelLinear(2, 2);
  const emb = new VocabParallelEmbedding(2, 2);
  const msg = 'Expected SafetensorsFile for file but received [object Object] of type object';
  for (const run of [() => col.loadWeightFrom({} as SafetensorsFile, 'w'), () => col.loadBiasFrom({} as SafetensorsFile, 'b'),
    () => row.loadWeightFrom({} as SafetensorsFile, 'w'), () => emb.loadWeightFrom({} as SafetensorsFile, 'w')]) {
    const e = await t.throwsAsync(run);
    t.true(e instanceof TypeError);
    t.is(e!.message, msg);
  }
  const e = await t.throwsAsync(() => col.loadWeightFrom(null as unknown as SafetensorsFile, 'w'));
  t.is(e!.message, 'Expected SafetensorsFile for file but received null');
  col.dispose();
  row.dispose();
  emb.dispose();
});
