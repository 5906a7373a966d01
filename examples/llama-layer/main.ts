/**
 * The main job (`npm start`): one Llama decoder layer's linear path at real shapes, loaded shard by shard from
 * a bfloat16 safetensors checkpoint in Hugging Face naming, run at TP = 1, 2 and 4 on the same input, each
 * result checked against TP = 1.
 *
 * Path: QKVParallelLinear → (attention stand-in: the query heads) → RowParallelLinear o_proj → + residual →
 * RMSNorm → MergedColumnParallelLinear gate_up → SiluAndMul → RowParallelLinear down → + residual.
 * Attention itself has no weights to shard and is not computed; the query heads take its place.
 *
 * Run: `tpkit launch --nproc-per-node 4 dist/examples/llama-layer/main.js [--model llama-3-8b|llama-3-70b|tiny]
 *       [--tokens 16] [--tp 1,2,4] [--backend cpu|cuda] [--runs 5] [--checkpoint FILE]`
 *
 * @module
 */
import fs from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import {
  MergedColumnParallelLinear, ProcessGroup, QKVParallelLinear, RowParallelLinear, SafetensorsFile,
  Tensor, TpkitError, add, backends, initDistributed, rmsNorm, siluAndMul, tensorFromRaw,
} from '../../lib';
import type { Device } from '../../lib';
import { MODELS, ModelConfig, NAMES, Rng, checkpointPath, layerParams, shapes, writeRandomCheckpoint } from './model';

interface Args {
  model: string;
  tokens: number;
  tp: number[];
  backend: 'cpu' | 'cuda';
  runs: number;
  checkpoint?: string;
  seed: number;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`Expected positive integer but received ${v}`);
  return n;
}

function parseArgs(argv: string[]): Args {
  const cmd = new Command('llama-layer')
    .description('One Llama decoder layer at TP 1, 2, 4, checked for equivalence')
    .option('--model <name>', `model shapes: ${Object.keys(MODELS).join(', ')}`, 'llama-3-8b')
    .option('--tokens <n>', 'tokens in the batch', positiveInt, 16)
    .option('--tp <list>', 'tensor-parallel sizes, comma-separated (the first is the reference)', (v) => v.split(',').map(positiveInt), [1, 2, 4])
    .option('--backend <name>', 'cpu or cuda (cuda tensors; ranks share GPUs through gloo)', 'cpu')
    .option('--runs <n>', 'timed forwards per TP size (median reported)', positiveInt, 5)
    .option('--seed <n>', 'seed of the random checkpoint and input', (v) => Number(v), 0)
    .option('--checkpoint <file>', 'safetensors file (created with seeded random weights if absent)')
    .exitOverride();
  cmd.parse(argv, { from: 'user' });
  const o = cmd.opts() as Args;
  if (!MODELS[o.model]) throw new RangeError(`Expected one of ${Object.keys(MODELS).join(', ')} for --model but received ${o.model}`);
  if (o.backend !== 'cpu' && o.backend !== 'cuda') throw new RangeError(`Expected cpu or cuda for --backend but received ${o.backend}`);
  return o;
}

/** One decoder layer's linear path on one TP group. */
class DecoderLayer {
  readonly qkv: QKVParallelLinear;
  readonly o: RowParallelLinear;
  readonly gateUp: MergedColumnParallelLinear;
  readonly down: RowParallelLinear;
  norm: Tensor | null = null;

  constructor(readonly c: ModelConfig, group: ProcessGroup, device: Device) {
    const opts = { bias: false, group, device };
    this.qkv = new QKVParallelLinear(c.hiddenSize, c.headDim, c.numHeads, c.numKvHeads, opts);
    this.o = new RowParallelLinear(c.numHeads * c.headDim, c.hiddenSize, opts);
    this.gateUp = new MergedColumnParallelLinear(c.hiddenSize, [c.intermediateSize, c.intermediateSize], opts);
    this.down = new RowParallelLinear(c.intermediateSize, c.hiddenSize, opts);
  }

  /** Reads only this rank's shards (rows for column layers, columns for row layers). */
  async load(file: SafetensorsFile, device: Device): Promise<void> {
    await this.qkv.loadWeightFrom(file, NAMES.q, 'q');
    await this.qkv.loadWeightFrom(file, NAMES.k, 'k');
    await this.qkv.loadWeightFrom(file, NAMES.v, 'v');
    await this.o.loadWeightFrom(file, NAMES.o);
    await this.gateUp.loadWeightFrom(file, NAMES.gate, 0);
    await this.gateUp.loadWeightFrom(file, NAMES.up, 1);
    await this.down.loadWeightFrom(file, NAMES.down);
    const norm = tensorFromRaw(await file.read(NAMES.norm));
    this.norm = await norm.to({ dtype: 'float32', device });
    norm.dispose();
  }

  /** Bytes of this rank's parameters. */
  get weightBytes(): number {
    return [this.qkv.weight, this.o.weight, this.gateUp.weight, this.down.weight, this.norm!].reduce((n, t) => n + t.nbytes, 0);
  }

  async forward(x: Tensor): Promise<Tensor> {
    const qkv = (await this.qkv.forward(x)) as Tensor;
    const attn = qkv.narrow(-1, 0, this.qkv.numHeads * this.c.headDim);
    const o = (await this.o.forward(attn)) as Tensor;
    const h = await add(x, o);
    const n = await rmsNorm(h, this.norm!, this.c.rmsNormEps);
    const gu = (await this.gateUp.forward(n)) as Tensor;
    const act = await siluAndMul(gu);
    const d = (await this.down.forward(act)) as Tensor;
    const out = await add(h, d);
    for (const t of [qkv, attn, o, h, n, gu, act, d]) t.dispose();
    return out;
  }

  dispose(): void {
    for (const l of [this.qkv, this.o, this.gateUp, this.down]) l.dispose();
    this.norm?.dispose();
  }
}

/**
 * Integer-valued probe: weights in {−1, 0, 1} and an input in {−1, 0, 1}, so every partial sum is an integer far
 * below 2²⁴ and exact in float32 whatever the summation order: TP > 1 must then be bit-identical to TP = 1.
 * Two chains without nonlinearities: x → qkv (query heads) → o_proj, and x → gate_up (up half) → down.
 */
class Probe {
  private static fulls: Map<string, Tensor> | null = null;

  /** Full integer weights, generated once per process (seeded, identical on every rank). */
  static weights(c: ModelConfig, seed: number): Map<string, Tensor> {
    if (!Probe.fulls) {
      const rng = new Rng(seed + 7919);
      Probe.fulls = new Map();
      for (const [key, shape] of Object.entries(shapes(c))) {
        if (key === 'norm') continue;
        const n = shape.reduce((a, b) => a * b, 1);
        const v = new Float32Array(n);
        for (let i = 0; i < n; i++) v[i] = Math.floor(rng.next() * 3) - 1;
        Probe.fulls.set(key, Tensor.from(v, shape));
      }
    }
    return Probe.fulls;
  }

  static async run(c: ModelConfig, seed: number, group: ProcessGroup, device: Device, x: Tensor): Promise<Float32Array> {
    const w = Probe.weights(c, seed);
    const opts = { bias: false, group, device };
    const qkv = new QKVParallelLinear(c.hiddenSize, c.headDim, c.numHeads, c.numKvHeads, opts);
    const o = new RowParallelLinear(c.numHeads * c.headDim, c.hiddenSize, opts);
    const gateUp = new MergedColumnParallelLinear(c.hiddenSize, [c.intermediateSize, c.intermediateSize], opts);
    const down = new RowParallelLinear(c.intermediateSize, c.hiddenSize, opts);
    try {
      await qkv.loadWeight(w.get('q')!, 'q');
      await qkv.loadWeight(w.get('k')!, 'k');
      await qkv.loadWeight(w.get('v')!, 'v');
      await o.loadWeight(w.get('o')!);
      await gateUp.loadWeight(w.get('gate')!, 0);
      await gateUp.loadWeight(w.get('up')!, 1);
      await down.loadWeight(w.get('down')!);
      const q = (await qkv.forward(x)) as Tensor;
      const heads = q.narrow(-1, 0, qkv.numHeads * c.headDim);
      const a = (await o.forward(heads)) as Tensor;
      const gu = (await gateUp.forward(x)) as Tensor;
      const up = gu.narrow(-1, gateUp.outputSizePerPartition / 2, gateUp.outputSizePerPartition / 2);
      const m = (await down.forward(up)) as Tensor;
      const out = new Float32Array(a.numel + m.numel);
      out.set(await a.toFloat32Array(), 0);
      out.set(await m.toFloat32Array(), a.numel);
      for (const t of [q, heads, a, gu, up, m]) t.dispose();
      return out;
    } finally {
      for (const l of [qkv, o, gateUp, down]) l.dispose();
    }
  }
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function formatBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

interface Row {
  tp: number;
  maxAbsDiff: number;
  relDiff: number;
  bitIdentical: boolean;
  weightBytes: number;
  latencyMs: number;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const c = MODELS[args.model]!;
  const world = await initDistributed({ backend: 'gloo' });
  const log = (s: string) => {
    if (world.rank === 0) process.stdout.write(`${s}\n`);
  };
  const maxTp = Math.max(...args.tp);
  if (world.size < maxTp) {
    throw new RangeError(`--tp ${args.tp.join(',')} needs at least ${maxTp} ranks but the world has ${world.size} (tpkit launch --nproc-per-node ${maxTp})`);
  }
  let device: Device = 'cpu';
  if (args.backend === 'cuda') {
    const b = backends();
    if (!b.cuda) throw new TpkitError('NO_CUDA_DEVICE', `--backend cuda: ${b.cudaReason ?? 'no GPU visible'}`);
    device = `cuda:${Number(process.env.LOCAL_RANK ?? 0) % b.cudaDevices}`;
  }

  const file = args.checkpoint ?? checkpointPath(c);
  if (world.rank === 0 && !fs.existsSync(file)) {
    log(`writing checkpoint ${file} (${c.name}, one layer, ${(layerParams(c) / 1e6).toFixed(1)} M parameters, bfloat16, seed ${args.seed})`);
    let shown = 0;
    await writeRandomCheckpoint(c, file, args.seed, (f, what) => {
      if (f >= shown + 0.2 || f === 1) {
        shown = f;
        log(`  ${(f * 100).toFixed(0).padStart(3)}% ${what}`);
      }
    });
  }
  await world.barrier();
  const ckpt = await SafetensorsFile.open(file);
  const rng = new Rng(args.seed + 1);
  const x = Tensor.from(rng.uniform(args.tokens * c.hiddenSize, 1), [args.tokens, c.hiddenSize], { device });
  const probeRng = new Rng(args.seed + 2);
  const probeValues = new Float32Array(args.tokens * c.hiddenSize).map(() => Math.floor(probeRng.next() * 3) - 1);
  const probeX = Tensor.from(probeValues, [args.tokens, c.hiddenSize], { device });

  log(`model ${c.name}: hidden ${c.hiddenSize}, ${c.numHeads} heads / ${c.numKvHeads} kv heads × ${c.headDim}, intermediate ${c.intermediateSize}; ${args.tokens} tokens; backend ${device} (gloo)`);
  const rows: Row[] = [];
  let reference: Float32Array | null = null;
  let probeReference: Float32Array | null = null;
  for (const tp of args.tp) {
    const group = world.newGroup(Array.from({ length: tp }, (_, i) => i));
    if (group.isMember) {
      log(`TP=${tp}: loading shards from ${file}`);
      const layer = new DecoderLayer(c, group, device);
      await layer.load(ckpt, device);
      const warm = await layer.forward(x);
      const times: number[] = [];
      for (let i = 0; i < args.runs; i++) {
        await group.barrier();
        const t0 = process.hrtime.bigint();
        const y = await layer.forward(x);
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
        y.dispose();
      }
      const lat = Tensor.from([median(times)], [1]);
      await group.allReduce(lat, { op: 'max' });
      const out = await warm.toFloat32Array();
      const probe = await Probe.run(c, args.seed, group, device, probeX);
      if (world.rank === 0) {
        reference ??= out;
        probeReference ??= probe;
        let maxAbs = 0;
        let scale = 0;
        for (let i = 0; i < out.length; i++) {
          maxAbs = Math.max(maxAbs, Math.abs(out[i]! - reference[i]!));
          scale = Math.max(scale, Math.abs(reference[i]!));
        }
        let identical = probe.length === probeReference.length;
        for (let i = 0; identical && i < probe.length; i++) if (!Object.is(probe[i], probeReference[i])) identical = false;
        rows.push({ tp, maxAbsDiff: maxAbs, relDiff: scale > 0 ? maxAbs / scale : 0, bitIdentical: identical, weightBytes: layer.weightBytes, latencyMs: (await lat.toFloat32Array())[0]! });
      }
      for (const t of [warm, lat]) t.dispose();
      layer.dispose();
    }
    await world.barrier();
    group.destroy();
  }
  await ckpt.close();

  let failed = false;
  if (world.rank === 0) {
    // float32 equivalence bound of DESIGN.md: 1e-5 relative to the output's scale.
    const bound = 1e-5;
    log('');
    log(' TP | max |Δ| vs TP=1 | rel. to max|y| | bit-identical probe | weights / rank | forward (median)');
    log('----+----------------+----------------+---------------------+----------------+-----------------');
    for (const r of rows) {
      const ok = r.relDiff <= bound && r.bitIdentical;
      failed ||= !ok;
      log(
        `${String(r.tp).padStart(3)} | ${r.maxAbsDiff.toExponential(2).padStart(14)} | ${r.relDiff.toExponential(2).padStart(14)} | ` +
          `${(r.bitIdentical ? 'yes' : 'NO').padStart(19)} | ${formatBytes(r.weightBytes).padStart(14)} | ${`${r.latencyMs.toFixed(1)} ms`.padStart(16)}`,
      );
    }
    log('');
    log(failed ? `MISMATCH: a TP result differs from TP=${args.tp[0]} beyond ${bound} relative or the probe is not bit-identical` : `every TP size is equivalent to TP=${args.tp[0]} (float32 bound ${bound} relative; integer probe bit-identical)`);
  }
  x.dispose();
  probeX.dispose();
  await world.barrier();
  world.destroy();
  return failed ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`llama-layer: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  },
);
