/**
 * Process groups: the ranks that run collectives together, as in `torch.distributed`.
 *
 * Lifecycle: `initDistributed()` returns the world group; `world.newGroup(ranks)` makes subgroups (every
 * rank of the parent calls it, in the same order); `destroy()` ends a group. Every collective is validated
 * here before anything is sent, numbered (the sequence number is the same on every rank), bounded by a
 * timeout, and — unless `TPKIT_CHECK=off` — preceded by a small exchange in which the ranks agree on
 * (sequence number, op, dtype, element count, root, reduction, dim, and the shape for the ops whose result depends
 * on it: all-gather, reduce-scatter, all-to-all), so a mismatch rejects on every rank with `COLLECTIVE_MISMATCH`
 * instead of corrupting data. All-reduce and broadcast are elementwise on the flat data: ranks may pass different
 * shapes of one element count (as in torch). With `TPKIT_CHECK=off` the ranks still compare (op, element count),
 * so a size disagreement rejects instead of aborting the process. A failure on one rank is published through the
 * rendezvous store so the others abort promptly rather than waiting for their own timeout.
 *
 * @module
 */
import { TpkitError } from '../errors';
import { MAX_TIMEOUT_MS } from './env';
import { Tensor, checkTensor, formatShape } from '../tensor';
import { cat } from '../ops';
import { dimIndex, integerInRange, nonNegativeInteger, oneOf, options, positiveInteger, typeError } from '../validate';
import { Communicator, OpContext, REDOP_CODE, ReduceOp } from './comm';
import { DEAD_RANK_PREFIX, TCPStore } from './store';

export type { ReduceOp } from './comm';

/** The reductions accepted by `allReduce` / `reduceScatter`. */
export const REDUCE_OPS: readonly ReduceOp[] = ['sum', 'avg', 'max', 'min', 'prod'];

/** Per-call options of every collective. */
export interface CollectiveOptions {
  /** Overrides the group's timeout for this call (ms, positive integer). */
  timeoutMs?: number;
}

/** Names of the operations counted in {@link ProcessGroup.callCounts}. */
export type OpName = 'allReduce' | 'allGather' | 'reduceScatter' | 'broadcast' | 'allToAll' | 'barrier' | 'send' | 'recv';

/** @internal What groups of one `initDistributed` share. */
export interface GroupRuntime {
  store: TCPStore;
  globalRank: number;
  worldSize: number;
  backend: 'gloo' | 'nccl';
  check: boolean;
  /**
   * Makes this rank's communicator for a new group (members only) and connects it through the store keys of
   * group `name`.
   */
  connectCommunicator(rankInGroup: number, size: number, timeoutMs: number, name: string): Promise<Communicator>;
  /** For NCCL's ncclCommSplit: every rank of the parent takes part, members or not. */
  splitParent?: (parent: Communicator, memberRanks: number[]) => Promise<Communicator | null>;
}

const POLL_ABORT_MS = 250;
/** After a timeout, how long to wait for the other ranks' arrival marks before naming the missing ones. */
const TIMEOUT_GRACE_MS = 50;
/** An op still running after min(timeout / 2, this) marks its arrival in the store (for missing-rank reports). */
const ARRIVAL_MARK_MS = 1000;
const DEAD_LOOKUP_MS = 1500;

// Not unref'd: it is awaited while an error is being diagnosed, and nothing else may hold the event loop open
// then (the store's sockets are unref'd) — an unref'd timer let the process exit in the middle of #fail.
function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** What a rank publishes under `<group>/abort` when an operation of the group failed on it. */
interface AbortRecord {
  rank: number;
  code: string;
  message: string;
  op: string;
  seq: number;
  details: Record<string, unknown>;
}

/** Validates an all-to-all split-size array: `size` non-negative integers. */
function splitSizes(value: unknown, name: string, size: number): number[] {
  if (!Array.isArray(value)) throw typeError('array of non-negative integers', name, value);
  if (value.length !== size) {
    throw new RangeError(`Expected ${size} entries (the group size) for ${name} but received ${value.length}`);
  }
  return value.map((v, i) => nonNegativeInteger(v, `${name}[${i}]`));
}

/**
 * A group of ranks that run collectives together.
 *
 * Ranks passed to `broadcast`, `send` and `recv` are ranks **in this group** (0 … size−1), as in vLLM's
 * `GroupCoordinator`; `ranks` maps them to global ranks.
 */
export class ProcessGroup {
  /** This process's rank in the group, or −1 when it is not a member. */
  readonly rank: number;
  /** Number of ranks in the group. */
  readonly size: number;
  /** Global ranks of the members, in group-rank order. */
  readonly ranks: readonly number[];
  /** The communication library: `gloo` (host, TCP) or `nccl` (GPU). */
  readonly backend: 'gloo' | 'nccl';
  /** Default timeout of this group's operations, in ms. */
  readonly timeoutMs: number;
  /** Store-key prefix naming this group (unique per run and init). */
  readonly name: string;
  /** How many operations of each kind this rank has issued (for tests and benchmarks). */
  readonly callCounts: Record<OpName, number> = {
    allReduce: 0, allGather: 0, reduceScatter: 0, broadcast: 0, allToAll: 0, barrier: 0, send: 0, recv: 0,
  };

  #rt: GroupRuntime;
  #comm: Communicator | null = null;
  #ready: Promise<void>;
  #seq = 0;
  #chain: Promise<unknown> = Promise.resolve();
  #p2pSent = new Map<number, number>();
  #p2pRecv = new Map<number, number>();
  #children = 0;
  #subgroups: ProcessGroup[] = [];
  #broken: TpkitError | null = null;
  #destroyed = false;
  #inFlight = 0;
  #pollTimer: NodeJS.Timeout | null = null;
  #abortWaiters = new Set<(e: TpkitError) => void>();

  /** @internal Use `initDistributed()` and `newGroup()`. */
  constructor(rt: GroupRuntime, ranks: number[], name: string, timeoutMs: number, connect: (() => Promise<Communicator | null>) | null) {
    this.#rt = rt;
    this.ranks = Object.freeze(ranks.slice());
    this.size = ranks.length;
    this.rank = ranks.indexOf(rt.globalRank);
    this.backend = rt.backend;
    this.timeoutMs = timeoutMs;
    this.name = name;
    if (this.rank < 0 || this.size === 1 || connect === null) {
      this.#ready = Promise.resolve();
    } else {
      this.#ready = connect().then((c) => {
        this.#comm = c;
      });
      this.#ready.catch(() => {}); // surfaced by the first operation
    }
  }

  /** True when this process belongs to the group. */
  get isMember(): boolean {
    return this.rank >= 0;
  }

  /** The error that broke the group, or null. */
  get brokenError(): TpkitError | null {
    return this.#broken;
  }

  /** @internal Resolves once the communicator is connected (rejects with the rendezvous error). */
  get ready(): Promise<void> {
    return this.#ready;
  }

  /**
   * Creates a subgroup of the given GLOBAL ranks. Every rank of this group must call it, in the same order
   * (as `torch.distributed.new_group`); non-members get a group with `rank === -1` whose operations throw.
   * The group connects in the background; its first operation waits for the connection, which ends within the
   * group's timeout (plus tens of ms; see {@link InitOptions.timeoutMs}): a member that froze or died while
   * connecting makes that operation reject with `TIMEOUT` or `PEER_LOST` instead of waiting 5 timeouts in Gloo.
   *
   * @param ranks - distinct global ranks, each a member of this group
   * @throws TypeError / RangeError for a bad rank list; TpkitError `GROUP_DESTROYED` / `GROUP_BROKEN`
   */
  newGroup(ranks: number[]): ProcessGroup {
    this.#assertAlive('newGroup');
    if (!Array.isArray(ranks) || ranks.length === 0) throw typeError('non-empty array of ranks', 'ranks', ranks);
    const seen = new Set<number>();
    for (const r of ranks) {
      if (typeof r !== 'number' || !Number.isInteger(r) || !this.ranks.includes(r)) {
        throw new RangeError(`Expected ranks of the parent group [${this.ranks.join(', ')}] for ranks but received ${formatShape(ranks)}`);
      }
      if (seen.has(r)) throw new RangeError(`Expected distinct ranks for ranks but received ${formatShape(ranks)} (rank ${r} repeats)`);
      seen.add(r);
    }
    const name = `${this.name}/sub${this.#children++}`;
    const rt = this.#rt;
    const parentReady = this.#ready;
    const member = ranks.includes(rt.globalRank);
    let connect: (() => Promise<Communicator | null>) | null = null;
    if (rt.splitParent && this.size > 1) {
      // NCCL: every rank of the parent takes part in ncclCommSplit.
      const split = rt.splitParent;
      const p = parentReady.then(() => split(this.#comm!, ranks));
      p.catch(() => {});
      connect = () => p;
    } else if (ranks.length > 1) {
      // Every rank of the parent publishes the ranks it passed; members compare them before connecting, so ranks
      // that disagree (another order, another set) reject with COLLECTIVE_MISMATCH naming both lists instead of a
      // rendezvous or first op that times out.
      const published = rt.store.set(`${name}/members/${rt.globalRank}`, JSON.stringify(ranks));
      published.catch(() => {});
      if (member) {
        const myRank = ranks.indexOf(rt.globalRank);
        connect = async () => {
          await published;
          await this.#checkMembers(name, ranks);
          return rt.connectCommunicator(myRank, ranks.length, this.timeoutMs, name);
        };
      }
    }
    const g = new ProcessGroup(rt, ranks.slice(), name, this.timeoutMs, connect);
    this.#subgroups.push(g);
    return g;
  }

  /**
   * All-reduce in place: every rank ends with the elementwise reduction of all ranks' `t`.
   * Ring algorithm on Gloo / NCCL; moves 2(n−1)/n of the data per rank.
   *
   * @param t - any shape, any dtype; host or cuda per the backend
   * @param opts.op - `sum` (default), `avg`, `max`, `min`, `prod`
   * @returns `t`
   * @throws TypeError / RangeError for bad arguments; TpkitError `TIMEOUT`, `PEER_LOST`, `COLLECTIVE_MISMATCH`,
   *   `GROUP_BROKEN`, `GROUP_DESTROYED`
   */
  async allReduce(t: Tensor, opts?: CollectiveOptions & { op?: ReduceOp }): Promise<Tensor> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions & { op?: ReduceOp }>(opts, 'options');
    const op = oneOf(o.op, 'op', REDUCE_OPS, 'sum');
    const timeoutMs = this.#timeout(o.timeoutMs);
    return this.#collective('allReduce', timeoutMs, async (comm, ctx) => {
      await comm.allReduce(t, REDOP_CODE[op], ctx);
      return t;
    }, () => t);
  }

  /**
   * All-gather: concatenates every rank's `t` along `dim` in rank order (a new tensor; shape[dim] × size).
   *
   * @param opts.dim - dimension to concatenate along (default −1, the last)
   * @throws TypeError / RangeError for bad arguments; TpkitError as {@link ProcessGroup.allReduce}
   */
  async allGather(t: Tensor, opts?: CollectiveOptions & { dim?: number }): Promise<Tensor> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions & { dim?: number }>(opts, 'options');
    if (t.ndim === 0) throw new RangeError('allGather needs a tensor of at least one dimension');
    const dim = dimIndex(o.dim ?? -1, t.ndim);
    const timeoutMs = this.#timeout(o.timeoutMs);
    const outShape = t.shape.slice();
    outShape[dim] = outShape[dim]! * this.size;
    return this.#collective('allGather', timeoutMs, async (comm, ctx) => {
      const stacked = await comm.allGather(t, dim, ctx);
      return this.#unstack(stacked, t.shape, dim, outShape);
    }, () => t.narrow(0, 0, t.shape[0]!), t.shape);
  }

  /**
   * Reduce-scatter: reduces `t` elementwise across ranks, then rank r keeps the r-th of `size` equal slices
   * along `dim` (a new tensor; shape[dim] / size).
   *
   * @param opts.dim - dimension to split (default 0); its size must be divisible by the group size
   * @param opts.op - as {@link ProcessGroup.allReduce}
   * @throws RangeError when shape[dim] is not divisible by the group size; TpkitError as allReduce
   */
  async reduceScatter(t: Tensor, opts?: CollectiveOptions & { dim?: number; op?: ReduceOp }): Promise<Tensor> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions & { dim?: number; op?: ReduceOp }>(opts, 'options');
    if (t.ndim === 0) throw new RangeError('reduceScatter needs a tensor of at least one dimension');
    const dim = dimIndex(o.dim ?? 0, t.ndim);
    const op = oneOf(o.op, 'op', REDUCE_OPS, 'sum');
    const timeoutMs = this.#timeout(o.timeoutMs);
    const size = this.isMember ? this.size : 1;
    if (t.shape[dim]! % size !== 0) {
      throw new RangeError(`reduceScatter: size ${t.shape[dim]} of dim ${dim} of shape ${formatShape(t.shape)} is not divisible by group size ${size}`);
    }
    const outShape = t.shape.slice();
    outShape[dim] = outShape[dim]! / size;
    return this.#collective('reduceScatter', timeoutMs, async (comm, ctx) => {
      const work = this.#stack(t, dim);
      try {
        const flat = await comm.reduceScatter(work, REDOP_CODE[op], dim, ctx, work !== t);
        const out = flat.reshape(outShape);
        flat.dispose();
        return out;
      } finally {
        if (work !== t) work.dispose();
      }
    }, () => t.narrow(0, 0, t.shape[0]!), t.shape);
  }

  /**
   * Broadcast in place from `src` (a rank in this group) to every rank.
   *
   * @returns `t`
   * @throws RangeError when src is not a rank of the group; TpkitError as allReduce
   */
  async broadcast(t: Tensor, src: number, opts?: CollectiveOptions): Promise<Tensor> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions>(opts, 'options');
    integerInRange(src, 'src', 0, Math.max(1, this.size));
    const timeoutMs = this.#timeout(o.timeoutMs);
    return this.#collective('broadcast', timeoutMs, async (comm, ctx) => {
      await comm.broadcast(t, src, ctx);
      return t;
    }, () => t);
  }

  /**
   * All-to-all: splits dim 0 of `t` into `size` equal chunks, sends chunk j to rank j, and returns the chunks
   * received, in rank order (same shape as `t`) — `torch.distributed.all_to_all_single` with equal splits.
   *
   * With `inputSplitSizes` / `outputSplitSizes` (torch's `input_split_sizes` / `output_split_sizes`): rank r
   * sends rows `[Σ in[<j], Σ in[≤j])` of dim 0 to rank j and receives `out[i]` rows from rank i, concatenated in
   * rank order: the result is `[Σ out, ...t.shape.slice(1)]`. Zeros are allowed. A missing one of the two is the
   * equal split of `t.shape[0]`. Rank i's `outputSplitSizes[j]` must equal rank j's `inputSplitSizes[i]`: the
   * ranks check it before any data moves (with `TPKIT_CHECK` on), and a disagreement rejects with
   * `COLLECTIVE_MISMATCH` on every rank, leaving the group usable. Used for MoE token dispatch (`FusedMoE`).
   * On `gloo` the data move with Gloo's alltoallv; on `nccl` the ranks all-gather their split sizes first (NCCL
   * has no descriptor exchange) and the rows travel as grouped ncclSend/ncclRecv (written, not yet run on a GPU).
   *
   * @param opts.inputSplitSizes - rows sent to each rank: `size` non-negative integers summing to `t.shape[0]`
   * @param opts.outputSplitSizes - rows received from each rank: `size` non-negative integers
   * @throws TypeError / RangeError for bad split sizes or when shape[0] is not divisible by the group size
   *   (equal splits); TpkitError `COLLECTIVE_MISMATCH` (splits disagree across ranks), `UNSUPPORTED` (a backend
   *   without uneven all-to-all), and as allReduce
   */
  async allToAll(t: Tensor, opts?: CollectiveOptions & { inputSplitSizes?: readonly number[]; outputSplitSizes?: readonly number[] }): Promise<Tensor> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions & { inputSplitSizes?: readonly number[]; outputSplitSizes?: readonly number[] }>(opts, 'options');
    const timeoutMs = this.#timeout(o.timeoutMs);
    const size = this.isMember ? this.size : 1;
    if (o.inputSplitSizes !== undefined || o.outputSplitSizes !== undefined) {
      if (t.ndim === 0) throw new RangeError('allToAll needs a tensor of at least one dimension');
      const rows = t.shape[0]!;
      const equal = (name: string): number[] => {
        if (rows % size !== 0) {
          throw new RangeError(`allToAll: dim 0 of shape ${formatShape(t.shape)} is not divisible by group size ${size} (no ${name} given: equal splits)`);
        }
        return new Array<number>(size).fill(rows / size);
      };
      const inSplits = o.inputSplitSizes === undefined ? equal('inputSplitSizes') : splitSizes(o.inputSplitSizes, 'inputSplitSizes', size);
      const outSplits = o.outputSplitSizes === undefined ? equal('outputSplitSizes') : splitSizes(o.outputSplitSizes, 'outputSplitSizes', size);
      const sent = inSplits.reduce((a, b) => a + b, 0);
      if (sent !== rows) {
        throw new RangeError(`allToAll: inputSplitSizes [${inSplits.join(', ')}] sum to ${sent}, expected dim 0 of shape ${formatShape(t.shape)} (${rows})`);
      }
      if (size === 1 && this.isMember && outSplits[0] !== inSplits[0]) {
        this.callCounts.allToAll++;
        throw new TpkitError('COLLECTIVE_MISMATCH', `allToAll on rank 0 of process group [${this.ranks.join(', ')}] (${this.backend}): rank 0 expects ${outSplits[0]} rows from rank 0, which sends ${inSplits[0]}`, { backend: this.backend, details: { op: 'allToAll', seq: -1 } });
      }
      return this.#collective('allToAll', timeoutMs, (comm, ctx) => {
        if (!comm.allToAllV) throw new TpkitError('UNSUPPORTED', `allToAll with split sizes is not supported by the ${this.backend} backend`, { backend: this.backend });
        return comm.allToAllV(t, inSplits, outSplits, ctx);
      }, () => t.narrow(0, 0, rows));
    }
    if (t.ndim === 0 || t.shape[0]! % size !== 0) {
      throw new RangeError(`allToAll: dim 0 of shape ${formatShape(t.shape)} is not divisible by group size ${size}`);
    }
    return this.#collective('allToAll', timeoutMs, (comm, ctx) => comm.allToAll(t, ctx), () => t.narrow(0, 0, t.shape[0]!), t.shape);
  }

  /** Waits until every rank of the group has reached the barrier. @throws TpkitError as allReduce */
  async barrier(opts?: CollectiveOptions): Promise<void> {
    const o = options<CollectiveOptions>(opts, 'options');
    const timeoutMs = this.#timeout(o.timeoutMs);
    await this.#collective('barrier', timeoutMs, (comm, ctx) => comm.barrier(ctx), () => undefined);
  }

  /**
   * Sends `t` to `dst` (a rank in this group). Matched in order with the receiver's `recv(…, src)`; a size
   * mismatch rejects on the receiver with `COLLECTIVE_MISMATCH`.
   *
   * @throws RangeError when dst is out of range or this rank; TpkitError `TIMEOUT`, `PEER_LOST`, …
   */
  async send(t: Tensor, dst: number, opts?: CollectiveOptions): Promise<void> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions>(opts, 'options');
    this.#checkPeer(dst, 'dst', 'send to');
    const timeoutMs = this.#timeout(o.timeoutMs);
    const n = this.#p2pSent.get(dst) ?? 0;
    this.#p2pSent.set(dst, n + 1);
    await this.#p2p('send', timeoutMs, (comm) => comm.send(t, dst, n, timeoutMs));
  }

  /**
   * Receives into `t` from `src` (a rank in this group).
   *
   * @throws RangeError when src is out of range or this rank; TpkitError `COLLECTIVE_MISMATCH` when the sender's
   *   element count differs, `TIMEOUT`, `PEER_LOST`, …
   */
  async recv(t: Tensor, src: number, opts?: CollectiveOptions): Promise<Tensor> {
    checkTensor(t, 't');
    const o = options<CollectiveOptions>(opts, 'options');
    this.#checkPeer(src, 'src', 'receive from');
    const timeoutMs = this.#timeout(o.timeoutMs);
    const n = this.#p2pRecv.get(src) ?? 0;
    this.#p2pRecv.set(src, n + 1);
    await this.#p2p('recv', timeoutMs, (comm) => comm.recv(t, src, n, timeoutMs));
    return t;
  }

  /**
   * Ends the group and its subgroups: queued operations reject with `GROUP_DESTROYED`, later calls throw.
   * Idempotent. Destroying the world group lets a new `initDistributed()` start over in the same process.
   */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const g of this.#subgroups) g.destroy();
    this.#stopPolling();
    const err = new TpkitError('GROUP_DESTROYED', `process group ${this.name} was destroyed`);
    for (const w of this.#abortWaiters) w(err);
    this.#abortWaiters.clear();
    if (this.#broken) this.#abortCommunicator();
    else this.#comm?.close();
    this.#ready.then(() => this.#comm?.close(), () => {});
  }

  /** `ProcessGroup(gloo, rank 1 of 2, ranks [0, 1])` */
  toString(): string {
    return `ProcessGroup(${this.backend}, rank ${this.rank} of ${this.size}, ranks [${this.ranks.join(', ')}])`;
  }

  // ---- internals ---------------------------------------------------------------------------------------

  /** Throws COLLECTIVE_MISMATCH when another member of new group `name` passed other ranks to newGroup. */
  async #checkMembers(name: string, ranks: readonly number[]): Promise<void> {
    const me = this.#rt.globalRank;
    for (const r of ranks) {
      if (r === me) continue;
      const raw = await this.#rt.store.get(`${name}/members/${r}`, { timeoutMs: this.timeoutMs });
      const theirs = JSON.parse(raw.toString()) as number[];
      if (formatShape(theirs) !== formatShape(ranks)) {
        throw new TpkitError('COLLECTIVE_MISMATCH', `newGroup(${formatShape(ranks)}) on global rank ${me}: rank ${r} called `
          + `newGroup(${formatShape(theirs)}) for the same group (every rank of the parent must create its groups with the same `
          + 'ranks, in the same order)', { details: { op: 'newGroup', ranks: ranks.slice(), rank: r, theirs } });
      }
    }
  }

  #timeout(value: unknown): number {
    if (value === undefined) return this.timeoutMs;
    const ms = positiveInteger(value, 'timeoutMs');
    // Node's timers clamp anything longer to 1 ms: a "300-day" timeout would fire at once.
    if (ms > MAX_TIMEOUT_MS) throw new RangeError(`Expected integer in [1, ${MAX_TIMEOUT_MS + 1}) (ms; Node's timers fire at once beyond) for timeoutMs but received ${ms} of type number`);
    return ms;
  }

  #checkPeer(peer: unknown, name: string, verb: string): void {
    this.#assertMember(name === 'dst' ? 'send' : 'recv');
    integerInRange(peer, name, 0, this.size);
    if (peer === this.rank) throw new RangeError(`rank ${this.rank} cannot ${verb} itself (${name} ${peer})`);
  }

  #assertAlive(op: string): void {
    if (this.#destroyed) throw new TpkitError('GROUP_DESTROYED', `${op} on process group ${this.name} after destroy()`);
    if (this.#broken) {
      throw new TpkitError('GROUP_BROKEN', `${op} on broken process group ${this.name}: ${this.#broken.message}`, {
        details: { cause: this.#broken.code },
        cause: this.#broken,
      });
    }
  }

  #assertMember(op: string): void {
    this.#assertAlive(op);
    if (!this.isMember) {
      throw new RangeError(`${op}: global rank ${this.#rt.globalRank} is not a member of process group [${this.ranks.join(', ')}]`);
    }
  }

  /** Rank-major stack of the `size` slices of `t` along `dim` (no copy when dim is the outermost). */
  #stack(t: Tensor, dim: number): Tensor {
    let outer = 1;
    for (let i = 0; i < dim; i++) outer *= t.shape[i]!;
    if (outer === 1) return t;
    const len = t.shape[dim]! / this.size;
    const parts: Tensor[] = [];
    for (let r = 0; r < this.size; r++) parts.push(t.narrow(dim, r * len, len).reshape([1, -1]));
    const stacked = cat(parts, 0);
    parts.forEach((p) => p.dispose());
    return stacked;
  }

  /** Inverse layout of an all-gather: `[size, ...shape]` rank-major → concatenation along `dim`. */
  #unstack(stacked: Tensor, shape: readonly number[], dim: number, outShape: number[]): Tensor {
    let outer = 1;
    for (let i = 0; i < dim; i++) outer *= shape[i]!;
    if (outer === 1) {
      const out = stacked.reshape(outShape);
      stacked.dispose();
      return out;
    }
    const parts: Tensor[] = [];
    for (let r = 0; r < this.size; r++) {
      const p = stacked.narrow(0, r, 1);
      parts.push(p.reshape(shape));
      p.dispose();
    }
    stacked.dispose();
    const out = cat(parts, dim);
    parts.forEach((p) => p.dispose());
    return out;
  }

  /** `shape`: the input's shape where the result depends on it (see {@link OpContext.shape}). */
  async #collective<T>(op: OpName, timeoutMs: number, body: (comm: Communicator, ctx: OpContext) => Promise<T>, single: () => T,
    shape?: readonly number[]): Promise<T> {
    this.#assertMember(op);
    this.callCounts[op]++;
    if (this.size === 1) return single();
    const ctx: OpContext = { seq: this.#seq++, timeoutMs, shape };
    // Collectives enter the communicator in call order: Gloo needs every rank to issue them identically.
    const run = this.#chain.then(async () => {
      await this.#ready;
      this.#assertAlive(op);
      // A slow op marks its arrival, so that a timeout can name the ranks that never arrived.
      const mark = setTimeout(() => void this.#markArrived(ctx.seq), Math.min(timeoutMs / 2, ARRIVAL_MARK_MS));
      mark.unref();
      try {
        return await body(this.#comm!, ctx);
      } finally {
        clearTimeout(mark);
      }
    });
    this.#chain = run.catch(() => {});
    return this.#guard(op, ctx.seq, timeoutMs, run);
  }

  async #p2p(op: 'send' | 'recv', timeoutMs: number, body: (comm: Communicator) => Promise<void>): Promise<void> {
    this.callCounts[op]++;
    const run = this.#ready.then(() => {
      this.#assertAlive(op);
      return body(this.#comm!);
    });
    return this.#guard(op, -1, timeoutMs, run);
  }

  async #guard<T>(op: string, seq: number, timeoutMs: number, run: Promise<T>): Promise<T> {
    this.#inFlight++;
    this.#startPolling();
    let onAbort: (e: TpkitError) => void = () => {};
    const aborted = new Promise<never>((_, reject) => {
      onAbort = reject;
    });
    aborted.catch(() => {});
    this.#abortWaiters.add(onAbort);
    try {
      return await Promise.race([run, aborted]);
    } catch (e) {
      throw await this.#fail(op, seq, timeoutMs, e);
    } finally {
      this.#abortWaiters.delete(onAbort);
      if (--this.#inFlight === 0) this.#stopPolling();
    }
  }

  /** Turns a native failure into the group's error, marks the group broken and tells the other ranks. */
  async #fail(op: string, seq: number, timeoutMs: number, e: unknown): Promise<unknown> {
    if (!(e instanceof TpkitError)) return e;
    if (e.code === 'GROUP_BROKEN' || e.code === 'GROUP_DESTROYED' || e.code === 'NOT_INITIALIZED') return e;
    if (this.#broken) {
      // Another op of this group failed first (or a peer's failure was propagated): report that cause.
      return this.#broken;
    }
    const where = `${op}${seq >= 0 ? ` (seq ${seq})` : ''} on rank ${this.rank} of process group [${this.ranks.join(', ')}] (${this.backend})`;
    if (e.code === 'COLLECTIVE_MISMATCH') {
      // Agreed before any data moved: the group stays usable.
      return new TpkitError('COLLECTIVE_MISMATCH', `${where}: ${e.message}`, { backend: this.backend, details: { op, seq }, cause: e });
    }
    let err: TpkitError;
    if (e.code === 'TIMEOUT') {
      const missing = seq >= 0 ? await this.#missingRanks(seq) : null;
      const who = missing === null ? '' : missing.length ? `; ranks that did not arrive: [${missing.join(', ')}]` : '; every rank arrived (a peer may be too slow)';
      err = new TpkitError('TIMEOUT', `${where} timed out after ${timeoutMs} ms${who}`, {
        backend: this.backend, details: { op, seq, timeoutMs, missingRanks: missing }, cause: e,
      });
    } else if (e.code === 'PEER_LOST') {
      // Gloo reports a peer that closed its connections — because it died, or because its own op failed and
      // it gave up on the group — as a lost connection: tell the two apart through the store.
      const found = await this.#lostRanksOrAbort();
      if (found instanceof TpkitError) {
        err = found;
      } else {
        const who = found.length ? `lost rank${found.length > 1 ? 's' : ''} ${found.join(', ')}` : 'lost a peer';
        err = new TpkitError('PEER_LOST', `${where} ${who}: ${e.message}`, { backend: this.backend, details: { op, seq, lostRanks: found }, cause: e });
      }
    } else {
      err = new TpkitError(e.code, `${where}: ${e.message}`, { backend: this.backend, details: { op, seq }, cause: e });
    }
    if (this.#broken) return this.#broken;
    this.#markBroken(err);
    const propagated = (err.details as { propagatedFrom?: number } | undefined)?.propagatedFrom !== undefined;
    if (propagated) this.#abortCommunicator();
    else void this.#publish(err, op, seq).then(() => this.#abortCommunicator());
    return err;
  }

  #markBroken(err: TpkitError): void {
    if (!this.#broken) this.#broken = err;
    for (const w of this.#abortWaiters) w(err);
    this.#abortWaiters.clear();
  }

  /**
   * Aborts the communicator of a broken group, so that the peers' operations still blocked on this rank fail at
   * once (and in turn abort theirs) instead of holding their threads and event loops until their own timeouts.
   */
  #abortCommunicator(): void {
    const comm = this.#comm as (Communicator & { abort?: () => void }) | null;
    try {
      if (comm?.abort) comm.abort();
      else comm?.close();
    } catch {
      // already closed
    }
  }

  async #publish(err: TpkitError, op: string, seq: number): Promise<void> {
    try {
      const record: AbortRecord = { rank: this.#rt.globalRank, code: err.code, message: err.message, op, seq, details: { ...(err.details ?? {}) } };
      await this.#rt.store.set(`${this.name}/abort`, JSON.stringify(record));
    } catch {
      // The store may be gone with rank 0; the others then learn of the failure from their own errors.
    }
  }

  #arrivedKey(seq: number, rank: number): string {
    return `${this.name}/arrived/${seq}/${rank}`;
  }

  #markArrived(seq: number): Promise<void> {
    return this.#rt.store.set(this.#arrivedKey(seq, this.#rt.globalRank), '1').catch(() => {});
  }

  /** Global ranks of this group that did not reach collective `seq` before the timeout. */
  async #missingRanks(seq: number): Promise<number[] | null> {
    const store = this.#rt.store;
    const absent = async (ranks: readonly number[]): Promise<number[]> => {
      const out: number[] = [];
      for (const r of ranks) if (!(await store.check([this.#arrivedKey(seq, r)]))) out.push(r);
      return out;
    };
    try {
      await store.set(this.#arrivedKey(seq, this.#rt.globalRank), '1');
      // Ranks that arrived marked it long ago (#markArrived); only a rank that timed out at the same moment
      // as this one may still be writing its mark, so wait a little only when some are absent.
      const missing = await absent(this.ranks);
      if (missing.length === 0) return missing;
      await sleep(TIMEOUT_GRACE_MS);
      return await absent(missing);
    } catch {
      return null;
    }
  }

  /** The failure another rank of this group published, or null. */
  async #readAbort(): Promise<AbortRecord | null> {
    const key = `${this.name}/abort`;
    if (!(await this.#rt.store.check([key]))) return null;
    const rec = JSON.parse((await this.#rt.store.get(key, { timeoutMs: 1000 })).toString()) as AbortRecord;
    return rec.rank === this.#rt.globalRank ? null : rec;
  }

  /**
   * The error this rank reports for a failure another rank published: the same code for a lost peer and for a
   * collective that timed out (the collective timed out for everyone: same missing ranks), else GROUP_BROKEN.
   */
  #propagatedError(rec: AbortRecord): TpkitError {
    const code = rec.code === 'PEER_LOST' ? 'PEER_LOST' : rec.code === 'TIMEOUT' && rec.seq >= 0 ? 'TIMEOUT' : 'GROUP_BROKEN';
    return new TpkitError(code, `rank ${rec.rank} of process group [${this.ranks.join(', ')}] failed (${rec.code}): ${rec.message}`, {
      backend: this.backend, details: { ...rec.details, propagatedFrom: rec.rank, originalCode: rec.code },
    });
  }

  /**
   * After a lost connection: the global ranks of this group whose store connection dropped (their process
   * died), or the failure another rank published (it closed its connections on purpose).
   */
  async #lostRanksOrAbort(): Promise<number[] | TpkitError> {
    const store = this.#rt.store;
    const deadline = Date.now() + DEAD_LOOKUP_MS;
    try {
      for (;;) {
        // The first failure wins: a rank that already diagnosed it published it.
        const rec = await this.#readAbort();
        if (rec) {
          const lost = (rec.details as { lostRanks?: unknown }).lostRanks;
          if (rec.code !== 'PEER_LOST') return this.#propagatedError(rec);
          if (Array.isArray(lost) && lost.length) return lost as number[];
        }
        const dead: number[] = [];
        for (const r of this.ranks) {
          if (r !== this.#rt.globalRank && (await store.check([`${DEAD_RANK_PREFIX}${r}`]))) dead.push(r);
        }
        if (dead.length || Date.now() > deadline) return dead;
        await sleep(50);
      }
    } catch {
      // The store is unreachable: rank 0, which hosts it, is gone.
      return this.ranks.includes(0) && this.#rt.globalRank !== 0 ? [0] : [];
    }
  }

  // While operations are in flight, watch the store for a failure another rank published.
  #startPolling(): void {
    if (this.#pollTimer || this.size === 1) return;
    this.#pollTimer = setInterval(() => void this.#pollAbort(), POLL_ABORT_MS);
    this.#pollTimer.unref();
  }

  #stopPolling(): void {
    if (this.#pollTimer) clearInterval(this.#pollTimer);
    this.#pollTimer = null;
  }

  async #pollAbort(): Promise<void> {
    try {
      if (this.#broken) return;
      const rec = await this.#readAbort();
      if (!rec || this.#broken) return;
      this.#markBroken(this.#propagatedError(rec));
      this.#abortCommunicator();
    } catch {
      // best effort: the op's own timeout still bounds the wait
    }
  }
}

/** @internal A rendezvous store view with keys under `prefix/`. */
export function prefixedStore(store: TCPStore, prefix: string, timeoutMs: number) {
  return {
    set: (key: string, value: Uint8Array) => store.set(`${prefix}/rdzv/${key}`, value),
    get: (key: string, opts?: { timeoutMs?: number }) => store.get(`${prefix}/rdzv/${key}`, { timeoutMs: opts?.timeoutMs ?? timeoutMs }),
  };
}
