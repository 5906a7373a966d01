/**
 * Gloo communicator: runs on host float32 buffers, over shared memory between ranks that share a host
 * (lib/distributed/shm.ts decides, per group) and over Gloo's TCP transport otherwise. Host float32 tensors are used in place;
 * float16/bfloat16 and cuda tensors are staged through float32 host copies (how ranks that share one GPU
 * communicate: NCCL refuses two ranks per GPU).
 *
 * @module
 * @internal
 */
import { loadCore, type NativeCollectives, type NativeGlooComm, type NativeShmComm } from '../native';
import { hostFloat32, hostFloat32Of, wrapHostFloat32 } from '../backend/index';
import { hostWork } from '../backend/host_pool';
import { DTYPE_CODE } from '../backend/types';
import { Tensor } from '../tensor';
import type { Communicator, OpContext, RendezvousStore } from './comm';
import { connectShm, shmWanted } from './shm';

function hostF32(t: Tensor): Float32Array | null {
  return hostFloat32Of(t._storage);
}

/** Reads a tensor as float32 for Gloo: the tensor's own array when possible (no copy), else a staged copy. */
async function stage(t: Tensor): Promise<{ buf: Float32Array; staged: boolean }> {
  const own = hostF32(t);
  if (own) return { buf: own, staged: false };
  return { buf: await t.toFloat32Array(), staged: true };
}

/** A tensor of `t`'s dtype/device holding `values`. */
function like(t: Tensor, values: Float32Array, shape: readonly number[]): Tensor {
  // Host float32: the received buffer becomes the tensor's storage (no copy).
  if (t.device === 'cpu' && t.dtype === 'float32') return Tensor._wrap(wrapHostFloat32(values), shape);
  return Tensor.from(values, shape, { dtype: t.dtype, device: t.device });
}

/**
 * The scheduling priority of Gloo's I/O thread (one per group): the `glooIoPriority` option of
 * initDistributed, else `TPKIT_GLOO_IO_PRIORITY`: `normal` (default: the process's own), `idle` (Linux
 * SCHED_IDLE) or a nice value 1–19.
 *
 * Gloo's I/O thread spins while an operation's thread holds a connection. On a machine with few cores and
 * nothing else running, `idle` keeps that spinning off the cores the operation needs: measured on 2 cores,
 * 2 ranks, a 1 MiB all-reduce took 0.70 ms instead of 2.4–3.7 ms (bench/README.md, "Gloo's I/O thread
 * priority"). But under CPU load from other processes a low-priority I/O thread starves: with two busy
 * processes on the same 2 cores a 4 KiB all-reduce took 210 ms with `idle` and 23 ms at nice 19, against
 * 3 ms with `normal`; and with 4 ranks on 2 cores the other ranks' OpenBLAS threads starved it in a 512-token
 * prefill. Hence `normal` by default; use `idle` only on machines the job has to itself, at most one rank per core.
 *
 * @returns -1 (inherit), 1..19 (nice) or 20 (SCHED_IDLE), as the native communicator takes it
 * @throws TypeError for an option that is neither a string nor a number; RangeError for any other value
 */
export function glooIoPriority(env: NodeJS.ProcessEnv, option?: unknown): number {
  const fromOption = option !== undefined;
  if (fromOption && typeof option !== 'string' && typeof option !== 'number') {
    throw new TypeError(`Expected 'normal', 'idle' or a nice value from 1 to 19 for glooIoPriority but received ${String(option)} of type ${typeof option}`);
  }
  const raw = fromOption ? String(option) : env.TPKIT_GLOO_IO_PRIORITY ?? '';
  const v = raw.trim().toLowerCase();
  if (v === 'normal' || (!fromOption && v === '')) return -1;
  if (v === 'idle') return 20;
  if (/^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 19) return Number(v);
  if (fromOption) {
    throw new RangeError(`Expected 'normal', 'idle' or a nice value from 1 to 19 for glooIoPriority but received ${typeof option === 'string' ? `'${option}'` : String(option)}`);
  }
  throw new RangeError(`TPKIT_GLOO_IO_PRIORITY must be 'normal', 'idle' or a nice value from 1 to 19, got '${raw}'`);
}

/** Gloo-backed {@link Communicator}. */
export class GlooCommunicator implements Communicator {
  readonly backend = 'gloo' as const;
  private readonly native: NativeGlooComm;

  /** @param ioPriority priority of Gloo's I/O thread: -1 inherit, 1..19 nice value, 20 SCHED_IDLE ({@link glooIoPriority}) */
  /** The shared-memory communicator (lib/distributed/shm.ts) when this group's ranks share a host, else null. */
  private shm: NativeShmComm | null = null;
  /** Where the collectives go: {@link GlooCommunicator.shm} when there is one, else Gloo TCP. */
  private ops: NativeCollectives;
  /** Where send/recv go: shared memory too for groups of at most 16 ranks. */
  private p2p: NativeCollectives;
  private readonly wantShm: boolean;

  /**
   * @param ioPriority priority of Gloo's I/O thread: -1 inherit, 1..19 nice value, 20 SCHED_IDLE ({@link glooIoPriority})
   * @param shm initDistributed's `shm` option (else `TPKIT_SHM`; {@link shmWanted})
   */
  constructor(readonly rank: number, readonly size: number, hostname: string, private readonly timeoutMs: number, private readonly check: boolean, ioPriority: number, shm?: boolean) {
    this.wantShm = shmWanted(process.env, shm);
    this.native = new (loadCore().GlooComm)(rank, size, hostname, timeoutMs, check, ioPriority);
    this.ops = this.native;
    this.p2p = this.native;
  }

  async connect(store: RendezvousStore): Promise<void> {
    await this.native.connect((op, key, value, timeoutMs) => (op === 'set' ? store.set(key, value!) : store.get(key, { timeoutMs })));
    this.shm = await connectShm(this.rank, this.size, store, this.timeoutMs, this.check, this.wantShm);
    if (this.shm) {
      this.ops = this.shm;
      if (this.shm.p2p()) this.p2p = this.shm;
    }
  }

  /**
   * Awaits a collective. Over shared memory, a one-round op whose peers were not there within its short spin is
   * polled from the following turns of the event loop first (NativeShmComm.poll: at most 1 ms, yielding the CPU
   * each time), which spares it the communicator thread's hand-off; other callbacks run between the polls.
   */
  private async settled(p: Promise<void>): Promise<void> {
    const shm = this.shm;
    if (shm && !shm.poll()) {
      while (!shm.poll()) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    return p;
  }

  // Every operation holds a host-pool ticket (hostWork) while Gloo may touch the tensors' arrays, so a tensor
  // disposed meanwhile does not hand its buffer to a new tensor before Gloo is done with it.

  allReduce(t: Tensor, redop: number, ctx: OpContext): Promise<void> {
    return hostWork(async () => {
      const { buf, staged } = await stage(t);
      await this.settled(this.ops.allReduce(buf, buf.length, redop, ctx.seq, DTYPE_CODE[t.dtype], ctx.timeoutMs));
      if (staged) await t._writeFloat32(buf);
    });
  }

  allGather(t: Tensor, dim: number, ctx: OpContext): Promise<Tensor> {
    return hostWork(async () => {
      const { buf } = await stage(t);
      const out = hostFloat32(buf.length * this.size);
      await this.settled(this.ops.allGather(buf, out, buf.length, ctx.seq, DTYPE_CODE[t.dtype], dim, ctx.timeoutMs, ctx.shape));
      return like(t, out, [this.size, ...t.shape]);
    });
  }

  reduceScatter(work: Tensor, redop: number, dim: number, ctx: OpContext, scratch = false): Promise<Tensor> {
    return hostWork(async () => {
      // Gloo's ring overwrites its input: it works in `work`'s own array when that is a host float32 scratch copy,
      // else in a private float32 copy. Shared memory only reads it.
      const buf = (scratch || this.shm ? hostF32(work) : null) ?? (await work.toFloat32Array());
      const chunk = buf.length / this.size;
      const out = hostFloat32(chunk);
      await this.settled(this.ops.reduceScatter(buf, out, chunk, redop, ctx.seq, DTYPE_CODE[work.dtype], dim, ctx.timeoutMs, ctx.shape));
      return like(work, out, [chunk]);
    });
  }

  broadcast(t: Tensor, root: number, ctx: OpContext): Promise<void> {
    return hostWork(async () => {
      const { buf, staged } = await stage(t);
      await this.settled(this.ops.broadcast(buf, buf.length, root, ctx.seq, DTYPE_CODE[t.dtype], ctx.timeoutMs));
      if (staged) await t._writeFloat32(buf);
    });
  }

  allToAll(t: Tensor, ctx: OpContext): Promise<Tensor> {
    return hostWork(async () => {
      const { buf } = await stage(t);
      const out = hostFloat32(buf.length);
      await this.settled(this.ops.allToAll(buf, out, buf.length, ctx.seq, DTYPE_CODE[t.dtype], ctx.timeoutMs, ctx.shape));
      return like(t, out, t.shape);
    });
  }

  /** Uneven all-to-all (see {@link Communicator.allToAllV}): shared memory when the group has it, else Gloo's alltoallv. */
  allToAllV(t: Tensor, inputSplits: readonly number[], outputSplits: readonly number[], ctx: OpContext): Promise<Tensor> {
    return hostWork(async () => {
      const { buf } = await stage(t);
      const rowElems = t.shape.slice(1).reduce((a, b) => a * b, 1);
      const outRows = outputSplits.reduce((a, b) => a + b, 0);
      const out = hostFloat32(outRows * rowElems);
      await this.ops.allToAllV(buf, out, rowElems, inputSplits.slice(), outputSplits.slice(), ctx.seq, DTYPE_CODE[t.dtype], ctx.timeoutMs);
      return like(t, out, [outRows, ...t.shape.slice(1)]);
    });
  }

  barrier(ctx: OpContext): Promise<void> {
    return this.settled(this.ops.barrier(ctx.seq, ctx.timeoutMs));
  }

  send(t: Tensor, dst: number, p2pSeq: number, timeoutMs: number): Promise<void> {
    return hostWork(async () => {
      const { buf } = await stage(t);
      await this.p2p.send(buf, buf.length, dst, p2pSeq, timeoutMs);
    });
  }

  recv(t: Tensor, src: number, p2pSeq: number, timeoutMs: number): Promise<void> {
    return hostWork(async () => {
      const own = hostF32(t);
      const buf = own ?? new Float32Array(t.numel);
      await this.p2p.recv(buf, buf.length, src, p2pSeq, timeoutMs);
      if (!own) await t._writeFloat32(buf);
    });
  }

  close(): void {
    this.shm?.close();
    this.native.close();
  }

  /**
   * Closes a broken group's communicator: queued ops reject, and once the running op has ended every
   * connection is hard-closed, so peers blocked on this rank fail at once instead of at their timeout.
   */
  abort(): void {
    this.shm?.abort();
    this.native.abort();
  }
}
