/**
 * The devices single-process tests run on: always `cpu`, plus `cuda:0` when a GPU is visible — detected with
 * `cudaStatus()`, as test/collectives.test.ts, test/layers.test.ts and test/cuda.test.ts do. Without a GPU,
 * `cudaSkipReason` says why (what the loader tried, or cudaGetDeviceCount's error), for the one skipped test
 * each file registers in place of its cuda variants.
 *
 * @module
 */
import type { HostStorage } from '../../lib/backend/cpu';
import type { Device } from '../../lib/backend/types';
import { cudaStatus } from '../../lib/native/cuda';
import type { Tensor } from '../../lib/tensor';

const status = cudaStatus();

/** True when cuda tensors can be created on `cuda:0`. */
export const hasGpu: boolean = status.cuda;

/** Devices to run each value test on: `['cpu']`, or `['cpu', 'cuda:0']` with a GPU. */
export const DEVICES: readonly Device[] = hasGpu ? ['cpu', 'cuda:0'] : ['cpu'];

/** `['cuda:0']` with a GPU, else empty: for checks only a GPU can run (float16 / bfloat16 compute). */
export const CUDA_DEVICES: readonly Device[] = hasGpu ? ['cuda:0'] : [];

/** Why there is no GPU (undefined when there is one). */
export const cudaSkipReason: string | undefined = hasGpu ? undefined : `no GPU visible (${status.reason ?? 'unknown reason'})`;

/**
 * The raw 16-bit patterns of a float16 / bfloat16 tensor on any device, as a copy. On a GPU they come back
 * through a float32 readback and the host's narrowing, which is exact for every non-NaN value of the dtype, so
 * the patterns are the device's own (NaN payloads aside).
 */
export async function bitsOf(x: Tensor): Promise<Uint16Array> {
  if (x.dtype === 'float32') throw new TypeError(`bitsOf expects a float16 or bfloat16 tensor but received ${x.dtype}`);
  if (x.device === 'cpu') return Uint16Array.from((x._storage as HostStorage).data as Uint16Array);
  const host = await x.to({ device: 'cpu' });
  const bits = Uint16Array.from((host._storage as HostStorage).data as Uint16Array);
  host.dispose();
  return bits;
}
