/**
 * Issue 14 item 12: one validation pass on a layer's forward path — the input is checked once in TypeScript (the
 * layer's own check, naming the layer), then computed without the generic ops re-checking it.
 */
import test from 'ava';

import { ColumnParallelLinear, ReplicatedLinear, RowParallelLinear } from '../lib/layers/linear';
import { Tensor } from '../lib/tensor';

/** Counts the reads of `x._storage` (every checkTensor reads it once, the compute once) during `run`. */
async function storageReads(x: Tensor, run: () => Promise<unknown>): Promise<number> {
  const proto = Tensor.prototype as unknown as object;
  const desc = Object.getOwnPropertyDescriptor(proto, '_storage')!;
  let n = 0;
  Object.defineProperty(proto, '_storage', {
    ...desc,
    get(this: Tensor) {
      if (this === x) n++;
      return desc.get!.call(this);
    },
  });
  try {
    await run();
  } finally {
    Object.defineProperty(proto, '_storage', desc);
  }
  return n;
}

for (const [name, make] of [
  ['RowParallelLinear', () => new RowParallelLinear(4, 3)],
  ['ColumnParallelLinear', () => new ColumnParallelLinear(4, 3)],
  ['ReplicatedLinear', () => new ReplicatedLinear(4, 3)],
] as const) {
  test(`${name}.forward validates its input once`, async (t) => {
    const layer = make();
    await layer.loadWeight(Tensor.arange([3, 4]));
    await layer.loadBias(Tensor.arange([3]));
    const x = Tensor.arange([2, 4]);
    let y: Tensor | undefined;
    const reads = await storageReads(x, async () => {
      y = (await layer.forward(x)) as Tensor;
    });
    t.is(reads, 2, 'one check and one compute');
    t.deepEqual(Array.from(await y!.toFloat32Array()), [14, 39, 64, 38, 127, 216]);
    const bad = await t.throwsAsync(() => layer.forward(Tensor.zeros([2, 5])));
    t.is(bad!.message, `${name}: expected input of shape [..., 4] but received [2, 5]`);
    const half = await t.throwsAsync(() => layer.forward(Tensor.zeros([2, 4], { dtype: 'bfloat16' })));
    t.true(half instanceof TypeError);
    t.is(half!.message, `${name}: input is bfloat16 but the layer's parameters are float32 (cast with t.to('float32'))`);
    layer.dispose();
  });
}
