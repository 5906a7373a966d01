/**
 * parallelState: group layouts (vLLM's TP-fastest order), pipeline neighbours, the TP collectives, and every
 * error message.
 */
import test from 'ava';
import { parallelState as ps, TpkitError } from '../lib';
import { assertRanksOk, runRanks } from './helpers/run_ranks';
import type { Settled } from './helpers/run_ranks';

test('modelParallelLayout: vLLM example world 8, tp 2, pp 2', (t) => {
  const l = ps.modelParallelLayout(8, 2, 2);
  t.deepEqual(l.tensorParallelGroups, [[0, 1], [2, 3], [4, 5], [6, 7]]);
  t.deepEqual(l.pipelineParallelGroups, [[0, 2], [1, 3], [4, 6], [5, 7]]);
  t.deepEqual(l.dataParallelGroups, [[0, 4], [1, 5], [2, 6], [3, 7]]);
});

const LAYOUTS: Array<[number, number, number, ps.ModelParallelLayout]> = [
  [4, 2, 2, { tensorParallelGroups: [[0, 1], [2, 3]], pipelineParallelGroups: [[0, 2], [1, 3]], dataParallelGroups: [[0], [1], [2], [3]] }],
  [4, 4, 1, { tensorParallelGroups: [[0, 1, 2, 3]], pipelineParallelGroups: [[0], [1], [2], [3]], dataParallelGroups: [[0], [1], [2], [3]] }],
  [4, 1, 4, { tensorParallelGroups: [[0], [1], [2], [3]], pipelineParallelGroups: [[0, 1, 2, 3]], dataParallelGroups: [[0], [1], [2], [3]] }],
  [2, 2, 1, { tensorParallelGroups: [[0, 1]], pipelineParallelGroups: [[0], [1]], dataParallelGroups: [[0], [1]] }],
  [4, 2, 1, { tensorParallelGroups: [[0, 1], [2, 3]], pipelineParallelGroups: [[0], [1], [2], [3]], dataParallelGroups: [[0, 2], [1, 3]] }],
];
for (const [w, tp, pp, expected] of LAYOUTS) {
  test(`modelParallelLayout(${w}, ${tp}, ${pp})`, (t) => {
    t.deepEqual(ps.modelParallelLayout(w, tp, pp), expected);
  });
}

test('modelParallelLayout errors name the numbers', (t) => {
  t.throws(() => ps.modelParallelLayout(6, 4), { instanceOf: RangeError, message: 'world size 6 is not divisible by tensorParallelSize 4 × pipelineParallelSize 1 = 4' });
  t.throws(() => ps.modelParallelLayout(8, 2, 3), { instanceOf: RangeError, message: 'world size 8 is not divisible by tensorParallelSize 2 × pipelineParallelSize 3 = 6' });
  t.throws(() => ps.modelParallelLayout(4, 0), { instanceOf: RangeError, message: 'Expected positive integer for tensorParallelSize but received 0 of type number' });
  t.throws(() => ps.modelParallelLayout(4, 2, 1.5), { instanceOf: RangeError, message: 'Expected positive integer for pipelineParallelSize but received 1.5 of type number' });
  t.throws(() => ps.modelParallelLayout(4, '2' as never), { instanceOf: TypeError, message: 'Expected positive integer for tensorParallelSize but received 2 of type string' });
});

test('accessors before initialization throw NOT_INITIALIZED', async (t) => {
  t.false(ps.modelParallelIsInitialized());
  for (const f of [ps.getTensorModelParallelGroup, ps.getTensorModelParallelRank, ps.getPipelineModelParallelGroup, ps.getDataParallelGroup, ps.getPipelineModelParallelNextRank]) {
    const e = t.throws(() => f(), { instanceOf: TpkitError });
    t.is(e?.code, 'NOT_INITIALIZED');
  }
  t.throws(() => ps.getTensorModelParallelWorldSize(), {
    message: 'tensor model parallel group is not initialized; call parallelState.initializeModelParallel() first',
  });
  t.throws(() => ps.initializeModelParallel({ tensorParallelSize: 1 }), {
    instanceOf: TpkitError,
    message: 'initializeModelParallel: no world group; call initDistributed() first',
  });
  // Bad input throws synchronously, before anything is sent (not a rejected Promise).
  t.throws(() => ps.initializeModelParallel({ tensorParallelSize: -1 }), { instanceOf: RangeError });
  t.throws(() => ps.initializeModelParallel(null as never), { instanceOf: TypeError, message: 'Expected object for options but received null' });
  ps.destroyModelParallel(); // harmless when not initialized
});

type StateResult = {
  before: Settled<unknown>;
  twice: Settled<unknown>;
  after: Settled<unknown>;
  initialized: boolean;
  tp: { ranks: number[]; rank: number; size: number };
  pp: { ranks: number[]; rank: number; size: number };
  dp: { ranks: number[]; rank: number; size: number };
  first: number; last: number; next: number; prev: number; isFirst: boolean; isLast: boolean;
  tpSum: number[]; tpGathered: number[];
};

for (const [w, tp, pp] of [[4, 2, 2], [4, 4, 1], [4, 1, 4], [2, 2, 1]] as const) {
  test(`initializeModelParallel at world ${w}, tp ${tp}, pp ${pp}: groups, neighbours, TP collectives`, async (t) => {
    const out = await runRanks<StateResult>(w, 'dist_layers', 'state', { args: [String(tp), String(pp)], timeoutMs: 45_000 });
    assertRanksOk(t, out);
    const layout = ps.modelParallelLayout(w, tp, pp);
    out.results.forEach((res, rank) => {
      const r = res!;
      const tpRanks = layout.tensorParallelGroups.find((g) => g.includes(rank))!;
      const ppRanks = layout.pipelineParallelGroups.find((g) => g.includes(rank))!;
      const dpRanks = layout.dataParallelGroups.find((g) => g.includes(rank))!;
      t.deepEqual(r.tp, { ranks: tpRanks, rank: tpRanks.indexOf(rank), size: tp });
      t.deepEqual(r.pp, { ranks: ppRanks, rank: ppRanks.indexOf(rank), size: pp });
      t.deepEqual(r.dp, { ranks: dpRanks, rank: dpRanks.indexOf(rank), size: w / (tp * pp) });
      const s = ppRanks.indexOf(rank);
      t.is(r.first, ppRanks[0]);
      t.is(r.last, ppRanks[pp - 1]);
      t.is(r.next, ppRanks[(s + 1) % pp]);
      t.is(r.prev, ppRanks[(s - 1 + pp) % pp]);
      t.is(r.isFirst, s === 0);
      t.is(r.isLast, s === pp - 1);
      t.deepEqual(r.tpSum, [tpRanks.reduce((a, g) => a + g + 1, 0)], 'tensorModelParallelAllReduce sums over the TP group');
      t.deepEqual(r.tpGathered, tpRanks, 'tensorModelParallelAllGather concatenates in TP rank order');
      t.like(r.before, { ok: false, error: { code: 'NOT_INITIALIZED' } });
      t.false(r.twice.ok);
      if (!r.twice.ok) {
        t.is(r.twice.error.code, 'ALREADY_INITIALIZED');
        t.is(r.twice.error.message, `model parallel is already initialized with tensorParallelSize ${tp}, pipelineParallelSize ${pp}; requested ${tp === w ? 1 : w}, 1 (call destroyModelParallel() first)`);
      }
      t.like(r.after, { ok: false, error: { code: 'NOT_INITIALIZED' } });
      t.false(r.initialized);
    });
  });
}
