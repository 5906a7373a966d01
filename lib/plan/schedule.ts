/**
 * The pipeline schedule of inference, simulated and drawn.
 *
 * {@link simulateFillDrain} lays m micro-batches over p stages in GPipe's fill-drain schedule (Huang et al.
 * 2019): micro-batch k runs on stage s in time slot s + k, so a step takes p + m − 1 slots, p·m of the
 * p·(p + m − 1) stage-slots are busy and the idle fraction is exactly (p − 1)/(p + m − 1) — computed here with
 * integers and reported as a reduced fraction. {@link timelineSvg} draws a timeline — one row per stage, one
 * box per micro-batch — for the simulation ({@link simulatedTimeline}) or for a measured PP run
 * ({@link measuredTimeline}, from the `pipeline.records` of each stage's `LlamaForCausalLM.generate`).
 *
 * @module
 */
import type { StageRecord } from '../models/llama';

/** A fraction num/den in lowest terms (den > 0). */
export interface Fraction {
  /** Numerator. */
  num: number;
  /** Denominator. */
  den: number;
}

/** What {@link simulateFillDrain} returns. */
export interface PipelineSimulation {
  /** Stages p. */
  stages: number;
  /** Micro-batches m. */
  microBatches: number;
  /** Time slots of the step, p + m − 1. */
  slots: number;
  /** `grid[stage][slot]`: the micro-batch the stage runs in that slot, or −1 when idle. */
  grid: number[][];
  /** Busy stage-slots (p·m). */
  busy: number;
  /** Idle stage-slots. */
  idle: number;
  /** idle / (p · slots), reduced: equals (p − 1)/(p + m − 1). */
  idleFraction: Fraction;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

function reduce(num: number, den: number): Fraction {
  const g = gcd(num, den) || 1;
  return { num: num / g, den: den / g };
}

/**
 * Simulates a fill-drain step slot by slot: each stage, in every slot, runs the lowest micro-batch whose
 * previous stage finished in an earlier slot and that it has not run yet.
 *
 * @param p - stages (positive integer)
 * @param m - micro-batches (positive integer)
 * @throws RangeError for non-positive or non-integer p or m
 */
export function simulateFillDrain(p: number, m: number): PipelineSimulation {
  for (const [v, name] of [[p, 'p'], [m, 'm']] as const) {
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`Expected positive integer for ${name} but received ${v}`);
  }
  // done[s][k]: the slot in which stage s finished micro-batch k (−1: not yet).
  const done = Array.from({ length: p }, () => new Array<number>(m).fill(-1));
  const next = new Array<number>(p).fill(0);
  const grid: number[][] = Array.from({ length: p }, () => []);
  let slot = 0;
  while (next[p - 1]! < m) {
    for (let s = 0; s < p; s++) {
      const k = next[s]!;
      const ready = k < m && (s === 0 || (done[s - 1]![k]! >= 0 && done[s - 1]![k]! < slot));
      if (ready) {
        grid[s]!.push(k);
        done[s]![k] = slot;
        next[s] = k + 1;
      } else grid[s]!.push(-1);
    }
    slot++;
  }
  let busy = 0;
  for (const row of grid) for (const k of row) if (k >= 0) busy++;
  const idle = p * slot - busy;
  return { stages: p, microBatches: m, slots: slot, grid, busy, idle, idleFraction: reduce(idle, p * slot) };
}

/** One box of a timeline. */
export interface TimelineBox {
  /** Start (the timeline's unit). */
  start: number;
  /** End. */
  end: number;
  /** `compute` (a micro-batch's work, coloured by micro-batch) or `wait` (blocked: grey). */
  kind: 'compute' | 'wait';
  /** Micro-batch index (−1 for none). */
  microBatch: number;
}

/** One row (one pipeline stage) of a timeline. */
export interface TimelineRow {
  /** Row label, e.g. `stage 0`. */
  label: string;
  /** Boxes in any order. */
  boxes: TimelineBox[];
}

/** The rows of a simulated step: one compute box per micro-batch and stage, in slot units. */
export function simulatedTimeline(sim: PipelineSimulation): TimelineRow[] {
  return sim.grid.map((row, s) => ({
    label: `stage ${s}`,
    boxes: row.flatMap((k, t) => (k >= 0 ? [{ start: t, end: t + 1, kind: 'compute' as const, microBatch: k }] : [])),
  }));
}

/**
 * The rows of a measured run: per stage, its records (`pipeline.records` of TP rank 0 of that stage), in ms.
 *
 * @param recordsByStage - `recordsByStage[s]`: stage s's records
 * @param step - keep only this step's records (0 = prefill); default every step
 */
export function measuredTimeline(recordsByStage: readonly (readonly StageRecord[])[], step?: number): TimelineRow[] {
  return recordsByStage.map((recs, s) => ({
    label: `stage ${s}`,
    boxes: recs
      .filter((r) => step === undefined || r.step === step)
      .map((r) => ({ start: r.startMs, end: r.endMs, kind: r.kind, microBatch: r.kind === 'compute' ? r.microBatch : -1 })),
  }));
}

/** Options of {@link timelineSvg}. */
export interface TimelineSvgOptions {
  /** Title line. */
  title: string;
  /** Axis unit (`slot`, `ms`). */
  unit: string;
  /** Width of the drawing area, px (default 900). */
  width?: number;
}

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * An SVG timeline: one row per stage, one box per record (compute boxes coloured and numbered by
 * micro-batch, waits grey), a time axis from the earliest start to the latest end.
 */
export function timelineSvg(rows: readonly TimelineRow[], opts: TimelineSvgOptions): string {
  const width = opts.width ?? 900;
  const left = 70, top = 40, rowH = 34, gap = 8;
  const all = rows.flatMap((r) => r.boxes);
  const t0 = all.length ? Math.min(...all.map((b) => b.start)) : 0;
  const t1 = all.length ? Math.max(...all.map((b) => b.end)) : 1;
  const span = t1 - t0 || 1;
  const x = (t: number) => left + ((t - t0) / span) * width;
  const height = top + rows.length * (rowH + gap) + 40;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${left + width + 20}" height="${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="${left}" y="20" font-size="14">${esc(opts.title)}</text>`);
  rows.forEach((row, i) => {
    const y = top + i * (rowH + gap);
    out.push(`<text x="${left - 8}" y="${y + rowH / 2 + 4}" text-anchor="end">${esc(row.label)}</text>`);
    out.push(`<rect x="${left}" y="${y}" width="${width}" height="${rowH}" fill="#f4f4f4"/>`);
    for (const b of row.boxes) {
      const w = Math.max(0.5, x(b.end) - x(b.start));
      const fill = b.kind === 'wait' ? '#c8c8c8' : COLORS[((b.microBatch % COLORS.length) + COLORS.length) % COLORS.length]!;
      const h = b.kind === 'wait' ? rowH / 3 : rowH;
      const yy = b.kind === 'wait' ? y + rowH / 3 : y;
      out.push(`<rect x="${x(b.start).toFixed(2)}" y="${yy}" width="${w.toFixed(2)}" height="${h}" fill="${fill}" stroke="white" stroke-width="0.5"><title>${b.kind} mb ${b.microBatch} ${b.start.toFixed(3)}–${b.end.toFixed(3)} ${esc(opts.unit)}</title></rect>`);
      if (b.kind === 'compute' && w >= 14) out.push(`<text x="${(x(b.start) + w / 2).toFixed(2)}" y="${y + rowH / 2 + 4}" text-anchor="middle" fill="white">${b.microBatch}</text>`);
    }
  });
  const axisY = top + rows.length * (rowH + gap) + 4;
  out.push(`<line x1="${left}" y1="${axisY}" x2="${left + width}" y2="${axisY}" stroke="black"/>`);
  for (let i = 0; i <= 10; i++) {
    const t = t0 + (span * i) / 10;
    out.push(`<line x1="${x(t).toFixed(2)}" y1="${axisY}" x2="${x(t).toFixed(2)}" y2="${axisY + 4}" stroke="black"/>`);
    out.push(`<text x="${x(t).toFixed(2)}" y="${axisY + 16}" text-anchor="middle">${Number.isInteger(t) ? t : t.toFixed(1)}</text>`);
  }
  out.push(`<text x="${left + width}" y="${axisY + 32}" text-anchor="end">${esc(opts.unit)}</text>`);
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
