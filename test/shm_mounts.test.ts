/**
 * The shared-memory transport against a /dev/shm too small for its segment (as Docker's default 64 MB can be
 * for large groups): simulated with a private mount namespace holding a 1 MiB tmpfs on /dev/shm. The job must
 * fall back to Gloo TCP with one warning per rank naming the segment's size and TPKIT_SHM, compute the same
 * results, and leave nothing in /dev/shm.
 *
 * Needs root and util-linux's `unshare`; skipped with the reason otherwise.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import test from 'ava';

import { spawnCollect } from './helpers/spawn_collect';

const CLI = path.join(__dirname, '..', 'lib', 'cli.js');
const FIXTURE = path.join(__dirname, 'fixtures', 'launch_hosts.js');

function skipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (a private mount namespace with its own /dev/shm)';
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /dev/shm'], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot mount a tmpfs in a private mount namespace (${`${r.stderr ?? ''}${r.error?.message ?? ''}`.trim()})`;
  return null;
}

/** Runs `script` in a private mount namespace with `"$@"` = a 2-rank `tpkit launch` of the fixture. */
async function launchInPrivateShm(script: string): Promise<{ code: number | null; out: string }> {
  const r = await spawnCollect('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', process.execPath, CLI, 'launch', '--nproc-per-node', '2', FIXTURE], {
    env: { ...process.env, TPKIT_SHM: '' }, timeoutMs: 60_000,
  });
  return { code: r.code, out: r.stdout + r.stderr };
}

const why = skipReason();
const shmTest = why === null ? test : test.skip;

shmTest(`a 1 MiB /dev/shm: Gloo TCP with one warning per rank naming the size and TPKIT_SHM, same results, nothing left${why === null ? '' : ` (skipped: ${why})`}`, async (t) => {
  // After the job, the same namespace lists what is left in its /dev/shm.
  const script = 'mount -t tmpfs -o size=1m tmpfs /dev/shm && "$@"; code=$?; echo "LEFT[$(ls -A /dev/shm | tr "\\n" " ")]"; exit $code';
  const { code, out } = await launchInPrivateShm(script);
  t.is(code, 0, out);
  const results = out.split('\n').filter((l) => l.includes('{"rank"')).map((l) => JSON.parse(l.slice(l.indexOf('{'))) as { rank: number; sum: number[]; gathered: number[]; segments: number });
  t.deepEqual(results.map((r) => r.rank).sort(), [0, 1]);
  for (const r of results) {
    t.deepEqual(r.sum, [0, 3, 6, 9]);
    t.deepEqual(r.gathered, [0, 1]);
    t.is(r.segments, 0, 'no segment is mapped: the group fell back to Gloo TCP');
  }
  const warnings = out.split('\n').filter((l) => l.includes('[TPKIT_SHM_FALLBACK]'));
  t.is(warnings.length, 2, out);
  for (const w of warnings) {
    t.regex(w, /shared-memory collectives are off for this group, using Gloo TCP: cannot reserve the space of shared-memory segment \/dev\/shm\/tpkit-\S+ \(\d+ bytes\): No space left on device; \/dev\/shm\/ has 1048576 bytes free/);
    t.true(w.includes('TPKIT_SHM=off'), w);
  }
  t.true(out.includes('LEFT[]'), `nothing left in /dev/shm: ${/LEFT\[.*\]/.exec(out)?.[0]}`);
});

shmTest(`a segment name left by a creator that died during setup is removed by the next job; live and foreign ones stay${why === null ? '' : ` (skipped: ${why})`}`, async (t) => {
  // In a private 64 MiB /dev/shm: a name whose creator pid has exited (stale), one of this shell (alive), one of
  // another pid namespace (cannot be checked: kept). Then a 2-rank job, then what is left.
  const script = [
    'mount -t tmpfs -o size=64m tmpfs /dev/shm || exit 9',
    'uid=$(id -u); ns=$(stat -L -c %i /proc/self/ns/pid)',
    'sh -c "exit 0" & dead=$!; wait $dead',
    'touch /dev/shm/tpkit-$uid-$ns-$dead-00112233aabbccdd /dev/shm/tpkit-$uid-$ns-$$-0123456789abcdef /dev/shm/tpkit-$uid-1-$dead-fedcba9876543210',
    '"$@"; code=$?',
    'echo "LEFT[$(ls -A /dev/shm | sed -e "s/-$uid-$ns-$$-/-UID-NS-LIVE-/" -e "s/-$uid-1-$dead-/-UID-1-DEAD-/" | tr "\\n" " ")]"; exit $code',
  ].join('\n');
  const { code, out } = await launchInPrivateShm(script);
  t.is(code, 0, out);
  const results = out.split('\n').filter((l) => l.includes('{"rank"')).map((l) => JSON.parse(l.slice(l.indexOf('{'))) as { sum: number[]; segments: number });
  t.is(results.length, 2, out);
  for (const r of results) {
    t.deepEqual(r.sum, [0, 3, 6, 9]);
    t.is(r.segments, 1, 'the world group used shared memory');
  }
  const left = /LEFT\[(.*)\]/.exec(out)?.[1]?.trim().split(' ').sort();
  t.deepEqual(left, ['tpkit-UID-1-DEAD-fedcba9876543210', 'tpkit-UID-NS-LIVE-0123456789abcdef'], out);
});
