/**
 * The main job's model: a seeded random checkpoint in the Hugging Face layout (`config.json`, sharded
 * bfloat16 `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`), written once into a cache
 * folder (`.checkpoints/<name>/` under the current directory, as examples/llama-layer does) and reused.
 *
 * Shapes are Meta Llama 3 8B's `config.json` (hidden 4096, 32 heads, 8 kv heads, intermediate 14336, vocab
 * 128256, rope_theta 500000, llama3 rope scaling factor 8 / low 1 / high 4 / original 8192, rms_norm_eps 1e-5,
 * untied embeddings, eos 128001) with fewer decoder layers, so that it runs on a small machine.
 *
 * Weights are uniform in ±a: linear layers a = 1/√fan_in (PyTorch's `nn.Linear` init), so each layer's
 * contribution to the residual stream is a fraction of the embedding's; embeddings a = 1 (an RMS of 0.58);
 * lm_head a = 4/√hidden, which puts the logits' standard deviation near 2.3 after the final RMSNorm (logits
 * spread enough that greedy decoding follows the context instead of repeating one token); norm weights
 * 1 ± 0.1. Values come from one seeded mulberry32 stream in module order, truncated to bfloat16.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { writeSafetensors, type RawTensor } from '../../lib/checkpoint/safetensors';

/** The fields of the written `config.json` that vary between the main job's models. */
export interface RandomModelSpec {
  /** Folder name under the cache directory. */
  name: string;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  vocabSize: number;
  numLayers: number;
  /** Safetensors shards (at least 2). */
  shards: number;
  /** eos_token_id. */
  eosTokenId: number;
}

/** Llama-3-8B's shapes with `numLayers` decoder layers. */
export function llama3Spec(numLayers: number): RandomModelSpec {
  return {
    name: `llama-3-8b-random-${numLayers}-layers`,
    hiddenSize: 4096,
    numHeads: 32,
    numKvHeads: 8,
    intermediateSize: 14336,
    vocabSize: 128256,
    numLayers,
    shards: numLayers + 2,
    eosTokenId: 128001,
  };
}

/** A tiny model of the same family (tests, `--tiny`): 2 layers, hidden 64, vocab 512. */
export const TINY_SPEC: RandomModelSpec = {
  name: 'llama-tiny-random',
  hiddenSize: 64,
  numHeads: 8,
  numKvHeads: 2,
  intermediateSize: 128,
  vocabSize: 512,
  numLayers: 2,
  shards: 3,
  eosTokenId: 511,
};

/** config.json of the model, as transformers' `LlamaConfig.to_dict()` names the fields. */
export function configJson(s: RandomModelSpec): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: s.hiddenSize,
    intermediate_size: s.intermediateSize,
    num_hidden_layers: s.numLayers,
    num_attention_heads: s.numHeads,
    num_key_value_heads: s.numKvHeads,
    head_dim: s.hiddenSize / s.numHeads,
    hidden_act: 'silu',
    max_position_embeddings: 131072,
    vocab_size: s.vocabSize,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    tie_word_embeddings: false,
    bos_token_id: 128000 % s.vocabSize,
    eos_token_id: s.eosTokenId,
    torch_dtype: 'bfloat16',
  };
}

/** The tensors of the model in module order: name, shape, uniform amplitude (norms: 1 ± amplitude). */
export function tensorList(s: RandomModelSpec): { name: string; shape: number[]; amplitude: number; norm: boolean }[] {
  const h = s.hiddenSize;
  const hd = h / s.numHeads;
  const lin = (name: string, out: number, inp: number) => ({ name, shape: [out, inp], amplitude: 1 / Math.sqrt(inp), norm: false });
  const list = [{ name: 'model.embed_tokens.weight', shape: [s.vocabSize, h], amplitude: 1, norm: false }];
  for (let i = 0; i < s.numLayers; i++) {
    const p = `model.layers.${i}.`;
    list.push(
      { name: `${p}input_layernorm.weight`, shape: [h], amplitude: 0.1, norm: true },
      lin(`${p}self_attn.q_proj.weight`, s.numHeads * hd, h),
      lin(`${p}self_attn.k_proj.weight`, s.numKvHeads * hd, h),
      lin(`${p}self_attn.v_proj.weight`, s.numKvHeads * hd, h),
      lin(`${p}self_attn.o_proj.weight`, h, s.numHeads * hd),
      { name: `${p}post_attention_layernorm.weight`, shape: [h], amplitude: 0.1, norm: true },
      lin(`${p}mlp.gate_proj.weight`, s.intermediateSize, h),
      lin(`${p}mlp.up_proj.weight`, s.intermediateSize, h),
      lin(`${p}mlp.down_proj.weight`, h, s.intermediateSize),
    );
  }
  list.push({ name: 'model.norm.weight', shape: [h], amplitude: 0.1, norm: true });
  list.push({ name: 'lm_head.weight', shape: [s.vocabSize, h], amplitude: 4 / Math.sqrt(h), norm: false });
  return list;
}

const MARKER = 'tpkit-random-checkpoint.json';
/** Changes whenever the values written for a (spec, seed) change, so that an old cache is rewritten. */
const GENERATOR = 'tpkit examples/llama-generate: mulberry32, bfloat16 by truncation (2)';
const pad5 = (n: number): string => String(n).padStart(5, '0');

/** Whether `dir` holds a complete checkpoint of `spec` written with `seed` (the marker is written last). */
export function isComplete(dir: string, spec: RandomModelSpec, seed: number): boolean {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(dir, MARKER), 'utf8')) as { spec: RandomModelSpec; seed: number; files: string[]; generator: string };
    return m.generator === GENERATOR && JSON.stringify(m.spec) === JSON.stringify(spec) && m.seed === seed && m.files.every((f) => fs.existsSync(path.join(dir, f)));
  } catch {
    return false;
  }
}

/**
 * A seeded stream of uniform values: mulberry32 (Tommy Ettinger, public domain; period 2³², enough for the
 * 1.5 G values of the 2-layer model without repeating), each draw truncated to bfloat16 bits (the upper 16
 * bits of the float32).
 */
class Mulberry {
  #a: number;
  constructor(seed: number) {
    this.#a = (seed ^ 0x2545f491) >>> 0;
  }
  /** `n` bfloat16 bit patterns of uniform values in [−a, a), plus `offset` (1 for norm weights). */
  bits(n: number, amplitude: number, offset: number): Uint16Array {
    const out = new Uint16Array(n);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    let a = this.#a;
    const scale = (2 * amplitude) / 4294967296;
    for (let i = 0; i < n; i++) {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      f[0] = ((t ^ (t >>> 14)) >>> 0) * scale - amplitude + offset;
      out[i] = u[0]! >>> 16;
    }
    this.#a = a;
    return out;
  }
}

/**
 * Writes the checkpoint of `spec` into `dir`: the tensors of {@link tensorList}, whole, in module order,
 * cut into `spec.shards` files of about equal size (the embedding alone in the first, the LM head with the
 * final norm in the last), then `model.safetensors.index.json`, `config.json` and the completion marker.
 * Each shard is generated, written and released before the next (peak memory: the largest shard).
 *
 * @param progress - called after each shard with the fraction of bytes written and the file's name
 */
export async function writeRandomModel(dir: string, spec: RandomModelSpec, seed: number, progress: (f: number, what: string) => void): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  fs.rmSync(path.join(dir, MARKER), { force: true });
  const list = tensorList(spec);
  const bytes = list.map((t) => t.shape.reduce((a, b) => a * b, 1) * 2);
  const total = bytes.reduce((a, b) => a + b, 0);
  // Shard k holds the tensors whose start falls in [k, k+1) · total / shards; the first always the embedding alone.
  const groups: number[][] = Array.from({ length: spec.shards }, () => []);
  let acc = 0;
  list.forEach((_, i) => {
    const k = i === 0 ? 0 : Math.max(1, Math.min(spec.shards - 1, Math.floor((acc * spec.shards) / total)));
    groups[k]!.push(i);
    acc += bytes[i]!;
  });
  if (groups[spec.shards - 1]!.length === 0) groups[spec.shards - 1]!.push(groups[spec.shards - 2]!.pop()!);
  const nonEmpty = groups.filter((g) => g.length > 0);
  const rng = new Mulberry(seed);
  const weightMap: Record<string, string> = {};
  const files: string[] = [];
  let written = 0;
  for (const [k, g] of nonEmpty.entries()) {
    const file = `model-${pad5(k + 1)}-of-${pad5(nonEmpty.length)}.safetensors`;
    const part: Record<string, RawTensor> = {};
    for (const i of g) {
      const t = list[i]!;
      part[t.name] = { dtype: 'bfloat16', shape: t.shape, data: rng.bits(bytes[i]! / 2, t.amplitude, t.norm ? 1 : 0) };
      weightMap[t.name] = file;
      written += bytes[i]!;
    }
    await writeSafetensors(path.join(dir, file), part, { format: 'pt' });
    files.push(file);
    progress(written / total, file);
  }
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(configJson(spec), null, 2)}\n`);
  files.push('model.safetensors.index.json', 'config.json');
  fs.writeFileSync(path.join(dir, MARKER), `${JSON.stringify({ spec, seed, files, generator: GENERATOR }, null, 2)}\n`);
}
