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
  /** Host of the rendezvous store (rank 0 serves it). */
  masterAddr: string;
  /** TCP port of the rendezvous store. */
  masterPort: number;
  /** Id of this run (a fresh one per launcher restart): the store key prefix. */
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
 * Reads rank, world size, local rank and the master address/port.
 *
 * - torchrun / `tpkit launch`: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`
 * - Slurm: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`; master from `MASTER_ADDR`/`MASTER_PORT`
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
  const masterAddr = env.MASTER_ADDR || '127.0.0.1';
  let masterPort = int(env, 'MASTER_PORT');
  if (masterPort === undefined) {
    if (worldSize! > 1) throw new RangeError(`MASTER_PORT must be set for a job of ${worldSize} processes (source: ${source})`);
    masterPort = 0;
  }
  integerInRange(masterPort, 'MASTER_PORT', 0, 65536);
  const runId = env.TPKIT_RUN_ID || env.SLURM_JOB_ID || env.OMPI_MCA_ess_base_jobid || 'default';
  return { rank: rank!, worldSize: worldSize!, localRank: localRank!, localWorldSize: localWorldSize!, masterAddr, masterPort, runId, source };
}
