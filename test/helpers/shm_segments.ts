/**
 * What the shared-memory transport left in this process: the segments mapped now (from /proc/self/maps).
 */
import fs from 'node:fs';

/** The tpkit segments this process has mapped: their paths and whether their names are already gone. */
export function mappedSegments(): Array<{ path: string; deleted: boolean }> {
  const out: Array<{ path: string; deleted: boolean }> = [];
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const m = /(\/dev\/shm\/tpkit-\S+)( \(deleted\))?$/.exec(line);
    if (m && !out.some((o) => o.path === m[1])) out.push({ path: m[1]!, deleted: m[2] !== undefined });
  }
  return out;
}
