/**
 * A client of PyTorch's c10d `TCPStore` (the store torchrun's agent hosts on `MASTER_ADDR:MASTER_PORT` and
 * tells its workers to use with `TORCHELASTIC_USE_AGENT_STORE=True`), implementing the subset tpkit's
 * rendezvous needs — `set`, blocking `get`, `add`, `wait`, `check`, `delete`, `numKeys`, `compareSet` — behind
 * the same method names and errors as tpkit's own {@link TCPStore}. tpkit's own store keeps its own protocol
 * and authentication; this one speaks torch's, which has neither framing nor authentication.
 *
 * ## torch's wire protocol (as in torch/csrc/distributed/c10d/TCPStore.cpp and TCPStore*Backend.cpp)
 *
 * A request is one byte of query type followed by its arguments; there is no length prefix and no request
 * id, so a connection carries one request at a time and answers arrive in order. Integers are little-endian
 * (the machine's order on every platform torch supports); a string or byte vector is a `u64` length then
 * the bytes; a key list is a `u64` count then the strings. torch's client sends every key with a leading `/`
 * (`TCPStore::keyPrefix_`); this one does the same, so keys are shared with torch code on either side.
 *
 * | query | torch ≥ 2.0 | torch 1.x | arguments | answer |
 * |---|---|---|---|---|
 * | VALIDATE | 0 | — | `u32` 0x3C85F7CE (first query of every connection) | none |
 * | SET | 1 | 0 | key, value | none |
 * | COMPARE_SET | 2 | 1 | key, expected, desired | the value now stored |
 * | GET | 3 | 2 | key (the key must exist: clients WAIT first) | value |
 * | ADD | 4 | 3 | key, `i64` delta | `i64` new value (stored as decimal text) |
 * | CHECK | 5 | 4 | key list | `u8` 0 READY / 1 NOT_READY |
 * | WAIT | 6 | 5 | key list | `u8` 0 STOP_WAITING once all exist |
 * | GETNUMKEYS | 7 | 6 | — | `i64` |
 * | DELETE_KEY | 8 | 8 | key | `i64` number deleted |
 *
 * torch 2.x's servers ignore every query of a connection whose first one is not VALIDATE; torch 1.x's have no
 * VALIDATE and read a 0 byte as SET. {@link TorchStore.connect} tells the two apart by asking GETNUMKEYS both
 * ways on two throw-away connections and taking the one answered (see {@link detectTorchProtocol}).
 *
 * Like torch's own client this one keeps one request per connection in flight; it opens a further connection
 * whenever all are busy (a blocked `get` must not hold up another rank's `set` issued by this process), keeps
 * idle ones for reuse, and never holds the process open while idle. A request that times out closes its
 * connection (the server drops the waiter with it).
 *
 * @module
 */
import * as net from 'node:net';

import { TpkitError } from '../errors';
import { envTimeoutMs } from './env';
import { integerInRange, nonEmptyString, options, positiveInteger, rangeError, typeError } from '../validate';

/** torch's protocol generation: 2 for torch ≥ 2.0 (VALIDATE first), 1 for torch 1.x. */
export type TorchStoreProtocol = 1 | 2;

/** torch's validation magic number, sent after VALIDATE as `u32` LE. */
export const TORCH_VALIDATION_MAGIC = 0x3c85f7ce;

/** Query type codes per protocol generation. */
export const TORCH_QUERY: Readonly<Record<TorchStoreProtocol, Readonly<Record<'SET' | 'COMPARE_SET' | 'GET' | 'ADD' | 'CHECK' | 'WAIT' | 'GETNUMKEYS' | 'DELETE_KEY', number>>>> = {
  1: { SET: 0, COMPARE_SET: 1, GET: 2, ADD: 3, CHECK: 4, WAIT: 5, GETNUMKEYS: 6, DELETE_KEY: 8 },
  2: { SET: 1, COMPARE_SET: 2, GET: 3, ADD: 4, CHECK: 5, WAIT: 6, GETNUMKEYS: 7, DELETE_KEY: 8 },
};
const VALIDATE = 0;

/** Options of {@link TorchStore.connect}. */
export interface TorchStoreOptions {
  /** Timeout of connecting and of each op in ms (default: `TPKIT_TIMEOUT_MS`, else 300 000, torch's default). */
  timeoutMs?: number;
  /** The protocol generation; detected when absent. */
  protocol?: TorchStoreProtocol;
}

const DEFAULT_TIMEOUT_MS = 300_000;
const RETRY_INTERVAL_MS = 100;
/** Longest value accepted from the server (the torch store has no limit; this bounds a corrupt length). */
const MAX_VALUE_BYTES = 1 << 30;
/** Most connections one client opens at once. */
const MAX_CONNECTIONS = 64;

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function u64(n: number | bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64LE(BigInt(n), 0);
  return b;
}

function bytesArg(v: Uint8Array): Buffer[] {
  return [u64(v.byteLength), Buffer.from(v.buffer, v.byteOffset, v.byteLength)];
}

/** torch's client puts this before every key (TCPStore's `keyPrefix_`), so `store.set('k')` in Python is `/k` on the wire. */
const KEY_PREFIX = '/';

function keyArg(key: unknown, name = 'key'): Buffer[] {
  nonEmptyString(key, name);
  return bytesArg(Buffer.from(KEY_PREFIX + (key as string), 'utf8'));
}

function keysArg(keys: unknown, name = 'keys'): Buffer[] {
  if (!Array.isArray(keys)) throw typeError('array of non-empty strings', name, keys);
  return [u64(keys.length), ...keys.flatMap((k, i) => keyArg(k, `${name}[${i}]`))];
}

function valueArg(value: unknown, name = 'value'): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw typeError('Uint8Array or string', name, value);
}

function opTimeout(opts: unknown, fallback: number): number {
  const o = options<{ timeoutMs?: number }>(opts, 'opts');
  return o.timeoutMs === undefined ? fallback : positiveInteger(o.timeoutMs, 'timeoutMs');
}

/** A retryable failure to reach the server. */
class Unreachable extends Error {}

/** One TCP connection, one request at a time: write bytes, then read exactly what the answer holds. */
class Conn {
  readonly socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  #closed: Error | undefined;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
      this.#serve();
    });
    socket.on('error', (err) => {
      this.#closed ??= err;
    });
    socket.on('close', () => {
      this.#closed ??= new Error('connection closed by the store');
      const w = this.#want;
      if (w) {
        this.#want = undefined;
        clearTimeout(w.timer);
        w.reject(this.#closed);
      }
    });
  }

  /** Opens a connection, rejecting with {@link Unreachable} on a refused / reset one. */
  static open(host: string, port: number, timeoutMs: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Unreachable('connect timed out'));
      }, timeoutMs);
      timer.unref();
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new Conn(socket));
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        socket.destroy();
        reject(new Unreachable(err.code ?? err.message));
      });
    });
  }

  get broken(): boolean {
    return this.#closed !== undefined || this.socket.destroyed;
  }

  write(parts: readonly Uint8Array[]): void {
    this.socket.write(Buffer.concat(parts));
  }

  /** Reads exactly `n` bytes within `timeoutMs`; rejects with a TIMEOUT-coded marker or the close reason. */
  read(n: number, timeoutMs: number): Promise<Buffer> {
    if (this.#want) return Promise.reject(new Error('read already pending'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#want = undefined;
        reject(new ReadTimeout());
      }, timeoutMs);
      timer.unref();
      this.#want = { n, resolve, reject, timer };
      this.#serve();
      if (this.#want && this.#closed) {
        this.#want = undefined;
        clearTimeout(timer);
        reject(this.#closed);
      }
    });
  }

  async readU64(timeoutMs: number): Promise<bigint> {
    return (await this.read(8, timeoutMs)).readBigUInt64LE(0);
  }

  async readBytes(timeoutMs: number): Promise<Buffer> {
    const n = await this.readU64(timeoutMs);
    if (n > BigInt(MAX_VALUE_BYTES)) throw new ProtocolViolation(`value of ${n} bytes`);
    return Number(n) === 0 ? Buffer.alloc(0) : this.read(Number(n), timeoutMs);
  }

  #serve(): void {
    const w = this.#want;
    if (!w || this.#buf.length < w.n) return;
    this.#want = undefined;
    clearTimeout(w.timer);
    const out = Buffer.from(this.#buf.subarray(0, w.n));
    this.#buf = this.#buf.subarray(w.n);
    w.resolve(out);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

class ReadTimeout extends Error {}
class ProtocolViolation extends Error {}

/**
 * Tells torch ≥ 2.0's store protocol (2) from torch 1.x's (1) by asking both ways on two throw-away connections.
 *
 * Generation 2 probe: VALIDATE + magic, GETNUMKEYS (7), CHECK (5) of no keys — 9 bytes back from a 2.x server.
 * A 1.x server reads the same bytes as SET with a key of ~5.5 TB, fails to allocate it and drops the
 * connection (or, if the allocation succeeds, waits for the key until the probe is closed).
 * Generation 1 probe: GETNUMKEYS (6) — 8 bytes back from a 1.x server; a 2.x server ignores queries of a
 * connection that did not VALIDATE first.
 *
 * @returns the generation whose probe was answered
 * @throws TpkitError `STORE_UNREACHABLE` when neither is answered within `timeoutMs`
 */
export async function detectTorchProtocol(host: string, port: number, timeoutMs: number): Promise<TorchStoreProtocol> {
  const deadline = Date.now() + timeoutMs;
  const v2 = await Conn.open(host, port, timeoutMs);
  let v1: Conn | undefined;
  try {
    v1 = await Conn.open(host, port, Math.max(1, deadline - Date.now()));
    v2.write([Uint8Array.of(VALIDATE), u32(TORCH_VALIDATION_MAGIC), Uint8Array.of(TORCH_QUERY[2].GETNUMKEYS, TORCH_QUERY[2].CHECK), u64(0)]);
    v1.write([Uint8Array.of(TORCH_QUERY[1].GETNUMKEYS)]);
    const left = (): number => Math.max(1, deadline - Date.now());
    const a = v2.read(9, left()).then(() => 2 as const);
    const b = v1.read(8, left()).then(() => 1 as const);
    // A 1.x server that allocated the huge key waits for it and serves no one else: close the probe to free it.
    const freeV1 = setTimeout(() => v2.destroy(), Math.min(1000, timeoutMs / 4));
    freeV1.unref();
    a.catch(() => {});
    b.catch(() => {});
    try {
      return await new Promise<TorchStoreProtocol>((resolve, reject) => {
        let failed = 0;
        const fail = (): void => {
          if (++failed === 2) reject(new Error('no answer'));
        };
        a.then(resolve, fail);
        b.then(resolve, fail);
      });
    } catch {
      throw new TpkitError('STORE_UNREACHABLE', `no torch TCPStore answered at ${hostPort(host, port)} within ${timeoutMs} ms (neither the torch 2.x nor the 1.x protocol)`, {
        backend: 'store',
        details: { host, port, timeoutMs },
      });
    } finally {
      clearTimeout(freeV1);
    }
  } finally {
    v2.destroy();
    v1?.destroy();
  }
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n, 0);
  return b;
}

function quote(keys: readonly string[]): string {
  return keys.slice(0, 8).map((k) => JSON.stringify(k)).join(', ') + (keys.length > 8 ? `, … (${keys.length} keys)` : '');
}

/**
 * A client of torch's `TCPStore` (see the module comment for the protocol). Methods and errors match
 * {@link TCPStore}'s: TypeError / RangeError for bad arguments; TpkitError `TIMEOUT` naming the keys,
 * `STORE_UNREACHABLE` when the server is gone, `STORE_CLOSED` after {@link close}, `STORE_PROTOCOL` for an
 * answer that makes no sense.
 */
export class TorchStore {
  /** The server's host. */
  readonly host: string;
  /** The server's port. */
  readonly port: number;
  /** The protocol generation in use. */
  readonly protocol: TorchStoreProtocol;
  readonly #timeoutMs: number;
  readonly #q: (typeof TORCH_QUERY)[TorchStoreProtocol];
  readonly #idle: Conn[] = [];
  readonly #busy = new Set<Conn>();
  readonly #queue: Array<() => void> = [];
  #localAddress = '';
  #closed = false;

  private constructor(host: string, port: number, protocol: TorchStoreProtocol, timeoutMs: number, first: Conn) {
    this.host = host;
    this.port = port;
    this.protocol = protocol;
    this.#timeoutMs = timeoutMs;
    this.#q = TORCH_QUERY[protocol];
    this.#localAddress = first.socket.localAddress ?? '';
    first.socket.unref();
    this.#idle.push(first);
  }

  /**
   * Connects to the torch store at `host:port`, retrying refused connections until `timeoutMs` (the agent
   * may not be listening yet), and detects the protocol generation unless `opts.protocol` names it.
   *
   * @throws TypeError / RangeError for invalid arguments; TpkitError `STORE_UNREACHABLE` naming `host:port`
   */
  static async connect(host: string, port: number, opts?: TorchStoreOptions): Promise<TorchStore> {
    nonEmptyString(host, 'host');
    integerInRange(port, 'port', 1, 65536);
    const o = options<TorchStoreOptions>(opts, 'opts');
    const timeoutMs = o.timeoutMs === undefined ? envTimeoutMs(process.env) ?? DEFAULT_TIMEOUT_MS : positiveInteger(o.timeoutMs, 'timeoutMs');
    if (o.protocol !== undefined && o.protocol !== 1 && o.protocol !== 2) throw rangeError('1 or 2', 'protocol', o.protocol);
    const deadline = Date.now() + timeoutMs;
    let last = 'no attempt';
    for (;;) {
      try {
        const protocol = o.protocol ?? (await detectTorchProtocol(host, port, Math.max(1, deadline - Date.now())));
        const conn = await TorchStore.#open(host, port, protocol, Math.max(1, deadline - Date.now()));
        return new TorchStore(host, port, protocol, timeoutMs, conn);
      } catch (err) {
        if (err instanceof Unreachable) last = err.message;
        else if (err instanceof TpkitError && err.code === 'STORE_UNREACHABLE') last = err.message;
        else throw err;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new TpkitError('STORE_UNREACHABLE', `could not connect to torch store at ${hostPort(host, port)} within ${timeoutMs} ms (${last})`, {
          backend: 'store',
          details: { host, port, timeoutMs },
        });
      }
      await new Promise((r) => setTimeout(r, Math.min(RETRY_INTERVAL_MS, left)));
    }
  }

  static async #open(host: string, port: number, protocol: TorchStoreProtocol, timeoutMs: number): Promise<Conn> {
    const c = await Conn.open(host, port, timeoutMs);
    if (protocol === 2) c.write([Uint8Array.of(VALIDATE), u32(TORCH_VALIDATION_MAGIC)]);
    return c;
  }

  /** Local address of this client's connection to the server (the interface that routes to it). */
  get localAddress(): string {
    const a = this.#localAddress;
    return a.startsWith('::ffff:') && net.isIPv4(a.slice(7)) ? a.slice(7) : a;
  }

  /** Runs `fn` on a connection of its own; a failed request's connection is closed, a good one reused. */
  async #with<T>(what: string, timeoutMs: number, fn: (c: Conn, left: () => number) => Promise<T>): Promise<T> {
    const caller: { stack?: string } = {};
    Error.captureStackTrace(caller, this.#with);
    if (this.#closed) throw new TpkitError('STORE_CLOSED', `torch store client for ${hostPort(this.host, this.port)} is closed`, { backend: 'store' });
    const deadline = Date.now() + timeoutMs;
    const left = (): number => Math.max(1, deadline - Date.now());
    const fail = (code: string, message: string, cause?: unknown): TpkitError => {
      const e = new TpkitError(code, message, { backend: 'store', details: { op: what, timeoutMs, host: this.host, port: this.port }, cause });
      if (caller.stack !== undefined) e.stack = `${e.name}: ${e.message}\n${caller.stack.split('\n').slice(1).join('\n')}`;
      return e;
    };
    while (this.#idle.length === 0 && this.#busy.size >= MAX_CONNECTIONS) await new Promise<void>((r) => this.#queue.push(r));
    let c = this.#idle.pop();
    while (c?.broken) c = this.#idle.pop();
    if (c === undefined) {
      try {
        c = await TorchStore.#open(this.host, this.port, this.protocol, left());
      } catch (err) {
        throw fail('STORE_UNREACHABLE', `lost connection to torch store at ${hostPort(this.host, this.port)} (${(err as Error).message})`, err);
      }
    }
    this.#busy.add(c);
    c.socket.ref();
    let ok = false;
    try {
      const v = await fn(c, left);
      ok = true;
      return v;
    } catch (err) {
      if (err instanceof ReadTimeout) throw fail('TIMEOUT', `store ${what} timed out after ${timeoutMs} ms`);
      if (err instanceof ProtocolViolation) throw fail('STORE_PROTOCOL', `malformed answer to ${what} from torch store at ${hostPort(this.host, this.port)}: ${err.message}`, err);
      if (err instanceof TypeError || err instanceof RangeError || err instanceof TpkitError) throw err;
      throw fail('STORE_UNREACHABLE', `lost connection to torch store at ${hostPort(this.host, this.port)} (${(err as Error).message})`, err);
    } finally {
      this.#busy.delete(c);
      c.socket.unref();
      if (ok && !this.#closed && !c.broken) this.#idle.push(c);
      else c.destroy();
      this.#queue.shift()?.();
    }
  }

  /** A round trip after a request without an answer (SET): CHECK of no keys, answered once the SET is applied. */
  async #fence(c: Conn, left: () => number): Promise<void> {
    c.write([Uint8Array.of(this.#q.CHECK), u64(0)]);
    const r = (await c.read(1, left()))[0];
    if (r !== 0) throw new ProtocolViolation(`CHECK of no keys answered ${r}`);
  }

  /** Sets `key` to `value` (torch `set`); resolves once the server has applied it. */
  async set(key: string, value: Uint8Array | string): Promise<void> {
    const k = keyArg(key);
    const v = valueArg(value);
    await this.#with(`set of key ${quote([key])}`, this.#timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.SET), ...k, ...bytesArg(v)]);
      await this.#fence(c, left);
    });
  }

  /** Waits until `key` exists, then returns its value (torch `get`: WAIT, then GET). */
  async get(key: string, opts?: { timeoutMs?: number }): Promise<Buffer> {
    const k = keyArg(key);
    const timeoutMs = opTimeout(opts, this.#timeoutMs);
    return this.#with(`get of key ${quote([key])}`, timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.WAIT), u64(1), ...k]);
      const w = (await c.read(1, left()))[0];
      if (w !== 0) throw new ProtocolViolation(`WAIT answered ${w}`);
      c.write([Uint8Array.of(this.#q.GET), ...k]);
      return c.readBytes(left());
    });
  }

  /** Adds `delta` to the counter at `key` (a missing key counts as 0) and returns the new value (torch `add`). */
  async add(key: string, delta: number): Promise<number> {
    const k = keyArg(key);
    if (typeof delta !== 'number') throw typeError('integer', 'delta', delta);
    if (!Number.isSafeInteger(delta)) throw rangeError('integer', 'delta', delta);
    return this.#with(`add to key ${quote([key])}`, this.#timeoutMs, async (c, left) => {
      const d = Buffer.allocUnsafe(8);
      d.writeBigInt64LE(BigInt(delta), 0);
      c.write([Uint8Array.of(this.#q.ADD), ...k, d]);
      return Number((await c.read(8, left())).readBigInt64LE(0));
    });
  }

  /** Waits until every key exists (torch `wait`). */
  async wait(keys: string[], opts?: { timeoutMs?: number }): Promise<void> {
    const parts = keysArg(keys);
    const timeoutMs = opTimeout(opts, this.#timeoutMs);
    if (keys.length === 0) return;
    await this.#with(`wait for keys ${quote(keys)}`, timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.WAIT), ...parts]);
      const w = (await c.read(1, left()))[0];
      if (w !== 0) throw new ProtocolViolation(`WAIT answered ${w}`);
    });
  }

  /** Tells, without waiting, whether every key exists (torch `check`). */
  async check(keys: string[]): Promise<boolean> {
    const parts = keysArg(keys);
    return this.#with(`check of keys ${quote(keys)}`, this.#timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.CHECK), ...parts]);
      const r = (await c.read(1, left()))[0];
      if (r !== 0 && r !== 1) throw new ProtocolViolation(`CHECK answered ${r}`);
      return r === 0;
    });
  }

  /** Deletes `key` (torch `delete_key`); true when it existed. */
  async delete(key: string): Promise<boolean> {
    const k = keyArg(key);
    return this.#with(`delete of key ${quote([key])}`, this.#timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.DELETE_KEY), ...k]);
      return (await c.read(8, left())).readBigInt64LE(0) === 1n;
    });
  }

  /** Number of keys in the store, torch's own included (torch `num_keys`). */
  async numKeys(): Promise<number> {
    return this.#with('numKeys', this.#timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.GETNUMKEYS)]);
      return Number((await c.read(8, left())).readBigInt64LE(0));
    });
  }

  /**
   * Sets `key` to `desired` if it holds `expected` (or is missing and `expected` is empty) and returns the
   * value stored afterwards (torch `compare_set`).
   */
  async compareSet(key: string, expected: Uint8Array | string, desired: Uint8Array | string): Promise<Buffer> {
    const k = keyArg(key);
    const e = valueArg(expected, 'expected');
    const d = valueArg(desired, 'desired');
    return this.#with(`compareSet of key ${quote([key])}`, this.#timeoutMs, async (c, left) => {
      c.write([Uint8Array.of(this.#q.COMPARE_SET), ...k, ...bytesArg(e), ...bytesArg(d)]);
      return c.readBytes(left());
    });
  }

  /** Closes every connection; later ops reject with `STORE_CLOSED`. Idempotent; never rejects. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.destroy();
    for (const c of this.#busy) c.destroy();
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
