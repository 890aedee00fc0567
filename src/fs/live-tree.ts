import type Database from 'better-sqlite3';
import { releaseRefs } from '../cas/release.js';
import type { CasStore } from '../cas/store.js';
import { invalid, notFound, StrataError } from '../errors.js';
import type { EntryType, Handle, TreeEntry } from '../types.js';

// The live tree's namespace, persisted in the index database so it survives remounts and a
// killed daemon. A directory is "loaded" once its entries are rows; until then they live only in
// its stored tree (content), which is how a branch from a snapshot of any size is instant.
// The live tree holds one reference on every file content and every cached directory tree, so
// removing snapshots never frees what the live tree shows.

const SCHEMA = `
CREATE TABLE IF NOT EXISTS live_inodes (
  ino INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  mode INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  gid INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  atime_us INTEGER NOT NULL,
  mtime_us INTEGER NOT NULL,
  ctime_us INTEGER NOT NULL,
  nlink INTEGER NOT NULL DEFAULT 1,
  content BLOB,
  loaded INTEGER NOT NULL DEFAULT 1,
  parent INTEGER,
  target BLOB,
  rdev INTEGER NOT NULL DEFAULT 0,
  xattrs TEXT
);
CREATE TABLE IF NOT EXISTS live_dirents (
  parent INTEGER NOT NULL,
  name BLOB NOT NULL,
  ino INTEGER NOT NULL,
  PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS live_dirents_ino ON live_dirents(ino);
CREATE TABLE IF NOT EXISTS live_links (grp INTEGER PRIMARY KEY, ino INTEGER NOT NULL);
`;

export const ROOT_INO = 1;

/** Handles a (possibly unmounted) store's live tree keeps alive; none if it was never mounted. */
export function liveHeldHandles(db: Database.Database): Handle[] {
  const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'live_inodes'").get();
  return has ? (db.prepare('SELECT content FROM live_inodes WHERE content IS NOT NULL').pluck().all() as Buffer[]) : [];
}

export interface Inode {
  ino: number;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  atimeUs: number;
  mtimeUs: number;
  ctimeUs: number;
  nlink: number;
  /** File: object root. Dir: cached tree handle (null once changed since last serialised). */
  content: Handle | null;
  loaded: boolean;
  parent: number | null;
  target: Buffer | null;
  rdev: number;
  xattrs: Array<[string, Buffer]>;
}

interface Row {
  ino: number; type: EntryType; mode: number; uid: number; gid: number; size: number;
  atime_us: number; mtime_us: number; ctime_us: number; nlink: number; content: Buffer | null;
  loaded: number; parent: number | null; target: Buffer | null; rdev: number; xattrs: string | null;
}

const toInode = (r: Row): Inode => ({
  ino: r.ino, type: r.type, mode: r.mode, uid: r.uid, gid: r.gid, size: r.size,
  atimeUs: r.atime_us, mtimeUs: r.mtime_us, ctimeUs: r.ctime_us, nlink: r.nlink, content: r.content,
  loaded: r.loaded === 1, parent: r.parent, target: r.target, rdev: r.rdev,
  xattrs: r.xattrs ? (JSON.parse(r.xattrs) as [string, string][]).map(([n, v]) => [n, Buffer.from(v, 'base64')]) : [],
});

const xattrsJson = (x: Array<[string, Buffer]>) => (x.length ? JSON.stringify(x.map(([n, v]) => [n, v.toString('base64')])) : null);

export const nowUs = () => Date.now() * 1000;
const usFromNs = (ns: bigint) => Number(ns / 1000n);

export class LiveTree {
  private readonly db: Database.Database;
  private readonly q;

  constructor(private readonly cas: CasStore) {
    this.db = cas.index.db;
    this.db.exec(SCHEMA);
    const db = this.db;
    this.q = {
      get: db.prepare('SELECT * FROM live_inodes WHERE ino = ?'),
      lookup: db.prepare('SELECT ino FROM live_dirents WHERE parent = ? AND name = ?').pluck(),
      list: db.prepare('SELECT name, ino FROM live_dirents WHERE parent = ? ORDER BY name'),
      listInodes: db.prepare('SELECT d.name AS entry_name, i.* FROM live_dirents d JOIN live_inodes i ON i.ino = d.ino WHERE d.parent = ? ORDER BY d.name'),
      count: db.prepare('SELECT count(*) FROM live_dirents WHERE parent = ?').pluck(),
      link: db.prepare('INSERT INTO live_dirents (parent, name, ino) VALUES (?, ?, ?)'),
      unlink: db.prepare('DELETE FROM live_dirents WHERE parent = ? AND name = ?'),
      parentsOf: db.prepare('SELECT DISTINCT parent FROM live_dirents WHERE ino = ?').pluck(),
      insert: db.prepare(`INSERT INTO live_inodes (type, mode, uid, gid, size, atime_us, mtime_us, ctime_us, nlink, content, loaded, parent, target, rdev, xattrs)
                          VALUES (@type, @mode, @uid, @gid, @size, @atime_us, @mtime_us, @ctime_us, @nlink, @content, @loaded, @parent, @target, @rdev, @xattrs)`),
      setContent: db.prepare('UPDATE live_inodes SET content = ? WHERE ino = ?'),
      del: db.prepare('DELETE FROM live_inodes WHERE ino = ?'),
      linkGroup: db.prepare('SELECT ino FROM live_links WHERE grp = ?').pluck(),
      setLinkGroup: db.prepare('INSERT OR REPLACE INTO live_links (grp, ino) VALUES (?, ?)'),
    };
    if (!this.q.get.get(ROOT_INO)) this.createRoot(null, null);
  }

  transaction<T>(fn: () => T): T {
    return this.cas.index.transaction(fn);
  }

  get(ino: number): Inode {
    const r = this.q.get.get(ino) as Row | undefined;
    if (!r) throw notFound(`inode ${ino}`);
    return toInode(r);
  }

  /** Child inode number by name, loading the directory's entries first if needed. */
  lookup(dir: Inode, name: Buffer): number | undefined {
    if (dir.type !== 'dir') throw new StrataError('ENOTDIR', 'not a directory');
    this.ensureLoaded(dir);
    return this.q.lookup.get(dir.ino, name) as number | undefined;
  }

  list(dir: Inode): { name: Buffer; ino: number }[] {
    this.ensureLoaded(dir);
    return this.q.list.all(dir.ino) as { name: Buffer; ino: number }[];
  }

  /** A directory's entries with their inodes, in one query (a listing with attributes). */
  listInodes(dir: Inode): { name: Buffer; inode: Inode }[] {
    this.ensureLoaded(dir);
    return (this.q.listInodes.all(dir.ino) as (Row & { entry_name: Buffer })[]).map((r) => ({ name: r.entry_name, inode: toInode(r) }));
  }

  isEmpty(dir: Inode): boolean {
    this.ensureLoaded(dir);
    return (this.q.count.get(dir.ino) as number) === 0;
  }

  /** Creates an inode (not yet linked anywhere). */
  create(fields: Partial<Inode> & { type: EntryType; mode: number; uid: number; gid: number }): number {
    const t = nowUs();
    const r = this.q.insert.run({
      type: fields.type, mode: fields.mode & 0o7777, uid: fields.uid, gid: fields.gid, size: fields.size ?? 0,
      atime_us: fields.atimeUs ?? t, mtime_us: fields.mtimeUs ?? t, ctime_us: fields.ctimeUs ?? t,
      nlink: fields.nlink ?? 1, content: fields.content ?? null, loaded: fields.loaded === false ? 0 : 1,
      parent: fields.parent ?? null, target: fields.target ?? null, rdev: fields.rdev ?? 0,
      xattrs: xattrsJson(fields.xattrs ?? []),
    });
    return Number(r.lastInsertRowid);
  }

  /** Updates metadata columns (not content: see setContent). */
  update(ino: number, f: Partial<Pick<Inode, 'mode' | 'uid' | 'gid' | 'size' | 'atimeUs' | 'mtimeUs' | 'ctimeUs' | 'nlink' | 'parent' | 'xattrs'>>): void {
    const sets: string[] = [];
    const vals: unknown[] = [];
    const col: Record<string, string> = { mode: 'mode', uid: 'uid', gid: 'gid', size: 'size', atimeUs: 'atime_us', mtimeUs: 'mtime_us', ctimeUs: 'ctime_us', nlink: 'nlink', parent: 'parent' };
    for (const [k, v] of Object.entries(f)) {
      if (v === undefined) continue;
      if (k === 'xattrs') { sets.push('xattrs = ?'); vals.push(xattrsJson(v as Array<[string, Buffer]>)); }
      else { sets.push(`${col[k]} = ?`); vals.push(k === 'mode' ? (v as number) & 0o7777 : v); }
    }
    if (sets.length) this.db.prepare(`UPDATE live_inodes SET ${sets.join(', ')} WHERE ino = ?`).run(...vals, ino);
  }

  addEntry(dir: number, name: Buffer, ino: number): void {
    this.q.link.run(dir, name, ino);
  }

  removeEntry(dir: number, name: Buffer): void {
    this.q.unlink.run(dir, name);
  }

  /**
   * Replaces a file's content root, keeping the live tree's reference count right. The new root
   * must already be committed (or be committed in the same transaction by the caller).
   */
  setContent(ino: number, old: Handle | null, next: Handle | null): void {
    if (next) this.cas.index.addRefs(next, 1);
    this.q.setContent.run(next, ino);
    if (old) releaseRefs(this.cas, [old]);
  }

  /** A directory changed: its cached tree (and its ancestors') no longer describe it. */
  invalidate(dirIno: number): void {
    for (let ino: number | null = dirIno; ino !== null;) {
      const d = this.get(ino);
      if (d.content === null) break; // invariant: ancestors of an invalid dir are invalid
      this.q.setContent.run(null, ino);
      releaseRefs(this.cas, [d.content]);
      ino = d.parent;
    }
  }

  /** Invalidates every directory holding a link to `ino` (a file changed). */
  invalidateParentsOf(ino: number): void {
    for (const p of this.q.parentsOf.all(ino) as number[]) this.invalidate(p);
  }

  /** Caches a directory's freshly written tree (the live tree takes a reference on it). */
  cacheTree(ino: number, tree: Handle): void {
    this.cas.index.addRefs(tree, 1);
    this.q.setContent.run(tree, ino);
  }

  /** Deletes an inode nobody links or holds open any more, releasing its content. */
  destroy(inode: Inode): void {
    this.q.del.run(inode.ino);
    if (inode.content) releaseRefs(this.cas, [inode.content]);
  }

  /** Drops the whole live tree and starts again from a stored directory entry (or empty). */
  reset(root: TreeEntry | null): void {
    const held = this.db.prepare('SELECT content FROM live_inodes WHERE content IS NOT NULL').pluck().all() as Buffer[];
    this.db.exec('DELETE FROM live_inodes; DELETE FROM live_dirents; DELETE FROM live_links;');
    if (root?.content) this.cas.index.addRefs(root.content, 1); // before releasing: the new tree may share with the old
    this.createRoot(root, null);
    releaseRefs(this.cas, held);
  }


  /** Removes inodes left unlinked (open-but-unlinked files of a daemon that died). */
  collectOrphans(): number {
    const orphans = this.db.prepare(`SELECT * FROM live_inodes WHERE ino != ${ROOT_INO} AND nlink <= 0`).all() as Row[];
    for (const o of orphans) this.destroy(toInode(o));
    return orphans.length;
  }

  private createRoot(root: TreeEntry | null, _unused: null): void {
    const t = nowUs();
    this.db.prepare(`INSERT INTO live_inodes (ino, type, mode, uid, gid, size, atime_us, mtime_us, ctime_us, nlink, content, loaded, parent)
                     VALUES (?, 'dir', ?, ?, ?, 0, ?, ?, ?, 2, ?, ?, NULL)`)
      .run(ROOT_INO, root ? root.mode : 0o755, root?.uid ?? 0, root?.gid ?? 0,
        root ? usFromNs(root.atimeNs) : t, root ? usFromNs(root.mtimeNs) : t, t, root?.content ?? null, root?.content ? 0 : 1);
    if (root?.xattrs?.length) this.update(ROOT_INO, { xattrs: root.xattrs });
  }

  /** Turns a directory's stored entries into rows (one level), taking references on their content. */
  private ensureLoaded(dir: Inode): void {
    if (dir.loaded) return;
    if (!dir.content) throw invalid(`directory inode ${dir.ino} has neither rows nor a stored tree`);
    const entries = this.cas.objects.readTree(dir.content);
    this.transaction(() => {
      for (const e of entries) {
        let ino = e.linkGroup ? (this.q.linkGroup.get(e.linkGroup) as number | undefined) : undefined;
        if (ino !== undefined) {
          this.db.prepare('UPDATE live_inodes SET nlink = nlink + 1 WHERE ino = ?').run(ino);
        } else {
          ino = this.create({
            type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, size: e.size,
            atimeUs: usFromNs(e.atimeNs), mtimeUs: usFromNs(e.mtimeNs), ctimeUs: usFromNs(e.mtimeNs),
            nlink: e.type === 'dir' ? 2 : 1, content: e.content, loaded: e.type !== 'dir' || !e.content,
            parent: e.type === 'dir' ? dir.ino : null, target: e.target ?? null, rdev: e.rdev ?? 0, xattrs: e.xattrs ?? [],
          });
          if (e.content) this.cas.index.addRefs(e.content, 1);
          if (e.linkGroup) this.q.setLinkGroup.run(e.linkGroup, ino);
        }
        this.addEntry(dir.ino, e.name, ino);
      }
      this.db.prepare('UPDATE live_inodes SET loaded = 1 WHERE ino = ?').run(dir.ino);
    });
    dir.loaded = true;
  }
}
