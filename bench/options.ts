/**
 * Parsers of the benchmark flags for commander: each validates one value and throws commander's
 * InvalidArgumentError with the house message form, so `tpkit bench` prints
 * `error: option '-n, --iters <n>' argument 'x' is invalid. Expected positive integer …` and exits 2.
 *
 * @module
 */
import { InvalidArgumentError } from 'commander';
import { parseSize } from './harness';

/** An integer ≥ `min`. */
export function intParser(min: number, what = min >= 1 ? 'positive integer' : 'non-negative integer') {
  return (value: string): number => {
    const n = /^-?\d+$/.test(value.trim()) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`Expected ${what} but received ${value}.`);
    return n;
  };
}

/** A byte size such as 8, 4K, 64M, 1G. */
export function sizeParser(value: string): number {
  try {
    return parseSize(value);
  } catch {
    throw new InvalidArgumentError(`Expected size such as 8, 4K, 64M or 1G but received ${value}.`);
  }
}

/** A comma-separated list of positive integers (`1,16,512`). */
export function intListParser(value: string): number[] {
  const parts = value.split(',').map((s) => s.trim()).filter(Boolean);
  const out = parts.map((s) => (/^\d+$/.test(s) ? Number(s) : NaN));
  if (out.length === 0 || out.some((n) => !Number.isSafeInteger(n) || n < 1)) {
    throw new InvalidArgumentError(`Expected comma-separated positive integers but received ${value}.`);
  }
  return out;
}

/** A comma-separated subset of `allowed`; `all` = every one, `none` = empty. */
export function listOf<T extends string>(allowed: readonly T[]) {
  return (value: string): T[] => {
    const v = value.trim();
    if (v === 'all') return [...allowed];
    if (v === 'none' || v === '') return [];
    const parts = v.split(',').map((s) => s.trim());
    for (const p of parts) {
      if (!(allowed as readonly string[]).includes(p)) {
        throw new InvalidArgumentError(`Expected a comma-separated list of ${allowed.join(', ')} (or all, none) but received ${value}.`);
      }
    }
    return [...new Set(parts)] as T[];
  };
}
