/**
 * Bad input to the layers and parallel state: each case throws a TypeError / RangeError / TpkitError with its
 * message before any work, and nothing crashes (issue: reliability, table-driven bad-input test).
 */
import test from 'ava';
import {
  ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear, RowParallelLinear, Tensor,
  TpkitError, VocabParallelEmbedding, parallelState,
} from '../lib';

type Case = [name: string, fn: () => unknown, error: { instanceOf: new (...a: never[]) => Error; message?: string | RegExp; code?: string }];

const w = () => Tensor.zeros([4, 3]);
const disposed = () => {
  const t = Tensor.zeros([4, 3]);
  t.dispose();
  return t;
};

const SYNC: Case[] = [
  ['Column inputSize 0', () => new ColumnParallelLinear(0, 4), { instanceOf: RangeError, message: 'Expected positive integer for inputSize but received 0 of type number' }],
  ['Column inputSize string', () => new ColumnParallelLinear('3' as never, 4), { instanceOf: TypeError, message: 'Expected positive integer for inputSize but received 3 of type string' }],
  ['Column outputSize 2.5', () => new ColumnParallelLinear(3, 2.5), { instanceOf: RangeError, message: 'Expected positive integer for outputSize but received 2.5 of type number' }],
  ['Column outputSize NaN', () => new ColumnParallelLinear(3, NaN), { instanceOf: RangeError, message: 'Expected positive integer for outputSize but received NaN of type number' }],
  ['Column options null', () => new ColumnParallelLinear(3, 4, null as never), { instanceOf: TypeError, message: 'Expected object for options but received null' }],
  ['Column options array', () => new ColumnParallelLinear(3, 4, [] as never), { instanceOf: TypeError, message: 'Expected object for options but received [] of type array' }],
  ['Column bias string', () => new ColumnParallelLinear(3, 4, { bias: 'yes' as never }), { instanceOf: TypeError, message: 'Expected boolean for bias but received yes of type string' }],
  ['Column gatherOutput 1', () => new ColumnParallelLinear(3, 4, { gatherOutput: 1 as never }), { instanceOf: TypeError, message: 'Expected boolean for gatherOutput but received 1 of type number' }],
  ['Column skipBiasAdd null', () => new ColumnParallelLinear(3, 4, { skipBiasAdd: null as never }), { instanceOf: TypeError, message: 'Expected boolean for skipBiasAdd but received null' }],
  ['Column dtype int8', () => new ColumnParallelLinear(3, 4, { dtype: 'int8' as never }), { instanceOf: RangeError, message: "Expected one of 'float32', 'float16', 'bfloat16' for dtype but received int8 of type string" }],
  ['Column device gpu', () => new ColumnParallelLinear(3, 4, { device: 'gpu' as never }), { instanceOf: RangeError, message: "Expected 'cpu', 'cuda' or 'cuda:N' for device but received gpu of type string" }],
  ['Column device number', () => new ColumnParallelLinear(3, 4, { device: 0 as never }), { instanceOf: TypeError, message: "Expected 'cpu', 'cuda' or 'cuda:N' for device but received 0 of type number" }],
  ['Column group object', () => new ColumnParallelLinear(3, 4, { group: {} as never }), { instanceOf: TypeError, message: 'Expected ProcessGroup for group but received [object Object] of type object' }],
  ['Column group null', () => new ColumnParallelLinear(3, 4, { group: null as never }), { instanceOf: TypeError, message: 'Expected ProcessGroup for group but received null' }],
  ['Row inputSize -1', () => new RowParallelLinear(-1, 4), { instanceOf: RangeError, message: 'Expected positive integer for inputSize but received -1 of type number' }],
  ['Row inputIsParallel string', () => new RowParallelLinear(3, 4, { inputIsParallel: 'no' as never }), { instanceOf: TypeError, message: 'Expected boolean for inputIsParallel but received no of type string' }],
  ['Row reduceResults 0', () => new RowParallelLinear(3, 4, { reduceResults: 0 as never }), { instanceOf: TypeError, message: 'Expected boolean for reduceResults but received 0 of type number' }],
  ['Row reduceResults false with bias', () => new RowParallelLinear(3, 4, { reduceResults: false }), { instanceOf: RangeError, message: /reduceResults = false with a bias/ }],
  ['Replicated outputSize {}', () => new ReplicatedLinear(3, {} as never), { instanceOf: TypeError, message: 'Expected positive integer for outputSize but received [object Object] of type object' }],
  ['Merged outputSizes not array', () => new MergedColumnParallelLinear(3, 4 as never), { instanceOf: TypeError, message: 'Expected non-empty array of positive integers for outputSizes but received 4 of type number' }],
  ['Merged outputSizes empty', () => new MergedColumnParallelLinear(3, []), { instanceOf: TypeError, message: 'Expected non-empty array of positive integers for outputSizes but received [] of type array' }],
  ['Merged outputSizes[1] 0', () => new MergedColumnParallelLinear(3, [4, 0]), { instanceOf: RangeError, message: 'Expected positive integer for outputSizes[1] but received 0 of type number' }],
  ['QKV hiddenSize 0', () => new QKVParallelLinear(0, 2, 4, 2), { instanceOf: RangeError, message: 'Expected positive integer for hiddenSize but received 0 of type number' }],
  ['QKV headSize 1.5', () => new QKVParallelLinear(8, 1.5, 4, 2), { instanceOf: RangeError, message: 'Expected positive integer for headSize but received 1.5 of type number' }],
  ['QKV totalNumHeads string', () => new QKVParallelLinear(8, 2, '4' as never, 2), { instanceOf: TypeError, message: 'Expected positive integer for totalNumHeads but received 4 of type string' }],
  ['QKV totalNumKvHeads 0', () => new QKVParallelLinear(8, 2, 4, 0), { instanceOf: RangeError, message: 'Expected positive integer for totalNumKvHeads but received 0 of type number' }],
  ['QKV gatherOutput', () => new QKVParallelLinear(8, 2, 4, 2, { gatherOutput: true }), { instanceOf: RangeError, message: 'QKVParallelLinear does not support gatherOutput (attention consumes the sharded heads)' }],
  ['Embedding numEmbeddings 0', () => new VocabParallelEmbedding(0, 4), { instanceOf: RangeError, message: 'Expected positive integer for numEmbeddings but received 0 of type number' }],
  ['Embedding embeddingDim -2', () => new VocabParallelEmbedding(10, -2), { instanceOf: RangeError, message: 'Expected positive integer for embeddingDim but received -2 of type number' }],
  ['Embedding paddingSize 0', () => new VocabParallelEmbedding(10, 2, { paddingSize: 0 }), { instanceOf: RangeError, message: 'Expected positive integer for paddingSize but received 0 of type number' }],
  ['weight before load', () => new ColumnParallelLinear(3, 4).weight, { instanceOf: TpkitError, code: 'NOT_INITIALIZED', message: 'ColumnParallelLinear.weight has not been loaded (call loadWeight / loadBias first)' }],
  ['bias before load', () => new RowParallelLinear(3, 4).bias, { instanceOf: TpkitError, code: 'NOT_INITIALIZED', message: 'RowParallelLinear.bias has not been loaded (call loadWeight / loadBias first)' }],
  ['embedding weight before load', () => new VocabParallelEmbedding(10, 2).weight, { instanceOf: TpkitError, code: 'NOT_INITIALIZED' }],
  ['layer used after dispose', () => { const l = new ReplicatedLinear(3, 4); l.dispose(); l.dispose(); return l.weight; }, { instanceOf: TpkitError, code: 'DISPOSED', message: 'ReplicatedLinear was used after dispose()' }],
  ['embedding used after dispose', () => { const l = new VocabParallelEmbedding(10, 2); l.dispose(); return l.weight; }, { instanceOf: TpkitError, code: 'DISPOSED' }],
  ['parallelState layout 0 world', () => parallelState.modelParallelLayout(0, 1), { instanceOf: RangeError, message: 'Expected positive integer for worldSize but received 0 of type number' }],
  ['tensorModelParallelAllReduce not a tensor', () => parallelState.tensorModelParallelAllReduce([1] as never), { instanceOf: TypeError, message: 'Expected Tensor for t but received [1] of type array' }],
];

for (const [name, fn, err] of SYNC) {
  test(`bad input: ${name}`, async (t) => {
    const { code, ...rest } = err;
    const e = await t.throwsAsync(async () => fn(), rest);
    if (code) t.is((e as TpkitError).code, code);
  });
}

const ASYNC: Case[] = [
  ['loadWeight wrong shape', () => new ColumnParallelLinear(3, 4).loadWeight(Tensor.zeros([3, 4])), { instanceOf: RangeError, message: 'Expected fullWeight of shape [4, 3] but received [3, 4]' }],
  ['loadWeight not a tensor', () => new ColumnParallelLinear(3, 4).loadWeight([1, 2] as never), { instanceOf: TypeError, message: 'Expected Tensor for fullWeight but received [1, 2] of type array' }],
  ['loadWeight disposed tensor', () => new ColumnParallelLinear(3, 4).loadWeight(disposed()), { instanceOf: TpkitError, code: 'DISPOSED' }],
  ['loadWeight shardId on single part', () => new ColumnParallelLinear(3, 4).loadWeight(w(), 0), { instanceOf: TypeError, message: 'Expected undefined (this layer has a single part) for shardId but received 0 of type number' }],
  ['loadBias wrong shape', () => new ColumnParallelLinear(3, 4).loadBias(Tensor.zeros([3])), { instanceOf: RangeError, message: 'Expected fullBias of shape [4] but received [3]' }],
  ['loadBias without bias', () => new ColumnParallelLinear(3, 4, { bias: false }).loadBias(Tensor.zeros([4])), { instanceOf: TpkitError, code: 'UNSUPPORTED', message: 'ColumnParallelLinear was created with bias: false' }],
  ['Row loadWeight wrong shape', () => new RowParallelLinear(3, 4).loadWeight(Tensor.zeros([4, 4])), { instanceOf: RangeError, message: 'Expected fullWeight of shape [4, 3] but received [4, 4]' }],
  ['Merged shardId 2 of 2', () => new MergedColumnParallelLinear(3, [4, 4]).loadWeight(w(), 2), { instanceOf: RangeError, message: 'Expected integer in [0, 2) for shardId but received 2 of type number' }],
  ['Merged shardId string', () => new MergedColumnParallelLinear(3, [4, 4]).loadWeight(w(), 'q'), { instanceOf: TypeError, message: 'Expected integer in [0, 2) for shardId but received q of type string' }],
  ['Merged part wrong shape', () => new MergedColumnParallelLinear(3, [4, 5]).loadWeight(w(), 1), { instanceOf: RangeError, message: 'Expected fullWeight of shape [5, 3] but received [4, 3]' }],
  ['Merged fused wrong shape', () => new MergedColumnParallelLinear(3, [4, 5]).loadWeight(w()), { instanceOf: RangeError, message: 'Expected fullWeight of shape [9, 3] but received [4, 3]' }],
  ['QKV shardId x', () => new QKVParallelLinear(8, 2, 4, 2).loadWeight(Tensor.zeros([8, 8]), 'x'), { instanceOf: RangeError, message: "Expected one of 'q', 'k', 'v' for shardId but received x of type string" }],
  ['QKV k wrong shape', () => new QKVParallelLinear(8, 2, 4, 2).loadWeight(Tensor.zeros([8, 8]), 'k'), { instanceOf: RangeError, message: 'Expected fullWeight of shape [4, 8] but received [8, 8]' }],
  ['forward before load', () => new ReplicatedLinear(3, 4).forward(Tensor.zeros([2, 3])), { instanceOf: TpkitError, code: 'NOT_INITIALIZED' }],
  ['forward wrong input width', async () => { const l = new ReplicatedLinear(3, 4, { bias: false }); await l.loadWeight(Tensor.zeros([4, 3])); return l.forward(Tensor.zeros([2, 5])); }, { instanceOf: RangeError, message: 'ReplicatedLinear: expected input of shape [..., 3] but received [2, 5]' }],
  ['forward not a tensor', async () => { const l = new ReplicatedLinear(3, 4, { bias: false }); await l.loadWeight(Tensor.zeros([4, 3])); return l.forward({} as never); }, { instanceOf: TypeError, message: 'Expected Tensor for x but received [object Object] of type object' }],
  ['forward disposed input', async () => { const l = new ReplicatedLinear(4, 3, { bias: false }); await l.loadWeight(Tensor.zeros([3, 4])); return l.forward(disposed()); }, { instanceOf: TpkitError, code: 'DISPOSED' }],
  ['forward bfloat16 input on cpu', async () => { const l = new ReplicatedLinear(3, 4, { bias: false }); await l.loadWeight(Tensor.zeros([4, 3])); return l.forward(Tensor.zeros([2, 3], { dtype: 'bfloat16' })); }, { instanceOf: TypeError, message: "ReplicatedLinear: input is bfloat16 but the layer's parameters are float32 (cast with t.to('float32'))" }],
  ['Row forward full input width', async () => { const l = new RowParallelLinear(3, 4, { bias: false, inputIsParallel: false }); await l.loadWeight(Tensor.zeros([4, 3])); return l.forward(Tensor.zeros([2, 2])); }, { instanceOf: RangeError, message: 'RowParallelLinear: expected input of shape [..., 3] but received [2, 2]' }],
  ['Embedding loadWeight wrong shape', () => new VocabParallelEmbedding(10, 2).loadWeight(Tensor.zeros([10, 3])), { instanceOf: RangeError, message: 'Expected fullWeight of shape [10, 2] but received [10, 3]' }],
  ['Embedding id out of range', async () => { const e = new VocabParallelEmbedding(10, 2); await e.loadWeight(Tensor.zeros([10, 2])); return e.forward([3, 10]); }, { instanceOf: RangeError, message: 'Expected token id in [0, 10) for ids[1] but received 10' }],
  ['Embedding negative id', async () => { const e = new VocabParallelEmbedding(10, 2); await e.loadWeight(Tensor.zeros([10, 2])); return e.forward([-1]); }, { instanceOf: RangeError, message: 'Expected token id in [0, 10) for ids[0] but received -1' }],
  ['Embedding fractional id', async () => { const e = new VocabParallelEmbedding(10, 2); await e.loadWeight(Tensor.zeros([10, 2])); return e.forward([1.5]); }, { instanceOf: RangeError, message: 'Expected token id in [0, 10) for ids[0] but received 1.5' }],
  ['Embedding ids shape mismatch', async () => { const e = new VocabParallelEmbedding(10, 2); await e.loadWeight(Tensor.zeros([10, 2])); return e.forward([1, 2, 3], [2, 2]); }, { instanceOf: RangeError, message: 'Expected 4 ids for shape [2, 2] but received 3' }],
  ['Embedding ids not array', async () => { const e = new VocabParallelEmbedding(10, 2); await e.loadWeight(Tensor.zeros([10, 2])); return e.forward(5 as never); }, { instanceOf: TypeError, message: 'Expected array of token ids for ids but received 5 of type number' }],
  ['loadWeightFrom not a SafetensorsFile', () => new ColumnParallelLinear(3, 4).loadWeightFrom({} as never, ''), { instanceOf: TypeError, message: 'Expected SafetensorsFile for file but received [object Object] of type object' }],
  ['initializeModelParallel tp 0', () => parallelState.initializeModelParallel({ tensorParallelSize: 0 }), { instanceOf: RangeError, message: 'Expected positive integer for tensorParallelSize but received 0 of type number' }],
  ['initializeModelParallel pp string', () => parallelState.initializeModelParallel({ tensorParallelSize: 1, pipelineParallelSize: 'x' as never }), { instanceOf: TypeError, message: 'Expected positive integer for pipelineParallelSize but received x of type string' }],
];

for (const [name, fn, err] of ASYNC) {
  test(`bad input: ${name}`, async (t) => {
    const { code, ...rest } = err;
    const e = await t.throwsAsync(async () => fn(), rest);
    if (code) t.is((e as TpkitError).code, code);
  });
}
