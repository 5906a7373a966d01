/**
 * Two machines, simulated: two network namespaces joined by a veth pair (10.213.<n>.1 and .2), each running
 * `tpkit launch --nnodes 2` with 2 ranks, with stock settings (no address override): the 4 ranks must meet
 * and all-reduce correctly — each rank advertises the address of its own connection to node 0's store, not
 * what its hostname resolves to. Then the same through TPKIT_SOCKET_IFNAME, and a loopback address forced
 * on one node, which must fail at rendezvous with LOOPBACK_ADDRESS on every rank, quickly.
 *
 * Needs root and iproute2 (`ip netns`); skipped with the reason otherwise. Namespaces are removed in
 * after.always.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';

import test from 'ava';

const CLI = path.join(__dirname, '..', 'lib', 'cli.js');
const FIXTURE = path.join(__dirname, 'fixtures', 'launch_hosts.js');

/** y = W2 · (W1 · x) of the fixture's layer pair, by plain loops (W1 [8, 4], W2 [4, 8], x = [1, 2, 3, 4]). */
const TP_LAYER_REFERENCE: number[] = (() => {
  const x = [1, 2, 3, 4];
  const h = Array.from({ length: 8 }, (_, o) => x.reduce((s, v, i) => s + (((o * 4 + i) % 5) - 2) * v, 0));
  return Array.from({ length: 4 }, (_, o) => h.reduce((s, v, i) => s + (((o * 8 + i) % 3) - 1) * v, 0));
})();
const tag = (process.pid % 200) + 20;
const NS = [`tpkit_h${process.pid}_0`, `tpkit_h${process.pid}_1`];
const VETH = [`tpkv${process.pid}a`.slice(0, 15), `tpkv${process.pid}b`.slice(0, 15)];
const ADDR = [`10.213.${tag}.1`, `10.213.${tag}.2`];

function ip(...args: string[]): { ok: boolean; err: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  return { ok: r.status === 0, err: `${r.stderr ?? ''}${r.error?.message ?? ''}`.trim() };
}

/** Sets the two namespaces up, or returns why it cannot. */
function setUp(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (ip netns)';
  if (spawnSync('ip', ['-V']).status !== 0) return 'iproute2 (ip) is not installed';
  const steps: string[][] = [
    ['netns', 'add', NS[0]!],
    ['netns', 'add', NS[1]!],
    ['link', 'add', VETH[0]!, 'type', 'veth', 'peer', 'name', VETH[1]!],
    ['link', 'set', VETH[0]!, 'netns', NS[0]!],
    ['link', 'set', VETH[1]!, 'netns', NS[1]!],
    ['-n', NS[0]!, 'addr', 'add', `${ADDR[0]}/24`, 'dev', VETH[0]!],
    ['-n', NS[1]!, 'addr', 'add', `${ADDR[1]}/24`, 'dev', VETH[1]!],
    ['-n', NS[0]!, 'link', 'set', VETH[0]!, 'up'],
    ['-n', NS[1]!, 'link', 'set', VETH[1]!, 'up'],
    ['-n', NS[0]!, 'link', 'set', 'lo', 'up'],
    ['-n', NS[1]!, 'link', 'set', 'lo', 'up'],
  ];
  for (const s of steps) {
    const r = ip(...s);
    if (!r.ok) return `could not set up network namespaces (ip ${s.join(' ')}: ${r.err})`;
  }
  return null;
}

const skipReason = setUp();
test.after.always(() => {
  for (const ns of NS) ip('netns', 'del', ns);
});

interface NodeRun {
  code: number | null;
  out: string;
  err: string;
  results: Array<{ rank: number; sum?: number[]; gathered?: number[]; layer?: number[]; localSum?: number[]; segments?: number; code?: string; message?: string }>;
}

/**
 * Runs node `node`'s launcher inside its namespace; `ownShm`: in a mount namespace of its own too, with a fresh
 * tmpfs on /dev/shm (as two real machines have).
 */
function runNode(node: number, port: number, env: NodeJS.ProcessEnv, ownShm = false): Promise<NodeRun> {
  const launch = [process.execPath, CLI, 'launch', '--nproc-per-node', '2', '--nnodes', '2', '--node-rank', String(node),
    '--master-addr', ADDR[0]!, '--master-port', String(port), '--grace-ms', '1000', FIXTURE];
  const mounted = ownShm ? ['unshare', '-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"', 'sh'] : [];
  const args = ['netns', 'exec', NS[node]!, ...mounted, ...launch];
  return new Promise((resolve) => {
    const child = spawn('ip', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const timer = setTimeout(() => child.kill('SIGKILL'), 40_000);
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => {
      clearTimeout(timer);
      const results = out
        .split('\n')
        .filter((l) => l.includes('{"rank"'))
        .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as NodeRun['results'][number]);
      resolve({ code, out, err, results });
    });
  });
}

let nextPort = 29_300 + (process.pid % 500) * 2;
async function runJob(env0: NodeJS.ProcessEnv, env1: NodeJS.ProcessEnv, ownShm = false): Promise<[NodeRun, NodeRun]> {
  const port = nextPort++;
  const base = { TPKIT_GLOO_HOSTNAME: '', TPKIT_SOCKET_IFNAME: '', GLOO_SOCKET_IFNAME: '', TPKIT_TIMEOUT_MS: '', TPKIT_SHM: '' };
  return Promise.all([runNode(0, port, { ...base, ...env0 }, ownShm), runNode(1, port, { ...base, ...env1 }, ownShm)]);
}

const hostTest = skipReason === null ? test.serial : test.skip;
const why = skipReason === null ? '' : ` (skipped: ${skipReason})`;

// Namespaces of one kernel share /dev/shm unless each host mounts its own (as two real machines have): then the
// world, which spans both, uses Gloo TCP, and each host-local group shared memory.
for (const ownShm of [false, true]) {
  const title = ownShm
    ? 'two hosts, each with its own /dev/shm: Gloo TCP between the hosts, shared memory inside each, same results'
    : 'two hosts, stock settings: 4 ranks all-reduce and all-gather across the veth pair (one /dev/shm: every group uses shared memory)';
  hostTest(`${title}${why}`, async (t) => {
    const [n0, n1] = await runJob({}, {}, ownShm);
    t.is(n0.code, 0, `${n0.out}${n0.err}`);
    t.is(n1.code, 0, `${n1.out}${n1.err}`);
    const all = [...n0.results, ...n1.results].sort((a, b) => a.rank - b.rank);
    t.deepEqual(all.map((r) => r.rank), [0, 1, 2, 3]);
    for (const r of all) {
      t.deepEqual(r.sum, [0, 10, 20, 30]);
      t.deepEqual(r.gathered, [0, 1, 2, 3]);
      t.deepEqual(r.layer, TP_LAYER_REFERENCE, 'the TP layer pair across both hosts equals the plain-loop product');
      // ranks 0, 1: [1, 2]·(1 + 2); ranks 2, 3: [1, 2]·(3 + 4)
      t.deepEqual(r.localSum, r.rank < 2 ? [3, 6] : [7, 14]);
      t.is(r.segments, ownShm ? 1 : 2, ownShm ? `rank ${r.rank}: only its host-local group maps a segment` : `rank ${r.rank}: the world's segment and its local group's`);
    }
    t.false(`${n0.err}${n1.err}`.includes('TPKIT_SHM_FALLBACK'), 'a group spanning hosts is not a fallback: no warning');
  });
}

hostTest(`two hosts, TPKIT_SOCKET_IFNAME names the veth interface on each node${why}`, async (t) => {
  const [n0, n1] = await runJob({ TPKIT_SOCKET_IFNAME: VETH[0] }, { TPKIT_SOCKET_IFNAME: VETH[1] });
  t.is(n0.code, 0, `${n0.out}${n0.err}`);
  t.is(n1.code, 0, `${n1.out}${n1.err}`);
  for (const r of [...n0.results, ...n1.results]) t.deepEqual(r.sum, [0, 10, 20, 30]);
});

hostTest(`two hosts, a loopback address forced on node 1: LOOPBACK_ADDRESS on every rank, at rendezvous, quickly${why}`, async (t) => {
  const started = Date.now();
  const [n0, n1] = await runJob({}, { TPKIT_GLOO_HOSTNAME: '127.0.0.1' });
  const ms = Date.now() - started;
  t.not(n0.code, 0);
  t.not(n1.code, 0);
  t.true(ms < 10_000, `took ${ms} ms`);
  const all = [...n0.results, ...n1.results];
  t.true(all.length >= 1, `${n0.out}${n1.out}`);
  for (const r of all) {
    t.is(r.code, 'LOOPBACK_ADDRESS', r.message);
    t.true(r.message!.includes('rank 2 (host ') && r.message!.includes('would advertise the loopback address 127.0.0.1, interface lo (from TPKIT_GLOO_HOSTNAME)'), r.message);
    t.true(r.message!.includes('TPKIT_SOCKET_IFNAME'), r.message);
  }
});
