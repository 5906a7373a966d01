/**
 * What every parallel layer shares: the group it works in, the dtype/device of its parameters, and loading a
 * parameter shard either from a full in-memory checkpoint tensor (`narrow`) or straight from a safetensors
 * file (only this rank's rows or columns are read).
 *
 * @module
 * @internal
 */
import { TpkitError } from '../errors';
import { ProcessGroup } from '../distributed/process_group';
import * as parallelState from '../parallel_state';
import { Tensor, TensorOptions, checkTensor, formatShape, parseDType, parseDevice } from '../tensor';
import type { DType, Device } from '../tensor';
import { SafetensorsFile } from '../checkpoint/safetensors';
import { adoptRaw } from '../checkpoint/load';
import { hostFloat32 } from '../backend/cpu';
import { adoptHostData } from '../backend/index';
import { optionalBoolean, options, typeError } from '../validate';

/** Options shared by every layer. */
export interface LayerOptions {
  /** Parameter dtype (default `float32`; host compute needs float32, cuda may use float16/bfloat16). */
  dtype?: DType;
  /** Parameter device (default `cpu`). */
  device?: Device | 'cuda';
  /**
   * The tensor-parallel group (default: `parallelState.getTensorModelParallelGroup()` when initialized, else
   * no parallelism: TP size 1).
   */
  group?: ProcessGroup;
}

/** Where a shard sits in a full checkpoint tensor: `length` entries from `start` along `dim`. */
export interface ShardSpec {
  dim: number;
  start: number;
  length: number;
}

/** @internal Resolved group facts of a layer. */
export interface Parallel {
  group: ProcessGroup | null;
  tpRank: number;
  tpSize: number;
  dtype: DType;
  device: Device;
}

/** @internal Resolves the group, dtype and device of a layer's options. */
export function resolveParallel(opts: LayerOptions): Parallel {
  const dtype = parseDType(opts.dtype);
  const device = parseDevice(opts.device);
  let group: ProcessGroup | null = null;
  if (opts.group !== undefined) {
    if (!(opts.group instanceof ProcessGroup)) {
      throw typeError('ProcessGroup', 'group', opts.group);
    }
    group = opts.group;
  } else if (parallelState.modelParallelIsInitialized()) {
    group = parallelState.getTensorModelParallelGroup();
  }
  if (group && !group.isMember) throw new RangeError(`this rank is not a member of the layer's group [${group.ranks.join(', ')}]`);
  return { group, tpRank: group ? group.rank : 0, tpSize: group ? group.size : 1, dtype, device };
}

/** @internal `n / tp`, or a RangeError in DESIGN.md's form. */
export function divide(n: number, tp: number, what: string): number {
  if (n % tp !== 0) throw new RangeError(`${what} ${n} is not divisible by tensor parallel size ${tp}`);
  return n / tp;
}

/** @internal Validates boolean layer options. */
export function flag(opts: object, name: string, fallback: boolean): boolean {
  return optionalBoolean((opts as Record<string, unknown>)[name], name, fallback);
}

/** @internal Validates and copies options. */
export function layerOptions<T extends LayerOptions>(opts: unknown): Partial<T> {
  return options<T>(opts, 'options');
}

/** @internal Converts a (possibly full-precision, possibly host) shard to the layer's dtype/device. */
export async function toParam(t: Tensor, p: Parallel): Promise<Tensor> {
  if (t.dtype === p.dtype && t.device === p.device) return t;
  const out = await t.to({ dtype: p.dtype, device: p.device } as TensorOptions);
  t.dispose();
  return out;
}

/**
 * @internal Narrows a full checkpoint tensor to `spec` after checking its shape.
 * @throws RangeError naming the expected and received shapes
 */
export function shardOf(full: Tensor, expected: readonly number[], spec: ShardSpec, what: string): Tensor {
  checkTensor(full, what);
  if (formatShape(full.shape) !== formatShape(expected)) {
    throw new RangeError(`Expected ${what} of shape ${formatShape(expected)} but received ${formatShape(full.shape)}`);
  }
  return full.narrow(spec.dim, spec.start, spec.length);
}

/**
 * @internal Reads only `spec` of tensor `name` from a safetensors file after checking the stored shape. For a
 * layer whose parameters are float32 on the host (`p`), 16-bit data are widened while they are read, so the
 * shard arrives in its final form without an intermediate 16-bit copy.
 * @throws RangeError for a wrong shape; TpkitError `CHECKPOINT_INVALID` for a malformed file
 */
export async function readShard(file: SafetensorsFile, name: string, expected: readonly number[], spec: ShardSpec, p?: Parallel): Promise<Tensor> {
  const info = file.info(name);
  if (formatShape(info.shape) !== formatShape(expected)) {
    throw new RangeError(`Expected tensor '${name}' of shape ${formatShape(expected)} in ${file.path} but it has shape ${formatShape(info.shape)}`);
  }
  if (p && p.dtype === 'float32' && p.device === 'cpu') {
    const { shape, data } = await file.readSliceAsFloat32(name, spec.dim, spec.start, spec.length, hostFloat32);
    return Tensor._wrap(adoptHostData('float32', data), shape);
  }
  const raw = spec.length === expected[spec.dim] ? await file.read(name) : await file.readSlice(name, spec.dim, spec.start, spec.length);
  return adoptRaw(raw);
}

/** @internal Throws a TypeError unless `file` is an open {@link SafetensorsFile} (`loadWeightFrom`'s first argument). */
export function checkFile(file: unknown): SafetensorsFile {
  if (!(file instanceof SafetensorsFile)) throw typeError('SafetensorsFile', 'file', file);
  return file;
}

/** @internal Throws TpkitError `NOT_INITIALIZED` for a parameter that was never loaded. */
export function loaded(t: Tensor | null, what: string): Tensor {
  if (t === null) throw new TpkitError('NOT_INITIALIZED', `${what} has not been loaded (call loadWeight / loadBias first)`);
  return t;
}
