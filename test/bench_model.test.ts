/**
 * Tests of `tpkit bench model` (bench/model_bench.ts): a missing model directory exits 2 with one line; on a
 * tiny model at TP 1 and 2 (PP 1) it writes a schema-valid JSON with one row per layout, the same greedy
 * tokens in both, and the transformers peer reported (skipped with its reason where torch / transformers
 * are not importable, as on the development machine).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { benchPrompt } from '../bench/model_bench';
import { MODEL_SCHEMA, validate, type ModelBenchResult } from '../bench/schema';
import { writeTinyModel } from './helpers/tiny_models';
import { runBench } from './helpers/spawn_collect';



test('bench model: the prompt is (i · 7919 + 13) mod vocab', (t) => {
  t.deepEqual(benchPrompt(4, 97), [13, 7932 % 97, 15851 % 97, 23770 % 97]);
});

test('bench model: a directory without config.json exits 2 with one line', async (t) => {
  const r = await runBench(['model', '--model-dir', path.join(os.tmpdir(), 'tpkit-no-such-model'), '--tp', '1']);
  t.is(r.code, 2);
  t.regex(r.stderr, /^tpkit bench model: \S+ has no config\.json \(run npm start once/);
  t.is(r.stderr.trim().split('\n').length, 1);
});

test('bench model: tiny model at TP 1 and 2, schema-valid JSON, peer reported', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-bench-model-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const model = path.join(dir, 'model');
  await writeTinyModel(model, { numLayers: 2, shards: 2 });
  const json = path.join(dir, 'model.json');
  // A python that cannot import torch makes the skip path deterministic wherever the test runs.
  const r = await runBench(['model', '--model-dir', model, '--tp', '1,2', '--pp', '1', '--prompt-tokens', '5', '--new-tokens', '3', '--runs', '2', '--json', json],
    { TPKIT_BENCH_PYTHON: process.env.TPKIT_TEST_HF_PYTHON ?? 'python3' });
  t.is(r.code, 0, r.stdout + r.stderr);
  const res = JSON.parse(fs.readFileSync(json, 'utf8')) as ModelBenchResult;
  t.deepEqual(validate(MODEL_SCHEMA, res), []);
  t.is(res.schema, 'tpkit.bench.model/1');
  t.deepEqual(res.rows.map((x) => [x.tp, x.pp, x.worldSize]), [[1, 1, 1], [2, 1, 2]]);
  for (const row of res.rows) {
    t.is(row.promptTokens, 5);
    t.is(row.newTokens, 3);
    t.is(row.runs, 2);
    t.is(row.tokens.length, 3);
    t.true(row.prefillTokensPerSecond > 0);
    t.true(row.decodeMsPerToken > 0);
    t.is(row.weightBytesPerRank.length, row.worldSize);
  }
  t.deepEqual(res.rows[1]!.tokens, res.rows[0]!.tokens, 'TP 2 generates the same greedy tokens as TP 1');
  t.true(res.rows[1]!.weightBytesPerRank[0]! < res.rows[0]!.weightBytesPerRank[0]!, 'TP 2 holds less per rank');
  const peer = res.peers?.hf;
  t.truthy(peer, 'the transformers peer is reported');
  if (peer!.status === 'skipped') {
    t.regex(peer!.reason ?? '', /torch and transformers are not importable|cannot be started/);
    t.regex(r.stdout, /# transformers peer skipped: /);
    t.is(res.peerRows, undefined);
  } else {
    t.is(res.peerRows!.hf!.tokens.length, 3);
  }
  t.regex(r.stdout, /tokens = first/);
});
