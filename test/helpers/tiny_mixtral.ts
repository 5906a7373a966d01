/**
 * Writes small random Mixtral checkpoints (`MixtralForCausalLM`, transformers' `save_pretrained` names and
 * shapes) for tests: the decoder tensors of tiny_models.ts's Llama checkpoints without MLPs, and per layer
 * `block_sparse_moe.gate.weight` `[E, H]` and `block_sparse_moe.experts.N.{w1,w3}.weight` `[I, H]`,
 * `...w2.weight` `[H, I]`.
 *
 * @module
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import { type RawTensor, writeSafetensors } from '../../lib/checkpoint/safetensors';
import type { RefConfig, RefWeights } from './llama_reference';

/** Sizes of a tiny Mixtral (defaults in brackets). */
export interface TinyMixtralSpec {
  /** [32] */ hiddenSize?: number;
  /** [64] */ intermediateSize?: number;
  /** [2] */ numLayers?: number;
  /** [4] */ numHeads?: number;
  /** [2] */ numKvHeads?: number;
  /** [97] */ vocabSize?: number;
  /** num_local_experts [4] */ numExperts?: number;
  /** num_experts_per_tok [2] */ topK?: number;
  /** [1] */ seed?: number;
  /** 1 (default) = model.safetensors; 2 = two files, the second holding the experts of the upper half */
  shards?: 1 | 2;
  /** merged over the config last */
  extraConfig?: Record<string, unknown>;
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

/** The tensors of a Mixtral checkpoint and their shapes, in module order. */
export function mixtralWeightShapes(c: RefConfig): Map<string, number[]> {
  const H = c.hidden_size;
  const I = c.intermediate_size;
  const heads = c.num_attention_heads;
  const kv = c.num_key_value_heads ?? heads;
  const hd = c.head_dim ?? H / heads;
  const E = c.num_local_experts as number;
  const m = new Map<string, number[]>();
  m.set('model.embed_tokens.weight', [c.vocab_size, H]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    m.set(`${p}input_layernorm.weight`, [H]);
    m.set(`${p}self_attn.q_proj.weight`, [heads * hd, H]);
    m.set(`${p}self_attn.k_proj.weight`, [kv * hd, H]);
    m.set(`${p}self_attn.v_proj.weight`, [kv * hd, H]);
    m.set(`${p}self_attn.o_proj.weight`, [H, heads * hd]);
    m.set(`${p}post_attention_layernorm.weight`, [H]);
    m.set(`${p}block_sparse_moe.gate.weight`, [E, H]);
    for (let e = 0; e < E; e++) {
      m.set(`${p}block_sparse_moe.experts.${e}.w1.weight`, [I, H]);
      m.set(`${p}block_sparse_moe.experts.${e}.w2.weight`, [H, I]);
      m.set(`${p}block_sparse_moe.experts.${e}.w3.weight`, [I, H]);
    }
  }
  m.set('model.norm.weight', [H]);
  if (!c.tie_word_embeddings) m.set('lm_head.weight', [c.vocab_size, H]);
  return m;
}

/**
 * Writes config.json and float32 safetensors of a seeded random Mixtral into `dir`: linear weights normal with
 * std 1/sqrt(in), the router 3/sqrt(H) (decisive routing), embeddings std 1, lm_head 3/sqrt(H), norms
 * 1 + 0.1·normal.
 *
 * @returns the config as written and the weights widened to float64 (inputs of referenceMixtralForward)
 */
export async function writeTinyMixtral(dir: string, spec: TinyMixtralSpec = {}): Promise<{ config: RefConfig; weights: RefWeights }> {
  const H = spec.hiddenSize ?? 32;
  const cfg: Record<string, unknown> = {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    hidden_size: H,
    intermediate_size: spec.intermediateSize ?? 64,
    num_hidden_layers: spec.numLayers ?? 2,
    num_attention_heads: spec.numHeads ?? 4,
    num_key_value_heads: spec.numKvHeads ?? 2,
    vocab_size: spec.vocabSize ?? 97,
    hidden_act: 'silu',
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000,
    sliding_window: null,
    tie_word_embeddings: false,
    num_local_experts: spec.numExperts ?? 4,
    num_experts_per_tok: spec.topK ?? 2,
    router_jitter_noise: 0,
    output_router_logits: false,
    router_aux_loss_coef: 0.02,
    torch_dtype: 'float32',
    bos_token_id: 1,
    ...spec.extraConfig,
  };
  const config = JSON.parse(JSON.stringify(cfg)) as RefConfig;
  const randn = rng(spec.seed ?? 1);
  const raw = new Map<string, RawTensor>();
  const weights: RefWeights = new Map();
  for (const [name, shape] of mixtralWeightShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const std = name === 'model.embed_tokens.weight' ? 1
      : name === 'lm_head.weight' || name.endsWith('gate.weight') ? 3 / Math.sqrt(H)
        : 1 / Math.sqrt(shape[1] ?? 1);
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = name.endsWith('norm.weight') ? 1 + 0.1 * randn() : std * randn();
    raw.set(name, { dtype: 'float32', shape, data: v });
    weights.set(name, { shape: shape.slice(), data: Float64Array.from(v) });
  }
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(join(dir, 'config.json'), `${JSON.stringify(cfg, null, 2)}\n`);
  const metadata = { format: 'pt' };
  if ((spec.shards ?? 1) === 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), Object.fromEntries(raw), metadata);
  } else {
    const E = config.num_local_experts as number;
    const upper = (nm: string): boolean => {
      const m = /experts\.(\d+)\./.exec(nm);
      return m !== null && Number(m[1]) >= E / 2;
    };
    const files = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
    const weightMap: Record<string, string> = {};
    const parts: Array<Record<string, RawTensor>> = [{}, {}];
    for (const [nm, t] of raw) {
      const k = upper(nm) ? 1 : 0;
      parts[k]![nm] = t;
      weightMap[nm] = files[k]!;
    }
    for (let k = 0; k < 2; k++) await writeSafetensors(join(dir, files[k]!), parts[k]!, metadata);
    const total = [...raw.values()].reduce((a, t) => a + t.data.byteLength, 0);
    await fsp.writeFile(join(dir, 'model.safetensors.index.json'), `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
  }
  return { config, weights };
}
