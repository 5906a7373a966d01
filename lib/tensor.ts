/**
 * `Tensor`: a dense, row-major, contiguous n-dimensional array on the host (`cpu`) or a GPU (`cuda:N`).
 *
 * Host compute is float32; float16 and bfloat16 are storage formats (checkpoints come in bfloat16) with exact
 * widening to float32 and round-to-nearest-even narrowing. On `cuda` devices every dtype computes (cuBLAS
 * accumulates in float32). Tensors own native or typed-array memory: call `dispose()` (or use `using`) when
 * done; the GC finalizer of device memory is only a safety net.
 *
 * @module
 */
import { TpkitError } from './errors';
import { opsFor } from './backend/index';
import { DType, Device, DeviceOps, ITEM_SIZE, Storage } from './backend/types';
import { dimIndex, finiteNumber, nonNegativeInteger, options, rangeError, shape as checkShape, typeError } from './validate';

export type { DType, Device } from './backend/types';

/** The dtypes a Tensor can hold. */
export const DTYPES: readonly DType[] = ['float32', 'float16', 'bfloat16'];

/** Options accepted by the Tensor constructors. */
export interface TensorOptions {
  /** Element type (default `float32`). */
  dtype?: DType;
  /** `cpu` (default), `cuda` (= `cuda:0`) or `cuda:N`. */
  device?: Device | 'cuda';
}

/** @internal The backend that owns `device` (device dispatch lives in lib/backend/index.ts). */
export { opsFor } from './backend/index';

/** @internal Validates a device string and normalises `cuda` to `cuda:0`. */
export function parseDevice(value: unknown, name = 'device'): Device {
  if (value === undefined) return 'cpu';
  if (typeof value !== 'string') throw typeError("'cpu', 'cuda' or 'cuda:N'", name, value);
  if (value === 'cpu') return 'cpu';
  if (value === 'cuda') return 'cuda:0';
  const m = /^cuda:(\d{1,3})$/.exec(value);
  if (!m) throw rangeError("'cpu', 'cuda' or 'cuda:N'", name, value);
  return `cuda:${Number(m[1])}`;
}

/** @internal Validates a dtype. */
export function parseDType(value: unknown, name = 'dtype'): DType {
  if (value === undefined) return 'float32';
  const expected = "one of 'float32', 'float16', 'bfloat16'";
  if (typeof value !== 'string') throw typeError(expected, name, value);
  if (!(DTYPES as readonly string[]).includes(value)) throw rangeError(expected, name, value);
  return value as DType;
}

function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Formats a shape for messages: `[2, 3]`. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

const MAX_NUMEL = 2 ** 32;

/** Reference count shared by views of one storage. */
class Shared {
  refs = 1;
  constructor(readonly storage: Storage) {}
}

// Safety net for tensors that were never disposed: each collected view drops its reference.
const finalizer = new FinalizationRegistry<Shared>((shared) => {
  if (--shared.refs === 0) shared.storage.free();
});

/**
 * A dense row-major tensor.
 *
 * @example
 * ```ts
 * const a = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
 * const row = a.narrow(0, 1, 1);           // [[4, 5, 6]]
 * console.log(await row.toFloat32Array()); // Float32Array [4, 5, 6]
 * a.dispose(); row.dispose();
 * ```
 */
export class Tensor {
  /** Sizes of each dimension (row-major, contiguous). */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
  /** Where the elements live. */
  readonly device: Device;
  #shared: Shared | null;

  private constructor(storage: Shared, shape: readonly number[]) {
    this.#shared = storage;
    this.shape = Object.freeze(shape.slice());
    this.dtype = storage.storage.dtype;
    this.device = storage.storage.device;
    finalizer.register(this, storage, this);
  }

  /** @internal Wraps storage produced by a backend. */
  static _wrap(storage: Storage, shape: readonly number[]): Tensor {
    return new Tensor(new Shared(storage), shape);
  }

  /**
   * Creates a tensor from float values, converted to `dtype` (round to nearest even for float16/bfloat16).
   *
   * @param data - `product(shape)` numbers, row-major
   * @param shape - dimension sizes (non-negative integers, at most 8 dims)
   * @throws TypeError / RangeError for a bad shape, dtype, device, or a data length that does not match the shape
   * @throws TpkitError `NO_CUDA_DEVICE` when a cuda device is requested and none is visible
   */
  static from(data: ArrayLike<number>, shape: readonly number[], opts?: TensorOptions): Tensor {
    const s = checkShape(shape);
    const o = options<TensorOptions>(opts, 'options');
    const dtype = parseDType(o.dtype);
    const device = parseDevice(o.device);
    if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number') {
      throw typeError('array or typed array of numbers', 'data', data);
    }
    const n = product(s);
    if (n > MAX_NUMEL) throw rangeError(`at most ${MAX_NUMEL} elements`, 'shape', shape);
    if (data.length !== n) {
      throw new RangeError(`Expected ${n} elements for data of shape ${formatShape(s)} but received ${data.length}`);
    }
    let f32: Float32Array;
    if (data instanceof Float32Array) f32 = data;
    else {
      f32 = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const v = data[i];
        if (typeof v !== 'number') throw typeError('number', `data[${i}]`, v);
        f32[i] = v;
      }
    }
    return Tensor._wrap(opsFor(device).fromFloat32(f32, dtype, device), s);
  }

  /**
   * Creates a float16 / bfloat16 tensor from raw 16-bit patterns (as stored in a checkpoint), copied as is.
   *
   * @throws RangeError when `bits.length` does not match the shape
   */
  static fromBits(bits: Uint16Array, shape: readonly number[], opts: { dtype: 'float16' | 'bfloat16'; device?: Device | 'cuda' }): Tensor {
    const s = checkShape(shape);
    if (!(bits instanceof Uint16Array)) throw typeError('Uint16Array', 'bits', bits);
    const dtype = parseDType(opts?.dtype);
    if (dtype === 'float32') throw rangeError("'float16' or 'bfloat16'", 'dtype', dtype);
    const device = parseDevice(opts.device);
    const n = product(s);
    if (bits.length !== n) throw new RangeError(`Expected ${n} elements for bits of shape ${formatShape(s)} but received ${bits.length}`);
    return Tensor._wrap(opsFor(device).fromBits(bits, dtype as 'float16' | 'bfloat16', device), s);
  }

  /** A tensor of zeros. @throws TypeError / RangeError for a bad shape, dtype or device */
  static zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
    return Tensor.#allocate(shape, opts, 'zeros');
  }

  /**
   * An uninitialised tensor, as `torch.empty`: its contents are unspecified — on the host it may reuse the buffer of
   * a disposed tensor of the same size (the host pool) and hold that tensor's old values. Use it only for a tensor
   * that is written in full before it is read (a `recv` buffer, an output); {@link Tensor.zeros} for zeros.
   *
   * @throws TypeError / RangeError for a bad shape, dtype or device
   */
  static empty(shape: readonly number[], opts?: TensorOptions): Tensor {
    return Tensor.#allocate(shape, opts, 'empty');
  }

  static #allocate(shape: readonly number[], opts: TensorOptions | undefined, how: 'zeros' | 'empty'): Tensor {
    const s = checkShape(shape);
    const o = options<TensorOptions>(opts, 'options');
    const dtype = parseDType(o.dtype);
    const device = parseDevice(o.device);
    const n = product(s);
    if (n > MAX_NUMEL) throw rangeError(`at most ${MAX_NUMEL} elements`, 'shape', shape);
    return Tensor._wrap(opsFor(device)[how](n, dtype, device), s);
  }

  /**
   * `(i + offset) * scale` for i = 0, 1, …, n−1, reshaped to `shape` (test inputs each rank can predict).
   *
   * @param opts.scale - finite number (default 1); `opts.offset` - finite number (default 0)
   * @throws TypeError / RangeError for a bad shape (more than 2^32 elements included), scale, offset, dtype or device
   */
  static arange(shape: readonly number[], opts?: TensorOptions & { scale?: number; offset?: number }): Tensor {
    const s = checkShape(shape);
    const n = product(s);
    if (n > MAX_NUMEL) throw rangeError(`at most ${MAX_NUMEL} elements`, 'shape', shape);
    const o = options<TensorOptions & { scale?: number; offset?: number }>(opts, 'options');
    const scale = o.scale === undefined ? 1 : finiteNumber(o.scale, 'scale');
    const offset = o.offset === undefined ? 0 : finiteNumber(o.offset, 'offset');
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = (i + offset) * scale;
    return Tensor.from(data, s, opts);
  }

  /** Number of elements. */
  get numel(): number {
    return product(this.shape);
  }

  /** Number of dimensions. */
  get ndim(): number {
    return this.shape.length;
  }

  /** Size in bytes of the elements. */
  get nbytes(): number {
    return this.numel * ITEM_SIZE[this.dtype];
  }

  /** True once `dispose()` was called. */
  get isDisposed(): boolean {
    return this.#shared === null;
  }

  /** @internal The storage; throws TpkitError `DISPOSED` after dispose(). */
  get _storage(): Storage {
    if (this.#shared === null) {
      throw new TpkitError('DISPOSED', `tensor of shape ${formatShape(this.shape)} (${this.dtype}, ${this.device}) was used after dispose()`);
    }
    return this.#shared.storage;
  }

  /** @internal The backend of this tensor's device. */
  get _ops(): DeviceOps {
    return opsFor(this.device);
  }

  /**
   * Reads the elements back as a new Float32Array (row-major). On a GPU it resolves when the copy's event
   * completes, without blocking the event loop.
   *
   * @throws TpkitError `DISPOSED` after dispose()
   */
  async toFloat32Array(): Promise<Float32Array> {
    return this._ops.toFloat32(this._storage);
  }

  /**
   * Contiguous copy of `length` entries starting at `start` along `dim` (negative dims count from the end).
   *
   * @throws RangeError when dim, start or length is out of range
   * @throws TpkitError `DISPOSED` after dispose()
   */
  narrow(dim: number, start: number, length: number): Tensor {
    const storage = this._storage;
    const d = dimIndex(dim, this.ndim);
    nonNegativeInteger(start, 'start');
    nonNegativeInteger(length, 'length');
    const size = this.shape[d]!;
    if (start + length > size) {
      throw new RangeError(
        `Expected start + length of at most ${size} (size of dim ${d} of shape ${formatShape(this.shape)}) but received ${start + length}`,
      );
    }
    const shape = this.shape.slice();
    shape[d] = length;
    return Tensor._wrap(this._ops.narrow(storage, this.shape, d, start, length), shape);
  }

  /**
   * A tensor with the same elements and a new shape of equal element count, sharing memory with this one.
   * One entry may be -1 (inferred).
   *
   * @throws RangeError when the element counts differ
   */
  reshape(shape: readonly number[]): Tensor {
    const shared = this.#shared;
    void this._storage; // throws DISPOSED
    if (!Array.isArray(shape)) throw typeError('array of integers', 'shape', shape);
    const s = shape.slice();
    const inferred = s.indexOf(-1);
    if (s.lastIndexOf(-1) !== inferred) {
      throw new RangeError(`cannot reshape tensor of shape ${formatShape(this.shape)} to ${formatShape(shape)}: only one dimension can be -1`);
    }
    if (inferred >= 0) {
      const known = product(s.filter((_, i) => i !== inferred));
      if (known === 0 || this.numel % known !== 0) {
        throw new RangeError(`cannot reshape tensor of shape ${formatShape(this.shape)} to ${formatShape(shape)}`);
      }
      s[inferred] = this.numel / known;
    }
    checkShape(s);
    if (product(s) !== this.numel) {
      throw new RangeError(`cannot reshape tensor of shape ${formatShape(this.shape)} to ${formatShape(shape)}`);
    }
    shared!.refs++;
    return new Tensor(shared!, s);
  }

  /**
   * Converts to another dtype and/or device (always a copy).
   *
   * @throws TypeError / RangeError for a bad dtype or device; TpkitError `NO_CUDA_DEVICE` without a GPU
   */
  async to(opts: TensorOptions | DType): Promise<Tensor> {
    const o: TensorOptions = typeof opts === 'string' ? { dtype: opts } : options<TensorOptions>(opts, 'options');
    const dtype = o.dtype === undefined ? this.dtype : parseDType(o.dtype);
    const device = o.device === undefined ? this.device : parseDevice(o.device);
    const storage = this._storage;
    if (device === this.device) return Tensor._wrap(this._ops.cast(storage, dtype), this.shape);
    const values = await this._ops.toFloat32(storage);
    return Tensor._wrap(opsFor(device).fromFloat32(values, dtype, device), this.shape);
  }

  /** @internal Overwrites the elements from float32 values (used by host-staged collectives). */
  async _writeFloat32(values: Float32Array): Promise<void> {
    await this._ops.writeFloat32(this._storage, values);
  }

  /** Frees the memory. Idempotent; using the tensor afterwards throws TpkitError `DISPOSED`. */
  dispose(): void {
    const shared = this.#shared;
    if (shared === null) return;
    this.#shared = null;
    finalizer.unregister(this);
    if (--shared.refs === 0) shared.storage.free();
  }

  /** Same as `dispose()`, for `using t = …`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** `Tensor(shape=[2, 3], dtype=float32, device=cpu)` */
  toString(): string {
    return `Tensor(shape=${formatShape(this.shape)}, dtype=${this.dtype}, device=${this.device}${this.isDisposed ? ', disposed' : ''})`;
  }
}

/** @internal Throws unless `value` is a live Tensor. */
export function checkTensor(value: unknown, name: string): Tensor {
  if (!(value instanceof Tensor)) throw typeError('Tensor', name, value);
  void value._storage; // throws DISPOSED
  return value;
}
