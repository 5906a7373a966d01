/**
 * Issue 14 items 6 and 7, single-process parts: bad inputs that were accepted or failed with an untyped V8 error
 * now throw a TypeError / RangeError naming what is wrong.
 */
import test from 'ava';

import { VocabParallelEmbedding } from '../lib/layers/embedding';
import { ColumnParallelLinear, RowParallelLinear } from '../lib/layers/linear';
import { cat } from '../lib/ops';
import { Tensor } from '../lib/tensor';

const BIG = [65_536, 65_537]; // 2^32 + 2^16 elements

test('Tensor.from with more than 2^32 elements names the limit', (t) => {
  const e = t.throws(() => Tensor.from({ length: 65_536 * 65_537 } as ArrayLike<number>, BIG));
  t.true(e instanceof RangeError);
  t.is(e!.message, 'Expected at most 4294967296 elements for shape but received [65536, 65537] of type array');
});

test('Tensor.arange with more than 2^32 elements names the limit', (t) => {
  const e = t.throws(() => Tensor.arange(BIG));
  t.true(e instanceof RangeError);
  t.is(e!.message, 'Expected at most 4294967296 elements for shape but received [65536, 65537] of type array');
});

test('Tensor.arange with a non-number scale or offset throws instead of producing NaN', (t) => {
  const a = t.throws(() => Tensor.arange([3], { scale: '2' as never }));
  t.true(a instanceof TypeError);
  t.is(a!.message, 'Expected number for scale but received 2 of type string');
  const b = t.throws(() => Tensor.arange([3], { offset: {} as never }));
  t.true(b instanceof TypeError);
  t.is(b!.message, 'Expected number for offset but received [object Object] of type object');
  const c = t.throws(() => Tensor.arange([3], { scale: Number.NaN }));
  t.true(c instanceof RangeError);
  t.is(c!.message, 'Expected finite number for scale but received NaN of type number');
  const d = t.throws(() => Tensor.arange([3], 'x' as never));
  t.true(d instanceof TypeError);
  t.is(d!.message, 'Expected object for options but received x of type string');
});

test('cat of 0-d tensors throws a RangeError instead of a [NaN] shape', (t) => {
  const e = t.throws(() => cat([Tensor.zeros([]), Tensor.zeros([])], 0));
  t.true(e instanceof RangeError);
  t.is(e!.message, 'cat needs tensors of at least one dimension but parts[0] has shape []');
});

test('VocabParallelEmbedding.forward rejects negative and fractional shapes', async (t) => {
  const emb = new VocabParallelEmbedding(10, 2);
  await emb.loadWeight(Tensor.zeros([10, 2]));
  for (const shape of [[-2, -2], [1.5, 2], [4, 'x']]) {
    const e = await t.throwsAsync(() => emb.forward([1, 2, 3, 4], shape as number[]));
    t.true(e instanceof RangeError, String(e));
    t.regex(e!.message, /^Expected array of non-negative integers for shape but received \[/);
  }
  const e = await t.throwsAsync(() => emb.forward([1, 2, 3, 4], 'x' as never));
  t.true(e instanceof TypeError);
  emb.dispose();
});

test('a layer given a group that is not a ProcessGroup throws a TypeError naming it', (t) => {
  const fake = { allReduce: async () => undefined };
  for (const make of [() => new ColumnParallelLinear(4, 4, { group: fake as never }), () => new RowParallelLinear(4, 4, { group: fake as never }),
    () => new VocabParallelEmbedding(4, 4, { group: fake as never })]) {
    const e = t.throws(make);
    t.true(e instanceof TypeError);
    t.is(e!.message, 'Expected ProcessGroup for group but received [object Object] of type object');
  }
});
