/**
 * all_gather: each rank contributes count/n elements; every rank ends with all of them, rank-major.
 * Size = the gathered (total) size; busbw = algbw · (n−1)/n (nccl-tests PERFORMANCE.md).
 * tpkit's all-gather returns a new tensor: out of place only.
 *
 * @module
 */
import type { CollectivePlugin } from './types';

export const allGather: CollectivePlugin = {
  name: 'all_gather',
  reduces: false,
  rooted: false,
  counts: (count, n) => {
    const part = Math.floor(count / n);
    return { send: part, recv: part * n, param: part };
  },
  busBwFactor: (n) => (n - 1) / n,
  expected: (input, j, _p, c) => input(Math.floor(j / c.send), j % c.send),
  run: {
    outOfPlace: (g, send) => g.allGather(send),
  },
};
