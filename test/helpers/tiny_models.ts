/**
 * Writes small random Llama-family checkpoints in the Hugging Face layout (`config.json` plus
 * `model.safetensors`, or `model-0000k-of-0000n.safetensors` shards with `model.safetensors.index.json`),
 * for tests that load a whole model and compare it with {@link referenceForward}.
 *
 * @module
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import { type RawTensor, writeSafetensors } from '../../lib/checkpoint/safetensors';
import { bitsToFloat, floatToBits } from '../../lib/backend/cpu';
import { type RefConfig, type RefWeights, referenceWeightShapes } from './llama_reference';

/** What {@link writeTinyModel} writes; every field has a small default. */
export interface TinyModelSpec {
  /** `architectures[0]`; default `LlamaForCausalLM`. */
  arch?: 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM';
  /** default 32 */
  hiddenSize?: number;
  /** default 64 */
  intermediateSize?: number;
  /** default 2 */
  numLayers?: number;
  /** default 4 */
  numHeads?: number;
  /** default 2 */
  numKvHeads?: number;
  /** written as `head_dim` only when given (else transformers derives hidden / heads) */
  headDim?: number;
  /** default 97 */
  vocabSize?: number;
  /** default false; when true no `lm_head.weight` is written */
  tieWordEmbeddings?: boolean;
  /** default 10000 */
  ropeTheta?: number;
  /** written as `rope_scaling` (or merged into `rope_parameters`); default null */
  ropeScaling?: object | null;
  /** write `rope_parameters: { rope_type, rope_theta, …scaling }` instead of top-level `rope_theta` / `rope_scaling` */
  ropeInParameters?: boolean;
  /** Llama `attention_bias` (q, k, v and o_proj biases); ignored for Mistral/Qwen2 */
  attentionBias?: boolean;
  /** storage dtype; default F32 */
  dtype?: 'F32' | 'F16' | 'BF16';
  /** 1 (default) = `model.safetensors`; n > 1 = n shards + index */
  shards?: number;
  /** PRNG seed; default 1 */
  seed?: number;
  /** merged over the generated config last (e.g. `{ mlp_bias: true }`, `{ rms_norm_eps: 1e-6 }`) */
  extraConfig?: Record<string, unknown>;
  /** written as `eos_token_id` */
  eosTokenId?: number | number[];
  /** multiplies every random weight's magnitude; default 1 */
  scale?: number;
}

/** mulberry32: a 32-bit seeded PRNG, uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples by Box–Muller over `uniform`. */
function normals(uniform: () => number): () => number {
  return () => {
    const u1 = 1 - uniform(); // (0, 1]
    const u2 = uniform();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
}

const FILE_DTYPE = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' } as const;
const MODEL_TYPE = { LlamaForCausalLM: 'llama', MistralForCausalLM: 'mistral', Qwen2ForCausalLM: 'qwen2' } as const;
const TORCH_DTYPE = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' } as const;

/** Subnormal values of each storage type, planted into one tensor so exact widening is exercised. */
const SUBNORMALS = {
  F32: [1e-40, -3e-42, 1.4e-45],
  F16: [1e-6, -3e-7, 5.9604644775390625e-8], // float16 subnormals: below 2^-14 ≈ 6.1e-5; the last is 2^-24
  BF16: [1e-39, -5e-40, 9.2e-41], // bfloat16 subnormals: below 2^-126 ≈ 1.18e-38
} as const;

function pad5(n: number): string {
  return String(n).padStart(5, '0');
}

/**
 * Writes `config.json` and the safetensors weights of a small random model into `dir` (created if needed),
 * named and shaped as transformers' `save_pretrained` writes them for the architecture (see
 * {@link referenceWeightShapes}); with `shards > 1` whole tensors are split across
 * `model-0000k-of-0000n.safetensors` in module order, with `model.safetensors.index.json`
 * (`{ metadata: { total_size }, weight_map: { name: file } }`).
 *
 * Weights are seeded and deterministic: linear weights normal with std `scale / sqrt(in_features)`,
 * embeddings std `scale`, `lm_head` std `3 * scale / sqrt(hidden)` (logits of a few units), biases std
 * `0.1 * scale`, norm weights `1 + 0.1 * normal` (tied models: embeddings std `scale / sqrt(hidden)`,
 * o_proj / down_proj doubled, so that greedy decoding does not just echo the last token); three elements of `model.layers.0.self_attn.q_proj.weight`
 * are set to subnormals of the storage dtype.
 *
 * @returns the config as written (parsed back from the JSON) and the weights as stored (after rounding to
 *   F16 / BF16), widened exactly to float64 — the inputs for {@link referenceForward}
 */
export async function writeTinyModel(dir: string, spec: TinyModelSpec): Promise<{ config: RefConfig; weights: RefWeights }> {
  const arch = spec.arch ?? 'LlamaForCausalLM';
  const dtype = spec.dtype ?? 'F32';
  const hidden = spec.hiddenSize ?? 32;
  const heads = spec.numHeads ?? 4;
  const ropeTheta = spec.ropeTheta ?? 10000;
  const ropeScaling = spec.ropeScaling ?? null;
  const tie = spec.tieWordEmbeddings ?? false;
  const scale = spec.scale ?? 1;

  const cfg: Record<string, unknown> = {
    architectures: [arch],
    model_type: MODEL_TYPE[arch],
    hidden_size: hidden,
    intermediate_size: spec.intermediateSize ?? 64,
    num_hidden_layers: spec.numLayers ?? 2,
    num_attention_heads: heads,
    num_key_value_heads: spec.numKvHeads ?? 2,
    vocab_size: spec.vocabSize ?? 97,
    hidden_act: 'silu',
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: tie,
    torch_dtype: TORCH_DTYPE[dtype],
    bos_token_id: 1,
  };
  if (spec.headDim !== undefined) cfg.head_dim = spec.headDim;
  if (spec.ropeInParameters) {
    const rp: Record<string, unknown> = { rope_type: 'default', ...(ropeScaling ?? {}), rope_theta: ropeTheta };
    cfg.rope_parameters = rp;
  } else {
    cfg.rope_theta = ropeTheta;
    cfg.rope_scaling = ropeScaling;
  }
  if (arch === 'LlamaForCausalLM') {
    cfg.attention_bias = spec.attentionBias ?? false;
    cfg.mlp_bias = false;
  } else if (arch === 'MistralForCausalLM') {
    cfg.sliding_window = null;
  } else {
    // as real Qwen2 checkpoints ship it: a window that use_sliding_window=false switches off
    cfg.use_sliding_window = false;
    cfg.sliding_window = 32768;
    cfg.max_window_layers = cfg.num_hidden_layers;
  }
  if (spec.eosTokenId !== undefined) cfg.eos_token_id = spec.eosTokenId;
  Object.assign(cfg, spec.extraConfig ?? {});
  const config = JSON.parse(JSON.stringify(cfg)) as RefConfig;

  const shapes = referenceWeightShapes(config);
  const tied = config.tie_word_embeddings === true; // after extraConfig
  const randn = normals(mulberry32(spec.seed ?? 1));
  const raw = new Map<string, RawTensor>();
  const weights: RefWeights = new Map();
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(n);
    const isNorm = name.endsWith('norm.weight');
    // A tied table doubles as lm_head, so each token's own embedding (still in the residual stream) would
    // dominate its logits and greedy decoding would echo the last token: keep the table small (std
    // 1/sqrt(hidden)) and double what the layers add to the residual (o_proj, down_proj).
    const std = name === 'model.embed_tokens.weight' ? (tied ? scale / Math.sqrt(hidden) : scale)
      : name === 'lm_head.weight' ? (3 * scale) / Math.sqrt(hidden)
        : name.endsWith('.bias') ? 0.1 * scale
          : ((tied && /(o_proj|down_proj)\.weight$/.test(name) ? 2 : 1) * scale) / Math.sqrt(shape[1]!);
    for (let i = 0; i < n; i++) values[i] = isNorm ? 1 + 0.1 * randn() : std * randn();
    if (name === 'model.layers.0.self_attn.q_proj.weight') {
      SUBNORMALS[dtype].forEach((s, j) => { values[(j * 7 + 3) % n] = s; });
    }
    let stored: Float32Array;
    if (dtype === 'F32') {
      raw.set(name, { dtype: 'float32', shape, data: values });
      stored = values;
    } else {
      const bits = floatToBits(values, FILE_DTYPE[dtype] as 'float16' | 'bfloat16');
      raw.set(name, { dtype: FILE_DTYPE[dtype], shape, data: bits });
      stored = bitsToFloat(bits, FILE_DTYPE[dtype] as 'float16' | 'bfloat16');
    }
    weights.set(name, { shape: shape.slice(), data: Float64Array.from(stored) });
  }

  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(join(dir, 'config.json'), `${JSON.stringify(cfg, null, 2)}\n`);
  const shards = spec.shards ?? 1;
  const names = [...raw.keys()];
  if (!Number.isInteger(shards) || shards < 1 || shards > names.length) {
    throw new RangeError(`writeTinyModel: shards must be an integer in [1, ${names.length}], got ${shards}`);
  }
  const metadata = { format: 'pt' };
  if (shards === 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), Object.fromEntries(raw), metadata);
  } else {
    // whole tensors per shard, in module order, cut at (about) equal byte counts; never an empty shard
    const bytes = names.map((nm) => raw.get(nm)!.data.byteLength);
    const total = bytes.reduce((a, b) => a + b, 0);
    const groups: string[][] = Array.from({ length: shards }, () => []);
    let acc = 0;
    let g = 0;
    names.forEach((nm, i) => {
      const target = Math.min(shards - 1, Math.floor((acc * shards) / total));
      const mustMove = names.length - i <= shards - 1 - g; // just enough tensors left for the empty shards
      if (groups[g]!.length > 0 && (target > g || mustMove)) g++;
      groups[g]!.push(nm);
      acc += bytes[i]!;
    });
    const weightMap: Record<string, string> = {};
    for (let k = 0; k < shards; k++) {
      const file = `model-${pad5(k + 1)}-of-${pad5(shards)}.safetensors`;
      const part: Record<string, RawTensor> = {};
      for (const nm of groups[k]!) {
        part[nm] = raw.get(nm)!;
        weightMap[nm] = file;
      }
      await writeSafetensors(join(dir, file), part, metadata);
    }
    const index = { metadata: { total_size: total }, weight_map: weightMap };
    await fsp.writeFile(join(dir, 'model.safetensors.index.json'), `${JSON.stringify(index, null, 2)}\n`);
  }
  return { config, weights };
}
