/**
 * Reader and writer for the safetensors checkpoint format, following the huggingface/safetensors spec
 * (https://github.com/huggingface/safetensors, "Format"):
 *
 * ```
 * [ 8 bytes: N, u64 little-endian ][ N bytes: UTF-8 JSON header, may be padded with spaces ][ data buffer ]
 * header = { "<name>": { "dtype": "F32", "shape": [d0, d1, …], "data_offsets": [begin, end] }, …,
 *            "__metadata__"?: { "<key>": "<string value>" } }
 * ```
 *
 * `data_offsets` are byte offsets relative to the start of the data buffer (byte `8 + N` of the file), the
 * data is row-major (C order) and little-endian, and the entries must tile the data buffer exactly: no
 * holes, no overlaps.
 *
 * Lifecycle: {@link SafetensorsFile.open} validates the header (never the data) and keeps a file handle;
 * `read*` methods do positioned reads of just the bytes asked for, so a tensor-parallel rank can load its
 * shard of a weight (rows for a column-parallel linear, columns for a row-parallel one, as in vLLM's
 * `weight_loader`) without reading the whole tensor; {@link SafetensorsFile.close} releases the handle.
 * {@link writeSafetensors} writes a file atomically (temporary file, then rename).
 *
 * Data of dtype `F32`, `F16` and `BF16` can be read; files holding other dtypes (`I64`, `F64`, `U8`, …)
 * open and list normally, but reading such a tensor throws `TpkitError` with code `UNSUPPORTED`.
 *
 * @module
 */

import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';

import { TpkitError } from '../errors';
import { loadCore } from '../native';
import { describe, dimIndex, nonNegativeInteger, oneOf, shape as validShape, typeError } from '../validate';

/** The safetensors dtypes whose data tpkit reads and writes. */
export type SafetensorsDType = 'F32' | 'F16' | 'BF16';

/** The dtype of a {@link RawTensor}: `float32` (from `F32`), `float16` (`F16`), `bfloat16` (`BF16`). */
export type RawDType = 'float32' | 'float16' | 'bfloat16';

/** One header entry of a safetensors file, as stored. */
export interface TensorInfo {
  /** The tensor's name (the header key), e.g. `model.layers.0.mlp.up_proj.weight`. */
  name: string;
  /** The dtype as written in the file: `F32`, `F16`, `BF16`, or any other spec dtype (`I64`, `U8`, …). */
  dtype: string;
  /** Shape, row-major (C order); `[]` for a scalar. */
  shape: number[];
  /** `[begin, end)` in bytes, relative to the start of the data buffer (byte `8 + N` of the file). */
  dataOffsets: [number, number];
}

/**
 * A tensor's raw contents on the host.
 *
 * `data` holds `product(shape)` elements, row-major: a `Float32Array` for `float32`, a `Uint16Array` of the
 * raw IEEE-754 half / bfloat16 bit patterns for `float16` / `bfloat16` (no conversion is done).
 */
export interface RawTensor {
  /** Element type of `data`. */
  dtype: RawDType;
  /** Shape, row-major (C order); `[]` for a scalar. */
  shape: number[];
  /** `product(shape)` elements; `Float32Array` for `float32`, `Uint16Array` of raw bits otherwise. */
  data: Float32Array | Uint16Array;
}

/**
 * Largest header accepted, in bytes: 100 MB (10^8 bytes), the `MAX_HEADER_SIZE` of huggingface/safetensors.
 * @internal
 */
export const MAX_HEADER_BYTES = 100_000_000;

/** Item size in bits of every dtype of the safetensors spec (sub-byte types included). */
const DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  I16: 16, U16: 16, F16: 16, BF16: 16,
  I32: 32, U32: 32, F32: 32,
  I64: 64, U64: 64, F64: 64,
  F4: 4, F6_E2M3: 6, F6_E3M2: 6,
};

const FROM_FILE: Readonly<Record<SafetensorsDType, RawDType>> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };
const TO_FILE: Readonly<Record<RawDType, SafetensorsDType>> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' };
const RAW_DTYPES: readonly RawDType[] = ['float32', 'float16', 'bfloat16'];

/** Whether this machine is big-endian (the file is little-endian; data is byte-swapped on such machines). */
const BIG_ENDIAN = endianness() === 'BE';
/** Largest single `read`/`write` request: below the 2 GiB − 1 limit of one libuv request. */
const MAX_IO_BYTES = 1 << 30;
/** Strided reads whose gap is at most this many bytes (a page) are merged into one read. */
const COALESCE_GAP_BYTES = 4096;
/** Largest scratch span of one merged strided read, in bytes. */
const MAX_COALESCED_SPAN_BYTES = 4 << 20;
/** Positioned reads kept in flight at once by a strided read (the libuv thread-pool size by default). */
const READ_CONCURRENCY = 4;
/** Staging buffer of {@link SafetensorsFile.readSliceAsFloat32} (bytes). */
const STAGE_BYTES = 4 << 20;

/**
 * Deepest nesting of objects/arrays a header may have: a real one nests 3 levels (header → entry → shape); a
 * hostile one nested 10^5 deep overflows the stack of JSON.parse and of everything that walks the result.
 */
const MAX_HEADER_DEPTH = 64;

/** The deepest `{`/`[` nesting of a JSON text (brackets inside strings ignored); stops counting past the limit. */
function nestingDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) {
        max = depth;
        if (max > MAX_HEADER_DEPTH) return max;
      }
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    }
  }
  return max;
}

/** What kind of file system object a non-regular file is, for an error message. */
function fileKind(st: import('node:fs').Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

interface Entry {
  info: TensorInfo;
  /** Absolute file offset of the first byte of the tensor's data. */
  fileOffset: number;
}

function invalid(path: string, what: string, details?: Record<string, unknown>): TpkitError {
  return new TpkitError('CHECKPOINT_INVALID', `Invalid safetensors file ${path}: ${what}`,
    details === undefined ? {} : { details });
}

function product(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

function showShape(dims: readonly number[]): string {
  return `[${dims.join(', ')}]`;
}

function swapBytes(bytes: Uint8Array, itemSize: number): void {
  if (itemSize === 2) for (let i = 0; i + 1 < bytes.length; i += 2) bytes.subarray(i, i + 2).reverse();
  else if (itemSize === 4) for (let i = 0; i + 3 < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
}

/**
 * Validates one header entry and returns it as a {@link TensorInfo}. Throws `CHECKPOINT_INVALID`.
 */
function parseEntry(path: string, name: string, raw: unknown, dataLen: number): TensorInfo {
  const where = `tensor '${name}'`;
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalid(path, `header entry for ${where} is ${describe(raw)}, expected an object`);
  }
  const e = raw as Record<string, unknown>;
  for (const key of ['dtype', 'shape', 'data_offsets']) {
    if (!(key in e)) throw invalid(path, `header entry for ${where} is missing '${key}'`);
  }
  const { dtype, shape, data_offsets: offsets } = e;
  if (typeof dtype !== 'string') throw invalid(path, `dtype of ${where} is ${describe(dtype)}, expected a string`);
  // Own keys only: a dtype such as 'toString' or '__proto__' must not find Object.prototype's members.
  const bits = Object.hasOwn(DTYPE_BITS, dtype) ? DTYPE_BITS[dtype] : undefined;
  if (bits === undefined) {
    throw invalid(path, `dtype of ${where} is '${dtype}', not a safetensors dtype (${Object.keys(DTYPE_BITS).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    throw invalid(path, `shape of ${where} is ${describe(shape)}, expected an array of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2
    || !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
    throw invalid(path, `data_offsets of ${where} is ${describe(offsets)}, expected [begin, end] of non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw invalid(path, `data_offsets [${begin}, ${end}] of ${where} end before they begin`);
  if (end > dataLen) {
    throw invalid(path, `data_offsets [${begin}, ${end}] of ${where} end beyond the data buffer of ${dataLen} bytes`
      + ' (file truncated?)');
  }
  const numel = product(shape as number[]);
  const expectedBits = numel * bits;
  if (!Number.isSafeInteger(expectedBits) || expectedBits % 8 !== 0 || expectedBits / 8 !== end - begin) {
    throw invalid(path, `${where} of dtype ${dtype} and shape ${showShape(shape as number[])} needs `
      + `${Number.isSafeInteger(expectedBits) ? expectedBits / 8 : 'too many'} bytes but data_offsets [${begin}, ${end}] `
      + `hold ${end - begin}`);
  }
  return { name, dtype, shape: (shape as number[]).slice(), dataOffsets: [begin, end] };
}

/** Checks that the entries, sorted by begin, tile `[0, dataLen)` exactly. Throws `CHECKPOINT_INVALID`. */
function checkTiling(path: string, infos: readonly TensorInfo[], dataLen: number): void {
  const sorted = infos.slice().sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let covered = 0;
  let previous: TensorInfo | undefined;
  for (const info of sorted) {
    const [begin, end] = info.dataOffsets;
    const after = previous === undefined ? 'the start of the data buffer' : `tensor '${previous.name}' (ends at ${covered})`;
    if (begin > covered) {
      throw invalid(path, `hole of ${begin - covered} bytes in the data buffer: bytes [${covered}, ${begin}) between `
        + `${after} and tensor '${info.name}' belong to no tensor`);
    }
    if (begin < covered) {
      throw invalid(path, `tensor '${info.name}' with data_offsets [${begin}, ${end}] overlaps ${after}`);
    }
    covered = end;
    previous = info;
  }
  if (covered !== dataLen) {
    throw invalid(path, `hole of ${dataLen - covered} bytes at the end of the data buffer: bytes [${covered}, ${dataLen}) `
      + 'belong to no tensor');
  }
}

/**
 * An open safetensors file (huggingface/safetensors format). Holds one file handle; every read is a
 * positioned read (`pread`) of just the bytes needed, never of the whole file.
 *
 * Data is returned in fresh, aligned `ArrayBuffer`s: `Float32Array` for `F32`, `Uint16Array` of raw bits for
 * `F16` / `BF16`.
 *
 * @example
 * ```ts
 * const f = await SafetensorsFile.open('model.safetensors');
 * try {
 *   // column-parallel shard of an [out, in] weight: rows [rank * out / tp, (rank + 1) * out / tp)
 *   const w = await f.readRows('mlp.up_proj.weight', rank * rowsPerRank, rowsPerRank);
 * } finally { await f.close(); }
 * ```
 */
export class SafetensorsFile {
  /** The path the file was opened from. */
  readonly path: string;
  /** The `__metadata__` string map of the header (`{}` when absent). */
  readonly metadata: Record<string, string>;

  #fh: FileHandle | undefined;
  readonly #entries: Map<string, Entry>;
  #readCount = 0;
  #bytesRead = 0;

  private constructor(path: string, fh: FileHandle, metadata: Record<string, string>, entries: Map<string, Entry>) {
    this.path = path;
    this.#fh = fh;
    this.metadata = metadata;
    this.#entries = entries;
  }

  /**
   * Opens `path` and validates its header: reads the 8-byte length prefix and the JSON header only.
   *
   * @param path - file path
   * @returns the open file; call {@link SafetensorsFile.close} when done
   * @throws TypeError if `path` is not a non-empty string
   * @throws TpkitError `CHECKPOINT_INVALID`, naming the file and the fault, when the file is shorter than 8
   *   bytes; the header length exceeds the file or 100 MB; the header is not UTF-8 JSON of an object starting
   *   with `{`; `__metadata__` is not a string map; an entry lacks `dtype` / `shape` / `data_offsets` or has
   *   wrong types, an unknown dtype, or a negative / non-integer dimension; offsets end before they begin or
   *   beyond the data buffer; a byte length differs from `product(shape) * itemsize`; or the entries, sorted
   *   by begin, do not tile the data buffer exactly (a hole or an overlap)
   * @throws TpkitError `CHECKPOINT_INVALID` also for a path that is not a regular file (a FIFO, a directory, a device:
   *   refused without reading, never waited on) and for a header nested deeper than 64 levels
   * @throws the `fs` error (`ENOENT`, `EACCES`, …) when the file cannot be opened
   */
  static async open(path: string): Promise<SafetensorsFile> {
    if (typeof path !== 'string') throw typeError('non-empty string', 'path', path);
    if (path.length === 0) throw new RangeError(`Expected non-empty string for path but received ${describe(path)}`);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever (on a regular file the
    // flag changes nothing); anything but a regular file is then refused before a byte is read.
    const fh = await fsp.open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw invalid(path, `not a regular file (${fileKind(st)})`);
      const { metadata, entries } = await SafetensorsFile.#parseHeader(path, fh);
      return new SafetensorsFile(path, fh, metadata, entries);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  static async #parseHeader(path: string, fh: FileHandle): Promise<{ metadata: Record<string, string>; entries: Map<string, Entry> }> {
    const fileSize = (await fh.stat()).size;
    if (fileSize < 8) {
      throw invalid(path, `file is ${fileSize} bytes, shorter than the 8-byte header length prefix`);
    }
    const prefix = Buffer.alloc(8);
    await readFully(fh, prefix, 0, 8, 0, () => invalid(path, 'file ended inside the 8-byte header length prefix'));
    const headerLen64 = prefix.readBigUInt64LE(0);
    if (headerLen64 > BigInt(fileSize - 8)) {
      throw invalid(path, `header length ${headerLen64} exceeds the ${fileSize - 8} bytes after the 8-byte prefix`
        + ' (truncated or not a safetensors file?)');
    }
    if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
      throw invalid(path, `header length ${headerLen64} exceeds the limit of ${MAX_HEADER_BYTES} bytes (100 MB)`);
    }
    const headerLen = Number(headerLen64);
    const headerBytes = Buffer.alloc(headerLen);
    await readFully(fh, headerBytes, 0, headerLen, 8, () => invalid(path, 'file ended inside the header'));
    if (headerLen === 0 || headerBytes[0] !== 0x7b) {
      throw invalid(path, `header does not start with '{' (header length ${headerLen}; not a safetensors file?)`);
    }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    } catch (cause) {
      throw new TpkitError('CHECKPOINT_INVALID', `Invalid safetensors file ${path}: header is not valid UTF-8`, { cause });
    }
    if (nestingDepth(text) > MAX_HEADER_DEPTH) {
      throw invalid(path, `header nests deeper than ${MAX_HEADER_DEPTH} levels`);
    }
    let header: unknown;
    try {
      header = JSON.parse(text);
    } catch (cause) {
      throw new TpkitError('CHECKPOINT_INVALID',
        `Invalid safetensors file ${path}: header is not valid JSON (${(cause as Error).message})`, { cause });
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) {
      throw invalid(path, `header is ${describe(header)}, expected a JSON object`);
    }

    const dataStart = 8 + headerLen;
    const dataLen = fileSize - dataStart;
    const metadata: Record<string, string> = {};
    const infos: TensorInfo[] = [];
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (raw === null) continue;
        if (typeof raw !== 'object' || Array.isArray(raw)) {
          throw invalid(path, `__metadata__ is ${describe(raw)}, expected an object of strings`);
        }
        for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
          if (typeof v !== 'string') throw invalid(path, `__metadata__ value for '${k}' is ${describe(v)}, expected a string`);
          // defineProperty: an assignment to a key '__proto__' would set the prototype instead of the key.
          Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: true, configurable: true });
        }
        continue;
      }
      infos.push(parseEntry(path, name, raw, dataLen));
    }
    checkTiling(path, infos, dataLen);
    infos.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const entries = new Map<string, Entry>();
    for (const info of infos) entries.set(info.name, { info, fileOffset: dataStart + info.dataOffsets[0] });
    return { metadata, entries };
  }

  /**
   * Positioned `read` calls made so far (one per `pread`), for tests and diagnostics.
   * @internal
   */
  get readCount(): number {
    return this.#readCount;
  }

  /**
   * Bytes of tensor data read so far (header excluded), for tests and diagnostics.
   * @internal
   */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /**
   * Lists every tensor of the file (not `__metadata__`), sorted by name (UTF-16 code-unit order).
   *
   * @returns copies of the header entries
   * @throws TpkitError `DISPOSED` after {@link SafetensorsFile.close}
   */
  list(): TensorInfo[] {
    this.#handle();
    return [...this.#entries.values()].map((e) => copyInfo(e.info));
  }

  /**
   * The header entry of one tensor.
   *
   * @param name - tensor name
   * @returns a copy of its entry
   * @throws TypeError if `name` is not a string
   * @throws RangeError naming the tensor and the file when the file has no such tensor
   * @throws TpkitError `DISPOSED` after {@link SafetensorsFile.close}
   */
  info(name: string): TensorInfo {
    this.#handle();
    return copyInfo(this.#entry(name).info);
  }

  /**
   * Reads a whole tensor with one positioned read.
   *
   * @param name - tensor name
   * @returns the tensor, shape as in the header
   * @throws TypeError / RangeError as {@link SafetensorsFile.info}
   * @throws TpkitError `UNSUPPORTED` when its dtype is not `F32`, `F16` or `BF16`; `CHECKPOINT_INVALID` if
   *   the file was truncated after opening; `DISPOSED` after {@link SafetensorsFile.close}
   */
  async read(name: string): Promise<RawTensor> {
    this.#handle();
    const entry = this.#entry(name);
    const itemSize = this.#itemSize(entry);
    const { shape } = entry.info;
    const bytes = new Uint8Array(product(shape) * itemSize);
    await this.#pread(bytes, 0, bytes.length, entry.fileOffset, name);
    return this.#tensor(entry, shape.slice(), bytes);
  }

  /**
   * Reads rows `[start, start + length)` of dim 0 — shape `[length, ...shape.slice(1)]` — with ONE positioned
   * read of the contiguous byte range (none when the result is empty). The shard of a column-parallel
   * weight `[out, in]` (vLLM `ColumnParallelLinear`: `A = [A_1, …, A_p]` split along `out`).
   *
   * @param name - tensor name
   * @param start - first row (non-negative integer)
   * @param length - number of rows (non-negative integer)
   * @throws TypeError / RangeError for a bad name, `start` or `length`, a 0-D tensor, or
   *   `start + length > shape[0]` (naming the tensor, dim and size)
   * @throws TpkitError `UNSUPPORTED`, `CHECKPOINT_INVALID`, `DISPOSED` as {@link SafetensorsFile.read}
   */
  async readRows(name: string, start: number, length: number): Promise<RawTensor> {
    this.#handle();
    const entry = this.#entry(name);
    if (entry.info.shape.length < 1) {
      throw new RangeError(`Expected tensor of at least 1 dimension for readRows but received '${name}' of shape []`);
    }
    return this.#slice(entry, 0, start, length);
  }

  /**
   * Reads columns `[start, start + length)` of dim 1 of a tensor of ≥ 2 dimensions — shape
   * `[shape[0], length, ...shape.slice(2)]` (the trailing dims stay contiguous). The shard of a row-parallel
   * weight `[out, in]` (vLLM `RowParallelLinear`: `A` split along `in`).
   *
   * Strided positioned reads, one per row of dim 0, into the result; rows whose gap is at most a page
   * (4096 bytes) are merged into one read through a scratch buffer of at most 4 MiB. The whole tensor is
   * never read at once. A full-width slice is one read.
   *
   * @param name - tensor name
   * @param start - first column (non-negative integer)
   * @param length - number of columns (non-negative integer)
   * @throws TypeError / RangeError for a bad name, `start` or `length`, a tensor of < 2 dimensions, or
   *   `start + length > shape[1]` (naming the tensor, dim and size)
   * @throws TpkitError `UNSUPPORTED`, `CHECKPOINT_INVALID`, `DISPOSED` as {@link SafetensorsFile.read}
   */
  async readColumns(name: string, start: number, length: number): Promise<RawTensor> {
    this.#handle();
    const entry = this.#entry(name);
    if (entry.info.shape.length < 2) {
      throw new RangeError(`Expected tensor of at least 2 dimensions for readColumns but received '${name}' of shape `
        + showShape(entry.info.shape));
    }
    return this.#slice(entry, 1, start, length);
  }

  /**
   * Reads `[start, start + length)` along dimension `dim` (negative counts from the end) — the result has the
   * tensor's shape with `shape[dim]` replaced by `length`. Dim 0 is {@link SafetensorsFile.readRows} (one
   * read); any other dim is strided reads, one per index of the leading dims `shape[0..dim)` (merged where
   * the gap is at most a page), as {@link SafetensorsFile.readColumns}.
   *
   * @param name - tensor name
   * @param dim - dimension to slice, integer in `[-ndim, ndim)`
   * @param start - first index along `dim` (non-negative integer)
   * @param length - number of indices (non-negative integer)
   * @throws TypeError / RangeError for a bad name, `dim`, `start` or `length`, or
   *   `start + length > shape[dim]` (naming the tensor, dim and size)
   * @throws TpkitError `UNSUPPORTED`, `CHECKPOINT_INVALID`, `DISPOSED` as {@link SafetensorsFile.read}
   */
  async readSlice(name: string, dim: number, start: number, length: number): Promise<RawTensor> {
    this.#handle();
    const entry = this.#entry(name);
    const d = dimIndex(dim, entry.info.shape.length, 'dim');
    return this.#slice(entry, d, start, length);
  }

  /**
   * @internal Like {@link SafetensorsFile.readSlice}, but the result is float32: F16 / BF16 data are widened
   * (exactly) piece by piece through staging buffers of at most 4 MiB, so the 16-bit copy of the slice is never
   * held whole and no memory is touched twice; F32 data are read straight into the result. `alloc(n)` provides
   * the result's n elements (fresh or pooled memory; its contents are overwritten).
   */
  async readSliceAsFloat32(name: string, dim: number, start: number, length: number, alloc: (n: number) => Float32Array): Promise<{ shape: number[]; data: Float32Array }> {
    this.#handle();
    const entry = this.#entry(name);
    const { shape } = entry.info;
    const d = dimIndex(dim, shape.length, 'dim');
    nonNegativeInteger(start, 'start');
    nonNegativeInteger(length, 'length');
    const size = shape[d]!;
    if (start + length > size) {
      throw new RangeError(`Expected start + length of at most ${size} (size of dim ${d} of tensor '${name}' of shape `
        + `${showShape(shape)}) but received ${start + length} (start ${start}, length ${length})`);
    }
    const itemSize = this.#itemSize(entry);
    const outShape = shape.slice();
    outShape[d] = length;
    const outer = product(shape.slice(0, d));
    const inner = product(shape.slice(d + 1));
    const chunkElems = length * inner; // elements kept per index of the leading dims
    const strideElems = size * inner;
    const out = alloc(outer * chunkElems);
    if (out.length !== outer * chunkElems) throw new RangeError(`alloc returned ${out.length} elements, expected ${outer * chunkElems}`);
    if (out.length === 0) return { shape: outShape, data: out };
    const base = entry.fileOffset + start * inner * itemSize;
    if (itemSize === 4) {
      // F32: the slice's bytes are the result's bytes.
      const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      if (outer === 1 || chunkElems === strideElems) await this.#pread(bytes, 0, bytes.length, base, name);
      else for (let o = 0; o < outer; o++) await this.#pread(bytes, o * chunkElems * 4, chunkElems * 4, base + o * strideElems * 4, name);
      if (BIG_ENDIAN) swapBytes(bytes, 4);
      return { shape: outShape, data: out };
    }
    const kind = entry.info.dtype === 'BF16' ? 1 : 3;
    const core = loadCore();
    const stage = new Uint16Array(STAGE_BYTES / 2);
    const stageBytes = new Uint8Array(stage.buffer);
    // Runs of elements to read: (file element offset, result element offset, count), pieces of ≤ STAGE_BYTES.
    const pieceElems = STAGE_BYTES / 2;
    const contiguous = outer === 1 || chunkElems === strideElems;
    if (!contiguous && chunkElems <= pieceElems && (strideElems - chunkElems) * 2 <= COALESCE_GAP_BYTES) {
      // Rows with small gaps: one read spans several of them, each row's chunk is widened from the span.
      const per = Math.max(1, Math.floor((pieceElems - chunkElems) / strideElems) + 1);
      for (let o = 0; o < outer; o += per) {
        const count = Math.min(per, outer - o);
        const span = (count - 1) * strideElems + chunkElems;
        await this.#pread(stageBytes, 0, span * 2, base + o * strideElems * 2, name);
        if (BIG_ENDIAN) swapBytes(stageBytes.subarray(0, span * 2), 2);
        for (let i = 0; i < count; i++) {
          core.cast(stage.subarray(i * strideElems, i * strideElems + chunkElems), out.subarray((o + i) * chunkElems, (o + i + 1) * chunkElems), kind as 1 | 3);
        }
      }
      return { shape: outShape, data: out };
    }
    const runs = contiguous ? 1 : outer;
    const runElems = contiguous ? outer * chunkElems : chunkElems;
    for (let r = 0; r < runs; r++) {
      const fileElem = r * strideElems;
      const outElem = r * chunkElems;
      for (let k = 0; k < runElems; k += pieceElems) {
        const n = Math.min(pieceElems, runElems - k);
        await this.#pread(stageBytes, 0, n * 2, base + (fileElem + k) * 2, name);
        const bits = stage.subarray(0, n);
        if (BIG_ENDIAN) swapBytes(stageBytes.subarray(0, n * 2), 2);
        core.cast(bits, out.subarray(outElem + k, outElem + k + n), kind as 1 | 3);
      }
    }
    return { shape: outShape, data: out };
  }

  /**
   * Closes the file handle (waiting for reads in flight). Idempotent; afterwards every method throws
   * `TpkitError` with code `DISPOSED`.
   */
  async close(): Promise<void> {
    const fh = this.#fh;
    if (fh === undefined) return;
    this.#fh = undefined;
    await fh.close();
  }

  /** Same as {@link SafetensorsFile.close}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #handle(): FileHandle {
    if (this.#fh === undefined) throw new TpkitError('DISPOSED', `SafetensorsFile ${this.path} is closed`);
    return this.#fh;
  }

  #entry(name: unknown): Entry {
    if (typeof name !== 'string') throw typeError('string', 'name', name);
    const entry = this.#entries.get(name);
    if (entry === undefined) {
      const names = [...this.#entries.keys()];
      const shown = names.slice(0, 5).map((n) => `'${n}'`).join(', ') + (names.length > 5 ? ', …' : '');
      throw new RangeError(`Expected name of a tensor in ${this.path} but received '${name}'; the file has `
        + `${names.length} tensor${names.length === 1 ? '' : 's'}${names.length > 0 ? `: ${shown}` : ''}`);
    }
    return entry;
  }

  #itemSize(entry: Entry): number {
    const { dtype, name } = entry.info;
    if (!(dtype in FROM_FILE)) {
      throw new TpkitError('UNSUPPORTED', `Cannot read tensor '${name}' of dtype ${dtype} from ${this.path}: `
        + 'supported dtypes are F32, F16, BF16');
    }
    return DTYPE_BITS[dtype]! / 8;
  }

  #tensor(entry: Entry, shape: number[], bytes: Uint8Array): RawTensor {
    const file = entry.info.dtype as SafetensorsDType;
    const itemSize = DTYPE_BITS[file]! / 8;
    if (BIG_ENDIAN) swapBytes(bytes, itemSize);
    const data = file === 'F32'
      ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
      : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    return { dtype: FROM_FILE[file], shape, data };
  }

  async #slice(entry: Entry, dim: number, start: unknown, length: unknown): Promise<RawTensor> {
    const { name, shape } = entry.info;
    nonNegativeInteger(start, 'start');
    nonNegativeInteger(length, 'length');
    const s = start as number;
    const n = length as number;
    const size = shape[dim]!;
    if (s + n > size) {
      throw new RangeError(`Expected start + length of at most ${size} (size of dim ${dim} of tensor '${name}' of shape `
        + `${showShape(shape)}) but received ${s + n} (start ${s}, length ${n})`);
    }
    const itemSize = this.#itemSize(entry);
    const outShape = shape.slice();
    outShape[dim] = n;
    const outer = product(shape.slice(0, dim));
    const innerBytes = product(shape.slice(dim + 1)) * itemSize;
    const chunk = n * innerBytes; // bytes kept per index of the leading dims
    const stride = size * innerBytes; // bytes between consecutive indices of the leading dims
    const bytes = new Uint8Array(outer * chunk);
    if (bytes.length === 0) return this.#tensor(entry, outShape, bytes);
    const base = entry.fileOffset + s * innerBytes;

    if (outer === 1 || chunk === stride) {
      await this.#pread(bytes, 0, bytes.length, base, name);
      return this.#tensor(entry, outShape, bytes);
    }
    const gap = stride - chunk;
    const perRead = gap <= COALESCE_GAP_BYTES
      ? Math.max(1, Math.floor((MAX_COALESCED_SPAN_BYTES - chunk) / stride) + 1)
      : 1;
    const groups = Math.ceil(outer / perRead);
    let next = 0;
    let failed = false;
    const worker = async (): Promise<void> => {
      const scratch = perRead > 1 ? new Uint8Array((perRead - 1) * stride + chunk) : undefined;
      while (!failed && next < groups) {
        const g = next++;
        const first = g * perRead;
        const count = Math.min(perRead, outer - first);
        try {
          if (scratch === undefined || count === 1) {
            await this.#pread(bytes, first * chunk, chunk, base + first * stride, name);
          } else {
            const span = (count - 1) * stride + chunk;
            await this.#pread(scratch, 0, span, base + first * stride, name);
            for (let i = 0; i < count; i++) {
              bytes.set(scratch.subarray(i * stride, i * stride + chunk), (first + i) * chunk);
            }
          }
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, groups) }, worker));
    return this.#tensor(entry, outShape, bytes);
  }

  async #pread(dest: Uint8Array, offset: number, length: number, position: number, name: string): Promise<void> {
    const fh = this.#handle();
    await readFully(fh, dest, offset, length, position,
      () => invalid(this.path, `file ended at byte ${position + length} or before while reading tensor '${name}' `
        + '(truncated after opening?)'),
      () => { this.#readCount++; });
    this.#bytesRead += length;
  }
}

function copyInfo(info: TensorInfo): TensorInfo {
  return { name: info.name, dtype: info.dtype, shape: info.shape.slice(), dataOffsets: [info.dataOffsets[0], info.dataOffsets[1]] };
}

/** Positioned read of exactly `length` bytes (one `read` call unless the OS returns fewer bytes). */
async function readFully(
  fh: FileHandle, dest: Uint8Array, offset: number, length: number, position: number,
  onEof: () => Error, onRead?: () => void,
): Promise<void> {
  let done = 0;
  while (done < length) {
    onRead?.();
    const want = Math.min(length - done, MAX_IO_BYTES);
    const { bytesRead } = await fh.read(dest, offset + done, want, position + done);
    if (bytesRead === 0) throw onEof();
    done += bytesRead;
  }
}

async function writeFully(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const want = Math.min(bytes.length - done, MAX_IO_BYTES);
    const { bytesWritten } = await fh.write(bytes, done, want);
    done += bytesWritten;
  }
}

/**
 * Writes tensors to a safetensors file (huggingface/safetensors format): the 8-byte little-endian header
 * length, the JSON header (`__metadata__` first, then the tensors in sorted-name order) padded with spaces so
 * the data buffer starts at a multiple of 8 bytes, then each tensor's data, contiguous, in the same order.
 *
 * Data is streamed tensor by tensor from the given typed arrays (no concatenation) to `path + '.tmp'`,
 * synced, then renamed onto `path`, so readers never see a partial file.
 *
 * @param path - destination file
 * @param tensors - name → tensor; `float32` data must be a `Float32Array`, `float16` / `bfloat16` data a
 *   `Uint16Array` of raw bits, each of `product(shape)` elements; empty tensors (a 0 in `shape`) are allowed
 * @param metadata - optional `__metadata__` string map
 * @throws TypeError / RangeError for a bad path, a tensor named `__metadata__`, a bad dtype, shape
 *   (non-negative integers, at most 8 dims) or data, or non-string metadata values
 * @throws the `fs` error when writing or renaming fails (the temporary file is removed)
 */
export async function writeSafetensors(
  path: string, tensors: Record<string, RawTensor>, metadata?: Record<string, string>,
): Promise<void> {
  if (typeof path !== 'string') throw typeError('non-empty string', 'path', path);
  if (path.length === 0) throw new RangeError(`Expected non-empty string for path but received ${describe(path)}`);
  if (tensors === null || typeof tensors !== 'object' || Array.isArray(tensors)) throw typeError('object', 'tensors', tensors);
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) {
      throw typeError('object of strings', 'metadata', metadata);
    }
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw typeError('string', `metadata['${k}']`, v);
    }
  }

  const names = Object.keys(tensors).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  // Built as [key, value] pairs: a plain object would put integer-like names ('0', '1') first.
  const header: [string, unknown][] = [];
  if (metadata !== undefined) header.push(['__metadata__', { ...metadata }]);
  const payloads: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    if (name === '__metadata__') throw new RangeError(`Expected tensor name other than the reserved __metadata__ for tensors`);
    const t = tensors[name];
    if (t === null || typeof t !== 'object') throw typeError('RawTensor', `tensors['${name}']`, t);
    const dtype = oneOf(t.dtype, `tensors['${name}'].dtype`, RAW_DTYPES);
    const dims = validShape(t.shape, `tensors['${name}'].shape`);
    const Ctor = dtype === 'float32' ? Float32Array : Uint16Array;
    if (!(t.data instanceof Ctor)) throw typeError(Ctor.name, `tensors['${name}'].data (dtype ${dtype})`, t.data);
    const numel = product(dims);
    if (t.data.length !== numel) {
      throw new RangeError(`Expected ${numel} elements (shape ${showShape(dims)}) for tensors['${name}'].data `
        + `but received ${t.data.length}`);
    }
    let bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    if (BIG_ENDIAN) {
      bytes = bytes.slice();
      swapBytes(bytes, t.data.BYTES_PER_ELEMENT);
    }
    header.push([name, { dtype: TO_FILE[dtype], shape: dims, data_offsets: [offset, offset + bytes.length] }]);
    offset += bytes.length;
    payloads.push(bytes);
  }

  const json = Buffer.from(`{${header.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`, 'utf8');
  const headerLen = Math.ceil(json.length / 8) * 8;
  const head = Buffer.alloc(8 + headerLen, 0x20);
  head.writeBigUInt64LE(BigInt(headerLen), 0);
  json.copy(head, 8);

  const tmp = `${path}.tmp`;
  const fh = await fsp.open(tmp, 'w');
  try {
    await writeFully(fh, head);
    for (const bytes of payloads) await writeFully(fh, bytes);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await fsp.rename(tmp, path);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}
