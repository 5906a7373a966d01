/**
 * Predictable benchmark inputs and the reference reductions used by the correctness check.
 *
 * Every rank fills its buffers from {@link inputValue}, so any rank can compute — independently of the
 * library under test — what every collective must return. The values are small integers: sums and products
 * of a few ranks stay exact in float32, and sums stay exact in float16 / bfloat16 too.
 *
 * @module
 */
import type { DType } from '../lib/tensor';

/** Reductions the collective benchmarks accept (nccl-tests' `-o`). */
export type BenchRedop = 'sum' | 'prod' | 'max' | 'min' | 'avg';

/** The reductions, in the order help texts list them. */
export const BENCH_REDOPS: readonly BenchRedop[] = ['sum', 'prod', 'max', 'min', 'avg'];

/**
 * Element `i` of rank `rank`'s input: an integer in [−16, 16].
 * Must match `InputValue` in bench/native/bench_common.h (the raw peers check against the same values).
 */
export function inputValue(rank: number, i: number): number {
  return ((i * 7 + rank * 13) % 33) - 16;
}

/** `count` input elements of `rank`, starting at element `offset`. */
export function inputArray(rank: number, count: number, offset = 0): Float32Array {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = inputValue(rank, offset + i);
  return out;
}

/**
 * The reduction of `values` (one per rank, in rank order) as tpkit/Gloo compute it in float32: `avg` is the
 * sum times fround(1 / n) (gloo_comm.cc).
 */
export function reduceValues(values: readonly number[], op: BenchRedop): number {
  let acc = values[0]!;
  for (let r = 1; r < values.length; r++) {
    const v = values[r]!;
    if (op === 'prod') acc = Math.fround(acc * v);
    else if (op === 'max') acc = Math.max(acc, v);
    else if (op === 'min') acc = Math.min(acc, v);
    else acc = Math.fround(acc + v);
  }
  if (op === 'avg') acc = Math.fround(acc * Math.fround(1 / values.length));
  return acc;
}

/** Relative tolerance of the check per dtype (unit roundoff × 2): exact integer results always pass. */
export const CHECK_TOLERANCE: Readonly<Record<DType, number>> = {
  float32: 2 ** -23,
  float16: 2 ** -10,
  bfloat16: 2 ** -7,
};

/** True when `got` matches `expected` within the dtype's tolerance (NaN never matches). */
export function matches(got: number, expected: number, dtype: DType): boolean {
  if (got === expected) return true;
  return Math.abs(got - expected) <= CHECK_TOLERANCE[dtype] * Math.abs(expected);
}
