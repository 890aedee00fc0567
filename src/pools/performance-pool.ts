import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type Database from 'better-sqlite3';
import { diffEntries, diffObjects } from '../cas/diff.js';
import { handleHex, handleKey } from '../cas/hash.js';
import { isHole } from '../cas/merkle-node.js';
import type { CasStore } from '../cas/store.js';
import { AsyncFds, DIRECT_SLACK, openDirect } from '../cas/async-fd.js';
import { type CheckItem, checkChunks, DecodePool } from '../cas/decode-pool.js';
import { PooledRun } from '../cas/buffer-pool.js';
import { lookupPath } from '../cas/tree-lookup.js';
import type { Catalogue } from '../temporal/catalogue.js';
import type { Handle, LeafFetch, LeafSource, ObjectLeaf, SnapshotInfo, TreeEntry } from '../types.js';

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
  /** Native files are read with O_DIRECT where the file system allows it (see readRun). */
  directReads: boolean;
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
/**
 * A prefetcher's neighbouring leaves are read from the native file with one read of at most this
 * much (so that, with the slack a direct read needs, the buffer stays in BufferPool's 4 MiB class).
 */
const NATIVE_RUN_BYTES = 4 * 1024 * 1024 - DIRECT_SLACK;

/** Leaves `ks` of `leaves` as pieces to check in bytes read from offset `from`. */
function pieces(leaves: ObjectLeaf[], from: number, ks: number[]): CheckItem[] {
  return ks.map((k) => ({ handle: leaves[k].handle, start: leaves[k].offset - from, length: leaves[k].length }));
}

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
  private readonly fds = new Map<string, number>();
  /** The same files opened with O_DIRECT for the prefetcher's reads; null where that is refused. */
  private readonly directFds = new Map<string, number | null>();
  /** Native reads in flight per fd, and fds to close once theirs are done. */
  private readonly asyncFds = new AsyncFds();
  private readonly checker = DecodePool.shared();
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
   * against its handle the first time), else from containers. Synchronous (hybrid seeding).
   */
  read(root: Handle, offset: number, length: number): Buffer {
    const objects = this.cas.objects;
    const fd = this.fdOf(root);
    if (fd === null) return objects.readObject(root, offset, length);
    const end = Math.min(objects.objectSize(root), offset + length);
    if (end <= offset) return Buffer.alloc(0);
    // Whole leaves, so each can be checked.
    const leaves = objects.leaves(root, offset, end);
    const from = leaves[0].offset;
    const b = Buffer.alloc(leaves[leaves.length - 1].offset + leaves[leaves.length - 1].length - from);
    let got = 0;
    while (got < b.length) {
      const n = fs.readSync(fd, b, got, b.length - got, from + got);
      if (n <= 0) break;
      got += n;
    }
    const todo = this.toCheck(root, leaves, b.subarray(0, got));
    const ok = checkChunks(b, pieces(leaves, from, todo.check));
    return this.settle(root, fd, leaves, todo, ok).length === 0 ? b.subarray(offset - from, end - from) : objects.readObject(root, offset, length);
  }

  /**
   * The leaves of a held object as a prefetcher reads them: from its native file (neighbouring
   * leaves with one read on the I/O pool, into recycled memory), each checked against its handle
   * the first time; from containers once the copy is gone or turned out damaged (it is then
   * retired, as read() does). Null when the pool does not hold the object.
   */
  leafSource(root: Handle): LeafSource | null {
    if (this.fdOf(root) === null) return null;
    const objects = this.cas.objects;
    return {
      leaves: (from, to) => objects.leaves(root, from, to),
      isHole: (leaf) => isHole(leaf.handle),
      fetch: (leaves) => this.fetchNative(root, leaves),
      prepare: (from, to) => objects.preloadNodes(root, from, to),
    };
  }

  private fetchNative(root: Handle, leaves: ObjectLeaf[]): LeafFetch[] {
    const fd = this.fdOf(root);
    if (fd === null) return this.cas.objects.readChunksAsync(leaves.map((l) => l.handle));
    const out: LeafFetch[] = [];
    for (let i = 0; i < leaves.length;) {
      let j = i + 1;
      while (j < leaves.length && leaves[j].offset === leaves[j - 1].offset + leaves[j - 1].length &&
        leaves[j].offset + leaves[j].length - leaves[i].offset <= NATIVE_RUN_BYTES) j++;
      for (const f of this.readRun(root, fd, leaves.slice(i, j))) out.push(f);
      i = j;
    }
    return out;
  }

  /**
   * One native read for adjacent leaves; a leaf whose bytes are unsound (or a failed read) comes
   * from containers instead. The read bypasses the page cache where it can (O_DIRECT): these are
   * large images read once in order, the kernel caches the view's pages above FUSE already, and
   * a buffered read would pay for a second cached copy (and, with several reads in flight, for
   * read-ahead that takes them for random access: measured here on a cold GiB, 2.5 s of system
   * time on a descriptor's first pass and 0.3 s on later ones, against under 0.1 s direct).
   */
  private readRun(root: Handle, fd: number, run: ObjectLeaf[]): LeafFetch[] {
    const pool = this.cas.objects.readBuffers;
    const from = run[0].offset;
    const length = run[run.length - 1].offset + run[run.length - 1].length - from;
    const ab = pool.take(length + DIRECT_SLACK);
    const batch = new PooledRun(pool, run.length);
    const fetches = run.map((): LeafFetch => ({ done: Promise.resolve(), hold: () => batch.hold(), release: () => batch.release() }));
    const buffered = () => this.asyncFds.readInto(fd, Buffer.from(ab, 0, length), from, length).then((got) => Buffer.from(ab, 0, got));
    const direct = this.directOf(root);
    const read = direct === null ? buffered() : this.asyncFds.readDirect(direct, ab, from, length).catch((e: unknown) => {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      // The file system took O_DIRECT but not these reads: buffered ones from now on.
      if (this.directFds.get(handleKey(root)) === direct) {
        this.asyncFds.close(direct);
        this.directFds.set(handleKey(root), null);
      }
      return buffered();
    });
    const done = read
      .then(async (b) => {
        // First reads are hashed on the decode worker, off the thread that answers the kernel.
        const todo = this.toCheck(root, run, b);
        const ok = todo.check.length === 0 ? [] : await this.checker.check(b, pieces(run, from, todo.check));
        const unsound = this.settle(root, fd, run, todo, ok);
        const bad = new Set(unsound);
        run.forEach((leaf, k) => { if (!bad.has(k)) fetches[k].bytes = b.subarray(leaf.offset - from, leaf.offset - from + leaf.length); });
        return unsound;
      }, (e: unknown) => {
        if (this.fds.get(handleKey(root)) === fd) {
          process.emitWarning(`performance pool copy of ${handleHex(root).slice(0, 12)} cannot be read (${e instanceof Error ? e.message : String(e)}); reading from containers`);
          this.retire(root);
        }
        return run.map((_, k) => k);
      })
      .then(async (unsound) => {
        if (!unsound.length) return;
        const alt = this.cas.objects.readChunksAsync(unsound.map((k) => run[k].handle));
        await Promise.all(new Set(alt.map((f) => f.done)));
        unsound.forEach((k, n) => {
          const a = alt[n];
          // A copy: the container batch's memory goes back at once, this run's stays with its holders.
          if (a.bytes) fetches[k].bytes = Buffer.from(a.bytes);
          else fetches[k].error = a.error ?? new Error(`chunk at ${run[k].offset} could not be read`);
          a.release?.();
        });
      })
      .finally(() => batch.settle(ab));
    for (const f of fetches) f.done = done;
    return fetches;
  }

  /** The direct descriptor of a held object's native file (see readRun), opened once; null where O_DIRECT is refused. */
  private directOf(root: Handle): number | null {
    const key = handleKey(root);
    let fd = this.directFds.get(key);
    if (fd === undefined) {
      fd = this.settings.directReads ? openDirect(this.fileOf(root)) : null;
      this.directFds.set(key, fd);
    }
    return fd;
  }

  /** The native file of a held object, opened once; null when the pool does not hold it. */
  private fdOf(root: Handle): number | null {
    const key = handleKey(root);
    let fd = this.fds.get(key);
    if (fd === undefined) {
      if (!this.holds(root)) return null;
      fd = fs.openSync(this.fileOf(root), 'r');
      this.fds.set(key, fd);
    }
    return fd;
  }

  /**
   * What the native bytes `b` of `leaves` (adjacent, `b` read at the first one's offset) still need:
   * `short`, the leaves `b` does not reach; `check`, those to hash against their handles (not
   * holes, which only need their length, and not checked before).
   */
  private toCheck(root: Handle, leaves: ObjectLeaf[], b: Buffer): { short: number[]; check: number[] } {
    const seen = this.verified.get(handleKey(root));
    const from = leaves[0].offset;
    const to = leaves[leaves.length - 1].offset + leaves[leaves.length - 1].length;
    if (seen && b.length >= to - from && seen.covers(from, to)) return { short: [], check: [] };
    const short: number[] = [];
    const check: number[] = [];
    leaves.forEach((leaf, k) => {
      if (b.length < leaf.offset - from + leaf.length) short.push(k);
      else if (!isHole(leaf.handle) && !seen?.covers(leaf.offset, leaf.offset + leaf.length)) check.push(k);
    });
    return { short, check };
  }

  /**
   * Records the checks of toCheck()'s `check` leaves (`ok[i]` for `check[i]`) and returns the
   * leaves the native bytes do not hold. Checked leaves are remembered; a mismatch retires the
   * copy, once (reads in flight on the same fd find it retired already).
   */
  private settle(root: Handle, fd: number, leaves: ObjectLeaf[], todo: { short: number[]; check: number[] }, ok: boolean[]): number[] {
    const key = handleKey(root);
    let seen = this.verified.get(key);
    if (!seen) { seen = new Checked(); this.verified.set(key, seen); }
    const bad = [...todo.short];
    todo.check.forEach((k, i) => {
      if (ok[i]) seen.add(leaves[k].offset, leaves[k].offset + leaves[k].length);
      else bad.push(k);
    });
    bad.sort((x, y) => x - y);
    if (bad.length && this.fds.get(key) === fd) {
      process.emitWarning(`performance pool copy of ${handleHex(root).slice(0, 12)} is damaged at ${leaves[bad[0]].offset}; reading from containers`);
      this.retire(root);
    }
    return bad;
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
    const direct = this.directFds.get(key);
    if (direct != null) this.closeNow(direct);
    this.directFds.delete(key);
    this.verified.delete(key);
  }

  /** Closes an fd, or marks it to close after its reads in flight: a reused number could serve another file. */
  private closeNow(fd: number): void {
    this.asyncFds.close(fd);
  }

  close(): void {
    for (const fd of [...this.fds.values(), ...this.directFds.values()]) if (fd !== null) this.closeNow(fd);
    this.fds.clear();
    this.directFds.clear();
  }
}
