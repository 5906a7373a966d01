/**
 * The vocabulary-parallel output projection of a causal LM (vLLM's `ParallelLMHead` and the gather of its
 * `LogitsProcessor`).
 *
 * The head's weight is split by vocabulary rows exactly like {@link VocabParallelEmbedding} (padded to a multiple
 * of 64, equal contiguous ranges per rank): rank i computes the logits of its range, `x · W_iᵀ`, an all-gather
 * along the last dim assembles the padded vocabulary on every rank, and the padding columns are dropped, so
 * the result has exactly `numEmbeddings` columns. With tied word embeddings the head reuses the embedding's
 * table (no copy).
 *
 * @module
 */
import { TpkitError } from '../errors';
import { linear } from '../ops';
import { Tensor, checkTensor, formatShape } from '../tensor';
import type { SafetensorsFile } from '../checkpoint/safetensors';
import { typeError } from '../validate';
import { VocabParallelEmbedding, type EmbeddingOptions } from './embedding';

/**
 * Vocabulary-parallel LM head: weight `[numEmbeddingsPerPartition, embeddingDim]` on each rank.
 */
export class ParallelLMHead {
  /** The table this head multiplies by (its own, or the tied embedding's). */
  readonly table: VocabParallelEmbedding;
  /** Whether the table belongs to an embedding layer (tie_word_embeddings): dispose() then leaves it alone. */
  readonly tied: boolean;

  /**
   * @param numEmbeddings - vocabulary size of the checkpoint
   * @param embeddingDim - hidden size
   * @param opts - as {@link VocabParallelEmbedding} (group, dtype, device, paddingSize)
   * @throws as the VocabParallelEmbedding constructor
   */
  constructor(numEmbeddings: number, embeddingDim: number, opts?: EmbeddingOptions);
  /** @internal */
  constructor(numEmbeddings: number, embeddingDim: number, opts: EmbeddingOptions | undefined, tiedTo: VocabParallelEmbedding);
  constructor(numEmbeddings: number, embeddingDim: number, opts?: EmbeddingOptions, tiedTo?: VocabParallelEmbedding) {
    this.tied = tiedTo !== undefined;
    this.table = tiedTo ?? new VocabParallelEmbedding(numEmbeddings, embeddingDim, opts);
  }

  /**
   * A head that shares the embedding's table (Hugging Face `tie_word_embeddings`).
   *
   * @throws TypeError when `embedding` is not a VocabParallelEmbedding
   */
  static tiedTo(embedding: VocabParallelEmbedding): ParallelLMHead {
    if (!(embedding instanceof VocabParallelEmbedding)) throw typeError('VocabParallelEmbedding', 'embedding', embedding);
    return new ParallelLMHead(embedding.numEmbeddings, embedding.embeddingDim, undefined, embedding);
  }

  /** Vocabulary size (columns of the logits). */
  get numEmbeddings(): number {
    return this.table.numEmbeddings;
  }

  /** This rank's rows of the head, `[numEmbeddingsPerPartition, embeddingDim]`. */
  get weight(): Tensor {
    return this.table.weight;
  }

  /** Reads this rank's rows of `name` (`lm_head.weight`) from a safetensors file. @throws as VocabParallelEmbedding.loadWeightFrom; TpkitError `UNSUPPORTED` when tied */
  async loadWeightFrom(file: SafetensorsFile, name: string): Promise<void> {
    if (this.tied) throw new TpkitError('UNSUPPORTED', 'ParallelLMHead is tied to the embedding; load the embedding instead');
    await this.table.loadWeightFrom(file, name);
  }

  /** Keeps this rank's rows of the full head `[numEmbeddings, embeddingDim]`. @throws as VocabParallelEmbedding.loadWeight */
  async loadWeight(fullWeight: Tensor): Promise<void> {
    if (this.tied) throw new TpkitError('UNSUPPORTED', 'ParallelLMHead is tied to the embedding; load the embedding instead');
    await this.table.loadWeight(fullWeight);
  }

  /**
   * Logits of every row: hidden `[rows, embeddingDim]` → `[rows, numEmbeddings]` (float32 on the host),
   * identical on every rank of the group (one all-gather of `[rows, numEmbeddingsPadded / tp]` per rank).
   *
   * @throws RangeError for a wrong input shape; TpkitError `NOT_INITIALIZED` before loading, and the group's errors
   */
  async forward(hidden: Tensor): Promise<Tensor> {
    checkTensor(hidden, 'hidden');
    const dim = this.table.embeddingDim;
    if (hidden.ndim !== 2 || hidden.shape[1] !== dim) {
      throw new RangeError(`ParallelLMHead: expected hidden of shape [rows, ${dim}] but received ${formatShape(hidden.shape)}`);
    }
    const local = await linear(hidden, this.weight);
    let full = local;
    const group = this.table.tpSize > 1 ? this.table.group : null;
    if (group) {
      full = await group.allGather(local, { dim: -1 });
      local.dispose();
    }
    if (full.shape[1] === this.numEmbeddings) return full;
    const out = full.narrow(1, 0, this.numEmbeddings);
    full.dispose();
    return out;
  }

  /** Frees the head's own table (a tied table belongs to the embedding). Idempotent. */
  dispose(): void {
    if (!this.tied) this.table.dispose();
  }

  /** Same as `dispose()`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
