/**
 * The registry of collective plug-ins, keyed by their nccl-tests name.
 *
 * @module
 */
import { allGather } from './all_gather';
import { allReduce } from './all_reduce';
import { alltoall } from './alltoall';
import { broadcast } from './broadcast';
import { reduceScatter } from './reduce_scatter';
import { sendrecv } from './sendrecv';
import type { CollectiveName, CollectivePlugin } from './types';

export type * from './types';

/** Every benchmarked collective, by `--op` name. */
export const COLLECTIVES: Readonly<Record<CollectiveName, CollectivePlugin>> = {
  all_reduce: allReduce,
  all_gather: allGather,
  reduce_scatter: reduceScatter,
  broadcast,
  alltoall,
  sendrecv,
};

/** The `--op` names, in help order. */
export const COLLECTIVE_NAMES = Object.keys(COLLECTIVES) as CollectiveName[];
