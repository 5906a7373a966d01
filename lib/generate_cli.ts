/**
 * `tpkit generate`: text generation with a Hugging Face model directory on TP × PP ranks.
 *
 *   tpkit generate --model-dir DIR (--prompt-ids 1,2,3 | --prompt TEXT) --max-new-tokens N [--tp K] [--pp P] [--ep E]
 *     [--backend cpu|cuda] [--temperature T --top-k K --top-p P --seed S] [--micro-batches M]
 *     [--prefill-chunk C] [--ignore-eos] [--json FILE] [--timeout-ms MS]
 *
 * Lifecycle (vLLM's): outside a launcher (no `RANK` in the environment) the command checks its flags, then
 * starts K × P ranks of itself with {@link launch} and waits; each rank runs `initDistributed` →
 * `parallelState.initializeModelParallel({ tensorParallelSize: K, pipelineParallelSize: P })` →
 * `LlamaForCausalLM.fromPretrained` → `generate` → destroy. Under a launcher the world size must be K × P.
 *
 * Mixtral directories (`MixtralForCausalLM`) load as {@link MixtralForCausalLM}. `--ep E` places their experts
 * on E ranks (expert parallelism): E dividing K puts them on the TP ranks (vLLM's layout with one replica);
 * E a multiple of K adds E / K data-parallel replicas (world K × E / K, PP 1), each generating the same
 * prompts, whose MoE layers exchange tokens by all-to-all. Without `--ep` the experts are split by TP.
 * Every rank returns the same tokens (the driver rank, TP rank 0 of the last stage, samples and broadcasts);
 * rank 0 prints them and writes `--json` ({@link GenerateReport}).
 *
 * `--backend cuda` puts parameters and activations on the GPU (`cuda:LOCAL_RANK` when there is one GPU per
 * rank, else every rank on `cuda:0`); the process groups are always gloo, which stages cuda tensors through
 * the host and is correct however many GPUs there are.
 *
 * `--prompt TEXT` tokenizes with the directory's `tokenizer.json` (and `tokenizer_config.json` when present)
 * through `@huggingface/tokenizers` (pure JavaScript, an ES module loaded with `import()`), adding the
 * tokenizer's special tokens as transformers' `tokenizer(text)` does; the new tokens are decoded too.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';

import { backends } from './backends';
import { initDistributed } from './distributed/init';
import { launch } from './distributed/launcher';
import { TpkitError } from './errors';
import { LlamaForCausalLM } from './models/llama';
import { MixtralForCausalLM } from './models/mixtral';
import * as parallelState from './parallel_state';
import { Tensor } from './tensor';

/** Flags of `tpkit generate` after parsing and checking. */
export interface GenerateFlags {
  /** Model directory (config.json + safetensors). */
  modelDir: string;
  /** Prompts as token ids (one per `--prompt-ids`), when given that way. */
  promptIds: number[][] | null;
  /** The prompt text, when given with `--prompt`. */
  prompt: string | null;
  /** New tokens per prompt at most. */
  maxNewTokens: number;
  /** Tensor-parallel size K. */
  tp: number;
  /** Pipeline stages P. */
  pp: number;
  /** Expert-parallel size E (MoE models; 1: experts split by TP). */
  ep: number;
  /** Where parameters live. */
  backend: 'cpu' | 'cuda';
  /** Sampling temperature (0: greedy). */
  temperature?: number;
  /** Top-k (0: all). */
  topK?: number;
  /** Top-p in (0, 1]. */
  topP?: number;
  /** Sampling seed. */
  seed?: number;
  /** Micro-batches in flight through the pipeline. */
  microBatches?: number;
  /** Chunked-prefill size, tokens. */
  prefillChunk?: number;
  /** Never stop at the config's eos token. */
  ignoreEos: boolean;
  /** Result file (rank 0 writes it). */
  json?: string;
  /** Rendezvous and collective timeout, ms. */
  timeoutMs?: number;
}

/**
 * What `tpkit generate --json FILE` writes. The top-level sequence fields are the first prompt's; `sequences`
 * holds every prompt's (one per `--prompt-ids`). Times in ms; bytes.
 */
export interface GenerateReport {
  /** `tpkit.generate/1` */
  schema: 'tpkit.generate/1';
  /** The model directory as given. */
  modelDir: string;
  /** `config.json`'s `architectures[0]`. */
  architecture: string;
  /** Decoder layers of the model. */
  numLayers: number;
  /** Tensor-parallel size. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** Expert-parallel size (1 for dense models). */
  ep: number;
  /** Data-parallel replicas (ep / tp when ep > tp, else 1). */
  dp: number;
  /** MoE models: experts, experts per token, and the last forward's routed tokens per expert (layer 0, rank 0). */
  moe?: { numExperts: number; topK: number; localExperts: number[]; tokensPerExpert: number[] };
  /** `cpu` or `cuda` (the process groups are gloo). */
  backend: 'cpu' | 'cuda';
  /** The sampling options used (temperature 0: greedy). */
  sampling: { temperature: number; topK: number; topP: number; seed: number };
  /** The first prompt's token ids. */
  promptIds: number[];
  /** Its new tokens only (the eos token included when it stopped there). */
  generatedIds: number[];
  /** The decoded new tokens, when the directory has a tokenizer.json and `--prompt` was used. */
  generatedText?: string;
  /** float32 logits (vocab_size values) at the last prompt position. */
  lastLogits: number[];
  /** `eos` or `length`. */
  finishReason: 'eos' | 'length';
  /** Every prompt: ids, new tokens, finish reason. */
  sequences: { promptIds: number[]; generatedIds: number[]; finishReason: 'eos' | 'length' }[];
  /** `model.parameterBytes` of every rank, by global rank (bytes). */
  weightBytesPerRank: number[];
  /** Rank 0's timings. */
  timings: {
    /** `fromPretrained` wall time, from a barrier before to a barrier after (ms). */
    loadMs: number;
    /** Prefill wall time, every prompt (ms). */
    prefillMs: number;
    /** Mean wall time of one decode step (ms); every unfinished sequence advances one token per step. */
    decodeMsPerToken: number;
    /** Decode steps run. */
    decodeSteps: number;
    /** Prompt tokens per second of the prefill. */
    prefillTokensPerSecond: number;
    /** Generated tokens per second of decoding (all sequences; the first token of each comes from the prefill). */
    tokensPerSecond: number;
  };
  /** Pipeline schedule figures (p = 1, bubble 0 without PP); GPipe's (p − 1)/(p + m − 1) as theoreticalBubble. */
  pipeline: { stages: number; microBatches: number; theoreticalBubble: number; measuredBubble: number; computeMs: number[]; waitMs: number[] };
}

/** A usage error: printed as one line, exit code 2. */
class UsageError extends Error {}

function intParser(min: number, what: string): (v: string) => number {
  return (v) => {
    const s = v.trim();
    if (!/^-?\d+$/.test(s) || Number(s) < min) throw new InvalidArgumentError(`Expected ${what} but received ${v}`);
    return Number(s);
  };
}

function numberParser(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`Expected finite number but received ${v}`);
  return n;
}

/** `1,2,3` → [1, 2, 3]; one list per `--prompt-ids`. */
function idsParser(v: string, prev: number[][] | undefined): number[][] {
  const parts = v.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.some((s) => !/^\d+$/.test(s))) {
    throw new InvalidArgumentError(`Expected comma-separated non-negative integer token ids but received ${v}`);
  }
  return [...(prev ?? []), parts.map(Number)];
}

function buildCommand(): Command {
  return new Command('tpkit generate')
    .description('Generate tokens with a Hugging Face model directory on TP × PP ranks (launches them itself outside a launcher)')
    .option('--model-dir <dir>', 'model directory: config.json and model.safetensors or sharded model-*.safetensors + index')
    .addOption(new Option('--prompt-ids <ids>', 'prompt token ids, comma-separated (repeat for a batch of prompts)').argParser(idsParser))
    .option('--prompt <text>', 'prompt text (needs tokenizer.json in the model directory)')
    .addOption(new Option('--max-new-tokens <n>', 'new tokens per prompt at most').argParser(intParser(1, 'positive integer')))
    .addOption(new Option('--tp <k>', 'tensor-parallel size').argParser(intParser(1, 'positive integer')).default(1))
    .addOption(new Option('--pp <p>', 'pipeline stages').argParser(intParser(1, 'positive integer')).default(1))
    .addOption(new Option('--ep <e>', 'expert-parallel size of a mixture-of-experts model (divides --tp, or a multiple of it: data-parallel replicas)').argParser(intParser(1, 'positive integer')).default(1))
    .addOption(new Option('--backend <name>', 'where parameters live (process groups: gloo)').choices(['cpu', 'cuda']).default('cpu'))
    .addOption(new Option('--temperature <t>', 'sampling temperature (0: greedy)').argParser(numberParser))
    .addOption(new Option('--top-k <k>', 'keep the k most likely tokens (0: all)').argParser(intParser(0, 'non-negative integer')))
    .addOption(new Option('--top-p <p>', 'nucleus sampling threshold in (0, 1]').argParser(numberParser))
    .addOption(new Option('--seed <s>', 'seed of the sampling stream').argParser(intParser(0, 'non-negative integer')))
    .addOption(new Option('--micro-batches <m>', 'micro-batches in flight through the pipeline').argParser(intParser(1, 'positive integer')))
    .addOption(new Option('--prefill-chunk <c>', 'prefill the prompt in chunks of c tokens').argParser(intParser(1, 'positive integer')))
    .option('--ignore-eos', 'do not stop at the config\'s eos_token_id', false)
    .option('--json <file>', 'write the result as JSON (rank 0)')
    .addOption(new Option('--timeout-ms <ms>', 'timeout of the rendezvous and of every collective').argParser(intParser(1, 'positive integer')))
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(`tpkit generate: ${s}`),
    });
}

/**
 * Parses and checks `tpkit generate`'s arguments (no file is read but the directory's listing).
 *
 * @throws UsageError (one line) for a missing or malformed flag; CommanderError for commander's own
 */
function parseFlags(argv: string[]): GenerateFlags {
  const cmd = buildCommand();
  cmd.parse(argv, { from: 'user' });
  const f = cmd.opts() as Record<string, unknown>;
  if (typeof f.modelDir !== 'string' || f.modelDir === '') throw new UsageError('error: required option --model-dir <dir> not specified');
  const dir = f.modelDir;
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new UsageError(`error: --model-dir ${dir} has no config.json`);
  const ids = (f.promptIds as number[][] | undefined) ?? null;
  const prompt = (f.prompt as string | undefined) ?? null;
  if (ids && prompt !== null) throw new UsageError('error: give either --prompt-ids or --prompt, not both');
  if (!ids && prompt === null) throw new UsageError('error: one of --prompt-ids <ids> or --prompt <text> is required');
  if (prompt !== null && !fs.existsSync(path.join(dir, 'tokenizer.json'))) {
    throw new UsageError(`error: --prompt needs ${path.join(dir, 'tokenizer.json')}; give token ids with --prompt-ids instead`);
  }
  if (prompt === '') throw new UsageError('error: --prompt is empty');
  if (f.maxNewTokens === undefined) throw new UsageError('error: required option --max-new-tokens <n> not specified');
  if (f.topP !== undefined && !((f.topP as number) > 0 && (f.topP as number) <= 1)) {
    throw new UsageError(`error: option '--top-p <p>' argument '${f.topP}' is invalid. Expected number in (0, 1]`);
  }
  if (f.temperature !== undefined && (f.temperature as number) < 0) {
    throw new UsageError(`error: option '--temperature <t>' argument '${f.temperature}' is invalid. Expected non-negative number`);
  }
  const tp = f.tp as number;
  const ep = f.ep as number;
  if (ep > 1) {
    let moe = false;
    let experts: unknown;
    try {
      const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      moe = Array.isArray(cfg.architectures) && cfg.architectures[0] === 'MixtralForCausalLM';
      experts = cfg.num_local_experts;
    } catch {
      // the model load reports a malformed config.json
    }
    if (!moe) throw new UsageError(`error: --ep ${ep} needs a mixture-of-experts model (MixtralForCausalLM); ${dir} is not one`);
    if (typeof experts === 'number' && Number.isInteger(experts) && experts % ep !== 0) {
      throw new UsageError(`error: --ep ${ep} must divide the model's num_local_experts ${experts}`);
    }
    if (tp % ep !== 0 && ep % tp !== 0) throw new UsageError(`error: --ep ${ep} must divide --tp ${tp} or be a multiple of it`);
    if (ep > tp && (f.pp as number) > 1) throw new UsageError(`error: --ep ${ep} above --tp ${tp} adds data-parallel replicas, which need --pp 1`);
  }
  const pick = <K extends string>(k: K): Record<K, number> | Record<string, never> =>
    f[k] === undefined ? {} : ({ [k]: f[k] as number } as Record<K, number>);
  return {
    modelDir: dir,
    promptIds: ids,
    prompt,
    maxNewTokens: f.maxNewTokens as number,
    tp: f.tp as number,
    pp: f.pp as number,
    ep,
    backend: f.backend as 'cpu' | 'cuda',
    ...pick('temperature'),
    ...pick('topK'),
    ...pick('topP'),
    ...pick('seed'),
    ...pick('microBatches'),
    ...pick('prefillChunk'),
    ...pick('timeoutMs'),
    ignoreEos: f.ignoreEos === true,
    ...(typeof f.json === 'string' ? { json: f.json } : {}),
  };
}

/** The subset of `@huggingface/tokenizers`' Tokenizer used here. */
interface TextTokenizer {
  encode(text: string): { ids: number[] };
  decode(ids: number[], opts?: { skip_special_tokens?: boolean }): string;
}

/** Loads `tokenizer.json` (+ `tokenizer_config.json`) of `dir` with `@huggingface/tokenizers` (an ES module). */
async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const { Tokenizer } = await import('@huggingface/tokenizers');
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as object;
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = fs.existsSync(cfgFile) ? (JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as object) : {};
  const t = new Tokenizer(json, cfg);
  return {
    encode: (text) => ({ ids: t.encode(text).ids.map(Number) }),
    decode: (ids, opts) => t.decode(ids, opts),
  };
}

/** Line-buffered writer that hands each complete line to `onLine`. */
function lineSink(onLine: (line: string) => void): Writable {
  let buf = '';
  return new Writable({
    decodeStrings: false,
    write(chunk: Buffer | string, _enc, cb) {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        onLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
      cb();
    },
    final(cb) {
      if (buf) onLine(buf);
      buf = '';
      cb();
    },
  });
}

/** Starts K × P ranks of this command and waits; rank 0's stdout lines lose their `[rank0]: ` prefix. */
async function launchRanks(f: GenerateFlags, argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const rankEnv: NodeJS.ProcessEnv = { ...env };
  // Gloo, file reads and the CPU GEMM workers share libuv's pool: 4 threads (the default) starve them.
  if (rankEnv.UV_THREADPOOL_SIZE === undefined || Number(rankEnv.UV_THREADPOOL_SIZE) < 8) rankEnv.UV_THREADPOOL_SIZE = '8';
  const r = await launch({
    nprocPerNode: worldSizeOf(f),
    script: path.join(__dirname, 'cli.js'),
    args: ['generate', ...argv],
    env: rankEnv,
    nodeArgs: ['--enable-source-maps'],
    stdout: lineSink((l) => process.stdout.write(`${l.startsWith('[rank0]: ') ? l.slice(9) : l}\n`)),
    stderr: lineSink((l) => process.stderr.write(`${l}\n`)),
  });
  if (r.exitCode !== 0) process.stderr.write(`tpkit generate: ${r.summary}\n`);
  return r.exitCode;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Data-parallel replicas: `--ep` above `--tp` adds ep / tp of them. */
function dpOf(f: GenerateFlags): number {
  return f.ep > f.tp ? f.ep / f.tp : 1;
}

/** Ranks of the job: tp × pp × replicas. */
function worldSizeOf(f: GenerateFlags): number {
  return f.tp * f.pp * dpOf(f);
}

/** `architectures[0]` of the directory's config.json ('' when unreadable: the model load reports why). */
function readArchitecture(dir: string): string {
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { architectures?: unknown };
    return Array.isArray(cfg.architectures) && typeof cfg.architectures[0] === 'string' ? cfg.architectures[0] : '';
  } catch {
    return '';
  }
}

/** One rank of the job: load, generate, report (rank 0). */
async function runRank(f: GenerateFlags, env: NodeJS.ProcessEnv): Promise<number> {
  const world = await initDistributed({ backend: 'gloo', ...(f.timeoutMs ? { timeoutMs: f.timeoutMs } : {}) });
  try {
    if (world.size !== worldSizeOf(f)) {
      if (world.rank === 0) {
        const what = dpOf(f) > 1 ? `--tp ${f.tp} × --pp ${f.pp} × ${dpOf(f)} replicas (--ep ${f.ep})` : `--tp ${f.tp} × --pp ${f.pp}`;
        process.stderr.write(`tpkit generate: error: ${what} needs a world of ${worldSizeOf(f)} ranks but this launch has ${world.size} (tpkit launch --nproc-per-node ${worldSizeOf(f)}, or run tpkit generate without a launcher)\n`);
      }
      return 2;
    }
    let device: 'cpu' | `cuda:${number}` = 'cpu';
    if (f.backend === 'cuda') {
      const b = backends();
      if (!b.cuda) throw new TpkitError('NO_CUDA_DEVICE', `tpkit generate --backend cuda: ${b.cudaReason ?? 'no GPU visible'}`);
      device = b.cudaDevices >= world.size ? `cuda:${Number(env.LOCAL_RANK ?? 0)}` : 'cuda:0';
    }
    const tokenizer = f.prompt !== null ? await loadTokenizer(f.modelDir) : null;
    const prompts = f.promptIds ?? [tokenizer!.encode(f.prompt!).ids];
    const isMoE = readArchitecture(f.modelDir) === 'MixtralForCausalLM';
    await parallelState.initializeModelParallel({
      tensorParallelSize: f.tp, pipelineParallelSize: f.pp, ...(isMoE ? { expertParallelSize: f.ep } : {}),
    });
    await world.barrier();
    const t0 = performance.now();
    const model = isMoE ? await MixtralForCausalLM.fromPretrained(f.modelDir, { device }) : await LlamaForCausalLM.fromPretrained(f.modelDir, { device });
    await world.barrier();
    const loadMs = performance.now() - t0;
    try {
      const out = await model.generate(prompts, {
        maxNewTokens: f.maxNewTokens,
        ...(f.temperature !== undefined ? { temperature: f.temperature } : {}),
        ...(f.topK !== undefined ? { topK: f.topK } : {}),
        ...(f.topP !== undefined ? { topP: f.topP } : {}),
        ...(f.seed !== undefined ? { seed: f.seed } : {}),
        ...(f.microBatches !== undefined ? { microBatches: f.microBatches } : {}),
        ...(f.prefillChunk !== undefined ? { prefillChunkSize: f.prefillChunk } : {}),
        ...(f.ignoreEos ? { eosTokenId: null } : {}),
      });
      // Every rank's parameter bytes, split into MiB and remainder so each part is exact in float32.
      const bytes = model.parameterBytes;
      const mine = Tensor.from([Math.floor(bytes / 2 ** 20), bytes % 2 ** 20], [1, 2]);
      const all = world.size > 1 ? await world.allGather(mine, { dim: 0 }) : mine;
      const v = await all.toFloat32Array();
      if (all !== mine) all.dispose();
      mine.dispose();
      const weightBytesPerRank = Array.from({ length: world.size }, (_, r) => v[2 * r]! * 2 ** 20 + v[2 * r + 1]!);
      if (world.rank === 0) {
        const first = out.sequences[0]!;
        const text = tokenizer ? tokenizer.decode(first.generatedIds, { skip_special_tokens: true }) : undefined;
        const report: GenerateReport = {
          schema: 'tpkit.generate/1',
          modelDir: f.modelDir,
          architecture: model.config.architecture,
          numLayers: model.config.numHiddenLayers,
          tp: f.tp,
          pp: f.pp,
          ep: isMoE ? f.ep : 1,
          dp: dpOf(f),
          ...(model instanceof MixtralForCausalLM
            ? {
              moe: {
                numExperts: model.mixtralConfig.numLocalExperts,
                topK: model.mixtralConfig.numExpertsPerTok,
                localExperts: model.localExperts.slice(),
                tokensPerExpert: model.lastMoEStats[0]?.tokensPerExpert ?? [],
              },
            }
            : {}),
          backend: f.backend,
          sampling: { temperature: f.temperature ?? 0, topK: f.topK ?? 0, topP: f.topP ?? 1, seed: f.seed ?? 0 },
          promptIds: first.promptIds,
          generatedIds: first.generatedIds,
          ...(text !== undefined ? { generatedText: text } : {}),
          lastLogits: Array.from(first.lastLogits),
          finishReason: first.finishReason,
          sequences: out.sequences.map((s) => ({ promptIds: s.promptIds, generatedIds: s.generatedIds, finishReason: s.finishReason })),
          weightBytesPerRank,
          timings: {
            loadMs,
            prefillMs: out.timings.prefillMs,
            decodeMsPerToken: out.timings.decodeMsPerToken,
            decodeSteps: out.timings.decodeSteps,
            prefillTokensPerSecond: out.timings.prefillTokensPerSecond,
            tokensPerSecond: out.timings.decodeTokensPerSecond,
          },
          pipeline: {
            stages: out.pipeline.stages,
            microBatches: out.pipeline.microBatches,
            theoreticalBubble: out.pipeline.theoreticalBubble,
            measuredBubble: out.pipeline.measuredBubble,
            computeMs: out.pipeline.computeMs,
            waitMs: out.pipeline.waitMs,
          },
        };
        printReport(report, prompts.length);
        if (f.json) {
          fs.mkdirSync(path.dirname(path.resolve(f.json)), { recursive: true });
          fs.writeFileSync(f.json, `${JSON.stringify(report)}\n`);
          process.stdout.write(`# wrote ${f.json}\n`);
        }
      }
    } finally {
      model.dispose();
    }
    await world.barrier();
    return 0;
  } finally {
    if (parallelState.modelParallelIsInitialized()) parallelState.destroyModelParallel();
    world.destroy();
  }
}

function printReport(r: GenerateReport, nPrompts: number): void {
  const w = (s: string): void => void process.stdout.write(`${s}\n`);
  const mib = (b: number): string => (b / 2 ** 20).toFixed(1);
  w(`# tpkit generate: ${r.modelDir} (${r.architecture}, ${r.numLayers} layers), tp ${r.tp} × pp ${r.pp}${r.ep > 1 ? ` (ep ${r.ep}${r.dp > 1 ? `, ${r.dp} replicas` : ''})` : ''}, ${r.backend} (gloo), ` +
    `${r.sampling.temperature === 0 ? 'greedy' : `temperature ${r.sampling.temperature}, top-k ${r.sampling.topK}, top-p ${r.sampling.topP}, seed ${r.sampling.seed}`}`);
  w(`# loaded in ${r.timings.loadMs.toFixed(0)} ms; weights per rank ${r.weightBytesPerRank.map(mib).join(', ')} MiB`);
  r.sequences.forEach((s, i) => {
    const tag = nPrompts > 1 ? `[${i}] ` : '';
    w(`${tag}prompt ids: ${s.promptIds.join(',')}`);
    w(`${tag}generated ids: ${s.generatedIds.join(',')} (${s.finishReason})`);
  });
  if (r.generatedText !== undefined) w(`generated text: ${JSON.stringify(r.generatedText)}`);
  const t = r.timings;
  w(`# prefill ${t.prefillMs.toFixed(1)} ms (${t.prefillTokensPerSecond.toFixed(1)} tokens/s), decode ${t.decodeMsPerToken.toFixed(1)} ms/token over ${t.decodeSteps} steps (${t.tokensPerSecond.toFixed(2)} tokens/s)`);
  if (r.pipeline.stages > 1) {
    w(`# pipeline: ${r.pipeline.stages} stages, ${r.pipeline.microBatches} micro-batch${r.pipeline.microBatches === 1 ? '' : 'es'}, ` +
      `measured bubble ${r.pipeline.measuredBubble.toFixed(3)} vs (p−1)/(p+m−1) = ${r.pipeline.theoreticalBubble.toFixed(3)}; ` +
      `compute ms per stage ${r.pipeline.computeMs.map((x) => x.toFixed(0)).join(', ')} (median ${median(r.pipeline.computeMs).toFixed(0)})`);
  }
}

/**
 * Entry point of `tpkit generate` (lib/cli.ts dispatches here): parses `argv` (the arguments after
 * `generate`), launches the ranks or runs as one, and returns the exit code (it never calls process.exit).
 *
 * @param argv - command-line arguments after `generate`
 * @param env - the environment (default `process.env`); `RANK` set means "under a launcher"
 * @returns 0 on success; 2 for a usage error (one line on stderr, before any rank starts, or the world size
 *   differing from K × P under a launcher); otherwise the failing rank's exit code (1 for an error such as
 *   TpkitError `UNSUPPORTED` from the model's config)
 */
export async function generateMain(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let f: GenerateFlags;
  try {
    f = parseFlags(argv);
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof UsageError) {
      process.stderr.write(`tpkit generate: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (env.RANK === undefined) {
    if (f.backend === 'cuda') {
      const b = backends();
      if (!b.cuda) {
        process.stderr.write(`tpkit generate: error: --backend cuda: ${b.cudaReason ?? 'no GPU visible'}\n`);
        return 2;
      }
    }
    return launchRanks(f, argv, env);
  }
  return runRank(f, env);
}
