/**
 * Built-in model shapes for `tpkit plan --model NAME`: the Hugging Face `config.json` objects of well-known
 * Llama-family checkpoints, with their published sizes (copied from each model's `config.json` on the
 * Hugging Face Hub), so a layout can be planned before anything is downloaded. They go through
 * {@link parseLlamaConfig} like a real `config.json`.
 *
 * @module
 */
import { LlamaConfig, parseLlamaConfig, parseMixtralConfig } from '../models/config';

/** A `config.json` of the Llama family or Mixtral, through the parser of its architecture. */
export function parseDecoderConfig(json: unknown): LlamaConfig {
  const archs = (json as { architectures?: unknown } | null)?.architectures;
  return Array.isArray(archs) && archs[0] === 'MixtralForCausalLM' ? parseMixtralConfig(json) : parseLlamaConfig(json);
}

const llama3Rope = { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };

function llama(hidden: number, inter: number, layers: number, heads: number, kv: number, vocab: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kv,
    vocab_size: vocab,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    tie_word_embeddings: false,
    ...extra,
  };
}

/**
 * Hugging Face `config.json` contents by short name (the Hub repository in the comment). Sizes: hidden,
 * intermediate, layers, query heads, kv heads, vocabulary.
 */
export const BUILTIN_MODELS: Readonly<Record<string, Readonly<Record<string, unknown>>>> = Object.freeze({
  /** meta-llama/Meta-Llama-3-8B */
  'llama-3-8b': llama(4096, 14336, 32, 32, 8, 128256, { rope_theta: 500000, max_position_embeddings: 8192 }),
  /** meta-llama/Meta-Llama-3-70B */
  'llama-3-70b': llama(8192, 28672, 80, 64, 8, 128256, { rope_theta: 500000, max_position_embeddings: 8192 }),
  /** meta-llama/Llama-3.1-8B */
  'llama-3.1-8b': llama(4096, 14336, 32, 32, 8, 128256, { rope_theta: 500000, max_position_embeddings: 131072, rope_scaling: llama3Rope }),
  /** meta-llama/Llama-3.1-70B */
  'llama-3.1-70b': llama(8192, 28672, 80, 64, 8, 128256, { rope_theta: 500000, max_position_embeddings: 131072, rope_scaling: llama3Rope }),
  /** meta-llama/Llama-3.1-405B */
  'llama-3.1-405b': llama(16384, 53248, 126, 128, 8, 128256, { rope_theta: 500000, max_position_embeddings: 131072, rope_scaling: llama3Rope }),
  /** meta-llama/Llama-2-7b-hf (multi-head attention: 32 kv heads) */
  'llama-2-7b': llama(4096, 11008, 32, 32, 32, 32000, { max_position_embeddings: 4096 }),
  /** meta-llama/Llama-2-70b-hf */
  'llama-2-70b': llama(8192, 28672, 80, 64, 8, 32000, { max_position_embeddings: 4096 }),
  /** mistralai/Mistral-7B-v0.3 (no sliding window) */
  'mistral-7b': {
    architectures: ['MistralForCausalLM'], model_type: 'mistral', hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
    num_attention_heads: 32, num_key_value_heads: 8, head_dim: 128, vocab_size: 32768, hidden_act: 'silu', rms_norm_eps: 1e-5,
    rope_theta: 1000000.0, max_position_embeddings: 32768, sliding_window: null, tie_word_embeddings: false,
  },
  /** mistralai/Mixtral-8x7B-v0.1 (8 experts, top-2) */
  'mixtral-8x7b': {
    architectures: ['MixtralForCausalLM'], model_type: 'mixtral', hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
    num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 32000, hidden_act: 'silu', rms_norm_eps: 1e-5, rope_theta: 1000000.0,
    max_position_embeddings: 32768, sliding_window: null, tie_word_embeddings: false, num_local_experts: 8, num_experts_per_tok: 2,
    router_aux_loss_coef: 0.02,
  },
  /** Qwen/Qwen2-7B (q/k/v biases; 28 heads, 4 kv heads) */
  'qwen2-7b': {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28,
    num_attention_heads: 28, num_key_value_heads: 4, vocab_size: 152064, hidden_act: 'silu', rms_norm_eps: 1e-6,
    rope_theta: 1000000.0, max_position_embeddings: 131072, use_sliding_window: false, sliding_window: 131072, tie_word_embeddings: false,
  },
});

/**
 * The checked configuration of a built-in model.
 *
 * @param name - a key of {@link BUILTIN_MODELS}
 * @throws RangeError naming the known models for any other name
 */
export function builtinModelConfig(name: string): LlamaConfig {
  const c = Object.prototype.hasOwnProperty.call(BUILTIN_MODELS, name) ? BUILTIN_MODELS[name] : undefined;
  if (!c) throw new RangeError(`Expected one of ${Object.keys(BUILTIN_MODELS).join(', ')} for --model but received ${JSON.stringify(name)}`);
  return parseDecoderConfig(c);
}
