/**
 * Whole Llama-family models (lib/models): checked against the float64 reference of transformers' numerics
 * (test/helpers/llama_reference.ts) on small checkpoints the tests write themselves, in this process at TP 1
 * and on 4 ranks at TP 1, 2, 4 and TP 2 × PP 2 (test/fixtures/dist_models.ts); bad directories and configs.
 */
import test from 'ava';
import fs, { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { TpkitError } from '../lib';
import { LlamaForCausalLM, partitionLayers } from '../lib/models/llama';
import { parseLlamaConfig, ropeInvFreq } from '../lib/models/config';
import { Sampler, argmaxRow } from '../lib/models/sampling';
import { type RefConfig, type RefWeights, referenceForward, referenceGreedy, referenceInvFreq } from './helpers/llama_reference';
import { type TinyModelSpec, writeTinyModel } from './helpers/tiny_models';
import { assertRanksOk, runRanks, sharedRun } from './helpers/run_ranks';
import { DEVICES, cudaSkipReason } from './helpers/devices';
import type { LayoutResult } from './fixtures/dist_models';

const PROMPT = [3, 17, 5, 42, 8, 29, 11];
const PROMPT_B = [60, 2, 33];

/** The small models: together they cover every feature the issue lists. */
const SPECS: Record<string, TinyModelSpec> = {
  // GQA 8/2 (kv heads replicated at TP 4), head_dim 16 ≠ 48 / 8, odd vocabulary 997 (padded to 1024), tied
  // embeddings, llama3 RoPE in top-level keys, bfloat16 in 3 shards, 3 layers (PP 2 splits them 2 + 1).
  gqa: {
    hiddenSize: 48, intermediateSize: 96, numLayers: 3, numHeads: 8, numKvHeads: 2, headDim: 16, vocabSize: 997,
    tieWordEmbeddings: true, ropeTheta: 500000,
    ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
    dtype: 'BF16', shards: 3, seed: 11,
  },
  // Qwen2: q/k/v biases, float16, RoPE in `rope_parameters`, one file.
  qwen2: { arch: 'Qwen2ForCausalLM', hiddenSize: 32, numHeads: 4, numKvHeads: 4, vocabSize: 128, dtype: 'F16', ropeInParameters: true, ropeTheta: 1000000, seed: 12 },
  // Mistral: one kv head (replicated at TP 2 and 4), float32.
  mistral: { arch: 'MistralForCausalLM', hiddenSize: 32, numHeads: 4, numKvHeads: 1, vocabSize: 101, dtype: 'F32', seed: 13 },
  // Llama with attention_bias (q, k, v, o) and mlp_bias, 2 shards.
  biased: { hiddenSize: 32, numHeads: 4, numKvHeads: 2, vocabSize: 120, attentionBias: true, extraConfig: { mlp_bias: true }, shards: 2, seed: 14 },
};

interface Made {
  dir: string;
  config: RefConfig;
  weights: RefWeights;
}

let root = '';
const made: Record<string, Made> = {};

test.before(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-models-'));
  for (const [name, spec] of Object.entries(SPECS)) {
    const dir = path.join(root, name);
    const { config, weights } = await writeTinyModel(dir, spec);
    made[name] = { dir, config, weights };
  }
});

test.after.always(async () => {
  if (root) await fsp.rm(root, { recursive: true, force: true });
});

/** (tensor name, file) pairs of a written model directory. */
function shardFiles(dir: string): [string, string][] {
  const index = path.join(dir, 'model.safetensors.index.json');
  if (!fs.existsSync(index)) return [...made[Object.keys(made).find((n) => made[n]!.dir === dir)!]!.weights.keys()].map((n) => [n, 'model.safetensors']);
  return Object.entries((JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map);
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** |Δ| ≤ 1e-4 of the reference's largest |logit| (the issue's bound for float32). */
function assertLogitsClose(t: import('ava').ExecutionContext, got: ArrayLike<number>, ref: ArrayLike<number>, what: string, bound = 1e-4): void {
  const d = maxDiff(got, ref);
  const scale = maxAbs(ref);
  t.true(d <= bound * scale, `${what}: max |Δ| ${d} > ${bound} × ${scale}`);
}

// ---- configuration and layout rules ---------------------------------------------------------------------

test('partitionLayers follows vLLM get_pp_indices: remainder to the stages before the last', (t) => {
  t.deepEqual(partitionLayers(3, 2).counts, [2, 1]);
  t.deepEqual(partitionLayers(32, 3).counts, [11, 11, 10]);
  t.deepEqual(partitionLayers(33, 4).counts, [8, 8, 9, 8]);
  t.deepEqual(partitionLayers(4, 4), { starts: [0, 1, 2, 3], counts: [1, 1, 1, 1] });
  t.deepEqual(partitionLayers(5, 1), { starts: [0], counts: [5] });
  t.throws(() => partitionLayers(2, 3), { instanceOf: RangeError, message: 'num_hidden_layers 2 is smaller than the pipeline parallel size 3' });
});

test('rope inverse frequencies equal the reference for default and llama3, from top-level keys and rope_parameters', (t) => {
  for (const name of ['gqa', 'qwen2', 'mistral']) {
    const cfg = parseLlamaConfig(made[name]!.config);
    const ours = ropeInvFreq(cfg.rope, cfg.headDim);
    const ref = referenceInvFreq(made[name]!.config);
    t.is(ours.invFreq.length, ref.invFreq.length);
    for (let i = 0; i < ref.invFreq.length; i++) t.true(Math.abs(ours.invFreq[i]! - ref.invFreq[i]!) <= 1e-7 * ref.invFreq[i]!, `${name}[${i}]`);
  }
  const base = { architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 8 };
  const scaling = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
  const top = parseLlamaConfig({ ...base, rope_theta: 500000, rope_scaling: scaling });
  const params = parseLlamaConfig({ ...base, rope_parameters: { ...scaling, rope_theta: 500000 } });
  t.deepEqual(top.rope, params.rope);
  // transformers: a non-empty rope_scaling replaces rope_parameters; θ from the object, else the top level.
  const both = parseLlamaConfig({ ...base, rope_theta: 7, rope_scaling: { rope_type: 'default' }, rope_parameters: scaling });
  t.is(both.rope.ropeType, 'default');
  t.is(both.rope.theta, 7);
});

test('config defaults follow transformers', (t) => {
  const c = parseLlamaConfig({ architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 8 });
  t.is(c.numKeyValueHeads, 4);
  t.is(c.headDim, 16);
  t.is(c.rmsNormEps, 1e-6);
  t.is(c.rope.theta, 10000);
  t.false(c.tieWordEmbeddings);
  t.false(c.qkvBias);
  const q = parseLlamaConfig({ architectures: ['Qwen2ForCausalLM'], hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 8, use_sliding_window: false, sliding_window: 32768 });
  t.true(q.qkvBias);
  t.false(q.oProjBias);
  t.is(q.slidingWindow, null);
  const m = parseLlamaConfig({ architectures: ['MistralForCausalLM'], hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 8 });
  t.is(m.slidingWindow, 4096, 'MistralConfig defaults sliding_window to 4096');
});

test('configs tpkit does not implement are TpkitError UNSUPPORTED naming the field', (t) => {
  const base = { architectures: ['LlamaForCausalLM'], hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 8 };
  const cases: [Record<string, unknown>, string][] = [
    [{ architectures: ['GemmaForCausalLM'] }, 'config.json: architectures = ["GemmaForCausalLM"] is not supported'],
    [{ architectures: ['MixtralForCausalLM'] }, 'architectures = ["MixtralForCausalLM"]'],
    [{ rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'rope_scaling.rope_type = "yarn" is not supported'],
    [{ rope_parameters: { rope_type: 'dynamic', factor: 2 } }, 'rope_parameters.rope_type = "dynamic" is not supported'],
    [{ rope_scaling: { type: 'linear', factor: 2 } }, 'rope_scaling.rope_type = "linear" is not supported'],
    [{ hidden_act: 'gelu' }, 'hidden_act = "gelu" is not supported'],
    [{ num_local_experts: 8 }, 'num_local_experts = 8 is not supported (mixture-of-experts layers are not implemented)'],
    [{ use_sliding_window: true }, 'use_sliding_window = true is not supported'],
    [{ partial_rotary_factor: 0.5 }, 'partial_rotary_factor = 0.5 is not supported'],
    [{ quantization_config: { quant_method: 'gptq' } }, 'quantization_config'],
  ];
  for (const [patch, message] of cases) {
    const e = t.throws(() => parseLlamaConfig({ ...base, ...patch }), { instanceOf: TpkitError });
    t.is(e?.code, 'UNSUPPORTED', message);
    t.true(e!.message.includes(message), `${e!.message} should include ${message}`);
  }
  const bad: [Record<string, unknown>, string][] = [
    [{ hidden_size: 0 }, 'config.json: expected a positive integer for hidden_size but received 0'],
    [{ num_key_value_heads: 3 }, 'expected a divisor of num_attention_heads 4 for num_key_value_heads but received 3'],
    [{ architectures: [] }, 'expected a non-empty list of class names for architectures'],
    [{ vocab_size: 'x' }, 'expected a positive integer for vocab_size but received "x"'],
    [{ rope_scaling: { rope_type: 'llama3', factor: 8 } }, 'rope_scaling.low_freq_factor'],
  ];
  for (const [patch, message] of bad) {
    const e = t.throws(() => parseLlamaConfig({ ...base, ...patch }), { instanceOf: TpkitError });
    t.is(e?.code, 'CHECKPOINT_INVALID', message);
    t.true(e!.message.includes(message), `${e!.message} should include ${message}`);
  }
});

// ---- one process, TP 1 ----------------------------------------------------------------------------------

for (const [name, device] of Object.keys(SPECS).flatMap((n) => DEVICES.map((d) => [n, d] as const))) {
  test(`[${device}] ${name}: logits within 1e-4 of the float64 reference and identical greedy tokens (TP 1)`, async (t) => {
    const m = made[name]!;
    const model = await LlamaForCausalLM.fromPretrained(m.dir, { device });
    try {
      const cache = model.createCache(PROMPT.length);
      const [logits] = await model.forward([{ ids: PROMPT, cache }], { allPositions: true });
      cache.dispose();
      assertLogitsClose(t, logits!, referenceForward(m.config, m.weights, PROMPT), name);
      const out = await model.generate(PROMPT, { maxNewTokens: 8, eosTokenId: null });
      t.deepEqual(out.sequences[0]!.generatedIds, referenceGreedy(m.config, m.weights, PROMPT, 8, []));
      t.is(out.sequences[0]!.lastLogits.length, m.config.vocab_size);
      t.is(out.sequences[0]!.finishReason, 'length');
    } finally {
      model.dispose();
    }
  });
}

if (cudaSkipReason) test.skip(`[cuda:0] whole models against the reference: ${cudaSkipReason}`, () => {});

test('generation stops at eos_token_id (included) and reports the reason', async (t) => {
  const m = made.mistral!;
  const model = await LlamaForCausalLM.fromPretrained(m.dir);
  try {
    const ref = referenceGreedy(m.config, m.weights, PROMPT, 8, []);
    const eos = ref[3]!;
    const out = await model.generate(PROMPT, { maxNewTokens: 8, eosTokenId: eos });
    t.deepEqual(out.sequences[0]!.generatedIds, ref.slice(0, ref.indexOf(eos) + 1));
    t.is(out.sequences[0]!.finishReason, 'eos');
  } finally {
    model.dispose();
  }
});

test('a batch of two prompts of different lengths, chunked prefill and KV-cache decode at TP 1', async (t) => {
  const m = made.gqa!;
  const model = await LlamaForCausalLM.fromPretrained(m.dir);
  try {
    const both = await model.generate([PROMPT, PROMPT_B], { maxNewTokens: 6, eosTokenId: null });
    t.deepEqual(both.sequences[0]!.generatedIds, referenceGreedy(m.config, m.weights, PROMPT, 6, []));
    t.deepEqual(both.sequences[1]!.generatedIds, referenceGreedy(m.config, m.weights, PROMPT_B, 6, []));
    const chunked = await model.generate([PROMPT, PROMPT_B], { maxNewTokens: 6, eosTokenId: null, prefillChunkSize: 2 });
    t.deepEqual(chunked.sequences.map((s) => s.generatedIds), both.sequences.map((s) => s.generatedIds));
    assertLogitsClose(t, chunked.sequences[0]!.lastLogits, both.sequences[0]!.lastLogits, 'chunked prefill', 1e-5);
    // Decode with the cache, one token at a time, equals the no-cache forward of the whole sequence.
    const seq = [...PROMPT, ...both.sequences[0]!.generatedIds];
    const ref = referenceForward(m.config, m.weights, seq);
    const cache = model.createCache(seq.length);
    await model.forward([{ ids: PROMPT, cache }]);
    const V = m.config.vocab_size;
    for (let i = PROMPT.length; i < seq.length; i++) {
      const [l] = await model.forward([{ ids: [seq[i]!], cache }]);
      assertLogitsClose(t, l!, ref.subarray(i * V, (i + 1) * V), `decode position ${i}`);
    }
    t.is(cache.length, seq.length);
    await t.throwsAsync(model.forward([{ ids: [1], cache }]), { instanceOf: RangeError, message: `items[0]: 1 new tokens after ${seq.length} exceed the cache capacity ${seq.length}` });
    cache.dispose();
  } finally {
    model.dispose();
  }
});

test('bad arguments of generate and forward are clear errors', async (t) => {
  const model = await LlamaForCausalLM.fromPretrained(made.mistral!.dir);
  try {
    await t.throwsAsync(model.generate([], { maxNewTokens: 2 }), { instanceOf: TypeError });
    await t.throwsAsync(model.generate([1, 2], { maxNewTokens: 0 }), { instanceOf: RangeError, message: /maxNewTokens/ });
    await t.throwsAsync(model.generate([1, 101], { maxNewTokens: 2 }), { instanceOf: RangeError, message: /prompts\[0\]\[1\]/ });
    await t.throwsAsync(model.generate([1, 2.5], { maxNewTokens: 2 }), { instanceOf: RangeError, message: /prompts\[0\]\[1\]/ });
    await t.throwsAsync(model.generate([1], { maxNewTokens: 2, temperature: -1 }), { instanceOf: RangeError, message: /temperature/ });
    await t.throwsAsync(model.generate([1], { maxNewTokens: 2, topP: 0 }), { instanceOf: RangeError, message: /topP/ });
    await t.throwsAsync(model.generate([[1], []], { maxNewTokens: 2 }), { instanceOf: RangeError, message: /prompts\[1\]/ });
    await t.throwsAsync(model.forward([{ ids: [1], cache: {} as never }]), { instanceOf: TypeError });
  } finally {
    model.dispose();
  }
  await t.throwsAsync(model.generate([1], { maxNewTokens: 1 }), { instanceOf: TpkitError, message: 'LlamaForCausalLM was used after dispose()' });
});

test('Mistral sliding_window: sequences up to the window run, longer ones are rejected (the window is not implemented)', async (t) => {
  const dir = path.join(root, 'mistral-window');
  await fsp.cp(made.mistral!.dir, dir, { recursive: true });
  const cfg = JSON.parse(await fsp.readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  await fsp.writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, sliding_window: 10 }));
  const model = await LlamaForCausalLM.fromPretrained(dir);
  try {
    const out = await model.generate(PROMPT, { maxNewTokens: 3, eosTokenId: null });
    t.deepEqual(out.sequences[0]!.generatedIds, referenceGreedy(made.mistral!.config, made.mistral!.weights, PROMPT, 3, []));
    await t.throwsAsync(model.generate(PROMPT, { maxNewTokens: 4 }), {
      instanceOf: RangeError,
      message: "sequence capacity 11 exceeds the model's sliding_window 10 (sliding-window attention is not implemented)",
    });
  } finally {
    model.dispose();
  }
});

// ---- bad directories ------------------------------------------------------------------------------------

async function copyDir(from: string, to: string): Promise<void> {
  await fsp.cp(from, to, { recursive: true });
}

test('bad model directories give errors naming the file or the tensor', async (t) => {
  const base = made.gqa!.dir;
  const err = async (dir: string, code: string, message: string | RegExp) => {
    const e = await t.throwsAsync(LlamaForCausalLM.fromPretrained(dir));
    t.is((e as TpkitError).code, code, `${dir}: ${e?.message}`);
    if (typeof message === 'string') t.true(e!.message.includes(message), `${e!.message} should include ${message}`);
    else t.regex(e!.message, message);
  };
  const empty = path.join(root, 'bad-empty');
  await fsp.mkdir(empty);
  await err(empty, 'CHECKPOINT_INVALID', `${path.join(empty, 'config.json')} does not exist`);
  await fsp.writeFile(path.join(empty, 'config.json'), '{ not json');
  await err(empty, 'CHECKPOINT_INVALID', `${path.join(empty, 'config.json')} is not valid JSON`);
  await fsp.copyFile(path.join(base, 'config.json'), path.join(empty, 'config.json'));
  await err(empty, 'CHECKPOINT_INVALID', `${empty} holds neither model.safetensors nor model.safetensors.index.json`);

  // A tensor missing from the index; a shard file missing; a shard that does not hold what the index says.
  const missing = path.join(root, 'bad-missing');
  await copyDir(base, missing);
  const indexPath = path.join(missing, 'model.safetensors.index.json');
  const index = JSON.parse(await fsp.readFile(indexPath, 'utf8')) as { weight_map: Record<string, string> };
  const victim = 'model.layers.1.mlp.down_proj.weight';
  const victimFile = index.weight_map[victim]!;
  delete index.weight_map[victim];
  await fsp.writeFile(indexPath, JSON.stringify(index));
  await err(missing, 'CHECKPOINT_INVALID', `tensor '${victim}' is missing from ${indexPath}`);
  index.weight_map[victim] = 'model-00009-of-00009.safetensors';
  await fsp.writeFile(indexPath, JSON.stringify(index));
  await err(missing, 'CHECKPOINT_INVALID', /model-00009-of-00009\.safetensors \(listed in .*\) could not be opened \(ENOENT\)/);
  const other = Object.values(index.weight_map).find((f) => f !== victimFile)!;
  index.weight_map[victim] = other;
  await fsp.writeFile(indexPath, JSON.stringify(index));
  await err(missing, 'CHECKPOINT_INVALID', `tensor '${victim}' is listed in ${indexPath} for ${other} but that file does not hold it`);

  // A wrong shape: config.json claims a larger MLP than the files hold.
  const shape = path.join(root, 'bad-shape');
  await copyDir(base, shape);
  const cfg = JSON.parse(await fsp.readFile(path.join(shape, 'config.json'), 'utf8')) as Record<string, unknown>;
  await fsp.writeFile(path.join(shape, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 128 }));
  const e = await t.throwsAsync(LlamaForCausalLM.fromPretrained(shape), { instanceOf: RangeError });
  t.regex(e!.message, /Expected tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' of shape \[128, 48\] in .* but it has shape \[96, 48\]/);

  // An untied config whose files have no lm_head.
  const untied = path.join(root, 'bad-untied');
  await copyDir(base, untied);
  await fsp.writeFile(path.join(untied, 'config.json'), JSON.stringify({ ...cfg, tie_word_embeddings: false }));
  await err(untied, 'CHECKPOINT_INVALID', "tensor 'lm_head.weight' is missing from");

  // Unsupported architecture and rope type, named.
  const arch = path.join(root, 'bad-arch');
  await copyDir(base, arch);
  await fsp.writeFile(path.join(arch, 'config.json'), JSON.stringify({ ...cfg, architectures: ['PhiForCausalLM'] }));
  await err(arch, 'UNSUPPORTED', 'architectures = ["PhiForCausalLM"] is not supported');
  await fsp.writeFile(path.join(arch, 'config.json'), JSON.stringify({ ...cfg, rope_scaling: { rope_type: 'longrope' } }));
  await err(arch, 'UNSUPPORTED', 'rope_scaling.rope_type = "longrope" is not supported');
  await t.throwsAsync(LlamaForCausalLM.fromPretrained(base, { dtype: 'bfloat16' }), { instanceOf: TypeError, message: /cpu backend computes in float32/ });
});

// ---- sampling -------------------------------------------------------------------------------------------

test('Sampler: greedy is argmax; seeded streams repeat; top-k 1 and a tiny top-p are greedy', (t) => {
  const logits = Float32Array.from([0.5, 2.5, -1, 2.5, 0]);
  t.is(argmaxRow(logits), 1, 'first index on ties');
  t.is(new Sampler().sample(logits), 1);
  const draw = (s: Sampler) => Array.from({ length: 50 }, () => s.sample(logits));
  t.deepEqual(draw(new Sampler({ temperature: 1, seed: 5 })), draw(new Sampler({ temperature: 1, seed: 5 })));
  t.notDeepEqual(draw(new Sampler({ temperature: 1, seed: 5 })), draw(new Sampler({ temperature: 1, seed: 6 })));
  t.true(draw(new Sampler({ temperature: 1, topK: 1, seed: 3 })).every((x) => x === 1 || x === 3), 'top-k keeps ties of the k-th logit');
  t.true(draw(new Sampler({ temperature: 1, topP: 1e-6, seed: 3 })).every((x) => x === 1));
  t.throws(() => new Sampler({ topK: -1 }), { instanceOf: RangeError });
  t.throws(() => new Sampler({ seed: 2 ** 32 }), { instanceOf: RangeError });
});

test('Sampler: frequencies follow softmax(logits / T) after top-k and top-p', (t) => {
  const logits = [1, 0, -1, 2, 0.5];
  const check = (opts: { temperature: number; topK?: number; topP?: number }, expected: number[]) => {
    const s = new Sampler({ ...opts, seed: 42 });
    const n = 40000;
    const counts = new Array<number>(logits.length).fill(0);
    for (let i = 0; i < n; i++) counts[s.sample(logits)]!++;
    for (let i = 0; i < logits.length; i++) {
      const p = expected[i]!;
      const sd = Math.sqrt((p * (1 - p)) / n);
      t.true(Math.abs(counts[i]! / n - p) <= 5 * sd + 1e-9, `${JSON.stringify(opts)} token ${i}: ${counts[i]! / n} vs ${p}`);
    }
  };
  const softmax = (xs: number[], T: number, keep: number[]) => {
    const e = xs.map((x, i) => (keep.includes(i) ? Math.exp(x / T) : 0));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((x) => x / z);
  };
  check({ temperature: 1 }, softmax(logits, 1, [0, 1, 2, 3, 4]));
  check({ temperature: 0.5 }, softmax(logits, 0.5, [0, 1, 2, 3, 4]));
  check({ temperature: 1, topK: 2 }, softmax(logits, 1, [3, 0]));
  // probabilities at T = 1: token 3 ≈ 0.46, 0 ≈ 0.17, 4 ≈ 0.10 … top-p 0.6 keeps {3, 0} (0.63 ≥ 0.6).
  check({ temperature: 1, topP: 0.6 }, softmax(logits, 1, [3, 0]));
});

// ---- 4 ranks: TP 1, 2, 4 and TP 2 × PP 2 ----------------------------------------------------------------

// With a GPU the same layouts also run on cuda tensors (ranks share the GPU through gloo).
const layoutRuns = new Map(
  DEVICES.map((device) => [
    device,
    sharedRun(() =>
      runRanks<{ rank: number; out: Record<string, LayoutResult[]> }>(4, 'dist_models', 'layouts', {
        timeoutMs: 240_000,
        env: { TPKIT_TEST_DEVICE: device },
        args: [PROMPT.join(','), PROMPT_B.join(','), ...Object.keys(SPECS).map((n) => made[n]!.dir)],
      }),
    ),
  ]),
);

for (const [name, device] of Object.keys(SPECS).flatMap((n) => DEVICES.map((d) => [n, d] as const))) {
  test(`[${device}] ${name}: TP 1, 2, 4 and TP 2 × PP 2 on 4 ranks give the reference's logits and tokens, identical across layouts`, async (t) => {
    const out = await layoutRuns.get(device)!();
    assertRanksOk(t, out);
    const m = made[name]!;
    const refLogits = referenceForward(m.config, m.weights, PROMPT);
    const refGreedy = referenceGreedy(m.config, m.weights, PROMPT, 6, []);
    const refA = referenceGreedy(m.config, m.weights, PROMPT, 5, []);
    const refB = referenceGreedy(m.config, m.weights, PROMPT_B, 5, []);
    const V = m.config.vocab_size;
    const sampled0 = out.results[0]!.out[m.dir]![0]!.sampled;
    t.true(new Set(refGreedy).size >= 2 || new Set(sampled0).size >= 2, 'the model is not degenerate');
    for (const r of out.results) {
      for (const lr of r!.out[m.dir]!) {
        const what = `${name} ${lr.layout} rank ${r!.rank}`;
        t.is(lr.tp * lr.pp, { tp1: 1, tp2: 2, tp4: 4, tp2pp2: 4 }[lr.layout]!, what);
        assertLogitsClose(t, lr.promptLogits, refLogits, `${what} logits`);
        t.deepEqual(lr.greedy, refGreedy, `${what} greedy`);
        t.deepEqual(lr.sampled, sampled0, `${what} seeded sampling identical to TP 1`);
        t.deepEqual(lr.batch, [refA, refB], `${what} batch of two`);
        t.deepEqual(lr.alone, [refA, refB], `${what} each alone`);
        assertLogitsClose(t, lr.chunkedLast, lr.wholeLast, `${what} chunked prefill`, 1e-5);
        const seq = [...PROMPT, ...refGreedy.slice(0, 3)];
        const full = referenceForward(m.config, m.weights, seq);
        lr.stepLogits.forEach((row, i) => {
          const pos = PROMPT.length - 1 + i;
          assertLogitsClose(t, row, full.subarray(pos * V, (pos + 1) * V), `${what} KV-cache step ${i}`);
          assertLogitsClose(t, row, lr.fullLogits.slice(pos * V, (pos + 1) * V), `${what} KV-cache vs no-cache ${i}`, 1e-5);
        });
      }
      const [tp1, tp2, tp4, pp] = r!.out[m.dir]!;
      t.true(tp2!.parameterBytes < tp1!.parameterBytes && tp4!.parameterBytes < tp2!.parameterBytes, `${name}: weights per rank shrink with TP`);
      t.true(pp!.parameterBytes < tp2!.parameterBytes, `${name}: a PP stage holds fewer weights than the whole TP 2 model`);
      t.deepEqual([pp!.pipeline.stages, pp!.pipeline.microBatches], [2, 2]);
      // Each stage opened exactly the files that hold its tensors (its layers; embedding on the first; norm,
      // LM head — or the tied embedding — on the last).
      const mine = (name: string) => {
        const layer = /^model\.layers\.(\d+)\./.exec(name);
        const [starts, counts] = [partitionLayers(m.config.num_hidden_layers, 2).starts, partitionLayers(m.config.num_hidden_layers, 2).counts];
        if (layer) return Number(layer[1]) >= starts[pp!.ppRank]! && Number(layer[1]) < starts[pp!.ppRank]! + counts[pp!.ppRank]!;
        if (name === 'model.embed_tokens.weight') return pp!.ppRank === 0 || m.config.tie_word_embeddings === true;
        return pp!.ppRank === 1;
      };
      t.deepEqual(pp!.checkpointFiles, [...new Set(shardFiles(m.dir).filter(([n]) => mine(n)).map(([, f]) => f))].sort(), `${name}: stage ${pp!.ppRank} files`);
      t.is(pp!.pipeline.theoreticalBubble, 1 / 3);
      t.true(pp!.pipeline.measuredBubble >= 0 && pp!.pipeline.measuredBubble < 1);
    }
  });
}
