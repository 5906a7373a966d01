/**
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
 * The code is split in three files behind this one: store/wire.ts (frames, encodings, options), store/server.ts
 * ({@link TCPStoreServer}) and store/client.ts ({@link TCPStore}).
 *
 * @module
 */

export { DEAD_RANK_PREFIX, normalizeAddress, type StoreOptions } from './store/wire';
export { TCPStoreServer } from './store/server';
export { TCPStore } from './store/client';
