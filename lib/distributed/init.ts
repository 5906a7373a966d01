/**
 * `initDistributed()`: joins this process to the job and returns the world process group.
 *
 * Lifecycle: read the environment (readDistEnv, readTpkitEnv) → connect to the rendezvous store → choose and
 * check the address this rank advertises to Gloo peers → connect the world communicator → return the group.
 *
 * The store is hosted by the node-0 `tpkit launch` process (`TPKIT_USE_LAUNCHER_STORE=1`), by torchrun's agent
 * (`TORCHELASTIC_USE_AGENT_STORE=True`: tpkit speaks torch's TCPStore protocol to it), or else by rank 0 in its
 * own process (srun, mpirun). Every rank connects to it; the backend's communicator then rendezvous through it
 * (Gloo exchanges its pair addresses, NCCL its unique id). The store outlives `destroy()`, so a program can
 * re-initialise after a failure; each `initDistributed()` uses a fresh key prefix.
 *
 * @module
 */
import { promises as dns } from 'node:dns';
import { readFileSync, readlinkSync } from 'node:fs';
import { isIP } from 'node:net';
import os from 'node:os';
import { TpkitError } from '../errors';
import { loadCore } from '../native';
import { oneOf, options, positiveInteger } from '../validate';
import { Communicator } from './comm';
import { readDistEnv, readTpkitEnv, DistEnv, MAX_TIMEOUT_MS, TpkitEnv } from './env';
import { GlooCommunicator, glooIoPriority } from './gloo';
import { GroupRuntime, ProcessGroup, prefixedStore } from './process_group';
import { DEAD_RANK_PREFIX, TCPStore, TCPStoreServer } from './store';
import { TorchStore } from './torch_store';

/** Options of {@link initDistributed}. */
export interface InitOptions {
  /**
   * `gloo` (host tensors, TCP; also cuda tensors staged through the host), `nccl` (one GPU per rank), or
   * `auto` (default): `nccl` when the cuda backend is available and every local rank has its own GPU, else `gloo`.
   */
  backend?: 'gloo' | 'nccl' | 'auto';
  /**
   * Timeout of the rendezvous and the default of every operation of the groups, in ms.
   * Default: env `TPKIT_TIMEOUT_MS`, else 300 000 (PyTorch's default).
   *
   * Every wait of the rendezvous ends within it: joining (every rank publishes its address in the store) within
   * `timeoutMs`, then connecting a group's communicator (the store lookups of the peers' addresses, the TCP
   * connects and the barrier after them) within `timeoutMs` of its start — plus a margin of tens of ms to report
   * which ranks were not reached (test/rendezvous_deadline.test.ts: with 3 s, initDistributed settled 3.04–3.26 s
   * after the call, store connection and join included, on a loaded 2-core machine). So `initDistributed` ends within about 2 × `timeoutMs`, even when a peer
   * freezes or dies halfway (Gloo's own connect waits up to 5 × the timeout); it then rejects with `TIMEOUT`
   * naming the ranks not reached, or `PEER_LOST` naming a rank the store saw die, and nothing of the failed
   * rendezvous keeps the process alive. Subgroups ({@link ProcessGroup.newGroup}) connect within the same bound.
   */
  timeoutMs?: number;
  /**
   * Scheduling priority of Gloo's I/O threads (gloo backend, Linux): `'normal'` (default), `'idle'`
   * (SCHED_IDLE: several-fold faster small and mid-size collectives on a machine the job has to itself, starved
   * under CPU load from other processes or more ranks than cores; measured in bench/README.md) or a nice value 1–19.
   * Default: env `TPKIT_GLOO_IO_PRIORITY`, else `'normal'`.
   */
  glooIoPriority?: 'normal' | 'idle' | number;
  /**
   * Shared-memory collectives between the ranks of a group that share a host (gloo backend;
   * lib/distributed/shm.ts): `true` / `false`; default `TPKIT_SHM` (`on` / `off`), else on.
   */
  shm?: boolean;
  /** Overrides the environment (tests, embedding): see {@link readDistEnv}. */
  env?: NodeJS.ProcessEnv;
}

/** What initDistributed needs of a store: tpkit's {@link TCPStore} or a client of torch's ({@link TorchStore}). */
type RendezvousKV = Pick<TCPStore, 'set' | 'get' | 'check' | 'wait' | 'add' | 'localAddress'>;

// One store connection (and on rank 0 the server) per process and master, reused across re-initialisation.
const stores = new Map<string, Promise<RendezvousKV>>();
let generation = 0;
let current: ProcessGroup | null = null;

/** The world group of the last `initDistributed()` that is not destroyed, or null. */
export function getWorldGroup(): ProcessGroup | null {
  return current;
}

async function openStore(e: DistEnv, t: TpkitEnv, timeoutMs: number): Promise<RendezvousKV> {
  const key = `${t.storeHost}:${e.masterAddr}:${e.masterPort}:${e.rank}`;
  let p = stores.get(key);
  if (!p) {
    const token = t.storeToken;
    p = (async (): Promise<RendezvousKV> => {
      if (t.storeHost === 'torch-agent') return TorchStore.connect(e.masterAddr, e.masterPort, { timeoutMs });
      if (e.rank === 0 && t.storeHost === 'rank0') {
        const server = await TCPStoreServer.listen(e.masterAddr, e.masterPort, { timeoutMs, token });
        server.unref(0);
        return TCPStore.connect(e.masterAddr, server.port, { timeoutMs, rank: 0, token });
      }
      return TCPStore.connect(e.masterAddr, e.masterPort, { timeoutMs, rank: e.rank, token });
    })();
    stores.set(key, p);
    p.catch(() => stores.delete(key));
  }
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// The address advertised to Gloo peers
// ---------------------------------------------------------------------------------------------------------

/** The address a rank advertises to its Gloo peers, and where it came from. */
export interface AdvertisedAddress {
  /** IP address (or, from TPKIT_GLOO_HOSTNAME, a host name) Gloo binds and publishes. */
  address: string;
  /** The network interface holding the address, when known. */
  iface: string | undefined;
  /** What chose it. */
  source: 'TPKIT_GLOO_HOSTNAME' | 'TPKIT_SOCKET_IFNAME' | 'GLOO_SOCKET_IFNAME' | 'store connection';
}

type Interfaces = NodeJS.Dict<os.NetworkInterfaceInfo[]>;

function interfaceOf(address: string, interfaces: Interfaces): string | undefined {
  for (const [name, infos] of Object.entries(interfaces)) if (infos?.some((i) => i.address === address)) return name;
  return undefined;
}

/**
 * Chooses the address this rank advertises to Gloo (torch's and NCCL's order of precedence):
 * `TPKIT_GLOO_HOSTNAME` as given; else the first IPv4 address (else IPv6) of the interface named by
 * `TPKIT_SOCKET_IFNAME` / `GLOO_SOCKET_IFNAME`; else the local address of this rank's own connection to the
 * rendezvous store — the interface that routes to `MASTER_ADDR`, so it works with stock /etc/hosts files in
 * which the host name resolves to 127.0.1.1.
 *
 * @param cfg - the parsed tpkit variables ({@link readTpkitEnv})
 * @param storeLocalAddress - local address of the store connection
 * @param interfaces - `os.networkInterfaces()` (a parameter for tests)
 * @throws RangeError naming the variable when the interface does not exist or has no address
 */
export function chooseGlooAddress(cfg: TpkitEnv, storeLocalAddress: string, interfaces: Interfaces = os.networkInterfaces()): AdvertisedAddress {
  if (cfg.glooHostname) return { address: cfg.glooHostname, iface: interfaceOf(cfg.glooHostname, interfaces), source: 'TPKIT_GLOO_HOSTNAME' };
  if (cfg.socketIfname) {
    const name = cfg.socketIfname;
    const infos = interfaces[name];
    const known = Object.keys(interfaces).join(', ');
    if (!infos) throw new RangeError(`${cfg.socketIfnameVar} names no network interface of this host: '${name}' (interfaces: ${known})`);
    const pick = infos.find((i) => i.family === 'IPv4') ?? infos.find((i) => i.family === 'IPv6' && !i.address.startsWith('fe80:'));
    if (!pick) throw new RangeError(`${cfg.socketIfnameVar}: interface '${name}' has no usable IP address (interfaces: ${known})`);
    return { address: pick.address, iface: name, source: cfg.socketIfnameVar! };
  }
  return { address: storeLocalAddress, iface: interfaceOf(storeLocalAddress, interfaces), source: 'store connection' };
}

/** True for 127.0.0.0/8, ::1, and names that resolve to them (`localhost`, a hostname listed as 127.0.1.1). */
async function isLoopback(address: string): Promise<boolean> {
  const loop = (a: string): boolean => /^127\./.test(a) || a === '::1' || a === '::ffff:127.0.0.1' || /^::ffff:127\./.test(a);
  if (isIP(address)) return loop(address);
  try {
    return (await dns.lookup(address, { all: true })).every((r) => loop(r.address));
  } catch {
    return false;
  }
}

/**
 * Identifies the network stack this process sees: the kernel's boot id (one per machine boot) and the
 * network namespace, so two containers or namespaces on one machine count as two hosts (a loopback address
 * is reachable only inside one namespace). Falls back to the host name.
 */
function hostIdentity(): string {
  let boot = os.hostname();
  try {
    boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    // not Linux
  }
  let netns = '';
  try {
    netns = readlinkSync('/proc/self/ns/net');
  } catch {
    // not Linux
  }
  return `${boot}/${netns}`;
}

/** One rank's record in the address check. */
interface AddressRecord extends AdvertisedAddress {
  rank: number;
  worldSize: number;
  pid: number;
  hostname: string;
  host: string;
  loopback: boolean;
}

function describeRanks(ranks: number[]): string {
  return ranks.length === 1 ? `rank ${ranks[0]}` : `ranks [${ranks.join(', ')}]`;
}

/**
 * Every rank publishes the address it will advertise, its host name and host identity, and waits (within its
 * own timeout) for everyone's; rank 0 then reads them all and publishes the verdict. A loopback address advertised while some rank runs on another host (or network
 * namespace) would surface later as a refused connection deep inside Gloo; it fails here, on every rank, naming
 * the rank, the address, the interface and the variables that choose it.
 *
 * @throws TpkitError `LOOPBACK_ADDRESS`; `TIMEOUT` naming the ranks that did not publish their address
 */
async function checkAddresses(store: RendezvousKV, name: string, e: DistEnv, adv: AdvertisedAddress, timeoutMs: number): Promise<void> {
  const key = (r: number | 'verdict'): string => `${name}/addr/${r}`;
  const mine: AddressRecord = {
    ...adv, rank: e.rank, worldSize: e.worldSize, pid: process.pid, hostname: os.hostname(), host: hostIdentity(), loopback: await isLoopback(adv.address),
  };
  // Two processes given the same RANK would both wait for Gloo to pair them (Gloo retries its connect for
  // several timeouts): the second to claim the rank fails here at once.
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const claims = await store.add(`${name}/claim/${e.rank}`, 1);
  if (claims > 1) {
    throw new TpkitError('DUPLICATE_RANK', `initDistributed: another process already joined as rank ${e.rank} of ${e.worldSize} (this is pid ${process.pid} on ${os.hostname()}); check RANK (or LOCAL_RANK / the launcher's node rank) of every process`, {
      backend: 'store', details: { rank: e.rank, worldSize: e.worldSize },
    });
  }
  await store.set(key(e.rank), JSON.stringify(mine));
  if (e.rank !== 0) {
    // Ranks that disagree with rank 0 on WORLD_SIZE learn it from rank 0's record instead of from Gloo.
    const zero = JSON.parse((await store.get(key(0), { timeoutMs: left() }).catch(() => Buffer.from('{}'))).toString('utf8')) as Partial<AddressRecord>;
    if (zero.worldSize !== undefined && zero.worldSize !== e.worldSize) {
      throw new TpkitError('WORLD_SIZE_MISMATCH', `initDistributed: rank ${e.rank} has WORLD_SIZE ${e.worldSize} but rank 0 (host ${zero.hostname}) has WORLD_SIZE ${zero.worldSize}; every process must be given the same world size`, {
        backend: 'store', details: { rank: e.rank, worldSize: e.worldSize, rank0WorldSize: zero.worldSize },
      });
    }
  }
  const missingRanks = async (): Promise<number[]> => {
    const out: number[] = [];
    for (let r = 0; r < e.worldSize; r++) if (!(await store.check([key(r)]))) out.push(r);
    return out;
  };
  let verdict: { problem?: string; missing?: number[]; why?: string; mismatch?: string };
  // Every rank waits for every address within its own timeout (so each reports the ranks missing at its own
  // deadline); then rank 0 judges them and publishes the verdict, which is there at once for the others.
  const all = Array.from({ length: e.worldSize }, (_, r) => key(r));
  try {
    await store.wait(all, { timeoutMs: left() });
    if (e.rank === 0) {
      const recs: AddressRecord[] = [];
      for (let r = 0; r < e.worldSize; r++) recs.push(JSON.parse((await store.get(key(r))).toString('utf8')) as AddressRecord);
      const problems: string[] = [];
      const others = recs.filter((r) => r.worldSize !== e.worldSize);
      if (others.length > 0) {
        verdict = { mismatch: `rank 0 has WORLD_SIZE ${e.worldSize} but ${others.map((r) => `rank ${r.rank} has ${r.worldSize}`).join(', ')}; every process must be given the same world size` };
        await store.set(key('verdict'), JSON.stringify(verdict));
        throw new TpkitError('WORLD_SIZE_MISMATCH', `initDistributed: ${verdict.mismatch}`, { backend: 'store', details: { rank: 0, worldSize: e.worldSize } });
      }
      for (const rec of recs) {
        if (!rec.loopback) continue;
        const away = recs.filter((o) => o.host !== rec.host).map((o) => o.rank);
        if (away.length === 0) continue;
        const where = rec.iface === undefined ? '' : `, interface ${rec.iface}`;
        const via =
          rec.source === 'store connection'
            ? `the local address of its connection to the store at ${e.masterAddr}:${e.masterPort}; MASTER_ADDR is a loopback address but the job spans hosts`
            : `from ${rec.source}`;
        problems.push(
          `rank ${rec.rank} (host ${rec.hostname}) would advertise the loopback address ${rec.address}${where} (${via}), ` +
            `which ${describeRanks(away)} on another host cannot reach`,
        );
      }
      verdict = problems.length === 0 ? {} : { problem: problems.join('; ') };
      await store.set(key('verdict'), JSON.stringify(verdict));
    } else {
      verdict = JSON.parse((await store.get(key('verdict'), { timeoutMs: left() })).toString('utf8')) as typeof verdict;
    }
  } catch (err) {
    if (!(err instanceof TpkitError && err.code === 'TIMEOUT')) throw err;
    const missing = await missingRanks().catch(() => [] as number[]);
    verdict = { missing: missing.length === 0 ? [0] : missing, why: err.message };
  }
  if (verdict.missing !== undefined) {
    const m = verdict.missing;
    const why = verdict.why ?? 'rank 0 saw no address from them';
    throw new TpkitError('TIMEOUT', `initDistributed: rank ${e.rank} of ${e.worldSize} waited ${timeoutMs} ms for rank${m.length === 1 ? '' : 's'} [${m.join(', ')}] to join: ${why}`, {
      backend: 'store',
      details: { rank: e.rank, worldSize: e.worldSize, timeoutMs, missingRanks: verdict.missing },
    });
  }
  if (verdict.mismatch !== undefined) {
    throw new TpkitError('WORLD_SIZE_MISMATCH', `initDistributed: ${verdict.mismatch}`, { backend: 'store', details: { rank: e.rank, worldSize: e.worldSize } });
  }
  if (verdict.problem !== undefined) {
    throw new TpkitError(
      'LOOPBACK_ADDRESS',
      `initDistributed: ${verdict.problem}. Set TPKIT_SOCKET_IFNAME to the interface that reaches the other hosts, ` +
        `or TPKIT_GLOO_HOSTNAME to this host's address on it, on that node (or unset them to use the address of the store connection, with a MASTER_ADDR the other hosts can reach)`,
      { backend: 'gloo', details: { rank: e.rank, address: adv.address, iface: adv.iface, source: adv.source } },
    );
  }
}

/** How long a rendezvous failure looks for the store's record of a dead rank before reporting without it. */
const DEAD_LOOKUP_MS = 500;

/**
 * The world communicator's rendezvous failed with TIMEOUT or PEER_LOST: names the ranks this rank did not reach,
 * from the store — those that never published their address (Gloo's key of rank r is `r` under the group's
 * `rdzv/` prefix; see prefixedStore), then those that published it but never marked themselves connected
 * (`rdzv/connected/r`, native/core/gloo_comm.cc) — and turns the error into PEER_LOST when the store recorded one
 * of them dead (its store connection closed without a goodbye; {@link DEAD_RANK_PREFIX}). Ranks whose own
 * rendezvous failed first (`rdzv/failed/r`, set here before reporting) are not blamed while another is left: they
 * were alive, waiting on the same peer, and may have exited since.
 */
async function rendezvousError(err: TpkitError, store: RendezvousKV, name: string, e: DistEnv, timeoutMs: number): Promise<TpkitError> {
  const others = Array.from({ length: e.worldSize }, (_, r) => r).filter((r) => r !== e.rank);
  let missing: number[] | null = [];
  let unconnected: number[] = [];
  const lost: Array<{ rank: number; reason: string }> = [];
  try {
    await store.set(`${name}/rdzv/failed/${e.rank}`, err.code);
    for (const r of others) if (!(await store.check([`${name}/rdzv/${r}`]))) missing.push(r);
    for (const r of others) if (!missing.includes(r) && !(await store.check([`${name}/rdzv/connected/${r}`]))) unconnected.push(r);
    const failed: number[] = [];
    for (const r of unconnected) if (await store.check([`${name}/rdzv/failed/${r}`])) failed.push(r);
    if (failed.length < unconnected.length) unconnected = unconnected.filter((r) => !failed.includes(r));
    const suspects = [...missing, ...unconnected];
    const until = Date.now() + (err.code === 'PEER_LOST' ? DEAD_LOOKUP_MS : 0);
    for (;;) {
      for (const r of suspects) {
        if (await store.check([`${DEAD_RANK_PREFIX}${r}`])) lost.push({ rank: r, reason: (await store.get(`${DEAD_RANK_PREFIX}${r}`)).toString('utf8') });
      }
      if (lost.length > 0 || Date.now() >= until) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } catch {
    missing = null;
    unconnected = [];
  }
  const ranks = (rs: number[]): string => (rs.length === 1 ? `rank ${rs[0]}` : `ranks [${rs.join(', ')}]`);
  const details = { rank: e.rank, worldSize: e.worldSize, timeoutMs, missingRanks: missing, unconnectedRanks: unconnected, lostRanks: lost.map((l) => l.rank) };
  if (lost.length > 0) {
    return new TpkitError(
      'PEER_LOST',
      `initDistributed: rank ${e.rank} of ${e.worldSize} lost ${ranks(lost.map((l) => l.rank))} during the rendezvous (${lost.map((l) => l.reason).join('; ')}): ${err.message}`,
      { backend: err.backend, details, cause: err },
    );
  }
  if (err.code === 'PEER_LOST') {
    const who = unconnected.length > 0 ? ` (not connected: ${ranks(unconnected)})` : '';
    return new TpkitError('PEER_LOST', `initDistributed: rank ${e.rank} of ${e.worldSize} lost a peer during the rendezvous${who}: ${err.message}`, { backend: err.backend, details, cause: err });
  }
  let who: string;
  if (missing === null) who = 'the other ranks to join';
  else if (missing.length > 0) who = `${ranks(missing)} to join`;
  else if (unconnected.length > 0) who = `${ranks(unconnected)} to connect (every rank published its address)`;
  else who = 'its connections to the other ranks';
  return new TpkitError('TIMEOUT', `initDistributed: rank ${e.rank} of ${e.worldSize} waited ${timeoutMs} ms for ${who}: ${err.message}`, { backend: err.backend, details, cause: err });
}

/**
 * Joins the job described by the environment (torchrun / `tpkit launch`, Slurm or Open MPI variables) and
 * returns the world group. Every rank must call it. Also sets OpenBLAS's thread count to cores / local ranks
 * (measured 10–15 % faster than oversubscribing; NATIVE-NOTES.md).
 *
 * @throws TypeError / RangeError for bad options or environment; TpkitError `TIMEOUT` when a rank does not
 *   join or connect within the timeout (naming the ranks not reached), `PEER_LOST` when one died meanwhile, `STORE_UNREACHABLE` when rank 0's store cannot be reached, `ALREADY_INITIALIZED`
 *   when a world group is live, `CUDA_UNAVAILABLE` / `NO_CUDA_DEVICE` for `nccl` without GPUs
 */
export async function initDistributed(opts?: InitOptions): Promise<ProcessGroup> {
  const o = options<InitOptions>(opts, 'options');
  const env = o.env ?? process.env;
  let backend = oneOf(o.backend, 'backend', ['gloo', 'nccl', 'auto'] as const, 'auto');
  const cfg = readTpkitEnv(env);
  const timeoutMs = o.timeoutMs === undefined ? cfg.timeoutMs ?? 300_000 : positiveInteger(o.timeoutMs, 'timeoutMs');
  if (timeoutMs > MAX_TIMEOUT_MS) throw new RangeError(`Expected integer in [1, ${MAX_TIMEOUT_MS + 1}) (ms; Node's timers fire at once beyond) for timeoutMs but received ${timeoutMs} of type number`);
  const ioPriorityCode = glooIoPriority(env, o.glooIoPriority);
  const e = readDistEnv(env);
  if (current) {
    throw new TpkitError('ALREADY_INITIALIZED', `initDistributed: a world group (${current}) is live; call destroy() on it first`);
  }
  const core = loadCore();
  const cores = os.availableParallelism ? os.availableParallelism() : os.cpus().length;
  core.setBlasThreads(Math.max(1, Math.floor(cores / Math.max(1, e.localWorldSize))));

  let nccl: typeof import('./nccl') | null = null;
  if (backend !== 'gloo') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { cudaStatus } = require('../native/cuda') as typeof import('../native/cuda');
    const st = cudaStatus();
    const usable = st.cuda && st.nccl && st.cudaDevices >= e.localWorldSize;
    if (backend === 'auto') backend = usable ? 'nccl' : 'gloo';
    else if (!usable) {
      throw new TpkitError(st.cuda ? 'NO_CUDA_DEVICE' : 'CUDA_UNAVAILABLE',
        `initDistributed: backend 'nccl' needs one GPU per local rank (${e.localWorldSize} local ranks, ${st.cudaDevices} GPUs visible${st.reason ? `: ${st.reason}` : ''}); use backend 'gloo' to share a GPU`,
        { backend: 'nccl' });
    }
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    if (backend === 'nccl') nccl = require('./nccl') as typeof import('./nccl');
  }

  const store = await openStore(e, cfg, timeoutMs);
  const name = `tpkit/${e.runId}/init${generation++}`;
  const check = cfg.check;
  const adv = chooseGlooAddress(cfg, store.localAddress);
  const hostname = adv.address;
  if (backend === 'gloo' && e.worldSize > 1) await checkAddresses(store, name, e, adv, timeoutMs);
  // process_group.ts types the store as tpkit's TCPStore; it uses only set / get / check, which TorchStore has too.
  const groupStore = store as unknown as TCPStore;
  const rt: GroupRuntime = {
    store: groupStore,
    globalRank: e.rank,
    worldSize: e.worldSize,
    backend: backend as 'gloo' | 'nccl',
    check,
    async connectCommunicator(rankInGroup, size, t, groupName): Promise<Communicator> {
      const c: Communicator = nccl
        ? new nccl.NcclCommunicator(rankInGroup, size, e.localRank, t)
        : new GlooCommunicator(rankInGroup, size, hostname, t, check, ioPriorityCode, o.shm);
      await c.connect(prefixedStore(groupStore, groupName, t));
      return c;
    },
  };
  if (nccl) {
    const mod = nccl;
    rt.splitParent = async (parent, members) => (parent as InstanceType<typeof mod.NcclCommunicator>).split(members);
  }
  const ranks = Array.from({ length: e.worldSize }, (_, i) => i);
  const world = new ProcessGroup(rt, ranks, name, timeoutMs, () => rt.connectCommunicator(e.rank, e.worldSize, timeoutMs, name));
  try {
    await world.ready;
  } catch (err) {
    world.destroy();
    if (err instanceof TpkitError && (err.code === 'TIMEOUT' || err.code === 'PEER_LOST')) throw await rendezvousError(err, store, name, e, timeoutMs);
    throw err;
  }
  const destroy = world.destroy.bind(world);
  world.destroy = () => {
    if (current === world) current = null;
    destroy();
  };
  current = world;
  return world;
}
