/**
 * Reads a rank's place in the job from the environment of the launcher that started it: torchrun's
 * variables (also set by `tpkit launch`), Slurm's (`srun`) or Open MPI's (`mpirun`), in that order.
 *
 * @module
 */
import { integerInRange, positiveInteger, rangeError } from '../validate';

/** Where this process sits in the job. */
export interface DistEnv {
  /** Global rank, 0 ≤ rank < worldSize. */
  rank: number;
  /** Number of processes in the job. */
  worldSize: number;
  /** Rank on this node (picks the GPU). */
  localRank: number;
  /** Processes on this node. */
  localWorldSize: number;
  /** Host of the rendezvous store (`MASTER_ADDR`; under Slurm without it, the job's first node). */
  masterAddr: string;
  /** TCP port of the rendezvous store. */
  masterPort: number;
  /**
   * Id of this run (a fresh one per launcher restart): the store key prefix. `TPKIT_RUN_ID` (tpkit launch),
   * else `torchelastic-<TORCHELASTIC_RUN_ID>.<TORCHELASTIC_RESTART_COUNT>`, else `SLURM_JOB_ID`, else Open MPI's job id.
   */
  runId: string;
  /** Which variables were read. */
  source: 'torchrun' | 'slurm' | 'openmpi' | 'single';
}

function int(env: NodeJS.ProcessEnv, key: string): number | undefined {
  const v = env[key];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw rangeError('integer', `environment variable ${key}`, v);
  return n;
}

/**
 * Expands a Slurm host list as `scontrol show hostnames` does: `node[01-03,07],gpu5` gives `node01`,
 * `node02`, `node03`, `node07`, `gpu5` (zero padding kept; several bracket groups in one name multiply:
 * `r[1-2]n[1-2]` gives `r1n1 r1n2 r2n1 r2n2`).
 *
 * @param list - the value of `SLURM_JOB_NODELIST` / `SLURM_NODELIST`
 * @param limit - stop after this many hosts (default: all)
 * @throws RangeError for an unbalanced bracket or a range that runs backwards
 */
export function expandHostlist(list: string, limit = Infinity): string[] {
  const out: string[] = [];
  // Split at the commas outside brackets.
  const items: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === '[') depth++;
    else if (c === ']') depth--;
    if (depth < 0 || depth > 1) throw rangeError('Slurm host list', 'SLURM_JOB_NODELIST', list);
    if (c === ',' && depth === 0) {
      items.push(list.slice(start, i));
      start = i + 1;
    }
  }
  if (depth !== 0) throw rangeError('Slurm host list', 'SLURM_JOB_NODELIST', list);
  items.push(list.slice(start));
  const expand = (item: string): string[] => {
    const m = /^([^[]*)\[([^\]]*)\](.*)$/.exec(item);
    if (!m) return [item];
    const [, prefix, ranges, rest] = m as unknown as [string, string, string, string];
    const heads: string[] = [];
    for (const r of ranges.split(',')) {
      const mm = /^(\d+)(?:-(\d+))?$/.exec(r.trim());
      if (!mm) throw rangeError('Slurm host list', 'SLURM_JOB_NODELIST', list);
      const lo = Number(mm[1]);
      const hi = mm[2] === undefined ? lo : Number(mm[2]);
      if (hi < lo) throw rangeError('Slurm host list', 'SLURM_JOB_NODELIST', list);
      for (let n = lo; n <= hi && heads.length < limit; n++) heads.push(prefix + String(n).padStart(mm[1]!.length, '0'));
    }
    const tails = expand(rest);
    const res: string[] = [];
    for (const h of heads) for (const t of tails) if (res.length < limit) res.push(h + t);
    return res;
  };
  for (const item of items) {
    if (item.trim() === '') continue;
    for (const h of expand(item.trim())) {
      if (out.length >= limit) return out;
      out.push(h);
    }
  }
  return out;
}

/**
 * Reads rank, world size, local rank and the master address/port.
 *
 * - torchrun / `tpkit launch`: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`
 * - Slurm: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`; master from `MASTER_ADDR`/`MASTER_PORT`,
 *   and when `MASTER_ADDR` is unset, the first host of `SLURM_JOB_NODELIST` (else `SLURM_NODELIST`), expanded as
 *   `scontrol show hostnames` does (`expandHostlist`)
 * - Open MPI: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_SIZE`
 * - none of these: a single process (rank 0 of 1) on 127.0.0.1.
 *
 * @throws RangeError when a variable is not an integer, rank ≥ world size, or a multi-process job lacks
 *   `MASTER_PORT`
 */
export function readDistEnv(env: NodeJS.ProcessEnv = process.env): DistEnv {
  let rank: number | undefined;
  let worldSize: number | undefined;
  let localRank: number | undefined;
  let localWorldSize: number | undefined;
  let source: DistEnv['source'];
  if (env.RANK !== undefined && env.WORLD_SIZE !== undefined) {
    source = 'torchrun';
    rank = int(env, 'RANK');
    worldSize = int(env, 'WORLD_SIZE');
    localRank = int(env, 'LOCAL_RANK') ?? rank;
    localWorldSize = int(env, 'LOCAL_WORLD_SIZE') ?? worldSize;
  } else if (env.SLURM_PROCID !== undefined && env.SLURM_NTASKS !== undefined) {
    source = 'slurm';
    rank = int(env, 'SLURM_PROCID');
    worldSize = int(env, 'SLURM_NTASKS');
    localRank = int(env, 'SLURM_LOCALID') ?? 0;
    localWorldSize = int(env, 'SLURM_NTASKS_PER_NODE') ?? worldSize;
  } else if (env.OMPI_COMM_WORLD_RANK !== undefined && env.OMPI_COMM_WORLD_SIZE !== undefined) {
    source = 'openmpi';
    rank = int(env, 'OMPI_COMM_WORLD_RANK');
    worldSize = int(env, 'OMPI_COMM_WORLD_SIZE');
    localRank = int(env, 'OMPI_COMM_WORLD_LOCAL_RANK') ?? 0;
    localWorldSize = int(env, 'OMPI_COMM_WORLD_LOCAL_SIZE') ?? worldSize;
  } else {
    source = 'single';
    rank = 0;
    worldSize = 1;
    localRank = 0;
    localWorldSize = 1;
  }
  positiveInteger(worldSize, 'world size');
  integerInRange(rank, 'rank', 0, worldSize!);
  integerInRange(localRank, 'local rank', 0, Math.max(1, localWorldSize ?? 1));
  let masterAddr = env.MASTER_ADDR || '';
  if (!masterAddr && source === 'slurm') {
    const list = env.SLURM_JOB_NODELIST || env.SLURM_NODELIST;
    if (list) masterAddr = expandHostlist(list, 1)[0] ?? '';
  }
  masterAddr ||= '127.0.0.1';
  let masterPort = int(env, 'MASTER_PORT');
  if (masterPort === undefined) {
    if (worldSize! > 1) throw new RangeError(`MASTER_PORT must be set for a job of ${worldSize} processes (source: ${source})`);
    masterPort = 0;
  }
  integerInRange(masterPort, 'MASTER_PORT', 0, 65536);
  // torchrun's agent store outlives restarts: its run id and restart count make each attempt's keys its own.
  const elastic = env.TORCHELASTIC_RUN_ID ? `torchelastic-${env.TORCHELASTIC_RUN_ID}.${env.TORCHELASTIC_RESTART_COUNT || '0'}` : '';
  const runId = env.TPKIT_RUN_ID || elastic || env.SLURM_JOB_ID || env.OMPI_MCA_ess_base_jobid || 'default';
  return { rank: rank!, worldSize: worldSize!, localRank: localRank!, localWorldSize: localWorldSize!, masterAddr, masterPort, runId, source };
}

// ---------------------------------------------------------------------------------------------------------
// tpkit's own variables
// ---------------------------------------------------------------------------------------------------------

/** Largest timeout Node's timers honour (2^31 − 1 ms, about 24.8 days); longer ones fire at once. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** Where this rank finds the rendezvous store. */
export type StoreHost =
  /** Rank 0 hosts tpkit's store in its own process (srun, mpirun, a hand-set environment). */
  | 'rank0'
  /** The `tpkit launch` process of node 0 hosts tpkit's store (`TPKIT_USE_LAUNCHER_STORE=1`). */
  | 'launcher'
  /** torchrun's agent hosts a torch TCPStore (`TORCHELASTIC_USE_AGENT_STORE=True`). */
  | 'torch-agent';

/**
 * Every `TPKIT_*` variable tpkit reads (and the few of other tools that change what it does), parsed once.
 * `undefined` means the variable is unset or empty.
 */
export interface TpkitEnv {
  /** `TPKIT_TIMEOUT_MS`: default timeout of the store, the rendezvous and every group op, in ms. */
  timeoutMs: number | undefined;
  /** `TPKIT_STORE_TOKEN`: shared secret of tpkit's store (HMAC-SHA256 challenge–response). */
  storeToken: string | undefined;
  /** `TPKIT_GLOO_HOSTNAME`: the address (or host name) this rank advertises to Gloo peers. */
  glooHostname: string | undefined;
  /** `TPKIT_SOCKET_IFNAME`, else `GLOO_SOCKET_IFNAME`: the network interface whose address is advertised. */
  socketIfname: string | undefined;
  /** The variable {@link TpkitEnv.socketIfname} came from. */
  socketIfnameVar: 'TPKIT_SOCKET_IFNAME' | 'GLOO_SOCKET_IFNAME' | undefined;
  /** `TPKIT_CHECK` (default on; `off` skips the per-collective consistency exchange). */
  check: boolean;
  /** Who hosts the store: `TORCHELASTIC_USE_AGENT_STORE`, `TPKIT_USE_LAUNCHER_STORE`, else rank 0. */
  storeHost: StoreHost;
}

function flag(v: string | undefined): boolean {
  return v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());
}

/**
 * Parses a timeout variable: a decimal integer in [1, 2^31) ms.
 * @throws RangeError `Expected positive integer for TPKIT_TIMEOUT_MS but received abc of type string`, or
 *   `Expected integer in [1, 2147483648) (ms; Node's timers fire at once beyond) for … ` for a longer one
 */
function timeoutVar(env: NodeJS.ProcessEnv, key: 'TPKIT_TIMEOUT_MS'): number | undefined {
  const raw = env[key];
  if (raw === undefined || raw === '') return undefined;
  if (!/^\s*\d+\s*$/.test(raw) || Number(raw) < 1) throw rangeError('positive integer', key, raw);
  const n = Number(raw);
  if (n > MAX_TIMEOUT_MS) throw rangeError(`integer in [1, ${MAX_TIMEOUT_MS + 1}) (ms; Node's timers fire at once beyond)`, key, raw);
  return n;
}

/** `TPKIT_TIMEOUT_MS` alone (see {@link readTpkitEnv}). */
export function envTimeoutMs(env: NodeJS.ProcessEnv = process.env): number | undefined {
  return timeoutVar(env, 'TPKIT_TIMEOUT_MS');
}

/** `TPKIT_STORE_TOKEN` alone (see {@link readTpkitEnv}); empty means none. */
export function envStoreToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.TPKIT_STORE_TOKEN || undefined;
}

/**
 * Reads tpkit's variables from `env` (initDistributed's `env` option when given, else `process.env`): the one
 * place they are parsed, so every one of them has one meaning and one error message.
 *
 * | variable | meaning |
 * |---|---|
 * | `TPKIT_TIMEOUT_MS` | default timeout in ms (integer in [1, 2^31)); default 300 000 |
 * | `TPKIT_STORE_TOKEN` | shared secret of tpkit's store; unset or empty: no authentication |
 * | `TPKIT_GLOO_HOSTNAME` | address advertised to Gloo peers (overrides the interface and the default) |
 * | `TPKIT_SOCKET_IFNAME` (or `GLOO_SOCKET_IFNAME`) | interface whose address is advertised |
 * | `TPKIT_CHECK` | `off` skips the consistency exchange before each collective |
 * | `TPKIT_USE_LAUNCHER_STORE` | set to 1 by `tpkit launch`: its node-0 process hosts the store |
 * | `TORCHELASTIC_USE_AGENT_STORE` | set to `True` by torchrun: its agent hosts a torch TCPStore |
 *
 * @throws RangeError of the form `Expected positive integer for TPKIT_TIMEOUT_MS but received abc of type string`
 */
export function readTpkitEnv(env: NodeJS.ProcessEnv = process.env): TpkitEnv {
  const socketIfnameVar = env.TPKIT_SOCKET_IFNAME ? 'TPKIT_SOCKET_IFNAME' : env.GLOO_SOCKET_IFNAME ? 'GLOO_SOCKET_IFNAME' : undefined;
  const check = (env.TPKIT_CHECK ?? '').trim().toLowerCase();
  if (!/^(|on|off|1|0|true|false)$/.test(check)) throw rangeError("'on' or 'off'", 'TPKIT_CHECK', env.TPKIT_CHECK);
  return {
    timeoutMs: envTimeoutMs(env),
    storeToken: envStoreToken(env),
    glooHostname: env.TPKIT_GLOO_HOSTNAME?.trim() || undefined,
    socketIfname: socketIfnameVar === undefined ? undefined : env[socketIfnameVar]!.trim(),
    socketIfnameVar,
    check: !/^(off|0|false)$/.test(check),
    storeHost: flag(env.TORCHELASTIC_USE_AGENT_STORE) ? 'torch-agent' : flag(env.TPKIT_USE_LAUNCHER_STORE) ? 'launcher' : 'rank0',
  };
}
