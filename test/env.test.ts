/**
 * readDistEnv: rank, world size, local rank and master address from torchrun's, Slurm's and Open MPI's
 * variables, their precedence, and the errors for bad values.
 */
import test from 'ava';
import { readDistEnv } from '../lib';
import { expandHostlist, readTpkitEnv } from '../lib/distributed/env';
import { glooIoPriority } from '../lib/distributed/gloo';
import { chooseGlooAddress } from '../lib/distributed/init';

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

// ---------------------------------------------------------------------------------------------------------
// Slurm node lists (MASTER_ADDR may be left out under srun)

test('expandHostlist expands Slurm host lists as scontrol show hostnames does', (t) => {
  t.deepEqual(expandHostlist('node[01-04,07]'), ['node01', 'node02', 'node03', 'node04', 'node07']);
  t.deepEqual(expandHostlist('gpu5'), ['gpu5']);
  t.deepEqual(expandHostlist('a[8-10],b,c[1]'), ['a8', 'a9', 'a10', 'b', 'c1']);
  t.deepEqual(expandHostlist('r[1-2]n[01-02]'), ['r1n01', 'r1n02', 'r2n01', 'r2n02']);
  t.deepEqual(expandHostlist('node[001-999]', 2), ['node001', 'node002']);
  t.deepEqual(expandHostlist('n[1-3]-ib'), ['n1-ib', 'n2-ib', 'n3-ib']);
});

test('expandHostlist rejects malformed lists', (t) => {
  for (const bad of ['node[01-04', 'node]1[', 'node[4-1]', 'node[a-b]', 'n[[1]]']) {
    t.throws(() => expandHostlist(bad), { instanceOf: RangeError, message: `Expected Slurm host list for SLURM_JOB_NODELIST but received ${bad} of type string` });
  }
});

test('Slurm without MASTER_ADDR: the first host of SLURM_JOB_NODELIST (else SLURM_NODELIST)', (t) => {
  const base = { SLURM_PROCID: '1', SLURM_NTASKS: '4', MASTER_PORT: '29500' };
  t.is(readDistEnv({ ...base, SLURM_JOB_NODELIST: 'gpu[07-08,11]', SLURM_NODELIST: 'other1' }).masterAddr, 'gpu07');
  t.is(readDistEnv({ ...base, SLURM_NODELIST: 'cn[100-101]' }).masterAddr, 'cn100');
  t.is(readDistEnv({ ...base, SLURM_JOB_NODELIST: 'gpu[07-08]', MASTER_ADDR: '10.1.2.3' }).masterAddr, '10.1.2.3', 'MASTER_ADDR wins');
  t.is(readDistEnv({ RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '1', SLURM_JOB_NODELIST: 'gpu01' }).masterAddr, '127.0.0.1', 'only under Slurm');
});

test('torchrun: the run id names the elastic run and its restart', (t) => {
  const e = readDistEnv({ RANK: '0', WORLD_SIZE: '2', MASTER_PORT: '29500', TORCHELASTIC_RUN_ID: 'job7', TORCHELASTIC_RESTART_COUNT: '2' });
  t.is(e.runId, 'torchelastic-job7.2');
});

// ---------------------------------------------------------------------------------------------------------
// tpkit's variables, read in one place

test('readTpkitEnv: defaults, values, and who hosts the store', (t) => {
  t.deepEqual(readTpkitEnv({}), {
    timeoutMs: undefined, storeToken: undefined, glooHostname: undefined, socketIfname: undefined, socketIfnameVar: undefined, check: true, storeHost: 'rank0',
  });
  t.like(readTpkitEnv({ TPKIT_TIMEOUT_MS: ' 1500 ', TPKIT_STORE_TOKEN: 's', TPKIT_GLOO_HOSTNAME: '10.0.0.2', TPKIT_CHECK: 'OFF' }), {
    timeoutMs: 1500, storeToken: 's', glooHostname: '10.0.0.2', check: false,
  });
  t.like(readTpkitEnv({ GLOO_SOCKET_IFNAME: 'eth1' }), { socketIfname: 'eth1', socketIfnameVar: 'GLOO_SOCKET_IFNAME' });
  t.like(readTpkitEnv({ GLOO_SOCKET_IFNAME: 'eth1', TPKIT_SOCKET_IFNAME: 'ib0' }), { socketIfname: 'ib0', socketIfnameVar: 'TPKIT_SOCKET_IFNAME' });
  t.is(readTpkitEnv({ TPKIT_USE_LAUNCHER_STORE: '1' }).storeHost, 'launcher');
  t.is(readTpkitEnv({ TORCHELASTIC_USE_AGENT_STORE: 'True', TPKIT_USE_LAUNCHER_STORE: '1' }).storeHost, 'torch-agent');
  t.is(readTpkitEnv({ TORCHELASTIC_USE_AGENT_STORE: 'False' }).storeHost, 'rank0');
  t.is(readTpkitEnv({ TPKIT_STORE_TOKEN: '' }).storeToken, undefined, 'empty means none');
});

test('readTpkitEnv: bad values, one message form', (t) => {
  for (const v of ['abc', '0', '-5', '1.5']) {
    t.throws(() => readTpkitEnv({ TPKIT_TIMEOUT_MS: v }), { instanceOf: RangeError, message: `Expected positive integer for TPKIT_TIMEOUT_MS but received ${v} of type string` });
  }
  t.throws(() => readTpkitEnv({ TPKIT_TIMEOUT_MS: '2147483648' }), {
    instanceOf: RangeError,
    message: "Expected integer in [1, 2147483648) (ms; Node's timers fire at once beyond) for TPKIT_TIMEOUT_MS but received 2147483648 of type string",
  });
  t.throws(() => readTpkitEnv({ TPKIT_CHECK: 'maybe' }), { instanceOf: RangeError, message: "Expected 'on' or 'off' for TPKIT_CHECK but received maybe of type string" });
});

// ---------------------------------------------------------------------------------------------------------
// The address advertised to Gloo

const IFACES = {
  lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: true, cidr: '127.0.0.1/8' }],
  eth0: [
    { address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '02:00:00:00:00:01', internal: false, cidr: 'fe80::1/64', scopeid: 2 },
    { address: '10.7.0.2', netmask: '255.255.255.0', family: 'IPv4', mac: '02:00:00:00:00:01', internal: false, cidr: '10.7.0.2/24' },
  ],
  ib0: [{ address: 'fd00::5', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '02:00:00:00:00:02', internal: false, cidr: 'fd00::5/64', scopeid: 0 }],
} as unknown as Parameters<typeof chooseGlooAddress>[2];

test('chooseGlooAddress: by default the local address of the store connection, with its interface', (t) => {
  t.deepEqual(chooseGlooAddress(readTpkitEnv({}), '10.7.0.2', IFACES), { address: '10.7.0.2', iface: 'eth0', source: 'store connection' });
  t.deepEqual(chooseGlooAddress(readTpkitEnv({}), '127.0.0.1', IFACES), { address: '127.0.0.1', iface: 'lo', source: 'store connection' });
});

test('chooseGlooAddress: TPKIT_GLOO_HOSTNAME over TPKIT_SOCKET_IFNAME over the default', (t) => {
  t.deepEqual(chooseGlooAddress(readTpkitEnv({ TPKIT_GLOO_HOSTNAME: 'node3', TPKIT_SOCKET_IFNAME: 'eth0' }), '10.7.0.2', IFACES), { address: 'node3', iface: undefined, source: 'TPKIT_GLOO_HOSTNAME' });
  t.deepEqual(chooseGlooAddress(readTpkitEnv({ TPKIT_SOCKET_IFNAME: 'eth0' }), '127.0.0.1', IFACES), { address: '10.7.0.2', iface: 'eth0', source: 'TPKIT_SOCKET_IFNAME' });
  t.deepEqual(chooseGlooAddress(readTpkitEnv({ GLOO_SOCKET_IFNAME: 'ib0' }), '127.0.0.1', IFACES), { address: 'fd00::5', iface: 'ib0', source: 'GLOO_SOCKET_IFNAME' });
});

test('chooseGlooAddress: an unknown interface names the variable and the interfaces there are', (t) => {
  t.throws(() => chooseGlooAddress(readTpkitEnv({ TPKIT_SOCKET_IFNAME: 'eth9' }), '10.7.0.2', IFACES), {
    instanceOf: RangeError,
    message: "TPKIT_SOCKET_IFNAME names no network interface of this host: 'eth9' (interfaces: lo, eth0, ib0)",
  });
});
