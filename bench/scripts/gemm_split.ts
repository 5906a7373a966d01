/**
 * Timing split of tpkit's matmul against raw OpenBLAS for square GEMMs: where does the gap come from?
 *
 *   raw          bench/native tpkit_bench_sgemm (C preallocated, called from the main thread)
 *   addon        the core addon's sgemm on a libuv worker thread, C preallocated (binding + thread hand-off)
 *   addon+alloc  the same with a fresh output Float32Array each call (what matmul allocates)
 *   matmul       tpkit's matmul(a, b) (adds Tensor validation and wrapping)
 *
 * Each is timed `reps` times, interleaved; the medians are printed.
 *
 *   node dist/bench/scripts/gemm_split.js [sizes=512,1024,2048] [reps=3]
 *
 * @module
 */
import { loadCore } from '../../lib/native';
import { matmul } from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { median } from '../harness';
import { runSgemmPeer } from '../peers/native';

async function time(f: () => Promise<unknown>, iters: number): Promise<number> {
  for (let i = 0; i < 2; i++) await f();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) await f();
  return Number(process.hrtime.bigint() - t0) / 1e3 / iters;
}

async function main(): Promise<void> {
  const sizes = (process.argv[2] ?? '512,1024,2048').split(',').map(Number);
  const reps = Number(process.argv[3] ?? 3);
  const core = loadCore();
  const threads = core.getBlasThreads();
  process.stdout.write(`# GEMM timing split, OpenBLAS threads ${threads}, medians of ${reps} interleaved runs (µs per GEMM)\n`);
  process.stdout.write('#    size        raw      addon  addon+alloc     matmul  addon/raw  matmul/raw\n');
  for (const s of sizes) {
    const a = new Float32Array(s * s).map((_, i) => (i % 7) - 3);
    const b = new Float32Array(s * s).map((_, i) => (i % 5) - 2);
    const c = new Float32Array(s * s);
    const ta = Tensor.from(a, [s, s]);
    const tb = Tensor.from(b, [s, s]);
    const iters = Math.max(3, Math.round(2e9 / (2 * s * s * s)));
    const r: Record<string, number[]> = { raw: [], addon: [], alloc: [], matmul: [] };
    for (let k = 0; k < reps; k++) {
      const peer = await runSgemmPeer({ shapes: [{ m: s, n: s, k: s, transB: false }], iters, warmup: 2, threads });
      const cell = peer.cells.get(`${s}x${s}x${s}`);
      if (!cell) throw new Error(`raw sgemm peer: ${peer.status.reason}`);
      r.raw!.push(cell.timeUs);
      r.addon!.push(await time(() => core.sgemm(false, false, s, s, s, a, b, c, 0), iters));
      r.alloc!.push(await time(() => core.sgemm(false, false, s, s, s, a, b, new Float32Array(s * s), 0), iters));
      r.matmul!.push(await time(async () => (await matmul(ta, tb)).dispose(), iters));
    }
    const [raw, addon, alloc, mm] = ['raw', 'addon', 'alloc', 'matmul'].map((k) => median(r[k]!)) as [number, number, number, number];
    process.stdout.write(
      `${String(s).padStart(9)} ${raw.toFixed(1).padStart(10)} ${addon.toFixed(1).padStart(10)} ${alloc.toFixed(1).padStart(12)} ${mm.toFixed(1).padStart(10)} ${(raw / addon).toFixed(3).padStart(10)} ${(raw / mm).toFixed(3).padStart(11)}\n`,
    );
    ta.dispose();
    tb.dispose();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exitCode = 1;
});
