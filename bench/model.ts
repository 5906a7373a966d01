/**
 * The ring all-reduce cost model (Thakur, Rabenseifner & Gropp 2005, "Optimization of Collective
 * Communication Operations in MPICH"; Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for
 * clusters of workstations"): a ring reduce-scatter then all-gather takes 2(p−1) steps, each moving n/p bytes,
 *
 *     t(n) = 2(p−1)·α + 2(p−1)/p · n·β
 *
 * with α the per-step latency and β the per-byte transfer time (the local reduction's cost folds into β).
 * {@link fitRingModel} fits α and β to a measured sweep by least squares on the RELATIVE residuals
 * (each point weighted 1/t², so an 8-byte and a 64 MiB message count alike; plain least squares would let
 * the largest sizes decide α) under α, β ≥ 0.
 *
 * @module
 */
import type { RingModelResult } from './schema';

/** One measurement: all-reduce of `size` bytes on `worldSize` ranks took `timeUs`. */
export interface RingPoint {
  size: number;
  worldSize: number;
  timeUs: number;
}

/** The model's prediction, µs. */
export function ringAllReduceTime(size: number, worldSize: number, alphaUs: number, betaUsPerByte: number): number {
  const p = worldSize;
  return 2 * (p - 1) * alphaUs + ((2 * (p - 1)) / p) * size * betaUsPerByte;
}

/** Weighted least squares of t ≈ a·x1 + b·x2 with a, b ≥ 0 (2 unknowns: solve, then clamp and refit). */
function nnls2(x1: number[], x2: number[], t: number[], w: number[]): [number, number] {
  let s11 = 0, s12 = 0, s22 = 0, s1t = 0, s2t = 0;
  for (let i = 0; i < t.length; i++) {
    s11 += w[i]! * x1[i]! * x1[i]!;
    s12 += w[i]! * x1[i]! * x2[i]!;
    s22 += w[i]! * x2[i]! * x2[i]!;
    s1t += w[i]! * x1[i]! * t[i]!;
    s2t += w[i]! * x2[i]! * t[i]!;
  }
  const det = s11 * s22 - s12 * s12;
  if (Math.abs(det) > 1e-12 * s11 * s22) {
    const a = (s1t * s22 - s2t * s12) / det;
    const b = (s11 * s2t - s12 * s1t) / det;
    if (a >= 0 && b >= 0) return [a, b];
  }
  // One coefficient at its bound: the better of the two one-variable fits.
  const onlyA: [number, number] = [Math.max(0, s1t / s11), 0];
  const onlyB: [number, number] = [0, s22 > 0 ? Math.max(0, s2t / s22) : 0];
  const cost = ([a, b]: [number, number]): number => t.reduce((acc, ti, i) => acc + w[i]! * (a * x1[i]! + b * x2[i]! - ti) ** 2, 0);
  return cost(onlyA) <= cost(onlyB) ? onlyA : onlyB;
}

/**
 * Fits α and β to all-reduce measurements (world sizes ≥ 2; several world sizes may be mixed).
 *
 * @returns null when fewer than two distinct sizes with worldSize ≥ 2 are given
 */
export function fitRingModel(points: readonly RingPoint[], fitted: 'p50' | 'mean' = 'mean'): RingModelResult | null {
  const pts = points.filter((q) => q.worldSize >= 2 && q.timeUs > 0 && Number.isFinite(q.timeUs));
  if (new Set(pts.map((q) => q.size)).size < 2) return null;
  const x1 = pts.map((q) => 2 * (q.worldSize - 1));
  const x2 = pts.map((q) => ((2 * (q.worldSize - 1)) / q.worldSize) * q.size);
  const t = pts.map((q) => q.timeUs);
  const w = t.map((ti) => 1 / (ti * ti));
  const [alphaUs, betaUsPerByte] = nnls2(x1, x2, t, w);
  const predicted = pts.map((q) => ringAllReduceTime(q.size, q.worldSize, alphaUs, betaUsPerByte));
  const rms = Math.sqrt(predicted.reduce((acc, p, i) => acc + ((p - t[i]!) / t[i]!) ** 2, 0) / pts.length);
  return {
    fitted,
    alphaUs,
    betaUsPerByte,
    bandwidthGBs: betaUsPerByte > 0 ? 1 / betaUsPerByte / 1e3 : 0,
    rmsRelError: rms,
    points: pts.map((q, i) => ({ size: q.size, worldSize: q.worldSize, measuredUs: q.timeUs, predictedUs: predicted[i]! })),
  };
}
