/**
 * `tpkit plan`'s library: layout enumeration with memory, communication and time estimates
 * ({@link planLayouts}), the formulas it is built from, the built-in model shapes, the hardware defaults,
 * and the pipeline schedule simulator and timeline drawing.
 *
 * @module
 */
export {
  planLayouts, layoutRejection, shardElements, rankWeightBytes, rankKvCacheBytes, allReduceMessageBytes, ringAllReduceFactor,
  ringAllGatherFactor, tpForwardBytes, transferTimeUs, allReduceTimeUs, allGatherTimeUs, sendRecvTimeUs, pipelineBubble, DTYPE_BYTES,
} from './estimate';
export type { PlanDType, PlanInput, ResolvedPlanInput, PlanResult, LayoutPlan, StagePlan, PhaseEstimate, RejectedLayout, ShardElements, MoEPlan } from './estimate';
export { GPUS, LINKS, linkFromBench } from './hardware';
export type { GpuSpec, GpuDefault, LinkSpec } from './hardware';
export { BUILTIN_MODELS, builtinModelConfig } from './models';
export { simulateFillDrain, simulatedTimeline, measuredTimeline, timelineSvg } from './schedule';
export type { Fraction, PipelineSimulation, TimelineBox, TimelineRow, TimelineSvgOptions } from './schedule';
