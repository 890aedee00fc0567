import fs from 'node:fs';
import { LRUCache } from 'lru-cache';
import { diffEntries } from '../cas/diff.js';
import type { CasStore } from '../cas/store.js';
import { findEntry, lookupPath } from '../cas/tree-lookup.js';
import { invalid, notFound, StrataError } from '../errors.js';
import { Catalogue } from '../temporal/catalogue.js';
import { storeStats } from '../temporal/store-stats.js';
import type { Attr, DirEntry, EntryType, Handle, Namespace, ReadWindow, SnapshotInfo, StatFs, TreeEntry } from '../types.js';
import { ChunkOffload } from '../cas/chunk-offload.js';
import { FileBuffer, type FlushJob } from './file-buffer.js';
import { Prefetcher } from './prefetch.js';
import { LiveTree, nowUs, ROOT_INO, type Inode } from './live-tree.js';
import { rewriteContentAsync } from './rewrite-content.js';
import { PerformancePool, type PerformanceSettings } from '../pools/performance-pool.js';

// The mounted namespace:
//   live/                      the writable live tree
//   pools/capacity/NAME/       read-only views of snapshots (by name, or id when unnamed)
//   at/TIMESTAMP/              the latest snapshot at or before an ISO 8601 time
//   tree/NAME/{data,parent,children/}   the temporal tree as symlinks
//   stats.json                 store figures
// Storage logic stays below (cas/, temporal/); this class routes paths and keeps open files.

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const TYPE_BITS: Record<EntryType, number> = {
  file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK, fifo: 0o010000, chardev: 0o020000, blockdev: 0o060000, socket: 0o140000,
};
const O_ACCMODE = 3;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const NAME_MAX = 255;
/** Unflushed bytes per file before a write starts flushing them into containers (in the background). */
const FLUSH_BYTES = 16 * 1024 * 1024;
const VIEW_TIMEOUT = 3600;
/** Memory for resolved view paths (keys plus a rough per-entry cost; entries share the cached trees). */
const VIEW_PATH_CACHE_BYTES = 32 * 1024 * 1024;
const VIEW_PATH_OVERHEAD = 96;
/** Entries of view directory listings kept with their attributes (about 200 bytes each). */
const VIEW_LISTING_CACHE_ENTRIES = 256 * 1024;
const LIVE_TIMEOUT = 1;

/** A file's content, built by the flusher, waiting to be committed with its batch. */
interface Staged {
  ino: number;
  b: FileBuffer;
  job: FlushJob;
  root: Handle | null;
  size: number;
}

const asError = (e: unknown): Error => (e instanceof Error ? e : new Error(String(e)));

type Handle_ =
  /** reader: read-ahead over the stored content `root`, made at the first read without dirty buffers. */
  | { kind: 'live'; ino: number; flags: number; reader?: { root: Handle; p: Prefetcher } }
  | { kind: 'view'; entry: TreeEntry; native: boolean; reader?: Prefetcher }
  | { kind: 'data'; data: Buffer };

const erofs = () => new StrataError('EROFS', 'read-only view');
const eexist = (p: string) => new StrataError('EEXIST', `${p} exists`);

function split(path: string): string[] {
  return path.split('/').filter((p) => p.length > 0);
}

/** Stable inode numbers for view entries: fuse-native keeps 32 bits; live inodes use small row ids below 2^31. */
function viewIno(key: string): number {
  // The low 31 bits of 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3):
  // the low 32 bits of the product depend on the low 32 bits alone, so the 32-bit lane of the
  // same hash gives the same numbers without BigInt (which cost ~0.4 us per entry of a listing).
  let lo = 0x84222325;
  for (let i = 0; i < key.length; i++) lo = Math.imul(lo ^ key.charCodeAt(i), 0x1b3) >>> 0;
  return 2 ** 31 + (lo & 0x7fffffff);
}

export class StrataFs implements Namespace {
  readonly cat: Catalogue;
  readonly live: LiveTree;
  readonly pool: PerformancePool;
  private readonly buffers = new Map<number, FileBuffer>();
  private readonly openCount = new Map<number, number>();
  /** Files with unflushed writes waiting for the flusher. */
  private readonly flushQueue = new Set<number>();
  /** The flusher while it runs (see kick()). */
  private flusher: Promise<void> | null = null;
  /** The batch the flusher is working on. */
  private batch: Promise<void> | null = null;
  /** Chunking and hashing of newly written data on a worker (with more than one core). */
  private readonly offload: ChunkOffload | null;
  private readonly handles = new Map<number, Handle_>();
  private nextFh = 1;
  /** Where verified view bytes ahead of each reader are left for the FUSE layer (see offerAhead()). */
  private window: ReadWindow | null = null;
  private readonly mountedAtMs = Date.now();
  private statsCache: { at: number; data: Buffer } | null = null;
  private snapCache: { at: number; list: SnapshotInfo[] } | null = null;
  /** The snapshot ids views last answered by, and who hears when they change (watchViews()). */
  private viewedIds: string | null = null;
  private readonly viewWatchers: Array<() => void> = [];
  private poolCache: { generation: number; list: string[] } | null = null;
  /**
   * Resolved view paths, "snapshot id/a/b" -> entry. A snapshot never changes, so an entry stays
   * right for as long as the snapshot exists (a removed one is no longer reachable by name).
   * Parents are cached on the way, so a stat of every file of a directory costs one map lookup
   * for the directory and one binary search in its cached listing per file.
   */
  private readonly viewPaths = new LRUCache<string, TreeEntry>({
    maxSize: VIEW_PATH_CACHE_BYTES,
    sizeCalculation: (_e, key) => 2 * key.length + VIEW_PATH_OVERHEAD,
  });
  /**
   * View directory listings as readdir answers them, by the same keys. Immutable like the
   * snapshot, so a second listing (find, ls -l, a backup tool walking the view) returns the very
   * same array: no attributes rebuilt, and the FUSE layer can reuse what it made of it.
   */
  private readonly viewListings = new LRUCache<string, readonly DirEntry[]>({
    maxSize: VIEW_LISTING_CACHE_ENTRIES,
    sizeCalculation: (list) => list.length + 1,
  });

  private constructor(readonly cas: CasStore, settings?: PerformanceSettings) {
    this.cat = new Catalogue(cas);
    this.live = new LiveTree(cas);
    this.pool = new PerformancePool(cas, this.cat, settings);
    // Same rule as compression: a second thread only pays off with a second core.
    this.offload = cas.chunks.opts.compressWorkers > 0 ? new ChunkOffload() : null;
    this.live.transaction(() => this.live.collectOrphans());
  }

  /** Serves a store opened for writing (the caller holds the lock and closes the store). */
  static open(cas: CasStore, settings?: PerformanceSettings): StrataFs {
    return new StrataFs(cas, settings);
  }

  /** The snapshot the live tree descends from (the parent of its next snapshot). */
  get head(): string | null {
    return this.cas.index.getMeta('live_head') ?? null;
  }

  // ---- routing -------------------------------------------------------------------------------

  private route(path: string): { area: string; parts: string[] } {
    const parts = split(path);
    return { area: parts[0] ?? '', parts: parts.slice(1) };
  }

  /** Resolves a snapshot view path (pools/capacity/NAME, pools/performance/NAME, at/TIME). */
  private view(area: string, parts: string[]): { snap: SnapshotInfo; rest: string[]; native: boolean } | null {
    if (area === 'pools' && parts[0] === 'capacity' && parts.length >= 2) return { snap: this.snapByName(parts[1]), rest: parts.slice(2), native: false };
    if (area === 'pools' && parts[0] === 'performance' && parts.length >= 2) {
      const snap = this.snapByName(parts[1]);
      if (!this.poolSnapshots().includes(snap.id)) throw notFound(`snapshot ${parts[1]} in the performance pool`);
      return { snap, rest: parts.slice(2), native: true };
    }
    if (area === 'at' && parts.length >= 1) return { snap: this.snapAt(parts[0]), rest: parts.slice(1), native: false };
    return null;
  }

  /**
   * The catalogue, cached briefly: views resolve a snapshot on every lookup. This process is the
   * store's only writer, so its own changes invalidate the cache; the timeout covers the rest.
   */
  private snaps(): SnapshotInfo[] {
    const now = Date.now();
    if (!this.snapCache || now - this.snapCache.at > 2000) {
      this.snapCache = { at: now, list: this.cat.list() };
      const ids = this.snapCache.list.map((x) => x.id).join(' ');
      if (this.viewedIds !== null && ids !== this.viewedIds) for (const w of this.viewWatchers) w();
      this.viewedIds = ids;
    }
    return this.snapCache.list;
  }

  /** Snapshots the performance pool holds, cached until the pool changes: every lookup in a performance view asks. */
  private poolSnapshots(): string[] {
    const g = this.pool.generation;
    if (!this.poolCache || this.poolCache.generation !== g) this.poolCache = { generation: g, list: this.pool.snapshots() };
    return this.poolCache.list;
  }

  /** Forget cached catalogue figures after snapshots were added or removed. */
  catalogueChanged(): void {
    this.snapCache = null;
    this.poolCache = null;
    this.statsCache = null;
  }

  private snapByName(name: string): SnapshotInfo {
    const s = this.snaps().find((x) => (x.name ?? x.id) === name);
    if (!s) throw notFound(`snapshot ${name}`);
    return s;
  }

  private snapAt(stamp: string): SnapshotInfo {
    const t = Date.parse(stamp);
    if (!/^\d{4}-\d\d-\d\dT/.test(stamp) || Number.isNaN(t)) throw notFound(`time ${stamp}`);
    let best: SnapshotInfo | undefined;
    for (const s of this.snaps()) if (s.createdMs <= t && (!best || s.createdMs >= best.createdMs)) best = s;
    if (!best) throw notFound(`a snapshot at or before ${stamp}`);
    return best;
  }

  /** The entry at `rest` inside a snapshot (its root entry for []), from the path cache when there. */
  private viewEntry(snap: SnapshotInfo, rest: string[]): TreeEntry {
    const key = `${snap.id}/${rest.join('/')}`;
    let e = this.viewPaths.get(key);
    if (e) return e;
    if (rest.length === 0) {
      e = this.cat.rootEntry(snap);
    } else {
      const dir = this.viewEntry(snap, rest.slice(0, -1));
      const name = rest[rest.length - 1];
      if (dir.type !== 'dir') throw new StrataError('ENOTDIR', `${rest.slice(0, -1).join('/') || '.'} is not a directory`);
      e = dir.content ? findEntry(this.cas.objects.readTree(dir.content), Buffer.from(name)) : undefined;
      if (!e) throw notFound(rest.join('/'));
    }
    this.viewPaths.set(key, e);
    return e;
  }

  private label = (s: SnapshotInfo) => s.name ?? s.id;

  // ---- live tree helpers ---------------------------------------------------------------------

  private resolve(parts: string[]): Inode {
    let cur = this.live.get(ROOT_INO);
    for (const p of parts) {
      if (cur.type !== 'dir') throw new StrataError('ENOTDIR', `${p}: not a directory`);
      const ino = this.live.lookup(cur, Buffer.from(p));
      if (ino === undefined) throw notFound(p);
      cur = this.live.get(ino);
    }
    return cur;
  }

  private parentOf(parts: string[]): { dir: Inode; name: Buffer } {
    if (parts.length === 0) throw new StrataError('EPERM', 'the live root cannot be changed this way');
    const name = Buffer.from(parts[parts.length - 1]);
    if (name.length > NAME_MAX) throw new StrataError('ENAMETOOLONG', 'name too long');
    const dir = this.resolve(parts.slice(0, -1));
    if (dir.type !== 'dir') throw new StrataError('ENOTDIR', 'not a directory');
    return { dir, name };
  }

  private livePath(path: string): string[] {
    const { area, parts } = this.route(path);
    if (area !== 'live') throw erofs();
    return parts;
  }

  private touchDir(dir: Inode, nlinkDelta = 0): void {
    const t = nowUs();
    this.live.update(dir.ino, { mtimeUs: t, ctimeUs: t, nlink: dir.nlink + nlinkDelta });
    this.live.invalidate(dir.ino);
  }

  private buffer(inode: Inode): FileBuffer {
    let b = this.buffers.get(inode.ino);
    if (!b) {
      b = new FileBuffer(inode.content, inode.size);
      this.buffers.set(inode.ino, b);
    }
    return b;
  }

  private attrOfInode(i: Inode): Attr {
    const b = this.buffers.get(i.ino);
    const size = b ? b.size : i.type === 'symlink' ? i.target?.length ?? 0 : i.size;
    return {
      ino: i.ino, mode: TYPE_BITS[i.type] | i.mode, nlink: i.nlink, uid: i.uid, gid: i.gid, size,
      blocks: Math.ceil(size / 512), rdev: i.rdev,
      atimeMs: i.atimeUs / 1000, mtimeMs: (b?.mtimeUs ?? i.mtimeUs) / 1000, ctimeMs: (b?.mtimeUs ?? i.ctimeUs) / 1000,
    };
  }

  private attrOfEntry(e: TreeEntry, key: string): Attr {
    const size = e.type === 'symlink' ? e.target?.length ?? 0 : e.size;
    const mtimeMs = Number(e.mtimeNs / 1_000_000n);
    return {
      ino: viewIno(key), mode: TYPE_BITS[e.type] | e.mode, nlink: e.type === 'dir' ? 2 : 1, uid: e.uid, gid: e.gid, size,
      blocks: Math.ceil(size / 512), rdev: e.rdev ?? 0,
      atimeMs: Number(e.atimeNs / 1_000_000n), mtimeMs, ctimeMs: mtimeMs,
    };
  }

  private synthetic(type: 'dir' | 'symlink' | 'file', key: string, size = 0): Attr {
    return {
      ino: viewIno(key), mode: type === 'dir' ? S_IFDIR | 0o555 : type === 'symlink' ? S_IFLNK | 0o777 : S_IFREG | 0o444,
      nlink: type === 'dir' ? 2 : 1, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, size, blocks: Math.ceil(size / 512),
      rdev: 0, atimeMs: this.mountedAtMs, mtimeMs: this.mountedAtMs, ctimeMs: this.mountedAtMs,
    };
  }

  private statsJson(): Buffer {
    const now = Date.now();
    if (!this.statsCache || now - this.statsCache.at > 1000) {
      const s = storeStats(this.cas, this.cat, { perSnapshot: false });
      let dirty = 0;
      for (const b of this.buffers.values()) dirty += b.dirtyBytes;
      const data = Buffer.from(JSON.stringify({ ...s, live: { head: this.head, unflushedBytes: dirty, openFiles: this.handles.size } }, null, 2) + '\n');
      this.statsCache = { at: now, data };
    }
    return this.statsCache.data;
  }

  // ---- Namespace: reading --------------------------------------------------------------------

  getattr(path: string): Attr {
    const { area, parts } = this.route(path);
    switch (area) {
      case '': return this.synthetic('dir', '/');
      case 'live': return this.attrOfInode(this.resolve(parts));
      case 'stats.json': if (parts.length) throw notFound(path); return this.synthetic('file', path, this.statsJson().length);
      case 'pools':
        if (parts.length === 0 || (parts.length === 1 && (parts[0] === 'capacity' || parts[0] === 'performance'))) return this.synthetic('dir', path);
        break;
      case 'at':
        if (parts.length === 0) return this.synthetic('dir', path);
        break;
      case 'tree': {
        if (parts.length === 0) return this.synthetic('dir', path);
        const s = this.snapByName(parts[0]);
        if (parts.length === 1) return this.synthetic('dir', path);
        const t = this.treeLink(s, parts.slice(1));
        return this.synthetic(t === null ? 'dir' : 'symlink', path, t?.length ?? 0);
      }
      default: throw notFound(path);
    }
    const v = this.view(area, parts);
    if (!v) throw notFound(path);
    const a = this.attrOfEntry(this.viewEntry(v.snap, v.rest), `${v.snap.id}/${v.rest.join('/')}`);
    // A snapshot folder's generation (Attr.generation) is its snapshot's id, 8 hex digits unique in the store.
    const generation = Number.parseInt(v.snap.id, 16);
    return v.rest.length || !Number.isSafeInteger(generation) ? a : { ...a, generation };
  }

  /** tree/NAME/...: null for a directory, else the symlink target. */
  private treeLink(s: SnapshotInfo, rest: string[]): string | null {
    const byId = new Map(this.snaps().map((x) => [x.id, x]));
    if (rest.length === 1 && rest[0] === 'data') return `../../pools/capacity/${this.label(s)}`;
    if (rest.length === 1 && rest[0] === 'parent' && s.parent && byId.has(s.parent)) return `../${this.label(byId.get(s.parent)!)}`;
    if (rest.length === 1 && rest[0] === 'children') return null;
    if (rest.length === 2 && rest[0] === 'children') {
      const c = this.cat.children(s.id).find((x) => this.label(x) === rest[1]);
      if (c) return `../../${this.label(c)}`;
    }
    throw notFound(`tree/${this.label(s)}/${rest.join('/')}`);
  }

  readdir(path: string): readonly DirEntry[] {
    const { area, parts } = this.route(path);
    if (area === 'live') {
      const d = this.resolve(parts);
      if (d.type !== 'dir') throw new StrataError('ENOTDIR', 'not a directory');
      return this.live.listInodes(d).map((e) => ({ name: e.name.toString(), attr: this.attrOfInode(e.inode) }));
    }
    const v = this.view(area, parts);
    if (v) {
      const e = this.viewEntry(v.snap, v.rest);
      if (e.type !== 'dir') throw new StrataError('ENOTDIR', 'not a directory');
      const key = `${v.snap.id}/${v.rest.join('/')}`;
      let list = this.viewListings.get(key);
      if (!list) {
        const prefix = `${v.snap.id}/${v.rest.map((p) => `${p}/`).join('')}`;
        list = Object.freeze(e.content ? this.cas.objects.readTree(e.content).map((c) => {
          const name = c.name.toString();
          return { name, attr: this.attrOfEntry(c, prefix + name) };
        }) : []);
        this.viewListings.set(key, list);
      }
      return list;
    }
    // The synthetic folders are small: each entry's attributes are what getattr answers for it.
    const base = path === '/' ? '' : path;
    return this.syntheticNames(area, parts, path).map((name) => ({ name, attr: this.getattr(`${base}/${name}`) }));
  }

  /** Names in the synthetic folders (root, pools/, at/, tree/). */
  private syntheticNames(area: string, parts: string[], path: string): string[] {
    switch (area) {
      case '': return ['live', 'pools', 'at', 'tree', 'stats.json'];
      case 'pools':
        if (parts.length === 0) return ['capacity', 'performance'];
        if (parts.length === 1 && parts[0] === 'capacity') return this.snaps().map(this.label);
        if (parts.length === 1 && parts[0] === 'performance') {
          const held = new Set(this.poolSnapshots());
          return this.snaps().filter((x) => held.has(x.id)).map(this.label);
        }
        break;
      case 'at':
        if (parts.length === 0) return this.snaps().map((s) => new Date(s.createdMs).toISOString());
        break;
      case 'tree': {
        if (parts.length === 0) return this.snaps().map(this.label);
        const s = this.snapByName(parts[0]);
        if (parts.length === 1) return ['data', 'children', ...(s.parent ? ['parent'] : [])];
        if (parts.length === 2 && parts[1] === 'children') return this.cat.children(s.id).map(this.label);
        throw new StrataError('ENOTDIR', 'not a directory');
      }
      case 'stats.json': throw new StrataError('ENOTDIR', 'not a directory');
    }
    throw notFound(path);
  }

  readlink(path: string): string {
    const { area, parts } = this.route(path);
    if (area === 'live') {
      const i = this.resolve(parts);
      if (i.type !== 'symlink') throw invalid('not a symlink');
      return (i.target ?? Buffer.alloc(0)).toString();
    }
    if (area === 'tree' && parts.length >= 2) {
      const t = this.treeLink(this.snapByName(parts[0]), parts.slice(1));
      if (t === null) throw invalid('not a symlink');
      return t;
    }
    const v = this.view(area, parts);
    if (!v) throw invalid('not a symlink');
    const e = this.viewEntry(v.snap, v.rest);
    if (e.type !== 'symlink') throw invalid('not a symlink');
    return (e.target ?? Buffer.alloc(0)).toString();
  }

  open(path: string, flags: number): number {
    const { area, parts } = this.route(path);
    const writing = (flags & O_ACCMODE) === O_WRONLY || (flags & O_ACCMODE) === O_RDWR || (flags & O_TRUNC) !== 0;
    if (area === 'stats.json') {
      if (writing) throw erofs();
      return this.addHandle({ kind: 'data', data: this.statsJson() });
    }
    if (area === 'live') {
      const i = this.resolve(parts);
      if (i.type === 'dir') throw new StrataError('EISDIR', 'is a directory');
      const fh = this.addHandle({ kind: 'live', ino: i.ino, flags });
      this.openCount.set(i.ino, (this.openCount.get(i.ino) ?? 0) + 1);
      if ((flags & O_TRUNC) && i.type === 'file') this.truncateInode(i, 0);
      return fh;
    }
    const v = this.view(area, parts);
    if (!v) throw notFound(path);
    if (writing) throw erofs();
    const e = this.viewEntry(v.snap, v.rest);
    if (e.type === 'dir') throw new StrataError('EISDIR', 'is a directory');
    return this.addHandle({ kind: 'view', entry: e, native: v.native });
  }

  /**
   * Stored content is read asynchronously through a per-handle prefetcher: from containers (reads
   * on the I/O pool, decoding on a worker) or, in a performance view, from the pool's native file
   * while it holds a sound copy; chunks ahead are fetched concurrently and every chunk is verified.
   * A live file with unflushed writes reads synchronously through its buffer.
   */
  read(fh: number, offset: number, length: number, into?: Buffer): Buffer | Promise<Buffer> {
    const h = this.handle(fh);
    if (h.kind === 'data') return h.data.subarray(Math.min(offset, h.data.length), Math.min(offset + length, h.data.length));
    if (h.kind === 'view') {
      const root = h.entry.content;
      if (!root) return Buffer.alloc(0);
      if (!h.reader) {
        const p = new Prefetcher((h.native && this.pool.leafSource(root)) || this.cas.objects.leafSource(root), this.cas.objects.objectSize(root));
        // Chunks that arrive are offered at once, not at the next read that comes here.
        if (this.window) p.onSettled = () => { if (p.position >= 0) this.offerAhead(fh, h, p.position); };
        h.reader = p;
      }
      const r = h.reader.read(offset, length, into);
      // What is already there goes to the window now; chunks still in flight as they arrive.
      this.offerAhead(fh, h, Math.min(offset + length, h.reader.size));
      return r;
    }
    const i = this.live.get(h.ino);
    const b = this.buffers.get(i.ino);
    if (b) return b.read(this.cas.objects, offset, length);
    if (!i.content) return Buffer.alloc(0);
    if (!h.reader || !h.reader.root.equals(i.content)) {
      h.reader?.p.close();
      h.reader = { root: i.content, p: new Prefetcher(this.cas.objects.leafSource(i.content), this.cas.objects.objectSize(i.content)) };
    }
    return h.reader.p.read(offset, Math.max(0, Math.min(length, i.size - offset)), into);
  }

  watchViews(changed: () => void): void {
    this.viewWatchers.push(changed);
  }

  useReadWindow(window: ReadWindow): void {
    this.window = window;
    window.listen((fh, position) => {
      const h = this.handles.get(fh);
      if (h?.kind !== 'view' || !h.reader) return;
      h.reader.reached(position);
      this.offerAhead(fh, h, position);
    });
  }

  /**
   * Leaves the view handle's read-ahead, from `from` on, in the FUSE layer's read window: the
   * kernel's next reads are then answered there, and the window's listener hears when a reader
   * passes the prefetcher's mark, so the read-ahead moves on. Called after each read that comes
   * here, as each fetch settles, and at each mark. A view's bytes never change and the
   * prefetcher's are verified. Nothing for a handle released meanwhile.
   */
  private offerAhead(fh: number, h: Handle_ & { kind: 'view' }, from: number): void {
    const w = this.window;
    if (!w || !h.reader || this.handles.get(fh) !== h) return;
    const size = h.reader.size;
    const mark = h.reader.offer(from, (offset, bytes, length, lease) => w.put(fh, size, offset, bytes, length, lease));
    w.mark(fh, mark);
  }

  /** Stops a handle's read-ahead: chunks in flight are dropped when they arrive. */
  private dropReader(h: Handle_, fh: number): void {
    if (h.kind === 'view' && h.reader) {
      this.window?.drop(fh);
      h.reader.close();
    } else if (h.kind === 'live') h.reader?.p.close();
  }

  // ---- Namespace: writing the live tree ------------------------------------------------------

  create(path: string, mode: number, flags: number, uid: number, gid: number): number {
    const { dir, name } = this.parentOf(this.livePath(path));
    if (this.live.lookup(dir, name) !== undefined) throw eexist(path);
    const ino = this.live.transaction(() => {
      const ino = this.live.create({ type: 'file', mode, uid, gid });
      this.live.addEntry(dir.ino, name, ino);
      this.touchDir(dir);
      return ino;
    });
    const fh = this.addHandle({ kind: 'live', ino, flags });
    this.openCount.set(ino, (this.openCount.get(ino) ?? 0) + 1);
    return fh;
  }

  write(fh: number, data: Buffer, offset: number): number | Promise<number> {
    const h = this.handle(fh);
    if (h.kind !== 'live') throw new StrataError('EBADF', 'not open for writing');
    // An open file with writes has its buffer: no inode row to read (an index query per write).
    const b = this.buffers.get(h.ino) ?? this.buffer(this.live.get(h.ino));
    const at = h.flags & O_APPEND ? b.size : offset;
    b.write(at, data);
    b.mtimeUs = nowUs();
    if (b.dirtyBytes >= FLUSH_BYTES) {
      this.scheduleFlush(h.ino);
      // Writing faster than the flusher stores: wait for its batch, so memory stays bounded
      // (FLUSH_BYTES being stored, up to twice that buffered).
      if (b.flushing && b.dirtyBytes >= 2 * FLUSH_BYTES && this.batch) return this.batch.then(() => data.length);
    }
    return data.length;
  }

  /**
   * close(2): the file's writes are flushed in the background, grouped with other files' into
   * one commit, so closing many small files costs no commit each. A failure of an earlier
   * background flush of the file is reported here.
   */
  flush(fh: number): void {
    const h = this.handle(fh);
    if (h.kind !== 'live') return;
    this.scheduleFlush(h.ino);
    this.takeError(h.ino);
  }

  /** Returns once the file's writes and the live tree's metadata are durable. */
  async fsync(fh: number): Promise<void> {
    const h = this.handle(fh);
    if (h.kind !== 'live') return;
    await this.flushFiles([h.ino]);
    this.cas.index.durable(() => undefined);
  }

  release(fh: number): void {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    this.dropReader(h, fh);
    if (h.kind !== 'live') return;
    const n = (this.openCount.get(h.ino) ?? 1) - 1;
    if (n > 0) { this.openCount.set(h.ino, n); return; }
    this.openCount.delete(h.ino);
    let inode: Inode;
    try { inode = this.live.get(h.ino); } catch { this.buffers.delete(h.ino); return; } // gone with a branch
    if (inode.nlink <= 0) {
      this.buffers.delete(h.ino);
      this.live.transaction(() => this.live.destroy(inode));
      return;
    }
    // The buffer stays (reads and getattr use it) until the flusher has stored it.
    this.scheduleFlush(h.ino);
  }

  truncate(path: string, size: number): void {
    const i = this.resolve(this.livePath(path));
    if (i.type === 'dir') throw new StrataError('EISDIR', 'is a directory');
    this.truncateInode(i, size);
    if (!this.openCount.get(i.ino)) this.scheduleFlush(i.ino);
  }

  ftruncate(fh: number, size: number): void {
    const h = this.handle(fh);
    if (h.kind !== 'live') throw erofs();
    this.truncateInode(this.live.get(h.ino), size);
  }

  private truncateInode(i: Inode, size: number): void {
    if (i.type !== 'file') throw invalid('not a regular file');
    const b = this.buffer(i);
    b.truncate(size);
    b.mtimeUs = nowUs();
  }

  unlink(path: string): void {
    const { dir, name } = this.parentOf(this.livePath(path));
    const ino = this.live.lookup(dir, name);
    if (ino === undefined) throw notFound(path);
    const i = this.live.get(ino);
    if (i.type === 'dir') throw new StrataError('EISDIR', 'is a directory');
    this.live.transaction(() => {
      this.live.removeEntry(dir.ino, name);
      this.touchDir(dir);
      this.dropLink(i);
    });
  }

  /** One name less for an inode: gone when no name and no open handle is left. */
  private dropLink(i: Inode): void {
    const nlink = i.type === 'dir' ? 0 : i.nlink - 1;
    this.live.update(i.ino, { nlink, ctimeUs: nowUs() });
    if (nlink > 0) this.live.invalidateParentsOf(i.ino);
    else if (!this.openCount.get(i.ino)) {
      this.buffers.delete(i.ino);
      this.live.destroy({ ...i, nlink });
    }
  }

  rename(from: string, to: string): void {
    const src = this.parentOf(this.livePath(from));
    const dst = this.parentOf(this.livePath(to));
    const ino = this.live.lookup(src.dir, src.name);
    if (ino === undefined) throw notFound(from);
    const moving = this.live.get(ino);
    if (moving.type === 'dir') {
      // A directory cannot move below itself.
      for (let d: number | null = dst.dir.ino; d !== null; d = this.live.get(d).parent) {
        if (d === ino) throw invalid('cannot move a directory into itself');
      }
    }
    const existing = this.live.lookup(dst.dir, dst.name);
    if (existing === ino) return;
    this.live.transaction(() => {
      if (existing !== undefined) {
        const old = this.live.get(existing);
        if (old.type === 'dir') {
          if (moving.type !== 'dir') throw new StrataError('EISDIR', `${to} is a directory`);
          if (!this.live.isEmpty(old)) throw new StrataError('ENOTEMPTY', `${to} is not empty`);
          this.touchDir(dst.dir, -1);
        } else if (moving.type === 'dir') {
          throw new StrataError('ENOTDIR', `${to} is not a directory`);
        }
        this.live.removeEntry(dst.dir.ino, dst.name);
        this.dropLink(old);
      }
      this.live.removeEntry(src.dir.ino, src.name);
      this.live.addEntry(dst.dir.ino, dst.name, ino);
      const dirDelta = moving.type === 'dir' && src.dir.ino !== dst.dir.ino ? 1 : 0;
      this.touchDir(this.live.get(src.dir.ino), -dirDelta);
      this.touchDir(this.live.get(dst.dir.ino), dirDelta);
      this.live.update(ino, { ctimeUs: nowUs(), parent: moving.type === 'dir' ? dst.dir.ino : undefined });
    });
  }

  mkdir(path: string, mode: number, uid: number, gid: number): void {
    const { dir, name } = this.parentOf(this.livePath(path));
    if (this.live.lookup(dir, name) !== undefined) throw eexist(path);
    this.live.transaction(() => {
      const ino = this.live.create({ type: 'dir', mode, uid, gid, nlink: 2, parent: dir.ino });
      this.live.addEntry(dir.ino, name, ino);
      this.touchDir(dir, 1);
    });
  }

  rmdir(path: string): void {
    const { dir, name } = this.parentOf(this.livePath(path));
    const ino = this.live.lookup(dir, name);
    if (ino === undefined) throw notFound(path);
    const d = this.live.get(ino);
    if (d.type !== 'dir') throw new StrataError('ENOTDIR', 'not a directory');
    if (!this.live.isEmpty(d)) throw new StrataError('ENOTEMPTY', `${path} is not empty`);
    this.live.transaction(() => {
      this.live.removeEntry(dir.ino, name);
      this.touchDir(dir, -1);
      this.live.destroy(d);
    });
  }

  symlink(target: string, path: string, uid: number, gid: number): void {
    const { dir, name } = this.parentOf(this.livePath(path));
    if (this.live.lookup(dir, name) !== undefined) throw eexist(path);
    this.live.transaction(() => {
      const ino = this.live.create({ type: 'symlink', mode: 0o777, uid, gid, target: Buffer.from(target) });
      this.live.addEntry(dir.ino, name, ino);
      this.touchDir(dir);
    });
  }

  link(existing: string, path: string): void {
    const i = this.resolve(this.livePath(existing));
    if (i.type === 'dir') throw new StrataError('EPERM', 'hard links to directories are not allowed');
    const { dir, name } = this.parentOf(this.livePath(path));
    if (this.live.lookup(dir, name) !== undefined) throw eexist(path);
    this.live.transaction(() => {
      this.live.addEntry(dir.ino, name, i.ino);
      this.live.update(i.ino, { nlink: i.nlink + 1, ctimeUs: nowUs() });
      this.touchDir(dir);
      this.live.invalidateParentsOf(i.ino);
    });
  }

  private changeMeta(path: string, f: Parameters<LiveTree['update']>[1]): void {
    const i = this.resolve(this.livePath(path));
    this.live.transaction(() => {
      this.live.update(i.ino, { ...f, ctimeUs: nowUs() });
      if (i.ino === ROOT_INO) this.live.invalidate(ROOT_INO);
      else if (i.type === 'dir') this.live.invalidate(i.ino);
      else this.live.invalidateParentsOf(i.ino);
    });
  }

  chmod(path: string, mode: number): void {
    this.changeMeta(path, { mode });
  }

  chown(path: string, uid: number, gid: number): void {
    const i = this.resolve(this.livePath(path));
    this.changeMeta(path, { uid: uid === -1 || uid === 0xffffffff ? i.uid : uid, gid: gid === -1 || gid === 0xffffffff ? i.gid : gid });
  }

  utimens(path: string, atimeMs: number | undefined, mtimeMs: number | undefined): void {
    const parts = this.livePath(path);
    const i = this.resolve(parts);
    const b = this.buffers.get(i.ino);
    if (b && mtimeMs !== undefined) b.timeSet(); // an explicit time wins over the pending (or flushing) writes' time
    this.changeMeta(path, {
      atimeUs: atimeMs === undefined ? undefined : Math.round(atimeMs * 1000),
      mtimeUs: mtimeMs === undefined ? undefined : Math.round(mtimeMs * 1000),
    });
  }

  statfs(): StatFs {
    const s = fs.statfsSync(this.cas.dir);
    return {
      bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail,
      files: s.files, ffree: s.ffree, favail: s.ffree, namemax: NAME_MAX,
    };
  }

  // ---- extended attributes -------------------------------------------------------------------

  private xattrsOf(path: string): Array<[string, Buffer]> {
    const { area, parts } = this.route(path);
    if (area === 'live') return this.resolve(parts).xattrs;
    const v = this.view(area, parts);
    if (v) return this.viewEntry(v.snap, v.rest).xattrs ?? [];
    this.getattr(path); // ENOENT for what does not exist
    return [];
  }

  getxattr(path: string, name: string): Buffer {
    const x = this.xattrsOf(path).find(([n]) => n === name);
    if (!x) throw new StrataError('ENODATA', `no attribute ${name}`);
    return x[1];
  }

  listxattr(path: string): string[] {
    return this.xattrsOf(path).map(([n]) => n);
  }

  setxattr(path: string, name: string, value: Buffer, flags: number): void {
    // POSIX ACLs are not kept: refusing them makes cp -a and friends fall back to chmod, so the
    // mode survives (storing them as plain attributes would leave the mode at the umask's).
    if (name.startsWith('system.posix_acl_')) throw new StrataError('EOPNOTSUPP', 'POSIX ACLs are not supported; use the mode');
    const i = this.resolve(this.livePath(path));
    const XATTR_CREATE = 1;
    const XATTR_REPLACE = 2;
    const has = i.xattrs.some(([n]) => n === name);
    if (flags & XATTR_CREATE && has) throw new StrataError('EEXIST', `attribute ${name} exists`);
    if (flags & XATTR_REPLACE && !has) throw new StrataError('ENODATA', `no attribute ${name}`);
    const next = i.xattrs.filter(([n]) => n !== name).concat([[name, Buffer.from(value)]]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    this.changeMeta(path, { xattrs: next });
  }

  removexattr(path: string, name: string): void {
    const i = this.resolve(this.livePath(path));
    if (!i.xattrs.some(([n]) => n === name)) throw new StrataError('ENODATA', `no attribute ${name}`);
    this.changeMeta(path, { xattrs: i.xattrs.filter(([n]) => n !== name) });
  }

  // What is inside a snapshot folder (pools/capacity/NAME, pools/performance/NAME, at/TIME) never
  // changes, but which snapshot a folder shows can: at/TIME moves on when a snapshot at or before
  // TIME is taken or received, a pool's NAME may come to mean another snapshot after the replication
  // receiver's retention removed the first, and the performance pool lets snapshots go. So the
  // folders keep the short timeout and carry a generation per snapshot (getattr): the kernel
  // revalidates a folder within a second, and when its generation changed (or it is gone) drops
  // what it cached below it. Listings inside views are kept until the snapshots change
  // (watchViews()).
  cacheTimeout(path: string): number {
    return this.depthInView(path) > 0 ? VIEW_TIMEOUT : LIVE_TIMEOUT;
  }

  listingTimeout(path: string): number {
    return this.depthInView(path) >= 0 ? VIEW_TIMEOUT : 0;
  }

  /** How deep `path` lies below a snapshot folder (0: the folder itself), or -1 outside the views. */
  private depthInView(path: string): number {
    const { area, parts } = this.route(path);
    if (area === 'pools' && (parts[0] === 'capacity' || parts[0] === 'performance')) return parts.length - 2;
    return area === 'at' ? parts.length - 1 : -1;
  }

  // ---- flushing, snapshots, branches ---------------------------------------------------------

  // The flusher: one asynchronous loop stores files' unflushed writes, in batches. It chunks in
  // slices between which FUSE requests are answered (writes go on into the same files' buffers,
  // reads see the flushing writes), waits for compressions without blocking, and commits each
  // batch (every file's content root and size with the chunks' index rows) in one relaxed
  // transaction. Only this loop and the synchronous tails of flushAll's callers (snapshot,
  // branch) commit the chunk store, so a batch's pending chunks are never committed half-built
  // by another flush.

  /** Queues a file for the flusher and starts it if idle. */
  private scheduleFlush(ino: number): void {
    this.flushQueue.add(ino);
    this.kick();
  }

  private kick(): void {
    if (this.flusher) return;
    const run = (async () => {
      while (this.flushQueue.size) {
        const inos = [...this.flushQueue];
        this.flushQueue.clear();
        this.batch = this.flushBatch(inos);
        await this.batch;
        this.batch = null;
      }
    })();
    // The callback runs after the assignment below even when the loop had nothing to await.
    this.flusher = run.catch((e: unknown) => process.emitWarning(`flusher: ${asError(e).message}`)).finally(() => {
      this.flusher = null;
      if (this.flushQueue.size) this.kick();
    });
  }

  /** Flushes `inos` and commits them together. Never throws: a file's failure is kept on its buffer. */
  private async flushBatch(inos: number[]): Promise<void> {
    const chunks = this.cas.chunks;
    const watch = chunks.watch();
    const staged: Staged[] = [];
    const fail = (e: unknown) => {
      for (const s of staged) {
        s.b.abortFlush(s.job);
        s.b.error = asError(e);
      }
    };
    try {
      for (const ino of inos) {
        const b = this.buffers.get(ino);
        if (!b || b.flushing) continue;
        if (!b.dirty) {
          this.dropIfClosed(ino, b);
          continue;
        }
        const job = b.beginFlush();
        const broken = this.offload?.broken ?? null;
        try {
          const info = await rewriteContentAsync(this.cas.objects, job, this.offload);
          staged.push({ ino, b, job, root: info.root, size: info.size });
        } catch (e) {
          b.abortFlush(job);
          // The chunk worker died under this flush: do it again on this thread.
          if (this.offload?.broken && !broken) this.flushQueue.add(ino);
          else b.error = asError(e);
        }
      }
      if (staged.length === 0) return;
      try {
        await chunks.settle();
        // The batch's container bytes become durable before the index rows naming them commit
        // (see ChunkStore.commit), without blocking FUSE while the disk works.
        await chunks.syncContainersAsync();
      } catch (e) {
        fail(e);
        return;
      }
      if (!chunks.intact(watch)) {
        // A chunk the batch found stored was freed meanwhile (or an abort dropped its chunks):
        // build it again rather than commit content naming what is gone.
        for (const s of staged) {
          s.b.abortFlush(s.job);
          this.flushQueue.add(s.ino);
        }
        return;
      }
      try {
        chunks.commit(() => { for (const s of staged) this.storeContent(s); });
      } catch (e) {
        fail(e);
        return;
      }
      for (const s of staged) {
        s.b.endFlush(s.job, s.root);
        this.dropIfClosed(s.ino, s.b);
      }
    } finally {
      chunks.unwatch(watch);
    }
  }

  /** Inside the batch's commit: the file's new content root, size and mtime. */
  private storeContent(s: Staged): void {
    // Unlinked and closed, or dropped by a branch, while it was being flushed: nothing to store.
    if (this.buffers.get(s.ino) !== s.b) return;
    const inode = this.live.get(s.ino);
    this.live.setContent(s.ino, inode.content, s.root);
    const t = s.b.mtimeToStore(s.job);
    this.live.update(s.ino, { size: s.size, mtimeUs: t, ctimeUs: t });
    this.live.invalidateParentsOf(s.ino);
  }

  /** A closed file's buffer goes once everything in it is stored. */
  private dropIfClosed(ino: number, b: FileBuffer): void {
    if (!this.openCount.get(ino) && this.buffers.get(ino) === b && !b.dirty && !b.flushing && !b.error) this.buffers.delete(ino);
  }

  /** Throws (once) the error of the file's last failed background flush. */
  private takeError(ino: number): void {
    const b = this.buffers.get(ino);
    if (!b?.error) return;
    const e = b.error;
    b.error = null;
    throw e instanceof StrataError ? e : new StrataError('EIO', `storing the file's writes failed: ${e.message}`, { cause: e });
  }

  /**
   * Stores the files' writes made so far (waiting for flushes of theirs already running); throws a
   * failure. Writes that arrive meanwhile are not waited for, so a busy writer cannot starve it.
   */
  private async flushFiles(inos: number[]): Promise<void> {
    // Per file: the flush whose end means everything written so far is stored.
    const wanted = new Map<number, { b: FileBuffer; flush: number }>();
    for (const ino of inos) {
      this.takeError(ino);
      const b = this.buffers.get(ino);
      if (!b) continue;
      if (b.dirty) wanted.set(ino, { b, flush: b.flushesBegun + 1 });
      else if (b.flushing) wanted.set(ino, { b, flush: b.flushesBegun });
    }
    while (wanted.size) {
      for (const [ino, w] of wanted) {
        // Stored, or gone (unlinked and closed, a branch): nothing more to wait for.
        if (w.b.lastFlushEnded >= w.flush || this.buffers.get(ino) !== w.b) wanted.delete(ino);
        else if (w.b.dirty && !w.b.flushing) this.flushQueue.add(ino);
      }
      if (wanted.size === 0) break;
      this.kick();
      await (this.batch ?? this.flusher);
      for (const ino of wanted.keys()) this.takeError(ino);
    }
  }

  /**
   * Flushes every file with unflushed writes and waits for the flusher to stop; durable: everything
   * is fsynced before returning. Throws a file's flush failure (its writes stay buffered).
   */
  async flushAll(durable = true): Promise<void> {
    await this.flushFiles([...this.buffers.keys()]);
    if (durable) this.cas.index.durable(() => undefined);
  }

  /**
   * Captures the live tree as a snapshot, a child of the live tree's head. Work follows what
   * changed since the last snapshot: unchanged directories keep their stored trees.
   */
  async snapshot(name?: string | null): Promise<SnapshotInfo> {
    if (name != null) this.cat.checkNewName(name);
    await this.flushAll(false);
    const rootTree = this.serialize(ROOT_INO);
    const root = this.live.get(ROOT_INO);
    const entry: TreeEntry = {
      name: Buffer.from('live'), type: 'dir', mode: root.mode, uid: root.uid, gid: root.gid,
      mtimeNs: BigInt(root.mtimeUs) * 1000n, atimeNs: BigInt(root.atimeUs) * 1000n, size: 0, content: rootTree,
      xattrs: root.xattrs.length ? root.xattrs : undefined,
    };
    const parent = this.head ? this.snaps().find((s) => s.id === this.head) ?? null : null;
    const totals = this.totals(parent, entry);
    const snap = this.cat.create({ name: name ?? null, parent: parent?.id ?? null, source: null, entry, ...totals });
    this.cas.index.durable(() => this.cas.index.setMeta('live_head', snap.id));
    this.catalogueChanged();
    // The performance pool catches up in the background; its view appears when it is done.
    this.pool.schedule(snap.id).catch((e: Error) => process.emitWarning(`performance pool update for ${snap.id} failed: ${e.message}`));
    return snap;
  }

  /** Logical bytes and file count, from the parent's figures plus the difference (cost follows the change). */
  private totals(parent: SnapshotInfo | null, entry: TreeEntry): { logicalBytes: number; fileCount: number } {
    if (!parent) return this.walkTotals(entry);
    let { logicalBytes, fileCount } = parent;
    const prev = this.cat.rootEntry(parent);
    for (const c of diffEntries(this.cas.objects, prev.type === 'dir' ? prev : { ...entry, content: null }, entry)) {
      const sign = c.change === 'removed' ? -1 : 1;
      if (c.change === 'added' || c.change === 'removed') {
        const side = c.change === 'added' ? entry : prev;
        const t = this.walkTotals(lookupPath(this.cas.objects, side, c.path));
        logicalBytes += sign * t.logicalBytes;
        fileCount += sign * t.fileCount;
      } else if (c.type === 'file') {
        logicalBytes += (c.sizeB ?? 0) - (c.sizeA ?? 0);
      }
    }
    return { logicalBytes, fileCount };
  }

  private walkTotals(e: TreeEntry): { logicalBytes: number; fileCount: number } {
    if (e.type === 'file') return { logicalBytes: e.size, fileCount: 1 };
    if (e.type !== 'dir' || !e.content) return { logicalBytes: 0, fileCount: 0 };
    let logicalBytes = 0;
    let fileCount = 0;
    for (const c of this.cas.objects.readTree(e.content)) {
      const t = this.walkTotals(c);
      logicalBytes += t.logicalBytes;
      fileCount += t.fileCount;
    }
    return { logicalBytes, fileCount };
  }

  /** A directory's tree handle, writing trees only for directories changed since last time. */
  private serialize(ino: number): Handle {
    const d = this.live.get(ino);
    if (d.content) return d.content;
    const entries: TreeEntry[] = this.live.list(d).map(({ name, ino: c }) => {
      const i = this.live.get(c);
      return {
        name, type: i.type, mode: i.mode, uid: i.uid, gid: i.gid,
        mtimeNs: BigInt(i.mtimeUs) * 1000n, atimeNs: BigInt(i.atimeUs) * 1000n,
        size: i.type === 'file' ? i.size : 0,
        content: i.type === 'dir' ? this.serialize(c) : i.content,
        target: i.target ?? undefined, rdev: i.rdev || undefined,
        xattrs: i.xattrs.length ? i.xattrs : undefined,
        linkGroup: i.type !== 'dir' && i.nlink > 1 ? i.ino : undefined,
      };
    });
    const tree = this.cas.objects.writeTree(entries);
    this.cas.chunks.commit(() => this.live.cacheTree(ino, tree));
    return tree;
  }

  /**
   * Restarts the live tree from a snapshot (restore, then modify): the next snapshot becomes a
   * new child of it and the old line stays as it is. Instant: directories load when visited.
   */
  async branch(ref: string): Promise<SnapshotInfo> {
    const snap = this.cat.get(ref);
    const root = this.cat.rootEntry(snap);
    if (root.type !== 'dir') throw invalid(`snapshot ${ref} holds a single file; branch needs a directory snapshot`);
    await this.flushAll(false);
    this.buffers.clear();
    this.openCount.clear();
    for (const [fh, h] of this.handles) if (h.kind === 'live') this.handles.delete(fh);
    this.cas.chunks.commit();
    this.cas.index.durable(() => {
      this.live.reset(root);
      this.cas.index.setMeta('live_head', snap.id);
    });
    this.catalogueChanged();
    return snap;
  }

  /** Flushes everything; the caller closes the store. */
  async close(): Promise<void> {
    await this.flushAll(true);
    await this.pool.idle();
    this.pool.close();
    this.offload?.close();
  }

  private addHandle(h: Handle_): number {
    const fh = this.nextFh++;
    this.handles.set(fh, h);
    return fh;
  }

  private handle(fh: number): Handle_ {
    const h = this.handles.get(fh);
    if (!h) throw new StrataError('EBADF', `bad file handle ${fh}`);
    return h;
  }
}
