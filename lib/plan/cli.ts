/**
 * `tpkit plan`: memory, communication and time of every TP × PP × DP layout of a model on N GPUs.
 *
 *   tpkit plan (--model-dir DIR | --model NAME) --gpus N [--gpus-per-node G]
 *     [--gpu NAME | --gpu-memory GiB --gpu-tflops T [--gpu-bandwidth GB/s]]
 *     [--link L [--inter-link L] | --calibrate bench.json] [--batch B] [--seq S]
 *     [--dtype bfloat16|float16|float32] [--kv-dtype D] [--micro-batches M] [--tp-across-nodes]
 *     [--json FILE] [--timeline FILE.svg]
 *
 * `--model-dir` reads only `config.json`. The table is sorted by estimated decode latency; layouts that do
 * not fit are marked `no`. Figures are model estimates (see `estimate.ts`), not measurements. Bad flags:
 * one line on stderr, exit code 2.
 *
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { parseLlamaConfig, type LlamaConfig } from '../models/config';
import { GPUS, LINKS, linkFromBench, type GpuSpec, type LinkSpec } from './hardware';
import { DTYPE_BYTES, planLayouts, type LayoutPlan, type PlanDType, type PlanResult } from './estimate';
import { BUILTIN_MODELS, builtinModelConfig, parseDecoderConfig } from './models';
import { simulateFillDrain, simulatedTimeline, timelineSvg } from './schedule';

/** A flag error: printed as one line, exit code 2. */
class UsageError extends Error {}

const USAGE = `usage: tpkit plan (--model-dir DIR | --model NAME) --gpus N [--gpus-per-node G]
                  [--gpu NAME | --gpu-memory GiB --gpu-tflops T [--gpu-bandwidth GB/s]]
                  [--link L [--inter-link L] | --calibrate bench.json] [--batch B] [--seq S]
                  [--dtype bfloat16|float16|float32] [--kv-dtype D] [--micro-batches M] [--tp-across-nodes]
                  [--json FILE] [--timeline FILE.svg]
  models: ${Object.keys(BUILTIN_MODELS).join(', ')}
  gpus:   ${Object.keys(GPUS).join(', ')} (default h100)
  links:  ${Object.keys(LINKS).join(', ')} (default --link nvlink --inter-link ib)
  Figures are estimates of a roofline + α–β model, not measurements.
`;

function int(v: string | undefined, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`Expected ${min === 1 ? 'positive' : 'non-negative'} integer for ${flag} but received ${JSON.stringify(v)}`);
  return Number(v);
}

function num(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0) throw new UsageError(`Expected positive number for ${flag} but received ${JSON.stringify(v)}`);
  return n;
}

function dtype(v: string | undefined, flag: string): PlanDType | undefined {
  if (v === undefined) return undefined;
  if (!(v in DTYPE_BYTES)) throw new UsageError(`Expected one of ${Object.keys(DTYPE_BYTES).join(', ')} for ${flag} but received ${JSON.stringify(v)}`);
  return v as PlanDType;
}

function link(v: string, flag: string): LinkSpec {
  const l = Object.prototype.hasOwnProperty.call(LINKS, v) ? LINKS[v] : undefined;
  if (!l) throw new UsageError(`Expected one of ${Object.keys(LINKS).join(', ')} for ${flag} but received ${JSON.stringify(v)}`);
  return l;
}

/** Parsed flags of `tpkit plan`. */
interface PlanFlags {
  config: LlamaConfig;
  modelName: string;
  gpus: number;
  gpusPerNode?: number;
  gpu: GpuSpec;
  intraLink: LinkSpec;
  interLink: LinkSpec;
  batch?: number;
  seq?: number;
  dtype?: PlanDType;
  kvDtype?: PlanDType;
  microBatches?: number;
  tpAcrossNodes: boolean;
  json?: string;
  timeline?: string;
}

function parseFlags(argv: string[]): PlanFlags | 'help' {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'model-dir': { type: 'string' }, model: { type: 'string' }, gpus: { type: 'string' }, 'gpus-per-node': { type: 'string' },
        gpu: { type: 'string' }, 'gpu-memory': { type: 'string' }, 'gpu-tflops': { type: 'string' }, 'gpu-bandwidth': { type: 'string' },
        link: { type: 'string' }, 'inter-link': { type: 'string' }, calibrate: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' },
        dtype: { type: 'string' }, 'kv-dtype': { type: 'string' }, 'micro-batches': { type: 'string' }, 'tp-across-nodes': { type: 'boolean' },
        json: { type: 'string' }, timeline: { type: 'string' }, help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!.replace(/\. To specify a positional argument.*$/, ''));
  }
  if (values.help) return 'help';
  const s = (k: string) => values[k] as string | undefined;
  if ((s('model-dir') === undefined) === (s('model') === undefined)) throw new UsageError('Expected exactly one of --model-dir DIR and --model NAME');
  let config: LlamaConfig;
  let modelName: string;
  if (s('model') !== undefined) {
    try {
      config = builtinModelConfig(s('model')!);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    modelName = s('model')!;
  } else {
    const file = path.join(s('model-dir')!, 'config.json');
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new UsageError(`--model-dir: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      config = parseDecoderConfig(JSON.parse(text));
    } catch (e) {
      throw new UsageError(`--model-dir: ${file}: ${(e as Error).message}`);
    }
    modelName = path.basename(path.resolve(s('model-dir')!));
  }
  const gpus = int(s('gpus'), '--gpus');
  if (gpus === undefined) throw new UsageError('Expected --gpus N (the number of GPUs to plan for)');
  const dt = dtype(s('dtype'), '--dtype');
  const custom = ['gpu-memory', 'gpu-tflops', 'gpu-bandwidth'].filter((k) => s(k) !== undefined);
  let gpu: GpuSpec;
  if (custom.length > 0) {
    if (s('gpu') !== undefined) throw new UsageError('Expected either --gpu NAME or --gpu-memory/--gpu-tflops, not both');
    const mem = num(s('gpu-memory'), '--gpu-memory');
    const tf = num(s('gpu-tflops'), '--gpu-tflops');
    if (mem === undefined || tf === undefined) throw new UsageError('Expected both --gpu-memory GiB and --gpu-tflops T for a custom GPU');
    gpu = { name: 'custom', memoryGiB: mem, tflops: tf, bandwidthGBs: num(s('gpu-bandwidth'), '--gpu-bandwidth') ?? null, source: 'command line' };
  } else {
    const name = s('gpu') ?? 'h100';
    const g = Object.prototype.hasOwnProperty.call(GPUS, name) ? GPUS[name] : undefined;
    if (!g) throw new UsageError(`Expected one of ${Object.keys(GPUS).join(', ')} for --gpu but received ${JSON.stringify(name)}`);
    gpu = { name: g.name, memoryGiB: g.memoryGiB, tflops: dt === 'float32' ? g.tflops32 : g.tflops, bandwidthGBs: g.bandwidthGBs, source: g.source };
  }
  let intraLink: LinkSpec;
  let interLink: LinkSpec;
  if (s('calibrate') !== undefined) {
    if (s('link') !== undefined || s('inter-link') !== undefined) throw new UsageError('Expected either --calibrate FILE or --link/--inter-link, not both');
    try {
      intraLink = interLink = linkFromBench(s('calibrate')!);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  } else {
    intraLink = link(s('link') ?? 'nvlink', '--link');
    interLink = link(s('inter-link') ?? 'ib', '--inter-link');
  }
  const gpusPerNode = int(s('gpus-per-node'), '--gpus-per-node');
  if (gpusPerNode !== undefined && gpus > gpusPerNode && gpus % gpusPerNode !== 0) {
    throw new UsageError(`Expected --gpus ${gpus} to be a multiple of --gpus-per-node ${gpusPerNode}`);
  }
  return {
    config, modelName, gpus, gpusPerNode, gpu, intraLink, interLink,
    batch: int(s('batch'), '--batch'),
    seq: int(s('seq'), '--seq'),
    dtype: dt,
    kvDtype: dtype(s('kv-dtype'), '--kv-dtype'),
    microBatches: int(s('micro-batches'), '--micro-batches'),
    tpAcrossNodes: values['tp-across-nodes'] === true,
    json: s('json'),
    timeline: s('timeline'),
  };
}

function gib(b: number): string {
  return (b / 2 ** 30).toFixed(2);
}

function bytes(b: number): string {
  if (b === 0) return '0';
  if (b < 1024) return `${b} B`;
  if (b < 2 ** 20) return `${(b / 1024).toFixed(1)} KiB`;
  if (b < 2 ** 30) return `${(b / 2 ** 20).toFixed(1)} MiB`;
  return `${(b / 2 ** 30).toFixed(2)} GiB`;
}

function ms(x: number): string {
  return x >= 100 ? x.toFixed(1) : x >= 1 ? x.toFixed(3) : x.toFixed(4);
}

/** The plain nccl-tests-like table of a plan, header comments included (one string, newline-terminated). */
export function formatPlan(r: PlanResult, modelName: string): string {
  const c = r.layouts[0] ?? null;
  void c;
  const i = r.input;
  const lines: string[] = [];
  lines.push(`# tpkit plan: ${modelName} on ${i.gpus} × ${i.gpu.name} (${i.gpusPerNode} per node, ${i.gpu.memoryGiB} GiB, ${i.gpu.tflops} TFLOP/s, ${i.gpu.bandwidthGBs ?? '?'} GB/s)`);
  lines.push(`# ${i.dtype} weights, ${i.kvDtype} KV cache, batch ${i.batch} × seq ${i.seq} per replica; links: intra ${i.intraLink.name} (α ${i.intraLink.alphaUs.toFixed(1)} µs, ${i.intraLink.bandwidthGBs.toFixed(3)} GB/s), inter ${i.interLink.name} (α ${i.interLink.alphaUs.toFixed(1)} µs, ${i.interLink.bandwidthGBs.toFixed(3)} GB/s)`);
  lines.push('# model estimates (roofline + α–β ring model), not measurements; sizes GiB, times ms; decode = one token for every sequence');
  lines.push('#');
  const head = ['tp', 'pp', 'dp', 'mb', 'weights', 'kv', 'act', 'total', 'margin', 'fits', 'ar-msg', 'ar/fwd', 'ar/token', 'pp-send', 'decode', 'bound', 'comm%', 'bubble%', 'tok/s', 'prefill'];
  const rows = r.layouts.map((l: LayoutPlan) => [
    l.tp, l.pp, l.dp, l.microBatches, gib(l.weightBytesPerGpu), gib(l.kvCacheBytesPerGpu), gib(l.activationBytesPerGpu), gib(l.totalBytesPerGpu),
    gib(l.marginBytes), l.fits ? 'yes' : 'NO', bytes(l.allReduceBytes), l.allReducesPerForward, bytes(l.allReduceBytesPerToken), bytes(l.ppSendBytesPerToken),
    ms(l.decode.ms), l.decode.bound, (l.decode.commShare * 100).toFixed(1), (l.decode.bubble * 100).toFixed(1), l.decode.tokensPerSecond.toFixed(1), ms(l.prefill.ms),
  ].map(String));
  const widths = head.map((h, k) => Math.max(h.length, ...rows.map((row) => row[k]!.length)));
  const fmt = (cells: string[]) => cells.map((x, k) => x.padStart(widths[k]!)).join('  ');
  lines.push(`# ${fmt(head)}`);
  for (const row of rows) lines.push(`  ${fmt(row)}`);
  for (const x of r.rejected) lines.push(`# rejected TP ${x.tp} × PP ${x.pp} × DP ${x.dp}: ${x.reason}`);
  lines.push(`# ${r.recommendation}`);
  return `${lines.join('\n')}\n`;
}

/**
 * Runs `tpkit plan` with its arguments; resolves to the exit code (0, or 2 for a flag error).
 *
 * @param argv - the arguments after `plan`
 */
export async function planMain(argv: string[]): Promise<number> {
  let f: PlanFlags | 'help';
  try {
    f = parseFlags(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`tpkit plan: error: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (f === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  let r: PlanResult;
  try {
    r = planLayouts({
      config: f.config, gpus: f.gpus, gpusPerNode: f.gpusPerNode, gpu: f.gpu, intraLink: f.intraLink, interLink: f.interLink,
      batch: f.batch, seq: f.seq, dtype: f.dtype, kvDtype: f.kvDtype, microBatches: f.microBatches, tpAcrossNodes: f.tpAcrossNodes,
    });
  } catch (e) {
    if (e instanceof RangeError) {
      process.stderr.write(`tpkit plan: error: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  process.stdout.write(formatPlan(r, f.modelName));
  if (f.json) {
    const report = { schema: 'tpkit.plan/1', model: f.modelName, config: f.config, ...r };
    fs.writeFileSync(f.json, `${JSON.stringify(report, null, 2)}\n`);
  }
  if (f.timeline) {
    const l = r.recommended ?? r.layouts[0];
    const p = l ? l.pp : 1;
    const m = l ? l.microBatches : 1;
    const sim = simulateFillDrain(p, m);
    const title = `simulated fill-drain: ${p} stages × ${m} micro-batches, idle ${sim.idleFraction.num}/${sim.idleFraction.den} = (p−1)/(p+m−1)`;
    fs.writeFileSync(f.timeline, timelineSvg(simulatedTimeline(sim), { title, unit: 'slot' }));
  }
  return 0;
}
