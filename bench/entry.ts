/**
 * The script each rank runs when a benchmark re-launches itself (`launch({ script: dist/bench/entry.js })`),
 * and a direct entry point: `node dist/bench/entry.js collectives …` is `tpkit bench collectives …`.
 *
 * @module
 */
import { benchMain } from './cli';

benchMain(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`tpkit bench: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
