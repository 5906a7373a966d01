/**
 * Vocabulary-parallel embedding (vLLM's `VocabParallelEmbedding`, Megatron-LM's `VocabParallelEmbedding`).
 *
 * The vocabulary is padded to a multiple of 64 (vLLM's `DEFAULT_VOCAB_PADDING_SIZE`) and split into equal
 * contiguous ranges, one per rank. Each rank looks up the ids in its range, writes zero rows for the others,
 * and an all-reduce (sum) across the TP group assembles the full `[..., embeddingDim]` result on every rank.
 *
 * @module
 */
import { TpkitError } from '../errors';
import { Tensor, checkTensor, formatShape } from '../tensor';
import type { SafetensorsFile } from '../checkpoint/safetensors';
import { nonEmptyString, positiveInteger, shape as checkShape, typeError } from '../validate';
import { LayerOptions, Parallel, checkFile, divide, layerOptions, loaded, readShard, resolveParallel, toParam } from './common';
import { cat } from '../ops';
import type { ProcessGroup } from '../distributed/process_group';

/** vLLM's default vocabulary padding. */
export const VOCAB_PADDING_SIZE = 64;

/** Options of {@link VocabParallelEmbedding}. */
export interface EmbeddingOptions extends LayerOptions {
  /** Pad the vocabulary to a multiple of this (default 64). */
  paddingSize?: number;
}

/**
 * Token embedding with the vocabulary split across the TP group.
 *
 * Rank i holds rows [i·V/tp, (i+1)·V/tp) of the padded table (V = numEmbeddings rounded up to a multiple of
 * 64); rows past numEmbeddings are zeros.
 */
export class VocabParallelEmbedding {
  /** Vocabulary size of the checkpoint. */
  readonly numEmbeddings: number;
  /** Features per token. */
  readonly embeddingDim: number;
  /** Vocabulary size after padding. */
  readonly numEmbeddingsPadded: number;
  /** Rows held by each rank (padded size / tp). */
  readonly numEmbeddingsPerPartition: number;
  /** First vocabulary id of this rank's range. */
  readonly vocabStartIndex: number;
  /** One past the last vocabulary id of this rank's range (before clamping to numEmbeddings). */
  readonly vocabEndIndex: number;
  /** This rank's rank in the TP group. */
  readonly tpRank: number;
  /** TP group size. */
  readonly tpSize: number;
  readonly #p: Parallel;
  #weight: Tensor | null = null;
  #disposed = false;

  /**
   * @throws TypeError / RangeError for bad sizes or options, or a padded vocabulary not divisible by the TP size
   */
  constructor(numEmbeddings: number, embeddingDim: number, opts?: EmbeddingOptions) {
    const o = layerOptions<EmbeddingOptions>(opts);
    this.numEmbeddings = positiveInteger(numEmbeddings, 'numEmbeddings');
    this.embeddingDim = positiveInteger(embeddingDim, 'embeddingDim');
    const pad = o.paddingSize === undefined ? VOCAB_PADDING_SIZE : positiveInteger(o.paddingSize, 'paddingSize');
    this.#p = resolveParallel(o);
    this.tpRank = this.#p.tpRank;
    this.tpSize = this.#p.tpSize;
    this.numEmbeddingsPadded = Math.ceil(this.numEmbeddings / pad) * pad;
    this.numEmbeddingsPerPartition = divide(this.numEmbeddingsPadded, this.tpSize, 'padded vocabulary size');
    this.vocabStartIndex = this.tpRank * this.numEmbeddingsPerPartition;
    this.vocabEndIndex = this.vocabStartIndex + this.numEmbeddingsPerPartition;
  }

  /** The tensor-parallel group of the layer, or null for TP size 1 without a group. */
  get group(): ProcessGroup | null {
    return this.#p.group;
  }

  /** This rank's table `[numEmbeddingsPerPartition, embeddingDim]`. @throws TpkitError `NOT_INITIALIZED` before loadWeight */
  get weight(): Tensor {
    this.#alive();
    return loaded(this.#weight, 'VocabParallelEmbedding.weight');
  }

  /** Rows of the checkpoint in this rank's range: [start, start + count). */
  get #range(): { start: number; count: number } {
    const start = Math.min(this.vocabStartIndex, this.numEmbeddings);
    const end = Math.min(this.vocabEndIndex, this.numEmbeddings);
    return { start, count: end - start };
  }

  /**
   * Keeps this rank's rows of the full table `[numEmbeddings, embeddingDim]`, zero-padded.
   * @throws RangeError for a wrong shape
   */
  async loadWeight(fullWeight: Tensor): Promise<void> {
    this.#alive();
    checkTensor(fullWeight, 'fullWeight');
    const expected = [this.numEmbeddings, this.embeddingDim];
    if (formatShape(fullWeight.shape) !== formatShape(expected)) {
      throw new RangeError(`Expected fullWeight of shape ${formatShape(expected)} but received ${formatShape(fullWeight.shape)}`);
    }
    const { start, count } = this.#range;
    await this.#set(count > 0 ? fullWeight.narrow(0, start, count) : null);
  }

  /**
   * Reads only this rank's rows of table `name` from a safetensors file.
   * @throws TypeError when `file` is not a SafetensorsFile; RangeError for a wrong shape
   */
  async loadWeightFrom(file: SafetensorsFile, name: string): Promise<void> {
    this.#alive();
    checkFile(file);
    nonEmptyString(name, 'name');
    const { start, count } = this.#range;
    const rows = count > 0 ? await readShard(file, name, [this.numEmbeddings, this.embeddingDim], { dim: 0, start, length: count }, this.#p) : null;
    await this.#set(rows);
  }

  /**
   * Looks up token ids: `[...]` integer ids in [0, numEmbeddings) → `[..., embeddingDim]`, then one all-reduce.
   *
   * @param ids - token ids (an array, Int32Array, or a tensor of integer values) and their shape (default 1-D)
   * @throws RangeError for ids out of range or a wrong shape; TpkitError `NOT_INITIALIZED` before loadWeight
   */
  async forward(ids: ArrayLike<number> | Tensor, shape?: number[]): Promise<Tensor> {
    this.#alive();
    let values: ArrayLike<number>;
    let idShape: number[];
    if (ids instanceof Tensor) {
      checkTensor(ids, 'ids');
      values = await ids.toFloat32Array();
      idShape = ids.shape.slice();
    } else {
      if (ids === null || typeof ids !== 'object' || typeof ids.length !== 'number') throw typeError('array of token ids', 'ids', ids);
      values = ids;
      idShape = shape === undefined ? [ids.length] : checkShape(shape);
    }
    const n = idShape.reduce((a, b) => a * b, 1);
    if (n !== values.length) throw new RangeError(`Expected ${n} ids for shape ${formatShape(idShape)} but received ${values.length}`);
    const local = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const id = values[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.numEmbeddings) {
        throw new RangeError(`Expected token id in [0, ${this.numEmbeddings}) for ids[${i}] but received ${id}`);
      }
      // Out-of-shard ids are masked to −1 → zero rows; the all-reduce fills them from their owner.
      local[i] = id >= this.vocabStartIndex && id < this.vocabEndIndex ? id - this.vocabStartIndex : -1;
    }
    const w = this.weight;
    const out = Tensor._wrap(await w._ops.embedding(w._storage, local, this.embeddingDim), [...idShape, this.embeddingDim]);
    if (this.tpSize > 1) await this.#p.group!.allReduce(out);
    return out;
  }

  /** Frees the table. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#weight?.dispose();
    this.#weight = null;
  }

  /** Same as `dispose()`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  async #set(rows: Tensor | null): Promise<void> {
    const pad = this.numEmbeddingsPerPartition - (rows ? rows.shape[0]! : 0);
    let table: Tensor;
    if (pad === 0) table = rows!;
    else {
      const zeros = Tensor.zeros([pad, this.embeddingDim], { dtype: rows?.dtype ?? 'float32' });
      if (rows) {
        table = cat([rows, zeros], 0);
        rows.dispose();
        zeros.dispose();
      } else table = zeros;
    }
    const param = await toParam(table, this.#p);
    this.#weight?.dispose();
    this.#weight = param;
  }

  #alive(): void {
    if (this.#disposed) throw new TpkitError('DISPOSED', 'VocabParallelEmbedding was used after dispose()');
  }
}

