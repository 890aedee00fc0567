import type { CasStore } from '../cas/store.js';
import { performanceDiskBytes } from '../pools/performance-pool.js';
import type { Catalogue } from './catalogue.js';

export interface StoreStats {
  snapshots: number;
  /** Sum of the snapshots' logical sizes. */
  logicalBytes: number;
  /** Container bytes on disk (the capacity pool). */
  storedBytes: number;
  /** Native copies in the performance pool (allocated bytes). */
  performanceBytes: number;
  uniqueDataBytes: number;
  dataChunks: number;
  metadataChunks: number;
  metadataBytes: number;
  containers: number;
  liveBytes: number;
  deadBytes: number;
  /** logical / stored: deduplication and compression together. */
  dedupRatio: number;
  compressionRatio: number;
  perSnapshot?: { id: string; name: string | null; logicalBytes: number; uniqueBytes: number }[];
}

/** Store-wide figures; with perSnapshot, also what removing each snapshot would free (costs a walk per snapshot). */
export function storeStats(cas: CasStore, cat: Catalogue, opts: { perSnapshot: boolean }): StoreStats {
  const snaps = cat.list();
  const db = cas.index.db;
  const agg = db.prepare('SELECT count(*) AS n, coalesce(sum(raw),0) AS raw, coalesce(sum(stored),0) AS stored FROM chunks WHERE kind = 0').get() as { n: number; raw: number; stored: number };
  const meta = db.prepare('SELECT count(*) AS n, coalesce(sum(stored),0) AS stored FROM chunks WHERE kind != 0').get() as { n: number; stored: number };
  const cont = db.prepare('SELECT count(*) AS n, coalesce(sum(live_bytes),0) AS live, coalesce(sum(dead_bytes),0) AS dead FROM containers WHERE sealed != 2').get() as { n: number; live: number; dead: number };
  let onDisk = 0;
  for (const name of cas.blobs.list()) onDisk += cas.blobs.size(name);
  const logical = snaps.reduce((s, x) => s + x.logicalBytes, 0);
  return {
    snapshots: snaps.length,
    logicalBytes: logical,
    storedBytes: onDisk,
    performanceBytes: performanceDiskBytes(cas.dir),
    uniqueDataBytes: agg.raw,
    dataChunks: agg.n,
    metadataChunks: meta.n,
    metadataBytes: meta.stored,
    containers: cont.n,
    liveBytes: cont.live,
    deadBytes: cont.dead,
    dedupRatio: onDisk ? logical / onDisk : 0,
    compressionRatio: agg.stored ? agg.raw / agg.stored : 0,
    perSnapshot: opts.perSnapshot
      ? snaps.map((s) => ({ id: s.id, name: s.name, logicalBytes: s.logicalBytes, uniqueBytes: cat.uniqueBytes(s).storedBytes }))
      : undefined,
  };
}
