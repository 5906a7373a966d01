/**
 * Issue 14 (hardening) on 2 ranks of the gloo backend: faults that crashed or hung the process before, each a
 * launch of the hardening_dist fixture with a hard time bound.
 */
import test from 'ava';

import { arange } from './helpers/reference';
import { assertRanksOk, runRanks, type ErrorInfo, type RanksOutcome } from './helpers/run_ranks';

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
      t.regex(e.message, /operations or element counts differ across ranks \(TPKIT_CHECK=off\): rank 0: [a-zA-Z]+ of \d+ elements; rank 1: [a-zA-Z]+ of \d+ elements$/, name);
      t.deepEqual(c.after, SUM2, `${name}: the group is usable afterwards`);
    }
    t.is(res!.broken, null);
  });
});

for (const order of ['recvFirst', 'sendFirst', 'mixed']) {
  test.serial(`world 2: 8 posted receives and 8 sends per rank (${order}) all complete, none held by the libuv pool`, async (t) => {
    const out = await runRanks<{ ms: number; failures: unknown[]; received: number[][]; sum: number[] }>(2, FIXTURE, 'p2pMany', {
      timeoutMs: 30_000, args: [order],
    });
    assertRanksOk(t, out);
    out.results.forEach((res, rank) => {
      t.deepEqual(res!.failures, []);
      const peer = 1 - rank;
      t.deepEqual(res!.received, arange(8).map((i) => arange(3).map((k) => 100 * peer + 10 * i + k)));
      t.true(res!.ms < 5000, `rank ${rank} took ${res!.ms} ms`);
      t.deepEqual(res!.sum, SUM2);
    });
  });
}

test.serial('world 2: a 4×4 matmul stays fast while 4 receives wait for their peer', async (t) => {
  const out = await runRanks<{ matmulMs: number; first: number; received: number[][] }>(2, FIXTURE, 'p2pMatmul', { timeoutMs: 30_000 });
  assertRanksOk(t, out);
  const r1 = out.results[1]!;
  t.is(r1.first, 56);
  t.deepEqual(r1.received, [[0, 1], [1, 2], [2, 3], [3, 4]]);
  t.true(r1.matmulMs < 500, `the matmul took ${r1.matmulMs} ms`);
});

/** Asserts every rank exited within `boundMs` of its scenario's end. */
function exitedPromptly(t: import('ava').ExecutionContext, out: RanksOutcome<unknown>, boundMs = 2000): void {
  out.ranks.forEach((r, rank) => {
    t.truthy(r.exit, `rank ${rank} reported no exit`);
    if (r.exit && r.doneAt !== undefined) t.true(r.exit.at - r.doneAt <= boundMs, `rank ${rank} took ${r.exit.at - r.doneAt} ms to exit`);
  });
}

test.serial('world 2: destroy() with a recv pending rejects it with GROUP_DESTROYED and the process exits promptly', async (t) => {
  const out = await runRanks<{ recv?: ErrorInfo }>(2, FIXTURE, 'destroyRecv', { timeoutMs: 20_000 });
  assertRanksOk(t, out);
  t.is(out.results[1]!.recv!.code, 'GROUP_DESTROYED');
  exitedPromptly(t, out);
  t.true(out.elapsedMs < 10_000, `the launch took ${out.elapsedMs} ms`);
});

test.serial('world 2: collectives whose result depends on the shape reject a shape mismatch of equal element count', async (t) => {
  const out = await runRanks<Record<string, { result: ErrorInfo | string; after: number[] }>>(2, FIXTURE, 'shapeMismatch', { timeoutMs: 30_000 });
  assertRanksOk(t, out);
  const expect: Record<string, RegExp | 'resolved'> = {
    allGatherLast: /rank 0: allGather\(seq 0, float32, count 6, dim 1, shape \[2, 3\]\); rank 1: allGather\(seq 0, float32, count 6, dim 1, shape \[3, 2\]\)$/,
    allGatherFirst: /rank 0: allGather\(seq 2, float32, count 6, dim 0, shape \[2, 3\]\); rank 1: allGather\(seq 2, float32, count 6, dim 0, shape \[3, 2\]\)$/,
    allGatherLastLarge: /shape \[2000, 6\]\); rank 1: .*shape \[4000, 3\]\)$/,
    reduceScatterFirst: /rank 0: reduceScatter\(.*dim 0, shape \[4, 3\]\); rank 1: reduceScatter\(.*dim 0, shape \[2, 6\]\)$/,
    reduceScatterLast: /dim 1, shape \[3, 4\]\); rank 1: .*dim 1, shape \[6, 2\]\)$/,
    allToAll: /rank 0: allToAll\(.*shape \[4, 3\]\); rank 1: allToAll\(.*shape \[2, 6\]\)$/,
    allReduce: 'resolved',
    broadcast: 'resolved',
  };
  out.results.forEach((res, rank) => {
    for (const [name, want] of Object.entries(expect)) {
      const c = res![name]!;
      if (want === 'resolved') {
        t.is(c.result, 'resolved', `${name} on rank ${rank}`);
      } else {
        const e = c.result as ErrorInfo;
        t.is(e.code, 'COLLECTIVE_MISMATCH', `${name} on rank ${rank}: ${JSON.stringify(e)}`);
        t.regex(e.message ?? '', want, name);
      }
      t.deepEqual(c.after, SUM2, `${name}: the group is usable afterwards`);
    }
  });
});

test.serial('world 2: newGroup with the ranks in another order on one rank names the disagreement, not a timeout', async (t) => {
  const out = await runRanks<{ result: ErrorInfo; ms: number; sum: number[] }>(2, FIXTURE, 'newGroupOrder', { timeoutMs: 30_000 });
  assertRanksOk(t, out);
  out.results.forEach((res, rank) => {
    t.is(res!.result.code, 'COLLECTIVE_MISMATCH', JSON.stringify(res!.result));
    const mine = rank === 0 ? '[0, 1]' : '[1, 0]';
    const theirs = rank === 0 ? '[1, 0]' : '[0, 1]';
    t.true(res!.result.message.endsWith(`: newGroup(${mine}) on global rank ${rank}: rank ${1 - rank} called newGroup(${theirs}) for the same group `
      + '(every rank of the parent must create its groups with the same ranks, in the same order)'), res!.result.message);
    t.true(res!.ms < 3000, `took ${res!.ms} ms`);
    t.deepEqual(res!.sum, SUM2);
  });
});
