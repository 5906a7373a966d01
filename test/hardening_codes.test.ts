/**
 * Issue 14 item 13: every error code the sources throw is listed in the exported TpkitErrorCode type (read from
 * lib/errors.ts), or belongs to one of its native-library families.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import test from 'ava';

const ROOT = join(__dirname, '..', '..');

function files(dir: string, exts: string[]): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...files(p, exts));
    else if (exts.some((e) => name.endsWith(e))) out.push(p);
  }
  return out;
}

function thrownCodes(): Map<string, string> {
  const found = new Map<string, string>();
  const patterns = [
    /new TpkitError\(\s*'([A-Z][A-Z0-9_]+)'/g,
    /TpkitError\(\s*[^,]*\?\s*'([A-Z][A-Z0-9_]+)'\s*:\s*'([A-Z][A-Z0-9_]+)'/g,
    /CodedError\{\s*"([A-Z][A-Z0-9_]+)"/g,
    /MakeTpkitError\(\s*[a-zA-Z_.()]+,\s*"([A-Z][A-Z0-9_]+)"/g,
    /return \{\s*"([A-Z][A-Z0-9_]+)",/g,
  ];
  for (const f of [...files(join(ROOT, 'lib'), ['.ts']), ...files(join(ROOT, 'native'), ['.cc', '.h', '.cu'])]) {
    const text = readFileSync(f, 'utf8');
    for (const re of patterns) {
      for (const m of text.matchAll(re)) for (const c of m.slice(1)) if (c) found.set(c, f.slice(ROOT.length + 1));
    }
  }
  return found;
}

test('every error code thrown in lib/ and native/ is listed in TpkitErrorCode', (t) => {
  const codes = thrownCodes();
  t.true(codes.size >= 20, `found only ${codes.size} codes: the patterns no longer match the sources`);
  const errors = readFileSync(join(ROOT, 'lib', 'errors.ts'), 'utf8');
  const decl = /export type TpkitErrorCode =([^;]*);/.exec(errors)![1]!;
  const listed = new Set([...decl.matchAll(/\| '([A-Z0-9_]+)'/g)].map((m) => m[1]!));
  const families = [...decl.matchAll(/\| `([A-Z0-9_]+)\$\{string\}`/g)].map((m) => m[1]!);
  t.deepEqual(families, ['NCCL_', 'CUBLAS_STATUS_', 'CUDA_ERROR_']);
  const missing = [...codes].filter(([c]) => !listed.has(c) && !families.some((p) => c.startsWith(p)));
  t.deepEqual(missing, []);
});
