/**
 * Launch mistakes caught at rendezvous, before Gloo connects (issue 14 item 6 and the rendezvous part of item 5):
 * two processes given the same RANK (the second fails at once with DUPLICATE_RANK instead of Gloo retrying its
 * connect for several timeouts) and ranks that disagree on WORLD_SIZE (WORLD_SIZE_MISMATCH naming both values,
 * instead of Gloo's `enforce fail at address.cc`). Processes are started by hand with the variables a launcher
 * would set; the test hosts the store, as node 0's launcher would, so a slow process still finds it after the
 * others have finished.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import path from 'node:path';

import { TCPStoreServer } from '../lib';

const FIXTURE = path.join(__dirname, 'fixtures', 'rendezvous_join.js');

interface Outcome {
  ok: boolean;
  rank?: number;
  sum?: number;
  code?: string;
  message?: string;
  ms?: number;
}

function join(env: Record<string, string>): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FIXTURE], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.on('close', () => {
      clearTimeout(timer);
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line) as Outcome);
      } catch {
        resolve({ ok: false, code: 'NO_OUTPUT', message: `${out}\n${err}` });
      }
    });
  });
}

async function store(t: import('ava').ExecutionContext): Promise<Record<string, string>> {
  const server = await TCPStoreServer.listen('127.0.0.1', 0, { timeoutMs: 30_000 });
  t.teardown(() => server.close());
  return {
    MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(server.port), TPKIT_USE_LAUNCHER_STORE: '1', TPKIT_RUN_ID: `rv-${server.port}`,
    LOCAL_RANK: '0', LOCAL_WORLD_SIZE: '1', JOIN_TIMEOUT_MS: '30000',
  };
}

test('two processes with the same RANK: the second fails at once with DUPLICATE_RANK; the others run', async (t) => {
  const env = { ...(await store(t)), WORLD_SIZE: '2' };
  const outs = await Promise.all([join({ ...env, RANK: '0' }), join({ ...env, RANK: '1' }), join({ ...env, RANK: '1' })]);
  const dup = outs.filter((o) => o.code === 'DUPLICATE_RANK');
  t.is(dup.length, 1, JSON.stringify(outs));
  t.regex(dup[0]!.message!, /^initDistributed: another process already joined as rank 1 of 2 \(this is pid \d+ on .*\); check RANK/);
  // Well before the 30 s join timeout (Gloo's retries took 5 timeouts); the margin covers addon loading and the
  // store connection of three processes started at once on a loaded 2-core machine under coverage (6.1 s seen).
  t.true(dup[0]!.ms! < 15_000, `found in ${dup[0]!.ms} ms (the join timeout is 30 s; Gloo's retries took 5 timeouts)`);
  const ok = outs.filter((o) => o.ok);
  t.is(ok.length, 2, JSON.stringify(outs));
  for (const o of ok) t.is(o.sum, 3);
});

test('ranks that disagree on WORLD_SIZE fail with WORLD_SIZE_MISMATCH naming both values, within the timeout', async (t) => {
  const env = await store(t);
  const [r0, r1] = await Promise.all([join({ ...env, RANK: '0', WORLD_SIZE: '2' }), join({ ...env, RANK: '1', WORLD_SIZE: '3' })]);
  t.is(r1!.code, 'WORLD_SIZE_MISMATCH', JSON.stringify(r1));
  t.regex(r1!.message!, /rank 1 has WORLD_SIZE 3 but rank 0 \(host .*\) has WORLD_SIZE 2/);
  t.is(r0!.code, 'WORLD_SIZE_MISMATCH', JSON.stringify(r0));
  t.regex(r0!.message!, /rank 0 has WORLD_SIZE 2 but rank 1 has 3/);
  t.true(r0!.ms! < 15_000 && r1!.ms! < 15_000, `${r0!.ms} / ${r1!.ms} ms (the join timeout is 30 s)`);
});
