/**
 * The PyTorch peer (bench/peers/torch_peer.py): torch.matmul and torch.distributed gloo all-reduce on the
 * same sizes, inputs and timing rule. Skipped, with the reason, when `python3 -c "import torch"` fails.
 * `TPKIT_BENCH_PYTHON` selects the interpreter (default `python3`).
 *
 * @module
 */
import path from 'node:path';
import { packageRoot } from '../../lib/native';
import type { PeerCell, PeerStatus } from '../schema';
import { commandLine, lastLine, runPeerProcess, type SweepOptions } from './common';
import { shapeKey, type GemmShape, type PeerRun } from './native';

/** The peer script (shipped in the source tree, not compiled). */
export function torchPeerScript(): string {
  return path.join(packageRoot(), 'bench', 'peers', 'torch_peer.py');
}

function python(env: NodeJS.ProcessEnv): string {
  return env.TPKIT_BENCH_PYTHON || 'python3';
}

/** Why PyTorch cannot run here, or null when `import torch` works (with its version). */
export async function torchAvailability(env: NodeJS.ProcessEnv = process.env): Promise<{ ok: true; version: string } | { ok: false; reason: string }> {
  const py = python(env);
  try {
    const r = await runPeerProcess(py, ['-c', 'import json, torch; print(json.dumps({"torch": torch.__version__}))'], { timeoutMs: 120_000 });
    if (r.code === 0 && r.records[0]) return { ok: true, version: String(r.records[0].torch) };
    return { ok: false, reason: `PyTorch is not importable by ${py} (${lastLine(r.stderr) || `exit ${r.code}`})` };
  } catch (e) {
    return { ok: false, reason: `${py} cannot be started: ${(e as Error).message}` };
  }
}

function skipped<K>(reason: string, command?: string): PeerRun<K> {
  const status: PeerStatus = { status: 'skipped', reason };
  if (command) status.command = command;
  return { status, cells: new Map() };
}

async function runScript(args: string[], env: NodeJS.ProcessEnv, timeoutMs?: number) {
  const avail = await torchAvailability(env);
  const py = python(env);
  const command = commandLine(py, [torchPeerScript(), ...args]);
  if (!avail.ok) return { error: avail.reason, command } as const;
  const r = await runPeerProcess(py, [torchPeerScript(), ...args], { env, timeoutMs });
  if (r.code !== 0) return { error: `torch peer exited with ${r.signal ?? `code ${r.code}`}: ${lastLine(r.stderr)}`, command } as const;
  return { records: r.records, version: `PyTorch ${avail.version}`, command } as const;
}

/**
 * torch.distributed gloo all-reduce sweep on `worldSize` processes (float32).
 *
 * @returns cells keyed by size in bytes (rate = busbw, GB/s)
 */
export async function runTorchAllReducePeer(o: SweepOptions & { threads: number; env?: NodeJS.ProcessEnv }): Promise<PeerRun<number>> {
  const args = ['allreduce', '--world-size', String(o.worldSize), '-b', String(o.minBytes), '-e', String(o.maxBytes), '-f', String(o.stepFactor), '-n', String(o.iters), '-w', String(o.warmup), '--threads', String(o.threads)];
  const r = await runScript(args, o.env ?? process.env, o.timeoutMs);
  if ('error' in r) return skipped(r.error!, r.command);
  const cells = new Map<number, PeerCell>();
  for (const x of r.records) {
    if (x.kind === 'row') cells.set(x.size as number, { timeUs: x.timeUs as number, p50Us: x.p50Us as number, rate: x.busbw as number, wrong: x.wrong as number });
  }
  return { status: { status: 'ok', version: r.version, command: r.command }, cells };
}

/**
 * torch.matmul on `shapes` with `threads` intra-op threads.
 *
 * @returns cells keyed by {@link shapeKey} (rate = TFLOP/s)
 */
export async function runTorchMatmulPeer(o: { shapes: readonly GemmShape[]; iters: number; warmup: number; threads: number; env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<PeerRun<string>> {
  const args = ['matmul', '-n', String(o.iters), '-w', String(o.warmup), '--threads', String(o.threads), ...o.shapes.map(shapeKey)];
  const r = await runScript(args, o.env ?? process.env, o.timeoutMs);
  if ('error' in r) return skipped(r.error!, r.command);
  const cells = new Map<string, PeerCell>();
  for (const x of r.records) {
    if (x.kind !== 'row') continue;
    cells.set(shapeKey({ m: x.m as number, n: x.n as number, k: x.k as number, transB: x.transB as boolean }), {
      timeUs: x.timeUs as number,
      rate: x.tflops as number,
      wrong: x.wrong as number,
    });
  }
  return { status: { status: 'ok', version: r.version, command: r.command }, cells };
}
