/**
 * `initDistributed()`: joins this process to the job and returns the world process group.
 *
 * Rank 0 hosts the rendezvous store (a TCP key–value store like PyTorch's TCPStore) on the master address and
 * port; every rank connects to it; the backend's communicator then rendezvous through it (Gloo exchanges its
 * pair addresses, NCCL its unique id). The store outlives `destroy()`, so a program can re-initialise after a
 * failure; each `initDistributed()` uses a fresh key prefix.
 *
 * @module
 */
import os from 'node:os';
import { TpkitError } from '../errors';
import { loadCore } from '../native';
import { oneOf, options, positiveInteger } from '../validate';
import { Communicator } from './comm';
import { readDistEnv, DistEnv } from './env';
import { GlooCommunicator, glooIoPriority } from './gloo';
import { GroupRuntime, ProcessGroup, prefixedStore } from './process_group';
import { TCPStore, TCPStoreServer } from './store';

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
   */
  timeoutMs?: number;
  /**
   * Scheduling priority of Gloo's I/O threads (gloo backend, Linux): `'normal'` (default), `'idle'`
   * (SCHED_IDLE: several-fold faster small and mid-size collectives on a machine the job has to itself, starved
   * under CPU load from other processes or more ranks than cores; measured in bench/README.md) or a nice value 1–19.
   * Default: env `TPKIT_GLOO_IO_PRIORITY`, else `'normal'`.
   */
  glooIoPriority?: 'normal' | 'idle' | number;
  /** Overrides the environment (tests, embedding): see {@link readDistEnv}. */
  env?: NodeJS.ProcessEnv;
}

// One store connection (and on rank 0 the server) per process and master, reused across re-initialisation.
const stores = new Map<string, Promise<TCPStore>>();
let generation = 0;
let current: ProcessGroup | null = null;

/** The world group of the last `initDistributed()` that is not destroyed, or null. */
export function getWorldGroup(): ProcessGroup | null {
  return current;
}

function defaultTimeout(env: NodeJS.ProcessEnv): number {
  const v = env.TPKIT_TIMEOUT_MS;
  if (v === undefined || v === '') return 300_000;
  return positiveInteger(Number(v), 'TPKIT_TIMEOUT_MS');
}

async function openStore(e: DistEnv, timeoutMs: number): Promise<TCPStore> {
  const key = `${e.masterAddr}:${e.masterPort}:${e.rank}`;
  let p = stores.get(key);
  if (!p) {
    p = (async () => {
      if (e.rank === 0) {
        const server = await TCPStoreServer.listen(e.masterAddr, e.masterPort, { timeoutMs });
        server.unref(0);
        return TCPStore.connect(e.masterAddr, server.port, { timeoutMs, rank: 0 });
      }
      return TCPStore.connect(e.masterAddr, e.masterPort, { timeoutMs, rank: e.rank });
    })();
    stores.set(key, p);
    p.catch(() => stores.delete(key));
  }
  return p;
}

function glooHostname(e: DistEnv, env: NodeJS.ProcessEnv): string {
  if (env.TPKIT_GLOO_HOSTNAME) return env.TPKIT_GLOO_HOSTNAME;
  if (/^(127\.|localhost$|::1$)/.test(e.masterAddr)) return '127.0.0.1';
  return os.hostname();
}

/**
 * The rendezvous timed out: names the ranks that never published their address (Gloo's rendezvous key of rank r
 * is `r`, under the group's `rdzv/` prefix; see prefixedStore).
 */
async function joinTimeout(err: TpkitError, store: TCPStore, name: string, e: DistEnv, timeoutMs: number): Promise<TpkitError> {
  let missing: number[] | null = [];
  try {
    for (let r = 0; r < e.worldSize; r++) if (!(await store.check([`${name}/rdzv/${r}`]))) missing.push(r);
  } catch {
    missing = null;
  }
  const who =
    missing === null ? 'the other ranks to join' : missing.length === 0 ? 'its connections to the other ranks' : `rank${missing.length === 1 ? '' : 's'} [${missing.join(', ')}] to join`;
  return new TpkitError(
    'TIMEOUT',
    `initDistributed: rank ${e.rank} of ${e.worldSize} waited ${timeoutMs} ms for ${who}: ${err.message}`,
    { backend: err.backend, details: { rank: e.rank, worldSize: e.worldSize, timeoutMs, missingRanks: missing }, cause: err },
  );
}

/**
 * Joins the job described by the environment (torchrun / `tpkit launch`, Slurm or Open MPI variables) and
 * returns the world group. Every rank must call it. Also sets OpenBLAS's thread count to cores / local ranks
 * (measured 10–15 % faster than oversubscribing; NATIVE-NOTES.md).
 *
 * @throws TypeError / RangeError for bad options or environment; TpkitError `TIMEOUT` when a rank does not
 *   join within the timeout, `STORE_UNREACHABLE` when rank 0's store cannot be reached, `ALREADY_INITIALIZED`
 *   when a world group is live, `CUDA_UNAVAILABLE` / `NO_CUDA_DEVICE` for `nccl` without GPUs
 */
export async function initDistributed(opts?: InitOptions): Promise<ProcessGroup> {
  const o = options<InitOptions>(opts, 'options');
  const env = o.env ?? process.env;
  let backend = oneOf(o.backend, 'backend', ['gloo', 'nccl', 'auto'] as const, 'auto');
  const timeoutMs = o.timeoutMs === undefined ? defaultTimeout(env) : positiveInteger(o.timeoutMs, 'timeoutMs');
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

  const store = await openStore(e, timeoutMs);
  const name = `tpkit/${e.runId}/init${generation++}`;
  const check = (env.TPKIT_CHECK ?? 'on').toLowerCase() !== 'off';
  const hostname = glooHostname(e, env);
  const rt: GroupRuntime = {
    store,
    globalRank: e.rank,
    worldSize: e.worldSize,
    backend: backend as 'gloo' | 'nccl',
    check,
    async connectCommunicator(rankInGroup, size, t, groupName): Promise<Communicator> {
      const c: Communicator = nccl
        ? new nccl.NcclCommunicator(rankInGroup, size, e.localRank, t)
        : new GlooCommunicator(rankInGroup, size, hostname, t, check, ioPriorityCode);
      await c.connect(prefixedStore(store, groupName, t));
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
    if (err instanceof TpkitError && err.code === 'TIMEOUT') throw await joinTimeout(err, store, name, e, timeoutMs);
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
