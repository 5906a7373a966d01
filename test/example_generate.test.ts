/**
 * The main job (`npm start`, examples/llama-generate) with `--tiny`: it writes the checkpoint once, runs
 * `tpkit generate` at TP 1, 2, 4 and TP 2 × PP 2, prints the table with every layout identical to TP 1 and
 * exits 0; a second run reuses the checkpoint; a bad flag exits 2.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const main = path.join(__dirname, '..', 'examples', 'llama-generate', 'main.js');

function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [main, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, out, err }));
  });
}

test('llama-generate --tiny: a bad flag exits 2 with one line', async (t) => {
  const r = await run(['--layouts', '1x0']);
  t.is(r.code, 2);
  t.is(r.err.trim().split('\n').length, 1, r.err);
  t.regex(r.err, /Expected TPxPP layouts such as 1x1,2x1,4x1,2x2 but received 1x0/);
});

test('llama-generate --tiny at TP 1, 2, 4 and TP 2 × PP 2 prints an identical table', async (t) => {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-example-generate-'));
  try {
    const r = await run(['--tiny', '--cache-dir', cache, '--max-new-tokens', '6']);
    t.is(r.code, 0, r.out + r.err);
    t.true(r.out.includes('# writing checkpoint'));
    const dir = path.join(cache, 'llama-tiny-random');
    t.true(fs.existsSync(path.join(dir, 'model.safetensors.index.json')));
    t.true(fs.readdirSync(dir).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length >= 2, 'several shards');
    const rows = r.out.split('\n').filter((l) => /^TP \d/.test(l) && l.includes('|'));
    t.deepEqual(rows.map((l) => l.split('|')[0]!.trim()), ['TP 1', 'TP 2', 'TP 4', 'TP 2 × PP 2']);
    for (const row of rows) t.is(row.split('|')[1]!.trim(), 'yes', row);
    t.regex(rows[3]!, /vs 0\.333 \(p 2, m 2\)/, 'the PP row shows (p−1)/(p+m−1) for p 2, m 2');
    t.regex(r.out, /every layout is identical to TP 1/);
    // The second run reuses the checkpoint.
    const again = await run(['--tiny', '--cache-dir', cache, '--layouts', '1x1,2x1', '--max-new-tokens', '2']);
    t.is(again.code, 0, again.out + again.err);
    t.false(again.out.includes('# writing checkpoint'));
    t.true(again.out.includes('# using the checkpoint'));
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
});
