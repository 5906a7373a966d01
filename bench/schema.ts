/**
 * The JSON results of `tpkit bench … --json FILE`: TypeScript types, the JSON Schemas (draft 2020-12
 * subset) that document them, and a small validator for that subset. `tpkit bench schema <kind>` prints a
 * schema; bench/README.md describes the fields.
 *
 * Every result has `schema` (its name and major version), `meta` (machine, versions, run parameters) and
 * `rows`. Times are µs, bandwidths GB/s (1e9 bytes/s), throughput TFLOP/s (1e12 flop/s), sizes bytes.
 *
 * @module
 */
import type { CollRow } from './harness';
import type { MachineMeta } from './meta';

/** A JSON Schema node of the subset {@link validate} understands. */
export interface JsonSchema {
  $schema?: string;
  $id?: string;
  title?: string;
  description?: string;
  type?: JsonType | JsonType[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  enum?: readonly unknown[];
  const?: unknown;
  minimum?: number;
}
type JsonType = 'object' | 'array' | 'string' | 'number' | 'integer' | 'boolean' | 'null';

// ---- result types ------------------------------------------------------------------------------------

/** How a peer (raw C++ or PyTorch) fared in this run. */
export interface PeerStatus {
  /** `ok`, or `skipped` with the reason. */
  status: 'ok' | 'skipped';
  reason?: string;
  /** Library version(s) the peer ran with. */
  version?: string;
  /** The command that ran it (so it can be re-run by hand). */
  command?: string;
}

/** One peer's figure at one size / shape. */
export interface PeerCell {
  timeUs: number;
  /** Median per-operation time, µs (collective peers). */
  p50Us?: number;
  /** busbw (collectives) in GB/s, or TFLOP/s (GEMM). */
  rate: number;
  /** Elements differing from the reference (the peer's own check). */
  wrong: number;
}

/** Fit of the ring all-reduce cost model t(n) = 2(p−1)α + 2(p−1)/p · n·β (see bench/model.ts). */
export interface RingModelResult {
  /** Which measured time was fitted: the per-op median (`p50`, when recorded) or the mean. */
  fitted: 'p50' | 'mean';
  /** Per-message latency α, µs. */
  alphaUs: number;
  /** Per-byte time β, µs/byte. */
  betaUsPerByte: number;
  /** 1/β in GB/s: the link bandwidth the model implies (0 when β = 0). */
  bandwidthGBs: number;
  /** Root-mean-square relative error of the fit over the sweep. */
  rmsRelError: number;
  /** Predicted vs measured per size. */
  points: { size: number; worldSize: number; measuredUs: number; predictedUs: number }[];
}

/** `tpkit bench collectives --json`. */
export interface CollectivesResult {
  schema: 'tpkit.bench.collectives/1';
  meta: MachineMeta & {
    op: string;
    worldSize: number;
    backend: 'gloo' | 'nccl';
    device: string;
    dtype: string;
    redop: string;
    root: number;
    iters: number;
    warmup: number;
    sync: 'each' | 'batch';
    /** The `#wrong` check ran. */
    check: boolean;
    /** tpkit's collective consistency check (TPKIT_CHECK; `off` disables it). */
    consistencyCheck: 'on' | 'off';
    minBytes: number;
    maxBytes: number;
    stepFactor: number;
    /** OpenBLAS threads per rank. */
    blasThreads: number;
    /** Runs folded into this result (median times; see `--repeat`). */
    repeat: number;
  };
  rows: (CollRow & { peers?: Record<string, PeerCell> })[];
  /** Mean busbw over all measured cells (nccl-tests' footer). */
  avgBusBw: number;
  peers?: Record<string, PeerStatus>;
  model?: RingModelResult;
}

/** One GEMM of `tpkit bench gemm`. */
export interface GemmRow {
  /** `square` or the layer: `llama3-8b.qkv_proj`, … */
  name: string;
  /** Tokens (M) for layer GEMMs; null for squares. */
  tokens: number | null;
  m: number;
  n: number;
  k: number;
  /** op(B) = Bᵀ (B stored [N, K], as linear's weight). */
  transB: boolean;
  dtype: string;
  timeUs: number;
  /** 2·M·N·K / time, TFLOP/s. */
  tflops: number;
  /** Sampled elements differing from the exact integer reference. */
  wrong: number;
  peers?: Record<string, PeerCell>;
}

/** `tpkit bench gemm --json`. */
export interface GemmResult {
  schema: 'tpkit.bench.gemm/1';
  meta: MachineMeta & { device: string; iters: number; warmup: number; blasThreads: number; tp: number; repeat: number };
  rows: GemmRow[];
  peers?: Record<string, PeerStatus>;
}

/** One configuration of `tpkit bench layers`. */
export interface LayerRow {
  model: string;
  hidden: number;
  intermediate: number;
  tp: number;
  tokens: number;
  phase: 'decode' | 'prefill';
  /** Column→Row forward latency, µs (rank average). */
  latencyUs: number;
  /** Time inside the all-reduce, µs per forward (rank average). */
  commUs: number;
  /** commUs / latencyUs. */
  commShare: number;
  /** Sampled output elements outside the float32 tolerance, summed over ranks. */
  wrong: number;
}

/** `tpkit bench layers --json`. */
export interface LayersResult {
  schema: 'tpkit.bench.layers/1';
  meta: MachineMeta & { device: string; backend: string; iters: number; warmup: number };
  rows: LayerRow[];
}

/** One (TP, PP) layout of `tpkit bench model`. */
export interface ModelBenchRow {
  tp: number;
  pp: number;
  /** TP × PP ranks. */
  worldSize: number;
  /** Prompt length, tokens. */
  promptTokens: number;
  /** Greedy tokens generated per run. */
  newTokens: number;
  /** Timed generate calls (medians below). */
  runs: number;
  /** fromPretrained wall time, ms (barrier to barrier). */
  loadMs: number;
  /** Prefill wall time, ms (median). */
  prefillMs: number;
  /** Prompt tokens per second of the prefill (median). */
  prefillTokensPerSecond: number;
  /** Mean decode step, ms (median over runs). */
  decodeMsPerToken: number;
  /** `model.parameterBytes` of every rank, bytes. */
  weightBytesPerRank: number[];
  /** The greedy tokens of the last run. */
  tokens: number[];
}

/** The transformers peer's figures (bench/peers/hf_model_peer.py). */
export interface ModelPeerRow {
  prefillMs: number;
  prefillTokensPerSecond: number;
  decodeMsPerToken: number;
  tokens: number[];
  /** torch intra-op threads. */
  threads: number;
}

/** `tpkit bench model --json`. */
export interface ModelBenchResult {
  schema: 'tpkit.bench.model/1';
  meta: MachineMeta & { modelDir: string; device: string; backend: string; promptTokens: number; newTokens: number; runs: number };
  rows: ModelBenchRow[];
  /** `hf`: the transformers peer, ok or skipped with the reason. */
  peers?: Record<string, PeerStatus>;
  /** The peers' figures, when they ran. */
  peerRows?: Record<string, ModelPeerRow>;
}

// ---- schemas -----------------------------------------------------------------------------------------

const num: JsonSchema = { type: 'number' };
const nonNeg: JsonSchema = { type: 'number', minimum: 0 };
const int: JsonSchema = { type: 'integer' };
const count: JsonSchema = { type: 'integer', minimum: 0 };
const str: JsonSchema = { type: 'string' };
const bool: JsonSchema = { type: 'boolean' };

function obj(properties: Record<string, JsonSchema>, optional: string[] = [], extra: boolean | JsonSchema = false): JsonSchema {
  return { type: 'object', properties, required: Object.keys(properties).filter((k) => !optional.includes(k)), additionalProperties: extra };
}
function nullable(s: JsonSchema): JsonSchema {
  return { ...s, type: [...(Array.isArray(s.type) ? s.type : [s.type!]), 'null'] };
}
function arrayOf(items: JsonSchema): JsonSchema {
  return { type: 'array', items };
}

const machineMeta: Record<string, JsonSchema> = {
  date: { type: 'string', description: 'ISO 8601 start time' },
  host: str,
  cpu: str,
  cores: count,
  memoryGiB: nonNeg,
  loadavg: { type: 'array', items: nonNeg, description: '1-, 5-, 15-minute load averages at the start' },
  os: str,
  node: str,
  tpkit: str,
  openblas: { type: 'string', description: 'OpenBLAS configuration string (version, kernel)' },
  gloo: { type: 'string', description: 'Gloo version (config.h) and distribution package' },
};

const peerStatus = obj({ status: { enum: ['ok', 'skipped'] }, reason: str, version: str, command: str }, ['reason', 'version', 'command']);
const peerCell = obj({ timeUs: nonNeg, p50Us: nonNeg, rate: nonNeg, wrong: count }, ['p50Us']);
const peerStatuses: JsonSchema = { type: 'object', additionalProperties: peerStatus };
const peerCells: JsonSchema = { type: 'object', additionalProperties: peerCell };

const formResult = nullable(
  obj({
    timeUs: { type: 'number', minimum: 0, description: 'µs per operation (elapsed / iterations), averaged over ranks' },
    p50Us: nullable({ type: 'number', minimum: 0, description: 'median per-operation µs, averaged over ranks; null in batch mode' }),
    algbw: { type: 'number', minimum: 0, description: 'GB/s = size / time' },
    busbw: { type: 'number', minimum: 0, description: 'GB/s = algbw × the op’s bus factor' },
    wrong: nullable({ type: 'integer', minimum: 0, description: 'elements differing from the reference, summed over ranks; null: check off' }),
  }),
);

/** Schema of {@link CollectivesResult}. */
export const COLLECTIVES_SCHEMA: JsonSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'tpkit.bench.collectives/1',
  title: 'tpkit bench collectives result',
  ...obj(
    {
      schema: { const: 'tpkit.bench.collectives/1' },
      meta: obj({
        ...machineMeta,
        op: { enum: ['all_reduce', 'all_gather', 'reduce_scatter', 'broadcast', 'alltoall', 'sendrecv'] },
        worldSize: { type: 'integer', minimum: 1 },
        backend: { enum: ['gloo', 'nccl'] },
        device: str,
        dtype: { enum: ['float32', 'float16', 'bfloat16'] },
        redop: { enum: ['sum', 'prod', 'max', 'min', 'avg'] },
        root: count,
        iters: { type: 'integer', minimum: 1 },
        warmup: count,
        sync: { enum: ['each', 'batch'] },
        check: bool,
        consistencyCheck: { enum: ['on', 'off'] },
        minBytes: count,
        maxBytes: count,
        stepFactor: { type: 'integer', minimum: 1 },
        blasThreads: count,
        repeat: { type: 'integer', minimum: 1 },
      }),
      rows: arrayOf(
        obj(
          {
            size: { type: 'integer', minimum: 0, description: 'bytes (total size for all_gather / reduce_scatter / alltoall)' },
            count: { type: 'integer', minimum: 0, description: 'elements (the op’s count argument)' },
            type: { enum: ['float32', 'float16', 'bfloat16'] },
            redop: { enum: ['sum', 'prod', 'max', 'min', 'avg', 'none'] },
            root: int,
            outOfPlace: formResult,
            inPlace: formResult,
            peers: peerCells,
          },
          ['peers'],
        ),
      ),
      avgBusBw: nonNeg,
      peers: peerStatuses,
      model: obj({
        fitted: { enum: ['p50', 'mean'] },
        alphaUs: num,
        betaUsPerByte: num,
        bandwidthGBs: num,
        rmsRelError: nonNeg,
        points: arrayOf(obj({ size: count, worldSize: { type: 'integer', minimum: 2 }, measuredUs: nonNeg, predictedUs: num })),
      }),
    },
    ['peers', 'model'],
  ),
};

/** Schema of {@link GemmResult}. */
export const GEMM_SCHEMA: JsonSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'tpkit.bench.gemm/1',
  title: 'tpkit bench gemm result',
  ...obj(
    {
      schema: { const: 'tpkit.bench.gemm/1' },
      meta: obj({ ...machineMeta, device: str, iters: { type: 'integer', minimum: 1 }, warmup: count, blasThreads: count, tp: { type: 'integer', minimum: 1 }, repeat: { type: 'integer', minimum: 1 } }),
      rows: arrayOf(
        obj(
          {
            name: str,
            tokens: nullable(count),
            m: count,
            n: count,
            k: count,
            transB: bool,
            dtype: str,
            timeUs: nonNeg,
            tflops: nonNeg,
            wrong: count,
            peers: peerCells,
          },
          ['peers'],
        ),
      ),
      peers: peerStatuses,
    },
    ['peers'],
  ),
};

/** Schema of {@link LayersResult}. */
export const LAYERS_SCHEMA: JsonSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'tpkit.bench.layers/1',
  title: 'tpkit bench layers result',
  ...obj({
    schema: { const: 'tpkit.bench.layers/1' },
    meta: obj({ ...machineMeta, device: str, backend: str, iters: { type: 'integer', minimum: 1 }, warmup: count }),
    rows: arrayOf(
      obj({
        model: str,
        hidden: count,
        intermediate: count,
        tp: { type: 'integer', minimum: 1 },
        tokens: { type: 'integer', minimum: 1 },
        phase: { enum: ['decode', 'prefill'] },
        latencyUs: nonNeg,
        commUs: nonNeg,
        commShare: nonNeg,
        wrong: count,
      }),
    ),
  }),
};

/** Schema of {@link ModelBenchResult}. */
export const MODEL_SCHEMA: JsonSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'tpkit.bench.model/1',
  title: 'tpkit bench model result',
  ...obj(
    {
      schema: { const: 'tpkit.bench.model/1' },
      meta: obj({ ...machineMeta, modelDir: str, device: str, backend: str, promptTokens: { type: 'integer', minimum: 1 }, newTokens: { type: 'integer', minimum: 1 }, runs: { type: 'integer', minimum: 1 } }),
      rows: arrayOf(
        obj({
          tp: { type: 'integer', minimum: 1 },
          pp: { type: 'integer', minimum: 1 },
          worldSize: { type: 'integer', minimum: 1 },
          promptTokens: { type: 'integer', minimum: 1 },
          newTokens: { type: 'integer', minimum: 1 },
          runs: { type: 'integer', minimum: 1 },
          loadMs: nonNeg,
          prefillMs: { type: 'number', minimum: 0, description: 'median prefill wall time, ms' },
          prefillTokensPerSecond: { type: 'number', minimum: 0, description: 'median prompt tokens / s of the prefill' },
          decodeMsPerToken: { type: 'number', minimum: 0, description: 'median mean decode step, ms' },
          weightBytesPerRank: arrayOf(count),
          tokens: arrayOf(count),
        }),
      ),
      peers: peerStatuses,
      peerRows: {
        type: 'object',
        additionalProperties: obj({ prefillMs: nonNeg, prefillTokensPerSecond: nonNeg, decodeMsPerToken: nonNeg, tokens: arrayOf(count), threads: count }),
      },
    },
    ['peers', 'peerRows'],
  ),
};

/** The schemas by `tpkit bench schema <kind>` name. */
export const SCHEMAS: Readonly<Record<'collectives' | 'gemm' | 'layers' | 'model', JsonSchema>> = {
  collectives: COLLECTIVES_SCHEMA,
  gemm: GEMM_SCHEMA,
  layers: LAYERS_SCHEMA,
  model: MODEL_SCHEMA,
};

// ---- validator ---------------------------------------------------------------------------------------

function typeOf(v: unknown): JsonType {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v as JsonType;
}

function typeMatches(v: unknown, t: JsonType): boolean {
  const actual = typeOf(v);
  if (t === 'number') return actual === 'number' || actual === 'integer';
  return actual === t;
}

/**
 * Validates `value` against `schema` (the subset above: type, properties, required, additionalProperties,
 * items, enum, const, minimum).
 *
 * @returns one message per violation, as `$.rows[3].size: expected integer but received 1.5`; empty when valid
 */
export function validate(schema: JsonSchema, value: unknown, where = '$'): string[] {
  const errors: string[] = [];
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => typeMatches(value, t))) {
      return [`${where}: expected ${types.join(' or ')} but received ${JSON.stringify(value) ?? 'undefined'}`];
    }
  }
  if (schema.const !== undefined && value !== schema.const) errors.push(`${where}: expected ${JSON.stringify(schema.const)} but received ${JSON.stringify(value)}`);
  if (schema.enum && !schema.enum.includes(value)) errors.push(`${where}: expected one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')} but received ${JSON.stringify(value)}`);
  if (schema.minimum !== undefined && typeof value === 'number' && value < schema.minimum) errors.push(`${where}: expected ≥ ${schema.minimum} but received ${value}`);
  if (typeOf(value) === 'object') {
    const o = value as Record<string, unknown>;
    for (const k of schema.required ?? []) if (!(k in o)) errors.push(`${where}: missing required property ${k}`);
    for (const [k, v] of Object.entries(o)) {
      const sub = schema.properties?.[k];
      if (sub) errors.push(...validate(sub, v, `${where}.${k}`));
      else if (schema.additionalProperties === false) errors.push(`${where}: unexpected property ${k}`);
      else if (typeof schema.additionalProperties === 'object') errors.push(...validate(schema.additionalProperties, v, `${where}.${k}`));
    }
  }
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => errors.push(...validate(schema.items!, v, `${where}[${i}]`)));
  return errors;
}

// ---- tpkit bench moe -----------------------------------------------------------------------------------

/** One EP size of `tpkit bench moe` (times: median over iterations of the slowest rank, ms). */
export interface MoEBenchRow {
  /** Expert-parallel size = ranks of the launch. */
  ep: number;
  /** Tokens per rank per forward. */
  tokensPerRank: number;
  /** Experts per rank (E / ep). */
  expertsPerRank: number;
  /** Router + permutation (host), dispatch (counts + rows all-to-all), experts, combine (all-to-all back). */
  routerMs: number;
  dispatchMs: number;
  expertMs: number;
  combineMs: number;
  /** The whole forward, ms. */
  forwardMs: number;
  /** Tokens routed to each expert (all ranks, one forward) and max / mean of them. */
  tokensPerExpert: number[];
  loadImbalance: number;
  /** Bytes one rank's dispatch all-to-all sends (rows × hidden × 4, its own share included). */
  dispatchBytes: number;
  /** nccl-tests all-to-all: algbw = bytes / time, busbw = algbw × (n − 1) / n (GB/s), from dispatchMs. */
  algbwGBs: number;
  busbwGBs: number;
  /** Max |Δ| of the output against EP 1's on the same tokens (0 when bit-identical). */
  maxAbsDiffVsEp1: number;
}

/** `tpkit bench moe --json`. */
export interface MoEBenchResult {
  schema: 'tpkit.bench.moe/1';
  meta: MachineMeta & { device: string; backend: string; experts: number; topK: number; hidden: number; intermediate: number; iters: number; warmup: number; skew: number };
  rows: MoEBenchRow[];
}

export const MOE_SCHEMA: JsonSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'tpkit.bench.moe/1',
  title: 'tpkit bench moe result',
  ...obj({
    schema: { const: 'tpkit.bench.moe/1' },
    meta: obj({ ...machineMeta, device: str, backend: str, experts: count, topK: count, hidden: count, intermediate: count, iters: count, warmup: count, skew: nonNeg }),
    rows: arrayOf(obj({
      ep: { type: 'integer', minimum: 1 },
      tokensPerRank: count,
      expertsPerRank: count,
      routerMs: nonNeg,
      dispatchMs: { type: 'number', minimum: 0, description: 'counts + rows all-to-all, ms (median, slowest rank)' },
      expertMs: nonNeg,
      combineMs: { type: 'number', minimum: 0, description: 'all-to-all back, ms (median, slowest rank)' },
      forwardMs: nonNeg,
      tokensPerExpert: arrayOf(count),
      loadImbalance: { type: 'number', minimum: 0, description: 'max / mean tokens per expert' },
      dispatchBytes: count,
      algbwGBs: nonNeg,
      busbwGBs: nonNeg,
      maxAbsDiffVsEp1: nonNeg,
    })),
  }),
};
