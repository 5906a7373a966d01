/**
 * Tests of lib/distributed/torch_store.ts: argument errors first, then the client against an in-test fake of
 * torch's TCPStore server speaking either protocol generation (the exact frames of
 * torch/csrc/distributed/c10d/TCPStore.cpp and its backends: VALIDATE + magic for torch ≥ 2.0, none for 1.x),
 * then against the real torch (a Python TCPStore, and torchrun running two tpkit ranks) when
 * `python3 -c "import torch.distributed"` works; those are skipped with the reason otherwise.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { TpkitError } from '../lib/errors';
import { TORCH_QUERY, TORCH_VALIDATION_MAGIC, TorchStore, type TorchStoreProtocol } from '../lib/distributed/torch_store';

delete process.env.TPKIT_TIMEOUT_MS;

const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------------------------------------
// A fake torch TCPStore server
// ---------------------------------------------------------------------------------------------------------

/**
 * Serves torch's protocol of generation `gen`: one command at a time per connection, strings and vectors as
 * `u64 length + bytes`, key lists as `u64 count + strings`, WAIT answered STOP_WAITING (0) once every key
 * exists. Generation 2 ignores every command of a connection whose first is not VALIDATE + magic (as
 * torch's libuv backend does); generation 1 has no VALIDATE and closes a connection on an absurd length.
 */
class FakeTorchServer {
  readonly data = new Map<string, Buffer>();
  /** Every byte each connection sent, in order of connection. */
  readonly received: Buffer[] = [];
  readonly #waiters: Array<{ keys: string[]; wake: () => void }> = [];
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  port = 0;

  constructor(readonly gen: TorchStoreProtocol) {
    this.#server = net.createServer((s) => this.#serve(s));
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, HOST, resolve));
    this.port = (this.#server.address() as net.AddressInfo).port;
    return this;
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #set(key: string, value: Buffer): void {
    this.data.set(key, value);
    for (const w of [...this.#waiters]) {
      if (w.keys.every((k) => this.data.has(k))) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.wake();
      }
    }
  }

  #serve(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => {});
    const index = this.received.push(Buffer.alloc(0)) - 1;
    let buf = Buffer.alloc(0);
    let validated = this.gen === 1;
    let misc = this.gen === 2; // first command not yet seen
    let blocked = false;
    const Q = TORCH_QUERY[this.gen];
    const step = (): void => {
      while (!blocked && buf.length > 0) {
        let off = 0;
        const need = (n: number): boolean => buf.length >= off + n;
        const u64 = (): bigint | null => {
          if (!need(8)) return null;
          const v = buf.readBigUInt64LE(off);
          off += 8;
          return v;
        };
        const bytes = (): Buffer | null => {
          const n = u64();
          if (n === null) return null;
          if (n > 1n << 32n) throw new Error('absurd length');
          if (!need(Number(n))) return null;
          const v = buf.subarray(off, off + Number(n));
          off += Number(n);
          return Buffer.from(v);
        };
        const keys = (): string[] | null => {
          const n = u64();
          if (n === null) return null;
          const out: string[] = [];
          for (let i = 0; i < Number(n); i++) {
            const k = bytes();
            if (k === null) return null;
            out.push(k.toString('utf8'));
          }
          return out;
        };
        const cmd = buf[off++]!;
        const reply = (b: Buffer | Uint8Array): void => void socket.write(b);
        const i64 = (v: bigint): Buffer => {
          const b = Buffer.alloc(8);
          b.writeBigInt64LE(v);
          return b;
        };
        let done = true;
        if (misc) {
          misc = false;
          if (cmd !== 0) {
            // torch ≥ 2.0 ignores a connection that does not validate first.
            buf = Buffer.alloc(0);
            return;
          }
          if (!need(4)) done = false;
          else {
            validated = buf.readUInt32LE(off) === TORCH_VALIDATION_MAGIC;
            off += 4;
          }
          if (!done) {
            misc = true;
            return;
          }
        } else if (!validated) {
          buf = Buffer.alloc(0);
          return;
        } else if (cmd === Q.SET) {
          const k = bytes();
          const v = k === null ? null : bytes();
          if (v === null) done = false;
          else this.#set(k!.toString('utf8'), v);
        } else if (cmd === Q.GET) {
          const k = bytes();
          if (k === null) done = false;
          else {
            const v = this.data.get(k.toString('utf8'));
            if (v === undefined) throw new Error('GET of a missing key');
            reply(Buffer.concat([i64(BigInt(v.length)), v]));
          }
        } else if (cmd === Q.ADD) {
          const k = bytes();
          const d = k === null || !need(8) ? null : buf.readBigInt64LE(off);
          if (d === null) done = false;
          else {
            off += 8;
            const key = k!.toString('utf8');
            const next = BigInt(this.data.get(key)?.toString() ?? '0') + d;
            this.#set(key, Buffer.from(next.toString()));
            reply(i64(next));
          }
        } else if (cmd === Q.CHECK || cmd === Q.WAIT) {
          const ks = keys();
          if (ks === null) done = false;
          else if (ks.every((k) => this.data.has(k))) reply(Uint8Array.of(0));
          else if (cmd === Q.CHECK) reply(Uint8Array.of(1));
          else {
            blocked = true;
            this.#waiters.push({
              keys: ks,
              wake: () => {
                blocked = false;
                reply(Uint8Array.of(0));
                step();
              },
            });
          }
        } else if (cmd === Q.GETNUMKEYS) {
          reply(i64(BigInt(this.data.size)));
        } else if (cmd === Q.DELETE_KEY) {
          const k = bytes();
          if (k === null) done = false;
          else reply(i64(this.data.delete(k.toString('utf8')) ? 1n : 0n));
        } else if (cmd === Q.COMPARE_SET) {
          const k = bytes();
          const e = k === null ? null : bytes();
          const d = e === null ? null : bytes();
          if (d === null) done = false;
          else {
            const key = k!.toString('utf8');
            const cur = this.data.get(key);
            if (cur === undefined) {
              if (e!.length === 0) this.data.set(key, d);
              reply(Buffer.concat([i64(BigInt((e!.length === 0 ? d : e!).length)), e!.length === 0 ? d : e!]));
            } else {
              if (cur.equals(e!)) this.data.set(key, d);
              const now = this.data.get(key)!;
              reply(Buffer.concat([i64(BigInt(now.length)), now]));
            }
          }
        } else {
          throw new Error(`unknown command ${cmd}`);
        }
        if (!done) return;
        buf = buf.subarray(off);
      }
    };
    socket.on('data', (chunk: Buffer) => {
      this.received[index] = Buffer.concat([this.received[index]!, chunk]);
      buf = Buffer.concat([buf, chunk]);
      try {
        step();
      } catch {
        socket.destroy(); // as torch's servers drop a connection whose query throws
      }
    });
  }
}

async function fake(t: ExecutionContext, gen: TorchStoreProtocol): Promise<FakeTorchServer> {
  const s = await new FakeTorchServer(gen).listen();
  t.teardown(() => s.close());
  return s;
}

async function client(t: ExecutionContext, port: number, opts: { protocol?: TorchStoreProtocol; timeoutMs?: number } = {}): Promise<TorchStore> {
  const c = await TorchStore.connect(HOST, port, { timeoutMs: 5_000, ...opts });
  t.teardown(() => c.close());
  return c;
}

// ---------------------------------------------------------------------------------------------------------
// Invalid arguments (exact messages)
// ---------------------------------------------------------------------------------------------------------

test('connect rejects bad arguments before connecting', async (t) => {
  await t.throwsAsync(TorchStore.connect('', 1), { instanceOf: RangeError, message: 'Expected non-empty string for host but received  of type string' });
  await t.throwsAsync(TorchStore.connect(HOST, 0), { instanceOf: RangeError, message: 'Expected integer in [1, 65536) for port but received 0 of type number' });
  await t.throwsAsync(TorchStore.connect(HOST, 1, { timeoutMs: 0 }), { instanceOf: RangeError, message: 'Expected positive integer for timeoutMs but received 0 of type number' });
  await t.throwsAsync(TorchStore.connect(HOST, 1, { protocol: 3 as TorchStoreProtocol }), { instanceOf: RangeError, message: 'Expected 1 or 2 for protocol but received 3 of type number' });
});

test('ops reject bad arguments before sending', async (t) => {
  const s = await fake(t, 2);
  const c = await client(t, s.port);
  await t.throwsAsync(c.set('', 'v'), { instanceOf: RangeError, message: 'Expected non-empty string for key but received  of type string' });
  await t.throwsAsync(c.set('k', 5 as unknown as string), { instanceOf: TypeError, message: 'Expected Uint8Array or string for value but received 5 of type number' });
  await t.throwsAsync(c.add('k', 1.5), { instanceOf: RangeError, message: 'Expected integer for delta but received 1.5 of type number' });
  await t.throwsAsync(c.wait('k' as unknown as string[]), { instanceOf: TypeError, message: 'Expected array of non-empty strings for keys but received k of type string' });
  await t.throwsAsync(c.get('k', { timeoutMs: -1 }), { instanceOf: RangeError, message: 'Expected positive integer for timeoutMs but received -1 of type number' });
  t.is(s.data.size, 0);
});

test('nobody listening: STORE_UNREACHABLE naming the address after the timeout', async (t) => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, HOST, r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const e = await t.throwsAsync(TorchStore.connect(HOST, port, { timeoutMs: 400 }), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
  t.true(e!.message.startsWith(`could not connect to torch store at ${HOST}:${port} within 400 ms`), e!.message);
});

// ---------------------------------------------------------------------------------------------------------
// Both protocol generations against the fake
// ---------------------------------------------------------------------------------------------------------

for (const gen of [2, 1] as const) {
  test(`generation ${gen} (torch ${gen === 2 ? '≥ 2.0' : '1.x'}) is detected, and every op works`, async (t) => {
    const s = await fake(t, gen);
    const c = await client(t, s.port);
    t.is(c.protocol, gen);
    t.is(c.localAddress, HOST);
    await c.set('a', 'alpha');
    t.is(s.data.get('/a')?.toString(), 'alpha', "keys carry torch's '/' prefix");
    t.is((await c.get('a')).toString(), 'alpha');
    t.is(await c.add('n', 2), 2);
    t.is(await c.add('n', -5), -3);
    t.true(await c.check(['a', 'n']));
    t.false(await c.check(['a', 'missing']));
    await c.wait(['a', 'n']);
    t.is((await c.compareSet('cas', '', 'v1')).toString(), 'v1');
    t.is((await c.compareSet('cas', 'nope', 'v2')).toString(), 'v1');
    t.is((await c.compareSet('cas', 'v1', 'v2')).toString(), 'v2');
    t.is(await c.numKeys(), 3);
    t.true(await c.delete('cas'));
    t.false(await c.delete('cas'));
    await c.set('bin', Uint8Array.of(0, 255, 7));
    t.deepEqual([...(await c.get('bin'))], [0, 255, 7]);
  });
}

test('the exact bytes: VALIDATE + magic first, then SET with u64-length strings and a CHECK of no keys as its fence', async (t) => {
  const s = await fake(t, 2);
  const c = await client(t, s.port, { protocol: 2 });
  await c.set('k', 'v');
  const sent = s.received[0]!;
  const expected = Buffer.concat([
    Buffer.from([0x00, 0xce, 0xf7, 0x85, 0x3c]), // VALIDATE, u32 LE 0x3C85F7CE
    Buffer.from([0x01, 2, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('/k'), // SET, key
    Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('v'), // value
    Buffer.from([0x05, 0, 0, 0, 0, 0, 0, 0, 0]), // CHECK of 0 keys
  ]);
  t.deepEqual([...sent], [...expected]);
});

test('generation 1 sends no VALIDATE and its own codes', async (t) => {
  const s = await fake(t, 1);
  const c = await client(t, s.port, { protocol: 1 });
  await c.add('x', 1);
  t.deepEqual([...s.received[0]!], [0x03, 2, 0, 0, 0, 0, 0, 0, 0, 0x2f, 0x78, 1, 0, 0, 0, 0, 0, 0, 0]);
});

test('get blocks until another client sets the key; one waiting get does not hold up other ops', async (t) => {
  const s = await fake(t, 2);
  const a = await client(t, s.port);
  const b = await client(t, s.port);
  const pending = a.get('late');
  await a.set('other', '1'); // on a connection of its own
  t.true(await a.check(['other']));
  await b.set('late', 'here');
  t.is((await pending).toString(), 'here');
});

test('a get that times out names the key; the client keeps working', async (t) => {
  const s = await fake(t, 2);
  const c = await client(t, s.port);
  const started = Date.now();
  const e = await t.throwsAsync(c.get('never', { timeoutMs: 300 }), { instanceOf: TpkitError });
  t.is(e?.code, 'TIMEOUT');
  t.is(e?.message, 'store get of key "never" timed out after 300 ms');
  t.true(Date.now() - started < 5_000);
  await c.set('after', 'ok');
  t.is((await c.get('after')).toString(), 'ok');
});

test('after close() ops reject with STORE_CLOSED', async (t) => {
  const s = await fake(t, 2);
  const c = await client(t, s.port);
  await c.close();
  const e = await t.throwsAsync(c.set('k', 'v'), { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_CLOSED');
});

test('the server going away rejects with STORE_UNREACHABLE', async (t) => {
  const s = await fake(t, 2);
  const c = await client(t, s.port);
  const pending = c.get('never');
  await new Promise((r) => setTimeout(r, 50));
  await s.close();
  const e = await t.throwsAsync(pending, { instanceOf: TpkitError });
  t.is(e?.code, 'STORE_UNREACHABLE');
});

// ---------------------------------------------------------------------------------------------------------
// The real torch
// ---------------------------------------------------------------------------------------------------------

/** A Python with torch.distributed, or the reason there is none. */
function findTorchPython(): { python?: string; reason: string } {
  for (const py of ['python3', '/usr/bin/python3']) {
    // find_spec only: importing torch costs seconds of CPU that the other test files running meanwhile need.
    const code = 'import importlib.util as u, importlib.metadata as m; s = u.find_spec("torch"); assert s; print(m.version("torch"))';
    const r = spawnSync(py, ['-c', code], { encoding: 'utf8', timeout: 20_000 });
    if (r.status === 0) return { python: py, reason: `torch ${r.stdout.trim()}` };
  }
  return { reason: 'PyTorch is not installed (python3 -c "import torch.distributed" failed; on Debian: apt-get install python3-torch)' };
}

const torch = findTorchPython();
const torchrun = spawnSync('sh', ['-c', 'command -v torchrun'], { encoding: 'utf8' }).stdout.trim();

(torch.python ? test.serial : test.skip)(`the real torch TCPStore: keys set in Python are read here and back (${torch.reason})`, async (t) => {
  const script = [
    'import datetime, sys, torch.distributed as d',
    's = d.TCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=20), wait_for_workers=False)',
    'print(s.port, flush=True)',
    's.set("from_py", "hello from torch")',
    's.wait(["from_node"])',
    'print(s.get("from_node").decode(), s.add("counter", 10), flush=True)',
  ].join('\n');
  const py = spawn(torch.python!, ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => py.kill('SIGKILL'));
  let out = '';
  let err = '';
  py.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const lines = new Promise<string[]>((resolve) => py.stdout.on('end', () => resolve(out.trim().split('\n'))));
  const port = await new Promise<number>((resolve, reject) => {
    py.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(Number(out.split('\n')[0]));
    });
    py.once('exit', () => reject(new Error(`python exited: ${err}`)));
  });
  const c = await client(t, port, { timeoutMs: 10_000 });
  t.log(`protocol generation ${c.protocol} detected`);
  t.is((await c.get('from_py')).toString(), 'hello from torch');
  t.is(await c.add('counter', 5), 5);
  await c.set('from_node', 'hello from tpkit');
  const [, last] = await lines;
  t.is(last, 'hello from tpkit 15', err);
});

(torch.python && torchrun ? test.serial : test.skip)(`torchrun --no-python node: two tpkit ranks meet in torchrun's agent store (${torchrun ? torch.reason : 'torchrun not found'})`, async (t) => {
  const fixture = path.join(__dirname, 'fixtures', 'launch_torchrun.js');
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, HOST, r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  // --redirects 1 --tee 1: torch 1.13's parser of the default "0" fails on Python 3.11; 1 works on every version.
  const args = ['--nproc_per_node', '2', '--master_port', String(port), '--monitor_interval', '0.2', '--redirects', '1', '--tee', '1', '--no_python', process.execPath, fixture];
  const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const child = spawn(torchrun, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TPKIT_TIMEOUT_MS: '20000' } });
    const timer = setTimeout(() => child.kill('SIGKILL'), 50_000);
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
  t.is(r.code, 0, `${r.out}\n${r.err}`);
  const results = r.out
    .split('\n')
    .filter((l) => l.includes('{"rank"'))
    .map((l) => JSON.parse(l.slice(l.indexOf('{'))) as { rank: number; worldSize: number; sum: number[]; gathered: number[]; store: string });
  t.is(results.length, 2, r.out);
  for (const res of results) {
    t.is(res.worldSize, 2);
    t.is(res.store, 'True');
    t.deepEqual(res.sum, [0, 3, 6, 9]);
    t.deepEqual(res.gathered, [0, 1]);
  }
});
