import type { Handle } from '../types.js';
import { handleKey } from './hash.js';
import type { ChunkRow } from './index-db.js';
import type { CasStore } from './store.js';

// Reference counts form a DAG count: a chunk's refs are the number of stored nodes (and snapshot
// records) naming it. Dropping a reference to zero frees the chunk and drops its own references,
// so the work follows the amount of data freed, not the size of the store.

export interface ReleaseResult {
  chunks: number;
  /** Raw (logical) bytes of the freed chunks. */
  rawBytes: number;
  /** Container bytes the freed chunks occupied. */
  storedBytes: number;
}

/**
 * Drops one reference to each handle. With `dryRun`, computes what would be freed without writing
 * (this is "unique bytes" of a snapshot). Without it, the caller wraps the call in a transaction.
 */
export function releaseRefs(cas: CasStore, handles: Handle[], dryRun = false): ReleaseResult {
  const result: ReleaseResult = { chunks: 0, rawBytes: 0, storedBytes: 0 };
  const remaining = new Map<string, number>();
  const stack = [...handles];
  while (stack.length) {
    const h = stack.pop() as Handle;
    const key = handleKey(h);
    const row: ChunkRow | undefined = cas.index.getChunk(h);
    if (!row) continue; // already gone (e.g. a store repaired by rebuild)
    const refs = (remaining.get(key) ?? row.refs) - 1;
    remaining.set(key, refs);
    if (refs > 0) {
      if (!dryRun) cas.index.addRefs(h, -1);
      continue;
    }
    if (refs < 0) continue; // counted below zero: already freed in this walk
    const children = cas.objects.references(h, row.kind);
    result.chunks++;
    result.rawBytes += row.rawLength;
    result.storedBytes += row.storedLength;
    if (!dryRun) {
      cas.index.deleteChunk(row);
      cas.objects.forget(h);
    }
    for (const c of children) stack.push(c);
  }
  return result;
}
