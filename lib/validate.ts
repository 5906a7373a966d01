/**
 * Argument validation helpers (sharp's style): every public function checks its arguments here, once,
 * before anything crosses into C++ or onto the network. Messages have one form:
 * `Expected positive integer for width but received spoons of type string`.
 *
 * @module
 * @internal
 */

/** Formats a received value for an error message: `0 of type number`. */
export function describe(value: unknown): string {
  let shown: string;
  if (typeof value === 'string') shown = value.length > 40 ? `${value.slice(0, 40)}…` : value;
  else if (Array.isArray(value)) shown = `[${value.slice(0, 8).map(String).join(', ')}${value.length > 8 ? ', …' : ''}]`;
  else if (value === null) return 'null';
  else if (typeof value === 'object') shown = Object.prototype.toString.call(value);
  else shown = String(value);
  return `${shown} of type ${Array.isArray(value) ? 'array' : typeof value}`;
}

/** Builds a `TypeError` of the house form. */
export function typeError(expected: string, name: string, value: unknown): TypeError {
  return new TypeError(`Expected ${expected} for ${name} but received ${describe(value)}`);
}

/** Builds a `RangeError` of the house form. */
export function rangeError(expected: string, name: string, value: unknown): RangeError {
  return new RangeError(`Expected ${expected} for ${name} but received ${describe(value)}`);
}

/** Throws unless `value` is a finite number. */
export function finiteNumber(value: unknown, name: string): number {
  if (typeof value !== 'number') throw typeError('number', name, value);
  if (!Number.isFinite(value)) throw rangeError('finite number', name, value);
  return value;
}

/** Throws unless `value` is an integer ≥ 1. */
export function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== 'number') throw typeError('positive integer', name, value);
  if (!Number.isInteger(value) || value < 1) throw rangeError('positive integer', name, value);
  return value;
}

/** Throws unless `value` is an integer ≥ 0. */
export function nonNegativeInteger(value: unknown, name: string): number {
  if (typeof value !== 'number') throw typeError('non-negative integer', name, value);
  if (!Number.isInteger(value) || value < 0) throw rangeError('non-negative integer', name, value);
  return value;
}

/** Throws unless `value` is an integer in `[lo, hi)`. */
export function integerInRange(value: unknown, name: string, lo: number, hi: number): number {
  const expected = `integer in [${lo}, ${hi})`;
  if (typeof value !== 'number') throw typeError(expected, name, value);
  if (!Number.isInteger(value) || value < lo || value >= hi) throw rangeError(expected, name, value);
  return value;
}

/** Throws unless `value` is a boolean; returns `fallback` when undefined. */
export function optionalBoolean(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw typeError('boolean', name, value);
  return value;
}

/** Throws unless `value` is one of `allowed`; returns `fallback` when undefined. */
export function oneOf<T extends string>(value: unknown, name: string, allowed: readonly T[], fallback?: T): T {
  if (value === undefined && fallback !== undefined) return fallback;
  const expected = `one of ${allowed.map((a) => `'${a}'`).join(', ')}`;
  if (typeof value !== 'string') throw typeError(expected, name, value);
  if (!(allowed as readonly string[]).includes(value)) throw rangeError(expected, name, value);
  return value as T;
}

/** Throws unless `value` is a plain object (or undefined, which becomes `{}`). */
export function options<T extends object>(value: unknown, name: string): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw typeError('object', name, value);
  return value as Partial<T>;
}

/** Throws unless `value` is a non-empty string. */
export function nonEmptyString(value: unknown, name: string): string {
  if (typeof value !== 'string') throw typeError('non-empty string', name, value);
  if (value.length === 0) throw rangeError('non-empty string', name, value);
  return value;
}

/** Throws unless `value` is an array of non-negative integers (a tensor shape). */
export function shape(value: unknown, name = 'shape'): number[] {
  if (!Array.isArray(value)) throw typeError('array of non-negative integers', name, value);
  for (let i = 0; i < value.length; i++) {
    const d = value[i];
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0) {
      throw rangeError('array of non-negative integers', name, value);
    }
  }
  if (value.length > 8) throw rangeError('at most 8 dimensions', name, value);
  return value.slice() as number[];
}

/** Normalises a possibly negative dimension index against `ndim`, throwing a RangeError when out of range. */
export function dimIndex(dim: unknown, ndim: number, name = 'dim'): number {
  if (typeof dim !== 'number') throw typeError(`integer in [${-ndim}, ${ndim})`, name, dim);
  if (!Number.isInteger(dim) || dim < -ndim || dim >= ndim) throw rangeError(`integer in [${-ndim}, ${ndim})`, name, dim);
  return dim < 0 ? dim + ndim : dim;
}
