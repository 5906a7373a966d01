/**
 * The wire codec of tpkit's store (see lib/distributed/store.ts for the whole store): frames, payload
 * encodings, option resolution and argument validation shared by the server ({@link TCPStoreServer}, store/server.ts)
 * and the client ({@link TCPStore}, store/client.ts).
 *
 * A TCP key–value rendezvous store, following the semantics of PyTorch's c10d `TCPStore`
 * (`torch.distributed.TCPStore`): node 0's `tpkit launch` process (or, without it, rank 0) hosts a
 * {@link TCPStoreServer} and every rank connects a {@link TCPStore} client to it. Ranks use it to exchange the
 * binary rendezvous blobs of Gloo communicators (`set` / `get`), to count arrivals (`add`), to wait for
 * each other (`wait`), and to learn of lost peers (keys under {@link DEAD_RANK_PREFIX}).
 *
 * Lifecycle: `TCPStoreServer.listen` (the host) → `TCPStore.connect` (every rank) → ops → `TCPStore.close`
 * (every rank) → `TCPStoreServer.close` (the host). {@link TCPStore.create} does the first two in one call,
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

import { envStoreToken, envTimeoutMs } from '../env';
import {
  integerInRange,
  nonEmptyString,
  nonNegativeInteger,
  options,
  positiveInteger,
  rangeError,
  typeError,
} from '../../validate';

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
export const MAX_KEY_BYTES = 4096;
/** Default frame limit: 64 MiB. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** torch.distributed's default store timeout. */
export const DEFAULT_TIMEOUT_MS = 300_000;
/** How long a connection may take to answer the auth challenge, by default. */
export const DEFAULT_AUTH_TIMEOUT_MS = 5_000;
/** Frame limit before a connection has authenticated (the AUTH frame is 37 bytes). */
export const PRE_AUTH_MAX_BYTES = 64;
/** Delay between connection attempts. */
export const RETRY_INTERVAL_MS = 100;
/** Most blocked GET/WAIT requests one connection may hold on the server. */
export const MAX_WAITERS_PER_CONNECTION = 65_536;
/** How long close() waits for the server to acknowledge GOODBYE. */
export const GOODBYE_TIMEOUT_MS = 2_000;

export const MAGIC = 0x534b5054; // "TPKS" read as u32 LE
export const PROTOCOL_VERSION = 1;
export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
/** op (u8) + request id (u32). */
export const BODY_HEADER_BYTES = 5;

export const enum Op {
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

export const RETRYABLE_CONNECT_ERRORS = new Set([
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

export interface ResolvedOptions {
  timeoutMs: number;
  token: string | undefined;
  maxMessageBytes: number;
}

/** Validates `opts` and fills defaults from the environment (read synchronously, at call time). */
export function resolveOptions(opts: unknown): ResolvedOptions & { rank?: number; authTimeoutMs: number } {
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
export function encodeKey(key: unknown, name = 'key'): Buffer {
  nonEmptyString(key, name);
  const bytes = Buffer.from(key as string, 'utf8');
  if (bytes.length > MAX_KEY_BYTES) throw rangeError(`string of at most ${MAX_KEY_BYTES} UTF-8 bytes`, name, key);
  const out = Buffer.allocUnsafe(2 + bytes.length);
  out.writeUInt16LE(bytes.length, 0);
  bytes.copy(out, 2);
  return out;
}

/** Validates a key list and returns its wire encoding (u32 LE count + keys). */
export function encodeKeys(keys: unknown, name = 'keys'): Buffer[] {
  if (!Array.isArray(keys)) throw typeError('array of non-empty strings', name, keys);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32LE(keys.length, 0);
  return [count, ...keys.map((k, i) => encodeKey(k, `${name}[${i}]`))];
}

/** Validates a per-op options object and returns its timeout. */
export function opTimeout(opts: unknown, fallback: number): number {
  const o = options<{ timeoutMs?: number }>(opts, 'opts');
  return o.timeoutMs === undefined ? fallback : positiveInteger(o.timeoutMs, 'timeoutMs');
}

/** `::ffff:10.0.0.1` → `10.0.0.1`; anything else unchanged. */
export function normalizeAddress(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

export function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function quoteKeys(keys: readonly string[]): string {
  const shown = keys.slice(0, 8).map((k) => JSON.stringify(k.length > 80 ? `${k.slice(0, 80)}…` : k));
  return shown.join(', ') + (keys.length > 8 ? `, … (${keys.length} keys)` : '');
}

// ---------------------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------------------

/** A protocol violation by the peer; closes the connection. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

export function encodeFrame(op: Op, reqId: number, parts: readonly Uint8Array[] = []): Buffer {
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

export function encodeI64(value: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigInt64LE(value, 0);
  return b;
}

export function encodeU32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value, 0);
  return b;
}

/**
 * Splits a byte stream into frame bodies. The length prefix is checked as soon as it arrives, so an
 * oversized frame is refused before its body is buffered.
 */
export class FrameDecoder {
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

export const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Reads a frame payload; every read past the end throws {@link ProtocolError}. */
export class Reader {
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

export function hmac(token: string, nonce: Buffer): Buffer {
  return crypto.createHmac('sha256', token).update(nonce).digest();
}

