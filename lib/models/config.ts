/**
 * Hugging Face `config.json` of the Llama family, read and checked field by field.
 *
 * tpkit implements one decoder architecture — pre-norm RMSNorm, rotary attention with grouped-query heads,
 * SwiGLU MLP (transformers' `modeling_llama.py`) — under the three names whose configs describe it:
 * `LlamaForCausalLM`, `MistralForCausalLM` and `Qwen2ForCausalLM` (q/k/v biases). Every field that would make
 * transformers compute something else and that tpkit does not implement is a `TpkitError` `UNSUPPORTED`
 * naming the field, never a silently different model. Defaults are transformers' (`configuration_llama.py`,
 * `configuration_mistral.py`, `configuration_qwen2.py`).
 *
 * Mixtral (`MixtralForCausalLM`, transformers' `modeling_mixtral.py`) is the same decoder with a sparse
 * mixture-of-experts block in place of the MLP; {@link parseMixtralConfig} reads it (and rejects the MoE variants
 * tpkit does not implement: shared experts, other routers, dense layers between sparse ones).
 *
 * @module
 */
import { TpkitError } from '../errors';

/** The architectures {@link parseLlamaConfig} accepts (Hugging Face class names). */
export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;

/** One of {@link SUPPORTED_ARCHITECTURES}. */
export type LlamaArchitecture = (typeof SUPPORTED_ARCHITECTURES)[number];

/** RoPE variants tpkit computes (transformers' `ROPE_INIT_FUNCTIONS` keys). */
export type RopeType = 'default' | 'llama3';

/** The rotary embedding, resolved from `rope_theta` / `rope_scaling` or `rope_parameters`. */
export interface RopeConfig {
  /** Variant (`default` = plain RoPE of Su et al. 2021). */
  ropeType: RopeType;
  /** Base θ of the inverse frequencies θ^(−2i/d). */
  theta: number;
  /** Scaling factor (`llama3`). */
  factor: number;
  /** `llama3`: low-frequency factor. */
  lowFreqFactor: number;
  /** `llama3`: high-frequency factor. */
  highFreqFactor: number;
  /** `llama3`: context length of the original training (tokens). */
  originalMaxPositionEmbeddings: number;
}

/** Every decoder architecture tpkit loads: the Llama family and Mixtral. */
export type DecoderArchitecture = LlamaArchitecture | 'MixtralForCausalLM';

/** A checked Llama-family configuration (camelCase of the Hugging Face fields, defaults applied). */
export interface LlamaConfig {
  /** `architectures[0]` (`MixtralForCausalLM` only in a {@link MixtralConfig}). */
  architecture: DecoderArchitecture;
  /** `model_type` (`llama`, `mistral`, `qwen2`). */
  modelType: string;
  /** `hidden_size`. */
  hiddenSize: number;
  /** `intermediate_size` of the MLP. */
  intermediateSize: number;
  /** `num_hidden_layers`. */
  numHiddenLayers: number;
  /** `num_attention_heads` (query heads). */
  numAttentionHeads: number;
  /** `num_key_value_heads` (default: `num_attention_heads`). */
  numKeyValueHeads: number;
  /** `head_dim` (default `hidden_size / num_attention_heads`; may differ from it). */
  headDim: number;
  /** `vocab_size`. */
  vocabSize: number;
  /** `rms_norm_eps` (default 1e-6). */
  rmsNormEps: number;
  /** `tie_word_embeddings`: the LM head reuses `embed_tokens` (default false). */
  tieWordEmbeddings: boolean;
  /** Biases on q, k and v (Llama's `attention_bias`; always for Qwen2). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama's `attention_bias`; never for Qwen2). */
  oProjBias: boolean;
  /** `mlp_bias` (Llama; default false). */
  mlpBias: boolean;
  /** `max_position_embeddings`. */
  maxPositionEmbeddings: number;
  /** Mistral's `sliding_window` when set: sequences longer than it are rejected (tokens), else null. */
  slidingWindow: number | null;
  /** `eos_token_id` as a list (empty when absent). */
  eosTokenIds: number[];
  /** `bos_token_id` or null. */
  bosTokenId: number | null;
  /** The rotary embedding. */
  rope: RopeConfig;
}

type Json = Record<string, unknown>;

function unsupported(field: string, value: unknown, why: string): TpkitError {
  return new TpkitError('UNSUPPORTED', `config.json: ${field} = ${JSON.stringify(value)} is not supported (${why})`);
}

function invalid(field: string, expected: string, value: unknown): TpkitError {
  return new TpkitError('CHECKPOINT_INVALID', `config.json: expected ${expected} for ${field} but received ${JSON.stringify(value)}`);
}

function posInt(c: Json, field: string, fallback?: number): number {
  const v = c[field];
  if ((v === undefined || v === null) && fallback !== undefined) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw invalid(field, 'a positive integer', v);
  return v;
}

function posNumber(c: Json, field: string, fallback: number): number {
  const v = c[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw invalid(field, 'a positive number', v);
  return v;
}

function bool(c: Json, field: string, fallback: boolean): boolean {
  const v = c[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw invalid(field, 'a boolean', v);
  return v;
}

function tokenIds(c: Json, field: string): number[] {
  const v = c[field];
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  for (const id of list) if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw invalid(field, 'a token id or a list of them', v);
  return list as number[];
}

/** Fields that mean a model other than the dense decoder tpkit computes, and the value that is harmless. */
const REJECTED_FIELDS: readonly [string, (v: unknown) => boolean, string][] = [
  ['num_local_experts', (v) => !v, 'mixture-of-experts layers are not implemented'],
  ['num_experts', (v) => !v, 'mixture-of-experts layers are not implemented'],
  ['moe_intermediate_size', (v) => !v, 'mixture-of-experts layers are not implemented'],
  ['use_sliding_window', (v) => v !== true, 'sliding-window attention is not implemented'],
  ['partial_rotary_factor', (v) => v === 1 || v === 1.0, 'partial rotary embeddings are not implemented'],
  ['pretraining_tp', (v) => typeof v === 'number' && Number.isInteger(v) && v >= 1, 'expected a positive integer'],
  ['attn_logit_softcapping', (v) => !v, 'attention soft-capping is not implemented'],
  ['final_logit_softcapping', (v) => !v, 'logit soft-capping is not implemented'],
  ['layer_types', (v) => !Array.isArray(v) || v.every((t) => t === 'full_attention'), 'only full attention layers are implemented'],
  ['no_rope_layers', (v) => !Array.isArray(v) || v.every((t) => t === 1 || t === true), 'layers without RoPE are not implemented'],
  ['quantization_config', (v) => !v, 'quantized checkpoints are not implemented'],
];

function parseRope(c: Json, headDim: number): RopeConfig {
  // transformers (`convert_rope_params_to_dict` / `standardize_rope_params`): the variant comes from a
  // non-empty `rope_scaling` object, else from the newer `rope_parameters` object (which may hold rope_theta
  // too); θ from that object, else the top-level `rope_theta`, else 10000.
  const objectField = (field: string): Json | null => {
    const v = c[field];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) throw invalid(field, 'an object or null', v);
    return Object.keys(v).length > 0 ? (v as Json) : null;
  };
  const rs = objectField('rope_scaling');
  const rp = objectField('rope_parameters');
  const scaling = rs ?? rp;
  const source = rs ? 'rope_scaling' : 'rope_parameters';
  const theta = scaling && scaling['rope_theta'] !== undefined && scaling['rope_theta'] !== null
    ? posNumber(scaling, 'rope_theta', 10000)
    : posNumber(c, 'rope_theta', 10000);
  const rawType = scaling ? (scaling['rope_type'] ?? scaling['type'] ?? 'default') : 'default';
  if (rawType !== 'default' && rawType !== 'llama3') {
    throw unsupported(`${source}.rope_type`, rawType, "tpkit implements RoPE types 'default' and 'llama3'");
  }
  const partial = scaling?.['partial_rotary_factor'];
  if (partial !== undefined && partial !== null && partial !== 1) throw unsupported(`${source}.partial_rotary_factor`, partial, 'partial rotary embeddings are not implemented');
  if (headDim % 2 !== 0) throw invalid('head_dim', 'an even head dimension for rotary embeddings', headDim);
  const rope: RopeConfig = { ropeType: rawType, theta, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
  const where = (f: string) => `${source}.${f}`;
  const num = (f: string, fallback?: number): number => {
    const v = scaling![f];
    if ((v === undefined || v === null) && fallback !== undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw invalid(where(f), 'a positive number', v);
    return v;
  };
  if (rawType === 'llama3') {
    rope.factor = num('factor');
    rope.lowFreqFactor = num('low_freq_factor');
    rope.highFreqFactor = num('high_freq_factor');
    // A top-level original_max_position_embeddings wins over the object's, then max_position_embeddings.
    rope.originalMaxPositionEmbeddings =
      c['original_max_position_embeddings'] !== undefined && c['original_max_position_embeddings'] !== null
        ? posNumber(c, 'original_max_position_embeddings', 8192)
        : num('original_max_position_embeddings', posNumber(c, 'max_position_embeddings', 2048));
    if (rope.highFreqFactor <= rope.lowFreqFactor) throw invalid(where('high_freq_factor'), `a value above low_freq_factor ${rope.lowFreqFactor}`, rope.highFreqFactor);
  }
  const attn = scaling?.['attention_factor'];
  if (attn !== undefined && attn !== null && attn !== 1) throw unsupported(where('attention_factor'), attn, 'only an attention factor of 1 is implemented');
  return rope;
}

/**
 * Checks a parsed `config.json` and returns the fields tpkit uses, with transformers' defaults.
 *
 * @param json - the parsed file
 * @returns the configuration
 * @throws TpkitError `UNSUPPORTED` naming the field for another architecture, a RoPE type other than
 *   `default` / `llama3`, `hidden_act` other than `silu`, mixture-of-experts or sliding-window
 *   fields, soft-capping, partial rotary factors or quantization; `CHECKPOINT_INVALID` naming the field for a
 *   missing or malformed value (e.g. heads that do not divide, a non-integer size)
 */
export function parseLlamaConfig(json: unknown): LlamaConfig {
  return parseDecoder(json, SUPPORTED_ARCHITECTURES, REJECTED_FIELDS, ' (MixtralForCausalLM: parseMixtralConfig)');
}

function parseDecoder(json: unknown, allowed: readonly string[], rejected: typeof REJECTED_FIELDS, hint: string): LlamaConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw invalid('the top level', 'a JSON object', json);
  const c = json as Json;
  const archs = c['architectures'];
  if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== 'string') throw invalid('architectures', 'a non-empty list of class names', archs);
  if (archs.length > 1) throw unsupported('architectures', archs, 'one architecture per checkpoint');
  const architecture = archs[0] as string;
  if (!allowed.includes(architecture)) {
    throw unsupported('architectures', archs, `tpkit implements ${allowed.join(', ')} here${hint}`);
  }
  const arch = architecture as DecoderArchitecture;
  const act = c['hidden_act'] ?? 'silu';
  if (act !== 'silu') throw unsupported('hidden_act', act, "the MLP activation is SiLU ('silu')");
  for (const [field, ok, why] of rejected) {
    if (field in c && c[field] !== null && !ok(c[field])) throw unsupported(field, c[field], why);
  }
  const hiddenSize = posInt(c, 'hidden_size');
  const numAttentionHeads = posInt(c, 'num_attention_heads');
  const numKeyValueHeads = posInt(c, 'num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw invalid('num_key_value_heads', `a divisor of num_attention_heads ${numAttentionHeads}`, numKeyValueHeads);
  }
  const defaultHeadDim = hiddenSize / numAttentionHeads;
  const headDim = posInt(c, 'head_dim', Number.isInteger(defaultHeadDim) ? defaultHeadDim : undefined);
  let slidingWindow: number | null = null;
  // MistralConfig defaults sliding_window to 4096 when the key is absent; only an explicit null disables it.
  if (arch === 'MistralForCausalLM' && c['sliding_window'] !== null) slidingWindow = posInt(c, 'sliding_window', 4096);
  // MixtralConfig defaults sliding_window to None.
  if (arch === 'MixtralForCausalLM' && c['sliding_window'] !== undefined && c['sliding_window'] !== null) slidingWindow = posInt(c, 'sliding_window');
  const attentionBias = bool(c, 'attention_bias', false);
  const qwen = arch === 'Qwen2ForCausalLM';
  const bos = tokenIds(c, 'bos_token_id');
  return {
    architecture: arch,
    modelType: typeof c['model_type'] === 'string' ? (c['model_type'] as string) : arch.replace('ForCausalLM', '').toLowerCase(),
    hiddenSize,
    intermediateSize: posInt(c, 'intermediate_size'),
    numHiddenLayers: posInt(c, 'num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    vocabSize: posInt(c, 'vocab_size'),
    rmsNormEps: posNumber(c, 'rms_norm_eps', 1e-6),
    tieWordEmbeddings: bool(c, 'tie_word_embeddings', false),
    qkvBias: qwen ? true : attentionBias,
    oProjBias: qwen ? false : attentionBias,
    mlpBias: qwen ? false : bool(c, 'mlp_bias', false),
    maxPositionEmbeddings: posInt(c, 'max_position_embeddings', 2048),
    slidingWindow,
    eosTokenIds: tokenIds(c, 'eos_token_id'),
    bosTokenId: bos.length > 0 ? bos[0]! : null,
    rope: parseRope(c, headDim),
  };
}

/** A checked Mixtral configuration: the decoder's fields plus the sparse MoE block's. */
export interface MixtralConfig extends LlamaConfig {
  architecture: 'MixtralForCausalLM';
  /** `num_local_experts`: experts per MoE layer (default 8). */
  numLocalExperts: number;
  /** `num_experts_per_tok`: the router's top-k (default 2; at most num_local_experts). */
  numExpertsPerTok: number;
}

/**
 * MoE fields of other models' configs that mean a block Mixtral does not compute (shared experts, other
 * routers, dense layers between sparse ones), and the value that is harmless.
 */
const MIXTRAL_REJECTED_FIELDS: typeof REJECTED_FIELDS = [
  ...REJECTED_FIELDS.filter(([f]) => f !== 'num_local_experts' && f !== 'num_experts'),
  ['num_experts', (v) => !v, "Qwen-MoE's num_experts is not Mixtral's num_local_experts"],
  ['shared_expert_intermediate_size', (v) => !v, 'shared experts are not implemented'],
  ['n_shared_experts', (v) => !v, 'shared experts are not implemented'],
  ['num_shared_experts', (v) => !v, 'shared experts are not implemented'],
  ['norm_topk_prob', (v) => v === true, 'the Mixtral router always renormalises the top-k weights'],
  ['scoring_func', (v) => v === 'softmax', "the Mixtral router scores with 'softmax'"],
  ['topk_method', (v) => v === 'greedy', "the Mixtral router picks the top-k greedily ('greedy')"],
  ['n_group', (v) => v === 1, 'grouped expert routing is not implemented'],
  ['topk_group', (v) => v === 1, 'grouped expert routing is not implemented'],
  ['routed_scaling_factor', (v) => v === 1, 'scaled routing weights are not implemented'],
  ['first_k_dense_replace', (v) => v === 0, 'dense layers before the sparse ones are not implemented'],
  ['decoder_sparse_step', (v) => v === 1, 'a sparse block in every layer only (decoder_sparse_step 1)'],
  ['mlp_only_layers', (v) => Array.isArray(v) && v.length === 0, 'dense layers between sparse ones are not implemented'],
  ['moe_layer_freq', (v) => v === 1, 'a sparse block in every layer only'],
  ['router_bias', (v) => v === false, 'a router without bias only'],
];

/**
 * Checks a `MixtralForCausalLM` `config.json` (transformers' `configuration_mixtral.py` defaults:
 * num_local_experts 8, num_experts_per_tok 2, sliding_window None). The router is Mixtral's: softmax over the
 * experts in float32, top-k, weights renormalised to sum to 1. `router_jitter_noise` only acts in training
 * (transformers applies it when `self.training`), `output_router_logits` / `router_aux_loss_coef` only to the
 * loss: all three are accepted and ignored.
 *
 * @throws TpkitError `UNSUPPORTED` naming the field for another architecture, shared experts
 *   (`shared_expert_intermediate_size`, `n_shared_experts`), other routers (`norm_topk_prob` false,
 *   `scoring_func`, `topk_method`, `n_group`, `routed_scaling_factor`), dense layers between sparse ones, and
 *   everything {@link parseLlamaConfig} rejects; `CHECKPOINT_INVALID` naming the field for a malformed value
 *   (e.g. num_experts_per_tok above num_local_experts)
 */
export function parseMixtralConfig(json: unknown): MixtralConfig {
  const base = parseDecoder(json, ['MixtralForCausalLM'], MIXTRAL_REJECTED_FIELDS, ' (the Llama family: parseLlamaConfig)');
  const c = json as Json;
  if (c['attention_bias'] === true) throw unsupported('attention_bias', true, 'Mixtral attention has no biases');
  const numLocalExperts = posInt(c, 'num_local_experts', 8);
  const numExpertsPerTok = posInt(c, 'num_experts_per_tok', 2);
  if (numExpertsPerTok > numLocalExperts) {
    throw invalid('num_experts_per_tok', `at most num_local_experts ${numLocalExperts}`, numExpertsPerTok);
  }
  return { ...base, architecture: 'MixtralForCausalLM', qkvBias: false, oProjBias: false, mlpBias: false, numLocalExperts, numExpertsPerTok };
}

/** What {@link ropeInvFreq} returns: the inputs of `rotaryEmbedding`. */
export interface RopeFrequencies {
  /** `headDim / 2` inverse frequencies (radians per position). */
  invFreq: Float32Array;
  /** Factor applied to cos and sin (1 for the implemented types). */
  attentionScaling: number;
}

/**
 * The inverse frequencies of the rotary embedding, `headDim / 2` float32 values, and the factor cos/sin are
 * scaled by (transformers' `_compute_default_rope_parameters` and `_compute_llama3_parameters` in
 * `modeling_rope_utils.py`): inv_freq[i] = θ^(−2i/d); `llama3` divides the low frequencies (wavelength above original / low_freq_factor) by
 * `factor`, keeps the high ones (wavelength below original / high_freq_factor) and interpolates between.
 * Computed in float64 and rounded once to float32.
 */
export function ropeInvFreq(rope: RopeConfig, headDim: number): RopeFrequencies {
  const half = headDim / 2;
  const invFreq = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    let f = 1 / Math.pow(rope.theta, (2 * i) / headDim);
    if (rope.ropeType === 'llama3') {
      const lowWavelen = rope.originalMaxPositionEmbeddings / rope.lowFreqFactor;
      const highWavelen = rope.originalMaxPositionEmbeddings / rope.highFreqFactor;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowWavelen) f /= rope.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (rope.originalMaxPositionEmbeddings / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor);
        f = (1 - smooth) * (f / rope.factor) + smooth * f;
      }
    }
    invFreq[i] = f;
  }
  return { invFreq, attentionScaling: 1 };
}
