/**
 * Text output: nccl-tests' table for collectives, and a small aligned-column table for the other
 * benchmarks.
 *
 * @module
 */
import type { DType } from '../lib/tensor';
import type { CollRow, FormResult } from './harness';

/** nccl-tests' type names (ncclFloat32 prints as `float`). */
export const NCCL_TYPE_NAME: Readonly<Record<DType, string>> = { float32: 'float', float16: 'half', bfloat16: 'bfloat16' };

const pad = (s: string, w: number): string => s.padStart(w);

/** nccl-tests' time format: 2 decimals below 100 µs, 1 below 10 ms, none above. */
export function formatTime(us: number): string {
  if (us >= 10000) return us.toFixed(0);
  if (us >= 100) return us.toFixed(1);
  return us.toFixed(2);
}

function cells(f: FormResult | null): string {
  if (!f) return `${pad('N/A', 8)} ${pad('N/A', 7)} ${pad('N/A', 7)} ${pad('N/A', 6)}`;
  const wrong = f.wrong === null ? 'N/A' : String(f.wrong);
  return `${pad(formatTime(f.timeUs), 8)} ${pad(f.algbw.toFixed(2), 7)} ${pad(f.busbw.toFixed(2), 7)} ${pad(wrong, 6)}`;
}

/** The three header lines of the table (after the `#` banner lines). */
export function collectiveHeader(): string[] {
  return [
    `#${' '.repeat(55)}${pad('out-of-place', 22)}${' '.repeat(8)}${pad('in-place', 22)}`,
    `#${pad('size', 11)} ${pad('count', 12)} ${pad('type', 8)} ${pad('redop', 6)} ${pad('root', 6)}   ` +
      `${pad('time', 8)} ${pad('algbw', 7)} ${pad('busbw', 7)} ${pad('#wrong', 6)}   ${pad('time', 8)} ${pad('algbw', 7)} ${pad('busbw', 7)} ${pad('#wrong', 6)}`,
    `#${pad('(B)', 11)} ${pad('(elements)', 12)} ${' '.repeat(8)} ${' '.repeat(6)} ${' '.repeat(6)}   ` +
      `${pad('(us)', 8)} ${pad('(GB/s)', 7)} ${pad('(GB/s)', 7)} ${' '.repeat(6)}   ${pad('(us)', 8)} ${pad('(GB/s)', 7)} ${pad('(GB/s)', 7)}`,
  ];
}

/** One table line: size, count, type, redop, root, then out-of-place and in-place cells. */
export function collectiveLine(r: CollRow): string {
  return (
    ` ${pad(String(r.size), 11)} ${pad(String(r.count), 12)} ${pad(NCCL_TYPE_NAME[r.type], 8)} ${pad(r.redop, 6)} ${pad(String(r.root), 6)}   ` +
    `${cells(r.outOfPlace)}   ${cells(r.inPlace)}`
  );
}

/** A column of {@link formatTable}: header, unit line, and how to render a cell. */
export interface Column<T> {
  header: string;
  unit?: string;
  width?: number;
  cell: (row: T) => string;
}

/** An aligned text table whose header lines start with `#` (nccl-tests style). */
export function formatTable<T>(columns: readonly Column<T>[], rows: readonly T[]): string[] {
  const widths = columns.map((c) =>
    Math.max(c.width ?? 0, c.header.length, (c.unit ?? '').length, ...rows.map((r) => c.cell(r).length)),
  );
  const line = (vals: string[], lead: string): string => lead + vals.map((v, i) => pad(v, widths[i]!)).join('  ');
  const out = [line(columns.map((c) => c.header), '# '), line(columns.map((c) => c.unit ?? ''), '# ')];
  for (const r of rows) out.push(line(columns.map((c) => c.cell(r)), '  '));
  return out;
}
