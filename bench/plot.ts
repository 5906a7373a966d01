/**
 * A small hand-written SVG line-chart generator: bus bandwidth (or another metric) against message size on a
 * log2 x axis, one line per series (world size, backend, or peer). No dependencies; the output is a
 * standalone, well-formed SVG 1.1 document.
 *
 * @module
 */
import { formatSize } from './harness';
import type { CollectivesResult } from './schema';

/** One line of the chart. */
export interface PlotSeries {
  label: string;
  /** x > 0 (plotted on log2), y ≥ 0. */
  points: { x: number; y: number }[];
  /** Dashed line (used for peers). */
  dashed?: boolean;
}

/** Chart text and size. */
export interface PlotOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Optional second title line (machine, date). */
  subtitle?: string;
  width?: number;
  height?: number;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

/** Escapes text for SVG character data and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** A "nice" upper bound for a linear axis (1, 2, 2.5 or 5 × 10^k) and its tick step. */
function niceAxis(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.2 };
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  return { top: Math.ceil(max / step - 1e-9) * step, step };
}

const fmt = (v: number): string => String(Math.round(v * 100) / 100);

/**
 * Renders the series as an SVG document (x on log2, y linear from 0).
 *
 * @throws RangeError when there is no point to plot
 */
export function renderLineChart(series: readonly PlotSeries[], o: PlotOptions): string {
  const all = series.flatMap((s) => s.points).filter((p) => p.x > 0 && Number.isFinite(p.y));
  if (all.length === 0) throw new RangeError('plot: no data points to plot');
  const W = o.width ?? 760;
  const H = o.height ?? 460;
  const m = { left: 70, right: 20, top: o.subtitle ? 58 : 40, bottom: 52 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  let lo = Math.floor(Math.log2(Math.min(...all.map((p) => p.x))));
  let hi = Math.ceil(Math.log2(Math.max(...all.map((p) => p.x))));
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  const { top, step } = niceAxis(Math.max(...all.map((p) => p.y)));
  const X = (x: number): number => m.left + ((Math.log2(x) - lo) / (hi - lo)) * pw;
  const Y = (y: number): number => m.top + ph - (y / top) * ph;
  const out: string[] = [];
  out.push('<?xml version="1.0" encoding="UTF-8"?>');
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<title>${escapeXml(o.title)}</title>`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(o.title)}</text>`);
  if (o.subtitle) out.push(`<text x="${W / 2}" y="38" text-anchor="middle" font-size="11" fill="#555555">${escapeXml(o.subtitle)}</text>`);
  // grid and ticks
  out.push('<g stroke="#dddddd" stroke-width="1">');
  const xEvery = Math.max(1, Math.ceil((hi - lo) / 12));
  for (let e = lo; e <= hi; e++) out.push(`<line x1="${fmt(X(2 ** e))}" y1="${m.top}" x2="${fmt(X(2 ** e))}" y2="${m.top + ph}"/>`);
  for (let v = 0; v <= top + 1e-9; v += step) out.push(`<line x1="${m.left}" y1="${fmt(Y(v))}" x2="${m.left + pw}" y2="${fmt(Y(v))}"/>`);
  out.push('</g>');
  out.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333333"/>`);
  out.push('<g fill="#333333">');
  for (let e = hi; e >= lo; e -= xEvery) {
    out.push(`<text x="${fmt(X(2 ** e))}" y="${m.top + ph + 16}" text-anchor="middle">${escapeXml(formatSize(2 ** e))}</text>`);
  }
  for (let v = 0; v <= top + 1e-9; v += step) {
    out.push(`<text x="${m.left - 6}" y="${fmt(Y(v) + 4)}" text-anchor="end">${fmt(v)}</text>`);
  }
  out.push(`<text x="${m.left + pw / 2}" y="${H - 12}" text-anchor="middle">${escapeXml(o.xLabel)}</text>`);
  out.push(`<text x="16" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${m.top + ph / 2})">${escapeXml(o.yLabel)}</text>`);
  out.push('</g>');
  // series
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length]!;
    const pts = s.points.filter((p) => p.x > 0 && Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    if (pts.length === 0) return;
    const d = pts.map((p, k) => `${k === 0 ? 'M' : 'L'}${fmt(X(p.x))},${fmt(Y(p.y))}`).join(' ');
    out.push(`<g stroke="${color}" fill="${color}">`);
    out.push(`<path d="${d}" fill="none" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    for (const p of pts) out.push(`<circle cx="${fmt(X(p.x))}" cy="${fmt(Y(p.y))}" r="2.5"/>`);
    out.push('</g>');
  });
  // legend
  out.push('<g font-size="11">');
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length]!;
    const y = m.top + 14 + i * 16;
    out.push(`<line x1="${m.left + 10}" y1="${y - 4}" x2="${m.left + 34}" y2="${y - 4}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    out.push(`<text x="${m.left + 40}" y="${y}" fill="#222222">${escapeXml(s.label)}</text>`);
  });
  out.push('</g>');
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** Metrics a collectives plot can show. */
export type PlotMetric = 'busbw' | 'algbw' | 'time';

/**
 * The series of one or more collectives results: one line per result (labelled by op, backend and world
 * size), plus one dashed line per peer measured in it.
 */
export function collectiveSeries(results: readonly CollectivesResult[], metric: PlotMetric = 'busbw'): PlotSeries[] {
  const series: PlotSeries[] = [];
  const ops = new Set(results.map((r) => r.meta.op));
  for (const r of results) {
    const tag = `${ops.size > 1 ? `${r.meta.op} ` : ''}${r.meta.backend} n=${r.meta.worldSize}`;
    const check = r.meta.consistencyCheck === 'off' ? ' TPKIT_CHECK=off' : '';
    const pick = (row: CollectivesResult['rows'][number]) => row.outOfPlace ?? row.inPlace;
    series.push({
      label: `tpkit ${tag}${check}`,
      points: r.rows.filter((row) => pick(row)).map((row) => ({ x: row.size, y: metric === 'time' ? pick(row)!.timeUs : pick(row)![metric] })),
    });
    for (const [peer, st] of Object.entries(r.peers ?? {})) {
      if (st.status !== 'ok') continue;
      const pts = r.rows
        .filter((row) => row.peers?.[peer])
        .map((row) => {
          const c = row.peers![peer]!;
          const factor = pick(row) ? pick(row)!.busbw / pick(row)!.algbw : 1;
          const y = metric === 'time' ? c.timeUs : metric === 'busbw' ? c.rate : c.rate / (factor || 1);
          return { x: row.size, y };
        });
      // The same peer measured again next to another tpkit run (e.g. TPKIT_CHECK=off) is drawn once.
      if (!series.some((x) => x.label === `${peer} ${tag}`)) series.push({ label: `${peer} ${tag}`, points: pts, dashed: true });
    }
  }
  return series;
}

/** The chart of {@link collectiveSeries} with axis labels for the metric. */
export function renderCollectivesPlot(results: readonly CollectivesResult[], metric: PlotMetric = 'busbw'): string {
  const ops = [...new Set(results.map((r) => r.meta.op))].join(', ');
  const first = results[0]!.meta;
  const yLabel = metric === 'time' ? 'time per op (µs)' : `${metric} (GB/s)`;
  return renderLineChart(collectiveSeries(results, metric), {
    title: `tpkit ${ops}: ${metric} vs size`,
    subtitle: `${first.host} · ${first.cpu} · ${first.cores} cores · ${first.date.slice(0, 10)} · ${first.dtype} · ${first.sync}`,
    xLabel: 'message size (bytes, log2)',
    yLabel,
  });
}
