/**
 * `tpkit bench layers`: the tensor-parallel MLP block of Megatron-LM / vLLM — ColumnParallelLinear
 * (hidden → intermediate, `gatherOutput: false`) feeding RowParallelLinear (intermediate → hidden,
 * `inputIsParallel: true`), one all-reduce per forward — at several TP sizes and token counts (decode:
 * ≤ 16 tokens, prefill: more). Reports the forward latency and the share of it spent inside the all-reduce
 * (the group's `allReduce` is wrapped with a timer: time from call to resolution, so it includes waiting for
 * the slowest rank, as a profiler's view of the collective would).
 *
 * Each TP size is its own launch of `tp` ranks (outside a launcher; under one, the world size is the TP
 * size). The layer classes come from tpkit's public API (lib/index.ts), loaded at run time so the
 * benchmarks compile while the layers are being written; a missing class is reported, not a crash.
 *
 * Correctness: inputs and weights are dyadic fractions from fixed formulas; each rank compares the last
 * token's output row with a float64 reference computed from the formulas, within 1e-5 of the row's largest
 * magnitude (DESIGN.md's float32 bound), and `#wrong` sums the misses over ranks.
 *
 * @module
 */
import { initDistributed } from '../lib/distributed/init';
import type { ProcessGroup } from '../lib/distributed/process_group';
import { Tensor, type Device } from '../lib/tensor';
import { formatTable, formatTime, type Column } from './format';
import { timeOp } from './harness';
import { machineMeta, metaLine } from './meta';
import { createProgress } from './progress';
import { handResultToParent, relaunch, RESULT_ENV } from './relaunch';
import { writeFile } from './report';
import type { LayerRow, LayersResult } from './schema';
import { MODELS, type ModelName } from './shapes';

/** Options of `tpkit bench layers`. */
export interface LayersOptions {
  tp: number[];
  model: ModelName;
  hidden?: number;
  intermediate?: number;
  tokens: number[];
  iters: number;
  warmup: number;
  backend: 'gloo' | 'nccl';
  device: 'cpu' | 'cuda';
  json?: string;
  timeoutMs?: number;
}

/** The part of DESIGN.md's layer API this benchmark uses. */
interface ParallelLinearLike {
  loadWeight(fullWeight: Tensor, shardId?: number | string): void | Promise<void>;
  forward(x: Tensor): Promise<Tensor | { output: Tensor }>;
  dispose(): void;
}
type LinearCtor<O> = new (inputSize: number, outputSize: number, opts?: O) => ParallelLinearLike;
interface LayerClasses {
  ColumnParallelLinear: LinearCtor<{ bias?: boolean; gatherOutput?: boolean; group?: ProcessGroup; device?: string }>;
  RowParallelLinear: LinearCtor<{ bias?: boolean; inputIsParallel?: boolean; group?: ProcessGroup; device?: string }>;
}

/** The layer classes from lib/index.ts, or why they cannot be used. */
export function loadLayerClasses(): LayerClasses | string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const m = require('../lib/index') as Partial<LayerClasses>;
    const missing = (['ColumnParallelLinear', 'RowParallelLinear'] as const).filter((k) => typeof m[k] !== 'function');
    if (missing.length) return `${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} not exported by lib/index.ts yet`;
    return m as LayerClasses;
  } catch (e) {
    return `lib/index.ts could not be loaded: ${(e as Error).message.split('\n')[0]}`;
  }
}

/** x[t, i] of the block's input. */
export const layerX = (t: number, i: number): number => (((t * 3 + i) % 5) - 2) / 8;
/** W1[o, i]: ColumnParallelLinear's full weight [intermediate, hidden]. */
export const layerW1 = (o: number, i: number): number => (((o * 5 + i * 3) % 7) - 3) / 64;
/** W2[o, i]: RowParallelLinear's full weight [hidden, intermediate]. */
export const layerW2 = (o: number, i: number): number => (((o * 3 + i * 5) % 7) - 3) / 64;

function fill(rows: number, cols: number, f: (r: number, c: number) => number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = f(r, c);
  return out;
}

/** The float64 reference of output row t: y[t] = (x[t]·W1ᵀ)·W2ᵀ. */
export function referenceRow(t: number, hidden: number, intermediate: number): Float64Array {
  const h = new Float64Array(intermediate);
  for (let o = 0; o < intermediate; o++) {
    let acc = 0;
    for (let i = 0; i < hidden; i++) acc += layerX(t, i) * layerW1(o, i);
    h[o] = acc;
  }
  const y = new Float64Array(hidden);
  for (let j = 0; j < hidden; j++) {
    let acc = 0;
    for (let o = 0; o < intermediate; o++) acc += h[o]! * layerW2(j, o);
    y[j] = acc;
  }
  return y;
}

/** Elements of `got` farther than `rel` × max|ref| from `ref`. */
export function countOutside(got: ArrayLike<number>, ref: ArrayLike<number>, rel = 1e-5): number {
  let scale = 0;
  for (let i = 0; i < ref.length; i++) scale = Math.max(scale, Math.abs(ref[i]!));
  let wrong = 0;
  for (let i = 0; i < ref.length; i++) if (!(Math.abs(got[i]! - ref[i]!) <= rel * scale)) wrong++;
  return wrong;
}

const asTensor = (y: Tensor | { output: Tensor }): Tensor => (y instanceof Tensor ? y : y.output);

/** Runs every token count on this rank's group; the rows on rank 0, null elsewhere. */
export async function runLayersRank(o: LayersOptions, classes: LayerClasses, env: NodeJS.ProcessEnv = process.env): Promise<LayerRow[] | null> {
  const world = await initDistributed({ backend: o.backend, ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}) });
  const hidden = o.hidden ?? MODELS[o.model].hidden;
  const intermediate = o.intermediate ?? MODELS[o.model].intermediate;
  const device: Device = o.device === 'cuda' ? `cuda:${Number(env.LOCAL_RANK ?? 0)}` : 'cpu';
  const tp = world.size;
  // Time inside the all-reduce: wrap this group's allReduce (the layers call group.allReduce).
  let commNs = 0n;
  const allReduce = world.allReduce.bind(world);
  Object.defineProperty(world, 'allReduce', {
    configurable: true,
    value: async (...args: Parameters<ProcessGroup['allReduce']>) => {
      const t0 = process.hrtime.bigint();
      try {
        return await allReduce(...args);
      } finally {
        commNs += process.hrtime.bigint() - t0;
      }
    },
  });
  const col = new classes.ColumnParallelLinear(hidden, intermediate, { bias: false, gatherOutput: false, group: world, device });
  const row = new classes.RowParallelLinear(intermediate, hidden, { bias: false, inputIsParallel: true, group: world, device });
  const progress = createProgress(world.rank === 0, env);
  try {
    const w1 = Tensor.from(fill(intermediate, hidden, layerW1), [intermediate, hidden]);
    await col.loadWeight(w1);
    w1.dispose();
    const w2 = Tensor.from(fill(hidden, intermediate, layerW2), [hidden, intermediate]);
    await row.loadWeight(w2);
    w2.dispose();
    const rows: LayerRow[] = [];
    progress.start(o.tokens.length, `tp ${tp}`);
    for (const [idx, tokens] of o.tokens.entries()) {
      const x = Tensor.from(fill(tokens, hidden, layerX), [tokens, hidden], { device });
      const forward = async (): Promise<Tensor> => {
        const h = asTensor(await col.forward(x));
        try {
          return asTensor(await row.forward(h));
        } finally {
          h.dispose();
        }
      };
      const latencyUs = await timeOp(forward, { warmup: o.warmup, iters: o.iters, sync: o.device === 'cuda' ? 'batch' : 'each' }, {
        beforeTimed: async () => {
          await world.barrier();
          commNs = 0n;
        },
        release: (y) => y.dispose(),
      });
      const commUs = Number(commNs) / 1e3 / o.iters;
      const y = await forward();
      const last = (await y.toFloat32Array()).subarray((tokens - 1) * hidden, tokens * hidden);
      y.dispose();
      x.dispose();
      const wrong = countOutside(last, referenceRow(tokens - 1, hidden, intermediate));
      const stats = Tensor.from([latencyUs, commUs, wrong], [3], { device });
      await allReduce(stats);
      const [lat, comm, bad] = await stats.toFloat32Array();
      stats.dispose();
      const r: LayerRow = {
        model: o.hidden || o.intermediate ? `custom(${hidden}x${intermediate})` : o.model,
        hidden,
        intermediate,
        tp,
        tokens,
        phase: tokens <= 16 ? 'decode' : 'prefill',
        latencyUs: lat! / tp,
        commUs: comm! / tp,
        commShare: comm! / lat!,
        wrong: bad!,
      };
      rows.push(r);
      if (world.rank === 0) {
        process.stdout.write(`# tp ${tp}, ${tokens} tokens (${r.phase}): ${formatTime(r.latencyUs)} us per forward, ${(r.commShare * 100).toFixed(1)} % in all-reduce, #wrong ${r.wrong}\n`);
      }
      progress.update(idx + 1, `tp ${tp}, ${tokens} tokens`);
    }
    return world.rank === 0 ? rows : null;
  } finally {
    progress.stop();
    col.dispose();
    row.dispose();
    world.destroy();
  }
}

/** The final table of every TP size and token count. */
export function layersTable(rows: readonly LayerRow[]): string[] {
  const cols: Column<LayerRow>[] = [
    { header: 'model', cell: (r) => r.model },
    { header: 'tp', cell: (r) => String(r.tp) },
    { header: 'tokens', cell: (r) => String(r.tokens) },
    { header: 'phase', cell: (r) => r.phase },
    { header: 'latency', unit: '(us)', cell: (r) => formatTime(r.latencyUs) },
    { header: 'all-reduce', unit: '(us)', cell: (r) => formatTime(r.commUs) },
    { header: 'comm share', unit: '(%)', cell: (r) => (r.commShare * 100).toFixed(1) },
    { header: 'vs tp 1', unit: '(speed-up)', cell: (r) => {
      const base = rows.find((b) => b.tp === 1 && b.tokens === r.tokens && b.model === r.model);
      return base ? (base.latencyUs / r.latencyUs).toFixed(2) : '-';
    } },
    { header: '#wrong', cell: (r) => String(r.wrong) },
  ];
  return formatTable(cols, rows);
}

function writeResult(rows: LayerRow[], o: LayersOptions): void {
  const result: LayersResult = {
    schema: 'tpkit.bench.layers/1',
    meta: { ...machineMeta(), device: o.device, backend: o.backend, iters: o.iters, warmup: o.warmup },
    rows,
  };
  layersTable(rows).forEach((l) => process.stdout.write(`${l}\n`));
  if (o.json) {
    writeFile(o.json, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`# wrote ${o.json}\n`);
  }
}

/**
 * The command: one launch per TP size (outside a launcher) or this job's world size (under one).
 *
 * @returns 0; 1 when the layer classes are missing, a rank failed, or an output was wrong
 */
export async function layersCommand(o: LayersOptions, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const classes = loadLayerClasses();
  if (typeof classes === 'string') {
    process.stderr.write(`tpkit bench layers: cannot run: ${classes}\n`);
    return 1;
  }
  if (env.RANK === undefined) {
    const meta = machineMeta();
    process.stdout.write(`# tpkit bench layers: Column→Row MLP (${o.hidden ?? MODELS[o.model].hidden} → ${o.intermediate ?? MODELS[o.model].intermediate} → ${o.hidden ?? MODELS[o.model].hidden}), tp ${o.tp.join(', ')}, tokens ${o.tokens.join(', ')}, warmup ${o.warmup}, iters ${o.iters}, ${o.backend}/${o.device}\n${metaLine(meta)}\n#\n`);
    const rows: LayerRow[] = [];
    for (const tp of o.tp) {
      const r = await relaunch<LayerRow[]>({ nproc: tp, args: [...argv], progress: Boolean(process.stderr.isTTY), env });
      if (r.exitCode !== 0 || !r.result) {
        process.stderr.write(`tpkit bench layers: tp ${tp}: ${r.summary || 'rank 0 reported no result'}\n`);
        return r.exitCode || 1;
      }
      rows.push(...r.result);
    }
    process.stdout.write('#\n');
    writeResult(rows, o);
    return rows.some((r) => r.wrong > 0) ? 1 : 0;
  }
  const rows = await runLayersRank(o, classes, env);
  if (!rows) return 0;
  if (env[RESULT_ENV]) {
    handResultToParent(rows, env);
    return 0;
  }
  writeResult(rows, o);
  return rows.some((r) => r.wrong > 0) ? 1 : 0;
}
