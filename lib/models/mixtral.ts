/**
 * Mixtral causal language models (transformers' `modeling_mixtral.py`): the Llama-family decoder of
 * lib/models/llama.ts — same embedding, attention (no biases), RMSNorms, RoPE, KV cache, LM head, TP and PP —
 * with a sparse mixture-of-experts block ({@link FusedMoE}) in place of each layer's MLP:
 * `block_sparse_moe.gate` (router) and `block_sparse_moe.experts.N.{w1,w2,w3}` (SwiGLU experts, w1 = gate,
 * w3 = up, w2 = down).
 *
 * Placement: with an expert-parallel group of size n > 1 (`options.expertGroup`, else `parallelState`'s EP
 * group) rank r of it loads and runs only experts `[r·E/n, (r+1)·E/n)` and tokens travel to them by all-to-all;
 * with EP size 1 every expert is split across the model's TP group instead (vLLM's two placements). The EP
 * group may span several model instances (DP replicas): then every rank of it must run the same number of
 * forward passes (e.g. the same `maxNewTokens` with `eosTokenId: null`), since each MoE layer is a collective
 * over the EP group.
 *
 * @module
 */
import { TpkitError } from '../errors';
import * as parallelState from '../parallel_state';
import type { ProcessGroup } from '../distributed/process_group';
import { FusedMoE, type MoEForwardStats } from '../layers/moe';
import type { Tensor } from '../tensor';
import { typeError } from '../validate';
import { type MixtralConfig, parseMixtralConfig } from './config';
import { type DecoderMlp, type DecoderVariant, type FromPretrainedOptions, LlamaForCausalLM, type MlpLoadContext, type ModelInit } from './llama';

/** Options of {@link MixtralForCausalLM.fromPretrained}. */
export interface MixtralFromPretrainedOptions extends FromPretrainedOptions {
  /**
   * The expert-parallel group (default: `parallelState.getExpertModelParallelGroup()` when initialized, else
   * none: every expert on every rank of the TP group, split by TP).
   */
  expertGroup?: ProcessGroup;
}

/** The MoE block as a decoder layer's MLP. */
class MixtralSparseMoeBlock implements DecoderMlp {
  constructor(readonly moe: FusedMoE) {}
  get parameterBytes(): number {
    return this.moe.parameterBytes;
  }
  forward(x: Tensor): Promise<Tensor> {
    return this.moe.forward(x);
  }
  dispose(): void {
    this.moe.dispose();
  }
}

async function loadMoe(ctx: MlpLoadContext<MixtralConfig>): Promise<MixtralSparseMoeBlock> {
  const { config: c, ckpt, prefix } = ctx;
  const given = ctx.options.expertGroup;
  if (given !== undefined && (given === null || typeof given !== 'object' || typeof (given as ProcessGroup).allToAll !== 'function')) {
    throw typeError('ProcessGroup', 'expertGroup', given);
  }
  const ep = (given as ProcessGroup | undefined) ?? (parallelState.modelParallelIsInitialized() ? parallelState.getExpertModelParallelGroup() : undefined);
  const epSize = ep ? ep.size : 1;
  if (c.numLocalExperts % epSize !== 0) {
    throw new RangeError(`num_local_experts ${c.numLocalExperts} is not divisible by expert parallel size ${epSize}`);
  }
  const moe = new FusedMoE(c.numLocalExperts, c.numExpertsPerTok, c.hiddenSize, c.intermediateSize, {
    expertGroup: ep,
    group: epSize === 1 ? (ctx.tp ?? undefined) : undefined,
    dtype: ctx.dtype,
    device: ctx.device,
  });
  try {
    const p = `${prefix}block_sparse_moe.`;
    await moe.loadRouterWeightFrom(await ckpt.fileFor(`${p}gate.weight`), `${p}gate.weight`);
    // Only this rank's experts: the other experts' tensors (and files holding only them) are never read.
    for (const e of moe.localExperts) {
      for (const w of ['w1', 'w2', 'w3'] as const) {
        const name = `${p}experts.${e}.${w}.weight`;
        if (!ckpt.has(name)) throw new TpkitError('CHECKPOINT_INVALID', `tensor '${name}' is missing from ${ckpt.source}`);
        await moe.loadExpertWeightFrom(await ckpt.fileFor(name), name, e, w);
      }
    }
    return new MixtralSparseMoeBlock(moe);
  } catch (e) {
    moe.dispose();
    throw e;
  }
}

const MIXTRAL_VARIANT: DecoderVariant<MixtralConfig> = { parseConfig: parseMixtralConfig, loadMlp: loadMoe };

/**
 * `MixtralForCausalLM`: {@link LlamaForCausalLM} with {@link FusedMoE} blocks. Same API (forward, generate,
 * createCache, dispose), plus the MoE layers and their load statistics.
 */
export class MixtralForCausalLM extends LlamaForCausalLM {
  /** This stage's MoE blocks, in layer order. */
  readonly moeLayers: readonly FusedMoE[];

  /** @internal Use {@link MixtralForCausalLM.fromPretrained}. */
  protected constructor(init: ModelInit) {
    super(init);
    this.moeLayers = Object.freeze(init.layers.map((l) => (l.mlp as MixtralSparseMoeBlock).moe));
  }

  /** The checked configuration (with `numLocalExperts`, `numExpertsPerTok`). */
  get mixtralConfig(): MixtralConfig {
    return this.config as MixtralConfig;
  }

  /** Expert-parallel size (1: every expert on every rank, TP-split). */
  get expertParallelSize(): number {
    return this.moeLayers[0]?.epSize ?? 1;
  }

  /** Experts held by this rank (the same in every layer). */
  get localExperts(): readonly number[] {
    return this.moeLayers[0]?.localExperts ?? [];
  }

  /** What each MoE layer of this stage did in the last forward (this rank's tokens), null before the first. */
  get lastMoEStats(): Array<MoEForwardStats | null> {
    return this.moeLayers.map((m) => m.lastStats);
  }

  /**
   * Loads this rank's part of a Mixtral Hugging Face directory (config.json + safetensors, sharded or not): the
   * TP shards of attention, embeddings and LM head as {@link LlamaForCausalLM.fromPretrained}, the router, and
   * only the experts this rank holds (all of them TP-split at EP size 1).
   *
   * @throws as LlamaForCausalLM.fromPretrained; TpkitError `UNSUPPORTED` naming the config field for MoE
   *   variants tpkit does not implement (shared experts, other routers; see parseMixtralConfig); RangeError when
   *   num_local_experts is not divisible by the EP size or the intermediate size by the TP size
   */
  static override async fromPretrained(dir: string, opts?: MixtralFromPretrainedOptions): Promise<MixtralForCausalLM> {
    return LlamaForCausalLM._load(dir, opts, MIXTRAL_VARIANT, (init) => new MixtralForCausalLM(init));
  }
}
