/**
 * `tpkit bench gemm`: time and TFLOP/s (2·M·N·K / t) of tpkit's `matmul` on square sizes and on the GEMMs
 * of real layers (bench/shapes.ts) at several token counts, optionally next to raw OpenBLAS sgemm and
 * torch.matmul on the same shapes (run after tpkit's, one at a time: the machine's cores are shared).
 *
 * Inputs are small integers (|v| ≤ 3) so every product and partial sum is exact in float32; 16 sampled
 * output elements are checked exactly (`#wrong`). Layer GEMMs use linear's layout, x[M,K]·W[N,K]ᵀ
 * (`matmul(x, w, { transB: true })`).
 *
 * @module
 */
import { loadCore } from '../lib/native';
import { matmul } from '../lib/ops';
import { Tensor, type DType } from '../lib/tensor';
import type { PeerName } from './collectives_bench';
import { formatTable, formatTime, type Column } from './format';
import { median, timeOp } from './harness';
import { machineMeta, metaLine } from './meta';
import { runSgemmPeer, shapeKey, type GemmShape, type PeerRun } from './peers/native';
import { runTorchMatmulPeer } from './peers/torch';
import { createProgress } from './progress';
import { peerStatusLines, writeFile } from './report';
import type { GemmResult, GemmRow, PeerCell, PeerStatus } from './schema';
import { layerGemms, type ModelName } from './shapes';

export { MODEL_NAMES } from './shapes';

/** Options of `tpkit bench gemm`. */
export interface GemmOptions {
  minSize: number;
  /** 0: no square sizes. */
  maxSize: number;
  models: ModelName[];
  tokens: number[];
  tp: number;
  maxGflop?: number;
  iters: number;
  warmup: number;
  /** Element types to run; the cpu backend computes float32 only (others are skipped with a note). */
  dtypes: DType[];
  device: 'cpu' | 'cuda';
  threads?: number;
  peers: PeerName[];
  /** Time each GEMM (then its peers) this many times and report medians. */
  repeat?: number;
  json?: string;
}

/** Element (i, k) of A — must match ValueA in bench/native/sgemm_bench.cc and torch_peer.py. */
export function gemmValueA(i: number, k: number): number {
  return ((i * 3 + k * 5) % 7) - 3;
}

/** Element (k, j) of B (op(B) when transposed) — must match ValueB. */
export function gemmValueB(k: number, j: number): number {
  return ((k * 2 + j * 3) % 7) - 3;
}

/** One GEMM to run. */
export interface GemmCase extends GemmShape {
  name: string;
  tokens: number | null;
}

/** The cases of a run: squares (doubling from minSize to maxSize), then each model's layers × tokens. */
export function gemmCases(o: Pick<GemmOptions, 'minSize' | 'maxSize' | 'models' | 'tokens' | 'tp' | 'maxGflop'>): GemmCase[] {
  const cases: GemmCase[] = [];
  if (o.maxSize > 0) {
    for (let s = o.minSize; s <= o.maxSize; s *= 2) cases.push({ name: 'square', tokens: null, m: s, n: s, k: s, transB: false });
  }
  for (const model of o.models) {
    for (const l of layerGemms(model, o.tp)) {
      for (const t of o.tokens) cases.push({ name: l.name, tokens: t, m: t, n: l.n, k: l.k, transB: true });
    }
  }
  return o.maxGflop === undefined ? cases : cases.filter((c) => (2 * c.m * c.n * c.k) / 1e9 <= o.maxGflop!);
}

function operands(c: GemmCase, dtype: DType, device: 'cpu' | 'cuda'): [Tensor, Tensor] {
  const a = new Float32Array(c.m * c.k);
  for (let i = 0; i < c.m; i++) for (let k = 0; k < c.k; k++) a[i * c.k + k] = gemmValueA(i, k);
  const b = new Float32Array(c.k * c.n);
  if (c.transB) {
    for (let j = 0; j < c.n; j++) for (let k = 0; k < c.k; k++) b[j * c.k + k] = gemmValueB(k, j);
  } else {
    for (let k = 0; k < c.k; k++) for (let j = 0; j < c.n; j++) b[k * c.n + j] = gemmValueB(k, j);
  }
  const opts = { dtype, device } as const;
  return [Tensor.from(a, [c.m, c.k], opts), Tensor.from(b, c.transB ? [c.n, c.k] : [c.k, c.n], opts)];
}

/** Sampled elements of C that differ from the exact reference (the same 16 positions as the raw peer). */
export function gemmWrong(c: GemmShape, out: Float32Array): number {
  let wrong = 0;
  for (let q = 0; q < 16; q++) {
    const i = (q * 7919) % c.m;
    const j = (q * 104729) % c.n;
    let expect = 0;
    for (let k = 0; k < c.k; k++) expect += gemmValueA(i, k) * gemmValueB(k, j);
    if (out[i * c.n + j] !== expect) wrong++;
  }
  return wrong;
}

/**
 * Times tpkit's matmul on one case `repeat` times (operands built once); after each timing, `between()`
 * runs (the peers, so that tpkit and the peers alternate under the same machine load).
 *
 * @returns the row with the median time, and #wrong of a final checked run
 */
export async function runGemmCase(
  c: GemmCase,
  o: Pick<GemmOptions, 'iters' | 'warmup' | 'device'> & { dtype: DType; repeat?: number },
  between: () => Promise<void> = async () => {},
): Promise<GemmRow> {
  const [a, b] = operands(c, o.dtype, o.device);
  try {
    const op = () => matmul(a, b, { transB: c.transB });
    const times: number[] = [];
    for (let r = 0; r < (o.repeat ?? 1); r++) {
      times.push(await timeOp(op, { warmup: o.warmup, iters: o.iters, sync: o.device === 'cuda' ? 'batch' : 'each' }, { release: (t) => t.dispose() }));
      await between();
    }
    const out = await op();
    const values = await out.toFloat32Array();
    out.dispose();
    const timeUs = median(times);
    return {
      name: c.name,
      tokens: c.tokens,
      m: c.m,
      n: c.n,
      k: c.k,
      transB: c.transB,
      dtype: o.dtype,
      timeUs,
      tflops: (2 * c.m * c.n * c.k) / timeUs / 1e6,
      wrong: gemmWrong(c, values),
    };
  } finally {
    a.dispose();
    b.dispose();
  }
}

function gemmTable(rows: readonly GemmRow[], peers: readonly string[]): string[] {
  const cols: Column<GemmRow>[] = [
    { header: 'name', cell: (r) => r.name },
    { header: 'tokens', cell: (r) => (r.tokens === null ? '-' : String(r.tokens)) },
    { header: 'M', cell: (r) => String(r.m) },
    { header: 'N', cell: (r) => String(r.n) },
    { header: 'K', cell: (r) => String(r.k) },
    { header: 'type', cell: (r) => r.dtype },
    { header: 'time', unit: '(us)', cell: (r) => formatTime(r.timeUs) },
    { header: 'TFLOP/s', cell: (r) => r.tflops.toFixed(4) },
    { header: '#wrong', cell: (r) => String(r.wrong) },
  ];
  for (const p of peers) {
    cols.push(
      { header: p, unit: '(us)', cell: (r) => (r.peers?.[p] ? formatTime(r.peers[p]!.timeUs) : '-') },
      { header: `${p} TFLOP/s`, cell: (r) => (r.peers?.[p] ? r.peers[p]!.rate.toFixed(4) : '-') },
      { header: `tpkit/${p}`, cell: (r) => (r.peers?.[p] ? (r.tflops / r.peers[p]!.rate).toFixed(3) : '-') },
    );
  }
  return formatTable(cols, rows);
}

/**
 * The command (one process; no launcher).
 *
 * @returns 0; 1 when a sampled element was wrong
 */
export async function gemmCommand(o: GemmOptions): Promise<number> {
  const core = loadCore();
  if (o.threads) core.setBlasThreads(o.threads);
  const threads = core.getBlasThreads();
  const cases = gemmCases(o);
  const meta = machineMeta();
  const repeat = o.repeat ?? 1;
  const dtypes = o.device === 'cpu' ? o.dtypes.filter((d) => d === 'float32') : o.dtypes;
  process.stdout.write(
    `# tpkit bench gemm: ${cases.length} GEMMs × ${dtypes.join(', ')} on ${o.device}, OpenBLAS threads ${threads}, warmup ${o.warmup}, iters ${o.iters}, tp ${o.tp}` +
      `${repeat > 1 ? `, median of ${repeat} runs` : ''}${o.peers.length ? `, peers ${o.peers.join(', ')} after each tpkit run` : ''}\n${metaLine(meta)}\n`,
  );
  for (const d of o.dtypes.filter((x) => !dtypes.includes(x))) process.stdout.write(`# ${d} skipped: the cpu backend computes GEMM in float32 only\n`);
  process.stdout.write('#\n');
  const status: Record<string, PeerStatus> = {};
  const peerOk = (p: PeerName): boolean => status[p]?.status !== 'skipped';
  const rows: GemmRow[] = [];
  const total = cases.length * dtypes.length;
  const progress = createProgress(true);
  progress.start(total, cases[0] ? shapeKey(cases[0]) : '');
  try {
    for (const dtype of dtypes) {
      for (const c of cases) {
        const shape: GemmShape = { m: c.m, n: c.n, k: c.k, transB: c.transB };
        const cells: Record<string, PeerCell[]> = {};
        const peersOnce = async (): Promise<void> => {
          if (dtype !== 'float32' || o.device !== 'cpu') return; // the peers run float32 on the host
          for (const p of o.peers) {
            if (!peerOk(p)) continue;
            const run: PeerRun<string> =
              p === 'native'
                ? await runSgemmPeer({ shapes: [shape], iters: o.iters, warmup: o.warmup, threads })
                : await runTorchMatmulPeer({ shapes: [shape], iters: o.iters, warmup: o.warmup, threads });
            if (!status[p] || run.status.status === 'skipped') {
              status[p] = run.status.status === 'ok' ? { ...run.status, command: `${run.status.command} (one run per shape and repetition)` } : run.status;
            }
            const cell = run.cells.get(shapeKey(shape));
            if (cell) (cells[p] ??= []).push(cell);
          }
        };
        const row = await runGemmCase(c, { ...o, dtype, repeat }, peersOnce);
        for (const [p, list] of Object.entries(cells)) {
          const t = median(list.map((x) => x.timeUs));
          (row.peers ??= {})[p] = { timeUs: t, rate: (2 * c.m * c.n * c.k) / t / 1e6, wrong: list.reduce((acc, x) => acc + x.wrong, 0) };
        }
        rows.push(row);
        progress.update(rows.length, `${dtype} ${c.name} ${shapeKey(c)}`);
      }
    }
  } finally {
    progress.stop();
  }
  const okPeers = Object.entries(status).filter(([, st]) => st.status === 'ok').map(([n]) => n);
  gemmTable(rows, okPeers).forEach((l) => process.stdout.write(`${l}\n`));
  if (o.peers.length) peerStatusLines(status).forEach((l) => process.stdout.write(`${l}\n`));
  const result: GemmResult = {
    schema: 'tpkit.bench.gemm/1',
    meta: { ...meta, device: o.device, iters: o.iters, warmup: o.warmup, blasThreads: threads, tp: o.tp, repeat },
    rows,
    ...(o.peers.length ? { peers: status } : {}),
  };
  if (o.json) {
    writeFile(o.json, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`# wrote ${o.json}\n`);
  }
  return rows.some((r) => r.wrong > 0) ? 1 : 0;
}
