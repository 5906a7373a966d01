/**
 * Mixture of experts: uneven all-to-all (test/fixtures/dist_moe.ts `alltoallv`), FusedMoE at EP 1/2/4 against a
 * float64 reference that loops over tokens and their top-k experts, and MixtralForCausalLM against a float64
 * reference of transformers' Mixtral at EP 1/2/4 and TP 2.
 */
import test from 'ava';

import { assertRanksOk, runRanks, sharedRun } from './helpers/run_ranks';
import { type AllToAllVResult, cell, splitRows } from './fixtures/dist_moe';

const WORLD_SIZES = [1, 2, 4];
const LAUNCH_TIMEOUT_MS = 60_000;

const a2av = new Map<number, () => ReturnType<typeof runRanks<AllToAllVResult>>>();
for (const W of WORLD_SIZES) a2av.set(W, sharedRun(() => runRanks<AllToAllVResult>(W, 'dist_moe', 'alltoallv', { timeoutMs: LAUNCH_TIMEOUT_MS })));

for (const W of WORLD_SIZES) {
  test(`world ${W}: allToAll with invalid split sizes throws before communicating`, async (t) => {
    const out = await a2av.get(W)!();
    assertRanksOk(t, out);
    for (const r of out.results) {
      const m = Object.fromEntries(r!.invalid.map((i) => [i.name, i.message]));
      t.is(m.length, `RangeError: Expected ${W} entries (the group size) for inputSplitSizes but received ${W + 1}`);
      t.is(m.negative, 'RangeError: Expected non-negative integer for outputSplitSizes[0] but received -1 of type number');
      t.is(m.fraction, 'RangeError: Expected non-negative integer for outputSplitSizes[0] but received 0.5 of type number');
      t.regex(m.sum!, /^RangeError: allToAll: inputSplitSizes \[.*\] sum to \d+, expected dim 0 of shape \[\d+, 2\] \(\d+\)$/);
      t.is(m.type, 'TypeError: Expected array of non-negative integers for inputSplitSizes but received spoons of type string');
    }
  });

  test(`world ${W}: allToAll with uneven split sizes (zeros included), rows of 3 and 3000 floats`, async (t) => {
    const out = await a2av.get(W)!();
    assertRanksOk(t, out);
    for (const r of out.results) {
      const me = r!.rank;
      const expected: number[] = [];
      let rows = 0;
      for (let i = 0; i < W; i++) {
        for (let row = 0; row < splitRows(i, me); row++) for (let k = 0; k < 3; k++) expected.push(cell(i, me, row, k));
        rows += splitRows(i, me);
      }
      t.deepEqual(r!.received[3]!.shape, [rows, 3]);
      t.deepEqual(r!.received[3]!.values, expected, `rank ${me}`);
      t.deepEqual(r!.received[3000]!.shape, [rows, 3000]);
      t.deepEqual(r!.received[3000]!.values, [1], `rank ${me}: rows of 3000`);
    }
  });

  test(`world ${W}: split sizes that disagree across ranks → COLLECTIVE_MISMATCH on every rank; the group stays usable`, async (t) => {
    const out = await a2av.get(W)!();
    assertRanksOk(t, out);
    for (const r of out.results) {
      t.false(r!.mismatch.ok, `rank ${r!.rank}`);
      t.is(r!.mismatch.code, 'COLLECTIVE_MISMATCH');
      const exp = W === 1 ? 'rank 0 expects 1 rows from rank 0, which sends 0' : `rank 0 expects ${splitRows(W - 1, 0) + 1} rows from rank ${W - 1}, which sends ${splitRows(W - 1, 0)}`;
      t.true(r!.mismatch.message!.includes(exp), r!.mismatch.message);
      const expected: number[] = [];
      for (let i = 0; i < W; i++) expected.push(2 * r!.rank * (i + 1), (2 * r!.rank + 1) * (i + 1));
      t.deepEqual(r!.after, expected);
    }
  });
}
