/**
 * `tpkit generate` as a user runs it: bad flags are one line on stderr and exit code 2 before any rank starts;
 * a run at TP 2 writes the JSON report with the float64 reference's greedy tokens; `--prompt` tokenizes with
 * the directory's tokenizer.json (through @huggingface/tokenizers) and decodes the new tokens.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { referenceGreedy } from './helpers/llama_reference';
import type { RefConfig, RefWeights } from './helpers/llama_reference';
import { writeTinyModel } from './helpers/tiny_models';

const CLI = path.join(__dirname, '..', 'lib', 'cli.js');
const WORDS = ['hello', 'world', 'the', 'cat', 'sat', 'on', 'mat', 'a', 'dog'];

let root = '';
let dir = '';
let model: { config: RefConfig; weights: RefWeights };

function run(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'generate', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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

test.before(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'tpkit-generate-cli-'));
  dir = path.join(root, 'model');
  model = await writeTinyModel(dir, { vocabSize: 64, numHeads: 4, numKvHeads: 2, seed: 21 });
  const vocab: Record<string, number> = { '[UNK]': 0 };
  WORDS.forEach((w, i) => (vocab[w] = i + 1));
  for (let i = WORDS.length + 1; i < 64; i++) vocab[`w${i}`] = i;
  const tokenizer = {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', vocab, unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100 },
  };
  await fsp.writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
});

test.after.always(async () => {
  if (root) await fsp.rm(root, { recursive: true, force: true });
});

test('bad flags: one line on stderr, exit code 2, no rank started', async (t) => {
  const noTok = path.join(root, 'no-tokenizer');
  await fsp.mkdir(noTok, { recursive: true });
  await fsp.copyFile(path.join(dir, 'config.json'), path.join(noTok, 'config.json'));
  const cases: [string[], RegExp][] = [
    [['--prompt-ids', '1,2', '--max-new-tokens', '2'], /required option --model-dir/],
    [['--model-dir', path.join(root, 'nowhere'), '--prompt-ids', '1', '--max-new-tokens', '2'], /has no config\.json/],
    [['--model-dir', dir, '--max-new-tokens', '2'], /one of --prompt-ids <ids> or --prompt <text> is required/],
    [['--model-dir', dir, '--prompt-ids', '1', '--prompt', 'hello', '--max-new-tokens', '2'], /either --prompt-ids or --prompt, not both/],
    [['--model-dir', dir, '--prompt-ids', '1,x', '--max-new-tokens', '2'], /token ids/],
    [['--model-dir', dir, '--prompt-ids', '1.5', '--max-new-tokens', '2'], /token ids/],
    [['--model-dir', dir, '--prompt-ids', '1', '--max-new-tokens', '2', '--tp', '0'], /--tp|positive integer/],
    [['--model-dir', dir, '--prompt-ids', '1'], /required option --max-new-tokens/],
    [['--model-dir', noTok, '--prompt', 'hello', '--max-new-tokens', '2'], /--prompt needs .*tokenizer\.json/],
  ];
  for (const [args, message] of cases) {
    const r = await run(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    const lines = r.stderr.trim().split('\n');
    t.is(lines.length, 1, `${args.join(' ')}: one line, got ${r.stderr}`);
    t.regex(lines[0]!, message, args.join(' '));
    t.false(r.stdout.includes('loaded in'), 'no rank started');
  }
});

test('a run at TP 2 writes the JSON report with the reference greedy tokens', async (t) => {
  const json = path.join(root, 'out.json');
  const prompt = [5, 9, 2, 30];
  const r = await run(['--model-dir', dir, '--prompt-ids', prompt.join(','), '--max-new-tokens', '5', '--tp', '2', '--ignore-eos', '--json', json], 120_000);
  t.is(r.code, 0, r.stderr);
  const rep = JSON.parse(await fsp.readFile(json, 'utf8')) as Record<string, unknown> & { timings: Record<string, number>; weightBytesPerRank: number[]; lastLogits: number[] };
  t.deepEqual(rep.promptIds, prompt);
  t.deepEqual(rep.generatedIds, referenceGreedy(model.config, model.weights, prompt, 5, []));
  t.is(rep.tp, 2);
  t.is(rep.pp, 1);
  t.is(rep.lastLogits.length, 64);
  t.is(rep.weightBytesPerRank.length, 2);
  for (const k of ['loadMs', 'prefillMs', 'decodeMsPerToken', 'tokensPerSecond']) t.true(typeof rep.timings[k] === 'number' && rep.timings[k]! >= 0, k);
});

test('--prompt tokenizes with tokenizer.json and decodes the new tokens', async (t) => {
  const json = path.join(root, 'text.json');
  const r = await run(['--model-dir', dir, '--prompt', 'hello the cat sat', '--max-new-tokens', '3', '--ignore-eos', '--json', json], 120_000);
  t.is(r.code, 0, r.stderr);
  const rep = JSON.parse(await fsp.readFile(json, 'utf8')) as { promptIds: number[]; generatedIds: number[] };
  t.deepEqual(rep.promptIds, [1, 3, 4, 5]);
  t.deepEqual(rep.generatedIds, referenceGreedy(model.config, model.weights, [1, 3, 4, 5], 3, []));
  const words = rep.generatedIds.map((id) => (id >= 1 && id <= WORDS.length ? WORDS[id - 1]! : `w${id}`));
  t.true(r.stdout.includes(words.join(' ')), `decoded text in the output:\n${r.stdout}`);
});
