/**
 * Device dispatch: the one place that maps a device to its backend ({@link opsFor}) and that looks inside a
 * tensor's storage (host arrays, device buffers) for the modules that hand them to native code. Nothing outside
 * `lib/backend` casts `Tensor._storage`.
 *
 * The cuda backend (`./cuda`, which loads the CUDA addon) is required lazily, the first time a `cuda:N` device is
 * asked for: a CPU-only process never maps cuBLAS or NCCL. Neither backend imports `lib/tensor.ts`, so there is
 * no import cycle.
 *
 * @module
 * @internal
 */
import type { NativeDeviceBuffer } from '../native/cuda';
import { HostStorage, cpuOps } from './cpu';
import type { DType, Device, DeviceOps, Storage } from './types';

/** For results native code overwrites entirely (collective outputs): see {@link wrapHostFloat32}. */
export { hostFloat32 } from './cpu';

type CudaModule = typeof import('./cuda');
let cuda: CudaModule | undefined;

function cudaModule(): CudaModule {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  cuda ??= require('./cuda') as CudaModule;
  return cuda;
}

/**
 * The backend that owns `device`.
 * @throws TpkitError `CUDA_UNAVAILABLE` / `NO_CUDA_DEVICE` for a cuda device without the addon or a GPU
 */
export function opsFor(device: Device): DeviceOps {
  if (device === 'cpu') return cpuOps;
  return cudaModule().cudaBackend();
}

/** The float32 array of a host float32 storage (no copy), or null for any other storage. */
export function hostFloat32Of(storage: Storage): Float32Array | null {
  return storage instanceof HostStorage && storage.dtype === 'float32' ? storage.f32 : null;
}

/**
 * The elements of a host storage (raw bits for float16/bfloat16; no copy).
 * @throws TypeError for a storage that is not on the host
 */
export function hostDataOf(storage: Storage): Float32Array | Uint16Array {
  if (!(storage instanceof HostStorage)) throw new TypeError(`Expected host storage but received one on ${storage.device}`);
  return storage.data;
}

/**
 * Host storage that takes over `data` (the caller hands it over: nothing else may hold it), e.g. a checkpoint
 * shard the safetensors reader just read into a fresh buffer. float16/bfloat16 data are raw bits.
 */
export function adoptHostData(dtype: DType, data: Float32Array | Uint16Array): Storage {
  return new HostStorage(dtype, data);
}

/**
 * A host float32 storage wrapping `data` as is (no copy), for results native code wrote into a fresh array.
 */
export function wrapHostFloat32(data: Float32Array): Storage {
  return new HostStorage('float32', data);
}

/**
 * The native device buffer of a cuda storage (for the NCCL communicator).
 * @throws TypeError for a storage that is not on a cuda device; TpkitError `DISPOSED` after free()
 */
export function cudaBufferOf(storage: Storage): NativeDeviceBuffer {
  const { CudaStorage } = cudaModule();
  if (!(storage instanceof CudaStorage)) throw new TypeError(`Expected cuda storage but received one on ${storage.device}`);
  return storage.buffer;
}
