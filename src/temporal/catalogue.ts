import crypto from 'node:crypto';
import { handleFromHex, handleHex, hashBytes } from '../cas/hash.js';
import type { SnapshotRow } from '../cas/index-db.js';
import { releaseRefs, type ReleaseResult } from '../cas/release.js';
import type { CasStore } from '../cas/store.js';
import { invalid, notFound, StrataError } from '../errors.js';
import { ChunkKind, type Handle, type SnapshotInfo, type SnapshotRecord, type TreeEntry } from '../types.js';

export type { SnapshotRecord };

// Snapshots and the temporal tree. Each snapshot is also written as a record chunk into a
// container before its row commits, so `index rebuild` can recover the catalogue from containers.


export interface NewSnapshot {
  name?: string | null;
  parent?: string | null;
  source?: string | null;
  /** What the snapshot holds: a directory or a single file, with its own metadata. */
  entry: TreeEntry;
  logicalBytes: number;
  fileCount: number;
  createdMs?: number;
}

export interface RemoveResult {
  removed: SnapshotInfo;
  reparented: string[];
  /** The snapshot's data that no other snapshot shared (catalogue records not counted). */
  freed: ReleaseResult;
}

const rowToInfo = (r: SnapshotRow): SnapshotInfo => ({
  id: r.id,
  name: r.name,
  parent: r.parent,
  source: r.source,
  root: r.root,
  rootType: r.root_type,
  createdMs: r.created_ms,
  logicalBytes: r.logical_bytes,
  fileCount: r.file_count,
});

export const recordOf = (s: SnapshotInfo, seq: number): SnapshotRecord => ({
  v: 1, id: s.id, name: s.name, parent: s.parent, source: s.source, root: handleHex(s.root),
  rootType: s.rootType, createdMs: s.createdMs, logicalBytes: s.logicalBytes, fileCount: s.fileCount, seq,
});

export const infoOf = (r: SnapshotRecord): SnapshotInfo => ({
  id: r.id, name: r.name, parent: r.parent, source: r.source, root: handleFromHex(r.root), rootType: r.rootType,
  createdMs: r.createdMs, logicalBytes: r.logicalBytes, fileCount: r.fileCount,
});

export class Catalogue {
  constructor(private readonly cas: CasStore) {}

  list(): SnapshotInfo[] {
    const rows = this.cas.index.db.prepare('SELECT * FROM snapshots ORDER BY created_ms, id').all() as SnapshotRow[];
    return rows.map(rowToInfo);
  }

  /** Finds a snapshot by name, id, or unique id prefix (at least 4 characters). */
  get(ref: string): SnapshotInfo {
    const db = this.cas.index.db;
    const exact = db.prepare('SELECT * FROM snapshots WHERE name = ? OR id = ?').all(ref, ref) as SnapshotRow[];
    if (exact.length === 1) return rowToInfo(exact[0]);
    if (exact.length > 1) return rowToInfo(exact.find((r) => r.name === ref) ?? exact[0]);
    if (/^[0-9a-f]{4,}$/.test(ref)) {
      const rows = db.prepare("SELECT * FROM snapshots WHERE id LIKE ? || '%'").all(ref) as SnapshotRow[];
      if (rows.length === 1) return rowToInfo(rows[0]);
      if (rows.length > 1) throw invalid(`snapshot id prefix ${ref} is ambiguous`);
    }
    throw notFound(`snapshot ${ref}`);
  }

  children(id: string): SnapshotInfo[] {
    const rows = this.cas.index.db
      .prepare('SELECT * FROM snapshots WHERE parent = ? ORDER BY created_ms, id').all(id) as SnapshotRow[];
    return rows.map(rowToInfo);
  }

  latestBySource(source: string): SnapshotInfo | undefined {
    const r = this.cas.index.db
      .prepare('SELECT * FROM snapshots WHERE source = ? ORDER BY created_ms DESC, rowid DESC LIMIT 1')
      .get(source) as SnapshotRow | undefined;
    return r && rowToInfo(r);
  }

  /**
   * Commits a snapshot whose objects are already written: its record chunk and every pending chunk
   * become durable (container fsync) before the row commits, all in one transaction.
   */
  create(s: NewSnapshot): SnapshotInfo {
    if (s.name != null) this.checkNewName(s.name);
    if (s.parent) this.get(s.parent);
    if (s.entry.type !== 'dir' && s.entry.type !== 'file') throw invalid(`a snapshot holds a directory or a file, not a ${s.entry.type}`);
    const name = s.entry.name.length ? s.entry.name : Buffer.from('root');
    const info: SnapshotInfo = {
      id: crypto.randomBytes(4).toString('hex'),
      name: s.name ?? null,
      parent: s.parent ?? null,
      source: s.source ?? null,
      // The root is a one-entry tree holding the imported entry, so its own metadata is kept.
      root: this.cas.objects.writeTree([{ ...s.entry, name }]),
      rootType: s.entry.type,
      createdMs: s.createdMs ?? Date.now(),
      logicalBytes: s.logicalBytes,
      fileCount: s.fileCount,
    };
    const record = this.putRecord(ChunkKind.Snapshot, recordOf(info, 1));
    this.cas.chunks.addRef(info.root, 1);
    this.cas.chunks.commit(() => this.insertRow(info, record, 1));
    return info;
  }

  /**
   * Adds a snapshot received from a peer, keeping its id, time and parent link (the parent only
   * if this store has it). Its objects must all be stored already. Idempotent: a snapshot that is
   * already here is returned as it is. A name taken by another snapshot gets the id appended.
   */
  adopt(s: SnapshotInfo): SnapshotInfo {
    const db = this.cas.index.db;
    const existing = db.prepare('SELECT id FROM snapshots WHERE id = ?').get(s.id);
    if (existing) return this.get(s.id);
    let name = s.name;
    if (name !== null && db.prepare('SELECT 1 FROM snapshots WHERE name = ? OR id = ?').get(name, name)) name = `${name}@${s.id}`;
    const parent = s.parent && db.prepare('SELECT 1 FROM snapshots WHERE id = ?').get(s.parent) ? s.parent : null;
    const info: SnapshotInfo = { ...s, name, parent };
    const record = this.putRecord(ChunkKind.Snapshot, recordOf(info, 1));
    this.cas.chunks.addRef(info.root, 1);
    this.cas.chunks.commit(() => this.insertRow(info, record, 1), true);
    return info;
  }

  /** Removes a snapshot: its children are re-parented to its parent, then its data is released. */
  remove(ref: string): RemoveResult {
    const s = this.get(ref);
    const row = this.cas.index.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(s.id) as SnapshotRow;
    const kids = this.children(s.id);
    const tomb = this.putRecord(ChunkKind.Tombstone, { v: 1, removed: s.id, at: Date.now() });
    const rewritten = kids.map((k) => {
      const kr = this.cas.index.db.prepare('SELECT record, seq FROM snapshots WHERE id = ?').get(k.id) as Pick<SnapshotRow, 'record' | 'seq'>;
      const moved = { ...k, parent: s.parent };
      return { moved, old: kr.record, seq: kr.seq + 1, record: this.putRecord(ChunkKind.Snapshot, recordOf(moved, kr.seq + 1)) };
    });
    this.cas.chunks.addRef(tomb, 1); // tombstones stay: a rebuild must not resurrect the snapshot
    for (const r of rewritten) this.cas.chunks.addRef(r.record, 1);
    let freed: ReleaseResult = { chunks: 0, rawBytes: 0, storedBytes: 0 };
    this.cas.chunks.commit(() => {
      const db = this.cas.index.db;
      for (const r of rewritten) {
        db.prepare('UPDATE snapshots SET parent = ?, record = ?, seq = ? WHERE id = ?').run(r.moved.parent, r.record, r.seq, r.moved.id);
      }
      db.prepare('DELETE FROM snapshots WHERE id = ?').run(s.id);
      freed = releaseRefs(this.cas, [s.root]);
      releaseRefs(this.cas, [...(row.record ? [row.record] : []), ...rewritten.flatMap((r) => (r.old ? [r.old] : []))]);
    });
    return { removed: s, reparented: kids.map((k) => k.id), freed };
  }

  /** The entry a snapshot holds (its directory or file, with metadata). */
  rootEntry(s: SnapshotInfo): TreeEntry {
    return this.cas.objects.readTree(s.root)[0];
  }

  /** Handles of the current catalogue records of all snapshots (kept alive by gc). */
  recordHandles(): Handle[] {
    return (this.cas.index.db.prepare('SELECT record FROM snapshots WHERE record IS NOT NULL').pluck().all() as Buffer[]);
  }

  /** What removing the snapshot would free now (data no other snapshot references). */
  uniqueBytes(s: SnapshotInfo): ReleaseResult {
    return releaseRefs(this.cas, [s.root], true);
  }

  private putRecord(kind: ChunkKind, value: object): Handle {
    const bytes = Buffer.from(JSON.stringify(value));
    const h = hashBytes(bytes);
    this.cas.chunks.put(h, kind, bytes);
    return h;
  }

  private insertRow(s: SnapshotInfo, record: Handle, seq: number): void {
    this.cas.index.db
      .prepare(`INSERT INTO snapshots (id, name, parent, source, root, root_type, created_ms, logical_bytes, file_count, record, seq)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(s.id, s.name, s.parent, s.source, s.root, s.rootType, s.createdMs, s.logicalBytes, s.fileCount, record, seq);
    this.cas.index.addRefs(record, 1);
  }

  /** Throws unless `name` is a valid, unused snapshot name. */
  checkNewName(name: string): void {
    if (!/^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$/.test(name)) {
      throw invalid(`invalid snapshot name '${name}': use letters, digits and . _ @ + - (max 128)`);
    }
    const clash = this.cas.index.db.prepare('SELECT id FROM snapshots WHERE name = ? OR id = ?').get(name, name);
    if (clash) throw new StrataError('EEXIST', `a snapshot named '${name}' already exists`);
  }
}
