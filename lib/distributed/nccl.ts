/**
 * NCCL communicator: collectives between GPUs, one GPU per rank, on cuda tensors of any dtype (float32 →
 * ncclFloat32, float16 → ncclFloat16, bfloat16 → ncclBfloat16) used in place — no host staging.
 *
 * Lifecycle: `new NcclCommunicator(rank, size, deviceIndex, timeoutMs)` → `connect(store)` (rank 0 creates the
 * ncclUniqueId and publishes it under `nccl_unique_id`; every rank then runs a non-blocking
 * `ncclCommInitRankConfig`, polled off the main thread) → collectives → `close()`. Sub-groups come from
 * {@link NcclCommunicator.split} (`ncclCommSplit`, as torch.distributed's `new_group` does with NCCL).
 *
 * Each op is enqueued on the device's stream by the communicator's own thread (NCCL needs the same order on
 * every rank), and settles when its CUDA event has completed. An NCCL async error or the op's timeout aborts the
 * communicator (`ncclCommAbort`) and rejects with TpkitError `NCCL_<ERROR_NAME>` (e.g.
 * `NCCL_UNHANDLED_CUDA_ERROR`) or `TIMEOUT`, naming the rank and the op; later ops reject with `GROUP_BROKEN`.
 *
 * Stream order: work enqueued before a call is ordered before the collective; work that reads or writes its
 * tensors must wait for the returned Promise. A tensor handed to an op stays allocated until the op settles,
 * even if disposed meanwhile. NCCL point-to-point is blocking on the GPU: a send and the matching recv must be
 * issued so that neither waits behind the other on one stream (e.g. rank 0 sends first, rank 1 receives first).
 * Each communicator has its own thread, so ops of DIFFERENT communicators on one device reach the shared stream
 * in no fixed order relative to each other: when two groups share ranks, await an op of one group before
 * issuing one on the other, or two ranks may queue them in opposite orders and wait on each other.
 *
 * An async NCCL error, a device error or an op's timeout rejects every op in flight on the communicator (an
 * aborted NCCL kernel ends early, so its result is undefined), not only the one that failed.
 *
 * @module
 * @internal
 */
import { TpkitError } from '../errors';
import { allocFilledAsync, cudaDeviceIndex } from '../backend/cuda';
import { cudaBufferOf } from '../backend/index';
import { loadCuda, type NativeDeviceBuffer, type NativeNcclComm } from '../native/cuda';
import { Tensor } from '../tensor';
import { integerInRange, positiveInteger } from '../validate';
import type { Communicator, OpContext, RendezvousStore } from './comm';

/** Store key of the ncclUniqueId that rank 0 publishes (the group's store prefixes it). */
export const NCCL_UNIQUE_ID_KEY = 'nccl_unique_id';

/** Size of an ncclUniqueId in bytes (`NCCL_UNIQUE_ID_BYTES`). */
export const NCCL_UNIQUE_ID_BYTES = 128;

/** `NCCL_SPLIT_NOCOLOR`: the color of a rank that is not part of the new communicator. */
const NCCL_SPLIT_NOCOLOR = -1;

/**
 * NCCL-backed {@link Communicator} for one group.
 *
 * @example
 * ```ts
 * const comm = new NcclCommunicator(rank, worldSize, localRank, 60_000);
 * await comm.connect(store);
 * await comm.allReduce(t, REDOP_CODE.sum, { seq: 0, timeoutMs: 60_000 });
 * comm.close();
 * ```
 */
export class NcclCommunicator implements Communicator {
  /** Always `'nccl'`. */
  readonly backend = 'nccl' as const;
  readonly #native: NativeNcclComm;
  #connected = false;
  #closed = false;

  /**
   * @param rank - rank in this group, in [0, size)
   * @param size - group size (number of ranks, one GPU each)
   * @param deviceIndex - the CUDA device N of this rank (`cuda:N`, usually the local rank)
   * @param timeoutMs - timeout of the rendezvous and of split, and the default of each op (ms)
   * @throws TypeError / RangeError for bad arguments or a device index ≥ the number of visible devices
   * @throws TpkitError `CUDA_UNAVAILABLE` (addon not built) or `NO_CUDA_DEVICE` (no GPU visible)
   */
  constructor(
    readonly rank: number,
    readonly size: number,
    readonly deviceIndex: number,
    readonly timeoutMs: number,
  ) {
    positiveInteger(size, 'size');
    integerInRange(rank, 'rank', 0, size);
    integerInRange(deviceIndex, 'deviceIndex', 0, 65536);
    positiveInteger(timeoutMs, 'timeoutMs');
    cudaDeviceIndex(`cuda:${deviceIndex}`);
    this.#native = new (loadCuda().NcclComm)(rank, size, deviceIndex, timeoutMs);
  }

  /**
   * Rendezvous: rank 0 creates the ncclUniqueId and sets it under {@link NCCL_UNIQUE_ID_KEY}; the other ranks
   * get it (waiting for the key); then every rank initialises its communicator (non-blocking, polled until ready
   * or `timeoutMs`).
   *
   * @throws TpkitError `TIMEOUT` when some rank did not join in time, `NCCL_<NAME>` when NCCL init failed
   *   (e.g. `NCCL_UNHANDLED_CUDA_ERROR`, or `NCCL_INVALID_USAGE` for two ranks on one GPU)
   */
  async connect(store: RendezvousStore): Promise<void> {
    if (this.#connected) throw new TpkitError('ALREADY_INITIALIZED', `the NCCL communicator of rank ${this.rank} is already connected`, { backend: 'nccl' });
    this.#connected = true;
    let id: Uint8Array;
    if (this.rank === 0) {
      id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
      await loadCuda().ncclUniqueId(id);
      await store.set(NCCL_UNIQUE_ID_KEY, id);
    } else {
      const got = await store.get(NCCL_UNIQUE_ID_KEY);
      if (got.length !== NCCL_UNIQUE_ID_BYTES) {
        throw new TpkitError(
          'STORE_PROTOCOL',
          `rank ${this.rank}: the store value ${NCCL_UNIQUE_ID_KEY} has ${got.length} bytes, expected an ncclUniqueId of ${NCCL_UNIQUE_ID_BYTES}`,
          { backend: 'nccl' },
        );
      }
      id = new Uint8Array(got.buffer, got.byteOffset, got.length).slice();
    }
    await this.#native.connect(id);
  }

  /** In place: every rank ends with the reduction (`REDOP_CODE`: sum, prod, max, min, avg = ncclAvg). */
  async allReduce(t: Tensor, redop: number, ctx: OpContext): Promise<void> {
    await this.#native.allReduce(this.#buffer(t, 't'), redop, ctx.timeoutMs);
  }

  /** Returns `[size, ...t.shape]` (rank-major) of t's dtype on t's device. `dim` is the caller's concern. */
  async allGather(t: Tensor, dim: number, ctx: OpContext): Promise<Tensor> {
    const input = this.#buffer(t, 't');
    const out = await allocFilledAsync(this.deviceIndex, t.dtype, t.numel * this.size, (o) => this.#native.allGather(input, o, ctx.timeoutMs));
    return Tensor._wrap(out, [this.size, ...t.shape]);
  }

  /** `work` holds `size` equal rank-major chunks; returns this rank's reduced chunk, flat (`[work.numel / size]`). */
  async reduceScatter(work: Tensor, redop: number, dim: number, ctx: OpContext): Promise<Tensor> {
    const input = this.#buffer(work, 'work');
    if (work.numel % this.size !== 0) {
      throw new RangeError(`reduceScatter on rank ${this.rank}: ${work.numel} elements are not divisible by the group size ${this.size}`);
    }
    const chunk = work.numel / this.size;
    const out = await allocFilledAsync(this.deviceIndex, work.dtype, chunk, (o) => this.#native.reduceScatter(input, o, redop, ctx.timeoutMs));
    return Tensor._wrap(out, [chunk]);
  }

  /** In place: every rank ends with `root`'s elements (`root` is a rank in this group). */
  async broadcast(t: Tensor, root: number, ctx: OpContext): Promise<void> {
    await this.#native.broadcast(this.#buffer(t, 't'), root, ctx.timeoutMs);
  }

  /** Chunk j of t (dim 0 split in `size` parts) goes to rank j; returns the received chunks, rank-major, shaped like t. */
  async allToAll(t: Tensor, ctx: OpContext): Promise<Tensor> {
    const input = this.#buffer(t, 't');
    const out = await allocFilledAsync(this.deviceIndex, t.dtype, t.numel, (o) => this.#native.allToAll(input, o, ctx.timeoutMs));
    return Tensor._wrap(out, t.shape);
  }

  /**
   * Uneven all-to-all (torch's `all_to_all_single` with split sizes): `inputSplits[j]` rows of `t` go to rank j,
   * `outputSplits[i]` rows arrive from rank i. NCCL has no consistency check of its own, so every rank first
   * all-gathers its split sizes (one small all-gather) and checks that rank i's input split for j equals rank
   * j's output split for i; a mismatch rejects on every rank with `COLLECTIVE_MISMATCH` before any row moves
   * (the communicator stays usable). The rows then travel as one grouped send/receive per peer.
   */
  async allToAllV(t: Tensor, inputSplits: readonly number[], outputSplits: readonly number[], ctx: OpContext): Promise<Tensor> {
    const n = this.size;
    const mine = Tensor.from([...inputSplits, ...outputSplits], [2 * n], { device: t.device });
    let table: Float32Array;
    try {
      const all = await this.allGather(mine, 0, ctx);
      table = await all.toFloat32Array();
      all.dispose();
    } finally {
      mine.dispose();
    }
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const sends = table[i * 2 * n + j]!;
        const expects = table[j * 2 * n + n + i]!;
        if (sends !== expects) {
          throw new TpkitError(
            'COLLECTIVE_MISMATCH',
            `allToAll with split sizes on rank ${this.rank} (nccl): rank ${i} sends ${sends} rows to rank ${j}, which expects ${expects}`,
            { backend: 'nccl', details: { op: 'allToAll', seq: ctx.seq } },
          );
        }
      }
    }
    const input = this.#buffer(t, 't');
    const rowElems = t.shape.slice(1).reduce((a, b) => a * b, 1);
    const outRows = outputSplits.reduce((a, b) => a + b, 0);
    const out = await allocFilledAsync(this.deviceIndex, t.dtype, Math.max(1, outRows * rowElems),
      (o) => this.#native.allToAllV(input, o, rowElems, inputSplits.slice(), outputSplits.slice(), ctx.timeoutMs));
    const result = Tensor._wrap(out, [outRows * rowElems === 0 ? 1 : outRows, ...t.shape.slice(1)]);
    if (outRows * rowElems !== 0) return result;
    const empty = result.narrow(0, 0, 0);
    result.dispose();
    return empty;
  }

  /** A one-element all-reduce; resolves when it completed on this rank's stream. */
  async barrier(ctx: OpContext): Promise<void> {
    await this.#native.barrier(ctx.timeoutMs);
  }

  /** `ncclSend` of t to `dst`. NCCL orders messages per pair, so `p2pSeq` is not needed on the wire. */
  async send(t: Tensor, dst: number, p2pSeq: number, timeoutMs: number): Promise<void> {
    await this.#native.send(this.#buffer(t, 't'), dst, timeoutMs);
  }

  /** `ncclRecv` into t from `src` (same dtype and element count as the sender's tensor). */
  async recv(t: Tensor, src: number, p2pSeq: number, timeoutMs: number): Promise<void> {
    await this.#native.recv(this.#buffer(t, 't'), src, timeoutMs);
  }

  /**
   * A communicator of the ranks `memberRanks` (ranks of THIS communicator), through `ncclCommSplit`. Every rank of
   * this communicator must call it with the same list, in the same order relative to other collectives; a member's
   * rank in the new communicator is its index in `memberRanks`. Non-members get null.
   *
   * @throws TypeError / RangeError for a list that is not distinct ranks of this group
   * @throws TpkitError `TIMEOUT` (some rank did not call it) or `NCCL_<NAME>`; this communicator is aborted then
   */
  async split(memberRanks: number[]): Promise<NcclCommunicator | null> {
    if (!Array.isArray(memberRanks)) throw new TypeError(`Expected array of ranks for memberRanks but received ${typeof memberRanks}`);
    memberRanks.forEach((r, i) => integerInRange(r, `memberRanks[${i}]`, 0, this.size));
    if (new Set(memberRanks).size !== memberRanks.length) throw new RangeError(`Expected distinct ranks for memberRanks but received [${memberRanks.join(', ')}]`);
    const index = memberRanks.indexOf(this.rank);
    if (index < 0) {
      await this.#native.split(NCCL_SPLIT_NOCOLOR, 0, null, this.timeoutMs);
      return null;
    }
    const child = new NcclCommunicator(index, memberRanks.length, this.deviceIndex, this.timeoutMs);
    try {
      await this.#native.split(0, index, child.#native, this.timeoutMs);
    } catch (e) {
      child.close();
      throw e;
    }
    child.#connected = true;
    return child;
  }

  /** True once an async error or a timeout aborted the communicator. */
  get isBroken(): boolean {
    return this.#native.isBroken();
  }

  /**
   * Idempotent. Ops not yet started reject with `GROUP_DESTROYED`; ops in flight complete; then the
   * communicator is finalized and destroyed (aborted when broken) off the main thread.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
  }

  /** The device buffer of a cuda tensor on this communicator's device. */
  #buffer(t: Tensor, name: string): NativeDeviceBuffer {
    if (!(t instanceof Tensor)) throw new TypeError(`Expected Tensor for ${name}`);
    if (t.device === 'cpu') {
      throw new TypeError(
        `NCCL needs cuda tensors but received a cpu tensor for ${name} (move it with t.to({ device: 'cuda:${this.deviceIndex}' }), or use the gloo backend)`,
      );
    }
    if (t.device !== `cuda:${this.deviceIndex}`) {
      throw new RangeError(`Expected a tensor on cuda:${this.deviceIndex} (rank ${this.rank}'s device) for ${name} but received one on ${t.device}`);
    }
    return cudaBufferOf(t._storage);
  }
}
