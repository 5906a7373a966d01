/**
 * The expert-parallel group of parallelState (lib/parallel_state.ts): the pure layout (vLLM's: the TP × DP
 * ranks of a pipeline stage unless `expertParallelSize` says otherwise), its errors, and the groups on 4 ranks
 * (test/fixtures/dist_moe.ts `groups`).
 */
import test from 'ava';

import * as ps from '../lib/parallel_state';
import { TpkitError } from '../lib/errors';
import { assertRanksOk, runRanks } from './helpers/run_ranks';
import type { GroupsResult } from './fixtures/dist_moe';

test('expertParallelLayout errors name the numbers', (t) => {
  t.throws(() => ps.expertParallelLayout(8, 2, 2, 3), {
    instanceOf: RangeError,
    message: 'expertParallelSize 3 does not divide tensorParallelSize 2 × data parallel size 2 = 4 (the ranks of a pipeline stage)',
  });
  t.throws(() => ps.expertParallelLayout(4, 1, 1, 8), {
    instanceOf: RangeError,
    message: 'expertParallelSize 8 does not divide tensorParallelSize 1 × data parallel size 4 = 4 (the ranks of a pipeline stage)',
  });
  t.throws(() => ps.expertParallelLayout(4, 1, 1, 0), { instanceOf: RangeError, message: 'Expected positive integer for expertParallelSize but received 0 of type number' });
  t.throws(() => ps.expertParallelLayout(4, 1, 1, '2' as never), { instanceOf: TypeError, message: 'Expected positive integer for expertParallelSize but received 2 of type string' });
  t.throws(() => ps.expertParallelLayout(6, 4), { instanceOf: RangeError, message: 'world size 6 is not divisible by tensorParallelSize 4 × pipelineParallelSize 1 = 4' });
});

test('expertParallelLayout: vLLM layout world 8, tp 2, pp 2 (EP = TP × DP of a stage) and explicit sizes', (t) => {
  t.deepEqual(ps.expertParallelLayout(8, 2, 2), [[0, 1, 4, 5], [2, 3, 6, 7]]);
  t.deepEqual(ps.expertParallelLayout(8, 2, 2, 2), [[0, 1], [4, 5], [2, 3], [6, 7]]);
  t.deepEqual(ps.expertParallelLayout(8, 2, 2, 1), [[0], [1], [4], [5], [2], [3], [6], [7]]);
  t.deepEqual(ps.expertParallelLayout(8, 1, 1), [[0, 1, 2, 3, 4, 5, 6, 7]]);
  t.deepEqual(ps.expertParallelLayout(8, 1, 1, 4), [[0, 1, 2, 3], [4, 5, 6, 7]]);
  t.deepEqual(ps.expertParallelLayout(4, 2, 1), [[0, 1, 2, 3]]);
  t.deepEqual(ps.expertParallelLayout(1, 1), [[0]]);
});

test('EP accessors before initialization throw NOT_INITIALIZED', async (t) => {
  for (const f of [ps.getExpertModelParallelGroup, ps.getExpertModelParallelRank, ps.getExpertModelParallelWorldSize]) {
    const e = t.throws(() => f(), { instanceOf: TpkitError });
    t.is(e?.code, 'NOT_INITIALIZED');
  }
  t.throws(() => ps.getExpertModelParallelWorldSize(), {
    message: 'expert model parallel group is not initialized; call parallelState.initializeModelParallel() first',
  });
  t.throws(() => ps.initializeModelParallel({ tensorParallelSize: 1, expertParallelSize: 0 }), {
    instanceOf: RangeError, message: 'Expected positive integer for expertParallelSize but received 0 of type number',
  });
});

// [tp, pp, ep ('-': default), which existing group the EP group is (null: its own)]
const CASES: Array<[number, number, string, string | null]> = [
  [1, 1, '-', 'dp'], // the DP group then holds every rank
  [1, 1, '2', null],
  [2, 1, '2', 'tp'],
  [2, 2, '-', 'tp'],
  [1, 2, '-', 'dp'],
  [1, 1, '1', null],
];

for (const [tp, pp, ep, shared] of CASES) {
  test(`initializeModelParallel on 4 ranks, tp ${tp}, pp ${pp}, expertParallelSize ${ep === '-' ? 'default' : ep}: EP groups and an all-reduce over them`, async (t) => {
    const out = await runRanks<GroupsResult>(4, 'dist_moe', 'groups', { args: [String(tp), String(pp), ep], timeoutMs: 45_000 });
    assertRanksOk(t, out);
    const groups = ps.expertParallelLayout(4, tp, pp, ep === '-' ? undefined : Number(ep));
    out.results.forEach((res, rank) => {
      const ranks = groups.find((g) => g.includes(rank))!;
      t.deepEqual(res!.ep, { ranks, rank: ranks.indexOf(rank), size: ranks.length });
      t.is(res!.sharedWith, ranks.length === 1 ? res!.sharedWith : shared, `rank ${rank}`);
      t.is(res!.epSum, ranks.reduce((a, r) => a + r + 1, 0));
    });
  });
}
