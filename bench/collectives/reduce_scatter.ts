/**
 * reduce_scatter: the inputs (count elements each) are reduced and rank r keeps the r-th of n equal slices.
 * Size = the input (total) size; busbw = algbw · (n−1)/n (nccl-tests PERFORMANCE.md).
 * tpkit's reduce-scatter returns a new tensor: out of place only.
 *
 * @module
 */
import { reduceValues } from '../data';
import type { CollectivePlugin } from './types';

export const reduceScatter: CollectivePlugin = {
  name: 'reduce_scatter',
  reduces: true,
  rooted: false,
  counts: (count, n) => {
    const part = Math.floor(count / n);
    return { send: part * n, recv: part, param: part };
  },
  busBwFactor: (n) => (n - 1) / n,
  expected: (input, j, p, c) =>
    reduceValues(Array.from({ length: p.worldSize }, (_, r) => input(r, p.rank * c.recv + j)), p.redop),
  run: {
    outOfPlace: (g, send, _recv, p) => g.reduceScatter(send, { op: p.redop }),
  },
};
