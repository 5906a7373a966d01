/**
 * Plain-loop references for tests: arange inputs, row-major indexing, narrow and concatenation computed
 * element by element from multi-indices (deliberately not the library's block-copy algorithms), and a
 * deterministic random generator.
 *
 * @module
 */

/** Product of the dimension sizes. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** `(i + offset) * scale` for i in [0, n) — the inputs every rank can predict. */
export function arange(n: number, scale = 1, offset = 0): number[] {
  return Array.from({ length: n }, (_, i) => (i + offset) * scale);
}

/** Multi-index of flat index `flat` in a row-major tensor of `shape`. */
export function unravel(flat: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length).fill(0);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = flat % shape[d]!;
    flat = Math.floor(flat / shape[d]!);
  }
  return idx;
}

/** Flat row-major index of multi-index `idx` in `shape`. */
export function ravel(idx: readonly number[], shape: readonly number[]): number {
  let flat = 0;
  for (let d = 0; d < shape.length; d++) flat = flat * shape[d]! + idx[d]!;
  return flat;
}

/** `length` entries from `start` along `dim`, element by element. */
export function narrowRef(data: ArrayLike<number>, shape: readonly number[], dim: number, start: number, length: number): number[] {
  const outShape = shape.slice();
  outShape[dim] = length;
  const out: number[] = [];
  for (let i = 0; i < numel(outShape); i++) {
    const idx = unravel(i, outShape);
    idx[dim] = idx[dim]! + start;
    out.push(data[ravel(idx, shape)]!);
  }
  return out;
}

/** Concatenation of equally shaped parts along `dim`, element by element. */
export function catRef(parts: ReadonlyArray<ArrayLike<number>>, shape: readonly number[], dim: number): number[] {
  const outShape = shape.slice();
  outShape[dim] = shape[dim]! * parts.length;
  const out: number[] = [];
  for (let i = 0; i < numel(outShape); i++) {
    const idx = unravel(i, outShape);
    const part = Math.floor(idx[dim]! / shape[dim]!);
    idx[dim] = idx[dim]! % shape[dim]!;
    out.push(parts[part]![ravel(idx, shape)]!);
  }
  return out;
}

/** Deterministic values in [-1, 1) (an LCG), so failures reproduce. */
export function rand(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** Deterministic integers in [lo, hi] (as floats), for results that must be exact in float32. */
export function randInt(n: number, seed: number, lo = -4, hi = 4): Float32Array {
  const r = rand(n, seed);
  return r.map((v) => lo + Math.floor(((v + 1) / 2) * (hi - lo + 1)));
}

/** max |a − b| over equal-length arrays (Infinity when the lengths differ). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** max |x| (the scale tolerances are relative to). */
export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}
