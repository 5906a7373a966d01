/**
 * Llama-family causal language models under tensor and pipeline parallelism.
 *
 * The numerics are Hugging Face transformers' (`modeling_llama.py`): token embedding; per decoder layer
 * x ← x + o_proj(attention(rope(q), rope(k), v)) over RMSNorm(x), then x ← x + down(silu(gate(h)) · up(h))
 * over RMSNorm(x); a final RMSNorm and the LM head. The sharding is vLLM's (`models/llama.py`):
 * `VocabParallelEmbedding`, `QKVParallelLinear` (kv heads replicated when the TP size exceeds their count),
 * `RowParallelLinear` o_proj and down_proj (one all-reduce each), `MergedColumnParallelLinear` gate_up_proj,
 * and a vocabulary-parallel LM head whose logits are all-gathered (`ParallelLMHead` + `LogitsProcessor`).
 *
 * Pipeline parallelism splits the decoder layers across the stages of the PP group (vLLM's `get_pp_indices`:
 * ⌊L / p⌋ layers each, the remainder one each to the stages just before the last, which already holds the
 * LM head). The first stage embeds, each stage sends its hidden states to the next with the PP group's
 * send/recv, the last stage normalizes and computes the logits; one rank there (the driver: TP rank 0 of the
 * last stage) samples every token and broadcasts it to all the model's ranks, so ranks never diverge. Several
 * sequences are micro-batches in flight at once, so stages overlap (GPipe's fill-drain schedule, idle fraction
 * (p − 1)/(p + m − 1) for m micro-batches).
 *
 * The MLP of a decoder layer is pluggable ({@link DecoderMlp}): the dense SwiGLU MLP here ({@link LlamaMlp}),
 * the sparse mixture-of-experts block in `MixtralForCausalLM` (lib/models/mixtral.ts), which reuses everything
 * else through {@link LlamaForCausalLM._load}.
 *
 * @module
 */
import * as path from 'node:path';

import { TpkitError } from '../errors';
import { add, attention, cat, copyRows, rmsNorm, rotaryEmbedding, siluAndMul } from '../ops';
import { Tensor, parseDType, parseDevice } from '../tensor';
import type { DType, Device } from '../tensor';
import type { ProcessGroup } from '../distributed/process_group';
import { getWorldGroup } from '../distributed/init';
import * as parallelState from '../parallel_state';
import { MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear } from '../layers/linear';
import { VocabParallelEmbedding } from '../layers/embedding';
import { ParallelLMHead } from '../layers/lm_head';
import { adoptRaw } from '../checkpoint/load';
import { integerInRange, nonEmptyString, options, positiveInteger, typeError } from '../validate';
import { CheckpointDir, readJsonFile } from './checkpoint_dir';
import { type LlamaConfig, parseLlamaConfig, ropeInvFreq } from './config';
import { Sampler, SamplingOptions, checkSamplingOptions } from './sampling';

/** Options of {@link LlamaForCausalLM.fromPretrained}. */
export interface FromPretrainedOptions {
  /**
   * The tensor-parallel group (default: `parallelState`'s TP group when initialized, else TP size 1).
   */
  group?: ProcessGroup;
  /** The pipeline-parallel group (default: `parallelState`'s PP group when initialized, else PP size 1). */
  pipelineGroup?: ProcessGroup;
  /**
   * A group holding every rank of this model instance (all TP × PP ranks), over which sampled tokens are
   * broadcast. Default: the TP group when PP size is 1; else the world group, which must then hold exactly
   * the TP × PP ranks (data parallelism needs an explicit group).
   */
  modelGroup?: ProcessGroup;
  /** Parameter and activation device (default `cpu`). */
  device?: Device | 'cuda';
  /** Parameter dtype (default `float32`; the host computes in float32 only). */
  dtype?: DType;
}

/** How the decoder layers are split over the pipeline stages. */
export interface StagePartition {
  /** First layer of each stage. */
  starts: number[];
  /** Layer count of each stage. */
  counts: number[];
}

/**
 * vLLM's pipeline partition (`get_pp_indices`): ⌊L / p⌋ layers per stage, and the remainder L mod p one each
 * to stages p − 2, p − 3, … (the last stage, which holds the LM head, gets no extra layer unless p = 1).
 *
 * @throws RangeError when there are fewer layers than stages
 */
export function partitionLayers(numLayers: number, stages: number): StagePartition {
  positiveInteger(numLayers, 'numLayers');
  positiveInteger(stages, 'stages');
  if (numLayers < stages) throw new RangeError(`num_hidden_layers ${numLayers} is smaller than the pipeline parallel size ${stages}`);
  const counts = new Array<number>(stages).fill(Math.floor(numLayers / stages));
  const rest = numLayers % stages;
  for (let i = 2; i < rest + 2; i++) counts[stages - i]! += 1;
  if (stages === 1) counts[0] = numLayers;
  const starts: number[] = [];
  let s = 0;
  for (const c of counts) {
    starts.push(s);
    s += c;
  }
  return { starts, counts };
}

/**
 * The MLP of a decoder layer: `[T, hidden]` → `[T, hidden]` (the residual is added by the layer), complete on
 * every rank of the TP group (any reduction done inside).
 */
export interface DecoderMlp {
  /** The block's output `[n, hidden]` for its normalized input `[n, hidden]` (float32 on the host). */
  forward(x: Tensor): Promise<Tensor>;
  /** Bytes of parameters this rank holds. */
  readonly parameterBytes: number;
  /** Frees the parameters. Idempotent. */
  dispose(): void;
}

/** What a decoder architecture (Llama's MLP, Mixtral's MoE block) gets to build the MLP of decoder layer `layer`. */
export interface MlpLoadContext<C extends LlamaConfig = LlamaConfig> {
  /** The model's checked configuration. */
  config: C;
  /** The checkpoint directory to read the layer's tensors from. */
  ckpt: CheckpointDir;
  /** Global index of the decoder layer. */
  layer: number;
  /** `model.layers.N.` */
  prefix: string;
  /** TP group of the model's layers (null at TP 1). */
  tp: ProcessGroup | null;
  /** Parameter dtype of the model's layers. */
  dtype: DType;
  /** Parameter device of the model's layers. */
  device: Device;
  /** The options given to fromPretrained (variants read their own). */
  options: Record<string, unknown>;
}

/**
 * @internal A decoder architecture for {@link LlamaForCausalLM._load}: how to read its config and build each
 * layer's MLP. Everything else (embedding, attention, norms, LM head, KV cache, PP) is shared.
 */
export interface DecoderVariant<C extends LlamaConfig = LlamaConfig> {
  parseConfig(json: unknown): C;
  loadMlp(ctx: MlpLoadContext<C>): Promise<DecoderMlp>;
}

/**
 * The dense SwiGLU MLP `down(silu(gate(x)) · up(x))` under TP (vLLM's `LlamaMLP`): `MergedColumnParallelLinear`
 * gate_up_proj, `RowParallelLinear` down_proj (one all-reduce).
 */
export class LlamaMlp implements DecoderMlp {
  /** `mlp.{gate,up}_proj` */
  readonly gateUpProj: MergedColumnParallelLinear;
  /** `mlp.down_proj` */
  readonly downProj: RowParallelLinear;

  constructor(gateUpProj: MergedColumnParallelLinear, downProj: RowParallelLinear) {
    this.gateUpProj = gateUpProj;
    this.downProj = downProj;
  }

  /** Loads `${prefix}mlp.{gate,up,down}_proj` (and biases with mlp_bias) for this rank's TP shard. */
  static async load(ctx: MlpLoadContext): Promise<LlamaMlp> {
    const { config, ckpt, prefix: p } = ctx;
    const layerOpts = { group: ctx.tp ?? undefined, dtype: ctx.dtype, device: ctx.device };
    const h = config.hiddenSize;
    const gateUpProj = new MergedColumnParallelLinear(h, [config.intermediateSize, config.intermediateSize], { ...layerOpts, bias: config.mlpBias });
    let downProj: RowParallelLinear | null = null;
    try {
      for (const [j, s] of (['gate', 'up'] as const).entries()) {
        const name = `${p}mlp.${s}_proj.weight`;
        await gateUpProj.loadWeightFrom(await ckpt.fileFor(name), name, j);
        if (config.mlpBias) {
          const b = `${p}mlp.${s}_proj.bias`;
          await gateUpProj.loadBiasFrom(await ckpt.fileFor(b), b, j);
        }
      }
      downProj = new RowParallelLinear(config.intermediateSize, h, { ...layerOpts, bias: config.mlpBias });
      await loadLinear(ckpt, downProj, `${p}mlp.down_proj`, config.mlpBias);
      return new LlamaMlp(gateUpProj, downProj);
    } catch (e) {
      gateUpProj.dispose();
      downProj?.dispose();
      throw e;
    }
  }

  get parameterBytes(): number {
    let n = 0;
    for (const lin of [this.gateUpProj, this.downProj]) n += lin.weight.nbytes + (lin.bias ? lin.bias.nbytes : 0);
    return n;
  }

  /** down(silu(gate(x)) · up(x)): `[n, hidden]` → `[n, hidden]`, one all-reduce (down_proj) under TP. */
  async forward(x: Tensor): Promise<Tensor> {
    const gu = (await this.gateUpProj.forward(x)) as Tensor;
    const act = await siluAndMul(gu);
    gu.dispose();
    const down = (await this.downProj.forward(act)) as Tensor;
    act.dispose();
    return down;
  }

  /** Frees gate_up_proj and down_proj. Idempotent. */
  dispose(): void {
    this.gateUpProj.dispose();
    this.downProj.dispose();
  }
}

/** The Llama family: {@link parseLlamaConfig} and {@link LlamaMlp}. */
const LLAMA_VARIANT: DecoderVariant = { parseConfig: parseLlamaConfig, loadMlp: (ctx) => LlamaMlp.load(ctx) };

/** @internal What the model constructor takes (built by {@link LlamaForCausalLM._load}). */
export interface ModelInit {
  config: LlamaConfig;
  tp: ProcessGroup | null;
  pp: ProcessGroup | null;
  model: ProcessGroup | null;
  driver: number;
  device: Device;
  dtype: DType;
  part: StagePartition;
  embed: VocabParallelEmbedding | null;
  layers: DecoderLayer[];
  norm: Tensor | null;
  lmHead: ParallelLMHead | null;
  files: string[];
}

/** One decoder layer's parameters on this rank (Hugging Face names in comments). */
interface DecoderLayer {
  /** `input_layernorm.weight` */
  inputLayernorm: Tensor;
  /** `self_attn.{q,k,v}_proj` */
  qkvProj: QKVParallelLinear;
  /** `self_attn.o_proj` */
  oProj: RowParallelLinear;
  /** `post_attention_layernorm.weight` */
  postAttentionLayernorm: Tensor;
  /** `mlp.*` (or the variant's block, e.g. Mixtral's `block_sparse_moe.*`) */
  mlp: DecoderMlp;
}

/**
 * The key/value cache of one sequence on this rank: for each decoder layer of this pipeline stage, keys and
 * values of this rank's kv heads, `[capacity, numKvHeadsPerRank · headDim]` each.
 */
export class KVCache {
  /** Tokens the cache can hold. */
  readonly capacity: number;
  /** Tokens processed so far (the next token's position). */
  length = 0;
  /** @internal per local layer: keys and values */
  readonly layers: { k: Tensor; v: Tensor }[];
  #disposed = false;

  /** @internal use {@link LlamaForCausalLM.createCache} */
  constructor(capacity: number, layers: { k: Tensor; v: Tensor }[]) {
    this.capacity = capacity;
    this.layers = layers;
  }

  /** Bytes held by this cache on this rank. */
  get nbytes(): number {
    return this.layers.reduce((n, l) => n + l.k.nbytes + l.v.nbytes, 0);
  }

  /** Frees the cache. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const l of this.layers) {
      l.k.dispose();
      l.v.dispose();
    }
  }

  /** Same as `dispose()`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  get disposed(): boolean {
    return this.#disposed;
  }
}

/** One sequence's next tokens in a forward pass. */
export interface ForwardItem {
  /** Token ids appended to the sequence (positions cache.length …). */
  ids: readonly number[];
  /** The sequence's cache (from {@link LlamaForCausalLM.createCache}); its length advances by ids.length. */
  cache: KVCache;
}

/** Options of {@link LlamaForCausalLM.forward}. */
export interface ForwardOptions {
  /** Return the logits of every new position (`ids.length × vocab`), not only the last one (default false). */
  allPositions?: boolean;
  /** Micro-batches the items are split into for the pipeline (default: one per item with PP > 1, else 1). */
  microBatches?: number;
}

/** Options of {@link LlamaForCausalLM.generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate per sequence at most. */
  maxNewTokens: number;
  /** Stop a sequence after this token (included in the output); default the config's `eos_token_id`; null: never. */
  eosTokenId?: number | number[] | null;
  /** Process each prompt in chunks of this many tokens (chunked prefill; default: the whole prompt at once). */
  prefillChunkSize?: number;
  /** Micro-batches in flight through the pipeline (default: one per sequence with PP > 1, else 1). */
  microBatches?: number;
}

/** One record of a pipeline stage's timeline (ms since the start of the generate call). */
export interface StageRecord {
  /** `compute`: running this stage's layers; `wait`: blocked on the previous stage or the token broadcast. */
  kind: 'compute' | 'wait';
  /** Micro-batch index within its step (−1 for the token broadcast). */
  microBatch: number;
  /** Step: 0 for prefill (each chunk counts), then one per decode step. */
  step: number;
  /** Start, ms. */
  startMs: number;
  /** End, ms. */
  endMs: number;
}

/** Pipeline figures of a generate call (identical on every rank). */
export interface PipelineReport {
  /** Pipeline stages p. */
  stages: number;
  /** Micro-batches m per step. */
  microBatches: number;
  /** GPipe's idle fraction of a fill-drain schedule, (p − 1)/(p + m − 1). */
  theoreticalBubble: number;
  /** 1 − Σ_stages compute / (p · wall time), from the stages' records (TP rank 0 of each stage). */
  measuredBubble: number;
  /** Compute ms of each stage. */
  computeMs: number[];
  /** Wait ms of each stage. */
  waitMs: number[];
  /** This rank's own records. */
  records: StageRecord[];
}

/** One sequence of a {@link GenerationResult}. */
export interface GeneratedSequence {
  /** The prompt's token ids. */
  promptIds: number[];
  /** The new tokens only (the eos token included when the sequence stopped there). */
  generatedIds: number[];
  /** float32 logits `[vocab]` at the last prompt position. */
  lastLogits: Float32Array;
  /** `eos`: stopped at an eos token; `length`: reached maxNewTokens. */
  finishReason: 'eos' | 'length';
}

/** What {@link LlamaForCausalLM.generate} returns (identical on every rank). */
export interface GenerationResult {
  /** One entry per prompt, in order. */
  sequences: GeneratedSequence[];
  /** Timings on this rank. */
  timings: {
    /** Wall time of the prefill, ms (every prompt). */
    prefillMs: number;
    /** Mean wall time of one decode step, ms (all sequences advance one token per step). */
    decodeMsPerToken: number;
    /** Decode steps run. */
    decodeSteps: number;
    /** Prompt tokens per second of the prefill. */
    prefillTokensPerSecond: number;
    /** Generated tokens (all sequences, after the first) per second of decoding. */
    decodeTokensPerSecond: number;
  };
  /** Pipeline schedule figures (also with PP size 1: p = 1, bubble 0). */
  pipeline: PipelineReport;
}

/** A micro-batch of items with what the last stage must return for each. */
interface MicroBatch {
  items: { ids: readonly number[]; cache: KVCache; logits: 'none' | 'last' | 'all' }[];
}

function now(): number {
  return performance.now();
}

/**
 * `LlamaForCausalLM` (also `MistralForCausalLM` and `Qwen2ForCausalLM`, which share the architecture): a
 * decoder-only causal LM, this rank's shard of it.
 */
export class LlamaForCausalLM {
  /** The checked configuration. */
  readonly config: LlamaConfig;
  /** Tensor-parallel size and this rank's rank in the TP group. */
  readonly tpSize: number;
  /** This rank's rank in the TP group. */
  readonly tpRank: number;
  /** Pipeline stages. */
  readonly ppSize: number;
  /** This rank's stage. */
  readonly ppRank: number;
  /** First decoder layer of this stage and how many it holds. */
  readonly layerStart: number;
  /** Decoder layers held by this stage. */
  readonly numLocalLayers: number;
  /** Parameter device. */
  readonly device: Device;
  /** Parameter dtype. */
  readonly dtype: DType;
  /** Query heads on this rank. */
  readonly numHeads: number;
  /** Key/value heads on this rank. */
  readonly numKvHeads: number;
  /** The checkpoint files this rank opened while loading (base names): only those holding its tensors. */
  readonly checkpointFiles: readonly string[];
  readonly #tp: ProcessGroup | null;
  readonly #pp: ProcessGroup | null;
  readonly #model: ProcessGroup | null;
  readonly #driver: number;
  readonly #embed: VocabParallelEmbedding | null;
  readonly #layers: DecoderLayer[];
  readonly #norm: Tensor | null;
  readonly #lmHead: ParallelLMHead | null;
  readonly #invFreq: Float32Array;
  readonly #ropeScaling: number;
  #disposed = false;
  #records: StageRecord[] | null = null;
  #t0 = 0;

  /** @internal Use {@link LlamaForCausalLM.fromPretrained}. */
  protected constructor(init: ModelInit) {
    this.config = init.config;
    this.checkpointFiles = Object.freeze(init.files.slice().sort());
    this.#tp = init.tp;
    this.#pp = init.pp;
    this.#model = init.model;
    this.#driver = init.driver;
    this.tpSize = init.tp ? init.tp.size : 1;
    this.tpRank = init.tp ? init.tp.rank : 0;
    this.ppSize = init.pp ? init.pp.size : 1;
    this.ppRank = init.pp ? init.pp.rank : 0;
    this.layerStart = init.part.starts[this.ppRank]!;
    this.numLocalLayers = init.part.counts[this.ppRank]!;
    this.device = init.device;
    this.dtype = init.dtype;
    this.#embed = init.embed;
    this.#layers = init.layers;
    this.#norm = init.norm;
    this.#lmHead = init.lmHead;
    const q = init.layers[0]?.qkvProj;
    this.numHeads = q ? q.numHeads : this.config.numAttentionHeads / this.tpSize;
    this.numKvHeads = q ? q.numKvHeads : Math.max(1, this.config.numKeyValueHeads / this.tpSize);
    const rope = ropeInvFreq(this.config.rope, this.config.headDim);
    this.#invFreq = rope.invFreq;
    this.#ropeScaling = rope.attentionScaling;
  }

  /** Whether this rank is the pipeline's first stage (it embeds the tokens). */
  get isFirstStage(): boolean {
    return this.ppRank === 0;
  }

  /** Whether this rank is the pipeline's last stage (it computes the logits). */
  get isLastStage(): boolean {
    return this.ppRank === this.ppSize - 1;
  }

  /** Bytes of parameters this rank holds (its shards of every weight it owns). */
  get parameterBytes(): number {
    let n = 0;
    if (this.#embed) n += this.#embed.weight.nbytes;
    if (this.#lmHead && !this.#lmHead.tied) n += this.#lmHead.weight.nbytes;
    if (this.#norm) n += this.#norm.nbytes;
    for (const l of this.#layers) {
      n += l.inputLayernorm.nbytes + l.postAttentionLayernorm.nbytes;
      for (const lin of [l.qkvProj, l.oProj]) {
        n += lin.weight.nbytes + (lin.bias ? lin.bias.nbytes : 0);
      }
      n += l.mlp.parameterBytes;
    }
    return n;
  }

  /**
   * Loads this rank's shard of a Hugging Face model directory: `config.json` and `model.safetensors`, or
   * `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`. Each rank reads only the rows or
   * columns of its shards, and only the files holding its pipeline stage's tensors. Every rank of the
   * model's groups must call it.
   *
   * @param dir - the model directory
   * @throws TypeError / RangeError for bad options or a layout the heads / layers cannot be split into;
   *   TpkitError `UNSUPPORTED` naming the config field tpkit does not implement, `CHECKPOINT_INVALID` naming
   *   the file or the tensor that is missing or malformed (RangeError naming the tensor for a wrong shape),
   *   and the groups' errors
   */
  static async fromPretrained(dir: string, opts?: FromPretrainedOptions): Promise<LlamaForCausalLM> {
    return LlamaForCausalLM._load(dir, opts, LLAMA_VARIANT, (init) => new LlamaForCausalLM(init));
  }

  /**
   * @internal The loader of {@link LlamaForCausalLM.fromPretrained} for any {@link DecoderVariant}: `make` builds
   * the instance (a subclass's constructor).
   */
  protected static async _load<C extends LlamaConfig, M extends LlamaForCausalLM>(
    dir: string,
    opts: FromPretrainedOptions | undefined,
    variant: DecoderVariant<C>,
    make: (init: ModelInit) => M,
  ): Promise<M> {
    nonEmptyString(dir, 'dir');
    const o = options<FromPretrainedOptions>(opts, 'options');
    const device = parseDevice(o.device);
    const dtype = parseDType(o.dtype);
    if (device === 'cpu' && dtype !== 'float32') {
      throw new TypeError(`the cpu backend computes in float32 but dtype ${dtype} was requested (float16/bfloat16 weights are widened to float32 on load)`);
    }
    const checkGroup = (g: unknown, name: string): ProcessGroup | undefined => {
      if (g === undefined) return undefined;
      if (g === null || typeof g !== 'object' || typeof (g as ProcessGroup).allReduce !== 'function') throw typeError('ProcessGroup', name, g);
      return g as ProcessGroup;
    };
    const mp = parallelState.modelParallelIsInitialized();
    const tpIn = checkGroup(o.group, 'group') ?? (mp ? parallelState.getTensorModelParallelGroup() : undefined);
    const ppIn = checkGroup(o.pipelineGroup, 'pipelineGroup') ?? (mp ? parallelState.getPipelineModelParallelGroup() : undefined);
    const tp = tpIn && tpIn.size > 1 ? tpIn : null;
    const pp = ppIn && ppIn.size > 1 ? ppIn : null;
    const tpSize = tp ? tp.size : 1;
    const ppSize = pp ? pp.size : 1;
    let model = checkGroup(o.modelGroup, 'modelGroup') ?? null;
    if (!model) {
      if (!pp) model = tp;
      else {
        const world = getWorldGroup();
        if (!world || world.size !== tpSize * ppSize) {
          throw new RangeError(
            `LlamaForCausalLM with pipeline parallel size ${ppSize} needs options.modelGroup (the ${tpSize * ppSize} ranks of one model instance) when the world group ${world ? `has ${world.size} ranks` : 'does not exist'}`,
          );
        }
        model = world;
      }
    }
    if (model && model.size !== tpSize * ppSize) {
      throw new RangeError(`modelGroup has ${model.size} ranks but the model spans tensor parallel size ${tpSize} × pipeline parallel size ${ppSize}`);
    }
    const config = variant.parseConfig(await readJsonFile(path.join(dir, 'config.json')));
    // Layouts the heads and layers cannot be split into fail before any file is read.
    if (config.numAttentionHeads % tpSize !== 0) {
      throw new RangeError(`num_attention_heads ${config.numAttentionHeads} is not divisible by tensor parallel size ${tpSize}`);
    }
    const part = partitionLayers(config.numHiddenLayers, ppSize);
    const ppRank = pp ? pp.rank : 0;
    const first = ppRank === 0;
    const last = ppRank === ppSize - 1;
    const ckpt = await CheckpointDir.open(dir);
    const layerOpts = { group: tp ?? undefined, dtype, device } as const;
    const created: { dispose(): void }[] = [];
    const track = <T extends { dispose(): void }>(x: T): T => {
      created.push(x);
      return x;
    };
    try {
      const readFull = async (name: string, shape: number[]): Promise<Tensor> => {
        const f = await ckpt.fileFor(name);
        const info = f.info(name);
        if (info.shape.length !== shape.length || info.shape.some((s, i) => s !== shape[i])) {
          throw new RangeError(`Expected tensor '${name}' of shape [${shape.join(', ')}] in ${f.path} but it has shape [${info.shape.join(', ')}]`);
        }
        const raw = adoptRaw(await f.read(name));
        if (raw.dtype === dtype && raw.device === device) return track(raw);
        const t = await raw.to({ dtype, device });
        raw.dispose();
        return track(t);
      };
      const h = config.hiddenSize;
      const hd = config.headDim;
      let embed: VocabParallelEmbedding | null = null;
      if (first || (last && config.tieWordEmbeddings)) {
        embed = track(new VocabParallelEmbedding(config.vocabSize, h, layerOpts));
        const name = 'model.embed_tokens.weight';
        await embed.loadWeightFrom(await ckpt.fileFor(name), name);
      }
      const layers: DecoderLayer[] = [];
      for (let i = part.starts[ppRank]!; i < part.starts[ppRank]! + part.counts[ppRank]!; i++) {
        const p = `model.layers.${i}.`;
        const qkvProj = track(new QKVParallelLinear(h, hd, config.numAttentionHeads, config.numKeyValueHeads, { ...layerOpts, bias: config.qkvBias }));
        for (const s of ['q', 'k', 'v'] as const) {
          const name = `${p}self_attn.${s}_proj.weight`;
          await qkvProj.loadWeightFrom(await ckpt.fileFor(name), name, s);
          if (config.qkvBias) {
            const b = `${p}self_attn.${s}_proj.bias`;
            await qkvProj.loadBiasFrom(await ckpt.fileFor(b), b, s);
          }
        }
        const oProj = track(new RowParallelLinear(config.numAttentionHeads * hd, h, { ...layerOpts, bias: config.oProjBias }));
        await loadLinear(ckpt, oProj, `${p}self_attn.o_proj`, config.oProjBias);
        const mlp = track(await variant.loadMlp({ config, ckpt, layer: i, prefix: p, tp, dtype, device, options: o as Record<string, unknown> }));
        layers.push({
          inputLayernorm: await readFull(`${p}input_layernorm.weight`, [h]),
          qkvProj,
          oProj,
          postAttentionLayernorm: await readFull(`${p}post_attention_layernorm.weight`, [h]),
          mlp,
        });
      }
      let norm: Tensor | null = null;
      let lmHead: ParallelLMHead | null = null;
      if (last) {
        norm = await readFull('model.norm.weight', [h]);
        if (config.tieWordEmbeddings) lmHead = ParallelLMHead.tiedTo(embed!);
        else {
          if (!ckpt.has('lm_head.weight')) {
            throw new TpkitError('CHECKPOINT_INVALID', `tensor 'lm_head.weight' is missing from ${ckpt.source} (config.json has tie_word_embeddings false)`);
          }
          lmHead = track(new ParallelLMHead(config.vocabSize, h, layerOpts));
          await lmHead.loadWeightFrom(await ckpt.fileFor('lm_head.weight'), 'lm_head.weight');
        }
      }
      if (embed && !first && !config.tieWordEmbeddings) throw new Error('unreachable: embedding outside the first stage');
      // The driver (TP rank 0 of the last stage) as a rank of the model group: every rank reports its
      // (stage, TP rank) and the one with (p − 1, 0) is found, whatever the group's rank order.
      let driver = 0;
      if (model && model.size > 1) {
        const me = Tensor.from([ppRank, tp ? tp.rank : 0], [1, 2]);
        const all = await model.allGather(me, { dim: 0 });
        const v = await all.toFloat32Array();
        me.dispose();
        all.dispose();
        driver = -1;
        for (let r = 0; r < model.size; r++) if (v[2 * r] === ppSize - 1 && v[2 * r + 1] === 0) driver = r;
        if (driver < 0) throw new RangeError('modelGroup does not contain TP rank 0 of the last pipeline stage');
      }
      return make({ config, tp, pp, model, driver, device, dtype, part, embed, layers, norm, lmHead, files: ckpt.openedFiles });
    } catch (e) {
      for (const x of created) x.dispose();
      throw e;
    } finally {
      await ckpt.close();
    }
  }

  /**
   * A key/value cache for one sequence of at most `capacity` tokens (this rank's kv heads, this stage's layers).
   *
   * @throws RangeError for a non-positive capacity, or one above Mistral's `sliding_window` (tpkit does not
   *   implement the window; below it attention is identical)
   */
  createCache(capacity: number): KVCache {
    this.#alive();
    positiveInteger(capacity, 'capacity');
    const w = this.config.slidingWindow;
    if (w !== null && capacity > w) {
      throw new RangeError(`sequence capacity ${capacity} exceeds the model's sliding_window ${w} (sliding-window attention is not implemented)`);
    }
    const width = this.numKvHeads * this.config.headDim;
    const layers: { k: Tensor; v: Tensor }[] = [];
    for (let i = 0; i < this.numLocalLayers; i++) {
      layers.push({
        k: Tensor.zeros([capacity, width], { dtype: this.dtype, device: this.device }),
        v: Tensor.zeros([capacity, width], { dtype: this.dtype, device: this.device }),
      });
    }
    return new KVCache(capacity, layers);
  }

  /**
   * Runs the model over new tokens of one or more sequences (each with its own cache, e.g. a prefill chunk or
   * one decode token each) and returns their logits, identical on every rank. Every rank of the model calls it
   * with the same items.
   *
   * @returns per item: `[vocab]` float32 logits of its last new position, or `[ids.length × vocab]` (row-major)
   *   with `allPositions`
   * @throws RangeError for empty ids, ids out of the vocabulary, or a cache that would overflow; the groups' errors
   */
  async forward(items: readonly ForwardItem[], opts?: ForwardOptions): Promise<Float32Array[]> {
    this.#alive();
    const o = options<ForwardOptions>(opts, 'options');
    const all = o.allPositions === true;
    const list = this.#checkItems(items);
    const mbs = this.#split(
      list.map((it) => ({ ids: it.ids, cache: it.cache, logits: all ? ('all' as const) : ('last' as const) })),
      o.microBatches,
    );
    const out = new Array<Float32Array>(list.length);
    let k = 0;
    const offsets = mbs.map((mb) => {
      const start = k;
      k += mb.items.length;
      return start;
    });
    await this.#pipeline(mbs, 0, async (m, logits) => {
      const v = await logits.toFloat32Array();
      const vocab = this.config.vocabSize;
      let row = 0;
      mbs[m]!.items.forEach((it, j) => {
        const rows = it.logits === 'all' ? it.ids.length : 1;
        out[offsets[m]! + j] = v.slice(row * vocab, (row + rows) * vocab);
        row += rows;
      });
    });
    // Only the last stage has the logits: the driver broadcasts them.
    if (this.ppSize > 1) {
      for (let i = 0; i < list.length; i++) {
        const n = (all ? list[i]!.ids.length : 1) * this.config.vocabSize;
        const t = this.isLastStage ? Tensor.from(out[i]!, [n]) : Tensor.zeros([n]);
        await this.#model!.broadcast(t, this.#driver);
        out[i] = await t.toFloat32Array();
        t.dispose();
      }
    }
    return out;
  }

  /**
   * Generates up to `maxNewTokens` tokens for each prompt (greedy by default; seeded sampling with
   * `temperature`, `topK`, `topP`, `seed`). One rank (TP rank 0 of the last stage) chooses each token and
   * broadcasts it, so every rank returns the same tokens. Every rank of the model calls it with the same
   * arguments.
   *
   * @param prompts - one prompt (token ids) or several (a batch of sequences of any lengths)
   * @throws TypeError / RangeError for empty prompts, ids out of the vocabulary or bad options; the groups' errors
   */
  async generate(prompts: readonly number[] | readonly (readonly number[])[], opts: GenerateOptions): Promise<GenerationResult> {
    this.#alive();
    const o = options<GenerateOptions>(opts, 'options');
    const maxNewTokens = positiveInteger(o.maxNewTokens, 'maxNewTokens');
    const sampling = checkSamplingOptions({ temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed });
    const chunk = o.prefillChunkSize === undefined ? Infinity : positiveInteger(o.prefillChunkSize, 'prefillChunkSize');
    let eos: number[];
    if (o.eosTokenId === undefined) eos = this.config.eosTokenIds;
    else if (o.eosTokenId === null) eos = [];
    else {
      const list = Array.isArray(o.eosTokenId) ? o.eosTokenId : [o.eosTokenId];
      eos = list.map((id, i) => integerInRange(id, `eosTokenId[${i}]`, 0, this.config.vocabSize));
    }
    if (!Array.isArray(prompts) || prompts.length === 0) throw typeError('a non-empty array of token ids or of prompts', 'prompts', prompts);
    const batch = (typeof prompts[0] === 'number' ? [prompts as readonly number[]] : (prompts as readonly (readonly number[])[])).map((p, i) =>
      this.#checkIds(p, `prompts[${i}]`),
    );
    const sampler = new Sampler(sampling);
    const caches = batch.map((p) => this.createCache(p.length + maxNewTokens));
    this.#records = [];
    this.#t0 = now();
    try {
      const seqs = batch.map((p) => ({ promptIds: p.slice(), generatedIds: [] as number[], lastLogits: new Float32Array(0) as Float32Array<ArrayBufferLike>, finishReason: 'length' as 'eos' | 'length', done: false }));
      // Prefill, chunk by chunk: sequences whose prompt has tokens left take part in each round.
      const tPrefill = now();
      let step = 0;
      for (let start = 0; batch.some((p) => p.length > start); start += chunk === Infinity ? Infinity : chunk) {
        const idx = batch.map((p, i) => (p.length > start ? i : -1)).filter((i) => i >= 0);
        const items = idx.map((i) => {
          const p = batch[i]!;
          const end = Math.min(p.length, start + chunk);
          return { ids: p.slice(start, end), cache: caches[i]!, logits: end === p.length ? ('last' as const) : ('none' as const) };
        });
        const finals = items.map((it, j) => (it.logits === 'last' ? idx[j]! : -1)).filter((i) => i >= 0);
        const tokens = await this.#step(items, o.microBatches, step++, sampler, true);
        finals.forEach((i, j) => {
          seqs[i]!.lastLogits = tokens.logits[j]!;
          this.#accept(seqs[i]!, tokens.ids[j]!, eos, maxNewTokens);
        });
        if (chunk === Infinity) break;
      }
      const prefillMs = now() - tPrefill;
      // Decode: every unfinished sequence advances one token per step.
      const tDecode = now();
      let decodeSteps = 0;
      let decodeTokens = 0;
      while (seqs.some((s) => !s.done)) {
        const idx = seqs.map((s, i) => (s.done ? -1 : i)).filter((i) => i >= 0);
        const items = idx.map((i) => {
          const s = seqs[i]!;
          return { ids: [s.generatedIds[s.generatedIds.length - 1]!], cache: caches[i]!, logits: 'last' as const };
        });
        const tokens = await this.#step(items, o.microBatches, step++, sampler, false);
        idx.forEach((i, j) => this.#accept(seqs[i]!, tokens.ids[j]!, eos, maxNewTokens));
        decodeSteps++;
        decodeTokens += idx.length;
      }
      const decodeMs = now() - tDecode;
      const pipeline = await this.#pipelineReport(this.#split(batch.map((p, i) => ({ ids: p, cache: caches[i]!, logits: 'last' as const })), o.microBatches).length);
      const promptTokens = batch.reduce((n, p) => n + p.length, 0);
      return {
        sequences: seqs.map(({ promptIds, generatedIds, lastLogits, finishReason }) => ({ promptIds, generatedIds, lastLogits, finishReason })),
        timings: {
          prefillMs,
          decodeMsPerToken: decodeSteps > 0 ? decodeMs / decodeSteps : 0,
          decodeSteps,
          prefillTokensPerSecond: prefillMs > 0 ? (promptTokens * 1000) / prefillMs : 0,
          decodeTokensPerSecond: decodeMs > 0 ? (decodeTokens * 1000) / decodeMs : 0,
        },
        pipeline,
      };
    } finally {
      for (const c of caches) c.dispose();
      this.#records = null;
    }
  }

  /** Frees every parameter. Idempotent; later use throws TpkitError `DISPOSED`. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#embed?.dispose();
    this.#lmHead?.dispose();
    this.#norm?.dispose();
    for (const l of this.#layers) {
      l.inputLayernorm.dispose();
      l.postAttentionLayernorm.dispose();
      l.qkvProj.dispose();
      l.oProj.dispose();
      l.mlp.dispose();
    }
  }

  /** Same as `dispose()`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  #accept(s: { generatedIds: number[]; done: boolean; finishReason: 'eos' | 'length' }, id: number, eos: number[], max: number): void {
    s.generatedIds.push(id);
    if (eos.includes(id)) {
      s.done = true;
      s.finishReason = 'eos';
    } else if (s.generatedIds.length >= max) s.done = true;
  }

  /**
   * One pipeline pass over `items`; the driver chooses a token for every item that asked for logits and
   * broadcasts them (and, at prefill, the logits of the last prompt position when the driver is not everyone).
   */
  async #step(
    items: MicroBatch['items'],
    microBatches: number | undefined,
    step: number,
    sampler: Sampler,
    withLogits: boolean,
  ): Promise<{ ids: number[]; logits: Float32Array[] }> {
    const mbs = this.#split(items, microBatches);
    const chosen: number[] = [];
    const logits: Float32Array[] = [];
    await this.#pipeline(mbs, step, async (m, t) => {
      const vocab = this.config.vocabSize;
      const v = await t.toFloat32Array();
      for (let r = 0; r * vocab < v.length; r++) {
        const row = v.subarray(r * vocab, (r + 1) * vocab);
        if (withLogits) logits.push(row.slice());
        if (this.#isDriver) chosen.push(sampler.sample(row));
      }
    });
    const wanted = items.filter((it) => it.logits !== 'none').length;
    if (wanted === 0) return { ids: [], logits: [] };
    // Token ids travel as float32: exact up to 2^24, far above any vocabulary.
    const ids = Tensor.from(this.#isDriver ? chosen : new Array<number>(wanted).fill(0), [wanted]);
    const t0 = now();
    if (this.#model && this.#model.size > 1) await this.#model.broadcast(ids, this.#driver);
    this.#record('wait', -1, step, t0);
    const out = Array.from(await ids.toFloat32Array(), (x) => Math.round(x));
    ids.dispose();
    if (withLogits && this.ppSize > 1) {
      for (let i = 0; i < wanted; i++) {
        const t = this.isLastStage ? Tensor.from(logits[i]!, [this.config.vocabSize]) : Tensor.zeros([this.config.vocabSize]);
        await this.#model!.broadcast(t, this.#driver);
        logits[i] = await t.toFloat32Array();
        t.dispose();
      }
    }
    return { ids: out, logits };
  }

  get #isDriver(): boolean {
    return this.isLastStage && this.tpRank === 0;
  }

  /** Splits items into micro-batches, in order. */
  #split(items: MicroBatch['items'], microBatches: number | undefined): MicroBatch[] {
    const m = microBatches === undefined ? (this.ppSize > 1 ? items.length : 1) : positiveInteger(microBatches, 'microBatches');
    const n = Math.min(m, items.length);
    const out: MicroBatch[] = [];
    let k = 0;
    for (let i = 0; i < n; i++) {
      const size = Math.floor(items.length / n) + (i < items.length % n ? 1 : 0);
      out.push({ items: items.slice(k, k + size) });
      k += size;
    }
    return out;
  }

  /**
   * Fill-drain pipeline over the micro-batches: each stage, micro-batch by micro-batch, receives (or embeds),
   * runs its layers, and sends on (or computes the logits and hands them to `onLogits`). A send is awaited
   * only before the next one, so computing micro-batch k + 1 overlaps sending k.
   */
  async #pipeline(mbs: MicroBatch[], step: number, onLogits: (m: number, logits: Tensor) => Promise<void>): Promise<void> {
    let pendingSend: Promise<void> | null = null;
    let pendingTensor: Tensor | null = null;
    try {
      for (let m = 0; m < mbs.length; m++) {
        const mb = mbs[m]!;
        const n = mb.items.reduce((s, it) => s + it.ids.length, 0);
        let x: Tensor;
        if (this.isFirstStage) {
          const ids = mb.items.flatMap((it) => it.ids as number[]);
          const t0 = now();
          x = await this.#embed!.forward(ids);
          this.#record('compute', m, step, t0);
        } else {
          const t0 = now();
          x = Tensor.empty([n, this.config.hiddenSize], { dtype: this.dtype, device: this.device });
          await this.#pp!.recv(x, this.ppRank - 1);
          this.#record('wait', m, step, t0);
        }
        const t1 = now();
        const y = await this.#layersForward(x, mb);
        if (!this.isLastStage) {
          this.#record('compute', m, step, t1);
          if (pendingSend) {
            await pendingSend;
            pendingTensor!.dispose();
          }
          pendingTensor = y;
          pendingSend = this.#pp!.send(y, this.ppRank + 1);
          continue;
        }
        const logits = await this.#logits(y, mb);
        y.dispose();
        this.#record('compute', m, step, t1);
        if (logits) {
          try {
            await onLogits(m, logits);
          } finally {
            logits.dispose();
          }
        }
      }
      if (pendingSend) await pendingSend;
    } finally {
      pendingTensor?.dispose();
    }
    for (const mb of mbs) for (const it of mb.items) it.cache.length += it.ids.length;
  }

  /** This stage's decoder layers over a micro-batch's hidden states `[n, hidden]` (consumes `x`). */
  async #layersForward(x: Tensor, mb: MicroBatch): Promise<Tensor> {
    const c = this.config;
    const hd = c.headDim;
    const qw = this.numHeads * hd;
    const kw = this.numKvHeads * hd;
    const positions: number[] = [];
    for (const it of mb.items) for (let j = 0; j < it.ids.length; j++) positions.push(it.cache.length + j);
    const rope = { headDim: hd, invFreq: this.#invFreq, attentionScaling: this.#ropeScaling };
    let h = x;
    for (let li = 0; li < this.#layers.length; li++) {
      const layer = this.#layers[li]!;
      const normed = await rmsNorm(h, layer.inputLayernorm, c.rmsNormEps);
      const qkv = (await layer.qkvProj.forward(normed)) as Tensor;
      normed.dispose();
      const qRaw = qkv.narrow(-1, 0, qw);
      const kRaw = qkv.narrow(-1, qw, kw);
      const v = qkv.narrow(-1, qw + kw, kw);
      qkv.dispose();
      const q = await rotaryEmbedding(qRaw, positions, rope);
      const k = await rotaryEmbedding(kRaw, positions, rope);
      qRaw.dispose();
      kRaw.dispose();
      const parts: Tensor[] = [];
      let row = 0;
      for (const it of mb.items) {
        const len = it.ids.length;
        const cache = it.cache.layers[li]!;
        const one = mb.items.length === 1;
        const kRows = one ? k : k.narrow(0, row, len);
        const vRows = one ? v : v.narrow(0, row, len);
        await copyRows(cache.k, it.cache.length, kRows);
        await copyRows(cache.v, it.cache.length, vRows);
        if (!one) {
          kRows.dispose();
          vRows.dispose();
        }
        const qRows = one ? q : q.narrow(0, row, len);
        parts.push(await attention(qRows, cache.k, cache.v, { numHeads: this.numHeads, numKvHeads: this.numKvHeads, headDim: hd, kvLength: it.cache.length + len }));
        if (!one) qRows.dispose();
        row += len;
      }
      q.dispose();
      k.dispose();
      v.dispose();
      const attn = parts.length === 1 ? parts[0]! : cat(parts, 0);
      if (parts.length > 1) parts.forEach((p) => p.dispose());
      const o = (await layer.oProj.forward(attn)) as Tensor;
      attn.dispose();
      const h2 = await add(h, o);
      o.dispose();
      h.dispose();
      const normed2 = await rmsNorm(h2, layer.postAttentionLayernorm, c.rmsNormEps);
      const down = await layer.mlp.forward(normed2);
      normed2.dispose();
      h = await add(h2, down);
      down.dispose();
      h2.dispose();
    }
    return h;
  }

  /** Final norm and LM head over the rows each item asked for (null when none did). */
  async #logits(h: Tensor, mb: MicroBatch): Promise<Tensor | null> {
    const picks: Tensor[] = [];
    let row = 0;
    for (const it of mb.items) {
      const len = it.ids.length;
      if (it.logits === 'all') picks.push(h.narrow(0, row, len));
      else if (it.logits === 'last') picks.push(h.narrow(0, row + len - 1, 1));
      row += len;
    }
    if (picks.length === 0) return null;
    const sel = picks.length === 1 ? picks[0]! : cat(picks, 0);
    if (picks.length > 1) picks.forEach((p) => p.dispose());
    const normed = await rmsNorm(sel, this.#norm!, this.config.rmsNormEps);
    sel.dispose();
    try {
      return await this.#lmHead!.forward(normed);
    } finally {
      normed.dispose();
    }
  }

  #record(kind: 'compute' | 'wait', microBatch: number, step: number, t0: number): void {
    if (this.#records) this.#records.push({ kind, microBatch, step, startMs: t0 - this.#t0, endMs: now() - this.#t0 });
  }

  async #pipelineReport(m: number): Promise<PipelineReport> {
    const records = this.#records ?? [];
    const sum = (kind: string) => records.filter((r) => r.kind === kind).reduce((s, r) => s + (r.endMs - r.startMs), 0);
    const wall = now() - this.#t0;
    const p = this.ppSize;
    const mine = [this.ppRank, this.tpRank, sum('compute'), sum('wait'), wall];
    let rows: number[][] = [mine];
    if (this.#model && this.#model.size > 1) {
      const t = Tensor.from(mine, [1, mine.length]);
      const g = await this.#model.allGather(t, { dim: 0 });
      const v = await g.toFloat32Array();
      t.dispose();
      g.dispose();
      rows = [];
      for (let r = 0; r * mine.length < v.length; r++) rows.push(Array.from(v.subarray(r * mine.length, (r + 1) * mine.length)));
    }
    const computeMs = new Array<number>(p).fill(0);
    const waitMs = new Array<number>(p).fill(0);
    let wallMax = 0;
    for (const [stage, tpRank, comp, wait, w] of rows) {
      if (tpRank !== 0) continue;
      computeMs[stage!] = comp!;
      waitMs[stage!] = wait!;
      wallMax = Math.max(wallMax, w!);
    }
    const total = computeMs.reduce((a, b) => a + b, 0);
    return {
      stages: p,
      microBatches: m,
      theoreticalBubble: (p - 1) / (p + m - 1),
      measuredBubble: wallMax > 0 ? Math.max(0, 1 - total / (p * wallMax)) : 0,
      computeMs,
      waitMs,
      records: records.slice(),
    };
  }

  #checkIds(ids: unknown, name: string): number[] {
    if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) throw typeError('array of token ids', name, ids);
    const list = Array.from(ids as ArrayLike<number>);
    if (list.length === 0) throw new RangeError(`Expected at least one token id in ${name} but received none`);
    list.forEach((id, i) => integerInRange(id, `${name}[${i}]`, 0, this.config.vocabSize));
    return list;
  }

  #checkItems(items: unknown): ForwardItem[] {
    if (!Array.isArray(items) || items.length === 0) throw typeError('non-empty array of { ids, cache }', 'items', items);
    return (items as ForwardItem[]).map((it, i) => {
      if (!it || typeof it !== 'object' || !(it.cache instanceof KVCache)) throw typeError('{ ids, cache: KVCache }', `items[${i}]`, it);
      if (it.cache.disposed) throw new TpkitError('DISPOSED', `items[${i}].cache was used after dispose()`);
      if (it.cache.layers.length !== this.numLocalLayers) throw new RangeError(`items[${i}].cache was not created by this model`);
      const ids = this.#checkIds(it.ids, `items[${i}].ids`);
      if (it.cache.length + ids.length > it.cache.capacity) {
        throw new RangeError(`items[${i}]: ${ids.length} new tokens after ${it.cache.length} exceed the cache capacity ${it.cache.capacity}`);
      }
      if (items.indexOf(it) !== i || (items as ForwardItem[]).some((o, j) => j !== i && o.cache === it.cache)) {
        throw new RangeError(`items[${i}]: each sequence's cache may appear once per forward`);
      }
      return { ids, cache: it.cache };
    });
  }

  #alive(): void {
    if (this.#disposed) throw new TpkitError('DISPOSED', `${this.constructor.name} was used after dispose()`);
  }
}

async function loadLinear(ckpt: CheckpointDir, layer: RowParallelLinear, prefix: string, bias: boolean): Promise<void> {
  const w = `${prefix}.weight`;
  await layer.loadWeightFrom(await ckpt.fileFor(w), w);
  if (bias) {
    const b = `${prefix}.bias`;
    await layer.loadBiasFrom(await ckpt.fileFor(b), b);
  }
}

/** `MistralForCausalLM`: the same architecture and loader (Hugging Face's class name). */
export const MistralForCausalLM = LlamaForCausalLM;
/** `Qwen2ForCausalLM`: the same architecture with q/k/v biases (read from config.json). */
export const Qwen2ForCausalLM = LlamaForCausalLM;
