/**
 * The interface between a ProcessGroup and the library that moves its bytes (Gloo or NCCL). The group does
 * validation, sequence numbers, layout along `dim`, timeouts and error spreading; a backend only runs one
 * already-validated collective on contiguous tensors.
 *
 * @module
 * @internal
 */
import type { Tensor } from '../tensor';

/** A reduction. `avg` is the sum divided by the group size. */
export type ReduceOp = 'sum' | 'prod' | 'max' | 'min' | 'avg';

/** Reduction codes shared with C++: sum 0, prod 1, max 2, min 3, avg 4. */
export const REDOP_CODE: Readonly<Record<ReduceOp, number>> = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 };

/** The store operations a backend may need for its rendezvous (keys are already prefixed for the group). */
export interface RendezvousStore {
  set(key: string, value: Uint8Array): Promise<void>;
  /** Waits until the key exists, up to `opts.timeoutMs` (default: the group timeout). */
  get(key: string, opts?: { timeoutMs?: number }): Promise<Buffer>;
}

/** Facts every op of a group shares. */
export interface OpContext {
  /** Sequence number of the collective in this group (same on every rank). */
  seq: number;
  /** Timeout of this op in ms. */
  timeoutMs: number;
  /**
   * The input's shape, for the ops whose result depends on it beyond the element count (all-gather and
   * reduce-scatter along a dim, all-to-all of rows): part of what the ranks agree on before data moves.
   */
  shape?: readonly number[];
}

/** One backend's communicator for one group. */
export interface Communicator {
  readonly backend: 'gloo' | 'nccl';
  connect(store: RendezvousStore): Promise<void>;
  /** In place. */
  allReduce(t: Tensor, redop: number, ctx: OpContext): Promise<void>;
  /** Returns `[size * t.numel]` elements, rank-major (shape `[size, ...t.shape]`). `dim` is only described. */
  allGather(t: Tensor, dim: number, ctx: OpContext): Promise<Tensor>;
  /**
   * `work` holds `size` equal rank-major chunks; returns this rank's reduced chunk (flat, `work.numel / size`).
   * `scratch`: `work` is a private copy the communicator may overwrite (the caller disposes it afterwards).
   */
  reduceScatter(work: Tensor, redop: number, dim: number, ctx: OpContext, scratch?: boolean): Promise<Tensor>;
  /** In place; `root` is a rank in the group. */
  broadcast(t: Tensor, root: number, ctx: OpContext): Promise<void>;
  /** Splits dim 0 into `size` chunks; chunk j goes to rank j; returns the received chunks, rank-major. */
  allToAll(t: Tensor, ctx: OpContext): Promise<Tensor>;
  /**
   * All-to-all with split sizes (`torch.distributed.all_to_all_single` with input/output split sizes): rows
   * `[Σ in[<j], Σ in[≤j])` of dim 0 go to rank j; the rows from rank i come back at rows `[Σ out[<i], Σ out[≤i])`.
   * Returns `[Σ outputSplits, ...t.shape.slice(1)]`. The group has validated both arrays (length = size,
   * non-negative integers, Σ inputSplits = t.shape[0]); the backend verifies across ranks that rank i's
   * `outputSplits[j]` equals rank j's `inputSplits[i]` (COLLECTIVE_MISMATCH on every rank otherwise).
   * Absent on a backend without it (the group then throws UNSUPPORTED).
   */
  allToAllV?(t: Tensor, inputSplits: readonly number[], outputSplits: readonly number[], ctx: OpContext): Promise<Tensor>;
  barrier(ctx: OpContext): Promise<void>;
  /** `p2pSeq` counts messages from this sender to this receiver (both sides agree). */
  send(t: Tensor, dst: number, p2pSeq: number, timeoutMs: number): Promise<void>;
  recv(t: Tensor, src: number, p2pSeq: number, timeoutMs: number): Promise<void>;
  close(): void;
}
