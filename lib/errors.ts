/**
 * The one error class of tpkit, in the style of better-sqlite3's `SqliteError`: every failure that is not
 * an argument error carries a machine-readable {@link TpkitError.code}.
 *
 * Argument errors are plain `TypeError` / `RangeError` (see `validate.ts`).
 *
 * @module
 */

/**
 * Error codes of {@link TpkitError}: every code tpkit raises (test/hardening_codes.test.ts checks that each code
 * the sources throw is listed here), then the native libraries' own status names, prefixed `NCCL_…`
 * (ncclResult_t, e.g. `NCCL_UNHANDLED_CUDA_ERROR`), `CUBLAS_STATUS_…` (cublasStatus_t) and `CUDA_ERROR_…`
 * (cudaError_t, e.g. `CUDA_ERROR_MEMORY_ALLOCATION`).
 *
 * `COLLECTIVE_MISMATCH`: ranks disagree on an op (nothing was sent; the group stays usable). `NATIVE_ERROR`: an
 * unexpected native exception. `STORE_*`: the rendezvous store. `LOOPBACK_ADDRESS`: a multi-node rank would
 * advertise a loopback address. `DUPLICATE_RANK` / `WORLD_SIZE_MISMATCH`: two processes claim one rank, or
 * ranks disagree on the world size (caught at rendezvous, before Gloo connects). `SHM_UNAVAILABLE`: the shared-memory transport. `GLOO_*`: Gloo failures.
 */
export type TpkitErrorCode =
  | 'DISPOSED'
  | 'TIMEOUT'
  | 'PEER_LOST'
  | 'GROUP_BROKEN'
  | 'GROUP_DESTROYED'
  | 'COLLECTIVE_MISMATCH'
  | 'NOT_INITIALIZED'
  | 'ALREADY_INITIALIZED'
  | 'NO_CUDA_DEVICE'
  | 'CUDA_UNAVAILABLE'
  | 'DEVICE_OUT_OF_RANGE'
  | 'OUT_OF_MEMORY'
  | 'NATIVE_LOAD_FAILED'
  | 'NATIVE_ERROR'
  | 'STORE_UNREACHABLE'
  | 'STORE_CLOSED'
  | 'STORE_AUTH_FAILED'
  | 'STORE_PROTOCOL'
  | 'STORE_LISTEN_FAILED'
  | 'LOOPBACK_ADDRESS'
  | 'DUPLICATE_RANK'
  | 'WORLD_SIZE_MISMATCH'
  | 'SHM_UNAVAILABLE'
  | 'CHECKPOINT_INVALID'
  | 'LAUNCH_FAILED'
  | 'UNSUPPORTED'
  | 'EQUIVALENCE_FAILED'
  | 'GLOO_ABORTED'
  | 'GLOO_ENFORCE'
  | 'GLOO_ERROR'
  | 'GLOO_IO'
  | 'GLOO_PROTOCOL'
  | 'GLOO_RENDEZVOUS'
  | `NCCL_${string}`
  | `CUBLAS_STATUS_${string}`
  | `CUDA_ERROR_${string}`
  | (string & {});

/**
 * An error raised by tpkit or by a native library under it.
 *
 * @example
 * ```ts
 * try { await group.allReduce(t); }
 * catch (e) { if (e instanceof TpkitError && e.code === 'PEER_LOST') restart(); }
 * ```
 */
export class TpkitError extends Error {
  /** Machine-readable code, e.g. `TIMEOUT`, `PEER_LOST`, `GLOO_IO`, `NCCL_UNHANDLED_CUDA_ERROR`. */
  readonly code: TpkitErrorCode;
  /** The backend the error came from (`cpu`, `gloo`, `nccl`, `cuda`, `store`, `launcher`), when known. */
  readonly backend?: string;
  /** Extra structured facts (rank, op, sequence number, missing ranks, …), when known. */
  readonly details?: Readonly<Record<string, unknown>>;

  /**
   * @param code - machine-readable code
   * @param message - human-readable message, naming the rank / op / key concerned
   * @param opts - backend, structured details and the underlying cause
   */
  constructor(
    code: TpkitErrorCode,
    message: string,
    opts: { backend?: string; details?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'TpkitError';
    this.code = code;
    if (opts.backend !== undefined) this.backend = opts.backend;
    if (opts.details !== undefined) this.details = opts.details;
  }
}
