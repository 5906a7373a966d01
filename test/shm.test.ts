/**
 * Tests of the shared-memory transport of the gloo backend (lib/distributed/shm.ts, native/core/shm_comm.cc) at
 * world sizes 1, 2 and 4, through the dist_shm fixture: every collective against references computed
 * independently, bit-identical outputs with TPKIT_SHM=on and off (Gloo TCP), a SIGKILLed peer (PEER_LOST within
 * 5 s), a missing rank (TIMEOUT naming it), a mismatch (COLLECTIVE_MISMATCH, group still usable), no segment
 * left in /dev/shm, and two jobs at once.
 */
import fs from 'node:fs';

import test from 'ava';

import { shmWanted } from '../lib/distributed/shm';
import { assertRanksOk, runRanks, sharedRun, type RanksOutcome, type Settled } from './helpers/run_ranks';

const LAUNCH_TIMEOUT_MS = 40_000;

interface Check {
  wrong: number;
  first?: [number, number, number];
}
interface AllResult {
  rank: number;
  size: number;
  segments: Array<{ path: string; deleted: boolean }>;
  hashes: Record<string, string>;
  small: Record<string, number[]>;
  checks: Record<string, Check>;
}

test('shmWanted: option over TPKIT_SHM over the default; bad values are rejected', (t) => {
  t.true(shmWanted({ TPKIT_SHM: 'on' }));
  t.true(shmWanted({ TPKIT_SHM: '1' }));
  t.false(shmWanted({ TPKIT_SHM: 'off' }));
  t.false(shmWanted({ TPKIT_SHM: 'on' }, false));
  t.true(shmWanted({ TPKIT_SHM: 'off' }, true));
  t.throws(() => shmWanted({ TPKIT_SHM: 'maybe' }), { instanceOf: RangeError, message: "TPKIT_SHM must be 'on' or 'off', got 'maybe'" });
  t.throws(() => shmWanted({}, 'yes'), { instanceOf: TypeError, message: 'Expected boolean for shm but received yes of type string' });
});

const runs = new Map<string, () => Promise<RanksOutcome<AllResult>>>();
for (const W of [1, 2, 4]) {
  for (const shm of ['on', 'off']) {
    runs.set(`${W}/${shm}`, sharedRun(() => runRanks<AllResult>(W, 'dist_shm', 'all', { timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_SHM: shm } })));
  }
}

async function results(t: Parameters<typeof assertRanksOk>[0], W: number, shm: string): Promise<AllResult[]> {
  const out = await runs.get(`${W}/${shm}`)!();
  assertRanksOk(t, out);
  return out.results as AllResult[];
}

/** arange(6) * (r + 1) reduced over r < W. */
function smallRef(op: string, W: number): number[] {
  return Array.from({ length: 6 }, (_, i) => {
    const xs = Array.from({ length: W }, (_, r) => i * (r + 1));
    const sum = xs.reduce((a, b) => a + b, 0);
    if (op === 'sum') return sum;
    if (op === 'avg') return Math.fround(sum * Math.fround(1 / W));
    if (op === 'max') return Math.max(...xs);
    if (op === 'min') return Math.min(...xs);
    return xs.reduce((a, b) => a * b, 1);
  });
}

for (const W of [1, 2, 4]) {
  test(`world ${W}: every collective over shared memory equals the independent references`, async (t) => {
    const rs = await results(t, W, 'on');
    for (const r of rs) {
      for (const [name, c] of Object.entries(r.checks)) t.is(c.wrong, 0, `rank ${r.rank} ${name}: ${JSON.stringify(c.first)}`);
      for (const op of ['sum', 'avg', 'max', 'min', 'prod']) t.deepEqual(r.small[`allReduce/${op}`], smallRef(op, W), `rank ${r.rank} ${op}`);
      t.deepEqual(r.small.allGather, Array.from({ length: 6 * W }, (_, i) => (i % 6) * (Math.floor(i / 6) + 1)));
    }
  });

  test(`world ${W}: shared memory is used exactly when there are peers, its name is gone once set up, and nothing is left after exit`, async (t) => {
    const rs = await results(t, W, 'on');
    for (const r of rs) {
      if (W === 1) {
        t.deepEqual(r.segments, []);
        continue;
      }
      t.is(r.segments.length, 1, `rank ${r.rank}`);
      t.true(r.segments[0]!.deleted, `rank ${r.rank}: ${r.segments[0]!.path} still has its name`);
      t.false(fs.existsSync(r.segments[0]!.path));
    }
    t.is(new Set(rs.flatMap((r) => r.segments.map((s) => s.path))).size, W === 1 ? 0 : 1);
  });

  test(`world ${W}: TPKIT_SHM=off uses Gloo TCP, with bit-identical results`, async (t) => {
    const on = await results(t, W, 'on');
    const off = await results(t, W, 'off');
    for (let r = 0; r < W; r++) {
      t.deepEqual(off[r]!.segments, []);
      t.deepEqual(on[r]!.hashes, off[r]!.hashes, `rank ${r}`);
      for (const [name, c] of Object.entries(off[r]!.checks)) t.is(c.wrong, 0, `TCP rank ${r} ${name}`);
    }
  });
}

for (const [W, op] of [[2, 'allReduce'], [4, 'allReduce'], [2, 'recv'], [4, 'recv']] as const) {
  const during = op === 'recv' ? 'receives from it' : 'all-reduces';
  test(`world ${W}: a peer SIGKILLed in the middle of ${during} is PEER_LOST naming it within 5 s; no segment is left`, async (t) => {
    const out = await runRanks<{ failure: Settled<unknown>; failedAt: number; segments: AllResult['segments'] }>(W, 'dist_shm', 'kill', {
      timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_SHM: 'on', TPKIT_TEST_KILL_OP: op }, surviveSiblingDeath: true,
    });
    t.false(out.timedOut);
    const victim = W - 1;
    const killed = out.ranks[victim]!.lines.map((l) => { try { return JSON.parse(l) as { killedAt?: number }; } catch { return {}; } }).find((l) => l.killedAt)?.killedAt;
    t.truthy(killed, 'the victim printed when it killed itself');
    for (let r = 0; r < victim; r++) {
      const res = out.results[r];
      t.truthy(res, `rank ${r} reported: ${out.ranks[r]!.stderr.join('\n')}`);
      if (!res) continue;
      t.false(res.failure.ok);
      if (res.failure.ok) continue;
      t.is(res.failure.error.code, 'PEER_LOST', res.failure.error.message);
      t.deepEqual((res.failure.error.details as { lostRanks?: number[] } | undefined)?.lostRanks, [victim], res.failure.error.message);
      t.true(res.failedAt - killed! < 5_000, `detected after ${res.failedAt - killed!} ms`);
      t.is(res.segments.length, 1);
      t.false(fs.existsSync(res.segments[0]!.path));
    }
  });
}

test('world 2: a rank that never arrives makes the others time out naming it', async (t) => {
  const out = await runRanks<{ failure?: Settled<unknown>; segments: AllResult['segments'] }>(2, 'dist_shm', 'skip', { timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_SHM: 'on' } });
  const r0 = out.results[0];
  t.truthy(r0, out.stderr);
  t.is(r0!.segments.length, 1);
  t.false(r0!.failure!.ok);
  if (r0!.failure!.ok) return;
  t.is(r0!.failure!.error.code, 'TIMEOUT', r0!.failure!.error.message);
  t.deepEqual((r0!.failure!.error.details as { missingRanks?: number[] }).missingRanks, [1]);
});

test('world 2: ranks that disagree on a size reject with COLLECTIVE_MISMATCH on every rank; the group stays usable', async (t) => {
  const out = await runRanks<{ failure: Settled<unknown>; after: number[]; segments: AllResult['segments'] }>(2, 'dist_shm', 'mismatch', { timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_SHM: 'on' } });
  assertRanksOk(t, out);
  for (const r of out.results) {
    t.is(r!.segments.length, 1);
    t.false(r!.failure.ok);
    if (!r!.failure.ok) {
      t.is(r!.failure.error.code, 'COLLECTIVE_MISMATCH');
      t.regex(r!.failure.error.message, /rank 0: allReduce\(seq 0, float32, count 8, op sum\); rank 1: allReduce\(seq 0, float32, count 16, op sum\)/);
    }
    t.deepEqual(r!.after, [0, 3, 6, 9, 12, 15]);
  }
});

test('two jobs at once on one host each get their own segment and correct results', async (t) => {
  const [a, b] = await Promise.all([0, 1].map(() => runRanks<AllResult>(2, 'dist_shm', 'all', { timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_SHM: 'on' } })));
  for (const out of [a!, b!]) {
    assertRanksOk(t, out);
    for (const r of out.results) for (const [name, c] of Object.entries(r!.checks)) t.is(c.wrong, 0, name);
  }
  t.not(a!.results[0]!.segments[0]!.path, b!.results[0]!.segments[0]!.path);
});

for (const W of [2, 4]) {
  test(`world ${W}: a rank late by 0, 200 µs or 5 ms at every small collective (completed inline, polled, or by the thread) gets exact results`, async (t) => {
    const out = await runRanks<{ wrongs: Record<string, number>; segments: AllResult['segments'] }>(W, 'dist_shm', 'late', { timeoutMs: LAUNCH_TIMEOUT_MS, env: { TPKIT_SHM: 'on' } });
    assertRanksOk(t, out);
    for (const r of out.results) {
      t.is(r!.segments.length, 1, 'over shared memory');
      t.deepEqual(r!.wrongs, { 'late 0 us': 0, 'late 200 us': 0, 'late 5000 us': 0 });
    }
  });
}
