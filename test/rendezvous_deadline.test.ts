/**
 * Issue 14 item 5: every wait of the rendezvous ends within its stated timeout. A rank that publishes its Gloo
 * pair addresses and then freezes (SIGSTOP) or dies (SIGKILL) before connecting must not hold the others past
 * their join timeout (Gloo's TCP pair waits 5 × the timeout for a connection).
 */
import test from 'ava';

import { runRanks, type RanksOutcome, type Settled } from './helpers/run_ranks';

delete process.env.TPKIT_TIMEOUT_MS;

const FIXTURE = 'rendezvous_deadline';
/** The fixture's join timeout. */
const TIMEOUT_MS = 3000;

function cleanup(out: RanksOutcome<unknown>, victim: number): void {
  const pid = out.ranks[victim]?.pid;
  if (pid === undefined) return;
  for (const sig of ['SIGKILL', 'SIGCONT'] as const) {
    try {
      process.kill(pid, sig);
    } catch {
      // gone
    }
  }
}

const CASES = [['stop', 2, 1], ['stop', 3, 1], ['stop', 3, 0], ['kill', 2, 1], ['kill', 3, 1]] as const;

for (const [mode, world, victim] of CASES) {
  const what = mode === 'stop' ? 'freezes (SIGSTOP)' : 'dies (SIGKILL)';
  const code = mode === 'stop' ? 'TIMEOUT' : 'PEER_LOST';
  test.serial(`world ${world}: rank ${victim} ${what} after publishing its address: the others reject with ${code} within the timeout and exit`, async (t) => {
    const out = await runRanks<Settled<void>>(world, FIXTURE, 'freezeAfterPublish', {
      timeoutMs: 40_000, args: [mode, String(victim)], graceMs: 20_000, surviveSiblingDeath: true,
    });
    t.teardown(() => cleanup(out, victim));
    t.false(out.timedOut, 'the launch outlived its bound');
    for (let r = 0; r < world; r++) {
      if (r === victim) continue;
      const res = out.results[r];
      if (!res || res.ok) {
        t.fail(`rank ${r}: ${JSON.stringify(res)}`);
        continue;
      }
      const e = res.error;
      t.is(e.code, code, e.message);
      const native = `rendezvous of rank ${r} of ${world} (timed out after ${TIMEOUT_MS} ms (connecting to rank \\d+ \\(not connected to [^)]*\\)|waiting for every rank to finish connecting \\(this rank is connected to all\\))|lost a peer)`;
      const head = mode === 'stop'
        // The frozen rank, and at 3 ranks possibly also a rank still blocked connecting to it (seen in CI: "ranks [1, 2]").
        ? `initDistributed: rank ${r} of ${world} waited ${TIMEOUT_MS} ms for (rank ${victim}|ranks \\[(\\d+, )*${victim}(, \\d+)*\\]) to connect \\(every rank published its address\\): `
        : `initDistributed: rank ${r} of ${world} lost rank ${victim} during the rendezvous \\(rank ${victim} lost: connection closed without goodbye\\): `;
      t.regex(e.message, new RegExp(`^${head}${native}`), `rank ${r}`);
      // Before: up to 5 timeouts (Gloo's pair connect wait), 15.0–15.9 s here; after, 3.04–3.26 s on this machine.
      // The margin covers the join (store connection, addon loading) on a loaded 2-core CI machine under coverage,
      // where joining alone was seen to take 6 s; it stays well below the 15 s this test guards against.
      t.true(res.ms < TIMEOUT_MS + 6000, `rank ${r} settled after ${res.ms} ms`);
      if (mode === 'stop') t.true(res.ms >= TIMEOUT_MS, `rank ${r} settled after ${res.ms} ms, before its timeout`);
      const rank = out.ranks[r]!;
      t.is(rank.exit?.code, 0, `rank ${r} exit`);
      if (rank.exit && rank.doneAt !== undefined) t.true(rank.exit.at - rank.doneAt <= 5000, `rank ${r} took ${rank.exit.at - rank.doneAt} ms to exit`);
    }
  });
}
