/**
 * Tests of the Open MPI peer of `tpkit bench collectives` (bench/peers/mpi.ts, bench/native/mpi_bench.cc):
 * its skip reasons and launcher flags first, then short `--peers mpi` sweeps at 2 ranks (all_reduce, in
 * place, and all_gather, out of place) whose peer cells must check clean (#wrong 0) and parse from both the
 * JSON and the side-by-side table. The sweeps are skipped, with the reason logged, where Open MPI or the
 * built peer is missing.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { peerMismatch } from '../bench/collectives_bench';
import { MPI_PEER_OPS, mpiAvailability, mpirunArgs, mpirunEnv, runMpiPeer } from '../bench/peers/mpi';
import { ensureNativePeer } from '../bench/peers/native';
import { COLLECTIVES_SCHEMA, validate, type CollectivesResult } from '../bench/schema';
import { runBench } from './helpers/spawn_collect';


const SWEEP = { worldSize: 2, minBytes: 4096, maxBytes: 65536, stepFactor: 4, iters: 3, warmup: 1 };

test('the peer is skipped with the reason when mpirun cannot be started', async (t) => {
  const r = await runMpiPeer({ ...SWEEP, op: 'all_reduce', root: 0, env: { ...process.env, TPKIT_BENCH_MPIRUN: 'tpkit-no-such-mpirun' } });
  t.is(r.status.status, 'skipped');
  t.regex(r.status.reason!, /^Open MPI is not installed: tpkit-no-such-mpirun cannot be started \(.*ENOENT.*\); install it with apt-get install openmpi-bin libopenmpi-dev$/);
  t.is(r.cells.size, 0);
});

test('the peer is skipped for the collectives and dtypes it does not run', async (t) => {
  const r = await runMpiPeer({ ...SWEEP, op: 'alltoall', root: 0 });
  t.deepEqual(r.status, { status: 'skipped', reason: 'the MPI peer runs all_reduce, all_gather, reduce_scatter, broadcast only (this run: alltoall)' });
  const meta = { op: 'sendrecv', dtype: 'float32', redop: 'sum' } as CollectivesResult['meta'];
  t.is(peerMismatch('mpi', meta), 'peer mpi runs all_reduce, all_gather, reduce_scatter, broadcast only (this run: sendrecv)');
  t.is(peerMismatch('native', { ...meta, op: 'all_gather' }), 'peer native runs all_reduce only (this run: all_gather)');
  t.is(peerMismatch('mpi', { ...meta, op: 'broadcast', dtype: 'bfloat16' }), 'the peers run float32 only (this run: bfloat16)');
  t.is(peerMismatch('mpi', { ...meta, op: 'reduce_scatter', redop: 'max' }), 'the peers run sum only (this run: max)');
  for (const op of MPI_PEER_OPS) t.is(peerMismatch('mpi', { ...meta, op }), null, op);
});

test('mpirun flags: shared memory only, unbound, oversubscribed; root allowed only as root', (t) => {
  t.deepEqual(mpirunArgs(4, { uid: 1000, timeoutS: 30 }), [
    '-np', '4', '--oversubscribe', '--bind-to', 'none', '--mca', 'pml', 'ob1', '--mca', 'btl', 'self,vader', '--timeout', '30',
  ]);
  t.true(mpirunArgs(2, { uid: 0, timeoutS: 30 }).includes('--allow-run-as-root'));
  const outside = { PATH: '/bin', OMPI_MCA_btl_vader_single_copy_mechanism: 'none' };
  t.is(mpirunEnv(outside), outside, 'outside an MPI job the environment is unchanged');
  t.deepEqual(mpirunEnv({ PATH: '/bin', OMPI_COMM_WORLD_SIZE: '2', PMIX_RANK: '0', PMI_FD: '3' }), { PATH: '/bin' });
});

for (const op of ['all_reduce', 'all_gather'] as const) {
  test.serial(`--peers mpi at 2 ranks, ${op}: the peer ran, checks clean, JSON and table parse`, async (t) => {
    const avail = await mpiAvailability();
    if (!avail.ok) {
      t.log(`skipped: ${avail.reason}`);
      return t.pass();
    }
    const built = await ensureNativePeer('tpkit_bench_mpi');
    if ('reason' in built) {
      t.log(`skipped: ${built.reason}`);
      return t.pass();
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-bench-mpi-test-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const json = path.join(dir, `${op}.json`);
    const r = await runBench(['collectives', '--op', op, '-b', '4K', '-e', '64K', '-f', '4', '-n', '3', '-w', '1', '--nproc', '2', '--peers', 'mpi', '--no-model', '--json', json]);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /# peer mpi: Open MPI v\S+ \(MPI \d\.\d\) {2}\(mpirun -np 2 .*--mca btl self,vader .*tpkit_bench_mpi --op /);

    const result = JSON.parse(fs.readFileSync(json, 'utf8')) as CollectivesResult;
    t.deepEqual(validate(COLLECTIVES_SCHEMA, result), []);
    t.is(result.peers?.mpi?.status, 'ok');
    t.deepEqual(result.rows.map((row) => row.size), [4096, 16384, 65536]);
    for (const row of result.rows) {
      const cell = row.peers?.mpi;
      if (!cell) return t.fail(`no mpi cell at ${row.size} B`);
      t.is(cell.wrong, 0, `#wrong at ${row.size} B`);
      t.true(cell.timeUs > 0 && cell.p50Us! > 0 && cell.rate > 0, `figures at ${row.size} B`);
    }

    // The side-by-side table: size, tpkit (us, p50, busbw), then mpi (us, p50, busbw, #wrong, p50 diff, ratio).
    const table = r.stdout.split('\n').map((l) => l.trim().split(/\s+/)).filter((c) => c.length === 10 && /^\d+$/.test(c[0]!));
    t.deepEqual(table.map((c) => Number(c[0])), [4096, 16384, 65536]);
    for (const c of table) {
      t.is(c[7], '0', `#wrong column at ${c[0]} B`);
      t.true(Number(c[4]) > 0 && Number(c[5]) > 0 && Number(c[6]) >= 0, `mpi time, p50, busbw at ${c[0]} B: ${c.join(' ')}`);
    }
  });
}
