/**
 * tpkit — tensor-parallel inference primitives for Node.js.
 *
 * - {@link Tensor}, {@link matmul}, {@link linear} and the elementwise ops on the `cpu` (OpenBLAS) and `cuda`
 *   (cuBLAS) backends;
 * - {@link initDistributed} and {@link ProcessGroup} collectives on Gloo (host) or NCCL (GPU), one process per
 *   rank, started by `tpkit launch`, torchrun, Slurm or mpirun;
 * - {@link parallelState} and the vLLM-style parallel layers ({@link ColumnParallelLinear},
 *   {@link RowParallelLinear}, {@link MergedColumnParallelLinear}, {@link QKVParallelLinear},
 *   {@link ReplicatedLinear}, {@link VocabParallelEmbedding});
 * - safetensors checkpoints read shard by shard;
 * - whole models: {@link LlamaForCausalLM} (also Mistral and Qwen2 configs) from a Hugging Face directory,
 *   with a KV cache, generation, tensor and pipeline parallelism.
 *
 * @packageDocumentation
 */
export { TpkitError } from './errors';
export type { TpkitErrorCode } from './errors';
export { Tensor, DTYPES, formatShape } from './tensor';
export type { DType, Device, TensorOptions } from './tensor';
export { matmul, linear, addBias, siluAndMul, rmsNorm, add, cat, rotaryEmbedding, attention, softmax, argmax, embedding, copyRows } from './ops';
export type { MatmulOptions, RotaryOptions, AttentionOptions } from './ops';
export { backends } from './backends';
export type { BackendsReport } from './backends';
export { initDistributed, getWorldGroup } from './distributed/init';
export type { InitOptions } from './distributed/init';
export { ProcessGroup, REDUCE_OPS } from './distributed/process_group';
export type { CollectiveOptions, OpName, ReduceOp } from './distributed/process_group';
export { readDistEnv } from './distributed/env';
export type { DistEnv } from './distributed/env';
export { TCPStore, TCPStoreServer, DEAD_RANK_PREFIX } from './distributed/store';
export type { StoreOptions } from './distributed/store';
export { launch, launchMain } from './distributed/launcher';
export type { LaunchOptions, LaunchResult } from './distributed/launcher';
import * as parallelState from './parallel_state';
export { parallelState };
export type { ModelParallelOptions, ModelParallelLayout } from './parallel_state';
export {
  ReplicatedLinear,
  ColumnParallelLinear,
  RowParallelLinear,
  MergedColumnParallelLinear,
  QKVParallelLinear,
} from './layers/linear';
export type { LinearOptions, ColumnParallelOptions, RowParallelOptions, OutputWithBias } from './layers/linear';
export { VocabParallelEmbedding, VOCAB_PADDING_SIZE } from './layers/embedding';
export type { EmbeddingOptions } from './layers/embedding';
export type { LayerOptions } from './layers/common';
export { SafetensorsFile, writeSafetensors } from './checkpoint/safetensors';
export type { TensorInfo, RawTensor, RawDType } from './checkpoint/safetensors';
export { tensorFromRaw, rawFromTensor } from './checkpoint/load';
export { ParallelLMHead } from './layers/lm_head';
export { LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, KVCache, partitionLayers } from './models/llama';
export type {
  FromPretrainedOptions, ForwardItem, GeneratedSequence, ForwardOptions, GenerateOptions, GenerationResult, PipelineReport, StageRecord, StagePartition,
} from './models/llama';
export { parseLlamaConfig, ropeInvFreq, SUPPORTED_ARCHITECTURES } from './models/config';
export type { LlamaConfig, LlamaArchitecture, RopeConfig, RopeType, RopeFrequencies } from './models/config';
export { Sampler, argmaxRow, checkSamplingOptions } from './models/sampling';
export type { SamplingOptions } from './models/sampling';
export { CheckpointDir } from './models/checkpoint_dir';
export * as plan from './plan';
export { FusedMoE, loadImbalance, routeTopK } from './layers/moe';
export type { TopKRouting } from './layers/moe';
export type { FusedMoEOptions, ExpertWeightName, MoEForwardStats } from './layers/moe';
export { MixtralForCausalLM } from './models/mixtral';
export type { MixtralFromPretrainedOptions } from './models/mixtral';
export { LlamaMlp } from './models/llama';
export type { DecoderMlp, MlpLoadContext } from './models/llama';
export { parseMixtralConfig } from './models/config';
export type { MixtralConfig, DecoderArchitecture } from './models/config';
