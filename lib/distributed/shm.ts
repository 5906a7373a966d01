/**
 * Shared-memory transport of the gloo backend, for a process group whose ranks share a host
 * (native/core/shm_comm.h has the segment layout, the rounds and the waiting).
 *
 * Lifecycle, inside {@link GlooCommunicator.connect} after Gloo's own rendezvous:
 * 1. every rank publishes under `shm/facts/<rank>` of the group's store whether it wants shared memory
 *    (`TPKIT_SHM`, or initDistributed's `shm` option) and the facts that decide "same host": the boot id
 *    (/proc/sys/kernel/random/boot_id), the device of /dev/shm (`st_dev`), the user id and the pid namespace
 *    (peers' pids are checked for liveness). Not `LOCAL_WORLD_SIZE`: sub-groups and containers without a
 *    common /dev/shm decide right. Every rank reads every rank's facts, so all decide alike.
 * 2. rank 0 creates `/dev/shm/tpkit-<uid>-<pid namespace>-<pid>-<random>` (O_EXCL, 0600, space reserved with
 *    posix_fallocate) and publishes its path, or the reason it could not; first it unlinks the names left by
 *    creators of this user and pid namespace that died during their own setup;
 * 3. the others map it and report under `shm/mapped/<rank>`; once every rank has reported, every rank unlinks
 *    the name (the first wins): nothing is left in /dev/shm after any exit, SIGKILL included, once setup is
 *    over.
 * If any step fails (a full /dev/shm, a segment another rank cannot open) every rank falls back to Gloo TCP,
 * with one warning naming the size needed and `TPKIT_SHM`.
 *
 * The transport carries all-reduce (every op), all-gather, reduce-scatter, broadcast, all-to-all (even and uneven),
 * barrier, and send/recv (a byte ring per ordered pair, for groups of at most 16 ranks; larger groups send and
 * receive over Gloo TCP).
 *
 * @module
 * @internal
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';

import { loadCore, type NativeShmComm } from '../native';
import type { RendezvousStore } from './comm';

/** Whether shared memory is used when `TPKIT_SHM` is unset and no option is given. */
export const SHM_DEFAULT = true;

/** Where segments are created. */
export const SHM_DIR = '/dev/shm';

/**
 * Whether this rank wants the shared-memory transport: initDistributed's `shm` option, else `TPKIT_SHM`
 * (`on`/`1`/`true`, `off`/`0`/`false`), else {@link SHM_DEFAULT}.
 *
 * @throws TypeError for an option that is not a boolean; RangeError for another `TPKIT_SHM` value
 */
export function shmWanted(env: NodeJS.ProcessEnv, option?: unknown): boolean {
  if (option !== undefined) {
    if (typeof option !== 'boolean') throw new TypeError(`Expected boolean for shm but received ${String(option)} of type ${typeof option}`);
    return option;
  }
  const raw = env.TPKIT_SHM ?? '';
  const v = raw.trim().toLowerCase();
  if (v === '') return SHM_DEFAULT;
  if (v === 'on' || v === '1' || v === 'true') return true;
  if (v === 'off' || v === '0' || v === 'false') return false;
  throw new RangeError(`TPKIT_SHM must be 'on' or 'off', got '${raw}'`);
}

/** The facts ranks compare to decide that they share a host (null: no usable /dev/shm). */
function hostFacts(): { boot: string; shmDev: number; uid: number; pidNs: number } | null {
  try {
    return {
      boot: fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
      shmDev: fs.statSync(SHM_DIR).dev,
      uid: os.userInfo().uid,
      pidNs: fs.statSync('/proc/self/ns/pid').ino,
    };
  } catch {
    return null;
  }
}

/**
 * Unlinks the names of segments whose creator died during a setup (a SIGKILL between creating a segment and
 * every rank mapping it leaves its name behind): this user's, created in this pid namespace (where a pid can be
 * checked), by a process that no longer exists. Segments of live processes, of other users and of other pid
 * namespaces are left alone; any error is ignored (another job may be cleaning at the same time).
 */
function removeStaleSegments(uid: number, pidNs: number): void {
  let names: string[];
  try {
    names = fs.readdirSync(SHM_DIR);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^tpkit-(\d+)-(\d+)-(\d+)-[0-9a-f]{16}$/.exec(name);
    if (!m || Number(m[1]) !== uid || Number(m[2]) !== pidNs) continue;
    try {
      process.kill(Number(m[3]), 0);
      continue; // alive (or another user's process with that pid)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') continue;
    }
    try {
      fs.unlinkSync(`${SHM_DIR}/${name}`);
    } catch {
      // gone already
    }
  }
}

let warned = false;
function warnFallback(reason: string): void {
  if (warned) return;
  warned = true;
  process.emitWarning(`tpkit: shared-memory collectives are off for this group, using Gloo TCP: ${reason}. Free space in ${SHM_DIR} (or set TPKIT_SHM=off to silence this)`, { code: 'TPKIT_SHM_FALLBACK' });
}

const enc = (v: unknown): Uint8Array => Buffer.from(JSON.stringify(v));
const dec = (b: Buffer): Record<string, unknown> => JSON.parse(b.toString()) as Record<string, unknown>;

/**
 * Sets up the group's segment (see the module doc). Every rank of the group calls it. `check`: false with
 * TPKIT_CHECK=off (only op and element count are compared before data moves, as on Gloo).
 *
 * @returns the started native communicator (the same operations as Gloo's), or null when the group uses Gloo TCP
 *   (a rank does not want it, the ranks do not share a host, or the segment could not be set up: then one warning)
 * @throws TpkitError `TIMEOUT` when a rank does not report within `timeoutMs` of the call (one deadline for every step)
 */
export async function connectShm(rank: number, size: number, store: RendezvousStore, timeoutMs: number, check: boolean, wanted: boolean): Promise<NativeShmComm | null> {
  if (size <= 1) return null;
  // One deadline for the whole setup, as for Gloo's rendezvous before it.
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const facts = wanted ? hostFacts() : null;
  await store.set(`shm/facts/${rank}`, enc({ wanted, facts }));
  const all = await Promise.all(Array.from({ length: size }, (_, r) => store.get(`shm/facts/${r}`, { timeoutMs: left() }).then(dec)));
  const key = JSON.stringify(all[0]!.facts);
  if (!all.every((f) => f.wanted === true && f.facts !== null && JSON.stringify(f.facts) === key)) return null;

  const native = new (loadCore().ShmComm)(rank, size, timeoutMs, check);
  let path = '';
  let failure: string | null = null;
  try {
    if (rank === 0) {
      const { uid, pidNs } = facts!;
      removeStaleSegments(uid, pidNs);
      path = `${SHM_DIR}/tpkit-${uid}-${pidNs}-${process.pid}-${crypto.randomBytes(8).toString('hex')}`;
      try {
        native.create(path);
        await store.set('shm/segment', enc({ path }));
      } catch (e) {
        failure = (e as Error).message;
        await store.set('shm/segment', enc({ error: failure }));
      }
    } else {
      const seg = dec(await store.get('shm/segment', { timeoutMs: left() }));
      if (typeof seg.error === 'string') failure = seg.error;
      else {
        path = String(seg.path);
        try {
          native.open(path);
        } catch (e) {
          failure = (e as Error).message;
        }
      }
    }
    await store.set(`shm/mapped/${rank}`, enc(failure === null ? { ok: true } : { error: failure }));
    const mapped = await Promise.all(Array.from({ length: size }, (_, r) => store.get(`shm/mapped/${r}`, { timeoutMs: left() }).then(dec)));
    const bad = mapped.findIndex((m) => m.ok !== true);
    if (bad >= 0 && failure === null) failure = `rank ${bad}: ${String(mapped[bad]!.error)}`;
  } finally {
    // Every rank has mapped it (or given up): the name goes now, whatever follows.
    if (path) native.unlink(path);
  }
  if (failure !== null) {
    native.close();
    warnFallback(failure);
    return null;
  }
  native.start();
  return native;
}
