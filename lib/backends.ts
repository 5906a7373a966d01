/**
 * What this installation can run on.
 *
 * @module
 */
import { loadCore } from './native';

/** The report of {@link backends}. */
export interface BackendsReport {
  /** Host tensors, OpenBLAS GEMM: always true once the core addon loads. */
  cpu: true;
  /** `cuda:N` tensors: the cuda addon loaded and at least one GPU is visible. */
  cuda: boolean;
  /** The `nccl` process-group backend is available (cuda addon loaded, GPU visible). */
  nccl: boolean;
  /** The `gloo` process-group backend (always built into the core addon). */
  gloo: boolean;
  /** The BLAS library and its configuration, e.g. `OpenBLAS 0.3.21 DYNAMIC_ARCH … Haswell MAX_THREADS=64`. */
  blas: string;
  /** Number of visible GPUs (0 without the cuda addon or a driver). */
  cudaDevices: number;
  /** Why `cuda` is false, when it is (what was tried, how to fix it). */
  cudaReason?: string;
}

/**
 * Reports the available backends without throwing: a machine without CUDA gets `cuda: false` and the reason.
 *
 * @throws TpkitError `NATIVE_LOAD_FAILED` only when the core addon itself cannot load
 */
export function backends(): BackendsReport {
  const core = loadCore();
  let cuda = false;
  let nccl = false;
  let cudaDevices = 0;
  let cudaReason: string | undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { cudaStatus } = require('./native/cuda') as typeof import('./native/cuda');
    const st = cudaStatus();
    cuda = st.cuda;
    nccl = st.nccl;
    cudaDevices = st.cudaDevices;
    cudaReason = st.reason;
  } catch (e) {
    cudaReason = `cuda backend module failed to load: ${(e as Error).message}`;
  }
  const report: BackendsReport = { cpu: true, cuda, nccl, gloo: true, blas: core.blasConfig(), cudaDevices };
  if (!cuda && cudaReason) report.cudaReason = cudaReason;
  return report;
}
