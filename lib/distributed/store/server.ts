/**
 * The server half of tpkit's store ({@link TCPStoreServer}); the wire codec is in ./wire.ts.
 *
 * @module
 */

import * as crypto from 'node:crypto';
import * as net from 'node:net';

import { TpkitError } from '../../errors';
import { integerInRange, nonEmptyString } from '../../validate';
import { BODY_HEADER_BYTES, DEAD_RANK_PREFIX, FrameDecoder, MAC_BYTES, MAGIC, MAX_WAITERS_PER_CONNECTION, NONCE_BYTES, Op, PRE_AUTH_MAX_BYTES, PROTOCOL_VERSION, ProtocolError, Reader, ResolvedOptions, StoreOptions, encodeFrame, encodeI64, encodeU32, hmac, hostPort, resolveOptions } from './wire';

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
 * The server half of the store, hosted by node 0's launcher or by rank 0 in its own process (PyTorch c10d `TCPStore` with
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

