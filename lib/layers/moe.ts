/**
 * Mixture-of-experts layer with expert parallelism: {@link FusedMoE} (vLLM's name), the sparse block of
 * Mixtral (transformers' `MixtralSparseMoeBlock`).
 *
 * For tokens x `[T, H]`: router logits `g = x·W_gᵀ` `[T, E]`; routing weights `p = softmax(g)` (over the E
 * experts, float64 on the host, as transformers' float32 softmax up to rounding); the top-k experts of each
 * token (ties: the lower expert index first) with their weights renormalised to sum to 1 (Mixtral always
 * renormalises); expert e is the SwiGLU MLP `y = W2_e·(silu(W1_e·x) ⊙ W3_e·x)`; the output is
 * `Σ_k p_k · y_{e_k}(x)` in the original token order.
 *
 * Placement (vLLM's `FusedMoE` with `enable_expert_parallel`, Megatron-LM's expert parallelism):
 * - **EP** (`expertGroup` of size n, n dividing E): rank r of the EP group holds the whole experts
 *   `[r·E/n, (r+1)·E/n)`. Each rank sorts its (token, expert) pairs by expert (hence by destination rank),
 *   exchanges the row counts with an equal-split all-to-all of `[n, E/n]` counts, sends the rows with an uneven
 *   all-to-all (dispatch), runs only its experts on the rows it received, and sends the results back with the
 *   transposed split sizes (combine); the weighted sum happens on the token's own rank. A rank may send or
 *   receive zero rows. Every rank of the EP group calls `forward` with its own tokens (replicated tokens, as
 *   under TP, simply travel once per rank).
 * - **TP inside each expert** (`group` of size t): every expert's W1/W3 rows and W2 columns are split t ways
 *   (vLLM's `MergedColumnParallelLinear` / `RowParallelLinear` layout); each rank computes partial outputs and
 *   one all-reduce over the TP group after the weighted sum finishes them (one all-reduce per layer, as the
 *   dense MLP). With both groups of size > 1 they must be orthogonal (they share only this rank) and the ranks
 *   of a TP group must hold the same tokens.
 *
 * The permutation, the weighted sum and the softmax run on host float32 / float64 arrays (cuda activations are
 * read back for them); the expert GEMMs run on the layer's device.
 *
 * @module
 */
import { TpkitError } from '../errors';
import { cat, linear, siluAndMul } from '../ops';
import * as parallelState from '../parallel_state';
import type { ProcessGroup } from '../distributed/process_group';
import type { SafetensorsFile } from '../checkpoint/safetensors';
import { Tensor, checkTensor, formatShape } from '../tensor';
import { integerInRange, oneOf, positiveInteger, typeError } from '../validate';
import { ReplicatedLinear } from './linear';
import { type LayerOptions, type Parallel, layerOptions, readShard, resolveParallel, shardOf, toParam } from './common';

/** Options of {@link FusedMoE}. */
export interface FusedMoEOptions extends LayerOptions {
  /**
   * The expert-parallel group: experts are split across it (default: `parallelState`'s EP group when
   * initialized, else none — every expert on every rank).
   */
  expertGroup?: ProcessGroup;
  /**
   * `group` (LayerOptions): the TP group that splits each expert's intermediate dimension. Default:
   * `parallelState`'s TP group when the EP size is 1, else none (with EP, experts are whole, as in vLLM).
   */
  group?: ProcessGroup;
}

/** Which matrix of expert e: Mixtral's `w1` (gate), `w2` (down) or `w3` (up). */
export type ExpertWeightName = 'w1' | 'w2' | 'w3';

/** What one forward did (this rank's view), for load-balance reports and benchmarks. */
export interface MoEForwardStats {
  /** Tokens of this rank's input. */
  tokens: number;
  /** (token, expert) assignments of this rank's tokens per expert (all E experts). */
  tokensPerExpert: number[];
  /** Rows each of this rank's experts processed (from every rank of the EP group). */
  localExpertTokens: number[];
  /** Rows this rank sent to each EP rank in the dispatch. */
  sendSplits: number[];
  /** Rows this rank received from each EP rank in the dispatch. */
  recvSplits: number[];
  /** Wall time of the router (logits, softmax, top-k), ms. */
  routerMs: number;
  /** Wall time of the dispatch (counts and rows all-to-all), ms. */
  dispatchMs: number;
  /** Wall time of this rank's experts, ms. */
  expertMs: number;
  /** Wall time of the combine (the all-to-all back), ms. */
  combineMs: number;
  /** Wall time of the weighted sum, including the TP all-reduce, ms. */
  reduceMs: number;
  /** Bytes this rank sent in the dispatch all-to-all (float32 rows). */
  dispatchBytes: number;
  /** Bytes this rank sent in the combine all-to-all (float32 rows). */
  combineBytes: number;
}

/** max / mean of per-expert token counts (1 = perfectly balanced; 0 when no tokens). */
export function loadImbalance(tokensPerExpert: readonly number[]): number {
  const total = tokensPerExpert.reduce((a, b) => a + b, 0);
  if (total === 0) return 0;
  return Math.max(...tokensPerExpert) / (total / tokensPerExpert.length);
}

/** What {@link routeTopK} returns, `[T, k]` row-major each. */
export interface TopKRouting {
  /** Chosen experts of each token, most likely first. */
  experts: Int32Array;
  /** Their routing weights, renormalised to sum to 1 per token. */
  weights: Float64Array;
}

/**
 * Softmax over each row of `logits` `[T, E]` (float64), top-k per row (ties: lower index first), weights
 * renormalised by their sum (Mixtral). Returns experts and weights `[T, k]`, row-major.
 */
export function routeTopK(logits: ArrayLike<number>, T: number, E: number, k: number): TopKRouting {
  const experts = new Int32Array(T * k);
  const weights = new Float64Array(T * k);
  const p = new Float64Array(E);
  const order = new Int32Array(E);
  for (let t = 0; t < T; t++) {
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, logits[t * E + e]!);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += p[e] = Math.exp(logits[t * E + e]! - max);
    for (let e = 0; e < E; e++) {
      p[e] = p[e]! / sum;
      order[e] = e;
    }
    const sorted = Array.from(order).sort((a, b) => p[b]! - p[a]! || a - b);
    let top = 0;
    for (let j = 0; j < k; j++) top += p[sorted[j]!]!;
    for (let j = 0; j < k; j++) {
      experts[t * k + j] = sorted[j]!;
      weights[t * k + j] = p[sorted[j]!]! / top;
    }
  }
  return { experts, weights };
}

/**
 * Sparse mixture-of-experts block: router + top-k + expert-parallel SwiGLU experts (see the module docs).
 *
 * @example
 * ```ts
 * const moe = new FusedMoE(8, 2, 4096, 14336, { expertGroup: parallelState.getExpertModelParallelGroup() });
 * await moe.loadRouterWeight(gate);                       // [8, 4096]
 * for (const e of moe.localExperts) for (const w of ['w1', 'w2', 'w3'] as const) await moe.loadExpertWeight(e, w, full[e][w]);
 * const y = await moe.forward(x);                         // [T, 4096]
 * console.log(moe.lastStats!.tokensPerExpert);
 * ```
 */
export class FusedMoE {
  /** Experts in the layer (E). */
  readonly numExperts: number;
  /** Experts per token (k). */
  readonly topK: number;
  /** Hidden size (H). */
  readonly hiddenSize: number;
  /** Intermediate size of each expert (I, before TP). */
  readonly intermediateSize: number;
  /** EP size (ranks the experts are spread over). */
  readonly epSize: number;
  /** This rank's rank in the EP group. */
  readonly epRank: number;
  /** TP size inside each expert. */
  readonly tpSize: number;
  /** This rank's rank in the TP group inside the experts. */
  readonly tpRank: number;
  /** Experts held by this rank: `[epRank·E/ep, (epRank+1)·E/ep)`. */
  readonly localExperts: readonly number[];
  /** The router (`gate`): `[E, H]`, no bias, replicated. */
  readonly gate: ReplicatedLinear;
  /** What the last forward did (null before the first). */
  lastStats: MoEForwardStats | null = null;
  readonly #ep: ProcessGroup | null;
  readonly #tp: ProcessGroup | null;
  readonly #p: Parallel;
  readonly #w13: Array<[Tensor | null, Tensor | null]>;
  readonly #w13Merged: Array<Tensor | null>;
  readonly #w2: Array<Tensor | null>;
  #disposed = false;

  /**
   * @param numExperts - E (divisible by the EP size)
   * @param topK - experts per token, 1 ≤ k ≤ E
   * @param hiddenSize - H
   * @param intermediateSize - I (divisible by the TP size inside experts)
   * @throws TypeError / RangeError for bad sizes, groups this rank is not in, E not divisible by the EP size,
   *   I not divisible by the TP size, or EP and TP groups that share more than this rank
   */
  constructor(numExperts: number, topK: number, hiddenSize: number, intermediateSize: number, opts?: FusedMoEOptions) {
    this.numExperts = positiveInteger(numExperts, 'numExperts');
    this.topK = integerInRange(topK, 'topK', 1, this.numExperts + 1);
    this.hiddenSize = positiveInteger(hiddenSize, 'hiddenSize');
    this.intermediateSize = positiveInteger(intermediateSize, 'intermediateSize');
    const o = layerOptions<FusedMoEOptions>(opts);
    const isGroup = (g: unknown, name: string): ProcessGroup => {
      if (g === null || typeof g !== 'object' || typeof (g as ProcessGroup).allToAll !== 'function') throw typeError('ProcessGroup', name, g);
      const pg = g as ProcessGroup;
      if (!pg.isMember) throw new RangeError(`this rank is not a member of the ${name} [${pg.ranks.join(', ')}]`);
      return pg;
    };
    const mp = parallelState.modelParallelIsInitialized();
    const epIn = o.expertGroup !== undefined ? isGroup(o.expertGroup, 'expertGroup') : mp ? parallelState.getExpertModelParallelGroup() : null;
    this.#ep = epIn && epIn.size > 1 ? epIn : null;
    this.epSize = this.#ep ? this.#ep.size : 1;
    this.epRank = this.#ep ? this.#ep.rank : 0;
    const tpIn = o.group !== undefined ? isGroup(o.group, 'group') : mp && this.epSize === 1 ? parallelState.getTensorModelParallelGroup() : null;
    this.#tp = tpIn && tpIn.size > 1 ? tpIn : null;
    this.tpSize = this.#tp ? this.#tp.size : 1;
    this.tpRank = this.#tp ? this.#tp.rank : 0;
    if (this.#ep && this.#tp) {
      const shared = this.#tp.ranks.filter((r) => this.#ep!.ranks.includes(r));
      if (shared.length !== 1) {
        throw new RangeError(`FusedMoE: the expert group [${this.#ep.ranks.join(', ')}] and the tensor parallel group [${this.#tp.ranks.join(', ')}] must share only this rank (TP inside experts needs orthogonal groups)`);
      }
    }
    if (this.numExperts % this.epSize !== 0) {
      throw new RangeError(`numExperts ${this.numExperts} is not divisible by expert parallel size ${this.epSize}`);
    }
    if (this.intermediateSize % this.tpSize !== 0) {
      throw new RangeError(`intermediateSize ${this.intermediateSize} is not divisible by tensor parallel size ${this.tpSize}`);
    }
    // Parameters: the layer's dtype / device; the TP facts are this layer's own.
    const base = resolveParallel({ dtype: o.dtype, device: o.device, group: this.#tp ?? this.#ep ?? undefined });
    this.#p = { ...base, group: this.#tp, tpRank: this.tpRank, tpSize: this.tpSize };
    const per = this.numExperts / this.epSize;
    this.localExperts = Object.freeze(Array.from({ length: per }, (_, i) => this.epRank * per + i));
    this.gate = new ReplicatedLinear(this.hiddenSize, this.numExperts, { bias: false, dtype: o.dtype, device: o.device, group: this.#tp ?? this.#ep ?? undefined });
    this.#w13 = this.localExperts.map(() => [null, null]);
    this.#w13Merged = this.localExperts.map(() => null);
    this.#w2 = this.localExperts.map(() => null);
  }

  /** Whether expert `e` lives on this rank. */
  isLocalExpert(e: number): boolean {
    return Math.floor(e / (this.numExperts / this.epSize)) === this.epRank;
  }

  /** Bytes of parameters this rank holds (router + its experts' shards). */
  get parameterBytes(): number {
    let n = this.gate.weight ? this.gate.weight.nbytes : 0;
    for (let i = 0; i < this.localExperts.length; i++) n += (this.#w13Merged[i]?.nbytes ?? 0) + (this.#w2[i]?.nbytes ?? 0);
    return n;
  }

  /** Loads the router weight `[E, H]` (Mixtral's `block_sparse_moe.gate.weight`). */
  async loadRouterWeight(full: Tensor): Promise<void> {
    await this.gate.loadWeight(full);
  }

  /** Loads the router weight from a safetensors file. */
  async loadRouterWeightFrom(file: SafetensorsFile, name: string): Promise<void> {
    await this.gate.loadWeightFrom(file, name);
  }

  #plan(which: ExpertWeightName) {
    const I = this.intermediateSize;
    const H = this.hiddenSize;
    const n = I / this.tpSize;
    if (which === 'w2') return { shape: [H, I], spec: { dim: 1, start: this.tpRank * n, length: n } };
    return { shape: [I, H], spec: { dim: 0, start: this.tpRank * n, length: n } };
  }

  #slot(expert: number): number {
    integerInRange(expert, 'expert', 0, this.numExperts);
    if (!this.isLocalExpert(expert)) throw new RangeError(`expert ${expert} is not held by expert parallel rank ${this.epRank} (it holds ${this.localExperts[0]}…${this.localExperts[this.localExperts.length - 1]})`);
    return expert - this.localExperts[0]!;
  }

  async #store(slot: number, which: ExpertWeightName, shard: Tensor): Promise<void> {
    const t = await toParam(shard, this.#p);
    if (which === 'w2') {
      this.#w2[slot]?.dispose();
      this.#w2[slot] = t;
      return;
    }
    const parts = this.#w13[slot]!;
    const j = which === 'w1' ? 0 : 1;
    parts[j]?.dispose();
    parts[j] = t;
    if (parts[0] && parts[1]) {
      // gate rows then up rows: siluAndMul's [gate | up] layout (vLLM's w13).
      this.#w13Merged[slot]?.dispose();
      this.#w13Merged[slot] = cat([parts[0], parts[1]], 0);
      parts[0].dispose();
      parts[1].dispose();
      this.#w13[slot] = [null, null];
    }
  }

  /**
   * Loads this rank's shard of expert `expert`'s full checkpoint matrix: w1 / w3 `[I, H]` (rows split by TP),
   * w2 `[H, I]` (columns split by TP).
   * @throws RangeError for an expert this rank does not hold or a wrong shape
   */
  async loadExpertWeight(expert: number, which: ExpertWeightName, full: Tensor): Promise<void> {
    checkTensor(full, 'full');
    const w = oneOf(which, 'which', ['w1', 'w2', 'w3'] as const);
    const slot = this.#slot(expert);
    const { shape, spec } = this.#plan(w);
    await this.#store(slot, w, shardOf(full, shape, spec, `expert ${expert} ${w}`));
  }

  /** As {@link FusedMoE.loadExpertWeight}, reading only this rank's shard of tensor `name` of a safetensors file. */
  async loadExpertWeightFrom(file: SafetensorsFile, name: string, expert: number, which: ExpertWeightName): Promise<void> {
    const w = oneOf(which, 'which', ['w1', 'w2', 'w3'] as const);
    const slot = this.#slot(expert);
    const { shape, spec } = this.#plan(w);
    await this.#store(slot, w, await readShard(file, name, shape, spec, this.#p));
  }

  /**
   * The MoE block: x `[T, H]` (T may be 0) → `[T, H]`, same dtype and device. Every rank of the EP group (and of
   * the TP group inside experts) must call it, each with its own tokens.
   *
   * @throws RangeError for a wrong input shape; TpkitError `NOT_INITIALIZED` for weights never loaded, and the
   *   groups' errors
   */
  async forward(x: Tensor): Promise<Tensor> {
    this.#alive();
    checkTensor(x, 'x');
    const H = this.hiddenSize;
    if (x.ndim !== 2 || x.shape[1] !== H) throw new RangeError(`FusedMoE: expected input of shape [T, ${H}] but received ${formatShape(x.shape)}`);
    const E = this.numExperts;
    const k = this.topK;
    const T = x.shape[0]!;
    const n = this.epSize;
    const per = E / n;
    for (let i = 0; i < this.localExperts.length; i++) {
      if (!this.#w13Merged[i] || !this.#w2[i]) throw new TpkitError('NOT_INITIALIZED', `FusedMoE: weights of expert ${this.localExperts[i]} were not loaded`);
    }
    const t0 = performance.now();
    // Router.
    let logits: Float32Array = new Float32Array(0);
    if (T > 0) {
      const g = (await this.gate.forward(x)) as Tensor;
      logits = await g.toFloat32Array();
      g.dispose();
    }
    const { experts, weights } = routeTopK(logits, T, E, k);
    const xs = await x.toFloat32Array();
    // Permutation: assignments sorted by expert (so by destination rank), then token.
    const tokensPerExpert = new Array<number>(E).fill(0);
    for (let a = 0; a < T * k; a++) tokensPerExpert[experts[a]!]!++;
    const start = new Array<number>(E + 1).fill(0);
    for (let e = 0; e < E; e++) start[e + 1] = start[e]! + tokensPerExpert[e]!;
    const fill = start.slice(0, E);
    const order = new Int32Array(T * k); // position in the send buffer → assignment index (t·k + j)
    for (let a = 0; a < T * k; a++) order[fill[experts[a]!]!++] = a;
    const sendSplits = Array.from({ length: n }, (_, r) => start[(r + 1) * per]! - start[r * per]!);
    const send = new Float32Array(T * k * H);
    for (let i = 0; i < T * k; i++) {
      const tok = Math.floor(order[i]! / k);
      send.set(xs.subarray(tok * H, (tok + 1) * H), i * H);
    }
    const t1 = performance.now();
    // Dispatch: counts [n, per] (equal splits), then the rows (uneven splits).
    let recvCounts: number[]; // [source rank][local expert]
    let recv: Float32Array;
    let recvSplits: number[];
    if (this.#ep) {
      const counts = Tensor.from(tokensPerExpert, [n, per]);
      const got = await this.#ep.allToAll(counts);
      recvCounts = Array.from(await got.toFloat32Array());
      counts.dispose();
      got.dispose();
      recvSplits = Array.from({ length: n }, (_, r) => {
        let s = 0;
        for (let j = 0; j < per; j++) s += recvCounts[r * per + j]!;
        return s;
      });
      const sendT = Tensor.from(send, [T * k, H]);
      const recvT = await this.#ep.allToAll(sendT, { inputSplitSizes: sendSplits, outputSplitSizes: recvSplits });
      recv = await recvT.toFloat32Array();
      sendT.dispose();
      recvT.dispose();
    } else {
      recvCounts = tokensPerExpert.slice();
      recvSplits = [T * k];
      recv = send;
    }
    const t2 = performance.now();
    // Experts: gather each local expert's rows (source-major), run it, scatter back in the received order.
    const rows = recvSplits.reduce((a, b) => a + b, 0);
    const result = new Float32Array(rows * H);
    const localExpertTokens = new Array<number>(per).fill(0);
    const srcStart: number[] = [];
    for (let r = 0, s = 0; r < n; r++) {
      srcStart.push(s);
      s += recvSplits[r]!;
    }
    for (let j = 0; j < per; j++) {
      const where: number[] = [];
      for (let r = 0; r < n; r++) {
        let off = srcStart[r]!;
        for (let q = 0; q < j; q++) off += recvCounts[r * per + q]!;
        for (let c = 0; c < recvCounts[r * per + j]!; c++) where.push(off + c);
      }
      localExpertTokens[j] = where.length;
      if (where.length === 0) continue;
      const xin = new Float32Array(where.length * H);
      where.forEach((row, i) => xin.set(recv.subarray(row * H, (row + 1) * H), i * H));
      const xe = Tensor.from(xin, [where.length, H], { device: this.#p.device, dtype: this.#p.dtype });
      const gu = await linear(xe, this.#w13Merged[j]!);
      xe.dispose();
      const act = await siluAndMul(gu);
      gu.dispose();
      const y = await linear(act, this.#w2[j]!);
      act.dispose();
      const ys = await y.toFloat32Array();
      y.dispose();
      where.forEach((row, i) => result.set(ys.subarray(i * H, (i + 1) * H), row * H));
    }
    const t3 = performance.now();
    // Combine: the results go back with the transposed splits.
    let back: Float32Array;
    if (this.#ep) {
      const resT = Tensor.from(result, [rows, H]);
      const backT = await this.#ep.allToAll(resT, { inputSplitSizes: recvSplits, outputSplitSizes: sendSplits });
      back = await backT.toFloat32Array();
      resT.dispose();
      backT.dispose();
    } else {
      back = result;
    }
    const t4 = performance.now();
    // Weighted sum in the original token order, k in routing order, accumulated in float64.
    const pos = new Int32Array(T * k); // assignment → row of `back`
    for (let i = 0; i < T * k; i++) pos[order[i]!] = i;
    const out = new Float32Array(T * H);
    const acc = new Float64Array(H);
    for (let t = 0; t < T; t++) {
      acc.fill(0);
      for (let j = 0; j < k; j++) {
        const w = weights[t * k + j]!;
        const row = pos[t * k + j]! * H;
        for (let h = 0; h < H; h++) acc[h] = acc[h]! + w * back[row + h]!;
      }
      for (let h = 0; h < H; h++) out[t * H + h] = acc[h]!;
    }
    const y = Tensor.from(out, [T, H], { device: x.device, dtype: x.dtype });
    if (this.#tp && T > 0) await this.#tp.allReduce(y);
    const t5 = performance.now();
    const bytes = (splits: number[], self: number) => splits.reduce((a, b, r) => a + (r === self ? 0 : b), 0) * H * 4;
    this.lastStats = {
      tokens: T,
      tokensPerExpert,
      localExpertTokens,
      sendSplits,
      recvSplits,
      routerMs: t1 - t0,
      dispatchMs: t2 - t1,
      expertMs: t3 - t2,
      combineMs: t4 - t3,
      reduceMs: t5 - t4,
      dispatchBytes: this.#ep ? bytes(sendSplits, this.epRank) : 0,
      combineBytes: this.#ep ? bytes(recvSplits, this.epRank) : 0,
    };
    return y;
  }

  /** Frees every parameter. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.gate.dispose();
    for (const p of this.#w13) p.forEach((t) => t?.dispose());
    this.#w13Merged.forEach((t) => t?.dispose());
    this.#w2.forEach((t) => t?.dispose());
  }

  /** Same as `dispose()`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  #alive(): void {
    if (this.#disposed) throw new TpkitError('DISPOSED', 'FusedMoE was used after dispose()');
  }
}
