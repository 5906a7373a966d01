/**
 * The one benchmark harness: message sizes, warm-up, timed iterations (`process.hrtime.bigint`), the
 * correctness check of every run, and the rank-averaged results. The collective plug-ins
 * (`bench/collectives/`) and the GEMM and layer benchmarks all time through {@link timeOp}.
 *
 * Timing follows nccl-tests: `warmup` untimed runs, a barrier, then `iters` runs back to back; the time of
 * one operation is the elapsed time / iters, averaged over ranks. Two ways to wait (`sync`):
 * - `each`: await every operation before issuing the next — the latency a layer sees on the host, and the
 *   same rule as the raw C++ peers, whose calls block (the default for cpu tensors);
 * - `batch`: issue all `iters` operations, then await them once — nccl-tests' "enqueue many, synchronise
 *   once", the rule for cuda tensors, where operations queue on the rank's stream.
 * The check then re-initialises the inputs, runs the operation once more and counts the output elements that
 * differ from the reference computed from the inputs alone (`#wrong`, summed over ranks).
 *
 * @module
 */
import { Tensor, type DType, type Device } from '../lib/tensor';
import { ITEM_SIZE } from '../lib/backend/types';
import { inputArray, inputValue, matches, type BenchRedop } from './data';
import type { BenchGroup, CollCounts, CollForm, CollParams, CollectivePlugin } from './collectives/types';

/** How the timed loop waits for the operations (see the module docs). */
export type SyncMode = 'each' | 'batch';

/** Warm-up, iterations and waiting rule of one timed loop. */
export interface TimingOptions {
  /** Untimed runs before the timed loop (≥ 0). */
  warmup: number;
  /** Timed runs (≥ 1). */
  iters: number;
  /** `each` (await every op) or `batch` (issue all, await once). */
  sync: SyncMode;
}

/** Units of the size flags: binary multiples, as nccl-tests (`4K` = 4096 bytes). */
const SIZE_UNITS: Readonly<Record<string, number>> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 };

/**
 * Parses a size such as `8`, `4K`, `64M`, `1G` (binary multiples, case-insensitive, optional `B`).
 *
 * @throws RangeError `Expected size such as 8, 4K, 64M or 1G for <name> but received …`
 */
export function parseSize(text: string, name = 'size'): number {
  const m = /^\s*(\d+)\s*([kmg]?)i?b?\s*$/i.exec(String(text));
  const n = m ? Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]! : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new RangeError(`Expected size such as 8, 4K, 64M or 1G for ${name} but received ${text} of type ${typeof text}`);
  }
  return n;
}

/** Formats bytes the way the size flags read them: `4K`, `64M`, `1000`. */
export function formatSize(bytes: number): string {
  for (const [unit, mult] of [['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= mult && bytes % mult === 0) return `${bytes / mult}${unit}`;
  }
  return String(bytes);
}

/**
 * nccl-tests' size sweep: minBytes, minBytes·factor, … up to maxBytes (inclusive). A factor of 1 gives
 * one size.
 *
 * @throws RangeError when minBytes > maxBytes or the factor is not an integer ≥ 1
 */
export function sizeSweep(minBytes: number, maxBytes: number, factor: number): number[] {
  if (!Number.isInteger(factor) || factor < 1) throw new RangeError(`Expected integer ≥ 1 for stepfactor but received ${factor}`);
  if (minBytes > maxBytes) throw new RangeError(`minbytes ${minBytes} is larger than maxbytes ${maxBytes}`);
  const out: number[] = [];
  for (let s = Math.max(1, minBytes); s <= maxBytes; s *= factor) {
    out.push(s);
    if (factor === 1) break;
  }
  return out;
}

/** Microseconds elapsed since `start` (a `process.hrtime.bigint()` reading). */
export function elapsedUs(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e3;
}

/** What {@link timeOpStats} measured. */
export interface OpTiming {
  /** Elapsed time of the timed loop / iters, µs (nccl-tests' figure). */
  meanUs: number;
  /**
   * Median of the per-operation times, µs — `each` only (null for `batch`, where operations overlap). On a
   * shared machine the per-op times are often bimodal (a scheduler time slice lost now and then); the median
   * is the typical operation, the mean includes the stalls.
   */
  p50Us: number | null;
}

/** The median of `values` (which it sorts). */
export function median(values: number[]): number {
  values.sort((a, b) => a - b);
  const mid = values.length >> 1;
  return values.length % 2 ? values[mid]! : (values[mid - 1]! + values[mid]!) / 2;
}

/**
 * Times `op`: `warmup` awaited runs, then `beforeTimed()` (e.g. a barrier), then `iters` runs under the
 * `sync` rule. `release` is called with each run's result once it is no longer needed (to dispose outputs).
 */
export async function timeOpStats<T>(
  op: () => Promise<T>,
  t: TimingOptions,
  hooks: { beforeTimed?: () => Promise<void>; release?: (result: T) => void } = {},
): Promise<OpTiming> {
  const release = hooks.release ?? (() => {});
  for (let i = 0; i < t.warmup; i++) release(await op());
  if (hooks.beforeTimed) await hooks.beforeTimed();
  const start = process.hrtime.bigint();
  if (t.sync === 'batch') {
    const pending: Promise<T>[] = [];
    for (let i = 0; i < t.iters; i++) pending.push(op());
    const results = await Promise.all(pending);
    const meanUs = elapsedUs(start) / t.iters;
    results.forEach(release);
    return { meanUs, p50Us: null };
  }
  const each: number[] = new Array<number>(t.iters);
  let last = start;
  for (let i = 0; i < t.iters; i++) {
    const result = await op();
    const now = process.hrtime.bigint();
    each[i] = Number(now - last) / 1e3;
    release(result);
    last = process.hrtime.bigint(); // release() is not part of the next operation
  }
  return { meanUs: each.reduce((a, b) => a + b, 0) / t.iters, p50Us: median(each) };
}

/**
 * {@link timeOpStats}' mean: microseconds per operation.
 */
export async function timeOp<T>(
  op: () => Promise<T>,
  t: TimingOptions,
  hooks: { beforeTimed?: () => Promise<void>; release?: (result: T) => void } = {},
): Promise<number> {
  return (await timeOpStats(op, t, hooks)).meanUs;
}

/** Options of one collective sweep. */
export interface CollectiveSweepOptions extends TimingOptions {
  /** Requested sizes in bytes (see {@link sizeSweep}). */
  sizes: readonly number[];
  dtype: DType;
  device: Device;
  /** Run the correctness check (the `#wrong` column); off prints N/A. */
  check: boolean;
  /** Root of rooted operations. */
  root: number;
  /** Reduction of reducing operations. */
  redop: BenchRedop;
}

/** One form (out-of-place or in-place) of one size. */
export interface FormResult {
  /** Time per operation, µs, averaged over ranks. */
  timeUs: number;
  /** Median per-operation time, µs, averaged over ranks; null in `batch` mode (see {@link OpTiming}). */
  p50Us: number | null;
  /** Algorithm bandwidth S / t, GB/s (1 GB = 1e9 bytes). */
  algbw: number;
  /** Bus bandwidth algbw · factor, GB/s. */
  busbw: number;
  /** Elements that differ from the reference, summed over ranks; null when the check is off. */
  wrong: number | null;
}

/** One row of the nccl-tests table. */
export interface CollRow {
  /** Bytes: the larger of the send and receive buffers (the total size for all-gather/reduce-scatter/all-to-all). */
  size: number;
  /** Elements: the operation's count argument. */
  count: number;
  type: DType;
  /** The reduction, or `none` for data movement. */
  redop: BenchRedop | 'none';
  /** The root, or −1. */
  root: number;
  /** Null where tpkit's API has no such form (N/A in the table). */
  outOfPlace: FormResult | null;
  inPlace: FormResult | null;
}

/** The forms in table order. */
export const FORMS: readonly CollForm[] = ['outOfPlace', 'inPlace'];

/**
 * Counts the output elements of one rank that differ from the plug-in's reference (see {@link matches}).
 * Exported for the tests, which plant corruptions.
 */
export function countWrong(plugin: CollectivePlugin, output: Float32Array, p: CollParams, c: CollCounts, dtype: DType): number {
  let wrong = output.length === c.recv ? 0 : Math.abs(output.length - c.recv);
  const n = Math.min(output.length, c.recv);
  for (let j = 0; j < n; j++) {
    if (!matches(output[j]!, plugin.expected(inputValue, j, p, c), dtype)) wrong++;
  }
  return wrong;
}

function makeInput(rank: number, count: number, o: CollectiveSweepOptions): Tensor {
  return Tensor.from(inputArray(rank, count), [count], { dtype: o.dtype, device: o.device });
}

/** Runs one form at one size on this rank: its time (µs, this rank's) and #wrong (this rank's, or −1). */
async function runForm(
  g: BenchGroup,
  plugin: CollectivePlugin,
  form: CollForm,
  c: CollCounts,
  p: CollParams,
  o: CollectiveSweepOptions,
): Promise<{ us: number; p50: number; wrong: number }> {
  const runner = plugin.run[form]!;
  const send = makeInput(p.rank, c.send, o);
  const recv = plugin.needsRecvBuffer ? Tensor.zeros([c.recv], { dtype: o.dtype, device: o.device }) : null;
  const release = (out: Tensor): void => {
    if (out !== send && out !== recv) out.dispose();
  };
  try {
    const timing = await timeOpStats(() => runner(g, send, recv, p), o, { beforeTimed: () => g.barrier(), release });
    const us = timing.meanUs;
    const p50 = timing.p50Us ?? -1;
    if (!o.check) return { us, p50, wrong: -1 };
    // The timed loop changed the buffers (in-place reductions accumulate): start again from fresh inputs.
    const fresh = makeInput(p.rank, c.send, o);
    const freshRecv = plugin.needsRecvBuffer ? Tensor.zeros([c.recv], { dtype: o.dtype, device: o.device }) : null;
    try {
      const out = await runner(g, fresh, freshRecv, p);
      const values = await out.toFloat32Array();
      if (out !== fresh && out !== freshRecv) out.dispose();
      return { us, p50, wrong: countWrong(plugin, values, p, c, o.dtype) };
    } finally {
      fresh.dispose();
      freshRecv?.dispose();
    }
  } finally {
    send.dispose();
    recv?.dispose();
  }
}

/**
 * Runs the sweep of one collective on every rank of `g` (every rank must call it with the same options).
 * Rows are identical on every rank (times averaged, #wrong summed through one all-reduce per size);
 * `onRow` sees each as soon as it is known. Sizes whose count rounds to 0 elements are skipped.
 */
export async function runCollectiveSweep(
  g: BenchGroup,
  plugin: CollectivePlugin,
  o: CollectiveSweepOptions,
  onRow?: (row: CollRow, index: number, total: number) => void,
): Promise<CollRow[]> {
  const p: CollParams = { rank: g.rank, worldSize: g.size, root: o.root, redop: o.redop };
  const word = ITEM_SIZE[o.dtype];
  const rows: CollRow[] = [];
  for (let i = 0; i < o.sizes.length; i++) {
    const c = plugin.counts(Math.floor(o.sizes[i]! / word), g.size);
    if (c.param === 0) continue;
    // per form k (0 out-of-place, 1 in-place): [k] time, [k + 2] #wrong, [k + 4] p50
    const local = [0, 0, 0, 0, 0, 0];
    for (const [k, form] of FORMS.entries()) {
      if (!plugin.run[form]) continue;
      const r = await runForm(g, plugin, form, c, p, o);
      local[k] = r.us;
      local[k + 2] = r.wrong;
      local[k + 4] = r.p50;
    }
    const stats = Tensor.from(local, [6], { device: o.device });
    await g.allReduce(stats);
    const total = await stats.toFloat32Array();
    stats.dispose();
    const size = Math.max(c.send, c.recv) * word;
    const factor = plugin.busBwFactor(g.size);
    const result = (k: number): FormResult | null => {
      if (!plugin.run[FORMS[k]!]) return null;
      const timeUs = total[k]! / g.size;
      const algbw = size / timeUs / 1e3;
      return { timeUs, p50Us: o.sync === 'each' ? total[k + 4]! / g.size : null, algbw, busbw: algbw * factor, wrong: o.check ? total[k + 2]! : null };
    };
    const row: CollRow = {
      size,
      count: c.param,
      type: o.dtype,
      redop: plugin.reduces ? o.redop : 'none',
      root: plugin.rooted ? o.root : -1,
      outOfPlace: result(0),
      inPlace: result(1),
    };
    rows.push(row);
    onRow?.(row, i, o.sizes.length);
  }
  return rows;
}

/** nccl-tests' footer figure: the mean busbw over every measured cell (both forms, all sizes). */
export function averageBusBw(rows: readonly CollRow[]): number {
  let sum = 0;
  let n = 0;
  for (const r of rows) {
    for (const f of [r.outOfPlace, r.inPlace]) {
      if (f) {
        sum += f.busbw;
        n++;
      }
    }
  }
  return n === 0 ? 0 : sum / n;
}
