/**
 * alltoall: each rank splits its count elements into n chunks and sends chunk j to rank j; it receives one
 * chunk from every rank, rank-major. Size = the total size; busbw = algbw · (n−1)/n (nccl-tests
 * PERFORMANCE.md). tpkit's all-to-all returns a new tensor: out of place only.
 *
 * @module
 */
import type { CollectivePlugin } from './types';

export const alltoall: CollectivePlugin = {
  name: 'alltoall',
  reduces: false,
  rooted: false,
  counts: (count, n) => {
    const part = Math.floor(count / n);
    return { send: part * n, recv: part * n, param: part };
  },
  busBwFactor: (n) => (n - 1) / n,
  expected: (input, j, p, c) => {
    const part = c.param;
    return input(Math.floor(j / part), p.rank * part + (j % part));
  },
  run: {
    outOfPlace: (g, send) => g.allToAll(send),
  },
};
