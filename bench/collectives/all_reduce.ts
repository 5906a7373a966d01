/**
 * all_reduce: every rank ends with the reduction of all inputs. busbw = algbw · 2(n−1)/n: a ring moves
 * 2(n−1)/n of the buffer through each link (nccl-tests PERFORMANCE.md). tpkit's all-reduce is in place only.
 *
 * @module
 */
import { reduceValues } from '../data';
import type { CollectivePlugin } from './types';

export const allReduce: CollectivePlugin = {
  name: 'all_reduce',
  reduces: true,
  rooted: false,
  counts: (count) => ({ send: count, recv: count, param: count }),
  busBwFactor: (n) => (2 * (n - 1)) / n,
  expected: (input, j, p) => reduceValues(Array.from({ length: p.worldSize }, (_, r) => input(r, j)), p.redop),
  run: {
    inPlace: (g, send, _recv, p) => g.allReduce(send, { op: p.redop }),
  },
};
