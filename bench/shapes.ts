/**
 * Shapes of real layers: Llama-3 8B and 70B (Meta's model cards / config.json: hidden size, intermediate
 * size, attention heads, key-value heads, head dim 128). The linear layers of one decoder block, as vLLM
 * builds them (`llama.py`): qkv_proj (QKVParallelLinear, hidden → (heads + 2·kvHeads)·128), o_proj
 * (RowParallelLinear, heads·128 → hidden), gate_up_proj (MergedColumnParallelLinear, hidden →
 * 2·intermediate), down_proj (RowParallelLinear, intermediate → hidden).
 *
 * @module
 */

/** Models whose layer shapes the benchmarks know. */
export const MODEL_NAMES = ['llama3-8b', 'llama3-70b'] as const;
export type ModelName = (typeof MODEL_NAMES)[number];

/** The dimensions that fix a decoder block's GEMMs. */
export interface ModelShape {
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

export const MODELS: Readonly<Record<ModelName, ModelShape>> = {
  'llama3-8b': { hidden: 4096, intermediate: 14336, heads: 32, kvHeads: 8, headDim: 128 },
  'llama3-70b': { hidden: 8192, intermediate: 28672, heads: 64, kvHeads: 8, headDim: 128 },
};

/** One linear layer's GEMM on one rank: y[tokens, n] = x[tokens, k] · W[n, k]ᵀ. */
export interface LayerGemm {
  /** `llama3-8b.qkv_proj`, … */
  name: string;
  n: number;
  k: number;
}

/**
 * The four GEMMs of a decoder block on one rank of a tensor-parallel group of `tp` (column-parallel layers
 * split n, row-parallel layers split k, as Megatron-LM / vLLM).
 *
 * @throws RangeError when a split dimension is not divisible by tp
 */
export function layerGemms(model: ModelName, tp = 1): LayerGemm[] {
  const m = MODELS[model];
  const split = (v: number, what: string): number => {
    if (v % tp !== 0) throw new RangeError(`${model} ${what} ${v} is not divisible by tensor parallel size ${tp}`);
    return v / tp;
  };
  return [
    { name: `${model}.qkv_proj`, n: split((m.heads + 2 * m.kvHeads) * m.headDim, 'qkv output size'), k: m.hidden },
    { name: `${model}.o_proj`, n: m.hidden, k: split(m.heads * m.headDim, 'o_proj input size') },
    { name: `${model}.gate_up_proj`, n: split(2 * m.intermediate, 'gate_up output size'), k: m.hidden },
    { name: `${model}.down_proj`, n: m.hidden, k: split(m.intermediate, 'down_proj input size') },
  ];
}
