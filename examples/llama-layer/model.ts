/**
 * Llama decoder-layer shapes and the seeded random checkpoint of one layer in Hugging Face naming.
 *
 * Shapes from the models' `config.json` (Meta Llama 3): 8B — hidden 4096, 32 heads, 8 kv heads, head dim 128,
 * intermediate 14336; 70B — hidden 8192, 64 heads, 8 kv heads, head dim 128, intermediate 28672.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { floatToBits } from '../../lib/backend/cpu';
import { writeSafetensors, RawTensor } from '../../lib/checkpoint/safetensors';

/** The shapes of one decoder layer. */
export interface ModelConfig {
  name: string;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  rmsNormEps: number;
}

/** Known configurations (`tiny` is for tests). */
export const MODELS: Readonly<Record<string, ModelConfig>> = {
  'llama-3-8b': { name: 'llama-3-8b', hiddenSize: 4096, numHeads: 32, numKvHeads: 8, headDim: 128, intermediateSize: 14336, rmsNormEps: 1e-5 },
  'llama-3-70b': { name: 'llama-3-70b', hiddenSize: 8192, numHeads: 64, numKvHeads: 8, headDim: 128, intermediateSize: 28672, rmsNormEps: 1e-5 },
  tiny: { name: 'tiny', hiddenSize: 256, numHeads: 8, numKvHeads: 2, headDim: 32, intermediateSize: 512, rmsNormEps: 1e-5 },
};

/** Hugging Face tensor names of layer 0. */
export const NAMES = {
  q: 'model.layers.0.self_attn.q_proj.weight',
  k: 'model.layers.0.self_attn.k_proj.weight',
  v: 'model.layers.0.self_attn.v_proj.weight',
  o: 'model.layers.0.self_attn.o_proj.weight',
  gate: 'model.layers.0.mlp.gate_proj.weight',
  up: 'model.layers.0.mlp.up_proj.weight',
  down: 'model.layers.0.mlp.down_proj.weight',
  norm: 'model.layers.0.post_attention_layernorm.weight',
} as const;

/** Full checkpoint shapes of the layer's tensors. */
export function shapes(c: ModelConfig): Record<keyof typeof NAMES, number[]> {
  const h = c.hiddenSize;
  return {
    q: [c.numHeads * c.headDim, h],
    k: [c.numKvHeads * c.headDim, h],
    v: [c.numKvHeads * c.headDim, h],
    o: [h, c.numHeads * c.headDim],
    gate: [c.intermediateSize, h],
    up: [c.intermediateSize, h],
    down: [h, c.intermediateSize],
    norm: [h],
  };
}

/** Parameters of one layer (excluding norms), for reporting. */
export function layerParams(c: ModelConfig): number {
  return Object.entries(shapes(c))
    .filter(([k]) => k !== 'norm')
    .reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0);
}

/** A small, fast, seedable PRNG (xorshift128+) giving floats in [0, 1). */
export class Rng {
  private s0: number;
  private s1: number;
  constructor(seed: number) {
    this.s0 = (seed ^ 0x9e3779b9) >>> 0 || 1;
    this.s1 = (Math.imul(seed, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0 || 2;
  }
  next(): number {
    let x = this.s0;
    const y = this.s1;
    this.s0 = y;
    x ^= x << 23;
    x ^= x >>> 17;
    x ^= y ^ (y >>> 26);
    this.s1 = x >>> 0;
    return ((this.s0 + this.s1) >>> 0) / 4294967296;
  }
  /** `n` uniform values in [-a, a). */
  uniform(n: number, a: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (2 * this.next() - 1) * a;
    return out;
  }
}

/** Default checkpoint path for a model: `.checkpoints/<name>/model.safetensors` under `dir`. */
export function checkpointPath(c: ModelConfig, dir = process.cwd()): string {
  return path.join(dir, '.checkpoints', c.name, 'model.safetensors');
}

/**
 * Writes a bfloat16 checkpoint of one layer with seeded uniform weights (scale 1/√fan_in, as PyTorch's
 * `nn.Linear` init) and norm weights near 1. Calls `progress(fraction)` as tensors are generated.
 */
export async function writeRandomCheckpoint(c: ModelConfig, file: string, seed: number, progress: (f: number, what: string) => void): Promise<void> {
  const rng = new Rng(seed);
  const sh = shapes(c);
  const total = Object.values(sh).reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  let done = 0;
  const tensors: Record<string, RawTensor> = {};
  for (const key of Object.keys(NAMES) as (keyof typeof NAMES)[]) {
    const shape = sh[key];
    const n = shape.reduce((a, b) => a * b, 1);
    let values: Float32Array;
    if (key === 'norm') {
      values = rng.uniform(n, 0.1);
      for (let i = 0; i < n; i++) values[i]! += 1;
    } else values = rng.uniform(n, 1 / Math.sqrt(shape[1]!));
    tensors[NAMES[key]] = { dtype: 'bfloat16', shape, data: floatToBits(values, 'bfloat16') };
    done += n;
    progress(done / total, `generated ${NAMES[key]} ${JSON.stringify(shape)}`);
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await writeSafetensors(file, tensors, { format: 'pt', generator: `tpkit examples/llama-layer seed ${seed}`, model: c.name });
}
