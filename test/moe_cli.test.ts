/**
 * The mixture-of-experts commands as a user runs them: `tpkit generate --ep` on a Mixtral directory the test
 * writes (tokens against the float64 Mixtral reference, identical at EP 1 and EP 2), and `tpkit bench moe`
 * (its JSON valid against the schema, one row per EP size, outputs equal to EP 1's, token counts adding up).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { MOE_SCHEMA, validate, type MoEBenchResult } from '../bench/schema';
import { argmax } from './helpers/llama_reference';
import type { RefConfig, RefWeights } from './helpers/llama_reference';
import { referenceMixtralForward } from './helpers/mixtral_reference';
import { writeTinyMixtral } from './helpers/tiny_mixtral';

const CLI = path.join(__dirname, '..', 'lib', 'cli.js');

let root = '';
let dir = '';
let model: { config: RefConfig; weights: RefWeights };

function run(args: string[], timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Greedy decoding with the float64 Mixtral reference (full forward per step, as transformers without a cache). */
function referenceGreedyMixtral(prompt: number[], n: number): number[] {
  const V = model.config.vocab_size;
  const ids = prompt.slice();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const logits = referenceMixtralForward(model.config, model.weights, ids);
    const next = argmax(logits.subarray((ids.length - 1) * V, ids.length * V));
    ids.push(next);
    out.push(next);
  }
  return out;
}

test.before(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-moe-cli-'));
  dir = path.join(root, 'mixtral');
  model = await writeTinyMixtral(dir, {});
});

test.after.always(async () => {
  if (root) await fsp.rm(root, { recursive: true, force: true });
});

test('tpkit generate --ep 1 and --ep 2 on a Mixtral directory give the reference greedy tokens', async (t) => {
  const prompt = [4, 11, 7, 2, 19];
  const expected = referenceGreedyMixtral(prompt, 4);
  for (const ep of [1, 2]) {
    const json = path.join(root, `ep${ep}.json`);
    const r = await run(['generate', '--model-dir', dir, '--prompt-ids', prompt.join(','), '--max-new-tokens', '4', '--ignore-eos', '--ep', String(ep), '--json', json]);
    t.is(r.code, 0, `ep ${ep}: ${r.stderr}`);
    const rep = JSON.parse(await fsp.readFile(json, 'utf8')) as { generatedIds: number[]; ep: number };
    t.is(rep.ep, ep);
    t.deepEqual(rep.generatedIds, expected, `ep ${ep}`);
  }
  const bad = await run(['generate', '--model-dir', dir, '--prompt-ids', '1', '--max-new-tokens', '1', '--ep', '3']);
  t.is(bad.code, 2, bad.stderr);
  t.is(bad.stderr.trim(), "tpkit generate: error: --ep 3 must divide the model's num_local_experts 4");
});

test('tpkit bench moe --json: schema-valid rows per EP size, outputs equal to EP 1, every routed token counted', async (t) => {
  const json = path.join(root, 'moe.json');
  const r = await run(['bench', 'moe', '--ep', '1,2', '--experts', '4', '--top-k', '2', '--hidden', '32', '--intermediate', '64', '--tokens', '8', '--iters', '2', '--warmup', '1', '--json', json]);
  t.is(r.code, 0, r.stderr);
  const res = JSON.parse(await fsp.readFile(json, 'utf8')) as MoEBenchResult;
  t.deepEqual(validate(MOE_SCHEMA, res), []);
  t.deepEqual(res.rows.map((row) => row.ep), [1, 2]);
  for (const row of res.rows) {
    t.is(row.expertsPerRank, 4 / row.ep);
    // Every token of the global batch (tokens × max EP) goes to top-k = 2 experts.
    t.is(row.tokensPerExpert.reduce((a, b) => a + b, 0), 8 * 2 * 2, `ep ${row.ep}`);
    t.true(row.maxAbsDiffVsEp1 <= 1e-5, `ep ${row.ep}: ${row.maxAbsDiffVsEp1}`);
    t.true(row.loadImbalance >= 1);
  }
  t.is(res.rows[0]!.maxAbsDiffVsEp1, 0);
});
