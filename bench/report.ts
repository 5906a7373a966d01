/**
 * The reporter's sections after the nccl-tests table: peers side by side with tpkit (and their ratios),
 * the ring cost model's prediction against the measurement, and the JSON / SVG files.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { formatTime } from './format';
import { formatTable, type Column } from './format';
import type { CollectivesResult, PeerStatus, RingModelResult } from './schema';

/** Writes `text` to `file`, creating its folder. */
export function writeFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.writeFileSync(file, text);
}

/** `# peer native: ok (Gloo 0.5.0) …` / `# peer torch: skipped — reason` lines. */
export function peerStatusLines(peers: Record<string, PeerStatus>): string[] {
  return Object.entries(peers).map(([name, st]) =>
    st.status === 'ok' ? `# peer ${name}: ${st.version ?? 'ok'}  (${st.command ?? ''})` : `# peer ${name}: skipped — ${st.reason}`,
  );
}

const ratio = (a: number | undefined, b: number | undefined): string => (a !== undefined && b !== undefined && b > 0 ? (a / b).toFixed(2) : '-');

/**
 * The side-by-side table of a collectives result with peers: per size tpkit's time and busbw, each peer's,
 * and tpkit / peer for time (higher is slower) and busbw (higher is better), plus tpkit − peer in µs.
 */
export function collectivePeerTable(r: CollectivesResult): string[] {
  const names = Object.entries(r.peers ?? {}).filter(([, s]) => s.status === 'ok').map(([n]) => n);
  if (names.length === 0) return [];
  const rows = r.rows.filter((row) => row.outOfPlace ?? row.inPlace);
  const t = (row: (typeof rows)[number]) => (row.outOfPlace ?? row.inPlace)!;
  const cols: Column<(typeof rows)[number]>[] = [
    { header: 'size', unit: '(B)', cell: (row) => String(row.size) },
    { header: 'tpkit', unit: '(us)', cell: (row) => formatTime(t(row).timeUs) },
    { header: 'p50', unit: '(us)', cell: (row) => (t(row).p50Us === null ? '-' : formatTime(t(row).p50Us!)) },
    { header: 'busbw', unit: '(GB/s)', cell: (row) => t(row).busbw.toFixed(3) },
  ];
  for (const n of names) {
    const c = (row: (typeof rows)[number]) => row.peers?.[n];
    cols.push(
      { header: n, unit: '(us)', cell: (row) => (c(row) ? formatTime(c(row)!.timeUs) : '-') },
      { header: 'p50', unit: '(us)', cell: (row) => (c(row)?.p50Us !== undefined ? formatTime(c(row)!.p50Us!) : '-') },
      { header: 'busbw', unit: '(GB/s)', cell: (row) => (c(row) ? c(row)!.rate.toFixed(3) : '-') },
      { header: '#wrong', cell: (row) => (c(row) ? String(c(row)!.wrong) : '-') },
      { header: 'p50 diff', unit: '(us)', cell: (row) => (c(row)?.p50Us !== undefined && t(row).p50Us !== null ? (t(row).p50Us! - c(row)!.p50Us!).toFixed(1) : '-') },
      { header: 'busbw ratio', unit: `tpkit/${n}`, cell: (row) => ratio(t(row).busbw, c(row)?.rate) },
    );
  }
  return [
    '#',
    `# tpkit vs peers (same sizes, inputs, warm-up and iterations; ${r.meta.dtype}, ${r.meta.worldSize} ranks; time = elapsed / iterations,`,
    '# p50 = median per-op time, p50 diff = tpkit p50 − peer p50, busbw ratio = tpkit busbw / peer busbw)',
    ...formatTable(cols, rows),
  ];
}

/** The cost model's lines: fitted α, β and predicted vs measured per size. */
export function modelLines(m: RingModelResult): string[] {
  const lines = [
    '#',
    '# Ring all-reduce model t(n) = 2(p-1)·α + 2(p-1)/p · n·β (Thakur et al. 2005; Patarasuk & Yuan 2009),',
    `# fitted to the ${m.fitted === 'p50' ? 'per-op medians' : 'mean times'} by least squares on relative residuals (weights 1/t²), α, β ≥ 0:`,
    `#   α = ${m.alphaUs.toFixed(2)} us   β = ${(m.betaUsPerByte * 1e3).toFixed(4)} ns/B (1/β = ${m.bandwidthGBs.toFixed(3)} GB/s)   rms relative error ${(m.rmsRelError * 100).toFixed(1)} %`,
  ];
  const cols: Column<RingModelResult['points'][number]>[] = [
    { header: 'size', unit: '(B)', cell: (p) => String(p.size) },
    { header: 'ranks', cell: (p) => String(p.worldSize) },
    { header: 'measured', unit: '(us)', cell: (p) => formatTime(p.measuredUs) },
    { header: 'predicted', unit: '(us)', cell: (p) => formatTime(p.predictedUs) },
    { header: 'pred/meas', cell: (p) => (p.predictedUs / p.measuredUs).toFixed(2) },
  ];
  return [...lines, ...formatTable(cols, m.points)];
}
