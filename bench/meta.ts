/**
 * The facts every benchmark result records about where and with what it ran.
 *
 * @module
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadCore, packageRoot } from '../lib/native';

/** Machine and software versions of a benchmark run (the `meta` of every JSON result). */
export interface MachineMeta {
  /** ISO 8601 time the run started. */
  date: string;
  host: string;
  /** CPU model string (`/proc/cpuinfo` through os.cpus()). */
  cpu: string;
  /** Logical cores available to this process. */
  cores: number;
  /** Total memory, GiB. */
  memoryGiB: number;
  /** 1-, 5- and 15-minute load averages when the run started (the cores are shared: judge the figures by it). */
  loadavg: number[];
  /** `linux 6.1.0 x64` */
  os: string;
  /** Node.js version. */
  node: string;
  /** tpkit's package version. */
  tpkit: string;
  /** OpenBLAS's configuration string (version, kernel, threads limit). */
  openblas: string;
  /** Gloo's version (its config.h), with the distribution package version when known. */
  gloo: string;
}

function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function glooVersion(): string {
  let header = '';
  for (const dir of ['/usr/include', '/usr/local/include']) {
    try {
      const text = fs.readFileSync(path.join(dir, 'gloo', 'config.h'), 'utf8');
      const v = ['MAJOR', 'MINOR', 'PATCH'].map((k) => new RegExp(`GLOO_VERSION_${k}\\s+(\\d+)`).exec(text)?.[1]);
      if (v.every((x) => x !== undefined)) {
        header = v.join('.');
        break;
      }
    } catch {
      // not installed there
    }
  }
  let pkg = '';
  try {
    pkg = execFileSync('dpkg-query', ['-W', '-f=${Version}', 'libgloo0'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    // not a Debian system
  }
  if (header && pkg) return `${header} (libgloo0 ${pkg})`;
  return header || (pkg ? `libgloo0 ${pkg}` : 'unknown');
}

/** Collects {@link MachineMeta} (loads the core addon for OpenBLAS's configuration). */
export function machineMeta(): MachineMeta {
  const cpus = os.cpus();
  let openblas = 'unknown';
  try {
    openblas = loadCore().blasConfig();
  } catch (e) {
    openblas = `unavailable: ${(e as Error).message.split('\n')[0]}`;
  }
  return {
    date: new Date().toISOString(),
    host: os.hostname(),
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism ? os.availableParallelism() : cpus.length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadavg: os.loadavg().map((v) => Math.round(v * 100) / 100),
    os: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    tpkit: packageVersion(),
    openblas,
    gloo: glooVersion(),
  };
}

/** One line for a text report: `# 2025-11-21T06:00:00Z host (AMD EPYC, 2 cores) node v20 · OpenBLAS … · Gloo …` */
export function metaLine(m: MachineMeta): string {
  return `# ${m.date}  ${m.host} (${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, load ${m.loadavg.join(' ')})  node ${m.node}  tpkit ${m.tpkit}\n# ${m.openblas}  ·  Gloo ${m.gloo}`;
}
