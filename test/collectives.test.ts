/**
 * Tests of the process group's collectives on the gloo backend (lib/distributed/process_group.ts, gloo.ts,
 * native/core/gloo_comm.cc) at world sizes 1, 2 and 4. Each world size is ONE launch of the
 * dist_collectives fixture running every collective on inputs each rank can predict
 * (`arange(n) * (rank + 1)`); the references below are computed independently, element by element.
 * The store has its own tests (store.test.ts); faults are in faults.test.ts.
 */
import test from 'ava';

import { catRef, narrowRef, numel, arange } from './helpers/reference';
import { assertRanksOk, runRanks, sharedRun, type RanksOutcome, type Settled } from './helpers/run_ranks';
import { cudaStatus } from '../lib/native/cuda';

const WORLD_SIZES = [1, 2, 4] as const;
const LAUNCH_TIMEOUT_MS = 30_000;

interface Shaped {
  shape: number[];
  values: number[];
}
interface AllResult {
  rank: number;
  size: number;
  backend: string;
  ranks: number[];
  allReduce: Record<string, Shaped & { same: boolean }>;
  ringAllReduce: Record<string, number[]>;
  allGather: Record<string, Shaped>;
  reduceScatter: Record<string, Shaped>;
  broadcast: number[][];
  ring: number[][];
  selfSend?: Settled<unknown>;
  allToAll: Shaped;
  barrier: { enter: number; leave: number };
  lowPrecision: Record<string, Shaped & { dtype: string }>;
  subgroup: {
    rank: number;
    size: number;
    ranks: number[];
    isMember: boolean;
    allReduce: number[] | Settled<unknown>;
    allGather?: number[];
    barrier?: Settled<unknown>;
    send?: Settled<unknown>;
    worldAfter: number[];
  };
  callCounts: Record<string, number>;
  big: Record<string, Shaped> & { broadcast: number[][] };
}

// Every case runs on host tensors; on a GPU machine also on cuda tensors, staged through the host by gloo.
const gpu = cudaStatus();
const DEVICES = gpu.cuda ? ['cpu', 'cuda:0'] : ['cpu'];
if (!gpu.cuda) test.skip(`collectives on cuda tensors: no GPU visible (${gpu.reason ?? 'unknown'})`, () => {});

for (const device of DEVICES) {
const D = device === 'cpu' ? '' : ` on ${device}`;
const runs = new Map<number, () => Promise<RanksOutcome<AllResult>>>();
for (const W of WORLD_SIZES) {
  runs.set(W, sharedRun(() => runRanks<AllResult>(W, 'dist_collectives', 'all', { timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_TEST_DEVICE: device } })));
}

/** The launch for `W` ranks; fails the test (with the ranks' errors) unless every rank reported. */
async function results(t: Parameters<typeof assertRanksOk>[0], W: number): Promise<AllResult[]> {
  const out = await runs.get(W)!();
  assertRanksOk(t, out);
  return out.results as AllResult[];
}

/** Sum over ranks of f(rank). */
function overRanks(W: number, f: (r: number) => number, combine: (a: number, b: number) => number): number {
  let acc = f(0);
  for (let r = 1; r < W; r++) acc = combine(acc, f(r));
  return acc;
}

const REDUCE: Record<string, (W: number, x: number) => number> = {
  sum: (W, x) => overRanks(W, (r) => x * (r + 1), (a, b) => a + b),
  avg: (W, x) => overRanks(W, (r) => x * (r + 1), (a, b) => a + b) / W,
  max: (W, x) => overRanks(W, (r) => x * (r + 1), Math.max),
  min: (W, x) => overRanks(W, (r) => x * (r + 1), Math.min),
  prod: (W, x) => overRanks(W, (r) => x * (r + 1), (a, b) => a * b),
};

for (const W of WORLD_SIZES) {
  test(`world ${W}${D}: every rank joins with its rank, size and the gloo backend`, async (t) => {
    const res = await results(t, W);
    res.forEach((r, i) => {
      t.is(r.rank, i);
      t.is(r.size, W);
      t.is(r.backend, 'gloo');
      t.deepEqual(r.ranks, arange(W));
    });
  });

  for (const op of Object.keys(REDUCE)) {
    test(`world ${W}${D}: allReduce ${op} in place on [2, 3]`, async (t) => {
      const expected = arange(6).map((x) => REDUCE[op]!(W, x));
      for (const r of await results(t, W)) {
        t.deepEqual(r.allReduce[op]!.shape, [2, 3]);
        t.true(r.allReduce[op]!.same, 'resolves to the same tensor');
        t.deepEqual(r.allReduce[op]!.values, expected, `rank ${r.rank}`);
      }
    });
  }

  for (const op of Object.keys(REDUCE)) {
    test(`world ${W}${D}: allReduce ${op} of 6000 elements (Gloo's ring, past the inline size)`, async (t) => {
      const expected = Array.from({ length: 6000 }, (_, i) => REDUCE[op]!(W, (i % 13) - 6));
      for (const r of await results(t, W)) t.deepEqual(r.ringAllReduce[op], expected, `rank ${r.rank}`);
    });
  }

  for (const dim of [0, 1, 2]) {
    test(`world ${W}${D}: allGather of [2, 3, 4] along dim ${dim}`, async (t) => {
      const shape = [2, 3, 4];
      const parts = Array.from({ length: W }, (_, r) => arange(24, r + 1));
      const expected = catRef(parts, shape, dim);
      const outShape = shape.slice();
      outShape[dim] = outShape[dim]! * W;
      for (const r of await results(t, W)) {
        t.deepEqual(r.allGather[dim]!.shape, outShape);
        t.deepEqual(r.allGather[dim]!.values, expected, `rank ${r.rank}`);
      }
    });
  }

  test(`world ${W}${D}: allGather defaults to the last dim (and dim −1 equals dim 2)`, async (t) => {
    const parts = Array.from({ length: W }, (_, r) => arange(6, r + 1));
    for (const r of await results(t, W)) {
      t.deepEqual(r.allGather.default!.shape, [2, 3 * W]);
      t.deepEqual(r.allGather.default!.values, catRef(parts, [2, 3], 1));
      t.deepEqual(r.allGather['-1'], r.allGather[2]);
    }
  });

  for (const dim of [0, 1]) {
    for (const op of ['sum', 'max', 'avg']) {
      test(`world ${W}${D}: reduceScatter ${op} of [4, 8, 3] along dim ${dim}`, async (t) => {
        const shape = [4, 8, 3];
        const reduced = arange(numel(shape)).map((x) => REDUCE[op]!(W, x));
        const len = shape[dim]! / W;
        const outShape = shape.slice();
        outShape[dim] = len;
        for (const r of await results(t, W)) {
          const got = r.reduceScatter[`${dim}/${op}`]!;
          t.deepEqual(got.shape, outShape);
          t.deepEqual(got.values, narrowRef(reduced, shape, dim, r.rank * len, len), `rank ${r.rank}`);
        }
      });
    }
  }

  test(`world ${W}${D}: broadcast from every root`, async (t) => {
    for (const r of await results(t, W)) {
      t.is(r.broadcast.length, W);
      r.broadcast.forEach((got, root) => t.deepEqual(got, arange(5, root + 1), `rank ${r.rank}, root ${root}`));
    }
  });

  test(`world ${W}${D}: allToAll sends chunk j to rank j`, async (t) => {
    for (const r of await results(t, W)) {
      t.deepEqual(r.allToAll.shape, [2 * W, 3]);
      const expected: number[] = [];
      for (let j = 0; j < W; j++) for (let k = 0; k < 6; k++) expected.push(1000 * j + r.rank * 6 + k);
      t.deepEqual(r.allToAll.values, expected, `rank ${r.rank}`);
    }
  });

  // Past the 4096 elements that travel inside the descriptor exchange: Gloo's algorithms and the ring.
  test(`world ${W}${D}: allGather, reduceScatter, broadcast and allToAll of more than 4096 elements per rank`, async (t) => {
    const res = await results(t, W);
    const gShape = [2, 3, 1000];
    const parts = Array.from({ length: W }, (_, r) => arange(6000, r + 1));
    for (const dim of [0, 1, 2]) {
      const expected = catRef(parts, gShape, dim);
      for (const r of res) t.deepEqual(r.big[`allGather/${dim}`]!.values, expected, `allGather dim ${dim}, rank ${r.rank}`);
    }
    const rsShape = [4, 8, 200];
    for (const dim of [0, 1]) {
      for (const op of ['sum', 'max', 'avg']) {
        const reduced = arange(numel(rsShape)).map((x) => REDUCE[op]!(W, x));
        const len = rsShape[dim]! / W;
        const outShape = rsShape.slice();
        outShape[dim] = len;
        for (const r of res) {
          const got = r.big[`reduceScatter/${dim}/${op}`]!;
          t.deepEqual(got.shape, outShape);
          t.deepEqual(got.values, narrowRef(reduced, rsShape, dim, r.rank * len, len), `reduceScatter ${op} dim ${dim}, rank ${r.rank}`);
        }
      }
    }
    for (const r of res) {
      r.big.broadcast.forEach((got, root) => t.deepEqual(got, arange(5000, root + 1), `broadcast root ${root}, rank ${r.rank}`));
      const expected: number[] = [];
      for (let j = 0; j < W; j++) for (let k = 0; k < 6000; k++) expected.push(100_000 * j + r.rank * 6000 + k);
      t.deepEqual(r.big.allToAll!.shape, [2 * W, 3000]);
      t.deepEqual(r.big.allToAll!.values, expected, `allToAll, rank ${r.rank}`);
    }
  });

  test(`world ${W}${D}: barrier releases nobody before the last rank arrived`, async (t) => {
    const res = await results(t, W);
    const lastEnter = Math.max(...res.map((r) => r.barrier.enter));
    for (const r of res) t.true(r.barrier.leave >= lastEnter, `rank ${r.rank} left at ${r.barrier.leave}, last arrival ${lastEnter}`);
  });

  test(`world ${W}${D}: bfloat16 / float16 tensors go through gloo staged and keep their dtype`, async (t) => {
    for (const r of await results(t, W)) {
      const lp = r.lowPrecision;
      t.is(lp.allReduce!.dtype, 'bfloat16');
      t.deepEqual(lp.allReduce!.values, arange(8).map((x) => REDUCE.sum!(W, x)));
      t.is(lp.allGather!.dtype, 'bfloat16');
      t.deepEqual(lp.allGather!.shape, [3 * W]);
      t.deepEqual(lp.allGather!.values, Array.from({ length: W }, (_, q) => arange(3, q + 1)).flat());
      t.is(lp.broadcast!.dtype, 'float16');
      t.deepEqual(lp.broadcast!.values, arange(4, W));
      t.is(lp.reduceScatter!.dtype, 'bfloat16');
      t.deepEqual(lp.reduceScatter!.values, arange(2, 1, 2 * r.rank).map((x) => REDUCE.sum!(W, x)));
    }
  });

  test(`world ${W}${D}: callCounts count each kind of operation`, async (t) => {
    for (const r of await results(t, W)) {
      t.is(r.callCounts.allReduce, 5 + 5 + 1 + 1);
      t.is(r.callCounts.allGather, 4 + 3 + 1 + 1);
      t.is(r.callCounts.reduceScatter, 6 + 6 + 1);
      t.is(r.callCounts.broadcast, W + W + 1);
      t.is(r.callCounts.allToAll, 1 + 1);
      t.is(r.callCounts.barrier, 1);
      t.is(r.callCounts.send, W > 1 ? 3 : 0);
      t.is(r.callCounts.recv, W > 1 ? 3 : 0);
    }
  });
}

test(`world 1${D}: a rank cannot send to itself`, async (t) => {
  const [r] = await results(t, 1);
  t.like(r!.selfSend!, { ok: false, error: { isRangeError: true, message: 'rank 0 cannot send to itself (dst 0)' } });
  t.deepEqual(r!.ring, []);
});

for (const W of [2, 4] as const) {
  test(`world ${W}${D}: send/recv around a ring, three rounds in order`, async (t) => {
    for (const r of await results(t, W)) {
      const left = (r.rank - 1 + W) % W;
      t.deepEqual(r.ring, [0, 1, 2].map((round) => arange(5, 1, left * 10 + round * 100)), `rank ${r.rank}`);
    }
  });
}

test(`world 4${D}: newGroup([0, 2]) reduces over its members; non-members get rank −1 and their ops throw`, async (t) => {
  const res = await results(t, 4);
  for (const r of res) {
    const sub = r.subgroup;
    t.deepEqual(sub.ranks, [0, 2]);
    t.is(sub.size, 2);
    if (r.rank === 0 || r.rank === 2) {
      t.true(sub.isMember);
      t.is(sub.rank, r.rank / 2);
      t.deepEqual(sub.allReduce, arange(4, 1 + 3));
      t.deepEqual(sub.allGather, [...arange(2, 1), ...arange(2, 3)]);
    } else {
      t.false(sub.isMember);
      t.is(sub.rank, -1);
      const msg = `global rank ${r.rank} is not a member of process group [0, 2]`;
      t.like(sub.allReduce as Settled<unknown>, { ok: false, error: { isRangeError: true, message: `allReduce: ${msg}` } });
      t.like(sub.barrier!, { ok: false, error: { isRangeError: true, message: `barrier: ${msg}` } });
      t.like(sub.send!, { ok: false, error: { isRangeError: true, message: `send: ${msg}` } });
    }
    t.deepEqual(sub.worldAfter, arange(3, 10), 'the world group still works after the subgroup');
  }
});

test(`world 2${D}: a one-rank subgroup is the identity for its member, and throws for the other`, async (t) => {
  const [r0, r1] = await results(t, 2);
  t.is(r1!.subgroup.rank, 0);
  t.deepEqual(r1!.subgroup.allReduce, arange(4, 2));
  t.deepEqual(r1!.subgroup.allGather, arange(2, 2));
  t.is(r0!.subgroup.rank, -1);
  t.like(r0!.subgroup.allReduce as Settled<unknown>, {
    ok: false,
    error: { isRangeError: true, message: 'allReduce: global rank 0 is not a member of process group [1]' },
  });
  for (const r of [r0!, r1!]) t.deepEqual(r.subgroup.worldAfter, arange(3, 3));
});

test(`world 1${D}: newGroup([0]) is the identity`, async (t) => {
  const [r] = await results(t, 1);
  t.is(r!.subgroup.rank, 0);
  t.deepEqual(r!.subgroup.allReduce, arange(4));
  t.deepEqual(r!.subgroup.worldAfter, arange(3));
});

}

test('world 2: a timer keeps firing during a 64 MiB all-reduce (the event loop is not blocked)', async (t) => {
  const out = await runRanks<{ ticks: number; ms: number; probes: number[] }>(2, 'dist_collectives', 'eventloop', {
    timeoutMs: LAUNCH_TIMEOUT_MS,
  });
  assertRanksOk(t, out);
  for (const r of out.results) {
    t.deepEqual(r!.probes, [3, 3, 3], 'the all-reduce summed 1 + 2');
    // A 5 ms interval during an op of `ms` milliseconds: a blocked loop would tick at most once.
    t.true(r!.ticks >= 3, `only ${r!.ticks} ticks during a ${r!.ms} ms all-reduce`);
    t.log(`64 MiB all-reduce: ${r!.ms} ms, ${r!.ticks} timer ticks`);
  }
});

interface IoPriorityResult {
  init?: Settled<unknown>;
  added?: { tid: number; policy: number; nice: number }[];
  probes?: number[];
}

// proc(5) policy numbers: 0 SCHED_OTHER, 5 SCHED_IDLE.
for (const [setting, expect] of [
  [undefined, { idle: 0, nice: 0 }],
  ['idle', { idle: 1, nice: 0 }],
  ['12', { idle: 0, nice: 12 }],
  ['option:idle', { idle: 1, nice: 0 }],
  ['option:12', { idle: 0, nice: 12 }],
] as const) {
  test(`world 2: glooIoPriority ${setting ?? '(unset)'}: Gloo's I/O thread alone gets that priority, and the all-reduce is right`, async (t) => {
    if (process.platform !== 'linux') return t.pass('thread priorities are only set on Linux');
    const env: Record<string, string> = {};
    if (setting?.startsWith('option:')) {
      env.TPKIT_TEST_IO_OPTION = setting.slice('option:'.length);
      env.TPKIT_GLOO_IO_PRIORITY = 'normal'; // the option wins over the environment
    } else if (setting !== undefined) env.TPKIT_GLOO_IO_PRIORITY = setting;
    const out = await runRanks<IoPriorityResult>(2, 'dist_collectives', 'iopriority', { timeoutMs: LAUNCH_TIMEOUT_MS, env });
    assertRanksOk(t, out);
    for (const [rank, r] of out.results.entries()) {
      t.deepEqual(r!.probes, [3, 3], `rank ${rank}: 1 + 2 summed`);
      const added = r!.added!;
      t.true(added.length >= 1, `rank ${rank}: no thread was started by initDistributed`);
      t.is(added.filter((p) => p.policy === 5).length, expect.idle, `rank ${rank}: SCHED_IDLE threads ${JSON.stringify(added)}`);
      t.is(added.filter((p) => p.nice === 12).length, expect.nice ? 1 : 0, `rank ${rank}: nice-12 threads ${JSON.stringify(added)}`);
      // every other new thread keeps the process's own priority
      t.is(added.filter((p) => p.policy !== 0 || p.nice !== 0).length, expect.idle + (expect.nice ? 1 : 0), JSON.stringify(added));
    }
  });
}

test('world 2: a bad TPKIT_GLOO_IO_PRIORITY is a RangeError from initDistributed on every rank, before any rank connects', async (t) => {
  const out = await runRanks<IoPriorityResult>(2, 'dist_collectives', 'iopriority', {
    timeoutMs: LAUNCH_TIMEOUT_MS,
    env: { TPKIT_GLOO_IO_PRIORITY: '25' },
  });
  assertRanksOk(t, out);
  for (const r of out.results) {
    const s = r!.init!;
    t.false(s.ok);
    if (!s.ok) {
      t.true(s.error.isRangeError);
      t.is(s.error.message, "TPKIT_GLOO_IO_PRIORITY must be 'normal', 'idle' or a nice value from 1 to 19, got '25'");
      // rejected at once: no rendezvous timeout (15 s) was waited for
      t.true(s.ms < 5_000, `${s.ms} ms`);
    }
  }
});
