/**
 * Bridges safetensors data and tensors.
 *
 * @module
 */
import { adoptHostData, hostDataOf } from '../backend/index';
import { Tensor } from '../tensor';
import type { RawTensor } from './safetensors';

/**
 * Wraps raw checkpoint data as a host Tensor of the same dtype (float16/bfloat16 bits kept as they are).
 *
 * @param raw - from `SafetensorsFile.read` / `readRows` / `readColumns` / `readSlice`
 */
export function tensorFromRaw(raw: RawTensor): Tensor {
  if (raw.dtype === 'float32') return Tensor.from(raw.data as Float32Array, raw.shape);
  return Tensor.fromBits(raw.data as Uint16Array, raw.shape, { dtype: raw.dtype });
}

/**
 * @internal Like {@link tensorFromRaw} for data the safetensors reader just read into a fresh buffer that
 * nothing else holds: the tensor takes the buffer over instead of copying it (loading a model moves gigabytes;
 * each copy costs its page faults).
 */
export function adoptRaw(raw: RawTensor): Tensor {
  return Tensor._wrap(adoptHostData(raw.dtype, raw.data), raw.shape);
}

/**
 * The raw form of a host tensor, for `writeSafetensors` (float16/bfloat16 as bits).
 *
 * @throws TypeError for a non-host tensor
 */
export async function rawFromTensor(t: Tensor): Promise<RawTensor> {
  if (t.device !== 'cpu') throw new TypeError(`rawFromTensor expects a cpu tensor but received one on ${t.device}`);
  return { dtype: t.dtype, shape: t.shape.slice(), data: hostDataOf(t._storage).slice() };
}
