/**
 * The plug-in interface of the collective benchmarks (nccl-tests' `testColl`): a plug-in owns only what
 * differs between operations — its element counts, its bus-bandwidth factor, the reference value of each
 * output element, and the call that runs it. Sizes, warm-up, timing, checking and output live in the shared
 * harness (`bench/harness.ts`).
 *
 * Bandwidths follow nccl-tests' docs/PERFORMANCE.md: algbw = S / t, where S is the size column (the bytes
 * of the larger of the send and receive buffers: the total size for all-gather, reduce-scatter and
 * all-to-all), and busbw = algbw × {@link CollectivePlugin.busBwFactor}.
 *
 * @module
 */
import type { ProcessGroup } from '../../lib/distributed/process_group';
import type { Tensor } from '../../lib/tensor';
import type { BenchRedop } from '../data';

/** nccl-tests' names of the benchmarked operations (the `--op` values). */
export type CollectiveName = 'all_reduce' | 'all_gather' | 'reduce_scatter' | 'broadcast' | 'alltoall' | 'sendrecv';

/** The two buffer arrangements nccl-tests reports, as JSON keys. */
export type CollForm = 'outOfPlace' | 'inPlace';

/** What one run of a plug-in knows about the job. */
export interface CollParams {
  /** This process's rank in the group. */
  rank: number;
  /** Number of ranks in the group. */
  worldSize: number;
  /** Root rank (rooted operations only). */
  root: number;
  /** Reduction (reducing operations only). */
  redop: BenchRedop;
}

/** Element counts of one call (nccl-tests' getCollByteCount, in elements). */
export interface CollCounts {
  /** Elements each rank sends (its input buffer). */
  send: number;
  /** Elements each rank receives (its output buffer). */
  recv: number;
  /** The `count` column: the count argument of the call (per-rank count for all-gather / reduce-scatter). */
  param: number;
}

/** Element `i` of rank `rank`'s input. */
export type InputFn = (rank: number, i: number) => number;

/** The part of a process group the plug-ins use (a {@link ProcessGroup}; tests may pass a stand-in). */
export type BenchGroup = Pick<ProcessGroup, 'rank' | 'size' | 'allReduce' | 'allGather' | 'reduceScatter' | 'broadcast' | 'allToAll' | 'send' | 'recv' | 'barrier'>;

/**
 * Runs the operation once. `send` holds this rank's input (`counts.send` elements); `recv` is a buffer of
 * `counts.recv` elements when the plug-in asked for one. Resolves to the tensor holding the output.
 */
export type CollRunner = (g: BenchGroup, send: Tensor, recv: Tensor | null, p: CollParams) => Promise<Tensor>;

/** One benchmarked operation. */
export interface CollectivePlugin {
  readonly name: CollectiveName;
  /** True for reductions: the table's redop column shows the reduction, else `none`. */
  readonly reduces: boolean;
  /** True for rooted operations: the root column shows the root, else −1. */
  readonly rooted: boolean;
  /** Element counts for a requested `count` (= size / element size) on `worldSize` ranks. */
  counts(count: number, worldSize: number): CollCounts;
  /** busbw / algbw on `worldSize` ranks (nccl-tests PERFORMANCE.md). */
  busBwFactor(worldSize: number): number;
  /** Reference value of output element `j` on rank `p.rank`, computed from the inputs alone. */
  expected(input: InputFn, j: number, p: CollParams, c: CollCounts): number;
  /** The forms tpkit's API offers for this operation; a missing form is reported as N/A. */
  readonly run: Partial<Record<CollForm, CollRunner>>;
  /** The harness allocates a `counts.recv` buffer for the runner. */
  readonly needsRecvBuffer?: boolean;
}
