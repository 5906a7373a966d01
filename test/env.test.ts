/**
 * readDistEnv: rank, world size, local rank and master address from torchrun's, Slurm's and Open MPI's
 * variables, their precedence, and the errors for bad values.
 */
import test from 'ava';
import { readDistEnv } from '../lib';
import { glooIoPriority } from '../lib/distributed/gloo';

test('torchrun / tpkit launch variables', (t) => {
  t.deepEqual(
    readDistEnv({ RANK: '3', WORLD_SIZE: '8', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '2', MASTER_ADDR: '10.0.0.5', MASTER_PORT: '29500', TPKIT_RUN_ID: 'abc' }),
    { rank: 3, worldSize: 8, localRank: 1, localWorldSize: 2, masterAddr: '10.0.0.5', masterPort: 29500, runId: 'abc', source: 'torchrun' },
  );
});

test('Slurm variables (srun), master from MASTER_ADDR / MASTER_PORT', (t) => {
  t.deepEqual(
    readDistEnv({ SLURM_PROCID: '5', SLURM_NTASKS: '8', SLURM_LOCALID: '1', SLURM_NTASKS_PER_NODE: '4', SLURM_JOB_ID: '77', MASTER_ADDR: 'node01', MASTER_PORT: '29501' }),
    { rank: 5, worldSize: 8, localRank: 1, localWorldSize: 4, masterAddr: 'node01', masterPort: 29501, runId: '77', source: 'slurm' },
  );
});

test('Open MPI variables (mpirun)', (t) => {
  t.deepEqual(
    readDistEnv({ OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_RANK: '2', OMPI_COMM_WORLD_LOCAL_SIZE: '4', MASTER_PORT: '29502' }),
    { rank: 2, worldSize: 4, localRank: 2, localWorldSize: 4, masterAddr: '127.0.0.1', masterPort: 29502, runId: 'default', source: 'openmpi' },
  );
});

test('torchrun variables win over Slurm / Open MPI ones; no variables means one process', (t) => {
  const e = readDistEnv({ RANK: '1', WORLD_SIZE: '2', SLURM_PROCID: '0', SLURM_NTASKS: '2', OMPI_COMM_WORLD_RANK: '0', OMPI_COMM_WORLD_SIZE: '2', MASTER_PORT: '1' });
  t.is(e.source, 'torchrun');
  t.is(e.rank, 1);
  t.like(readDistEnv({}), { rank: 0, worldSize: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: 0, source: 'single' });
});

test('bad values are rejected with the variable named', (t) => {
  t.throws(() => readDistEnv({ RANK: 'x', WORLD_SIZE: '2', MASTER_PORT: '1' }), { instanceOf: RangeError, message: 'Expected integer for environment variable RANK but received x of type string' });
  t.throws(() => readDistEnv({ RANK: '2', WORLD_SIZE: '2', MASTER_PORT: '1' }), { instanceOf: RangeError, message: 'Expected integer in [0, 2) for rank but received 2 of type number' });
  t.throws(() => readDistEnv({ RANK: '0', WORLD_SIZE: '0', MASTER_PORT: '1' }), { instanceOf: RangeError, message: 'Expected positive integer for world size but received 0 of type number' });
  t.throws(() => readDistEnv({ RANK: '0', WORLD_SIZE: '2' }), { instanceOf: RangeError, message: 'MASTER_PORT must be set for a job of 2 processes (source: torchrun)' });
  t.throws(() => readDistEnv({ RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '70000' }), { instanceOf: RangeError, message: 'Expected integer in [0, 65536) for MASTER_PORT but received 70000 of type number' });
});

test("glooIoPriority: option over TPKIT_GLOO_IO_PRIORITY over 'normal'; codes -1 / 1..19 / 20", (t) => {
  t.is(glooIoPriority({}), -1);
  t.is(glooIoPriority({ TPKIT_GLOO_IO_PRIORITY: '' }), -1);
  t.is(glooIoPriority({ TPKIT_GLOO_IO_PRIORITY: 'normal' }), -1);
  t.is(glooIoPriority({ TPKIT_GLOO_IO_PRIORITY: ' IDLE ' }), 20);
  t.is(glooIoPriority({ TPKIT_GLOO_IO_PRIORITY: '19' }), 19);
  t.is(glooIoPriority({ TPKIT_GLOO_IO_PRIORITY: 'idle' }, 'normal'), -1, 'the option wins');
  t.is(glooIoPriority({}, 'idle'), 20);
  t.is(glooIoPriority({}, 7), 7);
});

test('glooIoPriority: bad values name the option or the variable', (t) => {
  const env = (v: string) => ({ TPKIT_GLOO_IO_PRIORITY: v });
  for (const v of ['0', '20', '-1', '5.5', 'low']) {
    t.throws(() => glooIoPriority(env(v)), { instanceOf: RangeError, message: `TPKIT_GLOO_IO_PRIORITY must be 'normal', 'idle' or a nice value from 1 to 19, got '${v}'` });
  }
  t.throws(() => glooIoPriority({}, 0), { instanceOf: RangeError, message: "Expected 'normal', 'idle' or a nice value from 1 to 19 for glooIoPriority but received 0" });
  t.throws(() => glooIoPriority({}, ''), { instanceOf: RangeError, message: "Expected 'normal', 'idle' or a nice value from 1 to 19 for glooIoPriority but received ''" });
  t.throws(() => glooIoPriority({}, true), { instanceOf: TypeError, message: "Expected 'normal', 'idle' or a nice value from 1 to 19 for glooIoPriority but received true of type boolean" });
});
