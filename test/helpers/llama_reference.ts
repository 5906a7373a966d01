/**
 * An independent float64 reference of Hugging Face transformers' Llama-family causal LMs
 * (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`), written as plain loops over `Float64Array`
 * with no tpkit code, for tests of tpkit's model implementations.
 *
 * What it mirrors (transformers `models/llama/modeling_llama.py`, `models/mistral/modeling_mistral.py`,
 * `models/qwen2/modeling_qwen2.py`, `modeling_rope_utils.py`, the `*Config` defaults):
 *
 * - embedding lookup → `num_hidden_layers` × decoder layer → final RMSNorm → `lm_head` (or the embedding
 *   table when `tie_word_embeddings`);
 * - decoder layer: `x + o_proj(attn(input_layernorm(x)))`, then `x + down(silu(gate(h)) * up(h))` with
 *   `h = post_attention_layernorm(x)`;
 * - RMSNorm `weight * (x * 1/sqrt(mean(x²) + eps))`;
 * - RoPE in the rotate-half layout (`q * cos + rotate_half(q) * sin`, `cos`/`sin` of `cat(freqs, freqs)`),
 *   positions `0..T-1`, `default` and `llama3` inverse frequencies, times `attention_scaling`;
 * - grouped-query attention (`repeat_kv`: query head `h` reads kv head `floor(h / (heads / kv_heads))`),
 *   scores `q·k * head_dim^-0.5`, causal mask (plus the sliding window where the config asks for one:
 *   key `j` is visible from query `i` iff `j <= i && i - j < sliding_window`), softmax, weighted sum of v;
 * - biases: Llama `attention_bias` on q, k, v **and** o_proj, Llama `mlp_bias` on gate/up/down; Qwen2 always
 *   has q/k/v biases and never an o_proj bias; Mistral has none.
 *
 * Everything is float64 (transformers computes the RoPE tables, RMSNorm and softmax in float32 even for a
 * float64 model; those differences are far below any float32 tolerance).
 *
 * @module
 */

/**
 * A parsed Hugging Face `config.json` (HF field names). Only the fields below are read; anything else is
 * carried along untouched.
 */
export interface RefConfig {
  architectures?: string[];
  model_type?: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number | null;
  head_dim?: number | null;
  vocab_size: number;
  hidden_act?: string;
  max_position_embeddings?: number;
  original_max_position_embeddings?: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  rope_scaling?: Record<string, unknown> | null;
  rope_parameters?: Record<string, unknown> | null;
  partial_rotary_factor?: number;
  tie_word_embeddings?: boolean;
  attention_bias?: boolean;
  mlp_bias?: boolean;
  sliding_window?: number | null;
  use_sliding_window?: boolean;
  max_window_layers?: number;
  layer_types?: string[] | null;
  eos_token_id?: number | number[] | null;
  [key: string]: unknown;
}

/** Weights by Hugging Face tensor name (e.g. `model.layers.0.self_attn.q_proj.weight`), row-major float64. */
export type RefWeights = Map<string, { shape: number[]; data: Float64Array }>;

type Family = 'llama' | 'mistral' | 'qwen2';

/** The per-architecture facts of transformers' config classes and modeling code that the reference uses. */
const FAMILIES: Record<Family, { arch: string; maxPositions: number; slidingWindowDefault: number | null }> = {
  // LlamaConfig: max_position_embeddings=2048
  llama: { arch: 'LlamaForCausalLM', maxPositions: 2048, slidingWindowDefault: null },
  // MistralConfig: max_position_embeddings=4096*32, sliding_window=4096 when the key is absent
  mistral: { arch: 'MistralForCausalLM', maxPositions: 4096 * 32, slidingWindowDefault: 4096 },
  // Qwen2Config: max_position_embeddings=32768, sliding_window=4096 (used only with use_sliding_window)
  qwen2: { arch: 'Qwen2ForCausalLM', maxPositions: 32768, slidingWindowDefault: 4096 },
};

function family(config: RefConfig): Family {
  const arch = config.architectures?.[0];
  for (const [f, d] of Object.entries(FAMILIES) as [Family, (typeof FAMILIES)[Family]][]) {
    if (arch === d.arch) return f;
  }
  if (arch === undefined && config.model_type !== undefined && config.model_type in FAMILIES) {
    return config.model_type as Family;
  }
  throw new Error(`llama_reference: unsupported architecture ${JSON.stringify(arch ?? config.model_type)}`);
}

/** `head_dim`, as transformers reads it: `getattr(config, "head_dim", None) or hidden_size // num_attention_heads`. */
function headDimOf(config: RefConfig): number {
  return config.head_dim || Math.floor(config.hidden_size / config.num_attention_heads);
}

/**
 * The RoPE parameters as transformers' `RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` +
 * `standardize_rope_params` leave them in `config.rope_parameters`:
 *
 * 1. the dict is `rope_scaling` when that is a non-empty object, else `rope_parameters`, else `{}`
 *    (`rope_parameters = rope_scaling or rope_parameters`);
 * 2. `rope_theta`: the dict's own `rope_theta` if present, else the top-level `rope_theta`, else 10000;
 * 3. `rope_type`: the dict's `rope_type`, else its legacy `type`, else `"default"`;
 * 4. `partial_rotary_factor`: a top-level value overrides the dict's; default 1;
 * 5. for `llama3` (and yarn/longrope) `original_max_position_embeddings`: a top-level value overrides the
 *    dict's, else the dict's, else `max_position_embeddings`.
 */
export function referenceRopeParameters(config: RefConfig): Record<string, unknown> & { rope_type: string; rope_theta: number } {
  const isDict = (v: unknown): v is Record<string, unknown> =>
    v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0;
  const src = isDict(config.rope_scaling) ? config.rope_scaling : isDict(config.rope_parameters) ? config.rope_parameters : {};
  const p: Record<string, unknown> = { ...src };
  if (p.rope_theta === undefined || p.rope_theta === null) p.rope_theta = config.rope_theta ?? 10000;
  if (p.rope_type === undefined || p.rope_type === null) p.rope_type = p.type ?? 'default';
  if (config.partial_rotary_factor !== undefined && config.partial_rotary_factor !== null) {
    p.partial_rotary_factor = config.partial_rotary_factor;
  }
  if (['llama3', 'yarn', 'longrope'].includes(p.rope_type as string)) {
    if (config.original_max_position_embeddings !== undefined) {
      p.original_max_position_embeddings = config.original_max_position_embeddings;
    } else if (p.original_max_position_embeddings === undefined || p.original_max_position_embeddings === null) {
      p.original_max_position_embeddings = config.max_position_embeddings ?? FAMILIES[family(config)].maxPositions;
    }
  }
  return p as Record<string, unknown> & { rope_type: string; rope_theta: number };
}

function num(p: Record<string, unknown>, key: string, ropeType: string): number {
  const v = p[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new Error(`llama_reference: rope type '${ropeType}' needs a numeric '${key}' (got ${JSON.stringify(v)})`);
  }
  return v;
}

/**
 * RoPE inverse frequencies and the cos/sin post-scaling factor, as transformers'
 * `compute_default_rope_parameters` (`1 / theta^(2i/dim)`, `dim = int(head_dim * partial_rotary_factor)`)
 * and `_compute_llama3_parameters` (wavelengths above `original_max_position_embeddings / low_freq_factor`
 * divided by `factor`, below `original / high_freq_factor` kept, in between interpolated with
 * `smooth = (original / wavelen - low) / (high - low)`: `(1 - smooth) * f / factor + smooth * f`).
 * Both have `attentionScaling` 1. Computed in float64 (transformers: float32).
 * @throws Error naming the rope type for any other type (`linear`, `dynamic`, `yarn`, `longrope`, …)
 */
export function referenceInvFreq(config: RefConfig): { invFreq: Float64Array; attentionScaling: number } {
  const p = referenceRopeParameters(config);
  const ropeType = String(p.rope_type);
  if (ropeType !== 'default' && ropeType !== 'llama3') {
    throw new Error(`llama_reference: unsupported rope type '${ropeType}' (only 'default' and 'llama3')`);
  }
  const base = num(p, 'rope_theta', ropeType);
  const partial = p.partial_rotary_factor === undefined ? 1 : num(p, 'partial_rotary_factor', ropeType);
  const dim = Math.trunc(headDimOf(config) * partial);
  const half = Math.ceil(dim / 2); // torch.arange(0, dim, 2) has ceil(dim / 2) entries
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(base, (2 * i) / dim);
  if (ropeType === 'llama3') {
    const factor = num(p, 'factor', ropeType);
    const low = num(p, 'low_freq_factor', ropeType);
    const high = num(p, 'high_freq_factor', ropeType);
    const old = num(p, 'original_max_position_embeddings', ropeType);
    const lowFreqWavelen = old / low;
    const highFreqWavelen = old / high;
    for (let i = 0; i < half; i++) {
      const f = invFreq[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowFreqWavelen) {
        invFreq[i] = f / factor;
      } else if (wavelen >= highFreqWavelen) {
        const smooth = (old / wavelen - low) / (high - low);
        invFreq[i] = ((1 - smooth) * f) / factor + smooth * f;
      } // else: high frequency, unchanged
    }
  }
  return { invFreq, attentionScaling: 1 };
}

/**
 * Rotates one head vector `x` (length `2 * invFreq.length`) to `position`, as transformers'
 * `apply_rotary_pos_emb` with `cos`/`sin` of `cat(freqs, freqs)`: for `i < half`,
 * `out[i] = x[i] cos - x[i + half] sin`, `out[i + half] = x[i + half] cos + x[i] sin` with
 * angle `position * invFreq[i]`, and `cos`, `sin` multiplied by `attentionScaling`.
 */
export function referenceRotate(x: Float64Array, position: number, invFreq: Float64Array, attentionScaling = 1): Float64Array {
  const half = invFreq.length;
  if (x.length !== 2 * half) throw new Error(`llama_reference: rotate expects ${2 * half} elements, got ${x.length}`);
  const out = new Float64Array(x.length);
  for (let i = 0; i < half; i++) {
    const angle = position * invFreq[i]!;
    const c = Math.cos(angle) * attentionScaling;
    const s = Math.sin(angle) * attentionScaling;
    const x1 = x[i]!;
    const x2 = x[i + half]!;
    out[i] = x1 * c - x2 * s;
    out[i + half] = x2 * c + x1 * s;
  }
  return out;
}

/** Everything the forward needs, read from the config with transformers' defaults. */
interface Resolved {
  hidden: number;
  inter: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  eps: number;
  tie: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  /** per layer: the sliding window, or null for full causal attention */
  windows: (number | null)[];
  invFreq: Float64Array;
  attentionScaling: number;
}

function resolve(config: RefConfig): Resolved {
  const fam = family(config);
  const hidden = config.hidden_size;
  const heads = config.num_attention_heads;
  const kvHeads = config.num_key_value_heads ?? heads; // *Config: num_key_value_heads=None → num_attention_heads
  const headDim = headDimOf(config);
  if (heads % kvHeads !== 0) throw new Error(`llama_reference: num_attention_heads ${heads} not a multiple of num_key_value_heads ${kvHeads}`);
  const act = config.hidden_act ?? 'silu';
  if (act !== 'silu') throw new Error(`llama_reference: unsupported hidden_act '${act}'`);
  const rope = referenceInvFreq(config);
  if (rope.invFreq.length * 2 !== headDim) {
    // Llama/Mistral/Qwen2 rotate the whole head (cos/sin must broadcast against head_dim).
    throw new Error(`llama_reference: rotary dim ${rope.invFreq.length * 2} != head_dim ${headDim} (partial rotary is not supported by these models)`);
  }
  const L = config.num_hidden_layers;
  let windows: (number | null)[] = new Array<null>(L).fill(null);
  if (fam === 'mistral') {
    // MistralModel: create_sliding_window_causal_mask for every layer whenever config.sliding_window is not None
    const w = 'sliding_window' in config ? (config.sliding_window ?? null) : FAMILIES.mistral.slidingWindowDefault;
    windows = windows.map(() => w);
  } else if (fam === 'qwen2') {
    // Qwen2Config: sliding_window = sliding_window if use_sliding_window else None; layer_types default
    // "sliding_attention" for layers i >= max_window_layers when a window is set
    const w = config.use_sliding_window
      ? ('sliding_window' in config ? (config.sliding_window ?? null) : FAMILIES.qwen2.slidingWindowDefault)
      : null;
    const maxWindowLayers = config.max_window_layers ?? 28;
    const types = config.layer_types ?? windows.map((_, i) => (w !== null && i >= maxWindowLayers ? 'sliding_attention' : 'full_attention'));
    windows = types.map((t) => (t === 'sliding_attention' ? w : null));
  }
  return {
    hidden,
    inter: config.intermediate_size,
    layers: L,
    heads,
    kvHeads,
    headDim,
    vocab: config.vocab_size,
    eps: config.rms_norm_eps ?? 1e-6,
    tie: config.tie_word_embeddings ?? false,
    qkvBias: fam === 'qwen2' ? true : fam === 'llama' ? (config.attention_bias ?? false) : false,
    oBias: fam === 'llama' ? (config.attention_bias ?? false) : false,
    mlpBias: fam === 'llama' ? (config.mlp_bias ?? false) : false,
    windows,
    invFreq: rope.invFreq,
    attentionScaling: rope.attentionScaling,
  };
}

/**
 * The tensors (Hugging Face names and shapes) that transformers' `XForCausalLM` owns for `config`, in the
 * order of the module tree; `lm_head.weight` is left out when `tie_word_embeddings` (it is the embedding).
 */
export function referenceWeightShapes(config: RefConfig): Map<string, number[]> {
  const r = resolve(config);
  const m = new Map<string, number[]>();
  const qDim = r.heads * r.headDim;
  const kvDim = r.kvHeads * r.headDim;
  m.set('model.embed_tokens.weight', [r.vocab, r.hidden]);
  for (let l = 0; l < r.layers; l++) {
    const p = `model.layers.${l}.`;
    m.set(`${p}self_attn.q_proj.weight`, [qDim, r.hidden]);
    if (r.qkvBias) m.set(`${p}self_attn.q_proj.bias`, [qDim]);
    m.set(`${p}self_attn.k_proj.weight`, [kvDim, r.hidden]);
    if (r.qkvBias) m.set(`${p}self_attn.k_proj.bias`, [kvDim]);
    m.set(`${p}self_attn.v_proj.weight`, [kvDim, r.hidden]);
    if (r.qkvBias) m.set(`${p}self_attn.v_proj.bias`, [kvDim]);
    m.set(`${p}self_attn.o_proj.weight`, [r.hidden, qDim]);
    if (r.oBias) m.set(`${p}self_attn.o_proj.bias`, [r.hidden]);
    m.set(`${p}mlp.gate_proj.weight`, [r.inter, r.hidden]);
    if (r.mlpBias) m.set(`${p}mlp.gate_proj.bias`, [r.inter]);
    m.set(`${p}mlp.up_proj.weight`, [r.inter, r.hidden]);
    if (r.mlpBias) m.set(`${p}mlp.up_proj.bias`, [r.inter]);
    m.set(`${p}mlp.down_proj.weight`, [r.hidden, r.inter]);
    if (r.mlpBias) m.set(`${p}mlp.down_proj.bias`, [r.hidden]);
    m.set(`${p}input_layernorm.weight`, [r.hidden]);
    m.set(`${p}post_attention_layernorm.weight`, [r.hidden]);
  }
  m.set('model.norm.weight', [r.hidden]);
  if (!r.tie) m.set('lm_head.weight', [r.vocab, r.hidden]);
  return m;
}

function get(weights: RefWeights, name: string, shape: number[]): Float64Array {
  const w = weights.get(name);
  if (w === undefined) throw new Error(`llama_reference: missing weight ${name}`);
  if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`llama_reference: ${name} has shape [${w.shape}] but [${shape}] is expected`);
  }
  const n = shape.reduce((a, b) => a * b, 1);
  if (w.data.length !== n) throw new Error(`llama_reference: ${name} has ${w.data.length} elements, expected ${n}`);
  return w.data;
}

/** `y[t] = W x[t] + b` for `x` [T, inF], `W` [outF, inF] (nn.Linear). */
function linear(x: Float64Array, T: number, inF: number, w: Float64Array, outF: number, b: Float64Array | null): Float64Array {
  const y = new Float64Array(T * outF);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += x[t * inF + i]! * w[o * inF + i]!;
      y[t * outF + o] = b === null ? s : s + b[o]!;
    }
  }
  return y;
}

/** RMSNorm over the last dim of `x` [T, H]: `weight * (x * 1/sqrt(mean(x²) + eps))`. */
function rmsNorm(x: Float64Array, T: number, H: number, weight: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < H; i++) ss += x[t * H + i]! * x[t * H + i]!;
    const r = 1 / Math.sqrt(ss / H + eps);
    for (let i = 0; i < H; i++) y[t * H + i] = weight[i]! * (x[t * H + i]! * r);
  }
  return y;
}

/**
 * Logits `[T, vocab]` (row-major) of one full causal forward over `ids` at positions `0..T-1`, no cache, as
 * transformers' `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM` (`model(ids).logits[0]`)
 * computes them, here in float64. The architecture comes from `architectures[0]` (else `model_type`).
 * @throws Error for an unsupported architecture / rope type / activation, a missing or misshapen weight,
 *   or a token id outside `[0, vocab_size)`
 */
export function referenceForward(config: RefConfig, weights: RefWeights, ids: number[]): Float64Array {
  const r = resolve(config);
  const { hidden: H, inter: I, heads: nH, kvHeads: nKV, headDim: hd, vocab: V } = r;
  const T = ids.length;
  const qDim = nH * hd;
  const kvDim = nKV * hd;
  const groups = nH / nKV;
  const scale = 1 / Math.sqrt(hd); // self.scaling = head_dim ** -0.5

  const embed = get(weights, 'model.embed_tokens.weight', [V, H]);
  let x: Float64Array = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (!Number.isInteger(id) || id < 0 || id >= V) throw new Error(`llama_reference: token id ${id} out of range [0, ${V})`);
    for (let i = 0; i < H; i++) x[t * H + i] = embed[id * H + i]!;
  }

  const opt = (name: string, on: boolean, shape: number[]): Float64Array | null => (on ? get(weights, name, shape) : null);
  for (let l = 0; l < r.layers; l++) {
    const p = `model.layers.${l}.`;
    // --- self attention ---
    const h = rmsNorm(x, T, H, get(weights, `${p}input_layernorm.weight`, [H]), r.eps);
    const q = linear(h, T, H, get(weights, `${p}self_attn.q_proj.weight`, [qDim, H]), qDim, opt(`${p}self_attn.q_proj.bias`, r.qkvBias, [qDim]));
    const k = linear(h, T, H, get(weights, `${p}self_attn.k_proj.weight`, [kvDim, H]), kvDim, opt(`${p}self_attn.k_proj.bias`, r.qkvBias, [kvDim]));
    const v = linear(h, T, H, get(weights, `${p}self_attn.v_proj.weight`, [kvDim, H]), kvDim, opt(`${p}self_attn.v_proj.bias`, r.qkvBias, [kvDim]));
    // RoPE on every head of q and k, position t
    for (let t = 0; t < T; t++) {
      for (let head = 0; head < nH; head++) {
        const off = t * qDim + head * hd;
        q.set(referenceRotate(q.subarray(off, off + hd), t, r.invFreq, r.attentionScaling), off);
      }
      for (let head = 0; head < nKV; head++) {
        const off = t * kvDim + head * hd;
        k.set(referenceRotate(k.subarray(off, off + hd), t, r.invFreq, r.attentionScaling), off);
      }
    }
    const window = r.windows[l] ?? null;
    const attn = new Float64Array(T * qDim);
    const scores = new Float64Array(T);
    for (let head = 0; head < nH; head++) {
      const kvHead = Math.floor(head / groups); // repeat_kv
      for (let t = 0; t < T; t++) {
        const first = window === null ? 0 : Math.max(0, t - window + 1);
        let max = -Infinity;
        for (let s = first; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += q[t * qDim + head * hd + i]! * k[s * kvDim + kvHead * hd + i]!;
          scores[s] = dot * scale;
          if (scores[s]! > max) max = scores[s]!;
        }
        let sum = 0;
        for (let s = first; s <= t; s++) {
          scores[s] = Math.exp(scores[s]! - max);
          sum += scores[s]!;
        }
        for (let i = 0; i < hd; i++) {
          let acc = 0;
          for (let s = first; s <= t; s++) acc += (scores[s]! / sum) * v[s * kvDim + kvHead * hd + i]!;
          attn[t * qDim + head * hd + i] = acc;
        }
      }
    }
    const o = linear(attn, T, qDim, get(weights, `${p}self_attn.o_proj.weight`, [H, qDim]), H, opt(`${p}self_attn.o_proj.bias`, r.oBias, [H]));
    for (let i = 0; i < T * H; i++) x[i] = x[i]! + o[i]!;

    // --- MLP ---
    const h2 = rmsNorm(x, T, H, get(weights, `${p}post_attention_layernorm.weight`, [H]), r.eps);
    const g = linear(h2, T, H, get(weights, `${p}mlp.gate_proj.weight`, [I, H]), I, opt(`${p}mlp.gate_proj.bias`, r.mlpBias, [I]));
    const u = linear(h2, T, H, get(weights, `${p}mlp.up_proj.weight`, [I, H]), I, opt(`${p}mlp.up_proj.bias`, r.mlpBias, [I]));
    const a = new Float64Array(T * I);
    for (let i = 0; i < T * I; i++) {
      const gi = g[i]!;
      a[i] = (gi / (1 + Math.exp(-gi))) * u[i]!; // silu(gate) * up
    }
    const d = linear(a, T, I, get(weights, `${p}mlp.down_proj.weight`, [H, I]), H, opt(`${p}mlp.down_proj.bias`, r.mlpBias, [H]));
    for (let i = 0; i < T * H; i++) x[i] = x[i]! + d[i]!;
  }
  x = rmsNorm(x, T, H, get(weights, 'model.norm.weight', [H]), r.eps);
  const head = r.tie ? embed : get(weights, 'lm_head.weight', [V, H]);
  return linear(x, T, H, head, V, null);
}

/** First index of the largest element (torch.argmax's choice among ties). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/**
 * Greedy decoding as transformers' `generate(do_sample=False, max_new_tokens=…)` without a cache: appends
 * the argmax of the last position's logits one token at a time (re-running the full forward each step) and
 * stops after `maxNewTokens` or right after emitting an end-of-sequence id (which is included, as in
 * `generate`). `eosTokenIds` defaults to `config.eos_token_id` (a number or a list); pass `[]` to never stop.
 * @returns the new ids only
 */
export function referenceGreedy(
  config: RefConfig, weights: RefWeights, promptIds: number[], maxNewTokens: number, eosTokenIds?: number[],
): number[] {
  const eosCfg = config.eos_token_id;
  const eos = eosTokenIds ?? (eosCfg === undefined || eosCfg === null ? [] : Array.isArray(eosCfg) ? eosCfg : [eosCfg]);
  const V = config.vocab_size;
  const ids = promptIds.slice();
  const out: number[] = [];
  for (let n = 0; n < maxNewTokens; n++) {
    const logits = referenceForward(config, weights, ids);
    const next = argmax(logits.subarray((ids.length - 1) * V, ids.length * V));
    ids.push(next);
    out.push(next);
    if (eos.includes(next)) break;
  }
  return out;
}
