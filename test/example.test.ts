/**
 * The main job (`npm start`) with `--model tiny` at TP 1, 2 and 4: it must print the table and exit 0 with every
 * TP size equivalent to TP 1.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launch } from '../lib';

const main = path.join(__dirname, '..', 'examples', 'llama-layer', 'main.js');

function sink(lines: string[]): NodeJS.WritableStream {
  const { Writable } = require('node:stream') as typeof import('node:stream');
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
}

test('llama-layer --model tiny at TP 1, 2, 4 prints an equivalent table', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tpkit-example-'));
  const ckpt = path.join(dir, 'tiny.safetensors');
  const out: string[] = [];
  const err: string[] = [];
  try {
    const res = await launch({
      nprocPerNode: 4, script: main, args: ['--model', 'tiny', '--tokens', '5', '--runs', '2', '--checkpoint', ckpt],
      stdout: sink(out), stderr: sink(err), graceMs: 1000,
    });
    t.is(res.exitCode, 0, [...out, ...err].join('\n'));
    t.true(fs.existsSync(ckpt), 'the checkpoint was written');
    const rows = out.filter((l) => /^\[rank0\]:\s+\d+ \|/.test(l));
    t.deepEqual(rows.map((l) => Number(l.split('|')[0]!.replace('[rank0]:', '').trim())), [1, 2, 4]);
    for (const row of rows) t.regex(row, /\|\s+yes \|/, `probe bit-identical: ${row}`);
    t.true(out.some((l) => l.includes('every TP size is equivalent to TP=1')));
    // The second run loads the existing checkpoint instead of writing it again.
    const again: string[] = [];
    const res2 = await launch({ nprocPerNode: 2, script: main, args: ['--model', 'tiny', '--tokens', '3', '--runs', '1', '--tp', '1,2', '--checkpoint', ckpt], stdout: sink(again), stderr: sink(err) });
    t.is(res2.exitCode, 0, again.join('\n'));
    t.false(again.some((l) => l.includes('writing checkpoint')));
    const bad: string[] = [];
    const res3 = await launch({ nprocPerNode: 2, script: main, args: ['--model', 'tiny', '--tp', '1,4', '--checkpoint', ckpt], stdout: sink(bad), stderr: sink(bad) });
    t.not(res3.exitCode, 0, 'asking for more TP ranks than launched fails');
    t.true(bad.some((l) => l.includes('needs at least 4 ranks')), bad.join('\n'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
