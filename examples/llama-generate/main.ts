/**
 * The main job (`npm start`): a whole Llama model — Llama-3-8B's shapes with a few decoder layers, seeded
 * random bfloat16 weights in the Hugging Face layout (written once into `.checkpoints/`) — generating 16
 * greedy tokens for the same two prompts with `tpkit generate` at TP 1, TP 2, TP 4 and TP 2 × PP 2 (two
 * micro-batches), every layout checked against TP 1: the tokens must be identical and the last prompt
 * position's logits within 1e-4 of max |logit| (float32 summed in a different order per layout).
 *
 * Run: `npm start [-- --layers 2] [-- --model-dir DIR] [-- --tiny] [-- --layouts 1x1,2x1,4x1,2x2]
 *       [-- --max-new-tokens 16] [-- --backend cpu|cuda] [-- --cache-dir DIR]`
 * (`node dist/examples/llama-generate/main.js …` after `npm run build:ts`). With `--model-dir` it compares the
 * layouts on a model directory of your own and writes nothing.
 *
 * Exit code: 0 when every layout matches TP 1; 1 otherwise (or when a run failed); 2 for a bad flag.
 *
 * @module
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type { GenerateReport } from '../../lib/generate_cli';
import { isComplete, llama3Spec, TINY_SPEC, writeRandomModel, type RandomModelSpec } from './checkpoint';

interface Args {
  layers: number;
  modelDir?: string;
  tiny: boolean;
  layouts: [number, number][];
  maxNewTokens: number;
  backend: 'cpu' | 'cuda';
  cacheDir: string;
  seed: number;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || n < 1) throw new InvalidArgumentError(`Expected positive integer but received ${v}`);
  return n;
}

function layoutsParser(v: string): [number, number][] {
  return v.split(',').map((s) => {
    const m = /^(\d+)x(\d+)$/.exec(s.trim());
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) throw new InvalidArgumentError(`Expected TPxPP layouts such as 1x1,2x1,4x1,2x2 but received ${v}`);
    return [Number(m[1]), Number(m[2])];
  });
}

function parseArgs(argv: string[]): Args {
  const cmd = new Command('llama-generate')
    .description('A Llama model generating at TP 1, 2, 4 and TP 2 × PP 2 with tpkit generate, every layout checked against TP 1')
    .option('--layers <n>', 'decoder layers of the random Llama-3-8B-shaped model', positiveInt, 2)
    .option('--model-dir <dir>', 'compare the layouts on this model directory instead (nothing is written)')
    .option('--tiny', 'a tiny random model (hidden 64, 2 layers, vocab 512) instead of Llama-3-8B shapes', false)
    .option('--layouts <list>', 'TPxPP layouts; the first is the reference', layoutsParser, [[1, 1], [2, 1], [4, 1], [2, 2]])
    .option('--max-new-tokens <n>', 'greedy tokens per prompt', positiveInt, 16)
    .option('--backend <name>', 'cpu or cuda (cuda tensors; ranks share the GPU through gloo)', 'cpu')
    .option('--cache-dir <dir>', 'where the random checkpoint is written', path.join(process.cwd(), '.checkpoints'))
    .option('--seed <n>', 'seed of the random checkpoint', (v) => Number(v), 0)
    .configureOutput({ writeErr: () => undefined })
    .exitOverride();
  cmd.parse(argv, { from: 'user' });
  const o = cmd.opts() as Args;
  if (o.backend !== 'cpu' && o.backend !== 'cuda') throw new InvalidArgumentError(`Expected cpu or cuda for --backend but received ${o.backend}`);
  return o;
}

/** Two fixed prompts of 8 ids (reduced modulo the vocabulary of a small model). */
function prompts(vocab: number): number[][] {
  const a = [128000, 791, 6460, 315, 9822, 374, 12366, 13];
  const b = [128000, 40, 1093, 311, 1373, 264, 2875, 11];
  return [a, b].map((p) => p.map((id) => id % vocab));
}

const CLI = path.join(__dirname, '..', '..', 'lib', 'cli.js');

/** Runs `tpkit generate` for one layout; its output goes to this process's, indented. */
function runGenerate(dir: string, tp: number, pp: number, a: Args, ids: number[][], json: string): Promise<number> {
  const args = [CLI, 'generate', '--model-dir', dir, ...ids.flatMap((p) => ['--prompt-ids', p.join(',')]), '--max-new-tokens', String(a.maxNewTokens),
    '--tp', String(tp), '--pp', String(pp), '--backend', a.backend, '--ignore-eos', '--json', json, ...(pp > 1 ? ['--micro-batches', String(ids.length)] : [])];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const relay = (src: NodeJS.ReadableStream, dst: NodeJS.WritableStream) => {
      let buf = '';
      src.on('data', (c: Buffer) => {
        buf += c.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) !== -1) {
          dst.write(`    ${buf.slice(0, nl)}\n`);
          buf = buf.slice(nl + 1);
        }
      });
      src.on('end', () => buf && dst.write(`    ${buf}\n`));
    };
    relay(child.stdout!, process.stdout);
    relay(child.stderr!, process.stderr);
    child.on('error', reject);
    child.on('close', (code) => resolve(code ?? 1));
  });
}

interface Row {
  layout: string;
  identical: boolean;
  maxAbsDiff: number;
  relDiff: number;
  weightMiB: number;
  prefillMs: number;
  decodeMs: number;
  loadMs: number;
  bubble?: { measured: number; theoretical: number; stages: number; microBatches: number };
}

/** float32 equivalence bound of the logits across layouts, relative to max |logit| of the reference. */
const BOUND = 1e-4;

async function main(): Promise<number> {
  let a: Args;
  try {
    a = parseArgs(process.argv.slice(2));
  } catch (e) {
    if ((e as { code?: string }).code === 'commander.helpDisplayed') return 0;
    process.stderr.write(`llama-generate: ${(e as Error).message}\n`);
    return 2;
  }
  const t0 = performance.now();
  let dir: string;
  if (a.modelDir) dir = a.modelDir;
  else {
    const spec: RandomModelSpec = a.tiny ? TINY_SPEC : llama3Spec(a.layers);
    dir = path.join(a.cacheDir, spec.name);
    if (isComplete(dir, spec, a.seed)) process.stdout.write(`# using the checkpoint in ${dir}\n`);
    else {
      process.stdout.write(`# writing checkpoint ${dir} (Llama-3-8B shapes, ${spec.numLayers} layers, hidden ${spec.hiddenSize}, vocab ${spec.vocabSize}, bfloat16, seed ${a.seed})\n`);
      const tw = performance.now();
      await writeRandomModel(dir, spec, a.seed, (f, file) => process.stdout.write(`#   ${(f * 100).toFixed(0).padStart(3)}% ${file}\n`));
      process.stdout.write(`# wrote it in ${((performance.now() - tw) / 1000).toFixed(1)} s\n`);
    }
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { vocab_size: number };
  const ids = prompts(cfg.vocab_size);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-llama-generate-'));
  const reports: { layout: string; r: GenerateReport }[] = [];
  try {
    for (const [tp, pp] of a.layouts) {
      const layout = pp > 1 ? `TP ${tp} × PP ${pp}` : `TP ${tp}`;
      process.stdout.write(`# ${layout}: tpkit generate --tp ${tp} --pp ${pp}${pp > 1 ? ` --micro-batches ${ids.length}` : ''}\n`);
      const json = path.join(tmp, `${tp}x${pp}.json`);
      const code = await runGenerate(dir, tp, pp, a, ids, json);
      if (code !== 0 || !fs.existsSync(json)) {
        process.stderr.write(`llama-generate: ${layout}: tpkit generate exited with code ${code}\n`);
        return 1;
      }
      reports.push({ layout, r: JSON.parse(fs.readFileSync(json, 'utf8')) as GenerateReport });
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }

  const ref = reports[0]!.r;
  let scale = 0;
  for (const v of ref.lastLogits) scale = Math.max(scale, Math.abs(v));
  const rows: Row[] = reports.map(({ layout, r }) => {
    let maxAbs = 0;
    for (let i = 0; i < r.lastLogits.length; i++) maxAbs = Math.max(maxAbs, Math.abs(r.lastLogits[i]! - ref.lastLogits[i]!));
    if (r.lastLogits.length !== ref.lastLogits.length) maxAbs = Infinity;
    const identical = JSON.stringify(r.sequences.map((s) => s.generatedIds)) === JSON.stringify(ref.sequences.map((s) => s.generatedIds));
    return {
      layout,
      identical,
      maxAbsDiff: maxAbs,
      relDiff: scale > 0 ? maxAbs / scale : maxAbs,
      weightMiB: Math.max(...r.weightBytesPerRank) / 2 ** 20,
      prefillMs: r.timings.prefillMs,
      decodeMs: r.timings.decodeMsPerToken,
      loadMs: r.timings.loadMs,
      ...(r.pipeline.stages > 1
        ? { bubble: { measured: r.pipeline.measuredBubble, theoretical: r.pipeline.theoreticalBubble, stages: r.pipeline.stages, microBatches: r.pipeline.microBatches } }
        : {}),
    };
  });

  const w = (s: string): void => void process.stdout.write(`${s}\n`);
  w('');
  w(`model ${dir}: ${ref.architecture}, ${ref.numLayers} layers; ${ids.length} prompts × ${ids[0]!.length} tokens, ${a.maxNewTokens} greedy new tokens each; ${a.backend} (gloo)`);
  ref.sequences.forEach((s, i) => w(`TP 1 tokens [${i}]: ${s.generatedIds.join(',')}`));
  w('');
  const head = ['layout', 'tokens = TP 1', 'max |Δ logits|', 'rel. max |logit|', 'weights / rank', 'load', 'prefill', 'decode / step', 'pipeline bubble (measured vs (p−1)/(p+m−1))'];
  const cells = rows.map((r) => [
    r.layout,
    r.identical ? 'yes' : 'NO',
    r.maxAbsDiff.toExponential(2),
    r.relDiff.toExponential(2),
    `${r.weightMiB.toFixed(r.weightMiB < 10 ? 1 : 0)} MiB`,
    `${(r.loadMs / 1000).toFixed(1)} s`,
    `${r.prefillMs.toFixed(0)} ms`,
    `${r.decodeMs.toFixed(0)} ms`,
    r.bubble ? `${r.bubble.measured.toFixed(3)} vs ${r.bubble.theoretical.toFixed(3)} (p ${r.bubble.stages}, m ${r.bubble.microBatches})` : '-',
  ]);
  const widths = head.map((h, j) => Math.max(h.length, ...cells.map((c) => c[j]!.length)));
  const line = (c: string[]): string => c.map((x, j) => (j === 0 || j === c.length - 1 ? x.padEnd(widths[j]!) : x.padStart(widths[j]!))).join(' | ').trimEnd();
  w(line(head));
  w(widths.map((n) => '-'.repeat(n)).join('-+-'));
  cells.forEach((c) => w(line(c)));
  w('');
  const failed = rows.filter((r) => !r.identical || !(r.relDiff <= BOUND));
  w(failed.length
    ? `MISMATCH vs ${rows[0]!.layout}: ${failed.map((r) => r.layout).join(', ')} (tokens differ or logits beyond ${BOUND} of max |logit|)`
    : `every layout is identical to ${rows[0]!.layout}: same tokens, logits within ${BOUND} of max |logit| (${((performance.now() - t0) / 1000).toFixed(0)} s in all)`);
  return failed.length ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`llama-generate: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  },
);
