/**
 * An independent float64 reference of transformers' Mixtral (`models/mixtral/modeling_mixtral.py`), plain loops
 * over Float64Array with no tpkit code, for tests of lib/layers/moe.ts and lib/models/mixtral.ts.
 *
 * - {@link referenceMoE}: `MixtralSparseMoeBlock` — router logits `x·W_gᵀ`, softmax over the experts, top-k
 *   (ties: lower index first), weights divided by their sum, expert `w2(silu(w1 x) * w3 x)`, weighted sum;
 *   written as a loop over tokens and their top-k experts (the dense definition, not a permutation).
 * - {@link referenceMixtralForward}: the decoder of llama_reference.ts (embedding, RMSNorm, RoPE rotate-half
 *   via `referenceRotate`, causal GQA attention, no biases, no sliding window) with the MoE block in place of
 *   the MLP, the final norm and `lm_head`.
 *
 * @module
 */
import { type RefConfig, type RefWeights, referenceInvFreq, referenceRotate } from './llama_reference';

/** One MoE block's weights, float64, PyTorch layout: gate `[E, H]`, w1 / w3 `[E][I, H]`, w2 `[E][H, I]`. */
export interface RefMoEWeights {
  gate: Float64Array;
  w1: Float64Array[];
  w2: Float64Array[];
  w3: Float64Array[];
}

function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

/** The top-k experts of one token's router logits and their renormalised softmax weights. */
export function referenceRoute(logits: ArrayLike<number>, k: number): { experts: number[]; weights: number[] } {
  const E = logits.length;
  let max = -Infinity;
  for (let e = 0; e < E; e++) max = Math.max(max, logits[e]!);
  const p = Array.from({ length: E }, (_, e) => Math.exp(logits[e]! - max));
  const s = p.reduce((a, b) => a + b, 0);
  const probs = p.map((v) => v / s);
  const idx = Array.from({ length: E }, (_, e) => e).sort((a, b) => probs[b]! - probs[a]! || a - b).slice(0, k);
  const top = idx.reduce((a, e) => a + probs[e]!, 0);
  return { experts: idx, weights: idx.map((e) => probs[e]! / top) };
}

/**
 * The MoE block over x `[T, H]` (row-major), float64. Also returns the tokens routed to each expert.
 */
export function referenceMoE(x: ArrayLike<number>, T: number, H: number, I: number, E: number, k: number, w: RefMoEWeights): { out: Float64Array; tokensPerExpert: number[] } {
  const out = new Float64Array(T * H);
  const tokensPerExpert = new Array<number>(E).fill(0);
  const logits = new Float64Array(E);
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let h = 0; h < H; h++) s += w.gate[e * H + h]! * x[t * H + h]!;
      logits[e] = s;
    }
    const { experts, weights } = referenceRoute(logits, k);
    experts.forEach((e, j) => {
      tokensPerExpert[e]!++;
      const act = new Float64Array(I);
      for (let i = 0; i < I; i++) {
        let g = 0;
        let u = 0;
        for (let h = 0; h < H; h++) {
          g += w.w1[e]![i * H + h]! * x[t * H + h]!;
          u += w.w3[e]![i * H + h]! * x[t * H + h]!;
        }
        act[i] = silu(g) * u;
      }
      for (let h = 0; h < H; h++) {
        let y = 0;
        for (let i = 0; i < I; i++) y += w.w2[e]![h * I + i]! * act[i]!;
        out[t * H + h] = out[t * H + h]! + weights[j]! * y;
      }
    });
  }
  return { out, tokensPerExpert };
}

function get(weights: RefWeights, name: string): Float64Array {
  const w = weights.get(name);
  if (!w) throw new Error(`reference: missing weight ${name}`);
  return w.data;
}

function rms(x: Float64Array, T: number, H: number, weight: Float64Array, eps: number): Float64Array {
  const out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let h = 0; h < H; h++) s += x[t * H + h]! ** 2;
    const r = 1 / Math.sqrt(s / H + eps);
    for (let h = 0; h < H; h++) out[t * H + h] = weight[h]! * (x[t * H + h]! * r);
  }
  return out;
}

function lin(x: Float64Array, T: number, inF: number, w: Float64Array, outF: number): Float64Array {
  const out = new Float64Array(T * outF);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += x[t * inF + i]! * w[o * inF + i]!;
      out[t * outF + o] = s;
    }
  }
  return out;
}

/** Reads layer `l`'s MoE weights from a Mixtral checkpoint's weight map. */
export function moeWeightsOf(weights: RefWeights, l: number, E: number): RefMoEWeights {
  const p = `model.layers.${l}.block_sparse_moe.`;
  return {
    gate: get(weights, `${p}gate.weight`),
    w1: Array.from({ length: E }, (_, e) => get(weights, `${p}experts.${e}.w1.weight`)),
    w2: Array.from({ length: E }, (_, e) => get(weights, `${p}experts.${e}.w2.weight`)),
    w3: Array.from({ length: E }, (_, e) => get(weights, `${p}experts.${e}.w3.weight`)),
  };
}

/** Logits `[T, vocab]` (row-major, float64) of every position of `ids` under a Mixtral config and weights. */
export function referenceMixtralForward(config: RefConfig, weights: RefWeights, ids: number[]): Float64Array {
  const H = config.hidden_size;
  const I = config.intermediate_size;
  const heads = config.num_attention_heads;
  const kvHeads = config.num_key_value_heads ?? heads;
  const hd = config.head_dim ?? H / heads;
  const V = config.vocab_size;
  const E = (config.num_local_experts as number | undefined) ?? 8;
  const k = (config.num_experts_per_tok as number | undefined) ?? 2;
  const eps = config.rms_norm_eps ?? 1e-5;
  const T = ids.length;
  const { invFreq, attentionScaling } = referenceInvFreq(config);
  const emb = get(weights, 'model.embed_tokens.weight');
  let x: Float64Array = new Float64Array(T * H);
  ids.forEach((id, t) => x.set(emb.subarray(id * H, (id + 1) * H), t * H));
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const h = rms(x, T, H, get(weights, `${p}input_layernorm.weight`), eps);
    const q = lin(h, T, H, get(weights, `${p}self_attn.q_proj.weight`), heads * hd);
    const kk = lin(h, T, H, get(weights, `${p}self_attn.k_proj.weight`), kvHeads * hd);
    const v = lin(h, T, H, get(weights, `${p}self_attn.v_proj.weight`), kvHeads * hd);
    for (let t = 0; t < T; t++) {
      for (let a = 0; a < heads; a++) q.set(referenceRotate(q.subarray((t * heads + a) * hd, (t * heads + a + 1) * hd), t, invFreq, attentionScaling), (t * heads + a) * hd);
      for (let a = 0; a < kvHeads; a++) kk.set(referenceRotate(kk.subarray((t * kvHeads + a) * hd, (t * kvHeads + a + 1) * hd), t, invFreq, attentionScaling), (t * kvHeads + a) * hd);
    }
    const attn = new Float64Array(T * heads * hd);
    const group = heads / kvHeads;
    for (let a = 0; a < heads; a++) {
      const kv = Math.floor(a / group);
      for (let i = 0; i < T; i++) {
        const scores: number[] = [];
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[(i * heads + a) * hd + d]! * kk[(j * kvHeads + kv) * hd + d]!;
          scores.push(s / Math.sqrt(hd));
        }
        const m = Math.max(...scores);
        const ex = scores.map((s) => Math.exp(s - m));
        const sum = ex.reduce((u, w) => u + w, 0);
        for (let d = 0; d < hd; d++) {
          let o = 0;
          for (let j = 0; j <= i; j++) o += (ex[j]! / sum) * v[(j * kvHeads + kv) * hd + d]!;
          attn[(i * heads + a) * hd + d] = o;
        }
      }
    }
    const o = lin(attn, T, heads * hd, get(weights, `${p}self_attn.o_proj.weight`), H);
    for (let i = 0; i < T * H; i++) x[i] = x[i]! + o[i]!;
    const h2 = rms(x, T, H, get(weights, `${p}post_attention_layernorm.weight`), eps);
    const { out } = referenceMoE(h2, T, H, I, E, k, moeWeightsOf(weights, l, E));
    for (let i = 0; i < T * H; i++) x[i] = x[i]! + out[i]!;
  }
  x = rms(x, T, H, get(weights, 'model.norm.weight'), eps);
  const head = config.tie_word_embeddings ? emb : get(weights, 'lm_head.weight');
  return lin(x, T, H, head, V);
}
