#!/usr/bin/env node
// Runs the ava suite with the TAP reporter, passes its output through, and ends with the plain closing line
// `N passed, N failed, N skipped` that CI reads. Exit code is ava's.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
const avaCli = path.join(path.dirname(require.resolve('ava')), 'cli.mjs');
const child = spawn(process.execPath, [avaCli, '--tap', ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'inherit'] });
let passed = 0, failed = 0, skipped = 0, todo = 0;
const rl = readline.createInterface({ input: child.stdout });
rl.on('line', (line) => {
  process.stdout.write(`${line}\n`);
  let m;
  if ((m = /^# pass (\d+)/.exec(line))) passed = Number(m[1]);
  else if ((m = /^# fail (\d+)/.exec(line))) failed = Number(m[1]);
  else if ((m = /^# skip (\d+)/.exec(line))) skipped = Number(m[1]);
  else if ((m = /^# todo (\d+)/.exec(line))) todo = Number(m[1]);
});
child.on('close', (code, signal) => {
  if (code !== 0 && failed === 0) failed = 1; // a crash of the runner itself counts as a failure
  process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}${todo ? `, ${todo} todo` : ''}\n`);
  process.exit(code ?? (signal ? 1 : 0));
});
