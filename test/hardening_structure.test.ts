/**
 * Issue 14 item 10: one module (lib/backend/index.ts) owns device dispatch; no import cycle between lib/tensor.ts
 * and the backends; the cuda backend stays lazily loaded; nothing outside lib/backend casts `Tensor._storage`.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import test from 'ava';

const ROOT = join(__dirname, '..', '..');

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...tsFiles(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

test('lib/backend imports nothing of lib/tensor.ts (no tensor ↔ backend cycle)', (t) => {
  for (const f of tsFiles(join(ROOT, 'lib', 'backend'))) {
    const text = readFileSync(f, 'utf8');
    t.false(/from '\.\.\/tensor'/.test(text), `${f} imports lib/tensor.ts`);
  }
  const tensor = readFileSync(join(ROOT, 'lib', 'tensor.ts'), 'utf8');
  t.false(/backend\/cuda/.test(tensor), 'lib/tensor.ts names the cuda backend (dispatch belongs to lib/backend/index.ts)');
});

test('nothing outside lib/backend casts Tensor._storage', (t) => {
  const allowed = new Set<string>();
  const offenders = tsFiles(join(ROOT, 'lib'))
    .map((f) => f.slice(ROOT.length + 1))
    .filter((f) => !f.startsWith('lib/backend/') && !allowed.has(f))
    .filter((f) => /_storage as\b/.test(readFileSync(join(ROOT, f), 'utf8')));
  t.deepEqual(offenders, []);
});

test('a CPU-only process never loads the cuda backend or addon', (t) => {
  const script = `
    const { Tensor } = require(${JSON.stringify(join(ROOT, 'dist', 'lib', 'tensor.js'))});
    const { matmul } = require(${JSON.stringify(join(ROOT, 'dist', 'lib', 'ops.js'))});
    (async () => {
      const a = Tensor.arange([2, 2]);
      await (await matmul(a, a)).toFloat32Array();
      const loaded = Object.keys(require.cache).filter((k) => /backend[\\\\/]cuda|native[\\\\/]cuda|tpkit_cuda/.test(k));
      console.log(JSON.stringify(loaded));
    })();`;
  const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  t.deepEqual(JSON.parse(out.trim()), []);
});

test('CI gates: .ci/run lints, builds the API reference with warnings as errors, and checks a coverage floor on lib/', (t) => {
  const ci = readFileSync(join(ROOT, '.ci', 'run'), 'utf8');
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>; devDependencies: Record<string, string> };
  for (const step of ['npm run lint', 'npm run docs -- --treatWarningsAsErrors', 'npm run coverage']) t.true(ci.includes(step), step);
  t.is(pkg.scripts.lint, 'eslint .');
  t.regex(pkg.scripts.coverage!, /^npm run build:ts --silent && c8 --check-coverage --lines (\d+) --statements \d+ --branches \d+ --functions \d+ --include 'lib\/\*\*'/);
  t.true(Number(/--lines (\d+)/.exec(pkg.scripts.coverage!)![1]) >= 94, 'the floor is never lowered');
  for (const dep of ['eslint', 'typescript-eslint', 'c8']) t.truthy(pkg.devDependencies[dep], dep);
});
