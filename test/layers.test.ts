/**
 * Tensor-parallel layers at TP = 1, 2, 4 (world size = TP) against full-matrix references computed here, on one
 * "rank" in plain loops: integer data → bit-identical, random float32 → max |Δ| ≤ 1e-5 · max |y|. Shapes follow
 * Megatron-LM's old layer test (in = 13·tp, out = 17·tp, batch 7) plus odd batch sizes.
 */
import test from 'ava';
import { narrowRef, rand, randInt, maxAbs, maxAbsDiff } from './helpers/reference';
import { assertRanksOk, runRanks, sharedRun } from './helpers/run_ranks';
import type { Settled } from './helpers/run_ranks';
import { cudaStatus } from '../lib/native/cuda';

type Vals = { shape: number[]; values: number[] };
type Result = Record<string, unknown> & { tp: number; rank: number };
const GENS: Record<string, (n: number, s: number) => Float32Array> = { int: (n, s) => randInt(n, s, -3, 3), float: rand };

/** y = x·Wᵀ + b for x [B, in], W [out, in] (double accumulation: the independent reference). */
function linearRef(x: ArrayLike<number>, W: ArrayLike<number>, b: ArrayLike<number> | null, B: number, inF: number, outF: number): number[] {
  const y = new Array<number>(B * outF).fill(0);
  for (let r = 0; r < B; r++) {
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o]! : 0;
      for (let k = 0; k < inF; k++) s += x[r * inF + k]! * W[o * inF + k]!;
      y[r * outF + o] = s;
    }
  }
  return y;
}

function close(t: import('ava').ExecutionContext, kind: string, got: Vals, ref: number[], what: string): void {
  if (kind === 'int') {
    t.deepEqual(got.values, ref, `${what}: not bit-identical`);
  } else {
    const d = maxAbsDiff(got.values, ref);
    t.true(d <= 1e-5 * maxAbs(ref), `${what}: max |Δ| ${d} > 1e-5 × ${maxAbs(ref)}`);
  }
}

// Every case runs on the host; on a GPU machine also on cuda tensors, the ranks sharing GPU 0 through gloo.
const gpu = cudaStatus();
const DEVICES = gpu.cuda ? ['cpu', 'cuda:0'] : ['cpu'];
if (!gpu.cuda) test.skip(`layers on cuda tensors: no GPU visible (${gpu.reason ?? 'unknown'})`, () => {});

for (const device of DEVICES) {
const on = device === 'cpu' ? '' : ` on ${device}`;
const runs = new Map<number | string, () => Promise<import('./helpers/run_ranks').RanksOutcome<Result>>>();
for (const W of [1, 2, 4]) {
  runs.set(W, sharedRun(() => runRanks<Result>(W, 'dist_layers', 'linear', { timeoutMs: 90_000, env: { TPKIT_TEST_DEVICE: device } })));
  // The same layers with shared memory off: Gloo TCP between the ranks.
  if (W > 1) runs.set(`${W}/tcp`, sharedRun(() => runRanks<Result>(W, 'dist_layers', 'linear', { timeoutMs: 90_000, env: { TPKIT_TEST_DEVICE: device, TPKIT_SHM: 'off' } })));
}

for (const [key, W] of [[1, 1], [2, 2], [4, 4], ['2/tcp', 2], ['4/tcp', 4]] as const) {
  const over = typeof key === 'string' ? ' over Gloo TCP (TPKIT_SHM=off)' : '';
  test(`linear layers${on} at TP ${W}${over} match the full-matrix reference (int: bit-identical, float: 1e-5)`, async (t) => {
    const out = await runs.get(key)!();
    if (W > 1) t.true(out.results.every((r) => r?.sharedMemory === !over), `shared memory ${over ? 'off' : 'on'} on every rank`);
    assertRanksOk(t, out);
    const tp = W;
    const IN = 13 * tp;
    const OUT = 17 * tp;
    for (const res of out.results) {
      const r = res!.rank;
      for (const [kind, gen] of Object.entries(GENS)) {
        const Wf = gen(OUT * IN, 1);
        const b = gen(OUT, 2);
        const Wr = gen(IN * OUT, 4);
        const br = gen(IN, 5);
        for (const B of [7, 1, 3]) {
          const key = `${kind}/${B}`;
          const x = gen(B * IN, 3 + B);
          const y = linearRef(x, Wf, b, B, IN, OUT);
          close(t, kind, res![`${key}/column_gathered`] as Vals, y, `rank ${r} ${key} column gathered`);
          t.deepEqual((res![`${key}/column_gathered`] as Vals).shape, [B, OUT]);
          const shard = narrowRef(y, [B, OUT], 1, r * (OUT / tp), OUT / tp);
          close(t, kind, res![`${key}/column_shard`] as Vals, shard, `rank ${r} ${key} column shard`);
          // The block: the row layer consumes the column layer's shard; its reference is on the full h.
          const h = (kind === 'int' ? y : Array.from(new Float32Array(y)));
          const block = linearRef(h, Wr, br, B, OUT, IN);
          close(t, kind, res![`${key}/block`] as Vals, block, `rank ${r} ${key} column→row block`);
          t.is(res![`${key}/block_allreduces`], tp > 1 ? 1 : 0, 'column→row costs exactly one all-reduce');
          const xFull = gen(B * OUT, 6 + B);
          close(t, kind, res![`${key}/row_full_input`] as Vals, linearRef(xFull, Wr, br, B, OUT, IN), `rank ${r} ${key} row (input split here)`);
          close(t, kind, res![`${key}/replicated`] as Vals, y, `rank ${r} ${key} replicated`);
        }
      }
    }
  });

}

for (const W of [1, 2, 4]) {
  test(`loadWeight keeps this rank's shard${on} at TP ${W} (column rows, row columns, merged and QKV parts, file reads)`, async (t) => {
    const out = await runs.get(W)!();
    assertRanksOk(t, out);
    const tp = W;
    const IN = 13 * tp;
    const OUT = 17 * tp;
    const Wf = randInt(OUT * IN, 1, -3, 3);
    for (const res of out.results) {
      const r = res!.rank;
      const col = res!.columnWeight as Vals;
      t.deepEqual(col.shape, [OUT / tp, IN]);
      t.deepEqual(col.values, narrowRef(Wf, [OUT, IN], 0, r * (OUT / tp), OUT / tp));
      const row = res!.rowWeight as Vals;
      t.deepEqual(row.shape, [OUT, IN / tp]);
      t.deepEqual(row.values, narrowRef(Wf, [OUT, IN], 1, r * (IN / tp), IN / tp));
      const file = res!.fromFile as { column: Vals; row: Vals };
      t.deepEqual(file.column.values, col.values, 'column shard read from safetensors (row range)');
      t.deepEqual(file.row.values, row.values, 'row shard read from bf16 safetensors (column range)');
      // Merged: [5tp | 3tp] parts, each sharded separately: [p0 rows of rank r ; p1 rows of rank r].
      const parts = [5 * tp, 3 * tp];
      const P0 = randInt(parts[0]! * IN, 11, -3, 3);
      const P1 = randInt(parts[1]! * IN, 12, -3, 3);
      const mergedRef = [
        ...narrowRef(P0, [parts[0]!, IN], 0, r * 5, 5),
        ...narrowRef(P1, [parts[1]!, IN], 0, r * 3, 3),
      ];
      t.deepEqual((res!.mergedWeight as Vals).values, mergedRef);
      t.deepEqual((res!.mergedFusedWeight as Vals).values, mergedRef, 'a fused [gate; up] checkpoint gives the same shard');
      const biasRef = [...Array.from({ length: 5 }, (_, i) => 100 + r * 5 + i), ...Array.from({ length: 3 }, (_, i) => 200 + r * 3 + i)];
      t.deepEqual((res!.mergedBias as Vals).values, biasRef);
      const xm = randInt(3 * IN, 13, -3, 3);
      const fullMerged = [...P0, ...P1];
      const fullBias = [...Array.from({ length: parts[0]! }, (_, i) => 100 + i), ...Array.from({ length: parts[1]! }, (_, i) => 200 + i)];
      const ym = linearRef(xm, fullMerged, fullBias, 3, IN, parts[0]! + parts[1]!);
      const mergedOutRef: number[] = [];
      for (let b = 0; b < 3; b++) {
        const rowVals = ym.slice(b * 8 * tp, (b + 1) * 8 * tp);
        mergedOutRef.push(...rowVals.slice(r * 5, r * 5 + 5), ...rowVals.slice(5 * tp + r * 3, 5 * tp + r * 3 + 3));
      }
      t.deepEqual((res!.mergedOut as Vals).values, mergedOutRef, 'merged forward = [gate shard | up shard]');
      // QKV with grouped-query attention.
      for (const kv of [2, 4 * tp]) {
        const q = res![`qkv${kv}`] as { weight: Vals; numHeads: number; numKvHeads: number; kvShardRank: number };
        const hidden = 8;
        const Wq = randInt(4 * tp * 2 * hidden, 21, -3, 3);
        const Wk = randInt(kv * 2 * hidden, 22, -3, 3);
        const Wv = randInt(kv * 2 * hidden, 23, -3, 3);
        const kvPer = tp >= kv ? 1 : kv / tp;
        const kvShard = tp >= kv ? Math.floor(r / (tp / kv)) : r;
        t.is(q.numHeads, 4);
        t.is(q.numKvHeads, kvPer);
        t.is(q.kvShardRank, kvShard);
        t.deepEqual(q.weight.values, [
          ...narrowRef(Wq, [4 * tp * 2, hidden], 0, r * 4 * 2, 4 * 2),
          ...narrowRef(Wk, [kv * 2, hidden], 0, kvShard * kvPer * 2, kvPer * 2),
          ...narrowRef(Wv, [kv * 2, hidden], 0, kvShard * kvPer * 2, kvPer * 2),
        ], `rank ${r} qkv shard with ${kv} kv heads`);
      }
    }
  });

  test(`RowParallelLinear adds its bias exactly once, skipBiasAdd and option errors${on} at TP ${W}`, async (t) => {
    const out = await runs.get(W)!();
    assertRanksOk(t, out);
    const OUT = 17 * W;
    const bias = Array.from({ length: OUT }, (_, i) => i + 1);
    for (const res of out.results) {
      t.deepEqual((res!.rowBiasOnce as Vals).values, [...bias, ...bias], 'zero weights: output equals the bias, not tp × bias');
      const skip = res!.skip as { output: Vals; bias: Vals };
      t.deepEqual(skip.output.values, new Array(2 * OUT).fill(0));
      t.deepEqual(skip.bias.values, bias);
      const bad = res!.reduceFalseWithBias as Settled<unknown>;
      t.false(bad.ok);
      if (!bad.ok) t.regex(bad.error.message, /reduceResults = false with a bias/);
      t.like(res!.reduceFalseSkip, { ok: true, value: false });
      const ind = res!.indivisible as Settled<unknown>;
      if (W > 1) {
        t.false(ind.ok);
        if (!ind.ok) t.is(ind.error.message, `outputSize ${OUT * 4 + 1} is not divisible by tensor parallel size ${W}`);
      } else t.true(ind.ok);
    }
  });

  test(`VocabParallelEmbedding${on} at TP ${W} matches a full-table lookup`, async (t) => {
    const out = await runs.get(W)!();
    assertRanksOk(t, out);
    const ids = [0, 99, 64, 63, 31, 32, 5, 97];
    const ref = ids.flatMap((id) => [id * 3 + 1, id * 3 + 2, id * 3 + 3]);
    for (const res of out.results) {
      const e = res!.embedding as Vals & { start: number; perPartition: number };
      t.deepEqual(e.shape, [8, 3]);
      t.deepEqual(e.values, ref);
      t.is(e.perPartition, 128 / W, 'vocabulary 100 padded to 128 and split evenly');
      t.is(e.start, res!.rank * (128 / W));
      const bad = res!.embeddingBadId as Settled<unknown>;
      t.false(bad.ok);
      if (!bad.ok) t.is(bad.error.message, 'Expected token id in [0, 100) for ids[0] but received 100');
    }
  });
}
}
