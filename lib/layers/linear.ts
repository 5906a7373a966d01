/**
 * Tensor-parallel linear layers, after vLLM's `linear.py` and Megatron-LM's `tensor_parallel/layers.py`.
 *
 * A linear layer computes Y = X·Aᵀ + b with the weight A stored `[outputSize, inputSize]` (PyTorch layout).
 * - {@link ColumnParallelLinear} splits A by output rows, A = [A₁; …; A_p]: rank i holds A_i
 *   `[outputSize/p, inputSize]` and computes Y_i = X·A_iᵀ + b_i; `gatherOutput` all-gathers Y along the last dim.
 * - {@link RowParallelLinear} splits A by input columns, A = [A₁ … A_p], and X along its last dim: rank i
 *   computes X_i·A_iᵀ and the partial results are summed by an all-reduce; the bias is added once (rank 0,
 *   before the all-reduce).
 * A Column layer with `gatherOutput = false` feeding a Row layer with `inputIsParallel = true` costs exactly
 * one all-reduce per forward — the transformer MLP and attention blocks of Megatron-LM (Shoeybi et al. 2019).
 *
 * Every layer loads the FULL checkpoint tensor and keeps only its shard (`loadWeight`), or reads only its shard
 * from a safetensors file (`loadWeightFrom`), so a rank never holds the full weight of a large layer.
 *
 * @module
 */
import { TpkitError } from '../errors';
import { cat, linearUnchecked } from '../ops';
import { Tensor, checkTensor, formatShape } from '../tensor';
import type { SafetensorsFile } from '../checkpoint/safetensors';
import { nonEmptyString, oneOf, positiveInteger, integerInRange, typeError } from '../validate';
import { LayerOptions, Parallel, ShardSpec, checkFile, divide, flag, layerOptions, loaded, readShard, resolveParallel, shardOf, toParam } from './common';

/** Output of a forward with `skipBiasAdd`: the bias is returned for the caller to fuse. */
export interface OutputWithBias {
  /** The layer's output without the bias, same shape as a normal forward. */
  output: Tensor;
  /** The bias the caller must add (this rank's shard for column layers, the full bias for row layers), or null. */
  outputBias: Tensor | null;
}

/** Options of the linear layers. */
export interface LinearOptions extends LayerOptions {
  /** Whether the layer has a bias (default true). */
  bias?: boolean;
  /** Return the bias instead of adding it: forward resolves `{ output, outputBias }` (default false). */
  skipBiasAdd?: boolean;
}

/** One parameter split into parts (merged / QKV layers) or one part (the others). */
interface PartPlan {
  /** Full checkpoint shape of this part's weight. */
  fullShape: number[];
  /** Rows (dim 0) of the part kept by this rank. */
  shard: ShardSpec;
}

/**
 * Shared machinery: parameters made of one or more parts, loaded part by part, concatenated along dim 0 once
 * every part is present.
 */
abstract class LinearBase {
  /** Input features of the full layer. */
  readonly inputSize: number;
  /** Output features of the full layer. */
  readonly outputSize: number;
  /** This rank's rank in the TP group (0 without one). */
  readonly tpRank: number;
  /** TP group size (1 without one). */
  readonly tpSize: number;
  /** Whether the bias is returned rather than added. */
  readonly skipBiasAdd: boolean;
  /** Whether the layer has a bias. */
  readonly hasBias: boolean;
  /** @internal */
  protected readonly p: Parallel;
  #weightParts: (Tensor | null)[];
  #biasParts: (Tensor | null)[];
  #weight: Tensor | null = null;
  #bias: Tensor | null = null;
  #disposed = false;

  protected constructor(inputSize: number, outputSize: number, opts: LinearOptions, parts: number) {
    this.inputSize = positiveInteger(inputSize, 'inputSize');
    this.outputSize = positiveInteger(outputSize, 'outputSize');
    this.p = resolveParallel(opts);
    this.tpRank = this.p.tpRank;
    this.tpSize = this.p.tpSize;
    this.hasBias = flag(opts, 'bias', true);
    this.skipBiasAdd = flag(opts, 'skipBiasAdd', false);
    this.#weightParts = new Array<Tensor | null>(parts).fill(null);
    this.#biasParts = new Array<Tensor | null>(parts).fill(null);
  }

  /** The process group of the layer, or null for TP size 1 without a group. */
  get group() {
    return this.p.group;
  }

  /**
   * This rank's weight shard, `[localOutputSize, localInputSize]`.
   * @throws TpkitError `NOT_INITIALIZED` before every part was loaded
   */
  get weight(): Tensor {
    this.#alive();
    return loaded(this.#weight, `${this.constructor.name}.weight`);
  }

  /** This rank's bias shard (or the full bias of a Row layer), or null without a bias. */
  get bias(): Tensor | null {
    this.#alive();
    if (!this.hasBias) return null;
    return loaded(this.#bias, `${this.constructor.name}.bias`);
  }

  /** @internal Part plans: full shape and this rank's rows per part (weight). */
  protected abstract weightPlan(): PartPlan[];
  /** @internal Bias plans per part (full length and this rank's range). */
  protected abstract biasPlan(): PartPlan[];
  /** @internal Maps the user's shardId to a part index; `undefined` means "all parts, fused". */
  protected partIndex(shardId: unknown): number | undefined {
    if (shardId !== undefined) throw typeError('undefined (this layer has a single part)', 'shardId', shardId);
    return 0;
  }

  /**
   * Loads this rank's shard of a full checkpoint weight (the whole `[outputSize, inputSize]` tensor, or one
   * part of a merged / QKV layer). The shard is copied and converted to the layer's dtype/device.
   *
   * @throws RangeError naming the expected and received shapes; TypeError for a bad shardId
   */
  async loadWeight(fullWeight: Tensor, shardId?: number | string): Promise<void> {
    this.#alive();
    checkTensor(fullWeight, 'fullWeight');
    await this.#load(this.weightPlan(), this.#weightParts, shardId, (plan) => shardOf(fullWeight, plan.fullShape, plan.shard, 'fullWeight'), (whole) => shardOf(fullWeight, whole, { dim: 0, start: 0, length: whole[0]! }, 'fullWeight'), false);
  }

  /**
   * Loads this rank's shard of a full checkpoint bias (`[outputSize]`, or one part's).
   *
   * @throws TpkitError `UNSUPPORTED` when the layer has no bias; RangeError for a wrong shape
   */
  async loadBias(fullBias: Tensor, shardId?: number | string): Promise<void> {
    this.#alive();
    checkTensor(fullBias, 'fullBias');
    if (!this.hasBias) throw new TpkitError('UNSUPPORTED', `${this.constructor.name} was created with bias: false`);
    await this.#load(this.biasPlan(), this.#biasParts, shardId, (plan) => shardOf(fullBias, plan.fullShape, plan.shard, 'fullBias'), (whole) => shardOf(fullBias, whole, { dim: 0, start: 0, length: whole[0]! }, 'fullBias'), true);
  }

  /**
   * Reads only this rank's shard of weight `name` from a safetensors file (row range: one positioned read;
   * column range: strided reads), so the full weight is never in memory.
   *
   * @throws TypeError when `file` is not a SafetensorsFile; RangeError when the stored shape differs; TpkitError
   *   `CHECKPOINT_INVALID` for a malformed file
   */
  async loadWeightFrom(file: SafetensorsFile, name: string, shardId?: number | string): Promise<void> {
    this.#alive();
    checkFile(file);
    nonEmptyString(name, 'name');
    const idx = this.partIndex(shardId);
    if (idx === undefined) throw typeError("a shard id (fused checkpoints: read with loadWeight)", 'shardId', shardId);
    const plan = this.weightPlan()[idx]!;
    await this.#store(this.#weightParts, idx, await readShard(file, name, plan.fullShape, plan.shard, this.p), false);
  }

  /** Like {@link loadWeightFrom} for the bias. @throws as loadWeightFrom, TpkitError `UNSUPPORTED` without a bias */
  async loadBiasFrom(file: SafetensorsFile, name: string, shardId?: number | string): Promise<void> {
    this.#alive();
    checkFile(file);
    nonEmptyString(name, 'name');
    if (!this.hasBias) throw new TpkitError('UNSUPPORTED', `${this.constructor.name} was created with bias: false`);
    const idx = this.partIndex(shardId);
    if (idx === undefined) throw typeError('a shard id', 'shardId', shardId);
    const plan = this.biasPlan()[idx]!;
    await this.#store(this.#biasParts, idx, await readShard(file, name, plan.fullShape, plan.shard, this.p), true);
  }

  /** Frees the parameters. Idempotent; later use throws TpkitError `DISPOSED`. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const t of [...this.#weightParts, ...this.#biasParts, this.#weight, this.#bias]) t?.dispose();
    this.#weight = this.#bias = null;
  }

  /** Same as `dispose()`, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal x·Wᵀ (+ bias when `withBias`): {@link checkInput}, then {@link compute}. */
  protected async matmul(x: Tensor, expectedIn: number, withBias: boolean): Promise<Tensor> {
    this.checkInput(x, expectedIn);
    return this.compute(x, withBias);
  }

  /**
   * @internal The one validation of a forward's input, naming the layer: a live Tensor of shape `[..., expectedIn]`
   * on the layer's device, float32 on the host. The compute after it checks nothing again.
   * @throws TypeError / RangeError; TpkitError `DISPOSED`
   */
  protected checkInput(x: Tensor, expectedIn: number): void {
    checkTensor(x, 'x');
    if (x.ndim < 1 || x.shape[x.ndim - 1] !== expectedIn) {
      throw new RangeError(`${this.constructor.name}: expected input of shape [..., ${expectedIn}] but received ${formatShape(x.shape)}`);
    }
    if (x.device !== this.p.device) throw new RangeError(`${this.constructor.name}: input is on ${x.device} but the layer on ${this.p.device}`);
    if (x.dtype !== this.p.dtype) {
      throw new TypeError(`${this.constructor.name}: input is ${x.dtype} but the layer's parameters are ${this.p.dtype} (cast with t.to('${this.p.dtype}'))`);
    }
    if (x.device === 'cpu' && x.dtype !== 'float32') {
      throw new TypeError(`${this.constructor.name} on cpu computes in float32 but received a ${x.dtype} input (cast with t.to('float32'))`);
    }
  }

  /** @internal x·Wᵀ (+ bias when `withBias`) for an input {@link checkInput} has accepted (the layer's own weight and bias are valid). */
  protected async compute(x: Tensor, withBias: boolean): Promise<Tensor> {
    return linearUnchecked(x, this.weight, withBias ? this.bias : null);
  }

  /** @internal */
  protected finish(output: Tensor): Tensor | OutputWithBias {
    if (this.skipBiasAdd) return { output, outputBias: this.hasBias ? this.bias : null };
    return output;
  }

  #alive(): void {
    if (this.#disposed) throw new TpkitError('DISPOSED', `${this.constructor.name} was used after dispose()`);
  }

  async #load(plans: PartPlan[], parts: (Tensor | null)[], shardId: unknown, one: (p: PartPlan) => Tensor, whole: (shape: number[]) => Tensor, isBias: boolean): Promise<void> {
    const idx = this.partIndex(shardId);
    if (idx !== undefined) {
      await this.#store(parts, idx, one(plans[idx]!), isBias);
      return;
    }
    // A fused checkpoint tensor holding every part stacked along dim 0.
    const total = plans.reduce((n, p) => n + p.fullShape[0]!, 0);
    const fused = whole([total, ...plans[0]!.fullShape.slice(1)]);
    try {
      let offset = 0;
      for (let i = 0; i < plans.length; i++) {
        const plan = plans[i]!;
        await this.#store(parts, i, fused.narrow(0, offset + plan.shard.start, plan.shard.length), isBias);
        offset += plan.fullShape[0]!;
      }
    } finally {
      fused.dispose();
    }
  }

  async #store(parts: (Tensor | null)[], idx: number, shard: Tensor, isBias: boolean): Promise<void> {
    const t = await toParam(shard, this.p);
    parts[idx]?.dispose();
    parts[idx] = t;
    if (parts.every((x) => x !== null)) {
      const whole = parts.length === 1 ? parts[0]!.reshape(parts[0]!.shape) : cat(parts as Tensor[], 0);
      if (isBias) {
        this.#bias?.dispose();
        this.#bias = whole;
      } else {
        this.#weight?.dispose();
        this.#weight = whole;
      }
    }
  }
}

/**
 * A linear layer replicated on every rank (no communication): weight `[outputSize, inputSize]`.
 */
export class ReplicatedLinear extends LinearBase {
  /**
   * @param inputSize - input features
   * @param outputSize - output features
   * @throws TypeError / RangeError for bad sizes or options
   */
  constructor(inputSize: number, outputSize: number, opts?: LinearOptions) {
    super(inputSize, outputSize, layerOptions<LinearOptions>(opts), 1);
  }
  /** @internal */
  protected weightPlan(): PartPlan[] {
    return [{ fullShape: [this.outputSize, this.inputSize], shard: { dim: 0, start: 0, length: this.outputSize } }];
  }
  /** @internal */
  protected biasPlan(): PartPlan[] {
    return [{ fullShape: [this.outputSize], shard: { dim: 0, start: 0, length: this.outputSize } }];
  }
  /**
   * y = x·Wᵀ + b: x `[..., inputSize]` → `[..., outputSize]`.
   * @throws RangeError for a wrong input shape; TpkitError `NOT_INITIALIZED` before loadWeight
   */
  async forward(x: Tensor): Promise<Tensor | OutputWithBias> {
    return this.finish(await this.matmul(x, this.inputSize, this.hasBias && !this.skipBiasAdd));
  }
}

/** Options of {@link ColumnParallelLinear} and the layers built on it. */
export interface ColumnParallelOptions extends LinearOptions {
  /** All-gather the output along its last dim so every rank has the full `[..., outputSize]` (default false). */
  gatherOutput?: boolean;
}

/**
 * Column-parallel linear: weight split by output rows. Rank i holds `[outputSize/tp, inputSize]` (rows
 * i·outputSize/tp …) and its bias shard; forward maps x `[..., inputSize]` to `[..., outputSize/tp]`, or to
 * `[..., outputSize]` with one all-gather when `gatherOutput`.
 */
export class ColumnParallelLinear extends LinearBase {
  /** Whether forward all-gathers the output. */
  readonly gatherOutput: boolean;
  /** Output features held by this rank (outputSize / tp). */
  readonly outputSizePerPartition: number;

  /**
   * @throws RangeError `outputSize 4098 is not divisible by tensor parallel size 4`; TypeError for bad options
   */
  constructor(inputSize: number, outputSize: number, opts?: ColumnParallelOptions, /** @internal */ parts = 1) {
    const o = layerOptions<ColumnParallelOptions>(opts);
    super(inputSize, outputSize, o, parts);
    this.gatherOutput = flag(o, 'gatherOutput', false);
    this.outputSizePerPartition = divide(this.outputSize, this.tpSize, 'outputSize');
  }
  /** @internal */
  protected weightPlan(): PartPlan[] {
    const n = this.outputSizePerPartition;
    return [{ fullShape: [this.outputSize, this.inputSize], shard: { dim: 0, start: this.tpRank * n, length: n } }];
  }
  /** @internal */
  protected biasPlan(): PartPlan[] {
    const n = this.outputSizePerPartition;
    return [{ fullShape: [this.outputSize], shard: { dim: 0, start: this.tpRank * n, length: n } }];
  }
  /**
   * Y_i = X·A_iᵀ + b_i, then all-gather along the last dim when `gatherOutput`.
   *
   * @param x - `[..., inputSize]` on the layer's device and dtype
   * @returns `[..., outputSize/tp]` (or `[..., outputSize]` gathered); `{ output, outputBias }` with skipBiasAdd
   * @throws RangeError for a wrong input shape; TpkitError `NOT_INITIALIZED` before loadWeight, and the group's errors
   */
  async forward(x: Tensor): Promise<Tensor | OutputWithBias> {
    let y = await this.matmul(x, this.inputSize, this.hasBias && !this.skipBiasAdd);
    if (this.gatherOutput && this.tpSize > 1) {
      const gathered = await this.group!.allGather(y, { dim: -1 });
      y.dispose();
      y = gathered;
    }
    return this.finish(y);
  }
}

/**
 * Column-parallel linear whose output concatenates several projections, each sharded separately (Llama's
 * `gate_up_proj`: `[gate; up]`). Rank i holds `[o₀/tp | o₁/tp | …]` rows: part k's rows i·o_k/tp … of the
 * checkpoint tensor of part k (vLLM's `MergedColumnParallelLinear`).
 */
export class MergedColumnParallelLinear extends ColumnParallelLinear {
  /** Output features of each part. */
  readonly outputSizes: readonly number[];

  /**
   * @param outputSizes - output features of each part (each divisible by the TP size)
   * @throws RangeError when a part is not divisible by the TP size
   */
  constructor(inputSize: number, outputSizes: number[], opts?: ColumnParallelOptions) {
    if (!Array.isArray(outputSizes) || outputSizes.length === 0) throw typeError('non-empty array of positive integers', 'outputSizes', outputSizes);
    outputSizes.forEach((o, i) => positiveInteger(o, `outputSizes[${i}]`));
    super(inputSize, outputSizes.reduce((a, b) => a + b, 0), opts, outputSizes.length);
    this.outputSizes = Object.freeze(outputSizes.slice());
    outputSizes.forEach((o, i) => divide(o, this.tpSize, `outputSizes[${i}]`));
  }
  /** @internal */
  protected override partIndex(shardId: unknown): number | undefined {
    if (shardId === undefined) return undefined;
    return integerInRange(shardId, 'shardId', 0, this.outputSizes.length);
  }
  /** @internal */
  protected override weightPlan(): PartPlan[] {
    return this.outputSizes.map((o) => ({ fullShape: [o, this.inputSize], shard: { dim: 0, start: this.tpRank * (o / this.tpSize), length: o / this.tpSize } }));
  }
  /** @internal */
  protected override biasPlan(): PartPlan[] {
    return this.outputSizes.map((o) => ({ fullShape: [o], shard: { dim: 0, start: this.tpRank * (o / this.tpSize), length: o / this.tpSize } }));
  }
}

/**
 * The fused query/key/value projection of attention with grouped-query attention (vLLM's `QKVParallelLinear`).
 * Query heads are split across ranks; key/value heads too when there are at least as many as ranks, else each
 * kv head is replicated on tp / numKvHeads ranks (rank i holds kv head ⌊i / (tp / numKvHeads)⌋). Rank i's
 * output is `[..., (q heads + 2 · kv heads per rank) · headSize]`, laid out `[q | k | v]`.
 */
export class QKVParallelLinear extends ColumnParallelLinear {
  /** Hidden size (input features). */
  readonly hiddenSize: number;
  /** Features per head. */
  readonly headSize: number;
  /** Query heads of the full layer. */
  readonly totalNumHeads: number;
  /** Key/value heads of the full layer. */
  readonly totalNumKvHeads: number;
  /** Query heads on this rank. */
  readonly numHeads: number;
  /** Key/value heads on this rank (1 when replicated). */
  readonly numKvHeads: number;
  /** How many ranks hold a copy of each kv head (1 when kv heads are split). */
  readonly numKvHeadReplicas: number;

  /**
   * @param totalNumKvHeads - key/value heads (default: totalNumHeads, i.e. multi-head attention)
   * @throws RangeError when heads do not split evenly over the TP size
   */
  constructor(hiddenSize: number, headSize: number, totalNumHeads: number, totalNumKvHeads?: number, opts?: ColumnParallelOptions) {
    positiveInteger(hiddenSize, 'hiddenSize');
    positiveInteger(headSize, 'headSize');
    positiveInteger(totalNumHeads, 'totalNumHeads');
    const kv = totalNumKvHeads === undefined ? totalNumHeads : positiveInteger(totalNumKvHeads, 'totalNumKvHeads');
    const o = layerOptions<ColumnParallelOptions>(opts);
    if (o.gatherOutput) throw new RangeError('QKVParallelLinear does not support gatherOutput (attention consumes the sharded heads)');
    const tp = resolveParallel(o).tpSize;
    const numHeads = divide(totalNumHeads, tp, 'totalNumHeads');
    let numKvHeads: number;
    let replicas: number;
    if (tp >= kv) {
      if (tp % kv !== 0) throw new RangeError(`tensor parallel size ${tp} is not divisible by totalNumKvHeads ${kv}`);
      numKvHeads = 1;
      replicas = tp / kv;
    } else {
      numKvHeads = divide(kv, tp, 'totalNumKvHeads');
      replicas = 1;
    }
    // The full (unsharded-equivalent) output size, as vLLM: (q + 2·kv) heads, kv counted with replicas.
    super(hiddenSize, (numHeads + 2 * numKvHeads) * tp * headSize, o, 3);
    this.hiddenSize = hiddenSize;
    this.headSize = headSize;
    this.totalNumHeads = totalNumHeads;
    this.totalNumKvHeads = kv;
    this.numHeads = numHeads;
    this.numKvHeads = numKvHeads;
    this.numKvHeadReplicas = replicas;
  }
  /** The kv head block this rank holds: ⌊tpRank / replicas⌋ (vLLM). */
  get kvShardRank(): number {
    return Math.floor(this.tpRank / this.numKvHeadReplicas);
  }
  /** @internal */
  protected override partIndex(shardId: unknown): number | undefined {
    if (shardId === undefined) return undefined;
    return ['q', 'k', 'v'].indexOf(oneOf(shardId, 'shardId', ['q', 'k', 'v'] as const));
  }
  /** @internal */
  protected override weightPlan(): PartPlan[] {
    return this.#plans().map(([rows, start, len]) => ({ fullShape: [rows, this.hiddenSize], shard: { dim: 0, start, length: len } }));
  }
  /** @internal */
  protected override biasPlan(): PartPlan[] {
    return this.#plans().map(([rows, start, len]) => ({ fullShape: [rows], shard: { dim: 0, start, length: len } }));
  }
  #plans(): [number, number, number][] {
    const h = this.headSize;
    const q: [number, number, number] = [this.totalNumHeads * h, this.tpRank * this.numHeads * h, this.numHeads * h];
    const kvStart = this.kvShardRank * this.numKvHeads * h;
    const kv: [number, number, number] = [this.totalNumKvHeads * h, kvStart, this.numKvHeads * h];
    return [q, kv, [...kv]];
  }
}

/** Options of {@link RowParallelLinear}. */
export interface RowParallelOptions extends LinearOptions {
  /** The input is already split along its last dim (default true); when false, forward splits it. */
  inputIsParallel?: boolean;
  /** All-reduce the partial outputs (default true). */
  reduceResults?: boolean;
}

/**
 * Row-parallel linear: weight split by input columns. Rank i holds `[outputSize, inputSize/tp]` (columns
 * i·inputSize/tp …) and the whole bias; forward computes X_i·A_iᵀ, adds the bias on rank 0 only, and
 * all-reduces (sum) so every rank has `[..., outputSize]`.
 */
export class RowParallelLinear extends LinearBase {
  /** Whether forward expects an input already split along its last dim. */
  readonly inputIsParallel: boolean;
  /** Whether forward all-reduces the partial outputs. */
  readonly reduceResults: boolean;
  /** Input features held by this rank (inputSize / tp). */
  readonly inputSizePerPartition: number;

  /**
   * @throws RangeError when inputSize is not divisible by the TP size, or for `reduceResults: false` with a
   *   bias that is added (it would be summed tp times downstream; vLLM rejects it too)
   */
  constructor(inputSize: number, outputSize: number, opts?: RowParallelOptions) {
    const o = layerOptions<RowParallelOptions>(opts);
    super(inputSize, outputSize, o, 1);
    this.inputIsParallel = flag(o, 'inputIsParallel', true);
    this.reduceResults = flag(o, 'reduceResults', true);
    this.inputSizePerPartition = divide(this.inputSize, this.tpSize, 'inputSize');
    if (!this.reduceResults && this.hasBias && !this.skipBiasAdd) {
      throw new RangeError('RowParallelLinear: reduceResults = false with a bias that is added would add the bias on every rank; use skipBiasAdd or bias: false');
    }
  }
  /** @internal */
  protected weightPlan(): PartPlan[] {
    const n = this.inputSizePerPartition;
    return [{ fullShape: [this.outputSize, this.inputSize], shard: { dim: 1, start: this.tpRank * n, length: n } }];
  }
  /** @internal */
  protected biasPlan(): PartPlan[] {
    return [{ fullShape: [this.outputSize], shard: { dim: 0, start: 0, length: this.outputSize } }];
  }
  /**
   * Y = Σ_i X_i·A_iᵀ + b (bias added once, on rank 0, before the all-reduce).
   *
   * @param x - `[..., inputSize/tp]` when `inputIsParallel`, else `[..., inputSize]` (split here)
   * @returns `[..., outputSize]`; `{ output, outputBias }` with skipBiasAdd
   * @throws RangeError for a wrong input shape; TpkitError `NOT_INITIALIZED` before loadWeight, and the group's errors
   */
  async forward(x: Tensor): Promise<Tensor | OutputWithBias> {
    let input = x;
    if (!this.inputIsParallel && this.tpSize > 1) {
      this.checkInput(x, this.inputSize);
      input = x.narrow(-1, this.tpRank * this.inputSizePerPartition, this.inputSizePerPartition);
    } else {
      this.checkInput(x, this.inputSizePerPartition);
    }
    const addBias = this.hasBias && !this.skipBiasAdd && this.tpRank === 0;
    try {
      const y = await this.compute(input, addBias);
      if (this.reduceResults && this.tpSize > 1) await this.group!.allReduce(y);
      return this.finish(y);
    } finally {
      if (input !== x) input.dispose();
    }
  }
}

