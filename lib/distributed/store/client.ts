/**
 * The client half of tpkit's store ({@link TCPStore}); the wire codec is in ./wire.ts.
 *
 * @module
 */

import * as net from 'node:net';

import { TpkitError } from '../../errors';
import { integerInRange, nonEmptyString, rangeError, typeError } from '../../validate';
import { TCPStoreServer } from './server';
import { BODY_HEADER_BYTES, DEAD_RANK_PREFIX, FrameDecoder, GOODBYE_TIMEOUT_MS, MAGIC, NONCE_BYTES, Op, PROTOCOL_VERSION, ProtocolError, RETRY_INTERVAL_MS, Reader, ResolvedOptions, StoreOptions, encodeFrame, encodeI64, encodeKey, encodeKeys, encodeU32, hmac, hostPort, normalizeAddress, opTimeout, quoteKeys, resolveOptions } from './wire';

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

