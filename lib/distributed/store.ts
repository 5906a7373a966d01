/**
 * A TCP key–value rendezvous store, following the semantics of PyTorch's c10d `TCPStore`
 * (`torch.distributed.TCPStore`): rank 0 hosts a {@link TCPStoreServer} inside its own Node process and
 * every rank, rank 0 included, connects a {@link TCPStore} client to it. Ranks use it to exchange the
 * binary rendezvous blobs of Gloo communicators (`set` / `get`), to count arrivals (`add`), to wait for
 * each other (`wait`), and to learn of lost peers (keys under {@link DEAD_RANK_PREFIX}).
 *
 * Lifecycle: `TCPStoreServer.listen` (rank 0) → `TCPStore.connect` (every rank) → ops → `TCPStore.close`
 * (every rank) → `TCPStoreServer.close` (rank 0). {@link TCPStore.create} does the first two in one call,
 * like `TCPStore(host, port, is_master=…)` in torch.
 *
 * ## Wire protocol (version 1)
 *
 * Every message, in both directions, is one frame:
 *
 * ```
 * offset  size  field
 * 0       4     u32 LE  length of the body in bytes (everything after this field), 5 ≤ length ≤ maxMessageBytes
 * 4       1     u8      op code
 * 5       4     u32 LE  request id (0 for handshake frames); responses echo the id of their request
 * 9       …             payload, by op code
 * ```
 *
 * Payload encodings: a key is `u16 LE byte length + UTF-8 bytes` (1 … 4096 bytes); a key list is
 * `u32 LE count + keys`; a value is the rest of the frame; integers are `i64 LE`.
 *
 * | op     | name       | direction | payload                       | response payload          |
 * |--------|------------|-----------|-------------------------------|---------------------------|
 * | `0x01` | HANDSHAKE  | S → C     | `u32 magic "TPKS"`, `u8 version`, `u8 auth (0 none, 1 HMAC-SHA256)`, 32-byte nonce when auth = 1 | — |
 * | `0x02` | AUTH       | C → S     | 32-byte HMAC-SHA256(token, nonce) | AUTH_OK or AUTH_FAIL  |
 * | `0x03` | AUTH_OK    | S → C     | —                             | —                         |
 * | `0x04` | AUTH_FAIL  | S → C     | UTF-8 reason; the server then closes the connection | — |
 * | `0x10` | HELLO      | C → S     | `u32 rank`                    | empty                     |
 * | `0x11` | SET        | C → S     | key, value                    | empty                     |
 * | `0x12` | GET        | C → S     | key (blocks until it exists)  | value                     |
 * | `0x13` | ADD        | C → S     | key, `i64 delta`              | `i64` new value           |
 * | `0x14` | WAIT       | C → S     | key list (blocks)             | empty                     |
 * | `0x15` | CHECK      | C → S     | key list                      | `u8` 1 when all exist     |
 * | `0x16` | DELETE     | C → S     | key                           | `u8` 1 when it existed    |
 * | `0x17` | NUM_KEYS   | C → S     | —                             | `u32` count               |
 * | `0x18` | CANCEL     | C → S     | `u32` id of a blocked GET/WAIT | none (the waiter is dropped) |
 * | `0x19` | GOODBYE    | C → S     | —                             | empty                     |
 * | `0x80` | OK         | S → C     | response payload              |                           |
 * | `0x81` | ERR        | S → C     | `u16` length + code (ASCII), UTF-8 message |              |
 *
 * Many requests may be in flight on one connection; GET and WAIT block server-side, so responses arrive
 * out of order and the client matches them by request id. A malformed, unknown or oversized frame makes
 * the server close that one connection; it keeps serving the others.
 *
 * @module
 */

import * as crypto from 'node:crypto';
import * as net from 'node:net';

import { TpkitError } from '../errors';
import { envStoreToken, envTimeoutMs } from './env';
import {
  integerInRange,
  nonEmptyString,
  nonNegativeInteger,
  options,
  positiveInteger,
  rangeError,
  typeError,
} from '../validate';

/**
 * Key prefix under which the server records lost ranks: when a client that registered `rank` (see
 * {@link TCPStore.connect}) drops its connection without a clean {@link TCPStore.close} (process killed,
 * network lost), the server sets `__tpkit/dead/<rank>` to a short UTF-8 reason string. Other ranks can
 * `check` / `get` it to name the lost peer (tpkit's addition; PyTorch reports this through its elastic agent).
 */
export const DEAD_RANK_PREFIX = '__tpkit/dead/';

/**
 * Options shared by {@link TCPStoreServer} and {@link TCPStore}.
 *
 * The semantics follow PyTorch's c10d `TCPStore` (`timeout`, default 300 s); the token-based
 * authentication is tpkit's addition.
 */
export interface StoreOptions {
  /**
   * Timeout in milliseconds (positive integer) for connecting and for each operation; ops accept a
   * per-call override. Default: env `TPKIT_TIMEOUT_MS`, else 300 000 ms (torch's default).
   */
  timeoutMs?: number;
  /**
   * Shared secret (non-empty string). When set, the server challenges every connection with a random
   * nonce and requires HMAC-SHA256(token, nonce) back; clients and server must agree on whether a token
   * is used. Default: env `TPKIT_STORE_TOKEN` (unset or empty means no authentication).
   */
  token?: string;
  /**
   * Largest frame body in bytes accepted (integer in [1024, 2^32)); a bigger frame closes that
   * connection. Bounds the value size of `set` to about this minus the key. Default 64 MiB.
   */
  maxMessageBytes?: number;
}

/** Longest key, in UTF-8 bytes. */
const MAX_KEY_BYTES = 4096;
/** Default frame limit: 64 MiB. */
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** torch.distributed's default store timeout. */
const DEFAULT_TIMEOUT_MS = 300_000;
/** How long a connection may take to answer the auth challenge, by default. */
const DEFAULT_AUTH_TIMEOUT_MS = 5_000;
/** Frame limit before a connection has authenticated (the AUTH frame is 37 bytes). */
const PRE_AUTH_MAX_BYTES = 64;
/** Delay between connection attempts. */
const RETRY_INTERVAL_MS = 100;
/** Most blocked GET/WAIT requests one connection may hold on the server. */
const MAX_WAITERS_PER_CONNECTION = 65_536;
/** How long close() waits for the server to acknowledge GOODBYE. */
const GOODBYE_TIMEOUT_MS = 2_000;

const MAGIC = 0x534b5054; // "TPKS" read as u32 LE
const PROTOCOL_VERSION = 1;
const NONCE_BYTES = 32;
const MAC_BYTES = 32;
/** op (u8) + request id (u32). */
const BODY_HEADER_BYTES = 5;

const enum Op {
  HANDSHAKE = 0x01,
  AUTH = 0x02,
  AUTH_OK = 0x03,
  AUTH_FAIL = 0x04,
  HELLO = 0x10,
  SET = 0x11,
  GET = 0x12,
  ADD = 0x13,
  WAIT = 0x14,
  CHECK = 0x15,
  DELETE = 0x16,
  NUM_KEYS = 0x17,
  CANCEL = 0x18,
  GOODBYE = 0x19,
  OK = 0x80,
  ERR = 0x81,
}

const RETRYABLE_CONNECT_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

// ---------------------------------------------------------------------------------------------------------
// Options and argument validation
// ---------------------------------------------------------------------------------------------------------

interface ResolvedOptions {
  timeoutMs: number;
  token: string | undefined;
  maxMessageBytes: number;
}

/** Validates `opts` and fills defaults from the environment (read synchronously, at call time). */
function resolveOptions(opts: unknown): ResolvedOptions & { rank?: number; authTimeoutMs: number } {
  const o = options<StoreOptions & { rank?: number; authTimeoutMs?: number }>(opts, 'opts');
  // Defaults from the environment, read when an option is absent (readTpkitEnv parses every TPKIT_* variable).
  const timeoutMs = o.timeoutMs !== undefined ? positiveInteger(o.timeoutMs, 'timeoutMs') : envTimeoutMs(process.env) ?? DEFAULT_TIMEOUT_MS;
  const token = o.token !== undefined ? nonEmptyString(o.token, 'token') : envStoreToken(process.env);
  const maxMessageBytes =
    o.maxMessageBytes === undefined
      ? DEFAULT_MAX_MESSAGE_BYTES
      : integerInRange(o.maxMessageBytes, 'maxMessageBytes', 1024, 2 ** 32);
  const authTimeoutMs =
    o.authTimeoutMs === undefined ? DEFAULT_AUTH_TIMEOUT_MS : positiveInteger(o.authTimeoutMs, 'authTimeoutMs');
  const out: ResolvedOptions & { rank?: number; authTimeoutMs: number } = {
    timeoutMs,
    token,
    maxMessageBytes,
    authTimeoutMs,
  };
  if (o.rank !== undefined) {
    nonNegativeInteger(o.rank, 'rank');
    if (o.rank > 0x7fffffff) throw rangeError('non-negative integer below 2^31', 'rank', o.rank);
    out.rank = o.rank;
  }
  return out;
}

/** Validates one key and returns its wire encoding (u16 LE length + UTF-8 bytes). */
function encodeKey(key: unknown, name = 'key'): Buffer {
  nonEmptyString(key, name);
  const bytes = Buffer.from(key as string, 'utf8');
  if (bytes.length > MAX_KEY_BYTES) throw rangeError(`string of at most ${MAX_KEY_BYTES} UTF-8 bytes`, name, key);
  const out = Buffer.allocUnsafe(2 + bytes.length);
  out.writeUInt16LE(bytes.length, 0);
  bytes.copy(out, 2);
  return out;
}

/** Validates a key list and returns its wire encoding (u32 LE count + keys). */
function encodeKeys(keys: unknown, name = 'keys'): Buffer[] {
  if (!Array.isArray(keys)) throw typeError('array of non-empty strings', name, keys);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32LE(keys.length, 0);
  return [count, ...keys.map((k, i) => encodeKey(k, `${name}[${i}]`))];
}

/** Validates a per-op options object and returns its timeout. */
function opTimeout(opts: unknown, fallback: number): number {
  const o = options<{ timeoutMs?: number }>(opts, 'opts');
  return o.timeoutMs === undefined ? fallback : positiveInteger(o.timeoutMs, 'timeoutMs');
}

/** `::ffff:10.0.0.1` → `10.0.0.1`; anything else unchanged. */
export function normalizeAddress(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function quoteKeys(keys: readonly string[]): string {
  const shown = keys.slice(0, 8).map((k) => JSON.stringify(k.length > 80 ? `${k.slice(0, 80)}…` : k));
  return shown.join(', ') + (keys.length > 8 ? `, … (${keys.length} keys)` : '');
}

// ---------------------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------------------

/** A protocol violation by the peer; closes the connection. */
class ProtocolError extends Error {
  override name = 'ProtocolError';
}

function encodeFrame(op: Op, reqId: number, parts: readonly Uint8Array[] = []): Buffer {
  let bodyBytes = BODY_HEADER_BYTES;
  for (const p of parts) bodyBytes += p.length;
  const out = Buffer.allocUnsafe(4 + bodyBytes);
  out.writeUInt32LE(bodyBytes, 0);
  out[4] = op;
  out.writeUInt32LE(reqId, 5);
  let off = 4 + BODY_HEADER_BYTES;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function encodeI64(value: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigInt64LE(value, 0);
  return b;
}

function encodeU32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value, 0);
  return b;
}

/**
 * Splits a byte stream into frame bodies. The length prefix is checked as soon as it arrives, so an
 * oversized frame is refused before its body is buffered.
 */
class FrameDecoder {
  /** Largest body accepted; may change between frames (it grows after authentication). */
  maxBytes: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #need = -1;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** True when part of a frame has been received. */
  get partial(): boolean {
    return this.#buffered > 0 || this.#need >= 0;
  }

  /**
   * Appends `chunk` and calls `onFrame` for each complete body, stopping when it returns false.
   * @throws ProtocolError on a length prefix out of range
   */
  push(chunk: Buffer, onFrame: (body: Buffer) => boolean): void {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    for (;;) {
      if (this.#need < 0) {
        if (this.#buffered < 4) return;
        const len = this.#take(4).readUInt32LE(0);
        if (len < BODY_HEADER_BYTES) throw new ProtocolError(`frame of ${len} bytes is shorter than its header`);
        if (len > this.maxBytes) {
          throw new ProtocolError(`frame of ${len} bytes exceeds the limit of ${this.maxBytes} bytes`);
        }
        this.#need = len;
      }
      if (this.#buffered < this.#need) return;
      const body = this.#take(this.#need);
      this.#need = -1;
      if (!onFrame(body)) return;
    }
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#buffered -= n;
    return out;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Reads a frame payload; every read past the end throws {@link ProtocolError}. */
class Reader {
  readonly #buf: Buffer;
  #off: number;

  constructor(buf: Buffer, off: number) {
    this.#buf = buf;
    this.#off = off;
  }

  #need(n: number, what: string): void {
    if (this.#off + n > this.#buf.length) throw new ProtocolError(`truncated ${what}`);
  }

  u8(): number {
    this.#need(1, 'u8');
    return this.#buf[this.#off++]!;
  }

  u16(): number {
    this.#need(2, 'u16');
    const v = this.#buf.readUInt16LE(this.#off);
    this.#off += 2;
    return v;
  }

  u32(): number {
    this.#need(4, 'u32');
    const v = this.#buf.readUInt32LE(this.#off);
    this.#off += 4;
    return v;
  }

  i64(): bigint {
    this.#need(8, 'i64');
    const v = this.#buf.readBigInt64LE(this.#off);
    this.#off += 8;
    return v;
  }

  bytes(n: number): Buffer {
    this.#need(n, 'bytes');
    const v = this.#buf.subarray(this.#off, this.#off + n);
    this.#off += n;
    return v;
  }

  string(n: number): string {
    try {
      return utf8.decode(this.bytes(n));
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      throw new ProtocolError('invalid UTF-8');
    }
  }

  key(): string {
    const n = this.u16();
    if (n === 0 || n > MAX_KEY_BYTES) throw new ProtocolError(`key of ${n} bytes`);
    return this.string(n);
  }

  keys(): string[] {
    const count = this.u32();
    // Each key takes at least 3 bytes: refuse absurd counts before allocating.
    if (count * 3 > this.#buf.length - this.#off) throw new ProtocolError(`truncated list of ${count} keys`);
    const out: string[] = [];
    for (let i = 0; i < count; i++) out.push(this.key());
    return out;
  }

  /** The remaining bytes (a view into the frame). */
  rest(): Buffer {
    const v = this.#buf.subarray(this.#off);
    this.#off = this.#buf.length;
    return v;
  }

  end(): void {
    if (this.#off !== this.#buf.length) throw new ProtocolError(`${this.#buf.length - this.#off} trailing bytes`);
  }
}

function hmac(token: string, nonce: Buffer): Buffer {
  return crypto.createHmac('sha256', token).update(nonce).digest();
}

// ---------------------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------------------

interface Waiter {
  conn: ServerConnection;
  reqId: number;
  op: Op.GET | Op.WAIT;
  keys: string[];
  missing: Set<string>;
}

interface ServerConnection {
  socket: net.Socket;
  decoder: FrameDecoder;
  state: 'auth' | 'ready' | 'closing';
  nonce: Buffer | undefined;
  authTimer: NodeJS.Timeout | undefined;
  rank: number | undefined;
  goodbye: boolean;
  reason: string | undefined;
  waiters: Map<number, Waiter>;
}

/**
 * The server half of the store, hosted by rank 0 inside its Node process (PyTorch c10d `TCPStore` with
 * `is_master=True`). It holds the key–value map in memory, answers blocked `get` / `wait` requests as keys
 * appear, and records ranks that disconnect without a clean close under {@link DEAD_RANK_PREFIX}.
 *
 * A connection that sends a malformed, unknown or oversized frame, or fails authentication, is closed; the
 * server never throws for anything a peer sends.
 */
export class TCPStoreServer {
  /** The address the server is bound to, exactly as given to {@link TCPStoreServer.listen}. */
  readonly host: string;
  /** The TCP port the server listens on (the picked port when 0 was asked for). */
  readonly port: number;

  readonly #server: net.Server;
  readonly #opts: ResolvedOptions & { authTimeoutMs: number };
  readonly #data = new Map<string, Buffer>();
  readonly #waiters = new Map<string, Set<Waiter>>();
  readonly #conns = new Set<ServerConnection>();
  #closing: Promise<void> | undefined;

  private constructor(server: net.Server, host: string, port: number, opts: ResolvedOptions & { authTimeoutMs: number }) {
    this.#server = server;
    this.host = host;
    this.port = port;
    this.#opts = opts;
  }

  /**
   * Starts a server bound to exactly `host` (never the wildcard address unless `host` is `0.0.0.0` / `::`).
   *
   * @param host - address to bind, e.g. `127.0.0.1` or the node's cluster interface address
   * @param port - TCP port, integer in [0, 65536); 0 picks a free port (read it back from {@link TCPStoreServer.port})
   * @param opts - {@link StoreOptions}; `token` turns on HMAC-SHA256 challenge–response authentication;
   *   `authTimeoutMs` (positive integer, default 5000 ms) is how long a connection may take to answer the
   *   challenge before it is closed
   * @returns the listening server
   * @throws TypeError / RangeError for invalid arguments (rejected before anything is bound)
   * @throws TpkitError `STORE_LISTEN_FAILED` when the address cannot be bound (e.g. `EADDRINUSE`)
   */
  static async listen(
    host: string,
    port: number,
    opts?: StoreOptions & { authTimeoutMs?: number },
  ): Promise<TCPStoreServer> {
    nonEmptyString(host, 'host');
    integerInRange(port, 'port', 0, 65536);
    return TCPStoreServer.#start(host, port, resolveOptions(opts));
  }

  static #start(host: string, port: number, opts: ResolvedOptions & { authTimeoutMs: number }): Promise<TCPStoreServer> {
    return new Promise((resolve, reject) => {
      const server = net.createServer({ noDelay: true });
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(
          new TpkitError('STORE_LISTEN_FAILED', `store server could not listen on ${hostPort(host, port)}: ${err.message}`, {
            backend: 'store',
            details: { host, port, errno: err.code },
            cause: err,
          }),
        );
      };
      server.once('error', onError);
      server.listen({ host, port, exclusive: true }, () => {
        server.off('error', onError);
        // A listening server has no error to report to anyone; keep it from becoming an uncaught exception.
        server.on('error', () => {});
        const bound = (server.address() as net.AddressInfo).port;
        const store = new TCPStoreServer(server, host, bound, opts);
        server.on('connection', (socket) => store.#onConnection(socket));
        resolve(store);
      });
    });
  }

  /**
   * Number of blocked `get` / `wait` requests the server holds (for tests and diagnostics).
   * @internal
   */
  get numWaiters(): number {
    let n = 0;
    for (const c of this.#conns) n += c.waiters.size;
    return n;
  }

  /**
   * Lets the hosting process exit once the server is only serving itself: the listening socket, the
   * connection of the host's own client (the one that says HELLO with `ownRank`) and every connection that has
   * not said HELLO as a rank (a foreign or half-open one) no longer keep Node's event loop alive, while
   * connections of other ranks still do — so rank 0 stays up, serving the store, until every other rank has
   * disconnected (exited or closed its client), and no `close()` is required at the end.
   *
   * @param ownRank - the rank of the hosting process (0 under `initDistributed`)
   * @returns this server
   */
  unref(ownRank: number): this {
    this.#unrefRank = ownRank;
    this.#server.unref();
    for (const socket of this.#sockets) {
      const rank = this.#socketRank.get(socket);
      if (rank === undefined || rank === ownRank) socket.unref();
    }
    return this;
  }

  #unrefRank: number | null = null;
  readonly #socketRank = new WeakMap<net.Socket, number>();
  readonly #sockets = new Set<net.Socket>();

  /**
   * Resolves once no client is connected, or after `timeoutMs` (node 0's launcher waits this way for the
   * ranks of other nodes to finish before it closes the store).
   */
  drained(timeoutMs: number): Promise<void> {
    if (this.#conns.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      timer.unref();
      const check = (): void => {
        if (this.#conns.size === 0) done();
      };
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#onDrain.add(check);
    });
  }

  readonly #onDrain = new Set<() => void>();

  /**
   * Stops listening and drops every connection (clients see their pending ops fail with
   * `STORE_UNREACHABLE`). Idempotent: later calls return the same promise. Ranks are not marked dead.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      for (const conn of this.#conns) {
        conn.state = 'closing';
        conn.socket.destroy();
      }
    });
    return this.#closing;
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #onConnection(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    if (this.#closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    // A connection that has not said HELLO as a rank (a port scanner, a stuck half-frame) never holds an
    // unref'd server's process open.
    if (this.#unrefRank !== null) socket.unref();
    const token = this.#opts.token;
    const conn: ServerConnection = {
      socket,
      decoder: new FrameDecoder(token === undefined ? this.#opts.maxMessageBytes : PRE_AUTH_MAX_BYTES),
      state: token === undefined ? 'ready' : 'auth',
      nonce: token === undefined ? undefined : crypto.randomBytes(NONCE_BYTES),
      authTimer: undefined,
      rank: undefined,
      goodbye: false,
      reason: undefined,
      waiters: new Map(),
    };
    this.#conns.add(conn);
    socket.on('data', (chunk: Buffer) => this.#onData(conn, chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      conn.reason ??= `socket error ${err.code ?? err.message}`;
    });
    socket.on('end', () => {
      if (conn.decoder.partial) conn.reason ??= 'connection closed in the middle of a frame';
    });
    socket.on('close', () => this.#onClose(conn));

    const hello = Buffer.alloc(6);
    hello.writeUInt32LE(MAGIC, 0);
    hello[4] = PROTOCOL_VERSION;
    hello[5] = conn.nonce === undefined ? 0 : 1;
    socket.write(encodeFrame(Op.HANDSHAKE, 0, conn.nonce === undefined ? [hello] : [hello, conn.nonce]));
    if (conn.state === 'auth') {
      conn.authTimer = setTimeout(() => this.#drop(conn, 'authentication timed out'), this.#opts.authTimeoutMs);
      conn.authTimer.unref();
    }
  }

  #drop(conn: ServerConnection, reason: string): void {
    conn.reason ??= reason;
    conn.state = 'closing';
    conn.socket.destroy();
  }

  #onData(conn: ServerConnection, chunk: Buffer): void {
    if (conn.state === 'closing') return;
    try {
      conn.decoder.push(chunk, (body) => {
        this.#onFrame(conn, body);
        return conn.state !== 'closing';
      });
    } catch (err) {
      this.#drop(conn, err instanceof ProtocolError ? `protocol error: ${err.message}` : `internal error: ${String(err)}`);
    }
  }

  #onClose(conn: ServerConnection): void {
    clearTimeout(conn.authTimer);
    this.#conns.delete(conn);
    for (const w of [...conn.waiters.values()]) this.#removeWaiter(w);
    // Only the latest connection of a rank speaks for it: a restarted rank's new connection is not declared
    // dead when its predecessor's close is seen late.
    if (conn.rank !== undefined && !conn.goodbye && !this.#closing && this.#rankConn.get(conn.rank) === conn) {
      const reason = `rank ${conn.rank} lost: ${conn.reason ?? 'connection closed without goodbye'}`;
      this.#setValue(`${DEAD_RANK_PREFIX}${conn.rank}`, Buffer.from(reason, 'utf8'));
    }
    if (conn.rank !== undefined && this.#rankConn.get(conn.rank) === conn) this.#rankConn.delete(conn.rank);
    if (this.#conns.size === 0) for (const f of [...this.#onDrain]) f();
  }

  /** The latest connection that said HELLO for each rank. */
  readonly #rankConn = new Map<number, ServerConnection>();

  #ok(conn: ServerConnection, reqId: number, payload?: Uint8Array): void {
    if (conn.socket.destroyed || conn.state === 'closing') return;
    conn.socket.write(encodeFrame(Op.OK, reqId, payload === undefined ? [] : [payload]));
  }

  #err(conn: ServerConnection, reqId: number, code: string, message: string): void {
    if (conn.socket.destroyed || conn.state === 'closing') return;
    const c = Buffer.from(code, 'ascii');
    const len = Buffer.allocUnsafe(2);
    len.writeUInt16LE(c.length, 0);
    conn.socket.write(encodeFrame(Op.ERR, reqId, [len, c, Buffer.from(message, 'utf8')]));
  }

  #onFrame(conn: ServerConnection, body: Buffer): void {
    const op = body[0]!;
    const reqId = body.readUInt32LE(1);
    const r = new Reader(body, BODY_HEADER_BYTES);

    if (conn.state === 'auth') {
      if (op !== Op.AUTH) throw new ProtocolError(`command 0x${op.toString(16)} before authentication`);
      const mac = r.bytes(MAC_BYTES);
      r.end();
      const expected = hmac(this.#opts.token!, conn.nonce!);
      clearTimeout(conn.authTimer);
      if (!crypto.timingSafeEqual(mac, expected)) {
        conn.reason = 'authentication failed';
        conn.state = 'closing';
        conn.socket.end(encodeFrame(Op.AUTH_FAIL, 0, [Buffer.from('wrong token', 'utf8')]));
        setTimeout(() => conn.socket.destroy(), 1_000).unref();
        return;
      }
      conn.state = 'ready';
      conn.decoder.maxBytes = this.#opts.maxMessageBytes;
      conn.socket.write(encodeFrame(Op.AUTH_OK, 0));
      return;
    }

    switch (op) {
      case Op.HELLO: {
        const rank = r.u32();
        r.end();
        if (rank > 0x7fffffff) throw new ProtocolError(`rank ${rank} out of range`);
        conn.rank = rank;
        this.#socketRank.set(conn.socket, rank);
        // A rank that connects again (a restart against the same store) is alive: forget its death.
        this.#rankConn.set(rank, conn);
        if (this.#data.has(`${DEAD_RANK_PREFIX}${rank}`)) this.#data.delete(`${DEAD_RANK_PREFIX}${rank}`);
        // After unref(): a connection holds the process open only once it has said HELLO as another rank.
        if (this.#unrefRank !== null) {
          if (this.#unrefRank === rank) conn.socket.unref();
          else conn.socket.ref();
        }
        this.#ok(conn, reqId);
        return;
      }
      case Op.SET: {
        const key = r.key();
        // Copy: the frame may be a view into a larger socket chunk.
        const value = Buffer.from(r.rest());
        this.#setValue(key, value);
        this.#ok(conn, reqId);
        return;
      }
      case Op.GET: {
        const key = r.key();
        r.end();
        const value = this.#data.get(key);
        if (value !== undefined) this.#ok(conn, reqId, value);
        else this.#addWaiter(conn, reqId, Op.GET, [key], [key]);
        return;
      }
      case Op.ADD: {
        const key = r.key();
        const delta = r.i64();
        r.end();
        const old = this.#data.get(key);
        let current = 0n;
        if (old !== undefined) {
          const text = old.toString('utf8').trim();
          if (!/^[+-]?\d{1,19}$/.test(text)) {
            this.#err(conn, reqId, 'STORE_VALUE_NOT_INTEGER', `store add to key ${JSON.stringify(key)}: its value is not a decimal integer`);
            return;
          }
          current = BigInt(text);
        }
        const next = current + delta;
        if (next > BigInt(Number.MAX_SAFE_INTEGER) || next < BigInt(Number.MIN_SAFE_INTEGER)) {
          this.#err(conn, reqId, 'STORE_VALUE_NOT_INTEGER', `store add to key ${JSON.stringify(key)}: result ${next} is not a safe integer`);
          return;
        }
        this.#setValue(key, Buffer.from(next.toString(), 'utf8'));
        this.#ok(conn, reqId, encodeI64(next));
        return;
      }
      case Op.WAIT: {
        const keys = r.keys();
        r.end();
        const missing = keys.filter((k) => !this.#data.has(k));
        if (missing.length === 0) this.#ok(conn, reqId);
        else this.#addWaiter(conn, reqId, Op.WAIT, keys, missing);
        return;
      }
      case Op.CHECK: {
        const keys = r.keys();
        r.end();
        this.#ok(conn, reqId, Uint8Array.of(keys.every((k) => this.#data.has(k)) ? 1 : 0));
        return;
      }
      case Op.DELETE: {
        const key = r.key();
        r.end();
        this.#ok(conn, reqId, Uint8Array.of(this.#data.delete(key) ? 1 : 0));
        return;
      }
      case Op.NUM_KEYS: {
        r.end();
        this.#ok(conn, reqId, encodeU32(this.#data.size));
        return;
      }
      case Op.CANCEL: {
        const target = r.u32();
        r.end();
        const w = conn.waiters.get(target);
        if (w !== undefined) this.#removeWaiter(w);
        return;
      }
      case Op.GOODBYE: {
        r.end();
        conn.goodbye = true;
        this.#ok(conn, reqId);
        return;
      }
      default:
        throw new ProtocolError(`unknown command 0x${op.toString(16)}`);
    }
  }

  #addWaiter(conn: ServerConnection, reqId: number, op: Op.GET | Op.WAIT, keys: string[], missing: string[]): void {
    if (conn.waiters.has(reqId)) throw new ProtocolError(`duplicate request id ${reqId}`);
    if (conn.waiters.size >= MAX_WAITERS_PER_CONNECTION) throw new ProtocolError('too many blocked requests');
    const w: Waiter = { conn, reqId, op, keys: missing, missing: new Set(missing) };
    conn.waiters.set(reqId, w);
    for (const k of missing) {
      let set = this.#waiters.get(k);
      if (set === undefined) this.#waiters.set(k, (set = new Set()));
      set.add(w);
    }
  }

  #removeWaiter(w: Waiter): void {
    for (const k of w.keys) {
      const set = this.#waiters.get(k);
      if (set === undefined) continue;
      set.delete(w);
      if (set.size === 0) this.#waiters.delete(k);
    }
    w.conn.waiters.delete(w.reqId);
  }

  #setValue(key: string, value: Buffer): void {
    this.#data.set(key, value);
    const set = this.#waiters.get(key);
    if (set === undefined) return;
    for (const w of [...set]) {
      w.missing.delete(key);
      if (w.op === Op.GET) {
        this.#removeWaiter(w);
        this.#ok(w.conn, w.reqId, value);
      } else if (w.missing.size === 0) {
        this.#removeWaiter(w);
        this.#ok(w.conn, w.reqId);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------------------

/** A connection attempt that may be retried until the deadline. */
class RetryableError extends Error {
  override name = 'RetryableError';
}

interface Pending {
  resolve: (r: Reader) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  what: string;
}

interface Handshake {
  resolve: () => void;
  reject: (err: Error) => void;
  sentAuth: boolean;
}

/**
 * A client of the store, one per rank (PyTorch c10d `TCPStore` semantics: `set`, blocking `get`, `add`,
 * `wait`, `check`, `delete_key`, `num_keys`). Many ops may be in flight at once over its one connection.
 *
 * The client keeps the process alive only while ops are pending; {@link TCPStore.close} releases it.
 */
export class TCPStore {
  /** The server's host, as given to {@link TCPStore.connect}. */
  readonly host: string;
  /** The server's TCP port. */
  readonly port: number;

  readonly #socket: net.Socket;
  readonly #decoder: FrameDecoder;
  readonly #opts: ResolvedOptions;
  #state: 'handshake' | 'open' | 'closing' | 'closed' | 'lost' = 'handshake';
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #lostError: TpkitError | undefined;
  #lastSocketError: NodeJS.ErrnoException | undefined;
  #handshake: Handshake | undefined;
  #server: TCPStoreServer | undefined;
  #closing: Promise<void> | undefined;

  private constructor(host: string, port: number, opts: ResolvedOptions) {
    this.host = host;
    this.port = port;
    this.#opts = opts;
    this.#decoder = new FrameDecoder(opts.maxMessageBytes + BODY_HEADER_BYTES);
    this.#socket = net.connect({ host, port, noDelay: true });
    this.#socket.setNoDelay(true);
    this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on('error', (err: NodeJS.ErrnoException) => {
      this.#lastSocketError = err;
    });
    this.#socket.on('close', () => this.#onClose());
  }

  /**
   * The local address of this client's connection to the server (IPv4-mapped IPv6 addresses given as IPv4):
   * the address of the interface that routes to the server, which tpkit advertises to Gloo peers by default.
   */
  get localAddress(): string {
    return normalizeAddress(this.#socket.localAddress ?? '');
  }

  /**
   * Connects a client to the store at `host:port`, retrying refused / reset / unresolvable connections
   * every ~100 ms until `timeoutMs` has passed (the server may not be up yet, as in torch's rendezvous).
   *
   * @param host - the server's address
   * @param port - the server's TCP port, integer in [1, 65536)
   * @param opts - {@link StoreOptions}; `rank` (non-negative integer) registers this client so the server
   *   sets `__tpkit/dead/<rank>` ({@link DEAD_RANK_PREFIX}) if the connection drops without {@link close}
   * @returns the connected client
   * @throws TypeError / RangeError for invalid arguments (before anything is sent)
   * @throws TpkitError `STORE_UNREACHABLE` naming `host:port` when no connection is made within `timeoutMs`
   * @throws TpkitError `STORE_AUTH_FAILED`, promptly, when the token is wrong or missing, or when a token is
   *   given but the server does not authenticate
   * @throws TpkitError `STORE_PROTOCOL` when the peer does not speak this protocol
   */
  static async connect(host: string, port: number, opts?: StoreOptions & { rank?: number }): Promise<TCPStore> {
    nonEmptyString(host, 'host');
    integerInRange(port, 'port', 1, 65536);
    return TCPStore.#connect(host, port, resolveOptions(opts));
  }

  /**
   * torch-like convenience (`TCPStore(host_name, port, world_size, is_master)`): when `isServer`, starts a
   * {@link TCPStoreServer} on `host:port` and connects a client to it, which then owns the server
   * ({@link close} closes both); otherwise just {@link connect}s.
   *
   * @param opts - `host`, `port` (integer in [0, 65536) for the server, 0 picks a free port; [1, 65536) for
   *   a client), `isServer` (boolean), optional `rank`, and {@link StoreOptions}
   * @returns the connected client; its {@link port} is the server's actual port
   * @throws TypeError / RangeError for invalid arguments
   * @throws TpkitError `STORE_LISTEN_FAILED`, `STORE_UNREACHABLE`, `STORE_AUTH_FAILED` as for
   *   {@link TCPStoreServer.listen} and {@link connect}
   */
  static async create(
    opts: StoreOptions & { host: string; port: number; isServer: boolean; rank?: number },
  ): Promise<TCPStore> {
    if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) throw typeError('object', 'opts', opts);
    const host = nonEmptyString(opts.host, 'host');
    if (typeof opts.isServer !== 'boolean') throw typeError('boolean', 'isServer', opts.isServer);
    const port = integerInRange(opts.port, 'port', opts.isServer ? 0 : 1, 65536);
    const resolved = resolveOptions(opts);
    if (!opts.isServer) return TCPStore.#connect(host, port, resolved);
    const server = await TCPStoreServer.listen(host, port, resolved);
    const connectHost = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
    try {
      const store = await TCPStore.#connect(connectHost, server.port, resolved);
      store.#server = server;
      return store;
    } catch (err) {
      await server.close();
      throw err;
    }
  }

  static async #connect(host: string, port: number, opts: ResolvedOptions & { rank?: number }): Promise<TCPStore> {
    const deadline = Date.now() + opts.timeoutMs;
    let last = 'no attempt';
    for (;;) {
      const store = new TCPStore(host, port, opts);
      try {
        await store.#awaitHandshake(deadline);
        if (opts.rank !== undefined) {
          await store.#request(Op.HELLO, [encodeU32(opts.rank)], `hello of rank ${opts.rank}`, Math.max(1, deadline - Date.now()), false, (r) => r.end());
        }
        store.#refreshRef();
        return store;
      } catch (err) {
        store.#state = 'closed';
        store.#socket.destroy();
        if (!(err instanceof RetryableError)) {
          if (err instanceof TpkitError && err.code === 'TIMEOUT') last = err.message;
          else throw err;
        } else last = err.message;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new TpkitError(
          'STORE_UNREACHABLE',
          `could not connect to store at ${hostPort(host, port)} within ${opts.timeoutMs} ms (${last})`,
          { backend: 'store', details: { host, port, timeoutMs: opts.timeoutMs } },
        );
      }
      await new Promise((r) => setTimeout(r, Math.min(RETRY_INTERVAL_MS, left)));
    }
  }

  /** Resolves once the handshake (and authentication) completed; rejects with RetryableError or TpkitError. */
  #awaitHandshake(deadline: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#failHandshake(new RetryableError(this.#lastSocketError?.code ?? 'no handshake from server in time'));
      }, Math.max(0, deadline - Date.now()));
      this.#handshake = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
        sentAuth: false,
      };
    });
  }

  #failHandshake(err: Error): void {
    const hs = this.#handshake;
    if (hs === undefined) return;
    this.#handshake = undefined;
    this.#state = 'closed';
    this.#socket.destroy();
    hs.reject(err);
  }

  #onHandshakeFrame(op: number, r: Reader): void {
    const hs = this.#handshake;
    if (hs === undefined) return;
    const where = hostPort(this.host, this.port);
    const fatal = (code: string, message: string): void =>
      this.#failHandshake(new TpkitError(code, message, { backend: 'store', details: { host: this.host, port: this.port } }));
    if (op === Op.HANDSHAKE && !hs.sentAuth) {
      const magic = r.u32();
      const version = r.u8();
      const auth = r.u8();
      if (magic !== MAGIC || version !== PROTOCOL_VERSION) {
        fatal('STORE_PROTOCOL', `peer at ${where} is not a tpkit store (protocol version ${version})`);
        return;
      }
      const token = this.#opts.token;
      if (auth === 0) {
        r.end();
        if (token !== undefined) {
          fatal('STORE_AUTH_FAILED', `store at ${where} does not authenticate clients, but a token was given`);
          return;
        }
        this.#openHandshake();
        return;
      }
      if (auth !== 1) {
        fatal('STORE_PROTOCOL', `store at ${where} asks for unknown authentication method ${auth}`);
        return;
      }
      const nonce = r.bytes(NONCE_BYTES);
      r.end();
      if (token === undefined) {
        fatal('STORE_AUTH_FAILED', `store at ${where} requires a token (set opts.token or TPKIT_STORE_TOKEN)`);
        return;
      }
      hs.sentAuth = true;
      this.#socket.write(encodeFrame(Op.AUTH, 0, [hmac(token, nonce)]));
      return;
    }
    if (op === Op.AUTH_OK && hs.sentAuth) {
      r.end();
      this.#openHandshake();
      return;
    }
    if (op === Op.AUTH_FAIL && hs.sentAuth) {
      fatal('STORE_AUTH_FAILED', `store at ${where} rejected the token`);
      return;
    }
    fatal('STORE_PROTOCOL', `unexpected message 0x${op.toString(16)} from store at ${where} during the handshake`);
  }

  #openHandshake(): void {
    const hs = this.#handshake!;
    this.#handshake = undefined;
    this.#state = 'open';
    hs.resolve();
  }

  #onData(chunk: Buffer): void {
    if (this.#state === 'closed' || this.#state === 'lost') return;
    try {
      this.#decoder.push(chunk, (body) => {
        this.#onFrame(body);
        return this.#state !== 'closed' && this.#state !== 'lost';
      });
    } catch (err) {
      const message = `protocol error from store at ${hostPort(this.host, this.port)}: ${err instanceof Error ? err.message : String(err)}`;
      if (this.#handshake !== undefined) {
        this.#failHandshake(new TpkitError('STORE_PROTOCOL', message, { backend: 'store' }));
      } else {
        this.#lose(new TpkitError('STORE_PROTOCOL', message, { backend: 'store' }));
      }
    }
  }

  #onFrame(body: Buffer): void {
    const op = body[0]!;
    const reqId = body.readUInt32LE(1);
    const r = new Reader(body, BODY_HEADER_BYTES);
    if (this.#handshake !== undefined) {
      this.#onHandshakeFrame(op, r);
      return;
    }
    if (op !== Op.OK && op !== Op.ERR) throw new ProtocolError(`unexpected message 0x${op.toString(16)}`);
    const p = this.#pending.get(reqId);
    if (p === undefined) return; // timed out or cancelled: the late answer is dropped
    this.#pending.delete(reqId);
    clearTimeout(p.timer);
    this.#refreshRef();
    if (op === Op.OK) {
      p.resolve(r);
    } else {
      const code = r.string(r.u16());
      const message = r.rest().toString('utf8');
      p.reject(new TpkitError(code, message, { backend: 'store' }));
    }
  }

  #onClose(): void {
    if (this.#handshake !== undefined) {
      const hs = this.#handshake;
      if (hs.sentAuth) {
        this.#failHandshake(
          new TpkitError('STORE_AUTH_FAILED', `store at ${hostPort(this.host, this.port)} closed the connection during authentication`, {
            backend: 'store',
          }),
        );
      } else {
        this.#failHandshake(new RetryableError(this.#lastSocketError?.code ?? 'connection closed before the handshake'));
      }
      return;
    }
    if (this.#state === 'closing') {
      this.#rejectAll((p) => new TpkitError('STORE_CLOSED', `store client closed while ${p.what} was pending`, { backend: 'store' }));
      return;
    }
    if (this.#state === 'open') {
      const why = this.#lastSocketError?.code ?? 'closed by the server';
      this.#lose(new TpkitError('STORE_UNREACHABLE', `lost connection to store at ${hostPort(this.host, this.port)} (${why})`, {
        backend: 'store',
        details: { host: this.host, port: this.port },
      }));
    }
  }

  /** Marks the connection lost: every pending and later op rejects with `err`. */
  #lose(err: TpkitError): void {
    if (this.#state !== 'open') return;
    this.#state = 'lost';
    this.#lostError = err;
    this.#socket.destroy();
    this.#rejectAll(() => err);
  }

  #rejectAll(make: (p: Pending) => Error): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of all) {
      clearTimeout(p.timer);
      p.reject(make(p));
    }
    this.#refreshRef();
  }

  /** Holds the process open only while ops are in flight. */
  #refreshRef(): void {
    if (this.#pending.size > 0) this.#socket.ref();
    else this.#socket.unref();
  }

  #unavailable(): TpkitError {
    if (this.#state === 'lost' && this.#lostError !== undefined) return this.#lostError;
    return new TpkitError('STORE_CLOSED', `store client for ${hostPort(this.host, this.port)} is closed`, { backend: 'store' });
  }

  /**
   * Sends one request and resolves with `parse` applied to the response payload.
   * `cancellable` requests (GET, WAIT) send CANCEL on timeout so the server drops its waiter.
   */
  #request<T>(
    op: Op,
    parts: Buffer[],
    what: string,
    timeoutMs: number,
    cancellable: boolean,
    parse: (r: Reader) => T,
    allowClosing = false,
  ): Promise<T> {
    const caller: { stack?: string } = {};
    Error.captureStackTrace(caller, this.#request);
    const withCallerStack = (err: Error): Error => {
      if (caller.stack !== undefined) err.stack = `${err.name}: ${err.message}\n${caller.stack.split('\n').slice(1).join('\n')}`;
      return err;
    };
    if (!(this.#state === 'open' || (allowClosing && this.#state === 'closing'))) {
      return Promise.reject(withCallerStack(this.#unavailable()));
    }
    let size = BODY_HEADER_BYTES;
    for (const p of parts) size += p.length;
    if (size > this.#opts.maxMessageBytes) {
      return Promise.reject(
        new RangeError(`Expected a message of at most ${this.#opts.maxMessageBytes} bytes (maxMessageBytes) for ${what} but it needs ${size} bytes`),
      );
    }
    const reqId = this.#nextId;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.#pending.delete(reqId)) return;
        this.#refreshRef();
        if (cancellable && this.#state === 'open') this.#socket.write(encodeFrame(Op.CANCEL, 0, [encodeU32(reqId)]));
        reject(
          withCallerStack(
            new TpkitError('TIMEOUT', `store ${what} timed out after ${timeoutMs} ms`, {
              backend: 'store',
              details: { op: what, timeoutMs, host: this.host, port: this.port },
            }),
          ),
        );
      }, timeoutMs);
      timer.unref();
      this.#pending.set(reqId, {
        timer,
        what,
        reject: (err) => reject(withCallerStack(err)),
        resolve: (r) => {
          let value: T;
          try {
            value = parse(r);
          } catch (err) {
            const e = new TpkitError('STORE_PROTOCOL', `malformed response to ${what} from store at ${hostPort(this.host, this.port)}`, {
              backend: 'store',
              cause: err,
            });
            reject(withCallerStack(e));
            this.#lose(e);
            return;
          }
          resolve(value);
        },
      });
      this.#refreshRef();
      this.#socket.write(encodeFrame(op, reqId, parts));
    });
  }

  /**
   * Sets `key` to `value`, overwriting it, and wakes every `get` / `wait` blocked on it (torch `set`).
   *
   * @param key - non-empty string of at most 4096 UTF-8 bytes
   * @param value - bytes, or a string stored as UTF-8; at most about `maxMessageBytes` bytes
   * @throws TypeError / RangeError for invalid arguments (before anything is sent)
   * @throws TpkitError `TIMEOUT` after `timeoutMs`; `STORE_CLOSED` after {@link close};
   *   `STORE_UNREACHABLE` when the connection to the server is lost
   */
  async set(key: string, value: Uint8Array | string): Promise<void> {
    const k = encodeKey(key);
    let v: Buffer;
    if (typeof value === 'string') v = Buffer.from(value, 'utf8');
    else if (value instanceof Uint8Array) v = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    else throw typeError('Uint8Array or string', 'value', value);
    await this.#request(Op.SET, [k, v], `set of key ${quoteKeys([key])}`, this.#opts.timeoutMs, false, (r) => r.end());
  }

  /**
   * Returns the value of `key`, waiting until some rank sets it (torch `get`).
   *
   * @param key - non-empty string of at most 4096 UTF-8 bytes
   * @param opts - `timeoutMs` (positive integer, ms) overrides the store's timeout for this call
   * @returns a copy of the value's bytes
   * @throws TypeError / RangeError for invalid arguments
   * @throws TpkitError `TIMEOUT` naming the key when it does not appear within the timeout (the server-side
   *   waiter is cancelled); `STORE_CLOSED`; `STORE_UNREACHABLE`
   */
  async get(key: string, opts?: { timeoutMs?: number }): Promise<Buffer> {
    const k = encodeKey(key);
    const timeoutMs = opTimeout(opts, this.#opts.timeoutMs);
    return this.#request(Op.GET, [k], `get of key ${quoteKeys([key])}`, timeoutMs, true, (r) => Buffer.from(r.rest()));
  }

  /**
   * Adds `delta` to the integer counter at `key` (a missing key counts as 0) and returns the new value;
   * the value is stored as a decimal string, as torch's `add` does, so `get` returns e.g. `"2"`.
   *
   * @param key - non-empty string of at most 4096 UTF-8 bytes
   * @param delta - safe integer (may be negative or 0)
   * @returns the counter after the addition
   * @throws TypeError / RangeError for invalid arguments
   * @throws TpkitError `STORE_VALUE_NOT_INTEGER` when the key holds a non-integer value or the result is not a
   *   safe integer; `TIMEOUT`; `STORE_CLOSED`; `STORE_UNREACHABLE`
   */
  async add(key: string, delta: number): Promise<number> {
    const k = encodeKey(key);
    if (typeof delta !== 'number') throw typeError('integer', 'delta', delta);
    if (!Number.isSafeInteger(delta)) throw rangeError('integer', 'delta', delta);
    return this.#request(Op.ADD, [k, encodeI64(BigInt(delta))], `add to key ${quoteKeys([key])}`, this.#opts.timeoutMs, false, (r) => {
      const v = r.i64();
      r.end();
      return Number(v);
    });
  }

  /**
   * Waits until every key in `keys` exists (torch `wait`). An empty list resolves at once.
   *
   * @param keys - array of non-empty strings of at most 4096 UTF-8 bytes each
   * @param opts - `timeoutMs` (positive integer, ms) overrides the store's timeout for this call
   * @throws TypeError / RangeError for invalid arguments
   * @throws TpkitError `TIMEOUT` naming the keys (the server-side waiter is cancelled); `STORE_CLOSED`;
   *   `STORE_UNREACHABLE`
   */
  async wait(keys: string[], opts?: { timeoutMs?: number }): Promise<void> {
    const parts = encodeKeys(keys);
    const timeoutMs = opTimeout(opts, this.#opts.timeoutMs);
    await this.#request(Op.WAIT, parts, `wait for keys ${quoteKeys(keys)}`, timeoutMs, true, (r) => r.end());
  }

  /**
   * Tells, without waiting, whether every key in `keys` exists (torch `check`). An empty list gives true.
   *
   * @param keys - array of non-empty strings of at most 4096 UTF-8 bytes each
   * @throws TypeError / RangeError for invalid arguments
   * @throws TpkitError `TIMEOUT`; `STORE_CLOSED`; `STORE_UNREACHABLE`
   */
  async check(keys: string[]): Promise<boolean> {
    const parts = encodeKeys(keys);
    return this.#request(Op.CHECK, parts, `check of keys ${quoteKeys(keys)}`, this.#opts.timeoutMs, false, (r) => {
      const v = r.u8();
      r.end();
      return v === 1;
    });
  }

  /**
   * Deletes `key` (torch `delete_key`).
   *
   * @param key - non-empty string of at most 4096 UTF-8 bytes
   * @returns true when the key existed
   * @throws TypeError / RangeError for invalid arguments
   * @throws TpkitError `TIMEOUT`; `STORE_CLOSED`; `STORE_UNREACHABLE`
   */
  async delete(key: string): Promise<boolean> {
    const k = encodeKey(key);
    return this.#request(Op.DELETE, [k], `delete of key ${quoteKeys([key])}`, this.#opts.timeoutMs, false, (r) => {
      const v = r.u8();
      r.end();
      return v === 1;
    });
  }

  /**
   * Number of keys in the store, tpkit's own `__tpkit/…` keys included (torch `num_keys`).
   *
   * @throws TpkitError `TIMEOUT`; `STORE_CLOSED`; `STORE_UNREACHABLE`
   */
  async numKeys(): Promise<number> {
    return this.#request(Op.NUM_KEYS, [], 'numKeys', this.#opts.timeoutMs, false, (r) => {
      const v = r.u32();
      r.end();
      return v;
    });
  }

  /**
   * Closes the client: pending ops reject with `TpkitError` code `STORE_CLOSED`, a goodbye tells the server
   * this rank left cleanly (so no `__tpkit/dead/<rank>` key is set), and the socket is released. Closes the
   * server too when this client owns it ({@link create} with `isServer`). Idempotent: later calls return the
   * same promise. Never rejects.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) this.#closing = this.#close();
    return this.#closing;
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    const wasOpen = this.#state === 'open';
    if (this.#state === 'open') this.#state = 'closing';
    this.#rejectAll(
      (p) => new TpkitError('STORE_CLOSED', `store client closed while ${p.what} was pending`, { backend: 'store' }),
    );
    if (wasOpen) {
      try {
        await this.#request(Op.GOODBYE, [], 'goodbye', Math.min(this.#opts.timeoutMs, GOODBYE_TIMEOUT_MS), false, (r) => r.end(), true);
      } catch {
        // The server is gone or slow: nothing more to tell it.
      }
    }
    this.#state = 'closed';
    this.#socket.destroy();
    this.#socket.unref();
    if (this.#server !== undefined) await this.#server.close();
  }
}
