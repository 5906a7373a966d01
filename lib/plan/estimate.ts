/**
 * Memory, communication and time of one TP × PP × DP layout of a Llama-family model — the figures of
 * `tpkit plan`.
 *
 * Memory per GPU follows what tpkit's layers hold (vLLM's sharding): the vocabulary padded to a multiple of
 * 64 and split by TP (`VocabParallelEmbedding`, `ParallelLMHead`), `QKVParallelLinear` with kv heads
 * replicated when TP exceeds their count (max(1, kv/tp) per rank), column-parallel gate/up, row-parallel
 * o/down with the whole bias on every rank, unsharded RMSNorm weights, and vLLM's layer partition over the
 * pipeline stages ({@link partitionLayers}). The KV cache is what `createCache` allocates: per local layer,
 * keys and values `[S, kvHeadsPerRank · headDim]` per sequence.
 *
 * Communication (Megatron-LM, Shoeybi et al. 2019): two all-reduces per decoder block (after o_proj and after
 * down_proj) of `tokens × hidden` activations, plus one for the embedding lookup; an all-gather of the padded
 * logits; one send/recv of `tokens × hidden` per pipeline-stage boundary (Narayanan et al. 2021). A ring
 * all-reduce moves 2(n−1)/n of the message per rank, an all-gather (n−1)/n of the gathered size (Thakur,
 * Rabenseifner & Gropp 2005). The pipeline runs GPipe's fill-drain schedule, idle fraction
 * (p−1)/(p+m−1) for m micro-batches (Huang et al. 2019).
 *
 * Time per stage and micro-batch is max(compute, memory) + communication: compute = FLOPs / peak rate,
 * memory = bytes read (weights and the KV cache) / memory bandwidth — the roofline of decode, which reads
 * every weight once per micro-batch. A step of m micro-batches takes (p + m − 1) slots of the slowest stage.
 *
 * @module
 */
import { ringAllReduceTime } from '../../bench/model';
import type { LlamaConfig, MixtralConfig } from '../models/config';
import { partitionLayers } from '../models/llama';
import type { GpuSpec, LinkSpec } from './hardware';

/** Parameter / KV-cache dtypes a plan may use. */
export type PlanDType = 'float32' | 'float16' | 'bfloat16';

/** Bytes per element of each {@link PlanDType}. */
export const DTYPE_BYTES: Readonly<Record<PlanDType, number>> = Object.freeze({ float32: 4, float16: 2, bfloat16: 2 });

/** vLLM's vocabulary padding (as `VocabParallelEmbedding`). */
const VOCAB_PAD = 64;

// ---- course-notes formulas ---------------------------------------------------------------------------

/**
 * Bytes of one TP all-reduce message: `tokens × hidden × bytesPerElement` (the activations a row-parallel
 * layer sums). Hidden 12288 × batch 16 × 2 B = 393,216 B.
 */
export function allReduceMessageBytes(hidden: number, tokens: number, bytesPerElement: number): number {
  return hidden * tokens * bytesPerElement;
}

/** Ring all-reduce traffic factor 2(n−1)/n: bytes each rank sends per byte of message (0 for n = 1; 1.5 at n = 4). */
export function ringAllReduceFactor(n: number): number {
  return n <= 1 ? 0 : (2 * (n - 1)) / n;
}

/** Ring all-gather traffic factor (n−1)/n of the gathered size (0 for n = 1). */
export function ringAllGatherFactor(n: number): number {
  return n <= 1 ? 0 : (n - 1) / n;
}

/**
 * Bytes each rank sends for the decoder's all-reduces of one forward pass: `2 × layers` all-reduces of
 * `tokens × hidden × bytes`, times the ring factor 2(n−1)/n (embedding and logits excluded). Hidden 12288,
 * 16 tokens, 2 B, 96 layers, TP 4: 113,246,208 B.
 */
export function tpForwardBytes(o: { hidden: number; tokens: number; bytesPerElement: number; layers: number; tp: number }): number {
  return 2 * o.layers * ringAllReduceFactor(o.tp) * allReduceMessageBytes(o.hidden, o.tokens, o.bytesPerElement);
}

/** Time to move `bytes` at `bandwidthGBs` (1e9 B/s), µs, no latency term: 113.2 MB at 600 GB/s ≈ 189 µs. */
export function transferTimeUs(bytes: number, bandwidthGBs: number): number {
  return bytes / (bandwidthGBs * 1e3);
}

/** Ring all-reduce of a `bytes` message over `n` ranks on `link`, µs: 2(n−1)α + 2(n−1)/n · bytes · β. */
export function allReduceTimeUs(bytes: number, n: number, link: LinkSpec): number {
  return n <= 1 ? 0 : ringAllReduceTime(bytes, n, link.alphaUs, 1 / (link.bandwidthGBs * 1e3));
}

/** Ring all-gather whose result is `totalBytes`, over `n` ranks, µs: (n−1)α + (n−1)/n · totalBytes · β. */
export function allGatherTimeUs(totalBytes: number, n: number, link: LinkSpec): number {
  return n <= 1 ? 0 : (n - 1) * link.alphaUs + ringAllGatherFactor(n) * transferTimeUs(totalBytes, link.bandwidthGBs);
}

/** One send/recv of `bytes` on `link`, µs: α + bytes · β. */
export function sendRecvTimeUs(bytes: number, link: LinkSpec): number {
  return link.alphaUs + transferTimeUs(bytes, link.bandwidthGBs);
}

/** GPipe's bubble, the idle fraction of a fill-drain schedule: (p−1)/(p+m−1) (Huang et al. 2019). */
export function pipelineBubble(p: number, m: number): number {
  return (p - 1) / (p + m - 1);
}

// ---- shards ------------------------------------------------------------------------------------------

/**
 * Why tpkit's layers cannot split the model into TP `tp` × PP `pp`, or null when they can (the checks of
 * `fromPretrained`, `QKVParallelLinear`, `MergedColumnParallelLinear`, `RowParallelLinear`,
 * `VocabParallelEmbedding` and {@link partitionLayers}).
 */
export function layoutRejection(config: LlamaConfig, tp: number, pp: number): string | null {
  const c = config;
  if (c.numAttentionHeads % tp !== 0) return `num_attention_heads ${c.numAttentionHeads} is not divisible by tensor parallel size ${tp}`;
  const kv = c.numKeyValueHeads;
  // QKVParallelLinear's messages: kv heads are replicated (tp ≥ kv) or split (tp < kv).
  if (tp >= kv && tp % kv !== 0) return `tensor parallel size ${tp} is not divisible by totalNumKvHeads ${kv}`;
  if (tp < kv && kv % tp !== 0) return `totalNumKvHeads ${kv} is not divisible by tensor parallel size ${tp}`;
  if (c.intermediateSize % tp !== 0) return `intermediate_size ${c.intermediateSize} is not divisible by tensor parallel size ${tp}`;
  const moe = moeOf(c);
  if (moe && moe.numExperts % tp !== 0) return `num_local_experts ${moe.numExperts} is not divisible by expert parallel size ${tp} (EP over the TP ranks)`;
  const vp = Math.ceil(c.vocabSize / VOCAB_PAD) * VOCAB_PAD;
  if (vp % tp !== 0) return `padded vocabulary size ${vp} is not divisible by tensor parallel size ${tp}`;
  if (c.numHiddenLayers < pp) return `num_hidden_layers ${c.numHiddenLayers} is smaller than the pipeline parallel size ${pp}`;
  return null;
}

/** The MoE fields of a Mixtral config (null for a dense model). */
export function moeOf(config: LlamaConfig): { numExperts: number; topK: number } | null {
  const m = config as Partial<MixtralConfig>;
  return typeof m.numLocalExperts === 'number' && typeof m.numExpertsPerTok === 'number' ? { numExperts: m.numLocalExperts, topK: m.numExpertsPerTok } : null;
}

/**
 * Bytes one rank sends in the all-to-alls of MoE layers (dispatch + combine, lib/layers/moe.ts) for `tokens`
 * tokens per rank: 2 × tokens × k × hidden × bytes × (ep − 1)/ep per layer (the rows for its own experts
 * stay; balanced routing assumed).
 */
export function moeAllToAllBytes(o: { tokens: number; hidden: number; topK: number; ep: number; bytesPerElement: number; layers: number }): number {
  if (o.ep <= 1) return 0;
  return Math.round(2 * o.tokens * o.topK * o.hidden * o.bytesPerElement * ((o.ep - 1) / o.ep) * o.layers);
}

/** Elements one rank holds (one TP rank of one pipeline stage), by part. */
export interface ShardElements {
  /** Embedding rows × hidden (first stage; also the last with tied embeddings). */
  embedding: number;
  /** LM head rows × hidden (last stage, untied). */
  lmHead: number;
  /** Final RMSNorm (last stage). */
  norm: number;
  /** Every local decoder layer together (weights, biases, norms). */
  layers: number;
  /** Of `layers`: the matmul weights a token multiplies (the FLOP-bearing elements; MoE: router + its k experts). */
  layerMatmul: number;
  /** Decoder layers of this stage. */
  numLayers: number;
  /** Query heads per rank. */
  headsPerRank: number;
  /** Key/value heads per rank (replicated when tp > kv heads). */
  kvHeadsPerRank: number;
  /** Padded vocabulary rows per rank. */
  vocabPerRank: number;
  /** Sum of the parts. */
  total: number;
}

/**
 * What one rank (TP size `tp`, pipeline stage `ppRank` of `pp`) holds, as `LlamaForCausalLM.parameterBytes`
 * counts it.
 *
 * @throws RangeError with {@link layoutRejection}'s reason for a layout the layers cannot split into
 */
export function shardElements(config: LlamaConfig, tp: number, pp: number, ppRank: number): ShardElements {
  const why = layoutRejection(config, tp, pp);
  if (why) throw new RangeError(why);
  const c = config;
  const h = c.hiddenSize;
  const hd = c.headDim;
  const part = partitionLayers(c.numHiddenLayers, pp);
  const numLayers = part.counts[ppRank]!;
  const first = ppRank === 0;
  const last = ppRank === pp - 1;
  const heads = c.numAttentionHeads / tp;
  const kvHeads = Math.max(1, c.numKeyValueHeads / tp);
  const vocabPerRank = (Math.ceil(c.vocabSize / VOCAB_PAD) * VOCAB_PAD) / tp;
  const qkvOut = (heads + 2 * kvHeads) * hd;
  const inter = c.intermediateSize / tp;
  const attnMatmul = qkvOut * h + h * (c.numAttentionHeads * hd) / tp;
  const moe = moeOf(c);
  // MoE (Mixtral): the replicated router E × H and this rank's experts — E / ep whole experts (vLLM's EP over
  // the TP ranks: ep = tp), the same elements as every expert split tp ways; a token's FLOPs use k of them.
  const matmul = moe ? attnMatmul + moe.numExperts * h + (moe.numExperts * 3 * c.intermediateSize * h) / tp : attnMatmul + 2 * inter * h + h * inter;
  const activeMatmul = moe ? attnMatmul + moe.numExperts * h + moe.topK * 3 * inter * h : matmul;
  const biases = (c.qkvBias ? qkvOut : 0) + (c.oProjBias ? h : 0) + (c.mlpBias ? 2 * inter + h : 0);
  const perLayer = 2 * h + matmul + biases;
  const embedding = first || (last && c.tieWordEmbeddings) ? vocabPerRank * h : 0;
  const lmHead = last && !c.tieWordEmbeddings ? vocabPerRank * h : 0;
  const norm = last ? h : 0;
  const layers = numLayers * perLayer;
  return {
    embedding, lmHead, norm, layers, layerMatmul: numLayers * activeMatmul, numLayers, headsPerRank: heads, kvHeadsPerRank: kvHeads, vocabPerRank,
    total: embedding + lmHead + norm + layers,
  };
}

/**
 * Bytes of parameters one rank holds: {@link shardElements}' total × the dtype's bytes.
 *
 * @throws RangeError for a layout the layers cannot split into
 */
export function rankWeightBytes(config: LlamaConfig, tp: number, pp: number, ppRank: number, dtype: PlanDType): number {
  return shardElements(config, tp, pp, ppRank).total * DTYPE_BYTES[dtype];
}

/**
 * Bytes of KV cache one rank holds for `batch` sequences of `seq` tokens: local layers × 2 (keys, values) ×
 * seq × kvHeadsPerRank × headDim × bytes × batch — `createCache(seq).nbytes × batch`.
 *
 * @throws RangeError for a layout the layers cannot split into
 */
export function rankKvCacheBytes(config: LlamaConfig, tp: number, pp: number, ppRank: number, seq: number, batch: number, kvDtype: PlanDType): number {
  const s = shardElements(config, tp, pp, ppRank);
  return s.numLayers * 2 * seq * s.kvHeadsPerRank * config.headDim * DTYPE_BYTES[kvDtype] * batch;
}

// ---- layouts -----------------------------------------------------------------------------------------

/** What {@link planLayouts} needs. */
export interface PlanInput {
  /** The model. */
  config: LlamaConfig;
  /** GPUs in all. */
  gpus: number;
  /** GPUs per node (default min(gpus, 8)). */
  gpusPerNode?: number;
  /** The accelerator. */
  gpu: GpuSpec;
  /** Link between GPUs of one node. */
  intraLink: LinkSpec;
  /** Link between nodes. */
  interLink: LinkSpec;
  /** Sequences each model replica (DP rank) serves at once (default 1). */
  batch?: number;
  /** Tokens per sequence: the KV-cache capacity, the prefill length and the decode context (default 4096). */
  seq?: number;
  /** Parameter and activation dtype (default bfloat16). */
  dtype?: PlanDType;
  /** KV-cache dtype (default: `dtype`). */
  kvDtype?: PlanDType;
  /** Pipeline micro-batches per step (default min(batch, pp)); capped at the batch. */
  microBatches?: number;
  /** Tokens of one forward pass the activation workspace is sized for (default 8192, a chunked prefill). */
  maxBatchedTokens?: number;
  /** Allow TP groups larger than a node (default false). */
  tpAcrossNodes?: boolean;
}

/** Time estimate of one phase (a decode step or the prefill) of a layout. */
export interface PhaseEstimate {
  /** Wall time of the phase, ms (decode: one token for every sequence). */
  ms: number;
  /** Of the slowest stage's slot, compute-bound time (FLOPs / rate), ms. */
  computeMs: number;
  /** Of the slowest stage's slot, memory-bound time (bytes read / bandwidth), ms (0 when the bandwidth is unknown). */
  memoryMs: number;
  /** Of the slowest stage's slot, TP collectives, ms. */
  commMs: number;
  /** PP send/recv per micro-batch and boundary, ms. */
  sendMs: number;
  /** Share of the phase spent communicating (TP collectives and PP transfers on the critical path), 0–1. */
  commShare: number;
  /** Idle fraction of the fill-drain schedule, (p−1)/(p+m−1). */
  bubble: number;
  /** `memory` or `compute`: which roofline term decides the slowest stage. */
  bound: 'memory' | 'compute';
  /** Tokens per second over all DP replicas. */
  tokensPerSecond: number;
}

/** One pipeline stage's per-GPU figures (every TP rank of a stage holds the same). */
export interface StagePlan {
  /** Stage index. */
  stage: number;
  /** First decoder layer and count. */
  layerStart: number;
  /** Decoder layers of the stage. */
  layers: number;
  /** Parameter bytes per GPU. */
  weightBytes: number;
  /** KV-cache bytes per GPU. */
  kvCacheBytes: number;
  /** Activation workspace estimate per GPU, bytes. */
  activationBytes: number;
  /** Sum of the three, bytes. */
  totalBytes: number;
}

/** The figures of one layout (bytes are integers; times ms). */
export interface LayoutPlan {
  /** Tensor-parallel size. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** Data-parallel replicas. */
  dp: number;
  /** Global ranks of rank 0's TP group (parallelState's order: TP fastest, then PP, then DP). */
  tpGroup: number[];
  /** Global ranks of rank 0's PP group. */
  ppGroup: number[];
  /** Whether a TP group spans nodes. */
  tpAcrossNodes: boolean;
  /** Stage boundaries that cross nodes. */
  ppCrossNodeBoundaries: number;
  /** Micro-batches per step. */
  microBatches: number;
  /** Per stage. */
  stages: StagePlan[];
  /** Largest parameter bytes over the layout's ranks. */
  weightBytesPerGpu: number;
  /** Largest KV-cache bytes over the ranks. */
  kvCacheBytesPerGpu: number;
  /** Largest activation workspace over the ranks, bytes. */
  activationBytesPerGpu: number;
  /** Largest total over the ranks, bytes. */
  totalBytesPerGpu: number;
  /** The GPU's memory, bytes. */
  gpuMemoryBytes: number;
  /** gpuMemoryBytes − totalBytesPerGpu (negative: does not fit). */
  marginBytes: number;
  /** Whether every rank fits. */
  fits: boolean;
  /** One decode all-reduce message for the whole batch: batch × hidden × bytes (0 for TP 1). */
  allReduceBytes: number;
  /** Bytes each rank sends for that message on the ring, 2(n−1)/n × allReduceBytes. */
  allReduceRingBytes: number;
  /** TP all-reduces of one forward pass on a stage's ranks, summed over stages (2 per layer + 1 embedding; 0 for TP 1). */
  allReducesPerForward: number;
  /** Ring bytes each rank sends for TP all-reduces per decode step (whole batch), summed over stages. */
  allReduceBytesPerToken: number;
  /** Ring bytes per rank for the TP all-reduces of the prefill (batch × seq tokens). */
  allReduceBytesPerPrefill: number;
  /** Logits all-gather per decode step: gathered size batch × padded vocab × bytes. */
  logitsAllGatherBytes: number;
  /** Bytes sent across one stage boundary per decode step (batch × hidden × bytes; 0 for PP 1). */
  ppSendBytesPerToken: number;
  /** Bytes across one stage boundary for the prefill. */
  ppSendBytesPerPrefill: number;
  /**
   * Mixture-of-experts configs only: experts per rank (EP over the TP ranks, as vLLM with one replica), their
   * bytes, and the all-to-all bytes one rank sends per decode step and per prefill (`moeAllToAllBytes`).
   */
  moe?: MoEPlan;
  /** One decode step (every sequence gets one token). */
  decode: PhaseEstimate;
  /** The prefill of every sequence's `seq` tokens. */
  prefill: PhaseEstimate;
}

/** The mixture-of-experts part of a {@link LayoutPlan}. */
export interface MoEPlan {
  /** Experts per MoE layer (`num_local_experts`). */
  numExperts: number;
  /** Experts per token (`num_experts_per_tok`). */
  topK: number;
  /** Expert-parallel size (the TP ranks). */
  ep: number;
  /** Experts held by each rank. */
  expertsPerRank: number;
  /** Bytes of the experts (and router) one rank holds. */
  expertBytesPerRank: number;
  /** All-to-all bytes one rank sends per decode step, dispatch and combine, every MoE layer. */
  allToAllBytesPerToken: number;
  /** All-to-all bytes one rank sends for the prefill. */
  allToAllBytesPerPrefill: number;
}

/** A layout the layers cannot run, and why. */
export interface RejectedLayout {
  /** Tensor-parallel size. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** Data-parallel replicas. */
  dp: number;
  /** The reason (as the layers would throw it, or the node constraint). */
  reason: string;
}

/** {@link PlanInput} with the defaults applied (`microBatches` null: min(batch, pp) per layout). */
export interface ResolvedPlanInput extends Required<Omit<PlanInput, 'config' | 'microBatches'>> {
  /** Micro-batches asked for, or null for the default min(batch, pp). */
  microBatches: number | null;
}

/** What {@link planLayouts} returns. */
export interface PlanResult {
  /** Resolved inputs (defaults applied). */
  input: ResolvedPlanInput;
  /** Every layout the layers can split into, sorted by estimated decode latency (`fits` marks those that fit). */
  layouts: LayoutPlan[];
  /** Layouts of `gpus` that the heads, layers or node size rule out. */
  rejected: RejectedLayout[];
  /** The recommended layout (the fastest decode that fits), or null when none fits. */
  recommended: LayoutPlan | null;
  /** The recommendation with its reason, one line. */
  recommendation: string;
}

function positiveInt(v: number, name: string): number {
  if (!Number.isInteger(v) || v <= 0) throw new RangeError(`Expected positive integer for ${name} but received ${v}`);
  return v;
}

/** Time of one slot (stage × micro-batch) of a phase, µs, split by term. */
interface Slot {
  compute: number;
  memory: number;
  comm: number;
  send: number;
}

/**
 * Every TP × PP × DP layout of `gpus` GPUs (tp · pp · dp = gpus, TP inside a node unless `tpAcrossNodes`),
 * with its memory, communication and time figures, sorted by decode latency; and the recommendation.
 *
 * @throws RangeError for non-positive sizes or a `gpus` not divisible by `gpusPerNode`
 */
export function planLayouts(input: PlanInput): PlanResult {
  const c = input.config;
  const gpus = positiveInt(input.gpus, 'gpus');
  const perNode = positiveInt(input.gpusPerNode ?? Math.min(gpus, 8), 'gpusPerNode');
  if (gpus > perNode && gpus % perNode !== 0) throw new RangeError(`gpus ${gpus} is not a multiple of gpusPerNode ${perNode}`);
  const batch = positiveInt(input.batch ?? 1, 'batch');
  const seq = positiveInt(input.seq ?? 4096, 'seq');
  const dtype = input.dtype ?? 'bfloat16';
  const kvDtype = input.kvDtype ?? dtype;
  const maxBatched = positiveInt(input.maxBatchedTokens ?? 8192, 'maxBatchedTokens');
  if (input.microBatches !== undefined) positiveInt(input.microBatches, 'microBatches');
  const b = DTYPE_BYTES[dtype];
  const layouts: LayoutPlan[] = [];
  const rejected: RejectedLayout[] = [];
  for (let tp = 1; tp <= gpus; tp++) {
    if (gpus % tp !== 0) continue;
    for (let pp = 1; pp * tp <= gpus; pp++) {
      if ((gpus / tp) % pp !== 0) continue;
      const dp = gpus / (tp * pp);
      let why = layoutRejection(c, tp, pp);
      if (!why && tp > perNode && !input.tpAcrossNodes) why = `tensor parallel size ${tp} exceeds the ${perNode} GPUs of a node (TP inside a node; --tp-across-nodes allows it)`;
      if (!why && tp < perNode && perNode % tp !== 0) why = `tensor parallel size ${tp} does not divide the ${perNode} GPUs of a node (a TP group would straddle two nodes)`;
      if (!why && tp > perNode && tp % perNode !== 0) why = `tensor parallel size ${tp} is not a multiple of the ${perNode} GPUs of a node`;
      if (why) {
        rejected.push({ tp, pp, dp, reason: why });
        continue;
      }
      layouts.push(planOne(input, { tp, pp, dp, perNode, batch, seq, dtype, kvDtype, maxBatched, b }));
    }
  }
  const key = (l: LayoutPlan) => l.decode.ms;
  layouts.sort((x, y) => key(x) - key(y) || x.tp - y.tp || x.pp - y.pp);
  const recommended = layouts.find((l) => l.fits) ?? null;
  return {
    input: {
      gpus, gpusPerNode: perNode, gpu: input.gpu, intraLink: input.intraLink, interLink: input.interLink, batch, seq, dtype, kvDtype,
      microBatches: input.microBatches ?? null, maxBatchedTokens: maxBatched, tpAcrossNodes: input.tpAcrossNodes ?? false,
    },
    layouts,
    rejected,
    recommended,
    recommendation: recommend(layouts, recommended, perNode, gpus),
  };
}

function planOne(
  input: PlanInput,
  o: { tp: number; pp: number; dp: number; perNode: number; batch: number; seq: number; dtype: PlanDType; kvDtype: PlanDType; maxBatched: number; b: number },
): LayoutPlan {
  const c = input.config;
  const { tp, pp, dp, perNode, batch, seq, b } = o;
  const gpu = input.gpu;
  const node = (rank: number) => Math.floor(rank / perNode);
  const tpGroup = Array.from({ length: tp }, (_, i) => i);
  const ppGroup = Array.from({ length: pp }, (_, i) => i * tp);
  const tpAcross = tp > perNode;
  const tpLink = tpAcross ? input.interLink : input.intraLink;
  const crosses = (s: number) => node(s * tp) !== node((s + 1) * tp);
  const boundaryLink = (s: number) => (crosses(s) ? input.interLink : input.intraLink);
  let crossings = 0;
  for (let s = 0; s + 1 < pp; s++) if (crosses(s)) crossings++;
  const m = Math.min(batch, input.microBatches ?? Math.min(batch, pp));
  const mbSize = Math.ceil(batch / m);
  const part = partitionLayers(c.numHiddenLayers, pp);
  const shards = part.counts.map((_, s) => shardElements(c, tp, pp, s));
  const h = c.hiddenSize;
  const vp = shards[0]!.vocabPerRank * tp;
  // Activation workspace for a forward of T tokens on one rank: residual, normed, attention output, o/down
  // outputs (≈ 4 × hidden), the qkv output, gate_up (2 × I/tp) and the SiLU product (I/tp), in the
  // activation dtype, plus the gathered float32 logits [rows, padded vocab] on the last stage.
  const actTokens = Math.min(batch * seq, o.maxBatched);
  const stages: StagePlan[] = shards.map((sh, s) => {
    const perToken = 4 * h + (sh.headsPerRank + 2 * sh.kvHeadsPerRank) * c.headDim + 3 * (c.intermediateSize / tp);
    const logits = s === pp - 1 ? batch * vp * 4 : 0;
    const weightBytes = sh.total * b;
    const kvCacheBytes = rankKvCacheBytes(c, tp, pp, s, seq, batch, o.kvDtype);
    const activationBytes = actTokens * perToken * b + logits;
    return { stage: s, layerStart: part.starts[s]!, layers: sh.numLayers, weightBytes, kvCacheBytes, activationBytes, totalBytes: weightBytes + kvCacheBytes + activationBytes };
  });
  const max = (f: (s: StagePlan) => number) => Math.max(...stages.map(f));
  const gpuMemoryBytes = Math.round(gpu.memoryGiB * 2 ** 30);
  const totalBytesPerGpu = max((s) => s.totalBytes);
  const rate = gpu.tflops * 1e12;
  const bw = gpu.bandwidthGBs;
  // One slot: stage s over a micro-batch of `rows` sequences with `newTokens` tokens each at context `ctx`.
  const slot = (s: number, rows: number, newTokens: number, ctxEnd: number): Slot => {
    const sh = shards[s]!;
    const T = rows * newTokens;
    // Attention FLOPs per layer: QKᵀ and PV, 2 × 2 × heads × headDim per (query, key) pair; causal pairs.
    const pairs = rows * (newTokens * ctxEnd - (newTokens * (newTokens - 1)) / 2);
    const flops = 2 * sh.layerMatmul * T + 4 * pairs * sh.headsPerRank * c.headDim * sh.numLayers + (s === pp - 1 ? 2 * sh.vocabPerRank * h * rows : 0);
    const compute = (flops / rate) * 1e6;
    const kvRead = sh.numLayers * 2 * ctxEnd * sh.kvHeadsPerRank * c.headDim * DTYPE_BYTES[o.kvDtype] * rows;
    const memory = bw ? transferTimeUs(sh.total * b + kvRead, bw) : 0;
    const msg = allReduceMessageBytes(h, T, b);
    let comm = 0;
    if (tp > 1) {
      comm += 2 * sh.numLayers * allReduceTimeUs(msg, tp, tpLink);
      if (s === 0) comm += allReduceTimeUs(msg, tp, tpLink);
      if (s === pp - 1) comm += allGatherTimeUs(rows * vp * b, tp, tpLink);
    }
    const send = s < pp - 1 ? sendRecvTimeUs(msg, boundaryLink(s)) : 0;
    return { compute, memory, comm, send };
  };
  // The step's token broadcast over the model group (binomial tree: ⌈log2 n⌉ latencies).
  const modelSize = tp * pp;
  const bcastLink = tpAcross || crossings > 0 ? input.interLink : input.intraLink;
  const bcast = modelSize > 1 ? Math.ceil(Math.log2(modelSize)) * bcastLink.alphaUs : 0;
  const phase = (newTokens: number, ctxEnd: number, tokensOut: number): PhaseEstimate => {
    const slots = stages.map((_, s) => slot(s, mbSize, newTokens, ctxEnd));
    const len = (x: Slot) => Math.max(x.compute, x.memory) + x.comm + x.send;
    let worst = slots[0]!;
    for (const x of slots) if (len(x) > len(worst)) worst = x;
    const steps = pp + m - 1;
    const totalUs = steps * len(worst) + bcast;
    const commUs = steps * (worst.comm + worst.send) + bcast;
    return {
      ms: totalUs / 1e3,
      computeMs: worst.compute / 1e3,
      memoryMs: worst.memory / 1e3,
      commMs: worst.comm / 1e3,
      sendMs: worst.send / 1e3,
      commShare: totalUs > 0 ? commUs / totalUs : 0,
      bubble: pipelineBubble(pp, m),
      bound: worst.memory > worst.compute ? 'memory' : 'compute',
      tokensPerSecond: totalUs > 0 ? (tokensOut * dp * 1e6) / totalUs : 0,
    };
  };
  const decode = phase(1, seq, batch);
  const prefill = phase(seq, seq, batch * seq);
  const ringMsg = (tokens: number) => ringAllReduceFactor(tp) * allReduceMessageBytes(h, tokens, b);
  const arPerForward = tp > 1 ? 2 * c.numHiddenLayers + 1 : 0;
  const decodeMsg = tp > 1 ? allReduceMessageBytes(h, batch, b) : 0;
  return {
    tp, pp, dp, tpGroup, ppGroup,
    tpAcrossNodes: tpAcross,
    ppCrossNodeBoundaries: crossings,
    microBatches: m,
    stages,
    weightBytesPerGpu: max((s) => s.weightBytes),
    kvCacheBytesPerGpu: max((s) => s.kvCacheBytes),
    activationBytesPerGpu: max((s) => s.activationBytes),
    totalBytesPerGpu,
    gpuMemoryBytes,
    marginBytes: gpuMemoryBytes - totalBytesPerGpu,
    fits: totalBytesPerGpu <= gpuMemoryBytes,
    allReduceBytes: decodeMsg,
    allReduceRingBytes: Math.round(ringAllReduceFactor(tp) * decodeMsg),
    allReducesPerForward: arPerForward,
    allReduceBytesPerToken: Math.round(arPerForward * ringMsg(batch)),
    allReduceBytesPerPrefill: Math.round(arPerForward * ringMsg(batch * seq)),
    logitsAllGatherBytes: tp > 1 ? batch * vp * b : 0,
    ppSendBytesPerToken: pp > 1 ? allReduceMessageBytes(h, batch, b) : 0,
    ppSendBytesPerPrefill: pp > 1 ? allReduceMessageBytes(h, batch * seq, b) : 0,
    ...(moeOf(c)
      ? (() => {
        const me = moeOf(c)!;
        const layers = c.numHiddenLayers;
        return {
          moe: {
            numExperts: me.numExperts, topK: me.topK, ep: tp, expertsPerRank: me.numExperts / tp,
            expertBytesPerRank: Math.round((me.numExperts / tp) * 3 * c.intermediateSize * h * b * Math.max(...part.counts)),
            allToAllBytesPerToken: moeAllToAllBytes({ tokens: batch, hidden: h, topK: me.topK, ep: tp, bytesPerElement: b, layers }),
            allToAllBytesPerPrefill: moeAllToAllBytes({ tokens: batch * seq, hidden: h, topK: me.topK, ep: tp, bytesPerElement: b, layers }),
          },
        };
      })()
      : {}),
    decode,
    prefill,
  };
}

function pct(x: number): string {
  return `${Math.round(x * 100)} %`;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/** The one-line recommendation: the fastest fitting layout, and why the obvious alternatives lost. */
function recommend(layouts: LayoutPlan[], best: LayoutPlan | null, perNode: number, gpus: number): string {
  if (!best) {
    const least = layouts.slice().sort((a, b) => a.totalBytesPerGpu - b.totalBytesPerGpu)[0];
    return least
      ? `no layout fits: the smallest per-GPU footprint (TP ${least.tp} × PP ${least.pp}) needs ${gib(least.totalBytesPerGpu)} of ${gib(least.gpuMemoryBytes)} — add GPUs, shorten --seq / --batch or use a smaller dtype`
      : 'no layout of these GPUs can split the model (see the rejected layouts)';
  }
  const name = (l: LayoutPlan) => `TP ${l.tp} × PP ${l.pp}${l.dp > 1 ? ` × DP ${l.dp}` : ''}`;
  const where = best.tp <= perNode ? ' inside the node' : ' across nodes';
  const parts = [`${name(best)}: TP ${best.tp}${where}${best.pp > 1 ? `, PP ${best.pp}${best.ppCrossNodeBoundaries > 0 ? ' across nodes' : ''}` : ''}`];
  parts.push(`decode ${best.decode.ms.toFixed(2)} ms/token (${best.decode.bound}-bound, ${pct(best.decode.commShare)} communication${best.pp > 1 ? `, bubble ${pct(best.decode.bubble)}` : ''}), ${gib(best.marginBytes)} free per GPU`);
  // Why not the next fitting layout with more TP (cross-node all-reduces) or fewer GPUs per replica.
  const moreTp = layouts.filter((l) => l.fits && l.tp > best.tp).sort((a, b) => a.decode.ms - b.decode.ms)[0];
  if (moreTp) {
    parts.push(`${name(moreTp)} would spend ${pct(moreTp.decode.commShare)} of decode in ${moreTp.tpAcrossNodes ? 'cross-node ' : ''}communication (${moreTp.decode.ms.toFixed(2)} ms/token)`);
  } else {
    const notFit = layouts.filter((l) => !l.fits && l.tp * l.pp < best.tp * best.pp).sort((a, b) => b.tp * b.pp - a.tp * a.pp)[0];
    if (notFit) parts.push(`${name(notFit)} does not fit (${gib(notFit.totalBytesPerGpu)} per GPU)`);
    else {
      const other = layouts.find((l) => l !== best && l.fits);
      if (other) parts.push(`next: ${name(other)} at ${other.decode.ms.toFixed(2)} ms/token`);
    }
  }
  void gpus;
  return `recommended: ${parts.join('; ')}`;
}
