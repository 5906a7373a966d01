/**
 * Tests of the float64 transformers reference (test/helpers/llama_reference.ts) and of the tiny-checkpoint
 * writer (test/helpers/tiny_models.ts), so that model tests can trust both.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { bitsToFloat } from '../lib/backend/cpu';
import { SafetensorsFile } from '../lib/checkpoint/safetensors';
import {
  type RefConfig, type RefWeights, argmax, referenceForward, referenceGreedy, referenceInvFreq,
  referenceRopeParameters, referenceRotate, referenceWeightShapes,
} from './helpers/llama_reference';
import { writeTinyModel } from './helpers/tiny_models';

const root = mkdtempSync(join(tmpdir(), 'tpkit-llama-ref-'));
test.after.always(() => rmSync(root, { recursive: true, force: true }));
let dirNo = 0;
const newDir = (label: string): string => join(root, `${label}-${dirNo++}`);

/** A config object without writing anything (for rope / shape tests). */
function cfg(extra: Partial<RefConfig> = {}): RefConfig {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 32, intermediate_size: 64,
    num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 97, ...extra,
  };
}

function cloneWeights(w: RefWeights): RefWeights {
  return new Map([...w].map(([k, v]) => [k, { shape: v.shape.slice(), data: v.data.slice() }]));
}

function maxAbs(a: Float64Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

// ---------------------------------------------------------------- RoPE

test('rope: the rotation keeps every (i, i + half) pair norm, and position 0 is the identity', (t) => {
  const { invFreq } = referenceInvFreq(cfg({ head_dim: 16, rope_theta: 10000 }));
  t.is(invFreq.length, 8);
  const x = Float64Array.from({ length: 16 }, (_, i) => Math.sin(i * 1.3) * 2 - 0.3 * i);
  t.deepEqual(referenceRotate(x, 0, invFreq), x);
  for (const pos of [1, 5, 123, 4097]) {
    const y = referenceRotate(x, pos, invFreq);
    for (let i = 0; i < 8; i++) {
      const before = Math.hypot(x[i]!, x[i + 8]!);
      const after = Math.hypot(y[i]!, y[i + 8]!);
      t.true(Math.abs(before - after) <= 1e-12 * Math.max(1, before), `pos ${pos} pair ${i}`);
    }
    // the first pair rotates by exactly `pos` radians (invFreq[0] = 1)
    t.true(Math.abs(y[0]! - (x[0]! * Math.cos(pos) - x[8]! * Math.sin(pos))) < 1e-12);
  }
});

test('rope: default inverse frequencies are theta^(-2i/head_dim), head_dim from config when present', (t) => {
  const a = referenceInvFreq(cfg({ hidden_size: 32, num_attention_heads: 4 })); // head_dim 8, theta 10000
  t.is(a.attentionScaling, 1);
  const expected = [1, 0.1, 0.01, 0.001];
  t.is(a.invFreq.length, 4);
  a.invFreq.forEach((f, i) => t.true(Math.abs(f - expected[i]!) <= 1e-15 * expected[i]!, `i=${i}: ${f}`));
  // head_dim 4 though hidden / heads = 8
  const b = referenceInvFreq(cfg({ head_dim: 4, rope_theta: 100 }));
  t.deepEqual([...b.invFreq], [1, 1 / 10]);
});

test('rope: llama3 inverse frequencies match the formula worked by hand (head_dim 8, theta 500000, factor 8, low 1, high 4, original 8192)', (t) => {
  const llama3 = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
  const top = referenceInvFreq(cfg({ hidden_size: 32, num_attention_heads: 4, rope_theta: 500000, rope_scaling: llama3 }));
  // base frequencies 500000^(-i/4): 1, 0.0376060..., 0.00141421..., 5.31829...e-5
  // wavelengths 2π/f: 6.28 and 167.1 (< 8192/4 = 2048: kept), 4442.9 (in [2048, 8192]: smoothed),
  // 118142 (> 8192/1: divided by 8)
  const f2 = 500000 ** -0.5;
  const smooth = (8192 / ((2 * Math.PI) / f2) - 1) / (4 - 1); // = 0.2812826...
  const expected = [1, 500000 ** -0.25, ((1 - smooth) * f2) / 8 + smooth * f2, 500000 ** -0.75 / 8];
  // the same numbers written out (computed once with numpy float64)
  const literal = [1, 0.03760603093086393, 0.0005248461609929547, 6.647869871181236e-6];
  t.is(top.invFreq.length, 4);
  for (let i = 0; i < 4; i++) {
    t.true(Math.abs(top.invFreq[i]! - expected[i]!) <= 1e-15 * expected[i]!, `formula i=${i}: ${top.invFreq[i]}`);
    t.true(Math.abs(top.invFreq[i]! - literal[i]!) <= 1e-12 * literal[i]!, `literal i=${i}: ${top.invFreq[i]}`);
  }
  t.true(Math.abs(smooth - 0.28128260516325104) < 1e-12);
  t.is(top.attentionScaling, 1);

  // the newer `rope_parameters` object (rope_theta inside) gives the same
  const inParams = referenceInvFreq(cfg({ rope_parameters: { ...llama3, rope_theta: 500000 } }));
  t.deepEqual([...inParams.invFreq], [...top.invFreq]);
  // original_max_position_embeddings missing from the dict: falls back to max_position_embeddings
  const { original_max_position_embeddings: _omit, ...noOriginal } = llama3;
  const fallback = referenceInvFreq(cfg({ rope_theta: 500000, max_position_embeddings: 8192, rope_scaling: noOriginal }));
  t.deepEqual([...fallback.invFreq], [...top.invFreq]);
  // a top-level original_max_position_embeddings wins over the dict's (transformers' Phi3 rule)
  const overridden = referenceInvFreq(cfg({ rope_theta: 500000, original_max_position_embeddings: 8192, rope_scaling: { ...llama3, original_max_position_embeddings: 2 } }));
  t.deepEqual([...overridden.invFreq], [...top.invFreq]);
});

test('rope: how rope_scaling, rope_parameters and rope_theta combine (transformers precedence)', (t) => {
  // rope_parameters.rope_theta wins over a top-level rope_theta
  t.is(referenceRopeParameters(cfg({ rope_theta: 1, rope_parameters: { rope_type: 'default', rope_theta: 500000 } })).rope_theta, 500000);
  // a dict without rope_theta takes the top-level one, else 10000
  t.is(referenceRopeParameters(cfg({ rope_theta: 42, rope_parameters: { rope_type: 'default' } })).rope_theta, 42);
  t.is(referenceRopeParameters(cfg({})).rope_theta, 10000);
  t.is(referenceRopeParameters(cfg({})).rope_type, 'default');
  // a non-empty rope_scaling replaces rope_parameters
  const both = referenceRopeParameters(cfg({
    rope_theta: 7, rope_scaling: { rope_type: 'linear', factor: 2 }, rope_parameters: { rope_type: 'default', rope_theta: 9 },
  }));
  t.is(both.rope_type, 'linear');
  t.is(both.rope_theta, 7);
  // legacy 'type' key
  t.is(referenceRopeParameters(cfg({ rope_scaling: { type: 'dynamic', factor: 2 } })).rope_type, 'dynamic');
  // null / empty rope_scaling is no scaling
  t.is(referenceRopeParameters(cfg({ rope_scaling: null, rope_theta: 3 })).rope_type, 'default');
  t.is(referenceRopeParameters(cfg({ rope_scaling: {}, rope_theta: 3 })).rope_theta, 3);
});

test('rope: unsupported rope types throw, naming the type', (t) => {
  for (const type of ['yarn', 'linear', 'dynamic', 'longrope']) {
    const c = cfg({ rope_scaling: { rope_type: type, factor: 4 } });
    t.throws(() => referenceInvFreq(c), { message: new RegExp(`'${type}'`) });
    t.throws(() => referenceForward(c, new Map(), [0]), { message: new RegExp(`'${type}'`) });
  }
  t.throws(() => referenceInvFreq(cfg({ rope_parameters: { rope_type: 'yarn', rope_theta: 1e4, factor: 2 } })), { message: /'yarn'/ });
  t.throws(() => referenceInvFreq(cfg({ rope_scaling: { rope_type: 'llama3', factor: 8 } })), { message: /low_freq_factor/ });
  t.throws(() => referenceForward(cfg({ architectures: ['GPT2LMHeadModel'], model_type: 'gpt2' }), new Map(), [0]), { message: /GPT2LMHeadModel/ });
});

// ---------------------------------------------------------------- the forward

test('forward by hand: one layer with zero MLP gives lm_head(norm(e + o(v(norm1(e))))) at position 0', async (t) => {
  const { config, weights } = await writeTinyModel(newDir('hand'), { numLayers: 1, hiddenSize: 8, numHeads: 2, numKvHeads: 1, intermediateSize: 4, vocabSize: 11, seed: 5 });
  weights.get('model.layers.0.mlp.down_proj.weight')!.data.fill(0);
  const H = 8;
  const W = (n: string): Float64Array => weights.get(n)!.data;
  const norm = (x: number[], w: Float64Array): number[] => {
    const ms = x.reduce((s, v) => s + v * v, 0) / x.length;
    return x.map((v, i) => w[i]! * (v / Math.sqrt(ms + 1e-5)));
  };
  const matvec = (w: Float64Array, x: number[], rows: number): number[] =>
    Array.from({ length: rows }, (_, r) => x.reduce((s, v, i) => s + w[r * x.length + i]! * v, 0));
  const id = 6;
  const e = Array.from(W('model.embed_tokens.weight').subarray(id * H, id * H + H));
  const v = matvec(W('model.layers.0.self_attn.v_proj.weight'), norm(e, W('model.layers.0.input_layernorm.weight')), 4);
  // one token: softmax over one key is 1; both query heads read the single kv head
  const o = matvec(W('model.layers.0.self_attn.o_proj.weight'), [...v, ...v], H);
  const x = e.map((ei, i) => ei + o[i]!);
  const expected = matvec(W('lm_head.weight'), norm(x, W('model.norm.weight')), 11);
  const got = referenceForward(config, weights, [id]);
  expected.forEach((ex, i) => t.true(Math.abs(got[i]! - ex) <= 1e-12, `logit ${i}: ${got[i]} vs ${ex}`));
});

test('forward: attention is causal — changing token t+1 leaves logits at positions <= t bit-identical', async (t) => {
  for (const arch of ['LlamaForCausalLM', 'Qwen2ForCausalLM'] as const) {
    const { config, weights } = await writeTinyModel(newDir('causal'), { arch, seed: 3 });
    const V = config.vocab_size;
    const ids = [5, 17, 2, 88, 40, 9, 61];
    const base = referenceForward(config, weights, ids);
    for (const tt of [0, 3, 5]) {
      const changed = ids.slice();
      changed[tt + 1] = (changed[tt + 1]! + 31) % V;
      const other = referenceForward(config, weights, changed);
      t.deepEqual(other.subarray(0, (tt + 1) * V), base.subarray(0, (tt + 1) * V), `${arch} t=${tt}`);
      t.notDeepEqual(other.subarray((tt + 1) * V, (tt + 2) * V), base.subarray((tt + 1) * V, (tt + 2) * V));
    }
    // a prefix's logits are the full sequence's first rows
    t.deepEqual(referenceForward(config, weights, ids.slice(0, 4)), base.subarray(0, 4 * V));
  }
});

test('forward: GQA — duplicating each kv head and doubling num_key_value_heads gives identical logits', async (t) => {
  const { config, weights } = await writeTinyModel(newDir('gqa'), { arch: 'Qwen2ForCausalLM', numHeads: 4, numKvHeads: 2, headDim: 6, seed: 11 });
  const hd = 6;
  const H = config.hidden_size;
  const dup = cloneWeights(weights);
  for (let l = 0; l < config.num_hidden_layers; l++) {
    for (const proj of ['k_proj', 'v_proj']) {
      const w = weights.get(`model.layers.${l}.self_attn.${proj}.weight`)!;
      const b = weights.get(`model.layers.${l}.self_attn.${proj}.bias`)!;
      const w2 = new Float64Array(4 * hd * H);
      const b2 = new Float64Array(4 * hd);
      for (let head = 0; head < 4; head++) {
        const src = Math.floor(head / 2); // repeat_kv: query head h reads kv head h // (heads / kv_heads)
        w2.set(w.data.subarray(src * hd * H, (src + 1) * hd * H), head * hd * H);
        b2.set(b.data.subarray(src * hd, (src + 1) * hd), head * hd);
      }
      dup.set(`model.layers.${l}.self_attn.${proj}.weight`, { shape: [4 * hd, H], data: w2 });
      dup.set(`model.layers.${l}.self_attn.${proj}.bias`, { shape: [4 * hd], data: b2 });
    }
  }
  const ids = [3, 1, 4, 1, 5, 9, 2, 6];
  const a = referenceForward(config, weights, ids);
  const b = referenceForward({ ...config, num_key_value_heads: 4 }, dup, ids);
  t.deepEqual(b, a);
  // and the grouping matters: pairing query heads with the wrong kv head changes the logits
  const swapped = cloneWeights(weights);
  for (const proj of ['k_proj', 'v_proj']) {
    const w = swapped.get(`model.layers.0.self_attn.${proj}.weight`)!.data;
    const first = w.slice(0, hd * H);
    w.copyWithin(0, hd * H, 2 * hd * H);
    w.set(first, hd * H);
  }
  t.notDeepEqual(referenceForward(config, swapped, ids), a);
});

test('forward: tie_word_embeddings uses the embedding table as lm_head', async (t) => {
  const { config, weights } = await writeTinyModel(newDir('tie'), { tieWordEmbeddings: true, seed: 4 });
  t.false(weights.has('lm_head.weight'));
  t.false(referenceWeightShapes(config).has('lm_head.weight'));
  const ids = [7, 8, 9, 10];
  const tied = referenceForward(config, weights, ids);
  const untied = cloneWeights(weights);
  untied.set('lm_head.weight', { shape: [97, 32], data: weights.get('model.embed_tokens.weight')!.data.slice() });
  t.deepEqual(referenceForward({ ...config, tie_word_embeddings: false }, untied, ids), tied);
  t.throws(() => referenceForward({ ...config, tie_word_embeddings: false }, weights, ids), { message: /missing weight lm_head\.weight/ });
});

test('forward: biases — Llama attention_bias (q, k, v and o_proj), mlp_bias, Qwen2 q/k/v only, Mistral none', async (t) => {
  const llama = await writeTinyModel(newDir('bias'), { attentionBias: true, extraConfig: { mlp_bias: true }, seed: 8 });
  const names = [...llama.weights.keys()].filter((n) => n.endsWith('.bias') && n.includes('layers.0.'));
  t.deepEqual(names.sort(), ['mlp.down_proj', 'mlp.gate_proj', 'mlp.up_proj', 'self_attn.k_proj', 'self_attn.o_proj', 'self_attn.q_proj', 'self_attn.v_proj']
    .map((n) => `model.layers.0.${n}.bias`).sort());
  const ids = [1, 2, 3, 4, 5];
  const base = referenceForward(llama.config, llama.weights, ids);
  for (const n of names) {
    const w = cloneWeights(llama.weights);
    w.get(n)!.data[0]! += 0.5;
    t.notDeepEqual(referenceForward(llama.config, w, ids), base, `${n} is used`);
  }
  const qwen = await writeTinyModel(newDir('bias'), { arch: 'Qwen2ForCausalLM', attentionBias: true, seed: 8 });
  t.deepEqual([...qwen.weights.keys()].filter((n) => n.endsWith('.bias') && n.includes('layers.1.')).sort(),
    ['k_proj', 'q_proj', 'v_proj'].map((n) => `model.layers.1.self_attn.${n}.bias`));
  const mistral = await writeTinyModel(newDir('bias'), { arch: 'MistralForCausalLM', attentionBias: true, seed: 8 });
  t.false([...mistral.weights.keys()].some((n) => n.endsWith('.bias')));
});

test('forward: sliding windows — Mistral sliding_window limits the keys; Qwen2 ignores it unless use_sliding_window', async (t) => {
  const { config, weights } = await writeTinyModel(newDir('swa'), { arch: 'MistralForCausalLM', seed: 2 });
  t.is(config.sliding_window, null);
  const V = config.vocab_size;
  const ids = [11, 22, 33, 44, 55, 66];
  const full = referenceForward(config, weights, ids);
  const win = referenceForward({ ...config, sliding_window: 3 }, weights, ids);
  t.deepEqual(win.subarray(0, 3 * V), full.subarray(0, 3 * V)); // positions 0..2 see all their keys anyway
  t.notDeepEqual(win.subarray(3 * V), full.subarray(3 * V));
  const { sliding_window: _drop, ...absent } = config; // MistralConfig's default window is 4096
  t.deepEqual(referenceForward(absent as RefConfig, weights, ids), full);
  // a window of 1 is attention to oneself only: changing earlier tokens changes nothing at the last position
  const one = { ...config, sliding_window: 1, num_hidden_layers: 1 };
  const a = referenceForward(one, weights, ids).subarray(5 * V);
  const b = referenceForward(one, weights, [0, 0, 0, 0, 0, 66]).subarray(5 * V);
  t.deepEqual(a, b);

  const q = await writeTinyModel(newDir('swa'), { arch: 'Qwen2ForCausalLM', seed: 2 });
  const qFull = referenceForward(q.config, q.weights, ids);
  t.deepEqual(referenceForward({ ...q.config, sliding_window: 2 }, q.weights, ids), qFull); // use_sliding_window false
  const qWin = referenceForward({ ...q.config, use_sliding_window: true, sliding_window: 2, max_window_layers: 1 }, q.weights, ids);
  t.notDeepEqual(qWin, qFull);
});

test('greedy: varied tokens from a few prompts for each architecture and dtype; logits of a few units', async (t) => {
  const specs = [
    { arch: 'LlamaForCausalLM', dtype: 'F32' },
    { arch: 'LlamaForCausalLM', dtype: 'BF16', ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 }, ropeTheta: 500000 },
    { arch: 'MistralForCausalLM', dtype: 'F16', headDim: 16 },
    { arch: 'Qwen2ForCausalLM', dtype: 'BF16', tieWordEmbeddings: true },
  ] as const;
  for (const spec of specs) {
    const { config, weights } = await writeTinyModel(newDir('greedy'), { ...spec, seed: 21 });
    const all = new Set<number>();
    let varied = 0;
    for (const prompt of [[1], [5, 9, 13], [42, 3, 77, 8, 19]]) {
      const out = referenceGreedy(config, weights, prompt, 8);
      t.is(out.length, 8);
      if (new Set(out).size >= 3) varied++;
      out.forEach((x) => all.add(x));
      const logits = referenceForward(config, weights, prompt);
      const m = maxAbs(logits);
      t.true(m > 1 && m < 30, `${spec.arch}/${spec.dtype} max |logit| ${m}`);
    }
    t.true(varied >= 2, `${spec.arch}/${spec.dtype}: at most one prompt gives >= 3 distinct tokens`);
    t.true(all.size >= 8, `${spec.arch}/${spec.dtype}: ${[...all]}`);
  }
});

test('greedy: stops right after an eos id (included), defaulting to config.eos_token_id', async (t) => {
  const { config, weights } = await writeTinyModel(newDir('eos'), { seed: 21 });
  const free = referenceGreedy(config, weights, [5, 9, 13], 8, []);
  const stop = free[3]!;
  const cut = free.indexOf(stop) + 1;
  t.deepEqual(referenceGreedy(config, weights, [5, 9, 13], 8, [stop]), free.slice(0, cut));
  t.deepEqual(referenceGreedy({ ...config, eos_token_id: [1000, stop] }, weights, [5, 9, 13], 8), free.slice(0, cut));
  t.deepEqual(referenceGreedy({ ...config, eos_token_id: stop }, weights, [5, 9, 13], 8), free.slice(0, cut));
  // each step is the argmax of the last row of a full forward
  const logits = referenceForward(config, weights, [5, 9, 13]);
  t.is(free[0], argmax(logits.subarray(2 * 97, 3 * 97)));
});

// ---------------------------------------------------------------- the writer

/** Reads every tensor back with tpkit's reader and checks its bits equal the returned float64 weights. */
async function checkStored(t: import('ava').ExecutionContext, dir: string, files: string[], weights: RefWeights, dtype: 'F32' | 'F16' | 'BF16'): Promise<Map<string, string>> {
  const where = new Map<string, string>();
  for (const file of files) {
    const f = await SafetensorsFile.open(join(dir, file));
    try {
      t.deepEqual(f.metadata, { format: 'pt' });
      for (const info of f.list()) {
        t.is(info.dtype, dtype);
        where.set(info.name, file);
        const raw = await f.read(info.name);
        const want = weights.get(info.name);
        t.truthy(want, info.name);
        t.deepEqual(raw.shape, want!.shape);
        const values = raw.dtype === 'float32' ? (raw.data as Float32Array) : bitsToFloat(raw.data as Uint16Array, raw.dtype);
        // float64 → float32 is exact for stored values, so compare bit patterns of the float32s
        const back = new Uint32Array(Float32Array.from(want!.data).buffer);
        t.deepEqual(new Uint32Array(values.buffer, values.byteOffset, values.length), back, info.name);
        t.deepEqual(Float64Array.from(values), want!.data);
      }
    } finally {
      await f.close();
    }
  }
  return where;
}

test('writeTinyModel: BF16 in 3 shards — file names, index, config.json, and weights equal to what the reader gets', async (t) => {
  const dir = newDir('bf16');
  const { config, weights } = await writeTinyModel(dir, { dtype: 'BF16', shards: 3, eosTokenId: [2, 7], seed: 9 });
  const files = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
  for (const f of files) t.true(existsSync(join(dir, f)), f);
  t.false(existsSync(join(dir, 'model.safetensors')));
  t.deepEqual(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), config);
  t.deepEqual(config.eos_token_id, [2, 7]);
  t.is(config.torch_dtype, 'bfloat16');
  const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
  const where = await checkStored(t, dir, files, weights, 'BF16');
  t.deepEqual(index.weight_map, Object.fromEntries(where));
  t.deepEqual(new Set(Object.keys(index.weight_map)), new Set(referenceWeightShapes(config).keys()));
  t.deepEqual(new Set(Object.values(index.weight_map)), new Set(files)); // every shard holds something
  t.is(index.metadata.total_size, [...weights.values()].reduce((s, w) => s + 2 * w.data.length, 0));
  // bfloat16 subnormals survive exactly
  const q = weights.get('model.layers.0.self_attn.q_proj.weight')!.data;
  const subnormals = [...q].filter((x) => x !== 0 && Math.abs(x) < 2 ** -126);
  t.is(subnormals.length, 3);
  // and all values are bfloat16: the low 16 bits of the float32 are zero
  t.true([...new Uint32Array(Float32Array.from(q).buffer)].every((b) => (b & 0xffff) === 0));
});

test('writeTinyModel: F16 and F32 single files; F16 subnormals exact; deterministic per seed', async (t) => {
  const d16 = newDir('f16');
  const f16 = await writeTinyModel(d16, { dtype: 'F16', arch: 'Qwen2ForCausalLM', headDim: 16, seed: 3 });
  t.true(existsSync(join(d16, 'model.safetensors')));
  t.false(existsSync(join(d16, 'model.safetensors.index.json')));
  t.is(f16.config.head_dim, 16);
  t.deepEqual(f16.weights.get('model.layers.0.self_attn.q_proj.weight')!.shape, [64, 32]);
  await checkStored(t, d16, ['model.safetensors'], f16.weights, 'F16');
  const q = f16.weights.get('model.layers.0.self_attn.q_proj.weight')!.data;
  t.deepEqual([...q].filter((x) => x !== 0 && Math.abs(x) < 2 ** -14).sort((a, b) => a - b), [-5 * 2 ** -24, 2 ** -24, 17 * 2 ** -24]);

  const d32 = newDir('f32');
  const f32 = await writeTinyModel(d32, { dtype: 'F32', shards: 2, ropeInParameters: true, ropeTheta: 123456, seed: 3 });
  t.deepEqual(f32.config.rope_parameters, { rope_type: 'default', rope_theta: 123456 });
  t.false('rope_theta' in f32.config);
  await checkStored(t, d32, ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'], f32.weights, 'F32');
  const again = await writeTinyModel(newDir('f32'), { dtype: 'F32', ropeInParameters: true, ropeTheta: 123456, seed: 3 });
  t.deepEqual(again.weights, f32.weights);
  const other = await writeTinyModel(newDir('f32'), { dtype: 'F32', seed: 4 });
  t.notDeepEqual(other.weights.get('model.embed_tokens.weight'), f32.weights.get('model.embed_tokens.weight'));
  // rope_parameters and top-level keys describe the same model
  const top = { ...f32.config, rope_parameters: undefined, rope_theta: 123456, rope_scaling: null };
  t.deepEqual(referenceForward(top, f32.weights, [4, 5, 6]), referenceForward(f32.config, f32.weights, [4, 5, 6]));
});
