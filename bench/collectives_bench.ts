/**
 * `tpkit bench collectives`: the nccl-tests-style sweep of one collective on every rank.
 *
 * Outside a launcher (no `RANK`), the command re-launches itself on `--nproc` ranks with `launch()` and
 * stays behind as the reporter; under a launcher (`tpkit launch`, srun, mpirun) every rank runs the sweep
 * and rank 0 reports. The reporter prints the table's companions — peers (raw Gloo, PyTorch, Open MPI) on
 * the same sizes, the ring cost model — and writes `--json` and `--plot`.
 *
 * @module
 */
import { initDistributed } from '../lib/distributed/init';
import { loadCore } from '../lib/native';
import type { DType } from '../lib/tensor';
import { COLLECTIVES, type CollectiveName } from './collectives';
import type { BenchRedop } from './data';
import { collectiveHeader, collectiveLine } from './format';
import { averageBusBw, formatSize, median, runCollectiveSweep, sizeSweep, type CollRow, type SyncMode } from './harness';
import { machineMeta, metaLine } from './meta';
import { fitRingModel } from './model';
import { MPI_PEER_OPS, runMpiPeer } from './peers/mpi';
import { runGlooPeer } from './peers/native';
import { runTorchAllReducePeer } from './peers/torch';
import { renderCollectivesPlot } from './plot';
import { createProgress } from './progress';
import { handResultToParent, relaunch, RESULT_ENV } from './relaunch';
import { collectivePeerTable, modelLines, peerStatusLines, writeFile } from './report';
import type { CollectivesResult, PeerCell, PeerStatus } from './schema';

/** The peers a run can be compared with (`tpkit bench gemm` and `collectives`). */
export type PeerName = 'native' | 'torch';

/** The peers of `tpkit bench collectives`: {@link PeerName}s and `mpi` (raw Open MPI under mpirun). */
export type CollectivePeerName = PeerName | 'mpi';

/** Options of `tpkit bench collectives` (parsed and validated by bench/cli.ts). */
export interface CollectivesOptions {
  op: CollectiveName;
  minBytes: number;
  maxBytes: number;
  stepFactor: number;
  iters: number;
  warmup: number;
  dtype: DType;
  redop: BenchRedop;
  root: number;
  check: boolean;
  backend: 'gloo' | 'nccl';
  device: 'cpu' | 'cuda';
  sync: SyncMode;
  nproc: number;
  /** Self-launch mode: run the sweep (and the peers after it) this many times and report medians. */
  repeat: number;
  json?: string;
  plot?: string;
  peers: CollectivePeerName[];
  model: boolean;
  timeoutMs?: number;
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Runs the sweep on this rank; resolves to the result on rank 0 and null elsewhere. */
export async function runCollectivesRank(o: CollectivesOptions, env: NodeJS.ProcessEnv = process.env): Promise<CollectivesResult | null> {
  const plugin = COLLECTIVES[o.op];
  const world = await initDistributed({ backend: o.backend, ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}) });
  try {
    const isRoot = world.rank === 0;
    if (o.root >= world.size) throw new RangeError(`Expected root in [0, ${world.size}) for --root but received ${o.root}`);
    const device = o.device === 'cuda' ? (`cuda:${Number(env.LOCAL_RANK ?? 0)}` as const) : 'cpu';
    const sizes = sizeSweep(o.minBytes, o.maxBytes, o.stepFactor);
    const meta = machineMeta();
    const consistencyCheck = (env.TPKIT_CHECK ?? 'on').toLowerCase() === 'off' ? 'off' : 'on';
    const out = isRoot ? print : () => {};
    out(`# tpkit bench collectives: ${o.op}, world size ${world.size}, backend ${world.backend}, device ${o.device}, dtype ${o.dtype}, sync ${o.sync}`);
    out(`#  minBytes ${o.minBytes} maxBytes ${o.maxBytes} step: ${o.stepFactor}(factor) warmup iters: ${o.warmup} iters: ${o.iters} validation: ${o.check ? 1 : 0} TPKIT_CHECK: ${consistencyCheck}`);
    out(metaLine(meta));
    out('#');
    collectiveHeader().forEach(out);
    const progress = createProgress(isRoot, env);
    progress.start(sizes.length, formatSize(sizes[0]!));
    let rows: CollRow[];
    try {
      rows = await runCollectiveSweep(
        world,
        plugin,
        { sizes, dtype: o.dtype, device, check: o.check, root: o.root, redop: o.redop, warmup: o.warmup, iters: o.iters, sync: o.sync },
        (row, i, total) => {
          out(collectiveLine(row));
          progress.update(i + 1, `${formatSize(sizes[Math.min(i + 1, total - 1)]!)} of ${formatSize(o.maxBytes)}`);
        },
      );
    } finally {
      progress.stop();
    }
    const wrong = rows.reduce((acc, r) => acc + (r.outOfPlace?.wrong ?? 0) + (r.inPlace?.wrong ?? 0), 0);
    const avgBusBw = averageBusBw(rows);
    out(`# Out of bounds values : ${o.check ? wrong : 'N/A'} ${wrong === 0 ? 'OK' : 'FAILED'}`);
    out(`# Avg bus bandwidth    : ${avgBusBw.toFixed(4)}`);
    out('#');
    if (!isRoot) return null;
    return {
      schema: 'tpkit.bench.collectives/1',
      meta: {
        ...meta,
        op: o.op,
        worldSize: world.size,
        backend: world.backend,
        device: o.device,
        dtype: o.dtype,
        redop: o.redop,
        root: o.root,
        iters: o.iters,
        warmup: o.warmup,
        sync: o.sync,
        check: o.check,
        consistencyCheck,
        minBytes: o.minBytes,
        maxBytes: o.maxBytes,
        stepFactor: o.stepFactor,
        blasThreads: loadCore().getBlasThreads(),
        repeat: 1,
      },
      rows,
      avgBusBw,
    };
  } finally {
    world.destroy();
  }
}

/**
 * Why peer `name` cannot run the result's configuration, or null when it can: the Gloo and PyTorch peers run
 * float32 sum all_reduce, the MPI peer float32 sum all_reduce, all_gather, reduce_scatter and broadcast.
 */
export function peerMismatch(name: CollectivePeerName, meta: CollectivesResult['meta']): string | null {
  const ops: readonly string[] = name === 'mpi' ? MPI_PEER_OPS : ['all_reduce'];
  if (!ops.includes(meta.op)) return `peer ${name} runs ${ops.join(', ')} only (this run: ${meta.op})`;
  if (meta.dtype !== 'float32') return `the peers run float32 only (this run: ${meta.dtype})`;
  if (meta.redop !== 'sum' && COLLECTIVES[meta.op as CollectiveName].reduces) return `the peers run sum only (this run: ${meta.redop})`;
  return null;
}

/** Runs the requested peers on the result's sizes and merges their cells into its rows. */
export async function addPeers(r: CollectivesResult, peers: readonly CollectivePeerName[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (peers.length === 0) return;
  const status: Record<string, PeerStatus> = {};
  const sweep = { worldSize: r.meta.worldSize, minBytes: r.meta.minBytes, maxBytes: r.meta.maxBytes, stepFactor: r.meta.stepFactor, iters: r.meta.iters, warmup: r.meta.warmup };
  for (const name of peers) {
    const why = peerMismatch(name, r.meta);
    if (why) {
      status[name] = { status: 'skipped', reason: why };
      continue;
    }
    const run = name === 'native' ? await runGlooPeer(sweep)
      : name === 'mpi' ? await runMpiPeer({ ...sweep, op: r.meta.op as CollectiveName, root: r.meta.root, env })
      : await runTorchAllReducePeer({ ...sweep, threads: r.meta.blasThreads, env });
    status[name] = run.status;
    for (const row of r.rows) {
      const cell = run.cells.get(row.size);
      if (cell) (row.peers ??= {})[name] = cell;
    }
  }
  r.peers = status;
}


/**
 * Folds repeated runs into one result: per size and form the median time (bandwidths recomputed from it),
 * #wrong summed; peers likewise. Meta is the first run's, with `repeat`.
 */
export function medianOfRuns(runs: readonly CollectivesResult[]): CollectivesResult {
  const first = runs[0]!;
  const rows = first.rows.map((row, i) => {
    const same = runs.map((r) => r.rows[i]!);
    const form = (k: 'outOfPlace' | 'inPlace') => {
      const f = row[k];
      if (!f) return null;
      const timeUs = median(same.map((x) => x[k]!.timeUs));
      const p50Us = f.p50Us === null ? null : median(same.map((x) => x[k]!.p50Us ?? 0));
      const algbw = row.size / timeUs / 1e3;
      const wrong = f.wrong === null ? null : same.reduce((acc, x) => acc + (x[k]!.wrong ?? 0), 0);
      return { timeUs, p50Us, algbw, busbw: algbw * (f.algbw > 0 ? f.busbw / f.algbw : 0), wrong };
    };
    const out: CollectivesResult['rows'][number] = { ...row, outOfPlace: form('outOfPlace'), inPlace: form('inPlace') };
    delete out.peers;
    for (const name of Object.keys(row.peers ?? {})) {
      const cells = same.map((x) => x.peers?.[name]).filter((c) => c !== undefined);
      if (cells.length === 0) continue;
      const t = median(cells.map((c) => c.timeUs));
      const c0 = cells[0]!;
      const cell: PeerCell = { timeUs: t, rate: (c0.rate * c0.timeUs) / t, wrong: cells.reduce((acc, c) => acc + c.wrong, 0) };
      if (cells.every((c) => c.p50Us !== undefined)) cell.p50Us = median(cells.map((c) => c.p50Us!));
      (out.peers ??= {})[name] = cell;
    }
    return out;
  });
  return { ...first, meta: { ...first.meta, repeat: runs.length }, rows, avgBusBw: averageBusBw(rows) };
}

/** The reporter's part after the sweep(s) and peers: tables, model, files. */
export async function reportCollectives(r: CollectivesResult, o: CollectivesOptions): Promise<void> {
  if (r.meta.repeat > 1) {
    print(`# median of ${r.meta.repeat} runs (each run: the tpkit sweep, then the peers)`);
    collectiveHeader().forEach(print);
    r.rows.forEach((row) => print(collectiveLine(row)));
    print(`# Out of bounds values : ${r.meta.check ? totalWrong(r) : 'N/A'} ${totalWrong(r) === 0 ? 'OK' : 'FAILED'}`);
    print(`# Avg bus bandwidth    : ${r.avgBusBw.toFixed(4)}`);
  }
  if (r.peers) {
    peerStatusLines(r.peers).forEach(print);
    collectivePeerTable(r).forEach(print);
  }
  if (o.model && r.meta.op === 'all_reduce' && r.meta.worldSize >= 2) {
    // The typical operation (per-op median) when recorded: the scheduler stalls of a shared machine are not
    // a property of the link.
    const useP50 = r.rows.every((row) => !row.inPlace || row.inPlace.p50Us !== null);
    const fit = fitRingModel(
      r.rows.filter((row) => row.inPlace).map((row) => ({ size: row.size, worldSize: r.meta.worldSize, timeUs: useP50 ? row.inPlace!.p50Us! : row.inPlace!.timeUs })),
      useP50 ? 'p50' : 'mean',
    );
    if (fit) {
      r.model = fit;
      modelLines(fit).forEach(print);
    }
  }
  if (o.json) {
    writeFile(o.json, `${JSON.stringify(r, null, 2)}\n`);
    print(`# wrote ${o.json}`);
  }
  if (o.plot) {
    writeFile(o.plot, renderCollectivesPlot([r]));
    print(`# wrote ${o.plot}`);
  }
}

/** Total #wrong of a result (rows only). */
export function totalWrong(r: CollectivesResult): number {
  return r.rows.reduce((acc, row) => acc + (row.outOfPlace?.wrong ?? 0) + (row.inPlace?.wrong ?? 0), 0);
}

/**
 * The command: self-launch (no `RANK`) or run as a rank. `argv` is the command line after `bench`, handed
 * unchanged to the re-launched ranks.
 *
 * @returns 0, 1 when a rank failed or an element was wrong
 */
export async function collectivesCommand(o: CollectivesOptions, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (env.RANK === undefined) {
    if (o.root >= o.nproc) throw new RangeError(`Expected root in [0, ${o.nproc}) for --root but received ${o.root}`);
    const runs: CollectivesResult[] = [];
    for (let i = 0; i < o.repeat; i++) {
      if (o.repeat > 1) print(`# run ${i + 1} of ${o.repeat}`);
      const launched = await relaunch<CollectivesResult>({ nproc: o.nproc, args: [...argv], progress: Boolean(process.stderr.isTTY), env });
      if (launched.exitCode !== 0 || !launched.result) {
        process.stderr.write(`tpkit bench collectives: ${launched.summary || 'rank 0 reported no result'}\n`);
        return launched.exitCode || 1;
      }
      // The peers run right after each tpkit sweep, so both see the same machine load.
      await addPeers(launched.result, o.peers, env);
      runs.push(launched.result);
    }
    const r = runs.length > 1 ? medianOfRuns(runs) : runs[0]!;
    await reportCollectives(r, o);
    return totalWrong(r) > 0 ? 1 : 0;
  }
  const r = await runCollectivesRank(o, env);
  if (!r) return 0;
  if (env[RESULT_ENV]) {
    handResultToParent(r, env);
    return 0; // the parent reports, and fails the run when an element was wrong
  } else {
    if (o.peers.length > 0) process.stdout.write('# peers run on this node only (rank 0\'s), after the tpkit sweep\n');
    await addPeers(r, o.peers, env);
    await reportCollectives(r, o);
  }
  return totalWrong(r) > 0 ? 1 : 0;
}
