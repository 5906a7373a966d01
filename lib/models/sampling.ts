/**
 * Choosing the next token from a row of logits: greedy (argmax) or seeded sampling with temperature, top-k and
 * top-p, applied in that order as transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper` and
 * `TopPLogitsWarper` do. In a multi-rank model only one rank samples and broadcasts the token (vLLM), so the
 * random stream lives on that rank alone.
 *
 * @module
 */
import { finiteNumber, nonNegativeInteger, options } from '../validate';

/** Options of {@link Sampler}. */
export interface SamplingOptions {
  /** Softmax temperature; 0 (the default) is greedy decoding (argmax). */
  temperature?: number;
  /** Keep only the k most likely tokens (0 or absent: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p, in (0, 1] (default 1: all). */
  topP?: number;
  /** Seed of the random stream (an unsigned 32-bit integer; default 0). */
  seed?: number;
}

/** Checks sampling options. @throws TypeError / RangeError naming the option */
export function checkSamplingOptions(opts: unknown): Required<SamplingOptions> {
  const o = options<SamplingOptions>(opts ?? {}, 'options');
  const temperature = o.temperature === undefined ? 0 : finiteNumber(o.temperature, 'temperature');
  if (temperature < 0) throw new RangeError(`Expected finite non-negative number for temperature but received ${temperature} of type number`);
  const topK = o.topK === undefined ? 0 : nonNegativeInteger(o.topK, 'topK');
  const topP = o.topP === undefined ? 1 : finiteNumber(o.topP, 'topP');
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`Expected number in (0, 1] for topP but received ${topP} of type number`);
  const seed = o.seed === undefined ? 0 : nonNegativeInteger(o.seed, 'seed');
  if (seed > 0xffffffff) throw new RangeError(`Expected unsigned 32-bit integer for seed but received ${seed} of type number`);
  return { temperature, topK, topP, seed };
}

/**
 * Index of the largest value (the first one on ties; NaN is skipped unless every value is NaN).
 *
 * @throws RangeError for an empty row
 */
export function argmaxRow(row: ArrayLike<number>): number {
  if (row.length === 0) throw new RangeError('argmax of an empty row');
  let best = -1;
  let bestValue = -Infinity;
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    if (v > bestValue || (best === -1 && v === -Infinity)) {
      best = i;
      bestValue = v;
    }
  }
  return best === -1 ? 0 : best;
}

/**
 * A seeded next-token chooser. The random stream is xoshiro128** (Blackman & Vigna 2018) seeded through
 * splitmix32, so a seed gives the same tokens on every machine.
 */
export class Sampler {
  /** The checked options. */
  readonly options: Readonly<Required<SamplingOptions>>;
  #s: Uint32Array;

  /** @throws as {@link checkSamplingOptions} */
  constructor(opts?: SamplingOptions) {
    this.options = Object.freeze(checkSamplingOptions(opts));
    this.#s = new Uint32Array(4);
    let x = this.options.seed >>> 0;
    for (let i = 0; i < 4; i++) {
      // splitmix32
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** Whether this sampler is greedy (temperature 0). */
  get greedy(): boolean {
    return this.options.temperature === 0;
  }

  /** A uniform double in [0, 1) from the stream (53 bits from two draws). */
  nextUniform(): number {
    const hi = this.#next() >>> 5;
    const lo = this.#next() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /**
   * The next token of one row of logits `[vocab]` (float32 values, as produced by the model).
   *
   * @throws RangeError for an empty row
   */
  sample(logits: ArrayLike<number>): number {
    if (this.greedy) return argmaxRow(logits);
    const n = logits.length;
    if (n === 0) throw new RangeError('sample from an empty row');
    const { temperature, topK, topP } = this.options;
    // Candidates sorted by logit, descending (ties by index, so the order is deterministic).
    let idx = Array.from({ length: n }, (_, i) => i).filter((i) => !Number.isNaN(logits[i]!));
    if (idx.length === 0) return 0;
    idx.sort((a, b) => logits[b]! - logits[a]! || a - b);
    if (topK > 0 && topK < idx.length) {
      // transformers keeps every token whose logit equals the k-th one.
      const kth = logits[idx[topK - 1]!]!;
      let end = topK;
      while (end < idx.length && logits[idx[end]!]! === kth) end++;
      idx = idx.slice(0, end);
    }
    const max = logits[idx[0]!]! / temperature;
    const p = idx.map((i) => Math.exp(logits[i]! / temperature - max));
    let total = p.reduce((a, b) => a + b, 0);
    if (topP < 1) {
      // Keep the most likely tokens until their mass reaches topP (at least one), as TopPLogitsWarper.
      let cum = 0;
      let keep = 0;
      while (keep < p.length) {
        cum += p[keep]! / total;
        keep++;
        if (cum >= topP) break;
      }
      idx = idx.slice(0, keep);
      p.length = keep;
      total = p.reduce((a, b) => a + b, 0);
    }
    let u = this.nextUniform() * total;
    for (let j = 0; j < p.length; j++) {
      u -= p[j]!;
      if (u < 0) return idx[j]!;
    }
    return idx[p.length - 1]!;
  }

  #next(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2] ^= s[0]!;
    s[3] ^= s[1]!;
    s[1] ^= s[2]!;
    s[0] ^= s[3]!;
    s[2] ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

