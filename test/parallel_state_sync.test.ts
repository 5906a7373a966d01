/**
 * `parallelState.initializeModelParallel` validates and publishes synchronously (issue 14 item 9): without
 * `await`, the state is visible at once and a layer built before the Promise settles shards for the real TP
 * size (it used to see TP 1 and load the full weight on every rank).
 */
import test from 'ava';

import { assertRanksOk, runRanks } from './helpers/run_ranks';

interface Result {
  visibleAtOnce: boolean;
  tpSizeAtOnce: number;
  layerTpSize: number;
  weightShape: number[];
  localRows: number;
  out: number[];
}

for (const w of [1, 2, 4]) {
  test(`world ${w}: a layer built before initializeModelParallel's Promise settles shards for TP ${w} and computes right`, async (t) => {
    const out = await runRanks<Result>(w, 'dist_ps_sync', 'unawaited', { timeoutMs: 45_000 });
    assertRanksOk(t, out);
    for (const r of out.results) {
      t.true(r!.visibleAtOnce);
      t.is(r!.tpSizeAtOnce, w);
      t.is(r!.layerTpSize, w);
      t.deepEqual(r!.weightShape, [8 / w, 4]);
      t.deepEqual(r!.out, [0, 4, 8, 12, 16, 20, 24, 28]);
    }
  });
}
