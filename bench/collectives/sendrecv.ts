/**
 * sendrecv: rank r sends its buffer to r+1 and receives from r−1 (mod n), both at once. busbw = algbw
 * (factor 1, nccl-tests PERFORMANCE.md). On one rank the "exchange" is a copy to itself, as in nccl-tests.
 *
 * @module
 */
import type { CollectivePlugin } from './types';

export const sendrecv: CollectivePlugin = {
  name: 'sendrecv',
  reduces: false,
  rooted: false,
  needsRecvBuffer: true,
  counts: (count) => ({ send: count, recv: count, param: count }),
  busBwFactor: () => 1,
  expected: (input, j, p) => input((p.rank - 1 + p.worldSize) % p.worldSize, j),
  run: {
    outOfPlace: async (g, send, recv, p) => {
      if (p.worldSize === 1) return send.narrow(0, 0, send.shape[0]!);
      const [, out] = await Promise.all([
        g.send(send, (p.rank + 1) % p.worldSize),
        g.recv(recv!, (p.rank - 1 + p.worldSize) % p.worldSize),
      ]);
      return out;
    },
  },
};
