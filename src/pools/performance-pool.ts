import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { diffEntries, diffObjects } from '../cas/diff.js';
import { handleHex, handleKey, hashBytes } from '../cas/hash.js';
import { childAt, isHole } from '../cas/merkle-node.js';
import type { Leaf, ObjectStore } from '../cas/object-store.js';
import type { CasStore } from '../cas/store.js';
import { AsyncFds } from '../cas/async-fd.js';
import { lookupPath } from '../cas/tree-lookup.js';
import type { Catalogue } from '../temporal/catalogue.js';
import type { Handle, SnapshotInfo, TreeEntry } from '../types.js';

// The performance pool: the latest snapshots' large objects (disk and LUN images) kept as native,
// uncompressed, sparse files, so reading them costs a pread instead of container reads and
// decompression. A new version is made from the previous one by writing only the extents the
// difference engine reports. Native bytes are checked against the object's chunk handles the
// first time each chunk is read; a mismatch retires the file and reads fall back to containers.

export interface PerformanceSettings {
  /** Files at least this large are kept natively. */
  thresholdBytes: number;
  /** Snapshots kept per branch (the latest and the ones before it). */
  keepPerBranch: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS perf_files (
  root BLOB PRIMARY KEY,
  size INTEGER NOT NULL,
  state TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS perf_members (
  snapshot TEXT NOT NULL,
  path BLOB NOT NULL,
  root BLOB NOT NULL,
  PRIMARY KEY (snapshot, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS perf_snapshots (snapshot TEXT PRIMARY KEY) WITHOUT ROWID;
`;

const PIECE = 4 * 1024 * 1024;
/** Native reads land in recycled buffers of at least this size (a FUSE request is at most 128 KiB). */
const SCRATCH_BYTES = 256 * 1024;
const SCRATCH_KEPT = 8;
/** While reads check new leaves, the Merkle nodes this far past them are loaded in the background. */
const PREPARE_BYTES = 64 * 1024 * 1024;

/** Byte ranges of one object whose native bytes were checked, as sorted disjoint [from, to) pairs. */
class Checked {
  private readonly ranges: [number, number][] = [];

  covers(from: number, to: number): boolean {
    const r = this.ranges[this.indexAfter(from) - 1];
    return r !== undefined && r[0] <= from && to <= r[1];
  }

  add(from: number, to: number): void {
    let i = this.indexAfter(from) - 1;
    if (i < 0 || this.ranges[i][1] < from) i++;
    let j = i;
    while (j < this.ranges.length && this.ranges[j][0] <= to) {
      from = Math.min(from, this.ranges[j][0]);
      to = Math.max(to, this.ranges[j][1]);
      j++;
    }
    this.ranges.splice(i, j - i, [from, to]);
  }

  /** Index of the first range starting after `x`. */
  private indexAfter(x: number): number {
    let lo = 0;
    let hi = this.ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ranges[mid][0] <= x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

export interface PoolUpdate {
  snapshot: string;
  filesWritten: number;
  bytesWritten: number;
  filesEvicted: number;
}

/** Bytes a store's performance pool occupies on disk (its files are sparse: allocated blocks count). */
export function performanceDiskBytes(storeDir: string): number {
  const dir = path.join(storeDir, 'performance');
  if (!fs.existsSync(dir)) return 0;
  let n = 0;
  for (const f of fs.readdirSync(dir)) n += fs.statSync(path.join(dir, f)).blocks * 512;
  return n;
}

/** Snapshots the pool keeps: for every leaf of the temporal tree, it and the ones before it, up to `keep`. */
export function retained(snaps: SnapshotInfo[], keep: number): Set<string> {
  const byId = new Map(snaps.map((s) => [s.id, s]));
  const hasChild = new Set(snaps.map((s) => s.parent).filter((p): p is string => p !== null));
  const out = new Set<string>();
  for (const leaf of snaps.filter((s) => !hasChild.has(s.id))) {
    let cur: SnapshotInfo | undefined = leaf;
    for (let n = 0; cur && n < keep; n++) {
      out.add(cur.id);
      cur = cur.parent ? byId.get(cur.parent) : undefined;
    }
  }
  return out;
}

export class PerformancePool {
  readonly dir: string;
  private readonly db: Database.Database;
  private readonly verified = new Map<string, Checked>();
  /** Per object, how far its Merkle nodes were asked to load ahead (see ObjectStore.preloadNodes). */
  private readonly prepared = new Map<string, number>();
  /** Buffers for native reads, reused (a fresh 128 KiB buffer per request kept the GC busy). */
  private readonly spare: Buffer[] = [];
  private readonly fds = new Map<string, number>();
  /** Native reads in flight per fd, and fds to close once theirs are done. */
  private readonly asyncFds = new AsyncFds();
  private queue: Promise<unknown> = Promise.resolve();
  /** Grows whenever the set of held snapshots may have changed, so callers can cache snapshots(). */
  generation = 0;

  constructor(
    private readonly cas: CasStore,
    private readonly cat: Catalogue,
    readonly settings: PerformanceSettings = cas.config.performance,
  ) {
    this.dir = path.join(cas.dir, 'performance');
    fs.mkdirSync(this.dir, { recursive: true });
    this.db = cas.index.db;
    this.db.exec(SCHEMA);
  }

  private fileOf(root: Handle): string {
    return path.join(this.dir, `${handleHex(root)}.img`);
  }

  /** Snapshots whose large objects the pool holds (shown under pools/performance/). */
  snapshots(): string[] {
    return this.db.prepare('SELECT snapshot FROM perf_snapshots').pluck().all() as string[];
  }

  holds(root: Handle): boolean {
    return this.db.prepare("SELECT 1 FROM perf_files WHERE root = ? AND state = 'ready'").get(root) !== undefined;
  }

  /** Queues an update for a new snapshot; updates run one after another. */
  schedule(snapshotId: string): Promise<PoolUpdate | null> {
    const next = this.queue.then(() => this.update(snapshotId));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Resolves when every scheduled update has finished. */
  idle(): Promise<void> {
    return this.queue.then(() => undefined);
  }

  /**
   * Brings the pool up to date after `snapshotId` was taken: its large objects are written
   * (incrementally from the previous version where the pool has one), and snapshots that fell out
   * of retention are dropped with the files no kept snapshot needs.
   */
  async update(snapshotId: string): Promise<PoolUpdate | null> {
    const snaps = this.cat.list();
    const snap = snaps.find((s) => s.id === snapshotId);
    if (!snap) return null;
    const keep = retained(snaps, this.settings.keepPerBranch);
    const result: PoolUpdate = { snapshot: snapshotId, filesWritten: 0, bytesWritten: 0, filesEvicted: 0 };
    if (this.settings.keepPerBranch > 0 && keep.has(snap.id)) {
      const members = this.membersFor(snap);
      const before = new Map((snap.parent ? this.members(snap.parent) : []).map((m) => [m.path.toString('latin1'), m.root]));
      for (const m of members) {
        if (this.holds(m.root)) continue;
        const prev = before.get(m.path.toString('latin1')) ?? null;
        result.bytesWritten += await this.materialize(m.root, prev && this.holds(prev) ? prev : null, keep, snap.id);
        result.filesWritten++;
      }
      this.cas.index.transaction(() => {
        const ins = this.db.prepare('INSERT OR REPLACE INTO perf_members (snapshot, path, root) VALUES (?, ?, ?)');
        for (const m of members) ins.run(snap.id, m.path, m.root);
        this.db.prepare('INSERT OR IGNORE INTO perf_snapshots (snapshot) VALUES (?)').run(snap.id);
      });
      this.generation++;
    }
    result.filesEvicted = this.evict(keep);
    return result;
  }

  private members(snapshot: string): { path: Buffer; root: Buffer }[] {
    return this.db.prepare('SELECT path, root FROM perf_members WHERE snapshot = ?').all(snapshot) as { path: Buffer; root: Buffer }[];
  }

  /** Large files of a snapshot: from its parent's list and the difference when the pool has the parent, else by a walk. */
  private membersFor(snap: SnapshotInfo): { path: Buffer; root: Handle }[] {
    const objects = this.cas.objects;
    const entry = this.cat.rootEntry(snap);
    const big = (e: TreeEntry) => e.type === 'file' && e.content !== null && e.size >= this.settings.thresholdBytes;
    const parentHeld = snap.parent && this.snapshots().includes(snap.parent);
    if (!parentHeld) {
      const out: { path: Buffer; root: Handle }[] = [];
      const walk = (e: TreeEntry, p: Buffer) => {
        if (big(e)) out.push({ path: p, root: e.content as Handle });
        else if (e.type === 'dir' && e.content) for (const c of objects.readTree(e.content)) walk(c, p.length ? Buffer.concat([p, Buffer.from('/'), c.name]) : c.name);
      };
      walk(entry, Buffer.alloc(0));
      return out;
    }
    const parent = this.cat.get(snap.parent as string);
    const pEntry = this.cat.rootEntry(parent);
    const map = new Map(this.members(parent.id).map((m) => [m.path.toString('latin1'), m]));
    const under = (p: Buffer) => {
      const pre = p.toString('latin1');
      return [...map.keys()].filter((k) => k === pre || k.startsWith(pre + '/') || pre === '');
    };
    for (const c of diffEntries(objects, pEntry, entry)) {
      if (c.change === 'meta') continue;
      for (const k of under(c.path)) map.delete(k);
      if (c.change === 'removed') continue;
      const e = c.path.length ? lookupPath(objects, entry, c.path) : entry;
      const add = (x: TreeEntry, p: Buffer) => {
        if (big(x)) map.set(p.toString('latin1'), { path: p, root: x.content as Handle });
        else if (x.type === 'dir' && x.content) for (const k of objects.readTree(x.content)) add(k, p.length ? Buffer.concat([p, Buffer.from('/'), k.name]) : k.name);
      };
      add(e, c.path);
    }
    return [...map.values()];
  }

  /**
   * Writes the native file for `root`. From a previous version: its file is reused when no kept
   * snapshot needs it any more (else copied), and only the changed extents are written.
   */
  private async materialize(root: Handle, prev: Handle | null, keep: Set<string>, newSnap: string): Promise<number> {
    const objects = this.cas.objects;
    const file = this.fileOf(root);
    const tmp = `${file}.tmp`;
    fs.rmSync(tmp, { force: true });
    let written = 0;
    let ranges: { offset: number; length: number }[];
    if (prev) {
      const stillNeeded = (this.db.prepare('SELECT DISTINCT snapshot FROM perf_members WHERE root = ?').pluck().all(prev) as string[])
        .some((s) => keep.has(s) && s !== newSnap);
      if (stillNeeded) execFileSync('cp', ['--sparse=always', this.fileOf(prev), tmp]);
      else {
        this.closeFd(prev);
        fs.renameSync(this.fileOf(prev), tmp);
        this.db.prepare('DELETE FROM perf_files WHERE root = ?').run(prev);
      }
      ranges = diffObjects(objects, prev, root).changed;
    } else {
      ranges = objects.extents(root).filter((e) => !e.hole);
    }
    this.db.prepare("INSERT OR REPLACE INTO perf_files (root, size, state) VALUES (?, ?, 'building')").run(root, objects.objectSize(root));
    const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o600);
    try {
      for (const r of ranges) {
        for (let off = r.offset; off < r.offset + r.length; off += PIECE) {
          const data = objects.readObject(root, off, Math.min(PIECE, r.offset + r.length - off));
          fs.writeSync(fd, data, 0, data.length, off);
          written += data.length;
          await new Promise((res) => setImmediate(res)); // keep the event loop answering the kernel
        }
      }
      fs.ftruncateSync(fd, objects.objectSize(root));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    this.db.prepare("UPDATE perf_files SET state = 'ready' WHERE root = ?").run(root);
    return written;
  }

  /** Drops what no retained snapshot needs (after snapshots were removed). */
  prune(): number {
    return this.evict(retained(this.cat.list(), this.settings.keepPerBranch));
  }

  private evict(keep: Set<string>): number {
    let evicted = 0;
    this.generation++;
    this.cas.index.transaction(() => {
      for (const s of this.snapshots()) {
        if (keep.has(s)) continue;
        this.db.prepare('DELETE FROM perf_members WHERE snapshot = ?').run(s);
        this.db.prepare('DELETE FROM perf_snapshots WHERE snapshot = ?').run(s);
      }
      const orphans = this.db.prepare('SELECT root FROM perf_files WHERE root NOT IN (SELECT root FROM perf_members)').pluck().all() as Buffer[];
      for (const r of orphans) {
        this.closeFd(r);
        fs.rmSync(this.fileOf(r), { force: true });
        this.db.prepare('DELETE FROM perf_files WHERE root = ?').run(r);
        evicted++;
      }
    });
    return evicted;
  }

  /**
   * Reads a byte range of an object: natively when the pool holds it (each chunk's bytes checked
   * against its handle the first time), else from containers.
   */
  read(root: Handle, offset: number, length: number): Buffer {
    const span = this.span(root, offset, length);
    if (span === null) return this.cas.objects.readObject(root, offset, length);
    if (span.empty) return Buffer.alloc(0);
    const b = Buffer.alloc(span.to - span.from);
    let got = 0;
    while (got < b.length) {
      const n = fs.readSync(span.fd, b, got, b.length - got, span.from + got);
      if (n <= 0) break;
      got += n;
    }
    return this.checked(root, span, b.subarray(0, got)) ?? this.cas.objects.readObject(root, offset, length);
  }

  /**
   * A byte range of a held object from its native file, read on the I/O pool (the kernel's own
   * read-ahead on the native file does the prefetching); the leaves it covers are checked against
   * their handles the first time. Resolves null when the pool does not hold the object or its copy
   * turns out damaged (it is then retired, as read() does): the caller reads from containers.
   */
  async readAsync(root: Handle, offset: number, length: number, into?: Buffer): Promise<Buffer | null> {
    const span = this.span(root, offset, length);
    if (span === null) return null;
    if (span.empty) return Buffer.alloc(0);
    const want = span.to - span.from;
    if (!into) return this.checked(root, span, await this.asyncFds.read(span.fd, span.from, want));
    // Into a buffer of ours, then copied: the native read runs on another thread, and `into` (FUSE's
    // buffer) must not be written once the request was answered, say by a timeout.
    const scratch = this.spare.pop() ?? Buffer.allocUnsafe(Math.max(SCRATCH_BYTES, want));
    const tmp = scratch.length >= want ? scratch : Buffer.allocUnsafe(want);
    try {
      const got = await this.asyncFds.readInto(span.fd, tmp, span.from, want);
      const b = this.checked(root, span, tmp.subarray(0, got));
      return b && into.subarray(0, b.copy(into));
    } finally {
      if (this.spare.length < SCRATCH_KEPT) this.spare.push(tmp.length <= 4 * SCRATCH_BYTES ? tmp : scratch);
    }
  }

  /**
   * What a native read of [offset, offset + length) must fetch: the range itself, widened to whole
   * leaves where some still need their check; null when the pool does not hold the object.
   */
  private span(root: Handle, offset: number, length: number) {
    const key = handleKey(root);
    let fd = this.fds.get(key);
    if (fd === undefined) {
      if (!this.holds(root)) return null;
      fd = fs.openSync(this.fileOf(root), 'r');
      this.fds.set(key, fd);
    }
    const objects = this.cas.objects;
    const end = Math.min(objects.objectSize(root), offset + length);
    let seen = this.verified.get(key);
    if (!seen) { seen = new Checked(); this.verified.set(key, seen); }
    const unseen: Leaf[] = [];
    if (end > offset && !seen.covers(offset, end)) {
      const until = this.prepared.get(key) ?? 0;
      if (end + PREPARE_BYTES / 2 > until) {
        this.prepared.set(key, end + PREPARE_BYTES);
        void objects.preloadNodes(root, Math.max(end, until), end + PREPARE_BYTES);
      }
      for (const l of objects.leaves(root, offset, end)) {
        if (isHole(l.handle)) seen.add(l.offset, l.offset + l.length); // nothing stored there to check
        else if (!seen.covers(l.offset, l.offset + l.length)) unseen.push(l);
      }
    }
    const last = unseen[unseen.length - 1];
    const from = unseen.length ? Math.min(offset, unseen[0].offset) : offset;
    const to = last ? Math.max(end, last.offset + last.length) : end;
    return { key, fd, seen, unseen, offset, end, from, to, empty: end <= offset };
  }

  /** The bytes asked for out of `b` (the span read), once its unchecked leaves match their handles; null if not (the copy is retired). */
  private checked(root: Handle, span: NonNullable<ReturnType<PerformancePool['span']>>, b: Buffer): Buffer | null {
    for (const leaf of span.unseen) {
      const data = b.subarray(leaf.offset - span.from, leaf.offset - span.from + leaf.length);
      if (data.length !== leaf.length || !hashBytes(data).equals(leaf.handle)) {
        if (this.fds.get(span.key) === span.fd) {
          process.emitWarning(`performance pool copy of ${handleHex(root).slice(0, 12)} is damaged at ${leaf.offset}; reading from containers`);
          this.retire(root);
        }
        return null;
      }
      span.seen.add(leaf.offset, leaf.offset + leaf.length);
    }
    if (b.length < span.end - span.from) return null; // shorter than the object says: not a copy to trust
    return b.subarray(span.offset - span.from, span.end - span.from);
  }

  private retire(root: Handle): void {
    this.db.prepare("UPDATE perf_files SET state = 'damaged' WHERE root = ?").run(root);
    this.closeFd(root);
  }

  private closeFd(root: Handle): void {
    const key = handleKey(root);
    const fd = this.fds.get(key);
    if (fd !== undefined) this.closeNow(fd);
    this.fds.delete(key);
    this.verified.delete(key);
    this.prepared.delete(key);
  }

  /** Closes an fd, or marks it to close after its reads in flight: a reused number could serve another file. */
  private closeNow(fd: number): void {
    this.asyncFds.close(fd);
  }

  close(): void {
    for (const fd of this.fds.values()) this.closeNow(fd);
    this.fds.clear();
  }
}
