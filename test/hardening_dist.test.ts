/**
 * Issue 14 (hardening) on 2 ranks of the gloo backend: faults that crashed or hung the process before, each a
 * launch of the hardening_dist fixture with a hard time bound.
 */
import test from 'ava';

import { arange } from './helpers/reference';
import { assertRanksOk, runRanks, type ErrorInfo } from './helpers/run_ranks';

delete process.env.TPKIT_TIMEOUT_MS;
delete process.env.TPKIT_CHECK;

const FIXTURE = 'hardening_dist';
const SUM2 = arange(6, 3);

test.serial('world 2, TPKIT_CHECK=off: collectives of different sizes reject on both ranks and the process survives', async (t) => {
  const out = await runRanks<Record<string, unknown>>(2, FIXTURE, 'checkoffMismatch', { timeoutMs: 40_000, env: { TPKIT_CHECK: 'off' } });
  assertRanksOk(t, out);
  const names = ['allReduce10vs20', 'allReduce5000vs10000', 'allReduce10vs100000', 'allGather4vs8', 'allGather8000vs16000',
    'broadcast3vs30000', 'reduceScatter4vs8', 'allToAll4vs8000'];
  out.results.forEach((res, rank) => {
    t.is(res!.env, 'off');
    for (const name of names) {
      const c = res![name] as { result: ErrorInfo | string; after: number[] };
      t.not(c.result, 'resolved', `${name} on rank ${rank}`);
      const e = c.result as ErrorInfo;
      t.is(e.code, 'COLLECTIVE_MISMATCH', `${name} on rank ${rank}: ${e.message}`);
      t.regex(e.message, /operations or element counts differ across ranks \(TPKIT_CHECK=off\): rank 0: [a-z_]+ of \d+ elements; rank 1: [a-z_]+ of \d+ elements$/, name);
      t.deepEqual(c.after, SUM2, `${name}: the group is usable afterwards`);
    }
    t.is(res!.broken, null);
  });
});
