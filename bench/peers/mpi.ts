/**
 * The Open MPI peer (bench/native/mpi_bench.cc, `tpkit_bench_mpi`): `MPI_Allreduce`, `MPI_Allgather`,
 * `MPI_Reduce_scatter_block` and `MPI_Bcast` on the harness's sizes, inputs, forms and timing rule, started
 * as `mpirun -np N` on this host over Open MPI's shared-memory transport. Skipped, with the reason, when
 * `mpirun` cannot be started or is not Open MPI's, or when bench/native was built without MPI.
 * `TPKIT_BENCH_MPIRUN` selects the launcher (default `mpirun`).
 *
 * @module
 */
import type { CollectiveName } from '../collectives';
import type { PeerCell, PeerStatus } from '../schema';
import { commandLine, lastLine, runPeerProcess, type SweepOptions } from './common';
import { ensureNativePeer, type PeerRun } from './native';

/** The collectives the MPI peer runs (float32, sum), by the harness's `--op` names. */
export const MPI_PEER_OPS: readonly CollectiveName[] = ['all_reduce', 'all_gather', 'reduce_scatter', 'broadcast'];

/** How to install Open MPI on Debian / Ubuntu (printed when it is missing). */
export const MPI_INSTALL_HINT = 'apt-get install openmpi-bin libopenmpi-dev';

function launcher(env: NodeJS.ProcessEnv): string {
  return env.TPKIT_BENCH_MPIRUN || 'mpirun';
}

/**
 * Open MPI's `mpirun` version (`mpirun --version` → `4.1.4`), or why it cannot be used: it cannot be
 * started, fails, or is another MPI's launcher (the peer passes Open MPI's `--mca` flags).
 */
export async function mpiAvailability(env: NodeJS.ProcessEnv = process.env): Promise<{ ok: true; version: string } | { ok: false; reason: string }> {
  const file = launcher(env);
  try {
    const r = await runPeerProcess(file, ['--version'], { env, timeoutMs: 30_000 });
    const m = /\(Open MPI\)\s*(\S+)/.exec(r.stdout);
    if (r.code === 0 && m) return { ok: true, version: m[1]! };
    if (r.code === 0) return { ok: false, reason: `${file} is not Open MPI's mpirun (${lastLine(r.stdout)}); the MPI peer needs Open MPI (${MPI_INSTALL_HINT})` };
    return { ok: false, reason: `${file} --version failed (${lastLine(r.stderr) || `exit ${r.code}`})` };
  } catch (e) {
    return { ok: false, reason: `Open MPI is not installed: ${file} cannot be started (${(e as Error).message}); install it with ${MPI_INSTALL_HINT}` };
  }
}

/**
 * The `mpirun` arguments before the program: `np` ranks on this host over the shared-memory transport
 * (pml ob1 with btl self,vader — not UCX or TCP), unbound, more ranks than cores allowed (`--oversubscribe`),
 * `--allow-run-as-root` when `uid` is 0, and the job killed after `timeoutS` seconds.
 */
export function mpirunArgs(np: number, o: { uid?: number; timeoutS: number }): string[] {
  return [
    '-np', String(np),
    '--oversubscribe',
    '--bind-to', 'none',
    '--mca', 'pml', 'ob1',
    '--mca', 'btl', 'self,vader',
    ...(o.uid === 0 ? ['--allow-run-as-root'] : []),
    '--timeout', String(o.timeoutS),
  ];
}

/**
 * The environment of the nested `mpirun`: `env` without the variables of an enclosing MPI job (OMPI_*,
 * PMIX_*, PMI_*), which would make it join that job instead of starting its own; unchanged outside one.
 */
export function mpirunEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  if (env.OMPI_COMM_WORLD_SIZE === undefined && env.PMIX_RANK === undefined) return env;
  return Object.fromEntries(Object.entries(env).filter(([k]) => !/^(OMPI_|PMIX_|PMI_)/.test(k)));
}

/** The line of mpirun's stderr that says why the job failed: the peer's own message, else the last text line. */
function failureLine(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/^-+$/.test(l));
  return lines.find((l) => l.startsWith('tpkit_bench_mpi:')) ?? lines[lines.length - 1] ?? '';
}

function skipped(reason: string, command?: string): PeerRun<number> {
  const status: PeerStatus = { status: 'skipped', reason };
  if (command) status.command = command;
  return { status, cells: new Map() };
}

/**
 * Runs the raw MPI sweep of `op` (one of {@link MPI_PEER_OPS}) on `worldSize` ranks under `mpirun`,
 * float32, sum, with the harness's sizes, warm-up and iterations; `root` is broadcast's root.
 *
 * @returns cells keyed by the row size in bytes (rate = busbw, GB/s); status `skipped` with the reason when
 *   Open MPI or the program is missing, or the job fails
 */
export async function runMpiPeer(o: SweepOptions & { op: CollectiveName; root: number; env?: NodeJS.ProcessEnv }): Promise<PeerRun<number>> {
  const env = o.env ?? process.env;
  if (!MPI_PEER_OPS.includes(o.op)) return skipped(`the MPI peer runs ${MPI_PEER_OPS.join(', ')} only (this run: ${o.op})`);
  const avail = await mpiAvailability(env);
  if (!avail.ok) return skipped(avail.reason);
  const found = await ensureNativePeer('tpkit_bench_mpi', env);
  if ('reason' in found) {
    return skipped(`${found.reason} (CMake builds it only where find_package(MPI) finds MPI's C compiler wrapper: ${MPI_INSTALL_HINT})`);
  }
  const timeoutMs = o.timeoutMs ?? 600_000;
  const file = launcher(env);
  const args = [
    ...mpirunArgs(o.worldSize, { uid: process.getuid?.(), timeoutS: Math.max(1, Math.ceil(timeoutMs / 1000)) }),
    found.path,
    '--op', o.op, '--root', String(o.root),
    '-b', String(o.minBytes), '-e', String(o.maxBytes), '-f', String(o.stepFactor), '-n', String(o.iters), '-w', String(o.warmup),
  ];
  const command = commandLine(file, args);
  try {
    // mpirun's --timeout ends the job first; the kill is the backstop for a launcher that hangs.
    const r = await runPeerProcess(file, args, { env: mpirunEnv(env), timeoutMs: timeoutMs + 10_000 });
    if (r.code !== 0) return skipped(`mpirun exited with ${r.signal ?? `code ${r.code}`}: ${failureLine(r.stderr)}`, command);
    const meta = r.records.find((x) => x.kind === 'meta');
    const cells = new Map<number, PeerCell>();
    for (const x of r.records) {
      if (x.kind !== 'row') continue;
      cells.set(x.size as number, { timeUs: x.timeUs as number, p50Us: x.p50Us as number, rate: x.busbw as number, wrong: x.wrong as number });
    }
    return { status: { status: 'ok', version: `${String(meta?.mpi ?? `Open MPI ${avail.version}`)} (MPI ${String(meta?.mpiStandard ?? '?')})`, command }, cells };
  } catch (e) {
    return skipped(`could not run ${file}: ${(e as Error).message}`, command);
  }
}
