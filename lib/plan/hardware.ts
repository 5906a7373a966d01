/**
 * Accelerators and links for `tpkit plan`: documented defaults (datasheet figures, with their sources) and
 * the α–β link model calibrated from a `tpkit bench collectives --json` result.
 *
 * The link model is the one bench/model.ts fits (Thakur, Rabenseifner & Gropp 2005): a message of n bytes
 * between two ranks takes α + n·β, a ring all-reduce over p ranks 2(p−1)·α + 2(p−1)/p · n·β. The default
 * bandwidths are per direction (a ring sends one way on each link), i.e. half of the bidirectional figure
 * datasheets quote. α is per ring step: chosen so that the latency term of a ring all-reduce, 2(p−1)·α, is of
 * the order the course notes give per operation (≈ 5 µs inside a node at p = 8: α = 0.5 µs; ≈ 50 µs across
 * nodes at p = 16: α = 3 µs per step over InfiniBand, which is also about a one-way RDMA message) —
 * order-of-magnitude figures, which `--calibrate` replaces by measured ones.
 *
 * @module
 */
import { readFileSync } from 'node:fs';

import { fitRingModel } from '../../bench/model';

/** One kind of link between ranks, in the α–β model. */
export interface LinkSpec {
  /** Name (`nvlink`, `pcie4`, `ib`, …, or `calibrated`). */
  name: string;
  /** Per-message latency α, µs. */
  alphaUs: number;
  /** 1/β: bytes per second one rank moves on it in one direction, GB/s (1e9 B/s). */
  bandwidthGBs: number;
  /** Where the figures come from. */
  source: string;
}

/** One accelerator's capacity and peak rates. */
export interface GpuSpec {
  /** Name (`h100`, …, or `custom`). */
  name: string;
  /** Memory, GiB (2^30 bytes). */
  memoryGiB: number;
  /** Peak dense matmul rate at the planned dtype, TFLOP/s (1e12 flop/s). */
  tflops: number;
  /** Memory bandwidth, GB/s (1e9 B/s); null when unknown (decode is then estimated from FLOPs alone). */
  bandwidthGBs: number | null;
  /** Where the figures come from. */
  source: string;
}

/** Default links (per-direction bandwidth). */
export const LINKS: Readonly<Record<string, LinkSpec>> = Object.freeze({
  nvlink: { name: 'nvlink', alphaUs: 0.5, bandwidthGBs: 450, source: 'NVLink 4 (H100 SXM): 900 GB/s bidirectional per GPU, NVIDIA H100 datasheet; α: course notes (≈ 5 µs per all-reduce in a node)' },
  nvlink3: { name: 'nvlink3', alphaUs: 0.5, bandwidthGBs: 300, source: 'NVLink 3 (A100 SXM): 600 GB/s bidirectional per GPU, NVIDIA A100 datasheet; α: course notes (≈ 5 µs per all-reduce in a node)' },
  pcie4: { name: 'pcie4', alphaUs: 1.5, bandwidthGBs: 32, source: 'PCIe 4.0 x16: 64 GB/s bidirectional (PCI-SIG; course notes); α: assumed 3× NVLink' },
  pcie5: { name: 'pcie5', alphaUs: 1.5, bandwidthGBs: 64, source: 'PCIe 5.0 x16: 128 GB/s bidirectional (PCI-SIG); α: assumed 3× NVLink' },
  ib: { name: 'ib', alphaUs: 3, bandwidthGBs: 50, source: 'InfiniBand NDR 400 Gb/s per GPU (NVIDIA ConnectX-7); α: course notes (≈ 50 µs per all-reduce across nodes)' },
  ib200: { name: 'ib200', alphaUs: 3, bandwidthGBs: 25, source: 'InfiniBand HDR 200 Gb/s per GPU (NVIDIA ConnectX-6); α: as ib' },
  eth: { name: 'eth', alphaUs: 10, bandwidthGBs: 12.5, source: '100 Gb/s Ethernet (TCP); α: assumed' },
});

/** A {@link GpuSpec} with its float32 rate too. */
export interface GpuDefault extends GpuSpec {
  /** Peak float32 rate (no tensor cores), TFLOP/s: used for `--dtype float32` plans. */
  tflops32: number;
}

/** Default accelerators (dense bfloat16/float16 tensor-core peak; float32 plans use `tflops32`). */
export const GPUS: Readonly<Record<string, GpuDefault>> = Object.freeze({
  h100: { name: 'h100', memoryGiB: 80, tflops: 989, tflops32: 67, bandwidthGBs: 3350, source: 'NVIDIA H100 SXM5 datasheet (80 GB HBM3, 3.35 TB/s, 989 TFLOP/s dense BF16)' },
  h200: { name: 'h200', memoryGiB: 141, tflops: 989, tflops32: 67, bandwidthGBs: 4800, source: 'NVIDIA H200 SXM datasheet (141 GB HBM3e, 4.8 TB/s, 989 TFLOP/s dense BF16)' },
  a100: { name: 'a100', memoryGiB: 80, tflops: 312, tflops32: 19.5, bandwidthGBs: 2039, source: 'NVIDIA A100 SXM 80GB datasheet (2.039 TB/s, 312 TFLOP/s dense BF16)' },
  'a100-40gb': { name: 'a100-40gb', memoryGiB: 40, tflops: 312, tflops32: 19.5, bandwidthGBs: 1555, source: 'NVIDIA A100 SXM 40GB datasheet (1.555 TB/s, 312 TFLOP/s dense BF16)' },
  l40s: { name: 'l40s', memoryGiB: 48, tflops: 362, tflops32: 91.6, bandwidthGBs: 864, source: 'NVIDIA L40S datasheet (48 GB GDDR6, 864 GB/s, 362 TFLOP/s dense BF16)' },
});

/**
 * A link calibrated from a `tpkit bench collectives --json` all-reduce result: its ring fit (`model`: α and
 * β), or — when the file has none — the fit `fitRingModel` (bench/model.ts) makes of its rows
 * (in-place median times when recorded, else means).
 *
 * @param file - path of the JSON result (schema `tpkit.bench.collectives/1`, op `all_reduce`, ≥ 2 ranks)
 * @throws RangeError naming the file when it cannot be read, is not JSON, is another schema or op, or
 *   holds too few sizes to fit
 */
export function linkFromBench(file: string): LinkSpec {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new RangeError(`--calibrate ${file}: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = json as { schema?: unknown; meta?: { op?: unknown; worldSize?: unknown; backend?: unknown }; rows?: unknown; model?: { alphaUs?: unknown; betaUsPerByte?: unknown } };
  if (!r || typeof r !== 'object' || r.schema !== 'tpkit.bench.collectives/1') {
    throw new RangeError(`--calibrate ${file}: expected a tpkit bench collectives --json result (schema tpkit.bench.collectives/1) but received schema ${JSON.stringify(r?.schema)}`);
  }
  if (r.meta?.op !== 'all_reduce') throw new RangeError(`--calibrate ${file}: expected an all_reduce result but received op ${JSON.stringify(r.meta?.op)}`);
  let alphaUs: number;
  let beta: number;
  let how: string;
  const m = r.model;
  if (m && typeof m.alphaUs === 'number' && typeof m.betaUsPerByte === 'number') {
    alphaUs = m.alphaUs;
    beta = m.betaUsPerByte;
    how = 'the file\'s ring fit';
  } else {
    const world = Number(r.meta?.worldSize);
    const rows = Array.isArray(r.rows) ? (r.rows as { size: number; inPlace?: { timeUs: number; p50Us: number | null } | null; outOfPlace?: { timeUs: number; p50Us: number | null } | null }[]) : [];
    const pts = rows
      .map((row) => {
        const f = row.inPlace ?? row.outOfPlace;
        return f ? { size: row.size, worldSize: world, timeUs: f.p50Us ?? f.timeUs } : null;
      })
      .filter((p): p is { size: number; worldSize: number; timeUs: number } => p !== null);
    const fit = fitRingModel(pts);
    if (!fit) throw new RangeError(`--calibrate ${file}: expected at least two message sizes on ≥ 2 ranks to fit α and β`);
    alphaUs = fit.alphaUs;
    beta = fit.betaUsPerByte;
    how = 'a ring fit of its rows';
  }
  if (!(beta > 0)) throw new RangeError(`--calibrate ${file}: the fitted β is ${beta}; expected a positive per-byte time`);
  return {
    name: 'calibrated',
    alphaUs,
    bandwidthGBs: 1 / beta / 1e3,
    source: `${file} (${String(r.meta?.backend)}, ${String(r.meta?.worldSize)} ranks; ${how})`,
  };
}
