/**
 * broadcast: every rank ends with the root's buffer. busbw = algbw (factor 1, nccl-tests PERFORMANCE.md).
 * tpkit's broadcast is in place only.
 *
 * @module
 */
import type { CollectivePlugin } from './types';

export const broadcast: CollectivePlugin = {
  name: 'broadcast',
  reduces: false,
  rooted: true,
  counts: (count) => ({ send: count, recv: count, param: count }),
  busBwFactor: () => 1,
  expected: (input, j, p) => input(p.root, j),
  run: {
    inPlace: (g, send, _recv, p) => g.broadcast(send, p.root),
  },
};
