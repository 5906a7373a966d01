/**
 * `tpkit bench model`: a whole model's generation speed per (TP, PP) layout — prefill tokens/s and decode
 * ms/token, the median of `runs` greedy generate calls on one loaded model — with a PyTorch + transformers
 * peer (bench/peers/hf_model_peer.py: `AutoModelForCausalLM` in float32 on the same directory, the same
 * prompt and token counts) when `import torch, transformers` works, else reported skipped with the reason.
 *
 * Each layout is its own launch of TP × PP ranks (outside a launcher; under one, the world size must be the
 * layout's). The prompt is `(i · 7919 + 13) mod vocab` for i < `promptTokens`, so every layout and the peer
 * see the same ids; each layout's greedy tokens are reported and compared with the first layout's.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { initDistributed } from '../lib/distributed/init';
import { LlamaForCausalLM } from '../lib/models/llama';
import * as parallelState from '../lib/parallel_state';
import { packageRoot } from '../lib/native';
import { Tensor } from '../lib/tensor';
import { formatTable, type Column } from './format';
import { machineMeta, metaLine } from './meta';
import { commandLine, lastLine, runPeerProcess } from './peers/common';
import { createProgress } from './progress';
import { handResultToParent, relaunch, RESULT_ENV } from './relaunch';
import { writeFile } from './report';
import type { ModelBenchResult, ModelBenchRow, ModelPeerRow, PeerStatus } from './schema';

/** Options of `tpkit bench model`. */
export interface ModelBenchOptions {
  /** Model directory (default: the main job's checkpoint, {@link defaultModelDir}). */
  modelDir: string;
  /** Tensor-parallel sizes. */
  tp: number[];
  /** Pipeline sizes. */
  pp: number[];
  /** Layouts with TP × PP above this are skipped. */
  maxWorld: number;
  /** Prompt length, tokens. */
  promptTokens: number;
  /** Greedy tokens generated per run. */
  newTokens: number;
  /** Timed generate calls per layout (median reported). */
  runs: number;
  /** `cpu` or `cuda` parameters (process groups: gloo). */
  device: 'cpu' | 'cuda';
  /** Run the transformers peer (`all`) or not (`none`). */
  peers: 'all' | 'none';
  /** Under a launcher: the layout this launch runs, `TPxPP` (set by the self-launch). */
  layout?: string;
  json?: string;
  timeoutMs?: number;
}

/** The main job's checkpoint (examples/llama-generate with its default 2 layers) under the current directory. */
export function defaultModelDir(cwd = process.cwd()): string {
  return path.join(cwd, '.checkpoints', 'llama-3-8b-random-2-layers');
}

/** The benchmark's prompt: `(i · 7919 + 13) mod vocab`, i < n. */
export function benchPrompt(n: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** One layout on this job's ranks; the row on rank 0, null elsewhere. */
async function runLayoutRank(o: ModelBenchOptions, tp: number, pp: number, env: NodeJS.ProcessEnv): Promise<ModelBenchRow | null> {
  const world = await initDistributed({ backend: 'gloo', ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}) });
  const progress = createProgress(world.rank === 0, env);
  try {
    if (world.size !== tp * pp) throw new RangeError(`layout tp ${tp} × pp ${pp} needs ${tp * pp} ranks but the world has ${world.size}`);
    await parallelState.initializeModelParallel({ tensorParallelSize: tp, pipelineParallelSize: pp });
    const device = o.device === 'cuda' ? 'cuda:0' : 'cpu';
    await world.barrier();
    const t0 = performance.now();
    const model = await LlamaForCausalLM.fromPretrained(o.modelDir, { device });
    await world.barrier();
    const loadMs = performance.now() - t0;
    try {
      const prompt = benchPrompt(o.promptTokens, model.config.vocabSize);
      const prefill: number[] = [];
      const prefillMs: number[] = [];
      const decode: number[] = [];
      let tokens: number[] = [];
      progress.start(o.runs, `tp ${tp} × pp ${pp}`);
      for (let i = 0; i < o.runs; i++) {
        await world.barrier();
        const r = await model.generate(prompt, { maxNewTokens: o.newTokens, eosTokenId: null });
        prefill.push(r.timings.prefillTokensPerSecond);
        prefillMs.push(r.timings.prefillMs);
        decode.push(r.timings.decodeMsPerToken);
        tokens = r.sequences[0]!.generatedIds;
        progress.update(i + 1, `tp ${tp} × pp ${pp}, run ${i + 1}`);
      }
      const bytes = model.parameterBytes;
      const mine = Tensor.from([Math.floor(bytes / 2 ** 20), bytes % 2 ** 20], [1, 2]);
      const all = world.size > 1 ? await world.allGather(mine, { dim: 0 }) : mine;
      const v = await all.toFloat32Array();
      if (all !== mine) all.dispose();
      mine.dispose();
      const perRank = Array.from({ length: world.size }, (_, r) => v[2 * r]! * 2 ** 20 + v[2 * r + 1]!);
      const row: ModelBenchRow = {
        tp,
        pp,
        worldSize: tp * pp,
        promptTokens: o.promptTokens,
        newTokens: o.newTokens,
        runs: o.runs,
        loadMs,
        prefillMs: median(prefillMs),
        prefillTokensPerSecond: median(prefill),
        decodeMsPerToken: median(decode),
        weightBytesPerRank: perRank,
        tokens,
      };
      if (world.rank === 0) {
        process.stdout.write(`# tp ${tp} × pp ${pp}: prefill ${row.prefillTokensPerSecond.toFixed(1)} tokens/s, decode ${row.decodeMsPerToken.toFixed(1)} ms/token (median of ${o.runs})\n`);
      }
      return world.rank === 0 ? row : null;
    } finally {
      model.dispose();
    }
  } finally {
    progress.stop();
    if (parallelState.modelParallelIsInitialized()) parallelState.destroyModelParallel();
    world.destroy();
  }
}

/** The peer script (shipped in the source tree, not compiled). */
export function hfModelPeerScript(): string {
  return path.join(packageRoot(), 'bench', 'peers', 'hf_model_peer.py');
}

/**
 * Runs bench/peers/hf_model_peer.py with `TPKIT_BENCH_PYTHON` (default python3) when `import torch,
 * transformers` works there; otherwise the status is `skipped` with the reason.
 */
export async function runHfModelPeer(o: ModelBenchOptions, vocab: number, env: NodeJS.ProcessEnv = process.env): Promise<{ status: PeerStatus; row: ModelPeerRow | null }> {
  const py = env.TPKIT_BENCH_PYTHON || 'python3';
  const args = [hfModelPeerScript(), '--model-dir', o.modelDir, '--prompt-ids', benchPrompt(o.promptTokens, vocab).join(','), '--new-tokens', String(o.newTokens), '--runs', String(o.runs)];
  const command = commandLine(py, args);
  try {
    const probe = await runPeerProcess(py, ['-c', 'import json, torch, transformers; print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))'], { env, timeoutMs: 120_000 });
    if (probe.code !== 0 || !probe.records[0]) {
      return { status: { status: 'skipped', reason: `torch and transformers are not importable by ${py} (${lastLine(probe.stderr) || `exit ${probe.code}`})`, command }, row: null };
    }
    const r = await runPeerProcess(py, args, { env, ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}) });
    const row = r.records.find((x) => x.kind === 'row');
    const meta = r.records.find((x) => x.kind === 'meta');
    if (r.code !== 0 || !row) return { status: { status: 'skipped', reason: `the peer exited with ${r.signal ?? `code ${r.code}`}: ${lastLine(r.stderr)}`, command }, row: null };
    return {
      status: { status: 'ok', version: `PyTorch ${String(meta?.torch ?? probe.records[0].torch)}, transformers ${String(meta?.transformers ?? probe.records[0].transformers)}`, command },
      row: {
        prefillMs: row.prefillMs as number,
        prefillTokensPerSecond: row.prefillTokensPerSecond as number,
        decodeMsPerToken: row.decodeMsPerToken as number,
        tokens: row.tokens as number[],
        threads: row.threads as number,
      },
    };
  } catch (e) {
    return { status: { status: 'skipped', reason: `${py} cannot be started: ${(e as Error).message}`, command }, row: null };
  }
}

/** The final table: one row per layout, then the peer's. */
export function modelTable(r: ModelBenchResult): string[] {
  const ref = r.rows[0];
  type Line = { layout: string; prefill: number; prefillMs: number; decode: number; weights: string; load: string; same: string };
  const lines: Line[] = r.rows.map((x) => ({
    layout: x.pp > 1 ? `tp ${x.tp} × pp ${x.pp}` : `tp ${x.tp}`,
    prefill: x.prefillTokensPerSecond,
    prefillMs: x.prefillMs,
    decode: x.decodeMsPerToken,
    weights: (Math.max(...x.weightBytesPerRank) / 2 ** 20).toFixed(0),
    load: (x.loadMs / 1000).toFixed(1),
    same: ref && JSON.stringify(x.tokens) === JSON.stringify(ref.tokens) ? 'yes' : 'NO',
  }));
  const peer = r.peerRows?.hf;
  if (peer) {
    lines.push({ layout: 'transformers (fp32)', prefill: peer.prefillTokensPerSecond, prefillMs: peer.prefillMs, decode: peer.decodeMsPerToken, weights: '-', load: '-', same: ref && JSON.stringify(peer.tokens) === JSON.stringify(ref.tokens) ? 'yes' : 'NO' });
  }
  const cols: Column<Line>[] = [
    { header: 'layout', cell: (l) => l.layout },
    { header: 'prefill', unit: '(tokens/s)', cell: (l) => l.prefill.toFixed(1) },
    { header: 'prefill', unit: '(ms)', cell: (l) => l.prefillMs.toFixed(0) },
    { header: 'decode', unit: '(ms/token)', cell: (l) => l.decode.toFixed(1) },
    { header: 'weights/rank', unit: '(MiB, max)', cell: (l) => l.weights },
    { header: 'load', unit: '(s)', cell: (l) => l.load },
    { header: 'tokens = first', cell: (l) => l.same },
  ];
  return formatTable(cols, lines);
}

function parseLayout(s: string): [number, number] {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (!m) throw new RangeError(`Expected TPxPP for --layout but received ${s}`);
  return [Number(m[1]), Number(m[2])];
}

/**
 * The command: one launch per layout (outside a launcher), then the peer, the table and `--json`; under a
 * launcher, the layout named by `--layout` (or TP = world size, PP 1).
 *
 * @returns 0; 1 when a launch failed; 2 when the model directory is missing
 */
export async function modelCommand(o: ModelBenchOptions, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (!fs.existsSync(path.join(o.modelDir, 'config.json'))) {
    process.stderr.write(`tpkit bench model: ${o.modelDir} has no config.json (run npm start once to write the main job's checkpoint, or pass --model-dir)\n`);
    return 2;
  }
  if (env.RANK !== undefined) {
    const [tp, pp] = o.layout ? parseLayout(o.layout) : [Number(env.WORLD_SIZE ?? 1), 1];
    const row = await runLayoutRank(o, tp, pp, env);
    if (row && env[RESULT_ENV]) handResultToParent(row, env);
    return 0;
  }
  const layouts: [number, number][] = [];
  for (const pp of o.pp) for (const tp of o.tp) if (tp * pp <= o.maxWorld) layouts.push([tp, pp]);
  const meta = machineMeta();
  process.stdout.write(`# tpkit bench model: ${o.modelDir}, layouts ${layouts.map(([t, p]) => `${t}x${p}`).join(', ')}, prompt ${o.promptTokens} tokens, ${o.newTokens} new tokens, ${o.runs} runs, ${o.device} (gloo)\n${metaLine(meta)}\n#\n`);
  const rows: ModelBenchRow[] = [];
  for (const [tp, pp] of layouts) {
    const args = [...argv, '--layout', `${tp}x${pp}`];
    const r = await relaunch<ModelBenchRow>({ nproc: tp * pp, args, progress: Boolean(process.stderr.isTTY), env });
    if (r.exitCode !== 0 || !r.result) {
      process.stderr.write(`tpkit bench model: tp ${tp} × pp ${pp}: ${r.summary || 'rank 0 reported no result'}\n`);
      return r.exitCode || 1;
    }
    rows.push(r.result);
  }
  const vocab = (JSON.parse(fs.readFileSync(path.join(o.modelDir, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
  const result: ModelBenchResult = {
    schema: 'tpkit.bench.model/1',
    meta: { ...meta, modelDir: o.modelDir, device: o.device, backend: 'gloo', promptTokens: o.promptTokens, newTokens: o.newTokens, runs: o.runs },
    rows,
    peers: {},
  };
  if (o.peers === 'all') {
    const peer = await runHfModelPeer(o, vocab, env);
    result.peers!.hf = peer.status;
    if (peer.row) result.peerRows = { hf: peer.row };
    process.stdout.write(peer.row ? `# transformers peer: ${peer.status.version}\n` : `# transformers peer skipped: ${peer.status.reason}\n`);
  }
  process.stdout.write('#\n');
  modelTable(result).forEach((l) => process.stdout.write(`${l}\n`));
  if (o.json) {
    writeFile(o.json, `${JSON.stringify(result, null, 2)}\n`);
    process.stdout.write(`# wrote ${o.json}\n`);
  }
  return 0;
}
