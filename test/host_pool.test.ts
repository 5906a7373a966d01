/**
 * The host buffer pool (lib/backend/host_pool.ts): buffers of disposed cpu tensors are reused by the next
 * tensor of the same byte size, zeros() stays zero, a buffer still read by native work in flight is not handed
 * out before that work ends, the cap bounds what is kept, and a bad TPKIT_HOST_POOL_MB is a clear error.
 *
 * This file runs in its own process (ava, workerThreads: false) with a 4 MiB cap.
 */
process.env.TPKIT_HOST_POOL_MB = '4';

import { spawnSync } from 'node:child_process';
import path from 'node:path';

import test from 'ava';

import { clearHostPool, hostPoolStats } from '../lib/backend/host_pool';
import { add, addBias, matmul } from '../lib/ops';
import { Tensor } from '../lib/tensor';
import { randInt } from './helpers/reference';

const N = 256; // 256 × 256 float32 = 256 KiB: poolable (≥ 64 KiB)

/** C = A·B for square row-major matrices, in double precision. */
function naiveMatmul(a: ArrayLike<number>, b: ArrayLike<number>, n: number): Float64Array {
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k]!;
      for (let j = 0; j < n; j++) c[i * n + j] += aik * b[k * n + j]!;
    }
  }
  return c;
}

function countMismatches(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let bad = 0;
  for (let i = 0; i < ref.length; i++) if (got[i] !== ref[i]) bad++;
  return bad;
}

test.beforeEach(() => clearHostPool());

test.serial('a disposed output buffer is reused by the next output of its size, and results stay right', async (t) => {
  const av = randInt(N * N, 1);
  const bv = randInt(N * N, 2);
  const ref = naiveMatmul(av, bv, N); // integer inputs: float32 results are exact
  const a = Tensor.from(av, [N, N]);
  const b = Tensor.from(bv, [N, N]);
  const first = await matmul(a, b);
  t.is(countMismatches(await first.toFloat32Array(), ref), 0);
  const before = hostPoolStats();
  first.dispose();
  t.is(hostPoolStats().pooledBuffers, before.pooledBuffers + 1, 'the disposed output was kept');
  for (let i = 0; i < 5; i++) {
    const hits = hostPoolStats().hits;
    const c = await matmul(a, b);
    t.is(hostPoolStats().hits, hits + 1, `iteration ${i}: the output came from the pool`);
    t.is(countMismatches(await c.toFloat32Array(), ref), 0, `iteration ${i}`);
    c.dispose();
  }
  a.dispose();
  b.dispose();
});

test.serial('zeros() from a reused buffer is all zeros', async (t) => {
  const ones = Tensor.from(new Float32Array(N * N).fill(1), [N * N]);
  const dirty = await add(ones, ones); // pooled-size output full of 2s
  dirty.dispose();
  const hits = hostPoolStats().hits;
  const z = Tensor.zeros([N * N]);
  t.is(hostPoolStats().hits, hits + 1, 'zeros took the dirty buffer');
  const v = await z.toFloat32Array();
  t.is(v.findIndex((x) => x !== 0), -1);
  z.dispose();
  ones.dispose();
});

test.serial('an input disposed while its matmul runs is not reused before the matmul ends', async (t) => {
  const av = randInt(N * N, 3);
  const bv = randInt(N * N, 4);
  const ref = naiveMatmul(av, bv, N);
  for (let round = 0; round < 20; round++) {
    const a = Tensor.from(av, [N, N]);
    const b = Tensor.from(bv, [N, N]);
    const pending = matmul(a, b);
    // Free both inputs at once, then allocate and overwrite same-sized tensors while the GEMM may still read them.
    a.dispose();
    b.dispose();
    t.true(hostPoolStats().inFlight >= 1);
    const scratch = [Tensor.zeros([N, N]), Tensor.zeros([N, N])];
    const c = await pending;
    t.is(countMismatches(await c.toFloat32Array(), ref), 0, `round ${round}: the GEMM saw overwritten inputs`);
    for (const s of scratch) s.dispose();
    c.dispose();
  }
  // Once nothing is in flight the quarantined inputs are reusable.
  const s = hostPoolStats();
  t.is(s.inFlight, 0);
  const z = Tensor.zeros([N, N]);
  t.is(hostPoolStats().hits, s.hits + 1);
  z.dispose();
});

test.serial('addBias that rejects frees the copy it made (it goes back to the pool)', async (t) => {
  const y = Tensor.zeros([256, 256], { dtype: 'bfloat16' }); // 128 KiB of bits
  const bias = Tensor.zeros([256], { dtype: 'bfloat16' });
  const before = hostPoolStats().pooledBuffers;
  await t.throwsAsync(() => addBias(y, bias), { instanceOf: TypeError });
  t.is(hostPoolStats().pooledBuffers, before + 1);
  y.dispose();
  bias.dispose();
});

test.serial('the cap bounds the pooled bytes; the oldest buffers go first', async (t) => {
  const tensors = Array.from({ length: 8 }, () => Tensor.zeros([256 * 1024])); // 1 MiB each
  for (const x of tensors) x.dispose();
  const s = hostPoolStats();
  t.is(s.capBytes, 4 * 2 ** 20);
  t.is(s.pooledBytes, 4 * 2 ** 20);
  t.is(s.pooledBuffers, 4);
  // Buffers under 64 KiB and over the cap are not kept.
  Tensor.zeros([1024]).dispose(); // 4 KiB
  Tensor.zeros([2 * 1024 * 1024]).dispose(); // 8 MiB
  t.is(hostPoolStats().pooledBuffers, 4);
});

test('a bad TPKIT_HOST_POOL_MB makes loading tpkit throw a RangeError naming the variable', (t) => {
  const lib = path.join(__dirname, '..', 'lib', 'index.js');
  const script = `try { require(${JSON.stringify(lib)}); console.log('no error'); } catch (e) { console.log(e.name + ': ' + e.message); }`;
  const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, TPKIT_HOST_POOL_MB: 'lots' }, encoding: 'utf8' });
  t.is(r.stdout.trim(), "RangeError: TPKIT_HOST_POOL_MB must be a non-negative integer (MiB), got 'lots'");
});
