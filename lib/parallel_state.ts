/**
 * Model-parallel state: which ranks form the tensor-parallel (TP), pipeline-parallel (PP), data-parallel
 * (DP) and expert-parallel (EP) groups of this process, following vLLM's `parallel_state.py` and Megatron-LM's `parallel_state`.
 *
 * Lifecycle:
 * 1. `await initDistributed()` — joins the job, returns the world group;
 * 2. `await parallelState.initializeModelParallel({ tensorParallelSize, pipelineParallelSize })` — every rank
 *    creates every group (in the same order), joining those it belongs to;
 * 3. layers and `tensorModelParallelAllReduce` use the groups;
 * 4. `parallelState.destroyModelParallel()` — ends them (the world group stays).
 *
 * Layout: ranks are laid out TP fastest, then PP, then DP: global rank = dp·(pp·tp) + p·tp + t. With world 8,
 * tp 2, pp 2 the TP groups are [0,1] [2,3] [4,5] [6,7], the PP groups [0,2] [1,3] [4,6] [5,7] and the DP groups
 * [0,4] [1,5] [2,6] [3,7] (vLLM's `initialize_model_parallel`).
 *
 * Expert parallelism (mixture-of-experts layers, lib/layers/moe.ts): by default the EP group spans the TP × DP
 * ranks of a pipeline stage, as vLLM's `enable_expert_parallel` (world 8, tp 2, pp 2: EP [0,1,4,5] [2,3,6,7]);
 * `expertParallelSize: K` splits each stage's TP × DP ranks (ordered by DP replica, then TP rank) into
 * consecutive groups of K (K must divide tp × dp). An EP group with the same ranks as the TP, DP or world group
 * is that group (no second communicator).
 *
 * Each group is a private singleton behind an accessor that throws `NOT_INITIALIZED` when it does not exist.
 * Layers also accept an explicit `group`, so a program can hold two independent model-parallel setups.
 *
 * @module
 */
import { TpkitError } from './errors';
import { getWorldGroup } from './distributed/init';
import type { ProcessGroup } from './distributed/process_group';
import { Tensor, checkTensor } from './tensor';
import { options, positiveInteger } from './validate';

/** Options of {@link initializeModelParallel}. */
export interface ModelParallelOptions {
  /** Ranks per tensor-parallel group (positive integer dividing the world size). */
  tensorParallelSize: number;
  /** Pipeline stages (default 1); tp × pp must divide the world size. */
  pipelineParallelSize?: number;
  /**
   * Ranks per expert-parallel group (default tp × dp: every rank of a pipeline stage); must divide tp × dp.
   * MoE layers place whole experts on the ranks of this group and dispatch tokens to them with all-to-all.
   */
  expertParallelSize?: number;
  /** The world group to split (default: the one returned by the last `initDistributed()`). */
  world?: ProcessGroup;
}

/** Pure layout: the rank lists of every TP, PP and DP group for a world size (no communication). */
export interface ModelParallelLayout {
  /** Global ranks of each tensor-parallel group (consecutive ranks). */
  tensorParallelGroups: number[][];
  /** Global ranks of each pipeline-parallel group (stride tp), in stage order. */
  pipelineParallelGroups: number[][];
  /** Global ranks of each data-parallel group (stride tp·pp), sorted by first rank. */
  dataParallelGroups: number[][];
}

interface State {
  world: ProcessGroup;
  tp: ProcessGroup;
  pp: ProcessGroup;
  dp: ProcessGroup;
  ep: ProcessGroup;
  /** Whether `ep` was created for EP (destroyed with the state) rather than shared with tp / dp / world. */
  epOwned: boolean;
  tpSize: number;
  ppSize: number;
  epSize: number;
  ppRanks: readonly number[];
  /** Settles when every group connected (rejects, withdrawing the state, when one failed). */
  ready: Promise<void>;
}

let state: State | null = null;

/**
 * Computes the TP / PP / DP rank lists for `worldSize` ranks, TP fastest, then PP, then DP (vLLM).
 *
 * @throws TypeError / RangeError when a size is not a positive integer or tp × pp does not divide worldSize
 */
export function modelParallelLayout(worldSize: number, tensorParallelSize: number, pipelineParallelSize = 1): ModelParallelLayout {
  positiveInteger(worldSize, 'worldSize');
  positiveInteger(tensorParallelSize, 'tensorParallelSize');
  positiveInteger(pipelineParallelSize, 'pipelineParallelSize');
  const mp = tensorParallelSize * pipelineParallelSize;
  if (worldSize % mp !== 0) {
    throw new RangeError(
      `world size ${worldSize} is not divisible by tensorParallelSize ${tensorParallelSize} × pipelineParallelSize ${pipelineParallelSize} = ${mp}`,
    );
  }
  const dpSize = worldSize / mp;
  const rank = (d: number, p: number, t: number) => d * mp + p * tensorParallelSize + t;
  const tensorParallelGroups: number[][] = [];
  const pipelineParallelGroups: number[][] = [];
  const dataParallelGroups: number[][] = [];
  for (let d = 0; d < dpSize; d++) {
    for (let p = 0; p < pipelineParallelSize; p++) {
      tensorParallelGroups.push(Array.from({ length: tensorParallelSize }, (_, t) => rank(d, p, t)));
    }
    for (let t = 0; t < tensorParallelSize; t++) {
      pipelineParallelGroups.push(Array.from({ length: pipelineParallelSize }, (_, p) => rank(d, p, t)));
    }
  }
  for (let p = 0; p < pipelineParallelSize; p++) {
    for (let t = 0; t < tensorParallelSize; t++) {
      dataParallelGroups.push(Array.from({ length: dpSize }, (_, d) => rank(d, p, t)));
    }
  }
  dataParallelGroups.sort((a, b) => a[0]! - b[0]!);
  return { tensorParallelGroups, pipelineParallelGroups, dataParallelGroups };
}

/**
 * The expert-parallel rank lists for `worldSize` ranks laid out as {@link modelParallelLayout}: each pipeline
 * stage's TP × DP ranks, ordered by DP replica then TP rank, cut into consecutive groups of
 * `expertParallelSize` (default tp × dp: one group per stage, as vLLM's `enable_expert_parallel`). World 8,
 * tp 2, pp 2: [0,1,4,5] [2,3,6,7]; with expertParallelSize 2: [0,1] [4,5] [2,3] [6,7].
 *
 * @throws TypeError / RangeError as modelParallelLayout, and when expertParallelSize does not divide tp × dp
 */
export function expertParallelLayout(worldSize: number, tensorParallelSize: number, pipelineParallelSize = 1, expertParallelSize?: number): number[][] {
  modelParallelLayout(worldSize, tensorParallelSize, pipelineParallelSize);
  if (expertParallelSize !== undefined) positiveInteger(expertParallelSize, 'expertParallelSize');
  const mp = tensorParallelSize * pipelineParallelSize;
  const dpSize = worldSize / mp;
  const stageRanks = tensorParallelSize * dpSize;
  const epSize = expertParallelSize ?? stageRanks;
  if (stageRanks % epSize !== 0) {
    throw new RangeError(
      `expertParallelSize ${epSize} does not divide tensorParallelSize ${tensorParallelSize} × data parallel size ${dpSize} = ${stageRanks} (the ranks of a pipeline stage)`,
    );
  }
  const groups: number[][] = [];
  for (let p = 0; p < pipelineParallelSize; p++) {
    const stage: number[] = [];
    for (let d = 0; d < dpSize; d++) for (let t = 0; t < tensorParallelSize; t++) stage.push(d * mp + p * tensorParallelSize + t);
    for (let i = 0; i < stage.length; i += epSize) groups.push(stage.slice(i, i + epSize));
  }
  return groups;
}

/**
 * Creates the TP, PP, DP and EP groups. Every rank of the world must call it with the same sizes. Calling it again
 * with the same sizes is a no-op (vLLM's `ensure_model_parallel_initialized`).
 *
 * Validation and publication are synchronous: a bad size throws before anything is sent, and the state (the
 * groups and their sizes) is visible as soon as the call returns, so a layer built before the returned Promise
 * settles already shards for the right TP size. The Promise resolves when every group has connected (the
 * groups' operations wait for that on their own); if a group fails to connect it rejects, and the state is
 * withdrawn (the groups destroyed).
 *
 * @returns a Promise that resolves once the groups are connected
 * @throws (synchronously) TypeError / RangeError for bad sizes, or when tp × pp does not divide the world size;
 *   TpkitError `NOT_INITIALIZED` without a world group, `ALREADY_INITIALIZED` when initialized with different
 *   sizes. The Promise rejects with the rendezvous errors of the new groups.
 */
export function initializeModelParallel(opts: ModelParallelOptions): Promise<void> {
  const o = options<ModelParallelOptions>(opts, 'options');
  const tpSize = positiveInteger(o.tensorParallelSize, 'tensorParallelSize');
  const ppSize = o.pipelineParallelSize === undefined ? 1 : positiveInteger(o.pipelineParallelSize, 'pipelineParallelSize');
  const epOption = o.expertParallelSize === undefined ? undefined : positiveInteger(o.expertParallelSize, 'expertParallelSize');
  const world = o.world ?? getWorldGroup();
  if (!world) {
    throw new TpkitError('NOT_INITIALIZED', 'initializeModelParallel: no world group; call initDistributed() first');
  }
  if (state) {
    const epSame = epOption === undefined || epOption === state.epSize;
    if (state.tpSize === tpSize && state.ppSize === ppSize && epSame && state.world === world) return state.ready;
    throw new TpkitError(
      'ALREADY_INITIALIZED',
      `model parallel is already initialized with tensorParallelSize ${state.tpSize}, pipelineParallelSize ${state.ppSize}; ` +
        `requested ${tpSize}, ${ppSize} (call destroyModelParallel() first)`,
    );
  }
  const layout = modelParallelLayout(world.size, tpSize, ppSize);
  const epGroups = expertParallelLayout(world.size, tpSize, ppSize, epOption);
  // Every rank creates every group in the same order; each joins only its own.
  const pick = (lists: number[][]): ProcessGroup => {
    let mine: ProcessGroup | null = null;
    for (const ranks of lists) {
      const g = world.newGroup(ranks);
      if (g.isMember) mine = g;
    }
    return mine!;
  };
  const tp = pick(layout.tensorParallelGroups);
  const pp = pick(layout.pipelineParallelGroups);
  const dp = pick(layout.dataParallelGroups);
  // EP: an existing group when one has the same ranks (every rank decides alike: the layout is the same
  // everywhere), else new groups.
  const epSize = epGroups[0]!.length;
  const ep0 = epGroups[0]!;
  const tp0 = layout.tensorParallelGroups.find((g) => g[0] === ep0[0])!;
  const dp0 = layout.dataParallelGroups.find((g) => g[0] === ep0[0])!;
  const epLikeTp = epSize === tpSize && ep0.every((r, i) => r === tp0[i]);
  const epLikeDp = !epLikeTp && ep0.length === dp0.length && ep0.every((r, i) => r === dp0[i]);
  const epLikeWorld = !epLikeTp && !epLikeDp && epSize === world.size;
  const epOwned = !epLikeTp && !epLikeDp && !epLikeWorld;
  const ep = epLikeTp ? tp : epLikeDp ? dp : epLikeWorld ? world : pick(epGroups);
  const s: State = { world, tp, pp, dp, ep, epOwned, tpSize, ppSize, epSize, ppRanks: pp.ranks, ready: Promise.resolve() };
  s.ready = Promise.all([tp.ready, pp.ready, dp.ready, ep.ready]).then(
    () => undefined,
    (e: unknown) => {
      if (state === s) {
        [tp, pp, dp].forEach((g) => g.destroy());
        if (epOwned) ep.destroy();
        state = null;
      }
      throw e;
    },
  );
  state = s;
  return s.ready;
}

/**
 * True from the moment {@link initializeModelParallel} returned (its groups may still be connecting; their
 * operations wait) until {@link destroyModelParallel}, or until the groups failed to connect.
 */
export function modelParallelIsInitialized(): boolean {
  return state !== null;
}

function need(what: string): State {
  if (!state) {
    throw new TpkitError('NOT_INITIALIZED', `${what} is not initialized; call parallelState.initializeModelParallel() first`);
  }
  return state;
}

/** The tensor-parallel group of this rank. @throws TpkitError `NOT_INITIALIZED` */
export function getTensorModelParallelGroup(): ProcessGroup {
  return need('tensor model parallel group').tp;
}
/** This rank's rank in its TP group. @throws TpkitError `NOT_INITIALIZED` */
export function getTensorModelParallelRank(): number {
  return need('tensor model parallel group').tp.rank;
}
/** Ranks per TP group. @throws TpkitError `NOT_INITIALIZED` */
export function getTensorModelParallelWorldSize(): number {
  return need('tensor model parallel group').tp.size;
}
/** The pipeline-parallel group of this rank. @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelGroup(): ProcessGroup {
  return need('pipeline model parallel group').pp;
}
/** This rank's stage in its PP group. @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelRank(): number {
  return need('pipeline model parallel group').pp.rank;
}
/** Stages per PP group. @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelWorldSize(): number {
  return need('pipeline model parallel group').pp.size;
}
/** Global rank of the first stage of this rank's pipeline. @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelFirstRank(): number {
  return need('pipeline model parallel group').ppRanks[0]!;
}
/** Global rank of the last stage of this rank's pipeline. @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelLastRank(): number {
  const s = need('pipeline model parallel group');
  return s.ppRanks[s.ppRanks.length - 1]!;
}
/** Global rank of the next stage (wrapping around, as Megatron). @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelNextRank(): number {
  const s = need('pipeline model parallel group');
  return s.ppRanks[(s.pp.rank + 1) % s.pp.size]!;
}
/** Global rank of the previous stage (wrapping around, as Megatron). @throws TpkitError `NOT_INITIALIZED` */
export function getPipelineModelParallelPrevRank(): number {
  const s = need('pipeline model parallel group');
  return s.ppRanks[(s.pp.rank - 1 + s.pp.size) % s.pp.size]!;
}
/** True on the first pipeline stage. @throws TpkitError `NOT_INITIALIZED` */
export function isPipelineFirstStage(): boolean {
  return need('pipeline model parallel group').pp.rank === 0;
}
/** True on the last pipeline stage. @throws TpkitError `NOT_INITIALIZED` */
export function isPipelineLastStage(): boolean {
  const s = need('pipeline model parallel group');
  return s.pp.rank === s.pp.size - 1;
}
/** The data-parallel group of this rank. @throws TpkitError `NOT_INITIALIZED` */
export function getDataParallelGroup(): ProcessGroup {
  return need('data parallel group').dp;
}
/** This rank's rank in its DP group. @throws TpkitError `NOT_INITIALIZED` */
export function getDataParallelRank(): number {
  return need('data parallel group').dp.rank;
}
/** Replicas per DP group. @throws TpkitError `NOT_INITIALIZED` */
export function getDataParallelWorldSize(): number {
  return need('data parallel group').dp.size;
}

/**
 * The expert-parallel group of this rank: the ranks among which a MoE layer's experts are split (default: the
 * TP × DP ranks of this rank's pipeline stage). @throws TpkitError `NOT_INITIALIZED`
 */
export function getExpertModelParallelGroup(): ProcessGroup {
  return need('expert model parallel group').ep;
}
/** This rank's rank in its EP group. @throws TpkitError `NOT_INITIALIZED` */
export function getExpertModelParallelRank(): number {
  return need('expert model parallel group').ep.rank;
}
/** Ranks per EP group. @throws TpkitError `NOT_INITIALIZED` */
export function getExpertModelParallelWorldSize(): number {
  return need('expert model parallel group').ep.size;
}

/**
 * All-reduce (sum) across the TP group, in place; returns `t` at once when TP size is 1 (vLLM's
 * `tensor_model_parallel_all_reduce`).
 *
 * @throws TpkitError `NOT_INITIALIZED`, and the group's errors (`TIMEOUT`, `PEER_LOST`, …)
 */
export async function tensorModelParallelAllReduce(t: Tensor): Promise<Tensor> {
  checkTensor(t, 't');
  const g = getTensorModelParallelGroup();
  if (g.size === 1) return t;
  return g.allReduce(t);
}

/**
 * All-gather across the TP group along `dim` (default −1): a new tensor with shape[dim] × TP size.
 *
 * @throws TpkitError `NOT_INITIALIZED`, RangeError for a bad dim, and the group's errors
 */
export async function tensorModelParallelAllGather(t: Tensor, dim = -1): Promise<Tensor> {
  checkTensor(t, 't');
  return getTensorModelParallelGroup().allGather(t, { dim });
}

/** Destroys the TP, PP, DP and EP groups (not the world group). Idempotent. */
export function destroyModelParallel(): void {
  if (!state) return;
  const s = state;
  state = null;
  s.tp.destroy();
  s.pp.destroy();
  s.dp.destroy();
  if (s.epOwned) s.ep.destroy();
}
