/**
 * Tests of lib/distributed/store.ts: argument errors first (exact messages), then the store ops in one
 * process, blocking and timeouts, several processes, robustness against bad peers, authentication, and
 * dead-rank tracking.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import * as path from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { TpkitError } from '../lib/errors';
import { initDistributed } from '../lib/distributed/init';
import { DEAD_RANK_PREFIX, type StoreOptions, TCPStore, TCPStoreServer } from '../lib/distributed/store';

// The suite sets its own options; the caller's environment must not change them.
delete process.env.TPKIT_STORE_TOKEN;
delete process.env.TPKIT_TIMEOUT_MS;

const HOST = '127.0.0.1';
const WORKER = path.join(__dirname, 'fixtures', 'store_worker.js');

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/** A server and `n` clients, closed when the test ends. */
async function setup(
  t: ExecutionContext,
  n: number,
  opts: StoreOptions & { authTimeoutMs?: number } = {},
): Promise<{ server: TCPStoreServer; clients: TCPStore[] }> {
  const server = await TCPStoreServer.listen(HOST, 0, { timeoutMs: 5_000, ...opts });
  const clients: TCPStore[] = [];
  t.teardown(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  });
  for (let i = 0; i < n; i++) clients.push(await TCPStore.connect(HOST, server.port, { timeoutMs: 5_000, ...opts }));
  return { server, clients };
}

/** A port nobody listens on (bound, read back and released). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, HOST, resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

interface RawPeer {
  socket: net.Socket;
  /** The body of the server's first frame (the handshake). */
  handshake: Promise<Buffer>;
  /** Resolves when the server has closed the connection. */
  closed: Promise<void>;
}

/** A raw TCP connection to the store that speaks no protocol of its own. */
function rawConnect(port: number): RawPeer {
  const socket = net.connect({ host: HOST, port });
  socket.on('error', () => {}); // ECONNRESET when the server drops us: expected
  let received = Buffer.alloc(0);
  const handshake = new Promise<Buffer>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 4 && received.length >= 4 + received.readUInt32LE(0)) {
        resolve(received.subarray(4, 4 + received.readUInt32LE(0)));
      }
    });
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  return { socket, handshake, closed };
}

/** Resolves true when `p` settles within `ms`, false otherwise. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const done = await Promise.race([p.then(() => true), timeout]);
  clearTimeout(timer);
  return done;
}

function frame(op: number, reqId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.alloc(9 + payload.length);
  out.writeUInt32LE(5 + payload.length, 0);
  out[4] = op;
  out.writeUInt32LE(reqId, 5);
  payload.copy(out, 9);
  return out;
}

/** Deterministic pseudo-random bytes (mulberry32), so the garbage test is reproducible. */
function garbage(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    out[i] = (x ^ (x >>> 14)) & 0xff;
  }
  return out;
}

interface Worker {
  child: ChildProcess;
  /** Resolves with the first stdout line. */
  firstLine: Promise<string>;
  /** Resolves with the exit code (or signal) and all of stdout / stderr. */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

function spawnWorker(t: ExecutionContext, args: string[]): Worker {
  const child = spawn(process.execPath, [WORKER, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TPKIT_STORE_TOKEN: '', TPKIT_TIMEOUT_MS: '' },
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const firstLine = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      const nl = stdout.indexOf('\n');
      if (nl >= 0) resolve(stdout.slice(0, nl));
    });
    child.on('exit', () => reject(new Error(`worker exited before printing: ${stderr}`)));
  });
  firstLine.catch(() => {});
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>(
    (resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, firstLine, exit };
}

// ---------------------------------------------------------------------------------------------------------
// Invalid arguments: one test per input, exact messages
// ---------------------------------------------------------------------------------------------------------

type Thrower = () => Promise<unknown>;

const staticCases: Array<[string, Thrower, typeof TypeError | typeof RangeError, string]> = [
  ['listen: empty host', () => TCPStoreServer.listen('', 0), RangeError, 'Expected non-empty string for host but received  of type string'],
  ['listen: port 70000', () => TCPStoreServer.listen(HOST, 70000), RangeError, 'Expected integer in [0, 65536) for port but received 70000 of type number'],
  ['listen: port -1', () => TCPStoreServer.listen(HOST, -1), RangeError, 'Expected integer in [0, 65536) for port but received -1 of type number'],
  ['listen: string port', () => TCPStoreServer.listen(HOST, '1' as unknown as number), TypeError, 'Expected integer in [0, 65536) for port but received 1 of type string'],
  ['listen: empty token', () => TCPStoreServer.listen(HOST, 0, { token: '' }), RangeError, 'Expected non-empty string for token but received  of type string'],
  ['listen: maxMessageBytes 10', () => TCPStoreServer.listen(HOST, 0, { maxMessageBytes: 10 }), RangeError, 'Expected integer in [1024, 4294967296) for maxMessageBytes but received 10 of type number'],
  ['listen: authTimeoutMs 0', () => TCPStoreServer.listen(HOST, 0, { authTimeoutMs: 0 }), RangeError, 'Expected positive integer for authTimeoutMs but received 0 of type number'],
  ['connect: port 0', () => TCPStore.connect(HOST, 0), RangeError, 'Expected integer in [1, 65536) for port but received 0 of type number'],
  ['connect: port 65536', () => TCPStore.connect(HOST, 65536), RangeError, 'Expected integer in [1, 65536) for port but received 65536 of type number'],
  ['connect: host 42', () => TCPStore.connect(42 as unknown as string, 1), TypeError, 'Expected non-empty string for host but received 42 of type number'],
  ['connect: timeoutMs 0', () => TCPStore.connect(HOST, 1, { timeoutMs: 0 }), RangeError, 'Expected positive integer for timeoutMs but received 0 of type number'],
  ['connect: timeoutMs 1.5', () => TCPStore.connect(HOST, 1, { timeoutMs: 1.5 }), RangeError, 'Expected positive integer for timeoutMs but received 1.5 of type number'],
  ['connect: timeoutMs string', () => TCPStore.connect(HOST, 1, { timeoutMs: '5' as unknown as number }), TypeError, 'Expected positive integer for timeoutMs but received 5 of type string'],
  ['connect: rank -1', () => TCPStore.connect(HOST, 1, { rank: -1 }), RangeError, 'Expected non-negative integer for rank but received -1 of type number'],
  ['connect: opts null', () => TCPStore.connect(HOST, 1, null as unknown as StoreOptions), TypeError, 'Expected object for opts but received null'],
  ['create: isServer string', () => TCPStore.create({ host: HOST, port: 0, isServer: 'yes' as unknown as boolean }), TypeError, 'Expected boolean for isServer but received yes of type string'],
  ['create: client port 0', () => TCPStore.create({ host: HOST, port: 0, isServer: false }), RangeError, 'Expected integer in [1, 65536) for port but received 0 of type number'],
];

for (const [name, fn, type, message] of staticCases) {
  test(`rejects invalid argument — ${name}`, async (t) => {
    await t.throwsAsync(fn(), { instanceOf: type, message });
  });
}

test('rejects an invalid TPKIT_TIMEOUT_MS', async (t) => {
  process.env.TPKIT_TIMEOUT_MS = 'abc';
  const p = TCPStore.connect(HOST, 1); // the environment is read synchronously, in this call
  delete process.env.TPKIT_TIMEOUT_MS;
  await t.throwsAsync(p, { instanceOf: RangeError, message: 'Expected positive integer for TPKIT_TIMEOUT_MS but received abc of type string' });
});

const opCases: Array<[string, (s: TCPStore) => Promise<unknown>, typeof TypeError | typeof RangeError, string]> = [
  ['set: numeric key', (s) => s.set(42 as unknown as string, 'v'), TypeError, 'Expected non-empty string for key but received 42 of type number'],
  ['get: empty key', (s) => s.get(''), RangeError, 'Expected non-empty string for key but received  of type string'],
  ['get: key over 4096 bytes', (s) => s.get('x'.repeat(4097)), RangeError, `Expected string of at most 4096 UTF-8 bytes for key but received ${'x'.repeat(40)}… of type string`],
  ['get: timeoutMs -5', (s) => s.get('k', { timeoutMs: -5 }), RangeError, 'Expected positive integer for timeoutMs but received -5 of type number'],
  ['set: numeric value', (s) => s.set('k', 5 as unknown as string), TypeError, 'Expected Uint8Array or string for value but received 5 of type number'],
  ['add: fractional delta', (s) => s.add('k', 1.5), RangeError, 'Expected integer for delta but received 1.5 of type number'],
  ['add: string delta', (s) => s.add('k', '1' as unknown as number), TypeError, 'Expected integer for delta but received 1 of type string'],
  ['add: unsafe delta', (s) => s.add('k', 2 ** 60), RangeError, `Expected integer for delta but received ${2 ** 60} of type number`],
  ['wait: string keys', (s) => s.wait('k' as unknown as string[]), TypeError, 'Expected array of non-empty strings for keys but received k of type string'],
  ['wait: empty key in list', (s) => s.wait(['a', '']), RangeError, 'Expected non-empty string for keys[1] but received  of type string'],
  ['wait: timeoutMs string', (s) => s.wait(['a'], { timeoutMs: '1' as unknown as number }), TypeError, 'Expected positive integer for timeoutMs but received 1 of type string'],
  ['check: numeric key in list', (s) => s.check([1 as unknown as string]), TypeError, 'Expected non-empty string for keys[0] but received 1 of type number'],
  ['delete: undefined key', (s) => s.delete(undefined as unknown as string), TypeError, 'Expected non-empty string for key but received undefined of type undefined'],
];

for (const [name, fn, type, message] of opCases) {
  test(`rejects invalid argument — ${name}`, async (t) => {
    const { clients } = await setup(t, 1);
    await t.throwsAsync(fn(clients[0]!), { instanceOf: type, message });
  });
}

test('invalid arguments send nothing to the server', async (t) => {
  const { server, clients } = await setup(t, 1);
  const [s] = clients as [TCPStore];
  for (const [, fn] of opCases) await t.throwsAsync(fn(s));
  t.is(await s.numKeys(), 0);
  t.is(server.numWaiters, 0);
});

// ---------------------------------------------------------------------------------------------------------
// Ops in one process
// ---------------------------------------------------------------------------------------------------------

test('set / get / add / wait / check / delete / numKeys with two clients', async (t) => {
  const { clients } = await setup(t, 2);
  const [a, b] = clients as [TCPStore, TCPStore];

  const binary = Uint8Array.from({ length: 256 }, (_, i) => i);
  await a.set('bin', binary);
  t.deepEqual(new Uint8Array(await b.get('bin')), binary);
  await a.set('text', 'héllo');
  t.is((await b.get('text')).toString('utf8'), 'héllo');
  await a.set('empty', new Uint8Array(0));
  t.is((await b.get('empty')).length, 0);
  const big = crypto.randomBytes(1 << 20);
  await b.set('big', big);
  t.true((await a.get('big')).equals(big));
  // A view into a larger buffer sends only its own bytes.
  await a.set('view', binary.subarray(10, 20));
  t.deepEqual([...(await b.get('view'))], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);

  t.is(await a.add('n', 5), 5);
  t.is(await b.add('n', -2), 3);
  t.is(await b.add('n', 0), 3);
  t.is((await a.get('n')).toString(), '3'); // stored as a decimal string, like torch
  await a.set('notint', 'abc');
  const e = await t.throwsAsync(b.add('notint', 1), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_VALUE_NOT_INTEGER');

  t.true(await a.check(['bin', 'text']));
  t.false(await a.check(['bin', 'missing']));
  t.true(await a.check([]));
  await b.wait(['bin', 'n']);
  await b.wait([]);

  const before = await a.numKeys();
  t.is(before, 7);
  t.true(await b.delete('text'));
  t.false(await b.delete('text'));
  t.false(await a.check(['text']));
  t.is(await a.numKeys(), before - 1);
});

test('many ops in flight on one connection are matched to their answers', async (t) => {
  const { clients } = await setup(t, 2);
  const [a, b] = clients as [TCPStore, TCPStore];
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 === 0 ? a : b).add('c', 1)));
  t.deepEqual(results.sort((x, y) => x - y), Array.from({ length: 200 }, (_, i) => i + 1));
  const keys = Array.from({ length: 100 }, (_, i) => `k${i}`);
  const gets = Promise.all(keys.map((k) => a.get(k)));
  await Promise.all(keys.slice().reverse().map((k) => b.set(k, k)));
  t.deepEqual((await gets).map((v) => v.toString()), keys);
});

test('a value over the client\'s maxMessageBytes is refused before sending', async (t) => {
  const { server, clients } = await setup(t, 1);
  const small = await TCPStore.connect(HOST, server.port, { maxMessageBytes: 1024, timeoutMs: 5_000 });
  t.teardown(() => small.close());
  await t.throwsAsync(small.set('k', new Uint8Array(2000)), {
    instanceOf: RangeError,
    message: 'Expected a message of at most 1024 bytes (maxMessageBytes) for set of key "k" but it needs 2008 bytes',
  });
  t.is(await clients[0]!.numKeys(), 0);
  await small.set('k', 'fits');
});

test('a frame over the server\'s maxMessageBytes drops that client only', async (t) => {
  const { server, clients } = await setup(t, 1, { maxMessageBytes: 1024 });
  const big = await TCPStore.connect(HOST, server.port, { timeoutMs: 5_000 });
  t.teardown(() => big.close());
  const e = await t.throwsAsync(big.set('k', new Uint8Array(2000)), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
  await clients[0]!.set('k', 'small');
  t.is((await clients[0]!.get('k')).toString(), 'small');
});

test('get blocks until another client sets the key; responses come out of order', async (t) => {
  const { server, clients } = await setup(t, 2);
  const [a, b] = clients as [TCPStore, TCPStore];
  let got: Buffer | undefined;
  const pending = a.get('late').then((v) => (got = v));
  const waiting = a.wait(['late', 'later']);
  // Ops issued after the blocked ones answer first on the same connection.
  await a.set('other', 'x');
  t.is((await a.get('other')).toString(), 'x');
  t.is(got, undefined);
  t.is(server.numWaiters, 2);
  await b.set('late', 'arrived');
  await pending;
  t.is(got!.toString(), 'arrived');
  t.false(await within(waiting, 100));
  await b.set('later', '1');
  await waiting;
  t.is(server.numWaiters, 0);
});

test('a missing key times out with TIMEOUT naming the key, and the server drops the waiter', async (t) => {
  const { server, clients } = await setup(t, 1);
  const [s] = clients as [TCPStore];
  let started = Date.now();
  const e = await t.throwsAsync(s.get('foo', { timeoutMs: 300 }), { instanceOf: TpkitError });
  const elapsed = Date.now() - started;
  t.is(e?.code, 'TIMEOUT');
  t.is(e?.message, 'store get of key "foo" timed out after 300 ms');
  t.true(elapsed >= 290 && elapsed < 5000, `took ${elapsed} ms`);

  started = Date.now();
  const w = await t.throwsAsync(s.wait(['a', 'b'], { timeoutMs: 200 }), { instanceOf: TpkitError });
  t.is(w?.code, 'TIMEOUT');
  t.is(w?.message, 'store wait for keys "a", "b" timed out after 200 ms');
  t.true(Date.now() - started < 5000);

  // The CANCEL reached the server: no waiter is left behind (numKeys is answered after the CANCEL).
  await s.numKeys();
  t.is(server.numWaiters, 0);
  // The store's own timeoutMs applies when no per-op one is given.
  // (1 s: the connect itself shares that timeout, and a loaded 2-core machine can take a few hundred ms.)
  const short = await TCPStore.connect(HOST, server.port, { timeoutMs: 1_000 });
  t.teardown(() => short.close());
  const e2 = await t.throwsAsync(short.get('bar'), { instanceOf: TpkitError });
  t.is(e2?.message, 'store get of key "bar" timed out after 1000 ms');
});

test('close() rejects pending ops with STORE_CLOSED, is idempotent, and later ops reject too', async (t) => {
  const { server, clients } = await setup(t, 1);
  const s = await TCPStore.connect(HOST, server.port, { timeoutMs: 5_000 });
  const pending = s.get('never');
  const c1 = s.close();
  const c2 = s.close();
  t.is(c1, c2);
  const e = await t.throwsAsync(pending, { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_CLOSED');
  t.regex(e!.message, /get of key "never"/);
  await c1;
  const e2 = await t.throwsAsync(s.set('k', 'v'), { instanceOf: TpkitError });
  t.is(e2?.code, 'STORE_CLOSED');
  // The server dropped the closed client's waiter.
  await clients[0]!.numKeys();
  t.is(server.numWaiters, 0);
});

test('server close() makes clients fail with STORE_UNREACHABLE; it is idempotent', async (t) => {
  const server = await TCPStoreServer.listen(HOST, 0);
  const s = await TCPStore.connect(HOST, server.port, { timeoutMs: 5_000 });
  t.teardown(() => s.close());
  const pending = s.get('never');
  await Promise.all([server.close(), server.close()]);
  const e = await t.throwsAsync(pending, { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
  t.true(e!.message.includes(`${HOST}:${server.port}`));
  const e2 = await t.throwsAsync(s.numKeys(), { instanceOf: TpkitError });
  t.is(e2?.code, 'STORE_UNREACHABLE');
});

test('create() with isServer owns the server; another rank joins with create()', async (t) => {
  const master = await TCPStore.create({ host: HOST, port: 0, isServer: true, rank: 0, timeoutMs: 5_000 });
  t.true(master.port > 0);
  const worker = await TCPStore.create({ host: HOST, port: master.port, isServer: false, rank: 1, timeoutMs: 5_000 });
  await worker.set('x', 'y');
  t.is((await master.get('x')).toString(), 'y');
  await worker.close();
  await master.close();
  // The server went with its owner.
  const e = await t.throwsAsync(TCPStore.connect(HOST, master.port, { timeoutMs: 300 }), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
});

test('listening on a taken port rejects with STORE_LISTEN_FAILED', async (t) => {
  const { server } = await setup(t, 0);
  const e = await t.throwsAsync(TCPStoreServer.listen(HOST, server.port), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_LISTEN_FAILED');
  t.true(e!.message.includes(`${HOST}:${server.port}`));
});

test('the server binds exactly the host it is given', async (t) => {
  const { server } = await setup(t, 0);
  t.is(server.host, HOST);
  // Not reachable through another local address of the machine (the wildcard was not bound).
  const e = await t.throwsAsync(TCPStore.connect('127.0.0.2', server.port, { timeoutMs: 300 }), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
});

test('connect() to a port nobody listens on rejects with STORE_UNREACHABLE after its timeout', async (t) => {
  const port = await freePort();
  const started = Date.now();
  const e = await t.throwsAsync(TCPStore.connect(HOST, port, { timeoutMs: 500 }), { instanceOf: TpkitError });
  const elapsed = Date.now() - started;
  t.is(e?.code, 'STORE_UNREACHABLE');
  t.true(e!.message.includes(`${HOST}:${port}`), e!.message);
  t.true(elapsed >= 450 && elapsed < 5000, `took ${elapsed} ms`);
});

test('connect() retries until the server comes up', async (t) => {
  const port = await freePort();
  const connecting = TCPStore.connect(HOST, port, { timeoutMs: 5_000 });
  await new Promise((r) => setTimeout(r, 300));
  const server = await TCPStoreServer.listen(HOST, port);
  const s = await connecting;
  t.teardown(async () => {
    await s.close();
    await server.close();
  });
  t.is(await s.add('c', 1), 1);
});

test('TPKIT_TIMEOUT_MS sets the default timeout', async (t) => {
  const port = await freePort();
  process.env.TPKIT_TIMEOUT_MS = '300';
  const p = TCPStore.connect(HOST, port);
  delete process.env.TPKIT_TIMEOUT_MS;
  const started = Date.now();
  const e = await t.throwsAsync(p, { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
  // Far below the 300 s default; the margin absorbs a loaded 2-core machine (1.3 s failed once under the full suite).
  t.true(Date.now() - started < 5000, `${Date.now() - started} ms`);
  t.regex(e!.message, /within 300 ms/);
});

// ---------------------------------------------------------------------------------------------------------
// Several processes
// ---------------------------------------------------------------------------------------------------------

test('two worker processes rendezvous through the store', async (t) => {
  const { clients } = await setup(t, 1);
  const [s] = clients as [TCPStore];
  const port = s.port;
  const w0 = spawnWorker(t, ['rendezvous', HOST, String(port), '0', '1']);
  const w1 = spawnWorker(t, ['rendezvous', HOST, String(port), '1', '0']);
  const [r0, r1] = await Promise.all([w0.exit, w1.exit]);
  t.is(r0.code, 0, r0.stderr);
  t.is(r1.code, 0, r1.stderr);
  const out0 = JSON.parse(r0.stdout) as { rank: number; added: number; fromPeer: string };
  const out1 = JSON.parse(r1.stdout) as { rank: number; added: number; fromPeer: string };
  t.deepEqual([out0.added, out1.added].sort(), [1, 2]);
  t.is(out0.fromPeer, 'hello from 1');
  t.is(out1.fromPeer, 'hello from 0');
  t.is((await s.get('counter')).toString(), '2');
  // Both closed cleanly: no rank is reported dead.
  t.false(await s.check([`${DEAD_RANK_PREFIX}0`]));
  t.false(await s.check([`${DEAD_RANK_PREFIX}1`]));
});

test('a killed rank is reported under __tpkit/dead/<rank>; a clean close reports nothing', async (t) => {
  const { clients } = await setup(t, 1);
  const [s] = clients as [TCPStore];
  const killed = spawnWorker(t, ['hold', HOST, String(s.port), '3']);
  const clean = spawnWorker(t, ['clean', HOST, String(s.port), '4']);
  t.is(await killed.firstLine, 'ready');
  t.false(await s.check([`${DEAD_RANK_PREFIX}3`]));
  killed.child.kill('SIGKILL');
  const reason = (await s.get(`${DEAD_RANK_PREFIX}3`, { timeoutMs: 5_000 })).toString('utf8');
  t.regex(reason, /^rank 3 lost: /);
  const r = await clean.exit;
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'closed\n');
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.false(await s.check([`${DEAD_RANK_PREFIX}4`]));
});

test('an in-process client with a rank that closes cleanly is not reported dead', async (t) => {
  const { clients } = await setup(t, 1);
  const [s] = clients as [TCPStore];
  const ranked = await TCPStore.connect(HOST, s.port, { rank: 5, timeoutMs: 5_000 });
  await ranked.close();
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.false(await s.check([`${DEAD_RANK_PREFIX}5`]));
});

// ---------------------------------------------------------------------------------------------------------
// Robustness against bad peers
// ---------------------------------------------------------------------------------------------------------

/** Sends `bytes` on a raw connection and asserts the server closes it and keeps serving `client`. */
async function assertDropped(t: ExecutionContext, port: number, client: TCPStore, bytes: Buffer[], end = false): Promise<void> {
  const raw = rawConnect(port);
  await raw.handshake;
  for (const b of bytes) raw.socket.write(b);
  if (end) raw.socket.end();
  t.true(await within(raw.closed, 2_000), 'the server closed the connection');
  const key = `alive-${crypto.randomUUID()}`;
  await client.set(key, 'yes');
  t.is((await client.get(key)).toString(), 'yes');
}

test('random garbage closes that connection only', async (t) => {
  const { server, clients } = await setup(t, 1, { maxMessageBytes: 1024 });
  for (let seed = 1; seed <= 5; seed++) await assertDropped(t, server.port, clients[0]!, [garbage(4096, seed)]);
});

test('an oversized length prefix closes that connection only', async (t) => {
  const { server, clients } = await setup(t, 1, { maxMessageBytes: 1024 });
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(0xffffffff, 0);
  await assertDropped(t, server.port, clients[0]!, [prefix]);
  // Just above the limit, with the header and some of the body.
  const big = frame(0x11, 1, Buffer.alloc(1025 - 5));
  await assertDropped(t, server.port, clients[0]!, [big.subarray(0, 100)]);
});

test('a length prefix shorter than the header closes that connection only', async (t) => {
  const { server, clients } = await setup(t, 1);
  await assertDropped(t, server.port, clients[0]!, [Buffer.from([2, 0, 0, 0, 0x11, 0])]);
});

test('an unknown command closes that connection only', async (t) => {
  const { server, clients } = await setup(t, 1);
  await assertDropped(t, server.port, clients[0]!, [frame(0xee, 1)]);
});

test('a frame whose payload is truncated closes that connection only', async (t) => {
  const { server, clients } = await setup(t, 1);
  // SET whose key claims 100 bytes in a 10-byte payload.
  const payload = Buffer.alloc(10);
  payload.writeUInt16LE(100, 0);
  await assertDropped(t, server.port, clients[0]!, [frame(0x11, 1, payload)]);
  // GET with trailing bytes after its key.
  const key = Buffer.from([1, 0, 0x61, 0xff]);
  await assertDropped(t, server.port, clients[0]!, [frame(0x12, 2, key)]);
  // A key that is not UTF-8.
  await assertDropped(t, server.port, clients[0]!, [frame(0x12, 3, Buffer.from([1, 0, 0xff]))]);
});

test('a connection that ends in the middle of a frame is closed; a valid raw request works', async (t) => {
  const { server, clients } = await setup(t, 1);
  const partial = frame(0x11, 1, Buffer.alloc(64)).subarray(0, 30);
  await assertDropped(t, server.port, clients[0]!, [partial], true);

  // Control: a well-formed NUM_KEYS on a raw connection is answered.
  const raw = rawConnect(server.port);
  t.teardown(() => raw.socket.destroy());
  await raw.handshake;
  const answer = new Promise<Buffer>((resolve) => {
    let buf = Buffer.alloc(0);
    raw.socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 13) resolve(buf.subarray(0, 13));
    });
  });
  raw.socket.write(frame(0x17, 77));
  const r = await answer;
  t.is(r.readUInt32LE(0), 9);
  t.is(r[4], 0x80);
  t.is(r.readUInt32LE(5), 77);
});

// ---------------------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------------------

test('the right token authenticates', async (t) => {
  const { clients } = await setup(t, 2, { token: 's3cret' });
  const [a, b] = clients as [TCPStore, TCPStore];
  await a.set('k', 'v');
  t.is((await b.get('k')).toString(), 'v');
});

test('the token defaults to TPKIT_STORE_TOKEN', async (t) => {
  process.env.TPKIT_STORE_TOKEN = 'from-env';
  const listening = TCPStoreServer.listen(HOST, 0);
  delete process.env.TPKIT_STORE_TOKEN;
  const server = await listening;
  t.teardown(() => server.close());
  await t.throwsAsync(TCPStore.connect(HOST, server.port, { timeoutMs: 5_000 }), { code: 'STORE_AUTH_FAILED' });
  const s = await TCPStore.connect(HOST, server.port, { token: 'from-env', timeoutMs: 5_000 });
  t.teardown(() => s.close());
  t.is(await s.add('c', 2), 2);
});

test('a wrong or missing token fails promptly with STORE_AUTH_FAILED', async (t) => {
  const { server } = await setup(t, 0, { token: 's3cret' });
  for (const opts of [{ token: 'wrong' }, {}]) {
    const started = Date.now();
    const e = await t.throwsAsync(TCPStore.connect(HOST, server.port, { ...opts, timeoutMs: 30_000 }), { instanceOf: TpkitError });
    t.is(e?.code, 'STORE_AUTH_FAILED');
    t.true(e!.message.includes(`${HOST}:${server.port}`));
    t.true(Date.now() - started < 10_000, 'no retry loop (retrying would last the 30 s timeout)');
  }
});

test('a token given to a server without authentication fails with STORE_AUTH_FAILED', async (t) => {
  const { server } = await setup(t, 0);
  const e = await t.throwsAsync(TCPStore.connect(HOST, server.port, { token: 'x', timeoutMs: 10_000 }), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_AUTH_FAILED');
});

test('a connection that never answers the challenge is closed', async (t) => {
  // authTimeoutMs leaves a loaded 2-core machine time to authenticate the setup's own client.
  const { server, clients } = await setup(t, 1, { token: 's3cret', authTimeoutMs: 4_000 });
  const raw = rawConnect(server.port);
  const hs = await raw.handshake;
  t.is(hs[10], 1, 'the handshake asks for HMAC-SHA256');
  t.is(hs.length, 5 + 6 + 32);
  t.true(await within(raw.closed, 12_000));
  // Commands before authentication close the connection at once (well before the auth timeout).
  const raw2 = rawConnect(server.port);
  await raw2.handshake;
  raw2.socket.write(frame(0x17, 1));
  t.true(await within(raw2.closed, 2_000));
  t.is(await clients[0]!.numKeys(), 0);
});

test('a raw client answering HMAC-SHA256(token, nonce) is accepted', async (t) => {
  const { server } = await setup(t, 0, { token: 's3cret' });
  const raw = rawConnect(server.port);
  t.teardown(() => raw.socket.destroy());
  const hs = await raw.handshake;
  const nonce = hs.subarray(11, 43);
  const mac = crypto.createHmac('sha256', 's3cret').update(nonce).digest();
  const reply = new Promise<Buffer>((resolve) => raw.socket.once('data', (d: Buffer) => resolve(d)));
  raw.socket.write(frame(0x02, 0, mac));
  const r = await reply;
  t.is(r[4], 0x03, 'AUTH_OK');
});

// ---------------------------------------------------------------------------------------------------------
// Restarts against one store, foreign connections, the token of initDistributed's env (issues 13, 14)
// ---------------------------------------------------------------------------------------------------------

test('a rank that connects again is no longer reported dead, and its old connection closing late does not report it', async (t) => {
  const { clients } = await setup(t, 1);
  const [s] = clients as [TCPStore];
  const killed = spawnWorker(t, ['hold', HOST, String(s.port), '6']);
  t.is(await killed.firstLine, 'ready');
  killed.child.kill('SIGKILL');
  t.regex((await s.get(`${DEAD_RANK_PREFIX}6`, { timeoutMs: 5_000 })).toString('utf8'), /^rank 6 lost: /);
  // The restarted rank 6 says HELLO again: its death is forgotten.
  const again = await TCPStore.connect(HOST, s.port, { rank: 6, timeoutMs: 5_000 });
  t.false(await s.check([`${DEAD_RANK_PREFIX}6`]));
  // A newer connection of rank 7 makes the older one's loss stale.
  const older = rawConnect(s.port);
  await older.handshake;
  older.socket.write(frame(0x10, 1, Buffer.from([7, 0, 0, 0])));
  await new Promise((r) => setTimeout(r, 50));
  const newer = await TCPStore.connect(HOST, s.port, { rank: 7, timeoutMs: 5_000 });
  older.socket.destroy();
  await older.closed;
  await new Promise((r) => setTimeout(r, 100));
  t.false(await s.check([`${DEAD_RANK_PREFIX}7`]), 'the replaced connection of rank 7 does not mark it dead');
  await again.close();
  await newer.close();
});

/** Runs the store_foreign fixture; `hello` makes the held half-open connection say HELLO as that rank first. */
async function foreignHost(t: ExecutionContext, hello?: number): Promise<{ exitedWithinMs: number | null }> {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'store_foreign.js')], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let out = '';
  const line = (n: number) =>
    new Promise<string>((resolve) => {
      const on = (d: Buffer): void => {
        out += d.toString();
        const lines = out.split('\n');
        if (lines.length > n) {
          child.stdout.off('data', on);
          resolve(lines[n - 1]!);
        }
      };
      child.stdout.on('data', on);
      on(Buffer.alloc(0));
    });
  const port = Number(await line(1));
  const raw = rawConnect(port);
  t.teardown(() => raw.socket.destroy());
  await raw.handshake;
  if (hello !== undefined) raw.socket.write(frame(0x10, 1, Buffer.from([hello, 0, 0, 0])));
  raw.socket.write(Buffer.from([200, 0])); // half a length prefix, never completed
  await new Promise((r) => setTimeout(r, 50));
  child.stdin.write('go\n');
  t.is(await line(2), 'used');
  const started = Date.now();
  return { exitedWithinMs: (await within(exited, 2_000)) ? Date.now() - started : null };
}

test('a foreign connection that never completes a frame does not keep the hosting process alive', async (t) => {
  const { exitedWithinMs } = await foreignHost(t);
  t.not(exitedWithinMs, null, 'the host exited within 2 s of its last use of the store');
});

test('a connection that said HELLO as another rank keeps the hosting process alive (that rank still uses the store)', async (t) => {
  const { exitedWithinMs } = await foreignHost(t, 1);
  t.is(exitedWithinMs, null);
});

test('initDistributed uses TPKIT_STORE_TOKEN from its env option', async (t) => {
  const server = await TCPStoreServer.listen(HOST, 0, { timeoutMs: 10_000, token: 'from-init-env' });
  t.teardown(() => server.close());
  // Rank 1 of 2 against a launcher-style store: it authenticates, then times out waiting for rank 0.
  const env = {
    RANK: '1', WORLD_SIZE: '2', MASTER_ADDR: HOST, MASTER_PORT: String(server.port),
    TPKIT_USE_LAUNCHER_STORE: '1', TPKIT_STORE_TOKEN: 'from-init-env', TPKIT_RUN_ID: 'token-test',
  };
  // 5 s: the connect and the authenticated hello share this budget, and a loaded machine (or c8's
  // instrumentation loading the modules) can take a second or more before the hello is answered.
  const e = await t.throwsAsync(initDistributed({ env, backend: 'gloo', timeoutMs: 5_000 }), { instanceOf: TpkitError });
  t.is(e?.code, 'TIMEOUT', e?.message);
  t.regex(e!.message, /waited 5000 ms for rank \[0\] to join/);
});
