import { corrupt } from '../errors.js';
import { ChunkKind, type Handle, type SnapshotInfo } from '../types.js';
import { containerBlobName } from './container-file.js';
import { shortHex } from './hash.js';
import type { ChunkRow } from './index-db.js';
import type { CasStore } from './store.js';

// Garbage collection: mark, sweep, compact. Marks live in the index (a column holding the epoch of
// the last gc that reached the chunk), so memory stays bounded as the store grows. Snapshots are
// marked in temporal-tree order, neighbour after neighbour: a subtree already marked through a
// neighbour is skipped at its root, which is exactly the pruning of the difference engine (equal
// handle, equal subtree), so shared data is marked once, not once per snapshot.

export interface GcOptions {
  /** Compact a container when its live bytes fall under this fraction of its size. */
  threshold: number;
  onProgress?: (p: { phase: 'mark' | 'sweep' | 'compact'; done: number; total: number }) => void;
}

export interface GcResult {
  marked: number;
  swept: number;
  sweptBytes: number;
  compactedContainers: number;
  movedChunks: number;
  deletedContainers: number;
  /** Container bytes deleted minus the live bytes copied into new containers. */
  reclaimedBytes: number;
}

/** Orders snapshots so each follows a temporal-tree neighbour: depth-first from each root. */
export function temporalOrder(snaps: SnapshotInfo[]): SnapshotInfo[] {
  const byParent = new Map<string | null, SnapshotInfo[]>();
  const ids = new Set(snaps.map((s) => s.id));
  for (const s of snaps) {
    const p = s.parent && ids.has(s.parent) ? s.parent : null;
    (byParent.get(p) ?? byParent.set(p, []).get(p)!).push(s);
  }
  const out: SnapshotInfo[] = [];
  const stack = [...(byParent.get(null) ?? [])].reverse();
  while (stack.length) {
    const s = stack.pop() as SnapshotInfo;
    out.push(s);
    stack.push(...[...(byParent.get(s.id) ?? [])].reverse());
  }
  return out;
}

/** `otherRoots`: handles kept alive outside snapshots (catalogue records, the live tree). */
export function collectGarbage(cas: CasStore, snapshots: SnapshotInfo[], otherRoots: Handle[], opts: GcOptions): GcResult {
  const db = cas.index.db;
  const result: GcResult = { marked: 0, swept: 0, sweptBytes: 0, compactedContainers: 0, movedChunks: 0, deletedContainers: 0, reclaimedBytes: 0 };
  const epoch = Number(cas.index.getMeta('gc_epoch') ?? '0') + 1;
  cas.index.setMeta('gc_epoch', String(epoch));

  // Mark.
  const markStmt = db.prepare('UPDATE chunks SET mark = ? WHERE handle = ? AND mark != ? RETURNING kind');
  const exists = db.prepare('SELECT 1 FROM chunks WHERE handle = ?').pluck();
  const order = temporalOrder(snapshots);
  // Snapshot roots first (neighbour after neighbour), then catalogue records and whatever else is
  // kept alive outside snapshots (the live tree of a mount).
  const roots: { label: string; handle: Handle }[] = [
    ...order.map((s) => ({ label: `snapshot ${s.name ?? s.id}`, handle: s.root })),
    ...otherRoots.map((h) => ({ label: 'the live tree or a catalogue record', handle: h })),
  ];
  cas.index.transaction(() => {
    db.prepare('UPDATE chunks SET mark = ? WHERE kind = ?').run(epoch, ChunkKind.Tombstone);
    roots.forEach((r, i) => {
      const stack: Handle[] = [r.handle];
      while (stack.length) {
        const h = stack.pop() as Handle;
        const row = markStmt.get(epoch, h, epoch) as { kind: ChunkKind } | undefined;
        if (!row) {
          if (!exists.get(h)) throw corrupt(`${r.label} references missing chunk ${shortHex(h)}; gc stopped, nothing removed (run 'strata verify')`);
          continue; // already marked: the whole subtree is
        }
        result.marked++;
        for (const c of cas.objects.references(h, row.kind)) stack.push(c);
      }
      opts.onProgress?.({ phase: 'mark', done: i + 1, total: roots.length });
    });
  });

  // Sweep: unreached chunks go; unreached nodes first give back the references they held.
  const garbage = [...cas.index.iterateChunks('WHERE mark != ?', epoch)];
  cas.index.transaction(() => {
    for (const g of garbage) {
      if (g.kind === ChunkKind.Node || g.kind === ChunkKind.TreeRoot) {
        let refs: Handle[] = [];
        try { refs = cas.objects.references(g.handle, g.kind); } catch { /* unreadable garbage: nothing to give back */ }
        for (const c of refs) cas.index.addRefs(c, -1);
      }
    }
    for (const g of garbage) {
      cas.index.deleteChunk(g);
      cas.objects.forget(g.handle);
      result.swept++;
      result.sweptBytes += g.storedLength;
    }
  });
  opts.onProgress?.({ phase: 'sweep', done: garbage.length, total: garbage.length });

  // Compact: rewrite containers that are mostly dead; drop empty ones (including containers a
  // killed process wrote but never indexed: nothing names their bytes).
  const candidates = db
    .prepare(`SELECT id, live_bytes AS live, dead_bytes AS dead FROM containers
              WHERE sealed != 2 AND (live_bytes <= 0 OR (dead_bytes > 0 AND live_bytes < ? * (live_bytes + dead_bytes)))`)
    .all(opts.threshold) as { id: number; live: number; dead: number }[];
  const done: number[] = [];
  candidates.forEach((c, i) => {
    if (c.id === cas.chunks.openContainer) return;
    const rows: ChunkRow[] = [...cas.index.iterateChunks('WHERE container = ? ORDER BY offset', c.id)];
    const moves = rows.map((r) => {
      cas.chunks.readVerified(r.handle, r); // never copy corruption forward
      return { row: r, to: cas.chunks.appendPayload(r.handle, r, cas.chunks.readPayload(r)) };
    });
    cas.chunks.commit(() => {
      for (const m of moves) {
        cas.index.moveChunk(m.row.handle, m.to.container, m.to.offset);
        db.prepare('UPDATE containers SET live_bytes = live_bytes + ? WHERE id = ?').run(m.row.storedLength, m.to.container);
        cas.chunks.forget(m.row.handle);
      }
      db.prepare('UPDATE containers SET sealed = 2, live_bytes = 0, dead_bytes = 0 WHERE id = ?').run(c.id);
    });
    done.push(c.id);
    result.movedChunks += moves.length;
    result.reclaimedBytes -= moves.reduce((a, m) => a + m.row.storedLength, 0);
    if (moves.length) result.compactedContainers++;
    else result.deletedContainers++;
    opts.onProgress?.({ phase: 'compact', done: i + 1, total: candidates.length });
  });
  cas.chunks.close();
  // Only after the index no longer names them are the old containers deleted.
  for (const id of done) {
    const name = containerBlobName(id);
    try {
      result.reclaimedBytes += cas.blobs.size(name);
    } catch { /* already gone */ }
    cas.blobs.delete(name);
  }
  return result;
}
