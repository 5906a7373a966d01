/**
 * `tpkit bench <kind>`: the microbenchmarks' command line (lib/cli.ts dispatches `tpkit bench …` here).
 *
 *   tpkit bench collectives --op all_reduce -b 8 -e 64M -f 2 -n 20 -w 5 [--nproc 2] [--json F] [--plot F.svg] [--peers all|native,torch,mpi]
 *   tpkit bench gemm [--max-size 4096] [--models 8b,70b] [--tokens 1,16,512,4096] [--peers all]
 *   tpkit bench layers [--tp 1,2,4] [--model 8b] [--tokens 1,16,512]
 *   tpkit bench moe [--ep 1,2,4] [--experts 8] [--top-k 2] [--hidden 512] [--intermediate 1024] [--tokens 64] [--skew 0]
 *   tpkit bench model [--model-dir DIR] [--tp 1,2,4] [--pp 1,2] [--prompt-tokens 16] [--new-tokens 8] [--runs 3]
 *   tpkit bench plot a.json b.json --out x.svg
 *   tpkit bench schema collectives|gemm|layers|model
 *
 * Options are parsed into one plain object per command and passed down explicitly (no option globals).
 *
 * @module
 */
import fs from 'node:fs';
import { Argument, Command, CommanderError, Option } from 'commander';
import { COLLECTIVE_NAMES, type CollectiveName } from './collectives';
import { collectivesCommand, type CollectivePeerName, type CollectivesOptions, type PeerName } from './collectives_bench';
import { BENCH_REDOPS, type BenchRedop } from './data';
import { gemmCommand, MODEL_NAMES, type GemmOptions } from './gemm';
import { layersCommand, type LayersOptions } from './layers';
import { defaultModelDir, modelCommand, type ModelBenchOptions } from './model_bench';
import { moeCommand, type MoEBenchOptions } from './moe_bench';
import { MOE_SCHEMA } from './schema';
import { intListParser, intParser, listOf, sizeParser } from './options';
import { renderCollectivesPlot, type PlotMetric } from './plot';
import { writeFile } from './report';
import { SCHEMAS, validate, COLLECTIVES_SCHEMA, type CollectivesResult } from './schema';
import { DTYPES, type DType } from '../lib/tensor';
import type { SyncMode } from './harness';

const PEERS: readonly PeerName[] = ['native', 'torch'];
const COLLECTIVE_PEERS: readonly CollectivePeerName[] = [...PEERS, 'mpi'];

function collectivesCmd(parent: Command, run: (o: CollectivesOptions) => Promise<void>): void {
  parent
    .command('collectives')
    .description('nccl-tests-style sweep of one collective on every rank (re-launches itself on --nproc ranks outside a launcher)')
    .addOption(new Option('--op <name>', 'collective').choices(COLLECTIVE_NAMES).default('all_reduce'))
    .addOption(new Option('-b, --minbytes <size>', 'smallest message (bytes; K, M, G suffixes)').argParser(sizeParser).default(8, '8'))
    .addOption(new Option('-e, --maxbytes <size>', 'largest message').argParser(sizeParser).default(64 * 2 ** 20, '64M'))
    .addOption(new Option('-f, --stepfactor <n>', 'multiply the size by n between steps').argParser(intParser(1)).default(2))
    .addOption(new Option('-n, --iters <n>', 'timed iterations per size').argParser(intParser(1)).default(20))
    .addOption(new Option('-w, --warmup-iters <n>', 'untimed iterations per size').argParser(intParser(0)).default(5))
    .addOption(new Option('-d, --dtype <type>', 'element type').choices(['float32', 'float16', 'bfloat16']).default('float32'))
    .addOption(new Option('-o, --redop <op>', 'reduction of all_reduce / reduce_scatter').choices(BENCH_REDOPS).default('sum'))
    .addOption(new Option('-r, --root <rank>', 'root of broadcast').argParser(intParser(0)).default(0))
    .addOption(new Option('--check', 'count elements differing from the reference (#wrong) after every size').default(true))
    .addOption(new Option('--no-check', 'skip the correctness check (#wrong prints N/A)'))
    .addOption(new Option('--backend <name>', 'process-group backend').choices(['gloo', 'nccl']).default('gloo'))
    .addOption(new Option('--device <device>', 'where tensors live (default: cuda for nccl, else cpu)').choices(['cpu', 'cuda']))
    .addOption(new Option('--sync <mode>', 'each: await every op; batch: enqueue all iterations, await once (default: batch on cuda, else each)').choices(['each', 'batch']))
    .addOption(new Option('--nproc <n>', 'ranks to launch when not already under a launcher').argParser(intParser(1)).default(2))
    .addOption(new Option('--repeat <k>', 'run the sweep (then the peers) k times and report per-size medians (self-launch only)').argParser(intParser(1)).default(1))
    .addOption(new Option('--json <file>', 'write the result as JSON (schema: tpkit bench schema collectives)'))
    .addOption(new Option('--plot <file>', 'write busbw vs size as SVG'))
    .addOption(new Option('--peers <list>', 'compare with native (raw C++ Gloo), torch (PyTorch gloo), mpi (raw Open MPI, shared memory), all, or none').argParser(listOf(COLLECTIVE_PEERS)).default([], 'none'))
    .addOption(new Option('--no-model', 'skip the ring all-reduce cost model fit'))
    .addOption(new Option('--timeout-ms <ms>', 'timeout of the rendezvous and of every collective').argParser(intParser(1)))
    .action(async (flags: Record<string, unknown>) => {
      const backend = flags.backend as 'gloo' | 'nccl';
      const device = (flags.device as 'cpu' | 'cuda' | undefined) ?? (backend === 'nccl' ? 'cuda' : 'cpu');
      const o: CollectivesOptions = {
        op: flags.op as CollectiveName,
        minBytes: flags.minbytes as number,
        maxBytes: flags.maxbytes as number,
        stepFactor: flags.stepfactor as number,
        iters: flags.iters as number,
        warmup: flags.warmupIters as number,
        dtype: flags.dtype as DType,
        redop: flags.redop as BenchRedop,
        root: flags.root as number,
        check: flags.check as boolean,
        backend,
        device,
        sync: (flags.sync as SyncMode | undefined) ?? (device === 'cuda' ? 'batch' : 'each'),
        nproc: flags.nproc as number,
        repeat: flags.repeat as number,
        peers: flags.peers as CollectivePeerName[],
        model: flags.model as boolean,
        ...(flags.json ? { json: flags.json as string } : {}),
        ...(flags.plot ? { plot: flags.plot as string } : {}),
        ...(flags.timeoutMs ? { timeoutMs: flags.timeoutMs as number } : {}),
      };
      if (o.minBytes > o.maxBytes) throw new CommanderError(2, 'tpkit.bench', `error: --minbytes ${o.minBytes} is larger than --maxbytes ${o.maxBytes}`);
      await run(o);
    });
}

/**
 * Entry point of `tpkit bench`: parses `argv` (the arguments after `bench`), runs the benchmark and
 * returns the exit code (it never calls process.exit).
 *
 * @returns 0 on success; 1 when a run failed or the check found wrong elements; 2 for a usage error
 */
export async function benchMain(argv: string[]): Promise<number> {
  let code = 0;
  const program = new Command('tpkit bench')
    .description('Microbenchmarks of tpkit: collectives (nccl-tests style), GEMM, parallel layers, whole models')
    .exitOverride()
    .showHelpAfterError('(tpkit bench <kind> --help lists the options)')
    .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });

  // Re-launched ranks get the same command line (argv), so they parse the same options.
  collectivesCmd(program, async (o) => {
    code = await collectivesCommand(o, argv);
  });

  program
    .command('gemm')
    .description('GEMM time and TFLOP/s: square sizes and the GEMMs of Llama-3 layers')
    .addOption(new Option('--min-size <n>', 'smallest square size').argParser(intParser(1)).default(256))
    .addOption(new Option('--max-size <n>', 'largest square size (doubling from --min-size); 0: no squares').argParser(intParser(0)).default(8192))
    .addOption(new Option('--models <list>', `layer GEMMs of ${MODEL_NAMES.join(', ')}, all, or none`).argParser(listOf(MODEL_NAMES)).default([...MODEL_NAMES], 'all'))
    .addOption(new Option('--tokens <list>', 'token counts (M) of the layer GEMMs').argParser(intListParser).default([1, 16, 512, 4096], '1,16,512,4096'))
    .addOption(new Option('--tp <n>', 'tensor-parallel size: layer GEMMs use one rank\'s shard').argParser(intParser(1)).default(1))
    .addOption(new Option('--max-gflop <n>', 'skip GEMMs of more than n GFLOP (2·M·N·K / 1e9)').argParser(intParser(1)))
    .addOption(new Option('-n, --iters <n>', 'timed iterations').argParser(intParser(1)).default(10))
    .addOption(new Option('-w, --warmup-iters <n>', 'untimed iterations').argParser(intParser(0)).default(2))
    .addOption(new Option('-d, --dtype <list>', 'element types, comma-separated (the cpu backend computes float32 only)').argParser(listOf(DTYPES)).default(['float32'], 'float32'))
    .addOption(new Option('--device <device>', 'cpu or cuda').choices(['cpu', 'cuda']).default('cpu'))
    .addOption(new Option('--threads <n>', 'OpenBLAS threads (default: OpenBLAS\'s own, usually the core count)').argParser(intParser(1)))
    .addOption(new Option('--peers <list>', 'compare with native (raw OpenBLAS), torch (torch.matmul), all, or none').argParser(listOf(PEERS)).default([], 'none'))
    .addOption(new Option('--repeat <k>', 'time each GEMM (then its peers) k times and report medians').argParser(intParser(1)).default(1))
    .addOption(new Option('--json <file>', 'write the result as JSON (schema: tpkit bench schema gemm)'))
    .action(async (flags: Record<string, unknown>) => {
      const o: GemmOptions = {
        minSize: flags.minSize as number,
        maxSize: flags.maxSize as number,
        models: flags.models as GemmOptions['models'],
        tokens: flags.tokens as number[],
        tp: flags.tp as number,
        iters: flags.iters as number,
        warmup: flags.warmupIters as number,
        dtypes: flags.dtype as DType[],
        device: flags.device as 'cpu' | 'cuda',
        peers: flags.peers as PeerName[],
        repeat: flags.repeat as number,
        ...(flags.maxGflop ? { maxGflop: flags.maxGflop as number } : {}),
        ...(flags.threads ? { threads: flags.threads as number } : {}),
        ...(flags.json ? { json: flags.json as string } : {}),
      };
      code = await gemmCommand(o);
    });

  program
    .command('layers')
    .description('Column→Row parallel MLP block: latency and the share spent in the all-reduce, per TP size')
    .addOption(new Option('--tp <list>', 'tensor-parallel sizes (one launch each)').argParser(intListParser).default([1, 2, 4], '1,2,4'))
    .addOption(new Option('--model <name>', 'Llama-3 MLP shape').choices(MODEL_NAMES).default('llama3-8b'))
    .addOption(new Option('--hidden <n>', 'override the hidden size').argParser(intParser(1)))
    .addOption(new Option('--intermediate <n>', 'override the intermediate size').argParser(intParser(1)))
    .addOption(new Option('--tokens <list>', 'token counts: ≤ 16 decode, more prefill').argParser(intListParser).default([1, 16, 512, 4096], '1,16,512,4096'))
    .addOption(new Option('--max-tokens <n>', 'drop token counts above n (CPU)').argParser(intParser(1)))
    .addOption(new Option('-n, --iters <n>', 'timed iterations').argParser(intParser(1)).default(10))
    .addOption(new Option('-w, --warmup-iters <n>', 'untimed iterations').argParser(intParser(0)).default(2))
    .addOption(new Option('--backend <name>', 'process-group backend').choices(['gloo', 'nccl']).default('gloo'))
    .addOption(new Option('--device <device>', 'where tensors live (default: cuda for nccl, else cpu)').choices(['cpu', 'cuda']))
    .addOption(new Option('--json <file>', 'write the result as JSON (schema: tpkit bench schema layers)'))
    .addOption(new Option('--timeout-ms <ms>', 'timeout of the rendezvous and of every collective').argParser(intParser(1)))
    .action(async (flags: Record<string, unknown>) => {
      const backend = flags.backend as 'gloo' | 'nccl';
      const o: LayersOptions = {
        tp: flags.tp as number[],
        model: flags.model as LayersOptions['model'],
        tokens: (flags.tokens as number[]).filter((t) => flags.maxTokens === undefined || t <= (flags.maxTokens as number)),
        iters: flags.iters as number,
        warmup: flags.warmupIters as number,
        backend,
        device: (flags.device as 'cpu' | 'cuda' | undefined) ?? (backend === 'nccl' ? 'cuda' : 'cpu'),
        ...(flags.hidden ? { hidden: flags.hidden as number } : {}),
        ...(flags.intermediate ? { intermediate: flags.intermediate as number } : {}),
        ...(flags.json ? { json: flags.json as string } : {}),
        ...(flags.timeoutMs ? { timeoutMs: flags.timeoutMs as number } : {}),
      };
      code = await layersCommand(o, argv);
    });

  program
    .command('model')
    .description('a whole model\'s prefill tokens/s and decode ms/token per (TP, PP) layout, with a transformers peer')
    .option('--model-dir <dir>', 'Hugging Face model directory (default: the main job\'s checkpoint, .checkpoints/llama-3-8b-random-2-layers)')
    .addOption(new Option('--tp <list>', 'tensor-parallel sizes').argParser(intListParser).default([1, 2, 4], '1,2,4'))
    .addOption(new Option('--pp <list>', 'pipeline sizes').argParser(intListParser).default([1, 2], '1,2'))
    .addOption(new Option('--max-world <n>', 'skip layouts with TP × PP above n').argParser(intParser(1)).default(4))
    .addOption(new Option('--prompt-tokens <n>', 'prompt length').argParser(intParser(1)).default(16))
    .addOption(new Option('--new-tokens <n>', 'greedy tokens generated per run').argParser(intParser(1)).default(8))
    .addOption(new Option('--runs <n>', 'timed generate calls per layout (median reported)').argParser(intParser(1)).default(3))
    .addOption(new Option('--device <device>', 'where parameters live (process groups: gloo)').choices(['cpu', 'cuda']).default('cpu'))
    .addOption(new Option('--peers <which>', 'all: also run bench/peers/hf_model_peer.py (torch + transformers); none').choices(['all', 'none']).default('all'))
    .addOption(new Option('--layout <TPxPP>', 'the layout of this launch (set by the self-launch)').hideHelp())
    .addOption(new Option('--json <file>', 'write the result as JSON (schema: tpkit bench schema model)'))
    .addOption(new Option('--timeout-ms <ms>', 'timeout of the rendezvous and of every collective').argParser(intParser(1)))
    .action(async (flags: Record<string, unknown>) => {
      const o: ModelBenchOptions = {
        modelDir: (flags.modelDir as string | undefined) ?? defaultModelDir(),
        tp: flags.tp as number[],
        pp: flags.pp as number[],
        maxWorld: flags.maxWorld as number,
        promptTokens: flags.promptTokens as number,
        newTokens: flags.newTokens as number,
        runs: flags.runs as number,
        device: flags.device as 'cpu' | 'cuda',
        peers: flags.peers as 'all' | 'none',
        ...(flags.layout ? { layout: flags.layout as string } : {}),
        ...(flags.json ? { json: flags.json as string } : {}),
        ...(flags.timeoutMs ? { timeoutMs: flags.timeoutMs as number } : {}),
      };
      code = await modelCommand(o, argv);
    });

  program
    .command('moe')
    .description('the FusedMoE layer per expert-parallel size: dispatch / combine time, load balance, all-to-all busbw')
    .addOption(new Option('--ep <list>', 'expert-parallel sizes (each divides --experts)').argParser(intListParser).default([1, 2, 4], '1,2,4'))
    .addOption(new Option('--experts <n>', 'experts per layer').argParser(intParser(1)).default(8))
    .addOption(new Option('--top-k <k>', 'experts per token').argParser(intParser(1)).default(2))
    .addOption(new Option('--hidden <n>', 'hidden size').argParser(intParser(1)).default(512))
    .addOption(new Option('--intermediate <n>', 'intermediate size of each expert').argParser(intParser(1)).default(1024))
    .addOption(new Option('--tokens <n>', 'tokens per rank at the largest EP size (the same global batch for every size)').argParser(intParser(1)).default(64))
    .addOption(new Option('--iters <n>', 'timed forwards').argParser(intParser(1)).default(10))
    .addOption(new Option('--warmup <n>', 'untimed forwards first').argParser(intParser(0)).default(2))
    .addOption(new Option('--skew <s>', 'router logit added to expert 0 (0: random routing)').argParser(Number).default(0))
    .addOption(new Option('--ep-size <n>', 'the EP size of this launch (set by the self-launch)').argParser(intParser(1)).hideHelp())
    .addOption(new Option('--json <file>', 'write the result as JSON (schema: tpkit bench schema moe)'))
    .addOption(new Option('--timeout-ms <ms>', 'timeout of the rendezvous and of every collective').argParser(intParser(1)))
    .action(async (flags: Record<string, unknown>) => {
      const o: MoEBenchOptions = {
        ep: flags.ep as number[],
        experts: flags.experts as number,
        topK: flags.topK as number,
        hidden: flags.hidden as number,
        intermediate: flags.intermediate as number,
        tokens: flags.tokens as number,
        iters: flags.iters as number,
        warmup: flags.warmup as number,
        skew: flags.skew as number,
        ...(flags.epSize ? { epSize: flags.epSize as number } : {}),
        ...(flags.json ? { json: flags.json as string } : {}),
        ...(flags.timeoutMs ? { timeoutMs: flags.timeoutMs as number } : {}),
      };
      code = await moeCommand(o, argv);
    });

  program
    .command('plot')
    .description('merge collectives JSON results into one SVG chart (one line per world size / backend / peer)')
    .argument('<files...>', 'results of tpkit bench collectives --json')
    .requiredOption('--out <file>', 'SVG file to write')
    .addOption(new Option('--metric <m>', 'y axis').choices(['busbw', 'algbw', 'time']).default('busbw'))
    .action((files: string[], flags: { out: string; metric: PlotMetric }) => {
      const results: CollectivesResult[] = [];
      for (const f of files) {
        const r = JSON.parse(fs.readFileSync(f, 'utf8')) as CollectivesResult;
        const errors = validate(COLLECTIVES_SCHEMA, r);
        if (errors.length) {
          process.stderr.write(`tpkit bench plot: ${f} is not a collectives result:\n  ${errors.slice(0, 5).join('\n  ')}\n`);
          code = 1;
          return;
        }
        results.push(r);
      }
      writeFile(flags.out, renderCollectivesPlot(results, flags.metric));
      process.stdout.write(`wrote ${flags.out} (${results.length} result${results.length === 1 ? '' : 's'})\n`);
    });

  program
    .command('schema')
    .description('print the JSON Schema of a result kind')
    .addArgument(new Argument('<kind>', 'result kind').choices([...Object.keys(SCHEMAS), 'moe']))
    .action((kind: keyof typeof SCHEMAS | 'moe') => {
      process.stdout.write(`${JSON.stringify(kind === 'moe' ? MOE_SCHEMA : SCHEMAS[kind], null, 2)}\n`);
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'tpkit.bench') process.stderr.write(`${e.message}\n`);
      return e.exitCode === 0 ? 0 : 2;
    }
    // Argument errors found after parsing (e.g. a root outside the world): the message, not a stack.
    if (e instanceof RangeError) {
      process.stderr.write(`tpkit bench: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  return code;
}
