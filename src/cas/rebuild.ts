import fs from 'node:fs';
import path from 'node:path';
import { handleFromHex } from './hash.js';
import { IndexDb } from './index-db.js';
import { readContainerRecords } from './container-file.js';
import { ChunkKind, type Handle, type SnapshotRecord } from '../types.js';
import type { CasStore } from './store.js';

// Rebuilds the index from containers alone: chunk locations from each container's footer (or a
// verified scan of an unsealed one), the snapshot catalogue from snapshot and tombstone records,
// and reference counts by reading every stored node once.

export interface RebuildResult {
  containers: number;
  chunks: number;
  snapshots: number;
  problems: string[];
  /** Where the previous index was moved. */
  backup: string | null;
}

/** `reopen` is called with the fresh index file path and must return a store using it. */
export function rebuildIndex(dir: string, reopen: () => CasStore): RebuildResult {
  const indexFile = path.join(dir, 'index.db');
  let backup: string | null = null;
  if (fs.existsSync(indexFile)) {
    backup = `${indexFile}.bak-${Date.now()}`;
    fs.renameSync(indexFile, backup);
    for (const ext of ['-wal', '-shm']) if (fs.existsSync(indexFile + ext)) fs.renameSync(indexFile + ext, backup + ext);
  }
  new IndexDb(indexFile).close();
  const cas = reopen();
  const result: RebuildResult = { containers: 0, chunks: 0, snapshots: 0, problems: [], backup };
  try {
    const db = cas.index.db;
    const ids = cas.blobs.list().map((n) => /^c(\d+)$/.exec(n)).filter((m) => m !== null).map((m) => Number(m[1])).sort((a, b) => a - b);
    const snapRecords = new Map<string, { rec: SnapshotRecord; handle: Handle }>();
    const removed = new Set<string>();
    const nodes: { handle: Handle; kind: ChunkKind }[] = [];
    const tombstones: Handle[] = [];
    cas.index.transaction(() => {
      for (const id of ids) {
        db.prepare('INSERT INTO containers (id, sealed) VALUES (?, 0)').run(id);
        const first = readContainerRecords(cas.blobs, id);
        // Unsealed containers (a crash) may hold unsynced garbage: re-hash their payloads.
        const contents = first.sealed ? first : readContainerRecords(cas.blobs, id, { verifyPayloads: true });
        result.problems.push(...contents.problems);
        if (contents.sealed) cas.index.markSealed(id);
        result.containers++;
        for (const r of contents.records) {
          if (cas.index.hasChunk(r.handle)) continue; // a copy left by an interrupted compaction
          cas.index.insertChunk(r.handle, r, 0);
          result.chunks++;
          if (r.kind === ChunkKind.Node || r.kind === ChunkKind.TreeRoot) nodes.push({ handle: r.handle, kind: r.kind });
          else if (r.kind === ChunkKind.Snapshot || r.kind === ChunkKind.Tombstone) {
            const value = JSON.parse(cas.chunks.get(r.handle).toString('utf8')) as SnapshotRecord & { removed?: string };
            if (r.kind === ChunkKind.Tombstone) {
              if (value.removed) removed.add(value.removed);
              tombstones.push(r.handle);
            } else {
              const prev = snapRecords.get(value.id);
              if (!prev || prev.rec.seq < value.seq) snapRecords.set(value.id, { rec: value, handle: r.handle });
            }
          }
        }
      }
      for (const n of nodes) {
        for (const c of cas.objects.references(n.handle, n.kind)) cas.index.addRefs(c, 1);
      }
      for (const t of tombstones) cas.index.addRefs(t, 1);
      const live = [...snapRecords.values()].filter((s) => !removed.has(s.rec.id));
      const liveIds = new Set(live.map((s) => s.rec.id));
      for (const { rec, handle } of live) {
        const root = handleFromHex(rec.root);
        if (!cas.index.hasChunk(root)) {
          result.problems.push(`snapshot ${rec.name ?? rec.id}: root ${rec.root.slice(0, 12)} is missing; snapshot dropped`);
          continue;
        }
        db.prepare(`INSERT INTO snapshots (id, name, parent, source, root, root_type, created_ms, logical_bytes, file_count, record, seq)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
          .run(rec.id, rec.name, rec.parent && liveIds.has(rec.parent) ? rec.parent : null, rec.source, root, rec.rootType,
            rec.createdMs, rec.logicalBytes, rec.fileCount, handle, rec.seq);
        cas.index.addRefs(root, 1);
        cas.index.addRefs(handle, 1);
        result.snapshots++;
      }
    });
    if (backup) result.problems.push(...carryOver(cas, backup));
  } finally {
    cas.close();
  }
  return result;
}

/**
 * State that lives only in the index (the mount's live tree, the performance pool's catalogue,
 * the live tree's head) is copied from the old index when it can still be read; the live tree's
 * references are taken again. Returns problems met.
 */
function carryOver(cas: CasStore, backup: string): string[] {
  const db = cas.index.db;
  const problems: string[] = [];
  try {
    db.prepare('ATTACH DATABASE ? AS old').run(backup);
  } catch (e) {
    return [`the old index cannot be read (${(e as Error).message}): the live tree starts empty`];
  }
  try {
    cas.index.transaction(() => copyTables());
  } finally {
    db.exec('DETACH DATABASE old');
  }
  return problems;

  function copyTables(): void {
    const tables = db.prepare("SELECT name, sql FROM old.sqlite_master WHERE type = 'table' AND (name LIKE 'live\\_%' ESCAPE '\\' OR name LIKE 'perf\\_%' ESCAPE '\\')").all() as { name: string; sql: string }[];
    for (const t of tables) {
      db.exec(t.sql.replace(/^CREATE TABLE (IF NOT EXISTS )?/i, 'CREATE TABLE IF NOT EXISTS main.'));
      db.exec(`INSERT OR REPLACE INTO main.${t.name} SELECT * FROM old.${t.name}`);
    }
    const head = db.prepare("SELECT value FROM old.meta WHERE key = 'live_head'").pluck().get() as string | undefined;
    if (head && db.prepare('SELECT 1 FROM snapshots WHERE id = ?').get(head)) cas.index.setMeta('live_head', head);
    if (tables.some((t) => t.name === 'live_inodes')) {
      for (const h of db.prepare('SELECT content FROM live_inodes WHERE content IS NOT NULL').pluck().all() as Buffer[]) {
        if (cas.index.hasChunk(h)) cas.index.addRefs(h, 1);
        else problems.push(`the live tree references missing content ${h.toString('hex').slice(0, 12)}`);
      }
    }
  }
}
