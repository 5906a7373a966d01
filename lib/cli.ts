#!/usr/bin/env node
/**
 * The `tpkit` command: `tpkit launch …` starts one process per rank (torchrun-style); `tpkit generate …`
 * generates tokens with a Hugging Face model directory on TP × PP ranks; `tpkit bench …` runs the
 * microbenchmarks; `tpkit info` prints the available backends.
 *
 * @module
 */
import { launchMain } from './distributed/launcher';

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'launch':
      return launchMain(rest);
    case 'generate': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { generateMain } = require('./generate_cli') as typeof import('./generate_cli');
      return generateMain(rest);
    }
    case 'plan': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { planMain } = require('./plan/cli') as typeof import('./plan/cli');
      return planMain(rest);
    }
    case 'bench': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { benchMain } = require('../bench/cli') as { benchMain(argv: string[]): Promise<number> };
      return benchMain(rest);
    }
    case 'info': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { backends } = require('./backends') as typeof import('./backends');
      process.stdout.write(`${JSON.stringify(backends(), null, 2)}\n`);
      return 0;
    }
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(
        'usage: tpkit <command> [options]\n\n' +
          'commands:\n' +
          '  launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] script [args]\n' +
          '  generate --model-dir DIR (--prompt-ids 1,2,3 | --prompt TEXT) --max-new-tokens N [--tp K --pp P]\n' +
          '           [--backend cpu|cuda] [--temperature T --top-k K --top-p P --seed S] [--json FILE]\n' +
          '                                            (tpkit generate --help)\n' +
          '  plan (--model-dir DIR | --model NAME) --gpus N [...]   memory, communication, time per TP × PP × DP layout (tpkit plan --help)\n' +
          '  bench collectives|gemm|layers|model [options]   (tpkit bench <kind> --help)\n' +
          '  info                                      available backends as JSON\n',
      );
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`tpkit: unknown command '${cmd}' (try tpkit --help)\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`tpkit: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  },
);
