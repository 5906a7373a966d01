/**
 * Mixture of experts: uneven all-to-all (test/fixtures/dist_moe.ts `alltoallv`), FusedMoE at EP 1/2/4 against a
 * float64 reference that loops over tokens and their top-k experts, and MixtralForCausalLM against a float64
 * reference of transformers' Mixtral at EP 1/2/4 and TP 2.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { FusedMoE, loadImbalance, routeTopK } from '../lib/layers/moe';
import { Tensor } from '../lib/tensor';
import { assertRanksOk, runRanks, sharedRun } from './helpers/run_ranks';
import { referenceMixtralForward, referenceMoE } from './helpers/mixtral_reference';
import type { RefConfig, RefWeights } from './helpers/llama_reference';
import { writeTinyMixtral } from './helpers/tiny_mixtral';
import { MixtralForCausalLM } from '../lib/models/mixtral';
import { parseLlamaConfig, parseMixtralConfig } from '../lib/models/config';
import { TpkitError } from '../lib/errors';
import { moeAllToAllBytes, shardElements } from '../lib/plan/estimate';
import { type AllToAllVResult, type MixtralLayoutResult, type MoECase, type MoEResult, cell, splitRows } from './fixtures/dist_moe';

const WORLD_SIZES = [1, 2, 4];
const LAUNCH_TIMEOUT_MS = 60_000;

const a2av = new Map<number, () => ReturnType<typeof runRanks<AllToAllVResult>>>();
for (const W of WORLD_SIZES) a2av.set(W, sharedRun(() => runRanks<AllToAllVResult>(W, 'dist_moe', 'alltoallv', { timeoutMs: LAUNCH_TIMEOUT_MS })));

for (const W of WORLD_SIZES) {
  test(`world ${W}: allToAll with invalid split sizes throws before communicating`, async (t) => {
    const out = await a2av.get(W)!();
    assertRanksOk(t, out);
    for (const r of out.results) {
      const m = Object.fromEntries(r!.invalid.map((i) => [i.name, i.message]));
      t.is(m.length, `RangeError: Expected ${W} entries (the group size) for inputSplitSizes but received ${W + 1}`);
      t.is(m.negative, 'RangeError: Expected non-negative integer for outputSplitSizes[0] but received -1 of type number');
      t.is(m.fraction, 'RangeError: Expected non-negative integer for outputSplitSizes[0] but received 0.5 of type number');
      t.regex(m.sum!, /^RangeError: allToAll: inputSplitSizes \[.*\] sum to \d+, expected dim 0 of shape \[\d+, 2\] \(\d+\)$/);
      t.is(m.type, 'TypeError: Expected array of non-negative integers for inputSplitSizes but received spoons of type string');
    }
  });

  test(`world ${W}: allToAll with uneven split sizes (zeros included), rows of 3 and 3000 floats`, async (t) => {
    const out = await a2av.get(W)!();
    assertRanksOk(t, out);
    for (const r of out.results) {
      const me = r!.rank;
      const expected: number[] = [];
      let rows = 0;
      for (let i = 0; i < W; i++) {
        for (let row = 0; row < splitRows(i, me); row++) for (let k = 0; k < 3; k++) expected.push(cell(i, me, row, k));
        rows += splitRows(i, me);
      }
      t.deepEqual(r!.received[3]!.shape, [rows, 3]);
      t.deepEqual(r!.received[3]!.values, expected, `rank ${me}`);
      t.deepEqual(r!.received[3000]!.shape, [rows, 3000]);
      t.deepEqual(r!.received[3000]!.values, [1], `rank ${me}: rows of 3000`);
    }
  });

  test(`world ${W}: split sizes that disagree across ranks → COLLECTIVE_MISMATCH on every rank; the group stays usable`, async (t) => {
    const out = await a2av.get(W)!();
    assertRanksOk(t, out);
    for (const r of out.results) {
      t.false(r!.mismatch.ok, `rank ${r!.rank}`);
      t.is(r!.mismatch.code, 'COLLECTIVE_MISMATCH');
      const exp = W === 1 ? 'rank 0 expects 1 rows from rank 0, which sends 0' : `rank 0 expects ${splitRows(W - 1, 0) + 1} rows from rank ${W - 1}, which sends ${splitRows(W - 1, 0)}`;
      t.true(r!.mismatch.message!.includes(exp), r!.mismatch.message);
      const expected: number[] = [];
      for (let i = 0; i < W; i++) expected.push(2 * r!.rank * (i + 1), (2 * r!.rank + 1) * (i + 1));
      t.deepEqual(r!.after, expected);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// FusedMoE

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const T_GLOBAL = 12;
const E = 4;
const H = 8;
const I = 8;

/**
 * Integer-friendly data: tokens in {-2..2} with a constant last column 1; w1 rows carry ±200 on it, so
 * w1·x ∈ ±[158, 242] and silu is exactly x or 0 in float32; every product and sum is a small integer (exact).
 * With top-1 the renormalised weight is exactly 1, so the whole block is exact.
 */
function intCase(name: string, k: number, seed: number, skew = false): MoECase {
  const r = rng(seed);
  const int = (m: number) => Math.floor(r() * (2 * m + 1)) - m;
  const tokens: number[] = [];
  for (let t = 0; t < T_GLOBAL; t++) for (let h = 0; h < H; h++) tokens.push(h === H - 1 ? 1 : int(2));
  const gate = Array.from({ length: E * H }, (_, i) => (i % H === H - 1 ? 0 : int(2)));
  if (skew) {
    // every token's top expert is E-1, its second E-2
    gate[(E - 1) * H + H - 1] = 100;
    gate[(E - 2) * H + H - 1] = 50;
  }
  const w1 = Array.from({ length: E }, () => Array.from({ length: I * H }, (_, i) => (i % H === H - 1 ? (r() < 0.5 ? -200 : 200) : int(3))));
  const w3 = Array.from({ length: E }, () => Array.from({ length: I * H }, () => int(3)));
  const w2 = Array.from({ length: E }, () => Array.from({ length: H * I }, () => int(3)));
  return { name, E, k, H, I, gate, w1, w2, w3, tokens };
}

function randCase(name: string, k: number, seed: number): MoECase {
  const r = rng(seed);
  const n = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const mat = (rows: number, cols: number) => Array.from({ length: rows * cols }, () => Math.fround(n() / Math.sqrt(cols)));
  return {
    name, E, k, H, I,
    gate: mat(E, H),
    w1: Array.from({ length: E }, () => mat(I, H)),
    w2: Array.from({ length: E }, () => mat(H, I)),
    w3: Array.from({ length: E }, () => mat(I, H)),
    tokens: Array.from({ length: T_GLOBAL * H }, () => Math.fround(n())),
  };
}

const CASES: MoECase[] = [
  intCase('int-top1', 1, 1),
  intCase('int-top2', 2, 2),
  randCase('rand-top2', 2, 3),
  randCase('rand-top1', 1, 4),
  intCase('skewed-top1', 1, 5, true),
  intCase('skewed-top2', 2, 6, true),
  intCase('int-top2-empty', 2, 7),
];

function reference(c: MoECase): { out: Float64Array; tokensPerExpert: number[] } {
  const w = { gate: Float64Array.from(c.gate), w1: c.w1.map((m) => Float64Array.from(m)), w2: c.w2.map((m) => Float64Array.from(m)), w3: c.w3.map((m) => Float64Array.from(m)) };
  return referenceMoE(c.tokens, c.tokens.length / c.H, c.H, c.I, c.E, c.k, w);
}

let caseFile = '';
const moeRuns = new Map<number, () => ReturnType<typeof runRanks<MoEResult>>>();
for (const W of WORLD_SIZES) {
  moeRuns.set(W, sharedRun(async () => {
    if (!caseFile) {
      const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-moe-'));
      caseFile = path.join(dir, 'cases.json');
      await fsp.writeFile(caseFile, JSON.stringify(CASES));
    }
    return runRanks<MoEResult>(W, 'dist_moe', 'moe', { args: [caseFile], timeoutMs: LAUNCH_TIMEOUT_MS });
  }));
}

test('FusedMoE: invalid sizes and groups are RangeErrors naming the numbers', (t) => {
  t.throws(() => new FusedMoE(4, 5, 8, 6), { instanceOf: RangeError, message: 'Expected integer in [1, 5) for topK but received 5 of type number' });
  t.throws(() => new FusedMoE(4, 0, 8, 6), { instanceOf: RangeError, message: 'Expected integer in [1, 5) for topK but received 0 of type number' });
  t.throws(() => new FusedMoE(0, 1, 8, 6), { instanceOf: RangeError, message: 'Expected positive integer for numExperts but received 0 of type number' });
  t.throws(() => new FusedMoE(4, 1, 8, 6, { expertGroup: {} as never }), { instanceOf: TypeError, message: 'Expected ProcessGroup for expertGroup but received [object Object] of type object' });
});

test('FusedMoE on one rank: weights of an expert never loaded → NOT_INITIALIZED; wrong shapes → RangeError', async (t) => {
  const moe = new FusedMoE(4, 2, 8, 8);
  t.deepEqual(moe.localExperts, [0, 1, 2, 3]);
  await moe.loadRouterWeight(Tensor.zeros([4, 8]));
  await t.throwsAsync(moe.forward(Tensor.zeros([2, 8])), { message: 'FusedMoE: weights of expert 0 were not loaded' });
  await t.throwsAsync(moe.loadExpertWeight(0, 'w2', Tensor.zeros([6, 8])), { instanceOf: RangeError, message: 'Expected expert 0 w2 of shape [8, 8] but received [6, 8]' });
  await t.throwsAsync(moe.loadExpertWeight(4, 'w1', Tensor.zeros([6, 8])), { instanceOf: RangeError, message: 'Expected integer in [0, 4) for expert but received 4 of type number' });
  await t.throwsAsync(moe.forward(Tensor.zeros([2, 7])), { instanceOf: RangeError, message: 'FusedMoE: expected input of shape [T, 8] but received [2, 7]' });
  moe.dispose();
});

test('routeTopK: softmax, top-k with ties to the lower index, renormalised; loadImbalance', (t) => {
  const { experts, weights } = routeTopK([0, 1, 1, 0], 1, 4, 2);
  t.deepEqual(Array.from(experts), [1, 2]);
  t.deepEqual(Array.from(weights), [0.5, 0.5]);
  const one = routeTopK([3, -1, 2, 0], 1, 4, 1);
  t.deepEqual(Array.from(one.experts), [0]);
  t.is(one.weights[0], 1);
  t.is(loadImbalance([2, 2, 2, 2]), 1);
  t.is(loadImbalance([0, 0, 0, 8]), 4);
  t.is(loadImbalance([0, 0]), 0);
});

for (const W of WORLD_SIZES) {
  for (const c of CASES) {
    test(`world ${W}: FusedMoE ${c.name} equals the dense float64 reference at every layout`, async (t) => {
      const out = await moeRuns.get(W)!();
      assertRanksOk(t, out);
      const ref = reference(c);
      const scale = Math.max(...Array.from(ref.out, Math.abs));
      const exact = c.name.startsWith('int') || c.name.startsWith('skewed');
      const layouts = new Set<string>();
      for (const r of out.results) {
        for (const run of r!.runs.filter((x) => x.case === c.name)) {
          layouts.add(run.layout);
          const [start, n] = run.rows;
          t.is(run.out.length, n * H);
          const want = Array.from(ref.out.subarray(start * H, (start + n) * H));
          if (exact && c.k === 1 && run.tp === 1) {
            t.deepEqual(run.out, want.map(Math.fround), `${run.layout} rank ${r!.rank}: bit-identical`);
          } else {
            const bound = (exact ? 1e-6 : 1e-5) * scale;
            const err = Math.max(0, ...run.out.map((v, i) => Math.abs(v - want[i]!)));
            t.true(err <= bound, `${run.layout} rank ${r!.rank}: max |Δ| ${err} > ${bound}`);
          }
        }
      }
      t.is(layouts.size, W === 1 ? 1 : W === 2 ? 2 : 3);
    });
  }

  test(`world ${W}: FusedMoE EP layouts agree bit for bit, and report per-expert token counts`, async (t) => {
    const out = await moeRuns.get(W)!();
    assertRanksOk(t, out);
    for (const c of CASES) {
      const ref = reference(c);
      // EP over the world: every rank's rows concatenated = the whole input; counts sum to the reference's.
      const ep = out.results.map((r) => r!.runs.find((x) => x.case === c.name && x.layout === `ep${W}`)!);
      const total = new Array<number>(E).fill(0);
      const local = new Array<number>(E).fill(0);
      for (const run of ep) {
        run.tokensPerExpert.forEach((v, e) => (total[e]! += v));
        run.localExperts.forEach((e, j) => (local[e]! += run.localExpertTokens[j]!));
        t.is(run.ep, W);
        t.is(run.localExperts.length, E / W);
      }
      t.deepEqual(total, ref.tokensPerExpert, c.name);
      t.deepEqual(local, ref.tokensPerExpert, `${c.name}: rows each expert processed`);
      if (c.name.startsWith('skewed')) {
        t.deepEqual(ref.tokensPerExpert, c.k === 1 ? [0, 0, 0, T_GLOBAL] : [0, 0, T_GLOBAL, T_GLOBAL]);
        // at EP 4 the ranks of experts 0 and 1 receive zero rows
        if (W === 4) t.deepEqual(ep.map((run) => run.localExpertTokens[0]), c.k === 1 ? [0, 0, 0, T_GLOBAL] : [0, 0, T_GLOBAL, T_GLOBAL]);
      }
      if (c.name.includes('empty') && W > 1) t.deepEqual(ep[W - 1]!.rows, [0, 0], 'the last rank holds no tokens');
    }
  });
}

test('FusedMoE: EP 1, 2 and 4 give bit-identical outputs on integer-friendly data (top-1 and top-2)', async (t) => {
  const outs = await Promise.all(WORLD_SIZES.map((W) => moeRuns.get(W)!()));
  outs.forEach((o) => assertRanksOk(t, o));
  for (const name of ['int-top1', 'int-top2', 'skewed-top2', 'int-top2-empty']) {
    const whole = outs.map((o, i) => {
      const W = WORLD_SIZES[i]!;
      const rows = new Array<number>(T_GLOBAL * H);
      for (const r of o.results) {
        const run = r!.runs.find((x) => x.case === name && x.layout === `ep${W}`)!;
        run.out.forEach((v, j) => (rows[run.rows[0] * H + j] = v));
      }
      return rows;
    });
    t.deepEqual(whole[1], whole[0], `${name}: EP 2 vs EP 1`);
    t.deepEqual(whole[2], whole[0], `${name}: EP 4 vs EP 1`);
  }
});

// ---------------------------------------------------------------------------------------------------------
// MixtralForCausalLM

const PROMPT = [3, 17, 5, 42, 8, 29, 11];

function refGreedy(config: RefConfig, weights: RefWeights, prompt: number[], n: number): number[] {
  const ids = prompt.slice();
  const V = config.vocab_size;
  const outIds: number[] = [];
  for (let i = 0; i < n; i++) {
    const logits = referenceMixtralForward(config, weights, ids);
    const last = logits.subarray((ids.length - 1) * V, ids.length * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (last[v]! > last[best]!) best = v;
    ids.push(best);
    outIds.push(best);
  }
  return outIds;
}

let mixDir = '';
let mix: { config: RefConfig; weights: RefWeights } | null = null;
const mixtralRun = sharedRun(async () => {
  mixDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-mixtral-'));
  mix = await writeTinyMixtral(mixDir, { shards: 2, seed: 21 });
  return runRanks<{ rank: number; layouts: MixtralLayoutResult[] }>(4, 'dist_moe', 'mixtral', { args: [mixDir, PROMPT.join(',')], timeoutMs: 90_000 });
});

test('Mixtral on 4 ranks: EP 1/2/4, TP 2 and TP 2 × EP 4 give the float64 reference logits (1e-4 of max |logit|) and identical greedy tokens', async (t) => {
  const out = await mixtralRun();
  assertRanksOk(t, out);
  const { config, weights } = mix!;
  const ref = referenceMixtralForward(config, weights, PROMPT);
  const scale = Math.max(...Array.from(ref, Math.abs));
  const greedy = refGreedy(config, weights, PROMPT, 6);
  for (const r of out.results) {
    t.deepEqual(r!.layouts.map((l) => l.layout), ['ep1', 'ep2', 'ep4', 'tp2', 'tp2ep4']);
    for (const l of r!.layouts) {
      const err = Math.max(...l.promptLogits.map((v, i) => Math.abs(v - ref[i]!)));
      t.true(err <= 1e-4 * scale, `${l.layout} rank ${r!.rank}: max |Δlogit| ${err} vs bound ${1e-4 * scale}`);
      t.deepEqual(l.greedy, greedy, `${l.layout} rank ${r!.rank}: greedy tokens`);
    }
  }
});

test('Mixtral on 4 ranks: each rank holds and reads only its experts', async (t) => {
  const out = await mixtralRun();
  assertRanksOk(t, out);
  const by = (rank: number, layout: string) => out.results[rank]!.layouts.find((l) => l.layout === layout)!;
  for (let rank = 0; rank < 4; rank++) {
    t.deepEqual(by(rank, 'ep1').localExperts, [0, 1, 2, 3]);
    t.deepEqual(by(rank, 'ep2').localExperts, (rank & 1) === 0 ? [0, 1] : [2, 3]);
    t.deepEqual(by(rank, 'ep4').localExperts, [rank]);
    t.deepEqual(by(rank, 'tp2ep4').localExperts, [rank]);
    t.is(by(rank, 'tp2').tp, 2);
    t.is(by(rank, 'tp2').ep, 1);
    t.is(by(rank, 'tp2ep4').ep, 4);
    t.true(by(rank, 'ep4').parameterBytes < by(rank, 'ep2').parameterBytes);
    t.true(by(rank, 'ep2').parameterBytes < by(rank, 'ep1').parameterBytes);
    // experts 2 and 3 live in the second file only: ranks holding experts 0/1 never open it
    const files = by(rank, 'ep4').checkpointFiles;
    t.deepEqual(files, rank < 2 ? ['model-00001-of-00002.safetensors'] : ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    // load balance: the last forward's routed tokens per expert (one decode token, top-2)
    for (const counts of by(rank, 'ep1').tokensPerExpert) t.is(counts.reduce((a, b) => a + b, 0), 2);
  }
});

test('parseMixtralConfig: defaults, and MoE variants tpkit does not implement are UNSUPPORTED naming the field', (t) => {
  const base = { architectures: ['MixtralForCausalLM'], hidden_size: 64, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 8 };
  const c = parseMixtralConfig(base);
  t.is(c.numLocalExperts, 8);
  t.is(c.numExpertsPerTok, 2);
  t.is(c.slidingWindow, null);
  t.is(parseMixtralConfig({ ...base, router_jitter_noise: 0.1, output_router_logits: true }).numLocalExperts, 8);
  const cases: [Record<string, unknown>, string][] = [
    [{ shared_expert_intermediate_size: 128 }, 'config.json: shared_expert_intermediate_size = 128 is not supported (shared experts are not implemented)'],
    [{ n_shared_experts: 2 }, 'n_shared_experts = 2 is not supported (shared experts are not implemented)'],
    [{ norm_topk_prob: false }, 'norm_topk_prob = false is not supported (the Mixtral router always renormalises the top-k weights)'],
    [{ scoring_func: 'sigmoid' }, 'scoring_func = "sigmoid" is not supported'],
    [{ topk_method: 'noaux_tc' }, 'topk_method = "noaux_tc" is not supported'],
    [{ n_group: 8 }, 'n_group = 8 is not supported (grouped expert routing is not implemented)'],
    [{ routed_scaling_factor: 2.5 }, 'routed_scaling_factor = 2.5 is not supported'],
    [{ mlp_only_layers: [0] }, 'mlp_only_layers = [0] is not supported'],
    [{ num_experts: 60 }, 'num_experts = 60 is not supported'],
    [{ architectures: ['Qwen2MoeForCausalLM'] }, 'architectures = ["Qwen2MoeForCausalLM"] is not supported'],
    [{ attention_bias: true }, 'attention_bias = true is not supported'],
  ];
  for (const [patch, message] of cases) {
    const e = t.throws(() => parseMixtralConfig({ ...base, ...patch }), { instanceOf: TpkitError });
    t.is(e?.code, 'UNSUPPORTED', message);
    t.true(e!.message.includes(message), `${e!.message} should include ${message}`);
  }
  const bad = t.throws(() => parseMixtralConfig({ ...base, num_local_experts: 2, num_experts_per_tok: 3 }), { instanceOf: TpkitError });
  t.is(bad?.code, 'CHECKPOINT_INVALID');
  t.is(bad?.message, 'config.json: expected at most num_local_experts 2 for num_experts_per_tok but received 3');
  // the Llama parser still refuses Mixtral
  t.throws(() => parseLlamaConfig(base), { instanceOf: TpkitError, message: /architectures = \["MixtralForCausalLM"\] is not supported/ });
});

test('MixtralForCausalLM in one process matches the reference; a Llama directory is UNSUPPORTED', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-mixtral1-'));
  const { config, weights } = await writeTinyMixtral(dir, { seed: 5, topK: 1, numLayers: 1 });
  const model = await MixtralForCausalLM.fromPretrained(dir);
  const cache = model.createCache(PROMPT.length);
  const [logits] = await model.forward([{ ids: PROMPT, cache }], { allPositions: true });
  cache.dispose();
  const ref = referenceMixtralForward(config, weights, PROMPT);
  const scale = Math.max(...Array.from(ref, Math.abs));
  t.true(Math.max(...Array.from(logits!, (v, i) => Math.abs(v - ref[i]!))) <= 1e-4 * scale);
  t.is(model.mixtralConfig.numExpertsPerTok, 1);
  // tpkit plan counts what the model holds (router + every expert at EP 1)
  t.is(shardElements(model.config, 1, 1, 0).total * 4, model.parameterBytes);
  t.is(moeAllToAllBytes({ tokens: 10, hidden: 32, topK: 2, ep: 4, bytesPerElement: 2, layers: 3 }), 2 * 10 * 2 * 32 * 2 * 0.75 * 3);
  t.is(moeAllToAllBytes({ tokens: 10, hidden: 32, topK: 2, ep: 1, bytesPerElement: 2, layers: 3 }), 0);
  model.dispose();
  t.throws(() => model.createCache(2), { message: 'MixtralForCausalLM was used after dispose()' });
  const cfg = JSON.parse(await fsp.readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  await fsp.writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, architectures: ['LlamaForCausalLM'] }));
  await t.throwsAsync(MixtralForCausalLM.fromPretrained(dir), { instanceOf: TpkitError, message: /architectures = \["LlamaForCausalLM"\] is not supported/ });
  await fsp.rm(dir, { recursive: true, force: true });
});

test.after.always(async () => {
  if (mixDir) await fsp.rm(mixDir, { recursive: true, force: true });
  if (caseFile) await fsp.rm(path.dirname(caseFile), { recursive: true, force: true });
});
