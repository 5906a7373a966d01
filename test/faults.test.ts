/**
 * Fault handling of the distributed runtime on the cpu backend (gloo): bad arguments first (a table over every
 * public function of the distributed API and of Tensor / ops, each with its exact error), then multi-rank
 * failures, each one launch of the dist_faults fixture with a hard time bound: a rank killed with SIGKILL, a rank
 * that skips a collective, a failure on one rank propagated to the others, a rank that never joins, mismatched
 * collectives, TPKIT_CHECK=off, memory over 1,000 collectives, and the destroy() / re-init lifecycle.
 *
 * The multi-rank tests run serially: several of them measure timeouts (±20 %), and the machine has 2 cores.
 */
import test, { type ExecutionContext } from 'ava';

import { initDistributed } from '../lib/distributed/init';
import type { ProcessGroup } from '../lib/distributed/process_group';
import { TpkitError } from '../lib/errors';
import { add, addBias, cat, linear, matmul, rmsNorm, siluAndMul } from '../lib/ops';
import { Tensor } from '../lib/tensor';
import { arange } from './helpers/reference';
import { assertRanksOk, describeOutcome, runRanks, type ErrorInfo, type RanksOutcome, type Settled } from './helpers/run_ranks';

delete process.env.TPKIT_TIMEOUT_MS;
delete process.env.TPKIT_CHECK;

const FIXTURE = 'dist_faults';

/** Sum over ranks of arange(6) * (rank + 1): what `sumCheck` in the fixture must see. */
function sumCheck(W: number): number[] {
  return arange(6, (W * (W + 1)) / 2);
}

/** Asserts a Settled is a rejection with `code`, and returns its error. */
function rejected(t: ExecutionContext, s: Settled<unknown> | undefined, code: string, what: string): ErrorInfo {
  if (!s || s.ok) {
    t.fail(`${what}: expected a rejection with ${code} but it ${s ? 'resolved' : 'was not reported'}`);
    return { name: '', message: '', isTpkitError: false, isRangeError: false, isTypeError: false };
  }
  t.is(s.error.code, code, `${what}: ${s.error.message}`);
  t.true(s.error.isTpkitError, `${what} is a TpkitError`);
  return s.error;
}

/** Asserts every rank that printed a result exited soon after (no exit hang). */
function exitedPromptly(t: ExecutionContext, out: RanksOutcome<unknown>, boundMs = 2_000): void {
  out.ranks.forEach((r, rank) => {
    if (r.doneAt === undefined) return;
    t.truthy(r.exit, `rank ${rank} reported no exit`);
    if (r.exit) t.true(r.exit.at - r.doneAt <= boundMs, `rank ${rank} took ${r.exit.at - r.doneAt} ms to exit after its scenario`);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Bad input: every public function, exact errors, nothing crashes (one in-process world of size 1)
// ---------------------------------------------------------------------------------------------------------

let world: ProcessGroup | undefined;
const worldReady = initDistributed({ backend: 'gloo', timeoutMs: 10_000, env: {} }).then((w) => (world = w));
test.after.always(() => world?.destroy());

interface BadCase {
  /** What is wrong. */
  title: string;
  /** The call (sync throw or rejection); `w` is a live world group of size 1. */
  run: (w: ProcessGroup) => unknown;
  /** The error class (TypeError, RangeError) or a TpkitError code. */
  error: typeof TypeError | typeof RangeError | string;
  /** The exact message, or a pattern. */
  message: string | RegExp;
}

const f32 = (shape: number[] = [2, 3]): Tensor => Tensor.zeros(shape);
const disposed = (): Tensor => {
  const d = Tensor.zeros([2, 3]);
  d.dispose();
  return d;
};
const scalar = (): Tensor => Tensor.zeros([]);
const DISPOSED_MSG = 'tensor of shape [2, 3] (float32, cpu) was used after dispose()';
const NOT_TENSOR = (name: string, v: string) => `Expected Tensor for ${name} but received ${v}`;
const REDUCE_OPS = "one of 'sum', 'avg', 'max', 'min', 'prod'";

const BAD_CASES: BadCase[] = [
  // initDistributed (options and environment are checked before ALREADY_INITIALIZED)
  { title: 'initDistributed options string', run: () => initDistributed('gloo' as never), error: TypeError, message: 'Expected object for options but received gloo of type string' },
  { title: 'initDistributed backend mpi', run: () => initDistributed({ backend: 'mpi' as never }), error: RangeError, message: "Expected one of 'gloo', 'nccl', 'auto' for backend but received mpi of type string" },
  { title: 'initDistributed backend number', run: () => initDistributed({ backend: 1 as never }), error: TypeError, message: "Expected one of 'gloo', 'nccl', 'auto' for backend but received 1 of type number" },
  { title: 'initDistributed timeoutMs 0', run: () => initDistributed({ timeoutMs: 0 }), error: RangeError, message: 'Expected positive integer for timeoutMs but received 0 of type number' },
  { title: 'initDistributed timeoutMs string', run: () => initDistributed({ timeoutMs: '1000' as never }), error: TypeError, message: 'Expected positive integer for timeoutMs but received 1000 of type string' },
  { title: 'initDistributed timeoutMs 1.5', run: () => initDistributed({ timeoutMs: 1.5 }), error: RangeError, message: 'Expected positive integer for timeoutMs but received 1.5 of type number' },
  { title: 'initDistributed RANK ≥ WORLD_SIZE', run: () => initDistributed({ env: { RANK: '2', WORLD_SIZE: '2', MASTER_PORT: '1' } }), error: RangeError, message: 'Expected integer in [0, 2) for rank but received 2 of type number' },
  { title: 'initDistributed RANK not an integer', run: () => initDistributed({ env: { RANK: 'x', WORLD_SIZE: '2' } }), error: RangeError, message: 'Expected integer for environment variable RANK but received x of type string' },
  { title: 'initDistributed WORLD_SIZE 0', run: () => initDistributed({ env: { RANK: '0', WORLD_SIZE: '0' } }), error: RangeError, message: 'Expected positive integer for world size but received 0 of type number' },
  { title: 'initDistributed without MASTER_PORT', run: () => initDistributed({ env: { RANK: '0', WORLD_SIZE: '2' } }), error: RangeError, message: 'MASTER_PORT must be set for a job of 2 processes (source: torchrun)' },
  { title: 'initDistributed MASTER_PORT 70000', run: () => initDistributed({ env: { RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '70000' } }), error: RangeError, message: 'Expected integer in [0, 65536) for MASTER_PORT but received 70000 of type number' },
  { title: 'initDistributed TPKIT_TIMEOUT_MS abc', run: () => initDistributed({ env: { TPKIT_TIMEOUT_MS: 'abc' } }), error: RangeError, message: 'Expected positive integer for TPKIT_TIMEOUT_MS but received abc of type string' },
  { title: 'initDistributed while a world group is live', run: () => initDistributed({ env: {} }), error: 'ALREADY_INITIALIZED', message: /^initDistributed: a world group \(ProcessGroup\(gloo, rank 0 of 1, ranks \[0\]\)\) is live; call destroy\(\) on it first$/ },

  // allReduce
  { title: 'allReduce null', run: (w) => w.allReduce(null as never), error: TypeError, message: NOT_TENSOR('t', 'null') },
  { title: 'allReduce array', run: (w) => w.allReduce([1, 2] as never), error: TypeError, message: NOT_TENSOR('t', '[1, 2] of type array') },
  { title: 'allReduce disposed tensor', run: (w) => w.allReduce(disposed()), error: 'DISPOSED', message: DISPOSED_MSG },
  { title: 'allReduce op mean', run: (w) => w.allReduce(f32(), { op: 'mean' as never }), error: RangeError, message: `Expected ${REDUCE_OPS} for op but received mean of type string` },
  { title: 'allReduce op number', run: (w) => w.allReduce(f32(), { op: 3 as never }), error: TypeError, message: `Expected ${REDUCE_OPS} for op but received 3 of type number` },
  { title: 'allReduce options string', run: (w) => w.allReduce(f32(), 'sum' as never), error: TypeError, message: 'Expected object for options but received sum of type string' },
  { title: 'allReduce timeoutMs negative', run: (w) => w.allReduce(f32(), { timeoutMs: -5 }), error: RangeError, message: 'Expected positive integer for timeoutMs but received -5 of type number' },
  { title: 'allReduce timeoutMs string', run: (w) => w.allReduce(f32(), { timeoutMs: '5' as never }), error: TypeError, message: 'Expected positive integer for timeoutMs but received 5 of type string' },
  { title: 'allReduce timeoutMs 2^31', run: (w) => w.allReduce(f32(), { timeoutMs: 2 ** 31 }), error: RangeError, message: "Expected integer in [1, 2147483648) (ms; Node's timers fire at once beyond) for timeoutMs but received 2147483648 of type number" },

  // allGather
  { title: 'allGather dim = ndim', run: (w) => w.allGather(f32(), { dim: 2 }), error: RangeError, message: 'Expected integer in [-2, 2) for dim but received 2 of type number' },
  { title: 'allGather dim 1.5', run: (w) => w.allGather(f32(), { dim: 1.5 }), error: RangeError, message: 'Expected integer in [-2, 2) for dim but received 1.5 of type number' },
  { title: 'allGather dim string', run: (w) => w.allGather(f32(), { dim: '0' as never }), error: TypeError, message: 'Expected integer in [-2, 2) for dim but received 0 of type string' },
  { title: 'allGather 0-d tensor', run: (w) => w.allGather(scalar()), error: RangeError, message: 'allGather needs a tensor of at least one dimension' },
  { title: 'allGather undefined', run: (w) => w.allGather(undefined as never), error: TypeError, message: NOT_TENSOR('t', 'undefined of type undefined') },
  { title: 'allGather disposed tensor', run: (w) => w.allGather(disposed()), error: 'DISPOSED', message: DISPOSED_MSG },

  // reduceScatter
  { title: 'reduceScatter dim −3', run: (w) => w.reduceScatter(f32(), { dim: -3 }), error: RangeError, message: 'Expected integer in [-2, 2) for dim but received -3 of type number' },
  { title: 'reduceScatter op bad', run: (w) => w.reduceScatter(f32(), { op: 'avg2' as never }), error: RangeError, message: `Expected ${REDUCE_OPS} for op but received avg2 of type string` },
  { title: 'reduceScatter 0-d tensor', run: (w) => w.reduceScatter(scalar()), error: RangeError, message: 'reduceScatter needs a tensor of at least one dimension' },
  { title: 'reduceScatter options null', run: (w) => w.reduceScatter(f32(), null as never), error: TypeError, message: 'Expected object for options but received null' },
  { title: 'reduceScatter number instead of tensor', run: (w) => w.reduceScatter(3 as never), error: TypeError, message: NOT_TENSOR('t', '3 of type number') },

  // broadcast
  { title: 'broadcast src = world size', run: (w) => w.broadcast(f32(), 1), error: RangeError, message: 'Expected integer in [0, 1) for src but received 1 of type number' },
  { title: 'broadcast src negative', run: (w) => w.broadcast(f32(), -1), error: RangeError, message: 'Expected integer in [0, 1) for src but received -1 of type number' },
  { title: 'broadcast src string', run: (w) => w.broadcast(f32(), '0' as never), error: TypeError, message: 'Expected integer in [0, 1) for src but received 0 of type string' },
  { title: 'broadcast src 0.5', run: (w) => w.broadcast(f32(), 0.5), error: RangeError, message: 'Expected integer in [0, 1) for src but received 0.5 of type number' },
  { title: 'broadcast src missing', run: (w) => (w.broadcast as (t: Tensor) => Promise<Tensor>)(f32()), error: TypeError, message: 'Expected integer in [0, 1) for src but received undefined of type undefined' },
  { title: 'broadcast disposed tensor', run: (w) => w.broadcast(disposed(), 0), error: 'DISPOSED', message: DISPOSED_MSG },

  // send / recv
  { title: 'send to itself', run: (w) => w.send(f32(), 0), error: RangeError, message: 'rank 0 cannot send to itself (dst 0)' },
  { title: 'send dst ≥ world size', run: (w) => w.send(f32(), 1), error: RangeError, message: 'Expected integer in [0, 1) for dst but received 1 of type number' },
  { title: 'send dst NaN', run: (w) => w.send(f32(), NaN), error: RangeError, message: 'Expected integer in [0, 1) for dst but received NaN of type number' },
  { title: 'send string instead of tensor', run: (w) => w.send('x' as never, 0), error: TypeError, message: NOT_TENSOR('t', 'x of type string') },
  { title: 'send disposed tensor', run: (w) => w.send(disposed(), 0), error: 'DISPOSED', message: DISPOSED_MSG },
  { title: 'recv from itself', run: (w) => w.recv(f32(), 0), error: RangeError, message: 'rank 0 cannot receive from itself (src 0)' },
  { title: 'recv src ≥ world size', run: (w) => w.recv(f32(), 5), error: RangeError, message: 'Expected integer in [0, 1) for src but received 5 of type number' },
  { title: 'recv options array', run: (w) => w.recv(f32(), 0, [] as never), error: TypeError, message: 'Expected object for options but received [] of type array' },

  // allToAll, barrier
  { title: 'allToAll 0-d tensor', run: (w) => w.allToAll(scalar()), error: RangeError, message: 'allToAll: dim 0 of shape [] is not divisible by group size 1' },
  { title: 'allToAll options number', run: (w) => w.allToAll(f32(), 5 as never), error: TypeError, message: 'Expected object for options but received 5 of type number' },
  { title: 'barrier options string', run: (w) => w.barrier('x' as never), error: TypeError, message: 'Expected object for options but received x of type string' },
  { title: 'barrier timeoutMs 0', run: (w) => w.barrier({ timeoutMs: 0 }), error: RangeError, message: 'Expected positive integer for timeoutMs but received 0 of type number' },

  // newGroup
  { title: 'newGroup empty', run: (w) => w.newGroup([]), error: TypeError, message: 'Expected non-empty array of ranks for ranks but received [] of type array' },
  { title: 'newGroup string', run: (w) => w.newGroup('0' as never), error: TypeError, message: 'Expected non-empty array of ranks for ranks but received 0 of type string' },
  { title: 'newGroup rank outside the parent', run: (w) => w.newGroup([1]), error: RangeError, message: 'Expected ranks of the parent group [0] for ranks but received [1]' },
  { title: 'newGroup repeated rank', run: (w) => w.newGroup([0, 0]), error: RangeError, message: 'Expected distinct ranks for ranks but received [0, 0] (rank 0 repeats)' },
  { title: 'newGroup non-integer rank', run: (w) => w.newGroup([0.5]), error: RangeError, message: 'Expected ranks of the parent group [0] for ranks but received [0.5]' },
  { title: 'newGroup negative rank', run: (w) => w.newGroup([-1]), error: RangeError, message: 'Expected ranks of the parent group [0] for ranks but received [-1]' },

  // Tensor
  { title: 'Tensor.from too few values', run: () => Tensor.from([1, 2, 3], [2, 2]), error: RangeError, message: 'Expected 4 elements for data of shape [2, 2] but received 3' },
  { title: 'Tensor.from string data', run: () => Tensor.from('abc' as never, [3]), error: TypeError, message: 'Expected array or typed array of numbers for data but received abc of type string' },
  { title: 'Tensor.from non-number element', run: () => Tensor.from([1, 'a'] as never, [2]), error: TypeError, message: 'Expected number for data[1] but received a of type string' },
  { title: 'Tensor.from dtype int8', run: () => Tensor.from([1], [1], { dtype: 'int8' as never }), error: RangeError, message: "Expected one of 'float32', 'float16', 'bfloat16' for dtype but received int8 of type string" },
  { title: 'Tensor.zeros negative dim', run: () => Tensor.zeros([2, -1]), error: RangeError, message: 'Expected array of non-negative integers for shape but received [2, -1] of type array' },
  { title: 'Tensor.zeros shape string', run: () => Tensor.zeros('2' as never), error: TypeError, message: 'Expected array of non-negative integers for shape but received 2 of type string' },
  { title: 'Tensor.zeros fractional dim', run: () => Tensor.zeros([1.5]), error: RangeError, message: 'Expected array of non-negative integers for shape but received [1.5] of type array' },
  { title: 'Tensor.zeros 9 dims', run: () => Tensor.zeros([1, 1, 1, 1, 1, 1, 1, 1, 1]), error: RangeError, message: 'Expected at most 8 dimensions for shape but received [1, 1, 1, 1, 1, 1, 1, 1, …] of type array' },
  { title: 'Tensor.zeros device tpu', run: () => Tensor.zeros([2], { device: 'tpu' as never }), error: RangeError, message: "Expected 'cpu', 'cuda' or 'cuda:N' for device but received tpu of type string" },
  { title: 'Tensor.zeros device number', run: () => Tensor.zeros([2], { device: 0 as never }), error: TypeError, message: "Expected 'cpu', 'cuda' or 'cuda:N' for device but received 0 of type number" },
  { title: 'Tensor.zeros options string', run: () => Tensor.zeros([2], 'float16' as never), error: TypeError, message: 'Expected object for options but received float16 of type string' },
  { title: 'Tensor.empty more than 2^32 elements', run: () => Tensor.empty([2 ** 20, 2 ** 20]), error: RangeError, message: 'Expected at most 4294967296 elements for shape but received [1048576, 1048576] of type array' },
  { title: 'narrow dim = ndim', run: () => f32().narrow(3, 0, 1), error: RangeError, message: 'Expected integer in [-2, 2) for dim but received 3 of type number' },
  { title: 'narrow past the end', run: () => f32().narrow(0, 1, 2), error: RangeError, message: 'Expected start + length of at most 2 (size of dim 0 of shape [2, 3]) but received 3' },
  { title: 'narrow negative start', run: () => f32().narrow(0, -1, 1), error: RangeError, message: 'Expected non-negative integer for start but received -1 of type number' },
  { title: 'narrow fractional length', run: () => f32().narrow(0, 0, 1.5), error: RangeError, message: 'Expected non-negative integer for length but received 1.5 of type number' },
  { title: 'narrow disposed tensor', run: () => disposed().narrow(0, 0, 1), error: 'DISPOSED', message: DISPOSED_MSG },
  { title: 'reshape to another element count', run: () => f32().reshape([4]), error: RangeError, message: 'cannot reshape tensor of shape [2, 3] to [4]' },
  { title: 'reshape string', run: () => f32().reshape('6' as never), error: TypeError, message: 'Expected array of integers for shape but received 6 of type string' },
  { title: 'reshape −1 that does not divide', run: () => f32().reshape([-1, 4]), error: RangeError, message: 'cannot reshape tensor of shape [2, 3] to [-1, 4]' },
  { title: 'toFloat32Array disposed tensor', run: () => disposed().toFloat32Array(), error: 'DISPOSED', message: DISPOSED_MSG },
  { title: 'to dtype int32', run: () => f32().to('int32' as never), error: RangeError, message: "Expected one of 'float32', 'float16', 'bfloat16' for dtype but received int32 of type string" },
  { title: 'fromBits dtype float32', run: () => Tensor.fromBits(new Uint16Array(2), [2], { dtype: 'float32' as never }), error: RangeError, message: "Expected 'float16' or 'bfloat16' for dtype but received float32 of type string" },
  { title: 'fromBits plain array', run: () => Tensor.fromBits([1, 2] as never, [2], { dtype: 'bfloat16' }), error: TypeError, message: 'Expected Uint16Array for bits but received [1, 2] of type array' },

  // ops
  { title: 'matmul inner dims differ', run: () => matmul(f32(), f32()), error: RangeError, message: 'matmul shape mismatch: a [2, 3] and b [2, 3] (inner dimensions 3 and 2)' },
  { title: 'matmul 1-D', run: () => matmul(f32([3]), f32([3, 2])), error: RangeError, message: 'matmul expects 2-D tensors but received shapes [3] and [3, 2]' },
  { title: 'matmul transA string', run: () => matmul(f32(), f32([3, 2]), { transA: 'yes' as never }), error: TypeError, message: 'Expected boolean for transA but received yes of type string' },
  { title: 'matmul bfloat16 on cpu', run: () => matmul(Tensor.zeros([2, 2], { dtype: 'bfloat16' }), Tensor.zeros([2, 2], { dtype: 'bfloat16' })), error: TypeError, message: "matmul on cpu computes in float32 but received bfloat16 tensors (cast with t.to('float32'))" },
  { title: 'matmul mixed dtypes', run: () => matmul(f32([2, 2]), Tensor.zeros([2, 2], { dtype: 'bfloat16' })), error: TypeError, message: 'matmul: tensors have different dtypes (float32 and bfloat16)' },
  { title: 'matmul null', run: () => matmul(null as never, f32()), error: TypeError, message: NOT_TENSOR('a', 'null') },
  { title: 'linear 1-D weight', run: () => linear(f32(), f32([3])), error: RangeError, message: 'linear expects a 2-D weight [out, in] but received [3]' },
  { title: 'linear in-features differ', run: () => linear(f32(), f32([4, 5])), error: RangeError, message: 'linear shape mismatch: x [2, 3] and weight [4, 5] (expected x of shape [..., 5])' },
  { title: 'linear bias of the wrong size', run: () => linear(f32(), f32([4, 3]), f32([3])), error: RangeError, message: 'linear shape mismatch: bias [3] and weight [4, 3] (expected bias of shape [4])' },
  { title: 'linear disposed bias', run: () => linear(f32(), f32([4, 3]), disposed()), error: 'DISPOSED', message: DISPOSED_MSG },
  { title: 'addBias size differs', run: () => addBias(f32(), f32([2])), error: RangeError, message: 'addBias shape mismatch: y [2, 3] and bias [2]' },
  { title: 'siluAndMul odd last dim', run: () => siluAndMul(f32()), error: RangeError, message: 'siluAndMul expects an even last dimension but received shape [2, 3]' },
  { title: 'rmsNorm eps NaN', run: () => rmsNorm(f32(), f32([3]), NaN), error: RangeError, message: 'Expected finite number for eps but received NaN of type number' },
  { title: 'rmsNorm eps string', run: () => rmsNorm(f32(), f32([3]), '1' as never), error: TypeError, message: 'Expected number for eps but received 1 of type string' },
  { title: 'rmsNorm weight size differs', run: () => rmsNorm(f32(), f32([2])), error: RangeError, message: 'rmsNorm shape mismatch: x [2, 3] and weight [2]' },
  { title: 'add shapes differ', run: () => add(f32(), f32([3, 2])), error: RangeError, message: 'add shape mismatch: [2, 3] and [3, 2]' },
  { title: 'cat empty', run: () => cat([], 0), error: TypeError, message: 'Expected non-empty array of Tensors for parts' },
  { title: 'cat shapes differ outside dim', run: () => cat([f32(), f32([3, 2])], 0), error: RangeError, message: 'cat along dim 0 expects shapes equal except in that dim but received [2, 3] and [3, 2]' },
  { title: 'cat dim string', run: () => cat([f32()], '0' as never), error: TypeError, message: 'Expected integer in [-2, 2) for dim but received 0 of type string' },
  { title: 'cat dim = ndim', run: () => cat([f32()], 2), error: RangeError, message: 'Expected integer in [-2, 2) for dim but received 2 of type number' },
  { title: 'cat non-tensor part', run: () => cat([f32(), 'x' as never], 0), error: TypeError, message: NOT_TENSOR('parts[1]', 'x of type string') },
];

test('the bad-input table has at least 60 cases', (t) => {
  t.true(BAD_CASES.length >= 60, `${BAD_CASES.length} cases`);
});

for (const c of BAD_CASES) {
  test(`bad input: ${c.title}`, async (t) => {
    const w = await worldReady;
    const err = await t.throwsAsync(async () => c.run(w));
    if (typeof c.error === 'string') {
      t.true(err instanceof TpkitError, `${err?.name}: ${err?.message}`);
      t.is((err as TpkitError).code, c.error);
    } else {
      t.true(err instanceof c.error, `${err?.name}: ${err?.message}`);
      t.false(err instanceof TpkitError);
    }
    if (typeof c.message === 'string') t.is(err?.message, c.message);
    else t.regex(err?.message ?? '', c.message);
  });
}

test('the world group still works after every bad input', async (t) => {
  const w = await worldReady;
  const x = Tensor.arange([4]);
  t.is(await w.allReduce(x), x);
  t.deepEqual(Array.from(await x.toFloat32Array()), [0, 1, 2, 3]);
  t.is(w.brokenError, null);
});

// ---------------------------------------------------------------------------------------------------------
// Multi-rank faults
// ---------------------------------------------------------------------------------------------------------

interface KillResult {
  iteration: number;
  failure: Settled<unknown>;
  later: Settled<unknown>;
}

for (const W of [2, 4]) {
  test.serial(`world ${W}: a rank killed with SIGKILL mid-loop: survivors reject with PEER_LOST naming it within 5 s`, async (t) => {
    const victim = W - 1;
    const out = await runRanks<KillResult>(W, FIXTURE, 'kill', { timeoutMs: 30_000, surviveSiblingDeath: true, graceMs: 15_000 });
    t.false(out.timedOut, describeOutcome(out));
    t.is(out.launch?.failedRank, victim, describeOutcome(out));
    t.is(out.launch?.failedSignal, 'SIGKILL');
    const killed = out.ranks[victim]!.lines.map((l) => JSON.parse(l) as { killedAt?: number }).find((l) => l.killedAt);
    t.truthy(killed, 'the victim announced its death');
    for (let r = 0; r < victim; r++) {
      const res = out.results[r];
      if (!res) {
        t.fail(`survivor ${r} printed no result\n${describeOutcome(out)}`);
        continue;
      }
      const err = rejected(t, res.failure, 'PEER_LOST', `survivor ${r}`);
      t.regex(err.message, new RegExp(`lost rank ${victim}\\b`), `survivor ${r}: ${err.message}`);
      t.deepEqual(err.details?.lostRanks, [victim]);
      t.true(res.failure.at - killed!.killedAt! <= 5_000, `survivor ${r} rejected ${res.failure.at - killed!.killedAt!} ms after the kill`);
      rejected(t, res.later, 'GROUP_BROKEN', `survivor ${r}, the next call`);
      t.true(res.later.ms < 100, 'later calls reject at once');
    }
    exitedPromptly(t, out);
  });
}

interface SkipResult {
  skipped?: boolean;
  failure: Settled<unknown>;
  later: Settled<unknown>;
}

for (const W of [2, 4]) {
  test.serial(`world ${W}: a rank that skips a collective: the others get TIMEOUT at 2 s ± 20 % naming it`, async (t) => {
    const skipper = W - 1;
    const out = await runRanks<SkipResult>(W, FIXTURE, 'skip', { timeoutMs: 30_000 });
    assertRanksOk(t, out);
    t.true(out.results[skipper]?.skipped);
    for (let r = 0; r < skipper; r++) {
      const res = out.results[r]!;
      const err = rejected(t, res.failure, 'TIMEOUT', `rank ${r}`);
      t.true(res.failure.ms >= 1_600 && res.failure.ms <= 2_400, `rank ${r} timed out after ${res.failure.ms} ms`);
      t.deepEqual(err.details?.missingRanks, [skipper], err.message);
      t.true(err.message.includes(`ranks that did not arrive: [${skipper}]`), err.message);
      t.true(err.message.includes('allReduce (seq 1)'), err.message);
      rejected(t, res.later, 'GROUP_BROKEN', `rank ${r}, the next call`);
    }
    exitedPromptly(t, out);
  });
}

interface PropagateResult {
  failure: Settled<unknown>;
  later: Settled<unknown>;
  laterSend: Settled<unknown>;
  laterNewGroup?: ErrorInfo;
  brokenCode: string | null;
  destroyTwice?: ErrorInfo;
  afterDestroy: Settled<unknown>;
  again: number[];
  names: string[];
}

for (const W of [2, 4]) {
  test.serial(`world ${W}: one rank's failure reaches the others within 2 s; then GROUP_BROKEN, destroy() and a fresh initDistributed`, async (t) => {
    const out = await runRanks<PropagateResult>(W, FIXTURE, 'propagate', { timeoutMs: 30_000 });
    assertRanksOk(t, out);
    const res = out.results as PropagateResult[];
    const first = rejected(t, res[1]!.failure, 'TIMEOUT', 'rank 1 (recv with timeoutMs 500)');
    t.is(first.message, `recv on rank 1 of process group [${arange(W).join(', ')}] (gloo) timed out after 500 ms`);
    t.true(res[1]!.failure.ms >= 400 && res[1]!.failure.ms <= 1_500, `recv timed out after ${res[1]!.failure.ms} ms`);
    res.forEach((r, rank) => {
      if (rank !== 1) {
        const err = rejected(t, r.failure, 'GROUP_BROKEN', `rank ${rank} (all-reduce with a 30 s timeout)`);
        t.is(err.details?.propagatedFrom, 1);
        t.is(err.details?.originalCode, 'TIMEOUT');
        t.true(err.message.startsWith(`rank 1 of process group [${arange(W).join(', ')}] failed (TIMEOUT): recv on rank 1`), err.message);
        const lag = r.failure.at - res[1]!.failure.at;
        t.true(lag <= 2_000, `rank ${rank} rejected ${lag} ms after rank 1's failure`);
      }
      for (const [what, s] of [['allReduce', r.later], ['send', r.laterSend]] as const) {
        const e = rejected(t, s, 'GROUP_BROKEN', `rank ${rank}: ${what} after the failure`);
        t.true(e.message.startsWith(`${what} on broken process group ${r.names[0]}: `), e.message);
        t.true(s.ms < 100, `${what} after the failure took ${s.ms} ms`);
      }
      t.like(r.laterNewGroup, { code: 'GROUP_BROKEN' });
      t.is(r.brokenCode, rank === 1 ? 'TIMEOUT' : 'GROUP_BROKEN');
      t.is(r.destroyTwice, undefined, 'destroy() twice is harmless');
      const d = rejected(t, r.afterDestroy, 'GROUP_DESTROYED', `rank ${rank}: allReduce after destroy()`);
      t.is(d.message, `allReduce on process group ${r.names[0]} after destroy()`);
      t.deepEqual(r.again, sumCheck(W), 'the all-reduce of a fresh initDistributed works');
      t.not(r.names[0], r.names[1], 'the new world group has a fresh store prefix');
    });
    exitedPromptly(t, out);
  });
}

for (const W of [2, 4]) {
  test.serial(`world ${W}: a rank that never joins: initDistributed rejects with TIMEOUT by its 2 s timeout, naming it`, async (t) => {
    const out = await runRanks<{ joined?: boolean; init: Settled<unknown> }>(W, FIXTURE, 'nojoin', { timeoutMs: 30_000 });
    assertRanksOk(t, out);
    for (let r = 0; r < W - 1; r++) {
      const s = out.results[r]!.init;
      const err = rejected(t, s, 'TIMEOUT', `rank ${r}`);
      t.true(s.ms >= 1_600 && s.ms <= 2_900, `rank ${r}: rejected after ${s.ms} ms`);
      t.deepEqual(err.details?.missingRanks, [W - 1]);
      t.true(err.message.startsWith(`initDistributed: rank ${r} of ${W} waited 2000 ms for rank [${W - 1}] to join: `), err.message);
    }
    t.is(out.results[W - 1]!.joined, false);
    exitedPromptly(t, out);
  });
}

interface MismatchCase {
  result: 'resolved' | ErrorInfo;
  after: number[];
}
const MISMATCH_CASES: Record<string, (string | ((W: number) => string))[]> = {
  size10vs20: ['allReduce(seq 0, float32, count 10, op sum)', 'allReduce(seq 0, float32, count 20, op sum)'],
  size1Mvs2M: ['count 1000000', 'count 2000000'],
  dtype: ['allReduce(seq 4, bfloat16, count 16, op sum)', 'allReduce(seq 4, float32, count 16, op sum)'],
  allReduceVsBroadcast: ['rank 0: allReduce(seq 6, float32, count 16, op sum)', 'rank 1: broadcast(seq 6, float32, count 16, root 0)'],
  reduceOp: ['op max', 'op sum'],
  broadcastRoot: ['root 0', 'root 1'],
  allGatherDim: ['rank 0: allGather(seq 12, float32, count 4, dim 0, shape [2, 2])', 'rank 1: allGather(seq 12, float32, count 4, dim 1, shape [2, 2])'],
  allGatherVsAllReduce: ['rank 0: allReduce(seq 14', 'rank 1: allGather(seq 14'],
  // one rank's all-reduce fits in the descriptor exchange, the other's needs the ring
  inlineVsRing: ['rank 0: allReduce(seq 16, float32, count 10, op sum)', 'rank 1: allReduce(seq 16, float32, count 100000, op sum)'],
};

for (const W of [2, 4]) {
  test.serial(`world ${W}: mismatched collectives reject with COLLECTIVE_MISMATCH on every rank and the group keeps working`, async (t) => {
    const out = await runRanks<Record<string, unknown>>(W, FIXTURE, 'mismatch', { timeoutMs: 30_000 });
    assertRanksOk(t, out);
    out.results.forEach((res, rank) => {
      for (const [name, fragments] of Object.entries(MISMATCH_CASES)) {
        const c = res![name] as MismatchCase;
        if (c.result === 'resolved') {
          t.fail(`${name} resolved on rank ${rank}`);
          continue;
        }
        t.is(c.result.code, 'COLLECTIVE_MISMATCH', `${name} on rank ${rank}: ${c.result.message}`);
        t.true(c.result.message.includes(`collective mismatch at sequence number`), c.result.message);
        t.true(c.result.message.includes(`(seen by rank ${rank})`), c.result.message);
        for (const f of fragments) {
          const text = typeof f === 'string' ? f : f(W);
          t.true(c.result.message.includes(text), `${name}: "${text}" not in ${c.result.message}`);
        }
        t.deepEqual(c.after, sumCheck(W), `${name}: an all-reduce right after works`);
      }
      const swapped = res!.swapped as { first: ErrorInfo; second: ErrorInfo; after: number[] };
      t.is(swapped.first.code, 'COLLECTIVE_MISMATCH', 'swapped order: the first op');
      t.is(swapped.second.code, 'COLLECTIVE_MISMATCH', 'swapped order: the second op');
      t.deepEqual(swapped.after, sumCheck(W));
      t.deepEqual(res!.final, sumCheck(W));
      t.is(res!.broken, null, 'a mismatch does not break the group');
    });
    // send/recv of 10 vs 20 elements: the receiver rejects, the sender's send completes, the pair stays usable.
    const p0 = out.results[0]!.p2p as { result: string; next: string };
    const p1 = out.results[1]!.p2p as { result: ErrorInfo; next: string; received: number[] };
    t.is(p0.result, 'resolved');
    t.is(p1.result.code, 'COLLECTIVE_MISMATCH');
    t.is(p1.result.message, `recv on rank 1 of process group [${arange(W).join(', ')}] (gloo): recv on rank 1 expected 20 elements from rank 0, which sent 10`);
    t.is(p0.next, 'resolved');
    t.is(p1.next, 'resolved');
    t.deepEqual(p1.received, [7, 8, 9]);
    exitedPromptly(t, out);
  });
}

test.serial('world 2: with TPKIT_CHECK=off collectives skip the descriptor exchange and still work', async (t) => {
  const out = await runRanks<Record<string, unknown>>(2, FIXTURE, 'checkoff', { timeoutMs: 30_000, env: { TPKIT_CHECK: 'off' } });
  assertRanksOk(t, out);
  out.results.forEach((res, rank) => {
    t.is(res!.env, 'off');
    t.deepEqual(res!.sum, sumCheck(2));
    t.deepEqual(res!.gather, [0, 1, 0, 2]);
    t.deepEqual(res!.broadcast, [0, 2, 4]);
    t.deepEqual(res!.reduceScatter, rank === 0 ? [0, 3] : [6, 9]);
  });
});

test.serial('world 2: size-dependent bad arguments throw before anything is sent', async (t) => {
  const out = await runRanks<Record<string, unknown>>(2, FIXTURE, 'badargs', { timeoutMs: 30_000 });
  assertRanksOk(t, out);
  out.results.forEach((res, rank) => {
    const expect: Record<string, [string, string]> = {
      broadcastSrcEqualsSize: ['RangeError', 'Expected integer in [0, 2) for src but received 2 of type number'],
      sendDstEqualsSize: ['RangeError', 'Expected integer in [0, 2) for dst but received 2 of type number'],
      recvSrcNegative: ['RangeError', 'Expected integer in [0, 2) for src but received -1 of type number'],
      sendToSelf: ['RangeError', `rank ${rank} cannot send to itself (dst ${rank})`],
      recvFromSelf: ['RangeError', `rank ${rank} cannot receive from itself (src ${rank})`],
      reduceScatterNotDivisible: ['RangeError', 'reduceScatter: size 3 of dim 0 of shape [3] is not divisible by group size 2'],
      reduceScatterDim1NotDivisible: ['RangeError', 'reduceScatter: size 3 of dim 1 of shape [2, 3] is not divisible by group size 2'],
      allToAllNotDivisible: ['RangeError', 'allToAll: dim 0 of shape [3, 2] is not divisible by group size 2'],
      newGroupOutside: ['RangeError', 'Expected ranks of the parent group [0, 1] for ranks but received [2]'],
      sendDisposed: ['TpkitError', 'tensor of shape [2] (float32, cpu) was used after dispose()'],
    };
    for (const [name, [cls, message]] of Object.entries(expect)) {
      t.like(res![name] as ErrorInfo, { name: cls, message }, `rank ${rank}: ${name}`);
    }
    t.deepEqual(res!.after, sumCheck(2));
    t.like(res!.callCounts as Record<string, number>, { allReduce: 1, send: 0, recv: 0, broadcast: 0, reduceScatter: 0, allToAll: 0 });
  });
});

test.serial('world 2: 1,000 collectives leave RSS within 5 % (+ 4 MiB) of the baseline', async (t) => {
  // --max-semi-space-size=1 pins V8's young generation, whose growth (1 → 16 MiB semi-spaces under a high
  // allocation rate) otherwise shows up in RSS as steps that are not leaks.
  const out = await runRanks<{ base: number; after: number; ms: number; hasGc: boolean }>(2, FIXTURE, 'rss', {
    timeoutMs: 60_000,
    nodeArgs: ['--expose-gc', '--max-semi-space-size=1'],
  });
  assertRanksOk(t, out);
  out.results.forEach((r, rank) => {
    t.true(r!.hasGc);
    const bound = r!.base * 1.05 + 4 * 2 ** 20;
    t.log(`rank ${rank}: RSS ${(r!.base / 2 ** 20).toFixed(1)} → ${(r!.after / 2 ** 20).toFixed(1)} MiB over 1,000 collectives (${r!.ms} ms)`);
    t.true(r!.after <= bound, `rank ${rank}: RSS grew from ${r!.base} to ${r!.after} bytes`);
  });
});

test.serial('world 2: destroy() twice is harmless; use after destroy throws GROUP_DESTROYED; re-init works', async (t) => {
  const out = await runRanks<Record<string, unknown>>(2, FIXTURE, 'lifecycle', { timeoutMs: 30_000 });
  assertRanksOk(t, out);
  out.results.forEach((res, rank) => {
    const r = res as Record<string, Settled<unknown> & ErrorInfo> & { before: number[]; again: number[]; names: string[]; twice?: ErrorInfo };
    const second = rejected(t, r.second, 'ALREADY_INITIALIZED', `rank ${rank}: a second initDistributed`);
    t.true(second.message.startsWith('initDistributed: a world group (ProcessGroup(gloo, rank'), second.message);
    t.deepEqual(r.before, sumCheck(2));
    t.is(r.twice, undefined);
    for (const op of ['allReduce', 'barrier', 'send'] as const) {
      const e = rejected(t, r[op], 'GROUP_DESTROYED', `rank ${rank}: ${op} after destroy()`);
      t.is(e.message, `${op} on process group ${r.names[0]} after destroy()`);
    }
    t.like(r.newGroup as ErrorInfo, { code: 'GROUP_DESTROYED', message: `newGroup on process group ${r.names[0]} after destroy()` });
    const sub = rejected(t, r.subAllReduce, 'GROUP_DESTROYED', `rank ${rank}: a subgroup of a destroyed group`);
    t.is(sub.message, `allReduce on process group ${r.names[0]}/sub0 after destroy()`);
    t.deepEqual(r.again, sumCheck(2));
    t.not(r.names[0], r.names[1]);
  });
  exitedPromptly(t, out);
});
