/**
 * Reuse of the host memory of freed cpu tensors.
 *
 * Why: a fresh typed array of a few MiB is backed by pages the kernel has not mapped yet, and the first write
 * to each page faults; V8 frees the old array only at its next garbage collection, and glibc then gives large
 * blocks back to the kernel. Measured on the 2-core VM: a 1024³ matmul spent 1.4–1.8 ms of its ~11 ms in those
 * faults (bench/README.md, "Why the GEMM target is missed"). Buffers of disposed tensors are therefore kept,
 * by exact byte length, and handed to the next tensor of the same size: inference loops allocate the same
 * shapes over and over.
 *
 * Safety: a buffer may still be read or written by native work started before its tensor was freed (a
 * matmul or collective in flight on the libuv pool or a communicator thread). Every operation that hands host
 * arrays to native code holds a ticket ({@link hostWork}) from before it reads the arrays until its native work
 * has settled; a freed buffer waits in quarantine until every ticket taken before the free has ended. Only
 * cpu-backend storages are pooled, and their arrays never reach user code (`toFloat32Array()` copies).
 *
 * Bounds: `TPKIT_HOST_POOL_MB` (default 256; 0 disables) caps the pooled bytes, oldest evicted first; buffers
 * under 64 KiB are not pooled (small allocations do not fault page by page).
 *
 * @module
 * @internal
 */

const MIN_BYTES = 64 * 1024;

function capFromEnv(): number {
  const v = process.env.TPKIT_HOST_POOL_MB;
  if (v === undefined || v.trim() === '') return 256 * 2 ** 20;
  const mb = Number(v);
  if (!Number.isFinite(mb) || mb < 0 || !Number.isInteger(mb)) {
    throw new RangeError(`TPKIT_HOST_POOL_MB must be a non-negative integer (MiB), got '${v}'`);
  }
  return mb * 2 ** 20;
}

/** Counters of the pool (tests and benchmarks). */
export interface HostPoolStats {
  /** Bytes held ready for reuse. */
  pooledBytes: number;
  /** Buffers held ready for reuse. */
  pooledBuffers: number;
  /** Buffers freed while older work was in flight, not yet reusable. */
  quarantined: number;
  /** Allocations served from the pool since load. */
  hits: number;
  /** Allocations of poolable size that found no buffer. */
  misses: number;
  /** Work tickets outstanding. */
  inFlight: number;
  /** The cap in bytes. */
  capBytes: number;
}

class HostPool {
  private readonly ready = new Map<number, ArrayBuffer[]>();
  private readonly order: ArrayBuffer[] = []; // ready buffers, oldest first (eviction order)
  private quarantine: { buf: ArrayBuffer; epoch: number }[] = [];
  private readonly outstanding = new Set<number>();
  private nextTicket = 0;
  private pooledBytes = 0;
  private hits = 0;
  private misses = 0;

  constructor(private readonly capBytes: number) {}

  begin(): number {
    const t = this.nextTicket++;
    this.outstanding.add(t);
    return t;
  }

  end(ticket: number): void {
    this.outstanding.delete(ticket);
    if (this.quarantine.length > 0) this.drain();
  }

  /** Takes a buffer of exactly `bytes`, or null. */
  take(bytes: number): ArrayBuffer | null {
    if (bytes < MIN_BYTES) return null;
    if (this.quarantine.length > 0) this.drain();
    const list = this.ready.get(bytes);
    const buf = list?.pop();
    if (!buf) {
      this.misses++;
      return null;
    }
    if (list!.length === 0) this.ready.delete(bytes);
    this.order.splice(this.order.indexOf(buf), 1);
    this.pooledBytes -= bytes;
    this.hits++;
    return buf;
  }

  /** Offers the buffer of a freed storage. */
  release(buf: ArrayBuffer): void {
    if (buf.byteLength < MIN_BYTES || buf.byteLength > this.capBytes) return;
    if (this.outstanding.size === 0) this.add(buf);
    else this.quarantine.push({ buf, epoch: this.nextTicket });
  }

  stats(): HostPoolStats {
    return {
      pooledBytes: this.pooledBytes,
      pooledBuffers: this.order.length,
      quarantined: this.quarantine.length,
      hits: this.hits,
      misses: this.misses,
      inFlight: this.outstanding.size,
      capBytes: this.capBytes,
    };
  }

  /** Drops every pooled buffer (the memory goes back at V8's next collection). */
  clear(): void {
    this.ready.clear();
    this.order.length = 0;
    this.quarantine = [];
    this.pooledBytes = 0;
  }

  /** Moves quarantined buffers whose older work has all ended to the ready lists. */
  private drain(): void {
    let oldest = Infinity;
    for (const t of this.outstanding) if (t < oldest) oldest = t;
    const keep: { buf: ArrayBuffer; epoch: number }[] = [];
    for (const q of this.quarantine) {
      if (q.epoch <= oldest) this.add(q.buf);
      else keep.push(q);
    }
    this.quarantine = keep;
  }

  private add(buf: ArrayBuffer): void {
    const bytes = buf.byteLength;
    while (this.pooledBytes + bytes > this.capBytes && this.order.length > 0) {
      const old = this.order.shift()!;
      const list = this.ready.get(old.byteLength)!;
      list.splice(list.indexOf(old), 1);
      if (list.length === 0) this.ready.delete(old.byteLength);
      this.pooledBytes -= old.byteLength;
    }
    let list = this.ready.get(bytes);
    if (!list) this.ready.set(bytes, (list = []));
    list.push(buf);
    this.order.push(buf);
    this.pooledBytes += bytes;
  }
}

// Read once, when tpkit is loaded: a bad value fails the import with the RangeError above.
const pool = new HostPool(capFromEnv());

/**
 * Runs `fn`, which hands host arrays to native work, holding a ticket until it settles: buffers freed
 * meanwhile are not reused before then. Take it before reading the arrays out of their storages.
 */
export async function hostWork<T>(fn: () => Promise<T>): Promise<T> {
  const ticket = pool.begin();
  try {
    return await fn();
  } finally {
    pool.end(ticket);
  }
}

/** A buffer of exactly `bytes` from a freed storage, or null (contents are stale: callers overwrite or zero). */
export function takeHostBuffer(bytes: number): ArrayBuffer | null {
  return pool.take(bytes);
}

/** Offers the buffer of a storage that is being freed. */
export function releaseHostBuffer(buf: ArrayBuffer): void {
  pool.release(buf);
}

/** The pool's counters. */
export function hostPoolStats(): HostPoolStats {
  return pool.stats();
}

/** Empties the pool. */
export function clearHostPool(): void {
  pool.clear();
}
