/**
 * `tpkit bench moe`: the FusedMoE layer (lib/layers/moe.ts) per expert-parallel size — dispatch and combine
 * time, expert time, load balance (max / mean tokens per expert) and the dispatch all-to-all's busbw
 * (nccl-tests' all-to-all factor (n − 1) / n).
 *
 * Each EP size is its own launch of `ep` ranks (outside a launcher). Every rank holds `tokens` tokens, the same
 * on every EP size (rank r's of EP n are rows r·T … of the global batch that EP 1 runs whole on one rank, split
 * n ways), with seeded normal weights; `--skew s` makes feature 0 of every token 1 and gives only expert 0's
 * router row a weight there, s (its logit + s; s = 0: random routing). Each row also reports the largest difference of its output from EP 1's (correctness in
 * every run, as nccl-tests checks). Times are the median over `iters` forwards of the slowest rank.
 *
 * @module
 */
import { initDistributed } from '../lib/distributed/init';
import { FusedMoE, loadImbalance } from '../lib/layers/moe';
import { Tensor } from '../lib/tensor';
import { formatTable, type Column } from './format';
import { machineMeta, metaLine } from './meta';
import { handResultToParent, relaunch, RESULT_ENV } from './relaunch';
import { writeFile } from './report';
import type { MoEBenchResult, MoEBenchRow } from './schema';

/** Options of `tpkit bench moe`. */
export interface MoEBenchOptions {
  /** EP sizes (each divides `experts`). */
  ep: number[];
  experts: number;
  topK: number;
  hidden: number;
  intermediate: number;
  /** Tokens per rank at the largest EP size (EP n ranks hold total / n each; total = tokens × max ep). */
  tokens: number;
  iters: number;
  warmup: number;
  /** Router logit added to expert 0 (0: balanced random routing). */
  skew: number;
  /** Under a launcher: the EP size of this launch (set by the self-launch). */
  epSize?: number;
  json?: string;
  timeoutMs?: number;
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  const u = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

function matrix(seed: number, rows: number, cols: number): Float32Array {
  const r = rng(seed);
  const m = new Float32Array(rows * cols);
  for (let i = 0; i < m.length; i++) m[i] = r() / Math.sqrt(cols);
  return m;
}

function median(v: number[]): number {
  const s = v.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The global batch's tokens (seeded) and the output EP 1 computes for them are what every EP size sees. */
function tokensOf(o: MoEBenchOptions): Float32Array {
  const total = o.tokens * Math.max(...o.ep);
  const r = rng(7);
  const x = new Float32Array(total * o.hidden);
  for (let i = 0; i < x.length; i++) x[i] = r();
  return x;
}

/** One rank of one EP size: returns rank 0's row (output values too, for the EP-1 comparison). */
async function runRank(o: MoEBenchOptions, ep: number): Promise<(MoEBenchRow & { out: number[] }) | null> {
  const world = await initDistributed({ ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}) });
  try {
    const H = o.hidden;
    const I = o.intermediate;
    const E = o.experts;
    const moe = new FusedMoE(E, o.topK, H, I, world.size > 1 ? { expertGroup: world } : {});
    const gate = matrix(1, E, H);
    // Skew: feature 0 of every token is 1 and only expert 0's router row reads it (its logit + skew).
    if (o.skew > 0) for (let e = 0; e < E; e++) gate[e * H] = e === 0 ? o.skew : 0;
    await moe.loadRouterWeight(Tensor.from(gate, [E, H]));
    for (const e of moe.localExperts) {
      await moe.loadExpertWeight(e, 'w1', Tensor.from(matrix(100 + 3 * e, I, H), [I, H]));
      await moe.loadExpertWeight(e, 'w2', Tensor.from(matrix(101 + 3 * e, H, I), [H, I]));
      await moe.loadExpertWeight(e, 'w3', Tensor.from(matrix(102 + 3 * e, I, H), [I, H]));
    }
    const all = tokensOf(o);
    if (o.skew > 0) for (let t = 0; t < all.length / H; t++) all[t * H] = 1;
    const total = all.length / H;
    const T = total / ep;
    const mine = all.slice(world.rank * T * H, (world.rank + 1) * T * H);
    const x = Tensor.from(mine, [T, H]);
    const keys = ['routerMs', 'dispatchMs', 'expertMs', 'combineMs', 'forwardMs'] as const;
    const times: Record<(typeof keys)[number], number[]> = { routerMs: [], dispatchMs: [], expertMs: [], combineMs: [], forwardMs: [] };
    let out: Float32Array = new Float32Array(0);
    for (let i = 0; i < o.warmup + o.iters; i++) {
      if (world.size > 1) await world.barrier();
      const t0 = performance.now();
      const y = await moe.forward(x);
      const ms = performance.now() - t0;
      if (i === o.warmup + o.iters - 1) out = await y.toFloat32Array();
      y.dispose();
      if (i < o.warmup) continue;
      const s = moe.lastStats!;
      const v = Tensor.from([s.routerMs, s.dispatchMs, s.expertMs, s.combineMs, ms], [5]);
      if (world.size > 1) await world.allReduce(v, { op: 'max' });
      const m = await v.toFloat32Array();
      v.dispose();
      keys.forEach((k, j) => times[k].push(m[j]!));
    }
    const s = moe.lastStats!;
    const counts = Tensor.from(s.tokensPerExpert, [E]);
    if (world.size > 1) await world.allReduce(counts);
    const tokensPerExpert = Array.from(await counts.toFloat32Array());
    counts.dispose();
    // Every rank's output, for the comparison with EP 1 (rank 0 reports the whole batch's).
    const outT = Tensor.from(out, [T, H]);
    const gathered = world.size > 1 ? await world.allGather(outT, { dim: 0 }) : outT;
    const whole = Array.from(await gathered.toFloat32Array());
    x.dispose();
    moe.dispose();
    if (world.rank !== 0) return null;
    const dispatchMs = median(times.dispatchMs);
    const bytes = T * o.topK * H * 4;
    const algbw = bytes / (dispatchMs * 1e-3) / 1e9;
    return {
      ep,
      tokensPerRank: T,
      expertsPerRank: E / ep,
      routerMs: median(times.routerMs),
      dispatchMs,
      expertMs: median(times.expertMs),
      combineMs: median(times.combineMs),
      forwardMs: median(times.forwardMs),
      tokensPerExpert,
      loadImbalance: loadImbalance(tokensPerExpert),
      dispatchBytes: bytes,
      algbwGBs: ep > 1 ? algbw : 0,
      busbwGBs: ep > 1 ? (algbw * (ep - 1)) / ep : 0,
      maxAbsDiffVsEp1: 0,
      out: whole,
    };
  } finally {
    world.destroy();
  }
}

/** The final table, one row per EP size. */
export function moeTable(r: MoEBenchResult): string[] {
  const cols: Column<MoEBenchRow>[] = [
    { header: 'ep', cell: (x) => String(x.ep) },
    { header: 'tokens/rank', cell: (x) => String(x.tokensPerRank) },
    { header: 'experts/rank', cell: (x) => String(x.expertsPerRank) },
    { header: 'dispatch', unit: '(ms)', cell: (x) => x.dispatchMs.toFixed(2) },
    { header: 'experts', unit: '(ms)', cell: (x) => x.expertMs.toFixed(2) },
    { header: 'combine', unit: '(ms)', cell: (x) => x.combineMs.toFixed(2) },
    { header: 'forward', unit: '(ms)', cell: (x) => x.forwardMs.toFixed(2) },
    { header: 'max/mean', unit: 'tokens/expert', cell: (x) => x.loadImbalance.toFixed(2) },
    { header: 'busbw', unit: '(GB/s)', cell: (x) => (x.ep > 1 ? x.busbwGBs.toFixed(3) : '-') },
    { header: 'max|Δ| vs ep1', cell: (x) => x.maxAbsDiffVsEp1.toExponential(1) },
  ];
  return formatTable(cols, r.rows);
}

/**
 * The command: one launch per EP size (outside a launcher), the table and `--json`; under a launcher, the EP
 * size of `--ep-size` (or the world size).
 *
 * @returns 0; 1 when a launch failed; 2 for an EP size that does not divide the expert count
 */
export async function moeCommand(o: MoEBenchOptions, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const bad = o.ep.find((e) => o.experts % e !== 0);
  if (bad !== undefined) {
    process.stderr.write(`tpkit bench moe: --ep ${bad} does not divide --experts ${o.experts}\n`);
    return 2;
  }
  if (env.RANK !== undefined) {
    const row = await runRank(o, o.epSize ?? Number(env.WORLD_SIZE ?? 1));
    if (row && env[RESULT_ENV]) handResultToParent(row, env);
    return 0;
  }
  const meta = machineMeta();
  process.stdout.write(`# tpkit bench moe: ${o.experts} experts, top-${o.topK}, hidden ${o.hidden}, intermediate ${o.intermediate}, ${o.tokens * Math.max(...o.ep)} tokens in all, skew ${o.skew}, EP ${o.ep.join(', ')}, ${o.iters} iters (cpu, gloo)\n${metaLine(meta)}\n#\n`);
  const rows: Array<MoEBenchRow & { out: number[] }> = [];
  for (const ep of [1, ...o.ep.filter((e) => e !== 1)]) {
    const r = await relaunch<MoEBenchRow & { out: number[] }>({ nproc: ep, args: [...argv, '--ep-size', String(ep)], progress: false, env });
    if (r.exitCode !== 0 || !r.result) {
      process.stderr.write(`tpkit bench moe: ep ${ep}: ${r.summary || 'rank 0 reported no result'}\n`);
      return r.exitCode || 1;
    }
    rows.push(r.result);
  }
  const ref = rows[0]!.out;
  for (const row of rows) {
    let d = 0;
    row.out.forEach((v, i) => (d = Math.max(d, Math.abs(v - ref[i]!))));
    row.maxAbsDiffVsEp1 = d;
  }
  const result: MoEBenchResult = {
    schema: 'tpkit.bench.moe/1',
    meta: { ...meta, device: 'cpu', backend: 'gloo', experts: o.experts, topK: o.topK, hidden: o.hidden, intermediate: o.intermediate, iters: o.iters, warmup: o.warmup, skew: o.skew },
    rows: rows.filter((x) => o.ep.includes(x.ep)).map(({ out: _out, ...x }) => x),
  };
  moeTable(result).forEach((l) => process.stdout.write(`${l}\n`));
  if (o.json) {
    writeFile(o.json, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`# wrote ${o.json}\n`);
  }
  return 0;
}
