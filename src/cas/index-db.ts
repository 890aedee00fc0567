import fs from 'node:fs';
import Database from 'better-sqlite3';
import type { ChunkKind, ChunkLocation, Codec, Handle } from '../types.js';
import { handleKey } from './hash.js';

// The index: handles -> container locations with reference counts, containers with live/dead
// byte counts, and the snapshot catalogue. Everything here can be rebuilt from containers.

const SCHEMA = `
CREATE TABLE IF NOT EXISTS chunks (
  handle BLOB PRIMARY KEY,
  container INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  stored INTEGER NOT NULL,
  raw INTEGER NOT NULL,
  codec INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  refs INTEGER NOT NULL DEFAULT 0,
  mark INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_container ON chunks(container, offset);
CREATE TABLE IF NOT EXISTS containers (
  id INTEGER PRIMARY KEY,
  sealed INTEGER NOT NULL DEFAULT 0,
  live_bytes INTEGER NOT NULL DEFAULT 0,
  dead_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY,
  name TEXT UNIQUE,
  parent TEXT,
  source TEXT,
  root BLOB NOT NULL,
  root_type TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  logical_bytes INTEGER NOT NULL,
  file_count INTEGER NOT NULL,
  record BLOB,
  seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
`;

export interface ChunkRow extends ChunkLocation {
  handle: Handle;
  refs: number;
}

export interface SnapshotRow {
  id: string;
  name: string | null;
  parent: string | null;
  source: string | null;
  root: Buffer;
  root_type: 'dir' | 'file';
  created_ms: number;
  logical_bytes: number;
  file_count: number;
  record: Buffer | null;
  seq: number;
}

interface RawChunkRow {
  handle: Buffer;
  container: number;
  offset: number;
  stored: number;
  raw: number;
  codec: number;
  kind: number;
  refs: number;
}

const toLocation = (r: RawChunkRow): ChunkRow => ({
  handle: r.handle,
  container: r.container,
  offset: r.offset,
  storedLength: r.stored,
  rawLength: r.raw,
  codec: r.codec as Codec,
  kind: r.kind as ChunkKind,
  refs: r.refs,
});

/** Handles per query of presentChunks() and getChunks(); shorter lists repeat their last handle (one prepared statement). */
const LOOKUP_BATCH = 64;

/** WAL bytes after which a relaxed index checkpoints (it never checkpoints on its own). */
const WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024;

/** Thin typed wrapper over the SQLite index; callers group mutations with `transaction`. */
export class IndexDb {
  readonly db: Database.Database;
  private readonly q;
  readonly relaxed: boolean = false;
  private readonly walFile: string;
  /** Checkpoint once the WAL is past this size (raised when readers keep it from being truncated). */
  private checkpointAt = WAL_CHECKPOINT_BYTES;
  private beforeDurableHook: (() => void) | null = null;

  /**
   * relaxed: commits reach the OS at once (they survive a killed process) but are fsynced only by
   * durable() and by checkpoints — for the mount, where every metadata operation commits.
   * Otherwise every commit is fsynced.
   */
  constructor(file: string, opts: { readonly?: boolean; relaxed?: boolean } = {}) {
    this.db = new Database(file, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false });
    this.walFile = `${file}-wal`;
    this.db.pragma('busy_timeout = 10000');
    if (!opts.readonly) {
      this.db.pragma('journal_mode = WAL');
      // FULL: a committed transaction survives power loss, not just a killed process.
      this.db.pragma(opts.relaxed ? 'synchronous = NORMAL' : 'synchronous = FULL');
      this.relaxed = opts.relaxed ?? false;
      // A checkpoint makes every relaxed commit in the WAL durable (SQLite syncs the WAL first),
      // so it may only run after the container bytes those commits name were fsynced: we take
      // checkpoints ourselves (checkpoint()), never SQLite on its own.
      if (this.relaxed) this.db.pragma('wal_autocheckpoint = 0');
      this.db.exec(SCHEMA);
    }
    const db = this.db;
    this.q = {
      get: db.prepare('SELECT * FROM chunks WHERE handle = ?'),
      has: db.prepare('SELECT 1 FROM chunks WHERE handle = ?').pluck(),
      getMany: db.prepare(`SELECT * FROM chunks WHERE handle IN (${new Array(LOOKUP_BATCH).fill('?').join(', ')})`),
      hasMany: db.prepare(`SELECT handle FROM chunks WHERE handle IN (${new Array(LOOKUP_BATCH).fill('?').join(', ')})`).pluck(),
      insert: db.prepare(
        'INSERT INTO chunks (handle, container, offset, stored, raw, codec, kind, refs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      addRefs: db.prepare('UPDATE chunks SET refs = refs + ? WHERE handle = ?'),
      del: db.prepare('DELETE FROM chunks WHERE handle = ?'),
      move: db.prepare('UPDATE chunks SET container = ?, offset = ? WHERE handle = ?'),
      newContainer: db.prepare('INSERT INTO containers (id) VALUES (?)'),
      maxContainer: db.prepare('SELECT max(id) FROM containers').pluck(),
      live: db.prepare('UPDATE containers SET live_bytes = live_bytes + ? WHERE id = ?'),
      dead: db.prepare('UPDATE containers SET live_bytes = live_bytes - ?, dead_bytes = dead_bytes + ? WHERE id = ?'),
      seal: db.prepare('UPDATE containers SET sealed = 1 WHERE id = ?'),
      metaGet: db.prepare('SELECT value FROM meta WHERE key = ?').pluck(),
      metaSet: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
    };
  }

  /**
   * `hook` runs before anything makes commits durable (a durable commit, a checkpoint, closing):
   * the chunk store fsyncs the containers those commits may name.
   */
  onBeforeDurable(hook: () => void): void {
    this.beforeDurableHook = hook;
  }

  transaction<T>(fn: () => T): T {
    const out = this.db.transaction(fn)();
    if (this.relaxed && !this.db.inTransaction) this.checkpointIfLarge();
    return out;
  }

  /** Runs a transaction whose commit is fsynced, and with it every earlier relaxed commit. */
  durable<T>(fn: () => T): T {
    this.beforeDurableHook?.();
    if (!this.relaxed) return this.db.transaction(fn)();
    let out: T;
    this.db.pragma('synchronous = FULL');
    try {
      out = this.db.transaction(() => {
        this.setMeta('last_durable_commit', String(Date.now())); // something to commit even when fn writes nothing
        return fn();
      })();
    } finally {
      this.db.pragma('synchronous = NORMAL');
    }
    // Everything in the WAL is durable now, containers included: the cheapest time to fold it in.
    if (!this.db.inTransaction) this.checkpoint(false);
    return out;
  }

  /**
   * Copies the WAL into the database file (which makes every commit in it durable), after the
   * hook made their containers durable. Never waits for readers of other processes: what they
   * still use stays in the WAL for a later checkpoint.
   */
  checkpoint(syncFirst = true): void {
    if (syncFirst) this.beforeDurableHook?.();
    this.db.pragma('busy_timeout = 0');
    try {
      // TRUNCATE resets the WAL file to empty when no reader holds it, so its size tells how much
      // has been committed since; with readers it gives up at once (SQLITE_BUSY, not an error here).
      this.db.pragma('wal_checkpoint(TRUNCATE)');
    } finally {
      this.db.pragma('busy_timeout = 10000');
    }
    this.checkpointAt = this.walSize() + WAL_CHECKPOINT_BYTES;
  }

  private checkpointIfLarge(): void {
    if (this.walSize() < this.checkpointAt) return;
    try {
      this.checkpoint();
    } catch (e) {
      // Not checkpointing is always safe (the WAL only grows); the commit that got us here stands.
      this.checkpointAt = this.walSize() + WAL_CHECKPOINT_BYTES;
      process.emitWarning(`index checkpoint skipped: ${(e as Error).message}`);
    }
  }

  private walSize(): number {
    try {
      return fs.statSync(this.walFile).size;
    } catch {
      return 0;
    }
  }

  getChunk(handle: Handle): ChunkRow | undefined {
    const r = this.q.get.get(handle) as RawChunkRow | undefined;
    return r && toLocation(r);
  }

  /** getChunk for many handles, LOOKUP_BATCH per query: the rows found, by handleKey. */
  getChunks(handles: readonly Handle[]): Map<string, ChunkRow> {
    const out = new Map<string, ChunkRow>();
    const args: Handle[] = new Array(LOOKUP_BATCH);
    for (let i = 0; i < handles.length; i += LOOKUP_BATCH) {
      const n = Math.min(LOOKUP_BATCH, handles.length - i);
      for (let j = 0; j < LOOKUP_BATCH; j++) args[j] = handles[i + Math.min(j, n - 1)];
      for (const r of this.q.getMany.all(...args) as RawChunkRow[]) out.set(handleKey(r.handle), toLocation(r));
    }
    return out;
  }

  hasChunk(handle: Handle): boolean {
    return this.q.has.get(handle) !== undefined;
  }

  /**
   * Which of `handles` the index holds, in one query per 64 handles rather than one per handle
   * (better-sqlite3's per-statement cost is several times that of the lookup itself).
   */
  presentChunks(handles: readonly Handle[]): Buffer[] {
    const out: Buffer[] = [];
    const args: Handle[] = new Array(LOOKUP_BATCH);
    for (let i = 0; i < handles.length; i += LOOKUP_BATCH) {
      const n = Math.min(LOOKUP_BATCH, handles.length - i);
      for (let j = 0; j < LOOKUP_BATCH; j++) args[j] = handles[i + Math.min(j, n - 1)];
      for (const h of this.q.hasMany.all(...args) as Buffer[]) out.push(h);
    }
    return out;
  }

  insertChunk(handle: Handle, loc: ChunkLocation, refs = 0): void {
    this.q.insert.run(handle, loc.container, loc.offset, loc.storedLength, loc.rawLength, loc.codec, loc.kind, refs);
    this.q.live.run(loc.storedLength, loc.container);
  }

  /**
   * insertChunk for many chunks: the containers' live bytes are added once per container rather
   * than once per chunk (half the statements of a batch of new chunks).
   */
  insertChunks(rows: Iterable<{ handle: Handle; loc: ChunkLocation; refs: number }>): void {
    const live = new Map<number, number>();
    for (const { handle, loc, refs } of rows) {
      this.q.insert.run(handle, loc.container, loc.offset, loc.storedLength, loc.rawLength, loc.codec, loc.kind, refs);
      live.set(loc.container, (live.get(loc.container) ?? 0) + loc.storedLength);
    }
    for (const [container, bytes] of live) this.q.live.run(bytes, container);
  }

  addRefs(handle: Handle, delta: number): void {
    this.q.addRefs.run(delta, handle);
  }

  /** Forgets a chunk; its bytes become dead space in its container. */
  deleteChunk(row: ChunkRow): void {
    this.q.del.run(row.handle);
    this.q.dead.run(row.storedLength, row.storedLength, row.container);
  }

  moveChunk(handle: Handle, container: number, offset: number): void {
    this.q.move.run(container, offset, handle);
  }

  /** Registers a new container id (never reused, even if the container stays empty). */
  allocateContainer(): number {
    return this.transaction(() => {
      const id = ((this.q.maxContainer.get() as number | null) ?? 0) + 1;
      this.q.newContainer.run(id);
      return id;
    });
  }

  markSealed(id: number): void {
    this.q.seal.run(id);
  }

  getMeta(key: string): string | undefined {
    return this.q.metaGet.get(key) as string | undefined;
  }

  setMeta(key: string, value: string): void {
    this.q.metaSet.run(key, value);
  }

  *iterateChunks(where = '', ...params: unknown[]): Generator<ChunkRow> {
    const stmt = this.db.prepare(`SELECT * FROM chunks ${where}`);
    for (const r of stmt.iterate(...params) as Iterable<RawChunkRow>) yield toLocation(r);
  }

  /** Closing checkpoints the WAL (SQLite does, as the last connection): the hook runs first. */
  close(): void {
    if (this.relaxed && this.db.open) this.beforeDurableHook?.();
    this.db.close();
  }
}
