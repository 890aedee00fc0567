// Imports a host file or directory tree into the store: file contents become objects, directories
// become trees (written bottom-up), with full metadata (owner, mode, ns times, xattrs, hard links,
// symlinks, special files). Paths are Buffers throughout so names that are not UTF-8 survive.

import fs from 'node:fs';
import * as xattr from 'fs-xattr';
import { displayName } from '../cas/tree-codec.js';
import { StrataError, invalid, notFound } from '../errors.js';
import {
  Chunking,
  type ContentSource,
  type EntryType,
  type Handle,
  type ObjectWriter,
  type TreeEntry,
  type TreeReader,
  type TreeWriter,
} from '../types.js';

export interface ImportDeps {
  objects: ObjectWriter;
  trees: TreeWriter;
  /** The previous snapshot of the same source: its file contents are passed as dedup predecessors. */
  previous?: { trees: TreeReader; root: Handle; rootType: 'dir' | 'file' } | null;
}

export interface ImportOptions {
  /** Chunking for file contents; default Fixed for a single-file import (images), Cdc inside a tree. */
  chunking?: Chunking;
  /** Called at most every ~200 ms during the import, and once at the end with the totals. */
  onProgress?: (p: { files: number; bytes: number; path: string }) => void;
}

export interface ImportResult {
  /** Root tree handle (rootType 'dir') or the file's object root (rootType 'file'). */
  root: Handle;
  rootType: 'dir' | 'file';
  /** Content bytes read; hard-linked content counts once. */
  logicalBytes: number;
  /** Regular-file entries, each hard link counted. */
  fileCount: number;
  /** Directories, the root included. */
  dirCount: number;
  /**
   * The imported root itself as an entry (its own mode, owner, times, xattrs; content = root), so a
   * restore can reproduce the top directory's metadata too. Its name is the host basename ('' for '/').
   */
  rootEntry: TreeEntry;
}

const PROGRESS_INTERVAL_MS = 200;

/**
 * O_PATH (Linux; the value on x86, arm, arm64 and riscv): opens special files (fifos, sockets,
 * devices) without their open side effects, just to reach their xattrs. Not in fs.constants.
 */
export const O_PATH = 0o10000000;
const HAVE_O_PATH = process.platform === 'linux';

/**
 * Imports `hostPath` (a regular file or a directory, symlinks in the path itself resolved) and
 * returns the root handle; throws invalid(...) for an empty single file or another kind of node,
 * and a StrataError naming the host path (ENOENT if it vanished, EIO otherwise) when the host fails.
 */
export function importHostPath(hostPath: string | Buffer, deps: ImportDeps, opts: ImportOptions = {}): ImportResult {
  let top: Buffer;
  try {
    top = fs.realpathSync(Buffer.from(hostPath), { encoding: 'buffer' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`host path ${displayName(Buffer.from(hostPath))}`);
    throw hostError(e, 'resolve', Buffer.from(hostPath));
  }
  const st = statOrThrow(top);
  const name = baseName(top);
  const prev = deps.previous ?? null;
  const importer = new Importer(deps, opts);

  let rootEntry: TreeEntry;
  let rootType: 'dir' | 'file';
  if (st.isFile()) {
    const predecessor = prev && prev.rootType === 'file' ? prev.root : null;
    rootEntry = importer.importFile(top, name, st, predecessor, opts.chunking ?? Chunking.Fixed, false);
    if (rootEntry.content === null) throw invalid(`empty file ${displayName(top)}: nothing to import`);
    rootType = 'file';
  } else if (st.isDirectory()) {
    const prevTree = prev && prev.rootType === 'dir' ? prev.root : null;
    rootEntry = importer.importDir(top, name, prevTree);
    rootType = 'dir';
  } else {
    throw invalid(`${displayName(top)} is not a regular file or a directory`);
  }
  importer.report(true);
  return {
    root: rootEntry.content!,
    rootType,
    logicalBytes: importer.bytesDone,
    fileCount: importer.files,
    dirCount: importer.dirs,
    rootEntry,
  };
}

interface LinkRecord {
  group: number;
  content: Handle | null;
  size: number;
  xattrs: Array<[string, Buffer]> | undefined;
}

class Importer {
  files = 0;
  dirs = 0;
  bytesDone = 0;
  private bytesInFile = 0;
  private currentPath: Buffer = Buffer.alloc(0);
  private lastReport = Date.now();
  private nextLinkGroup = 1;
  private readonly links = new Map<string, LinkRecord>();
  private readonly treeChunking: Chunking;

  constructor(
    private readonly deps: ImportDeps,
    private readonly opts: ImportOptions,
  ) {
    this.treeChunking = opts.chunking ?? Chunking.Cdc;
  }

  /** Depth-first: every child (and its subtree) is stored before this directory's own tree. */
  importDir(path: Buffer, name: Buffer, prevTree: Handle | null): TreeEntry {
    this.currentPath = path;
    const fd = openNode(path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW, true);
    let st: fs.BigIntStats;
    let xattrs: Array<[string, Buffer]> | undefined;
    try {
      st = fstatOrThrow(fd, path);
      xattrs = readXattrs(fd, path);
    } finally {
      fs.closeSync(fd);
    }
    this.dirs++;

    let names: Buffer[];
    try {
      names = fs.readdirSync(path, { encoding: 'buffer' });
    } catch (e) {
      throw walkError(e, 'list directory', path);
    }
    names.sort(Buffer.compare);

    let prevByName: Map<string, TreeEntry> | null = null;
    if (prevTree && this.deps.previous) {
      prevByName = new Map(this.deps.previous.trees.readTree(prevTree).map((e) => [e.name.toString('latin1'), e]));
    }

    const entries: TreeEntry[] = [];
    for (const childName of names) {
      const child = joinPath(path, childName);
      const prevEntry = prevByName?.get(childName.toString('latin1'));
      entries.push(this.importChild(child, childName, prevEntry));
    }
    const handle = this.deps.trees.writeTree(entries);
    return withOptional(baseEntry(name, 'dir', st), { content: handle, xattrs });
  }

  private importChild(path: Buffer, name: Buffer, prev: TreeEntry | undefined): TreeEntry {
    this.currentPath = path;
    const st = lstatOrThrow(path);
    if (st.isDirectory()) {
      return this.importDir(path, name, prev?.type === 'dir' ? prev.content : null);
    }
    if (st.isFile()) {
      return this.importFile(path, name, st, prev?.type === 'file' ? prev.content : null, this.treeChunking, true);
    }
    if (st.isSymbolicLink()) {
      let target: Buffer;
      try {
        target = fs.readlinkSync(path, { encoding: 'buffer' });
      } catch (e) {
        throw walkError(e, 'read symlink', path);
      }
      return withOptional(baseEntry(name, 'symlink', st), { target });
    }
    const type = specialType(st);
    if (!type) throw new StrataError('EIO', `${displayName(path)} has an unknown file type (mode ${st.mode.toString(8)})`);
    let xattrs: Array<[string, Buffer]> | undefined;
    if (HAVE_O_PATH) {
      const fd = openNode(path, O_PATH | fs.constants.O_NOFOLLOW, false);
      try {
        const fst = fstatOrThrow(fd, path);
        if (specialType(fst) !== type) throw changedType(path);
        xattrs = readXattrs(fd, path);
      } finally {
        fs.closeSync(fd);
      }
    }
    const rdev = type === 'chardev' || type === 'blockdev' ? Number(st.rdev) : undefined;
    return withOptional(baseEntry(name, type, st), { rdev, xattrs });
  }

  /** Stores one regular file. With trackLinks, later links of an inode reuse the first one's content. */
  importFile(
    path: Buffer,
    name: Buffer,
    lst: fs.BigIntStats,
    predecessor: Handle | null,
    chunking: Chunking,
    trackLinks: boolean,
  ): TreeEntry {
    this.currentPath = path;
    if (trackLinks && lst.nlink > 1n) {
      const seen = this.links.get(inodeKey(lst));
      if (seen) {
        this.files++;
        const entry = withOptional(baseEntry(name, 'file', lst), { xattrs: seen.xattrs, linkGroup: seen.group });
        entry.content = seen.content;
        entry.size = seen.size;
        return entry;
      }
    }

    const fd = openNode(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW, true);
    try {
      const st = fstatOrThrow(fd, path);
      if (!st.isFile()) throw changedType(path);
      const xattrs = readXattrs(fd, path);
      this.bytesInFile = 0;
      const source: ContentSource = {
        read: (buf, pos) => {
          let n: number;
          try {
            n = fs.readSync(fd, buf, 0, buf.length, pos);
          } catch (e) {
            throw walkError(e, 'read', path);
          }
          if (pos + n > this.bytesInFile) this.bytesInFile = pos + n;
          this.report(false);
          return n;
        },
      };
      const info = this.deps.objects.writeObject(source, { chunking, predecessor });
      this.bytesInFile = 0;
      this.bytesDone += info.size;
      this.files++;
      let linkGroup: number | undefined;
      if (trackLinks && st.nlink > 1n) {
        linkGroup = this.nextLinkGroup++;
        this.links.set(inodeKey(st), { group: linkGroup, content: info.root, size: info.size, xattrs });
      }
      this.report(false);
      const entry = withOptional(baseEntry(name, 'file', st), { xattrs, linkGroup });
      entry.content = info.root;
      entry.size = info.size;
      return entry;
    } finally {
      fs.closeSync(fd);
    }
  }

  report(force: boolean): void {
    const cb = this.opts.onProgress;
    if (!cb) return;
    const now = Date.now();
    if (!force && now - this.lastReport < PROGRESS_INTERVAL_MS) return;
    this.lastReport = now;
    cb({ files: this.files, bytes: this.bytesDone + this.bytesInFile, path: this.currentPath.toString('utf8') });
  }
}

function baseEntry(name: Buffer, type: EntryType, st: fs.BigIntStats): TreeEntry {
  return {
    name,
    type,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeNs: st.mtimeNs,
    atimeNs: st.atimeNs,
    size: 0,
    content: null,
  };
}

/** Sets only the optional fields that have a value, so equal listings encode (and compare) equally. */
function withOptional(
  entry: TreeEntry,
  extra: {
    content?: Handle | null;
    target?: Buffer;
    rdev?: number;
    xattrs?: Array<[string, Buffer]>;
    linkGroup?: number;
  },
): TreeEntry {
  if (extra.content !== undefined) entry.content = extra.content;
  if (extra.target !== undefined) entry.target = extra.target;
  if (extra.rdev !== undefined) entry.rdev = extra.rdev;
  if (extra.xattrs !== undefined) entry.xattrs = extra.xattrs;
  if (extra.linkGroup !== undefined) entry.linkGroup = extra.linkGroup;
  return entry;
}

function specialType(st: fs.BigIntStats): EntryType | null {
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  return null;
}

const inodeKey = (st: fs.BigIntStats) => `${st.dev}:${st.ino}`;

/** Reads all xattrs of an open node (via its /proc/self/fd path, so any name works), sorted by name bytes. */
export function readXattrs(fd: number, path: Buffer): Array<[string, Buffer]> | undefined {
  const procPath = `/proc/self/fd/${fd}`;
  let names: string[];
  try {
    names = xattr.listAttributesSync(procPath);
  } catch (e) {
    if (isUnsupported(e)) return undefined;
    throw walkError(e, 'list xattrs of', path);
  }
  const out: Array<[string, Buffer]> = [];
  for (const name of names) {
    try {
      out.push([name, xattr.getAttributeSync(procPath, name)]);
    } catch (e) {
      // Removed between list and get: the attribute no longer exists, which is what we record.
      if ((e as NodeJS.ErrnoException).code === 'ENODATA') continue;
      throw walkError(e, `read xattr ${name} of`, path);
    }
  }
  if (out.length === 0) return undefined;
  out.sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  return out;
}

function isUnsupported(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOTSUP' || code === 'EOPNOTSUPP';
}

/**
 * Opens a node with O_NOATIME when allowed (a backup should not disturb access times; the kernel
 * refuses it with EPERM unless we own the file or are root) and falls back to a plain open.
 */
function openNode(path: Buffer, flags: number, noatime: boolean): number {
  if (noatime && fs.constants.O_NOATIME !== undefined) {
    try {
      return fs.openSync(path, flags | fs.constants.O_NOATIME);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EPERM') throw openError(e, path);
    }
  }
  try {
    return fs.openSync(path, flags);
  } catch (e) {
    throw openError(e, path);
  }
}

function openError(e: unknown, path: Buffer): StrataError {
  const code = (e as NodeJS.ErrnoException).code;
  // O_NOFOLLOW/O_DIRECTORY failing means the node was replaced after we looked at it.
  if (code === 'ELOOP' || code === 'ENOTDIR') return changedType(path, e);
  return walkError(e, 'open', path);
}

const changedType = (path: Buffer, cause?: unknown) =>
  new StrataError('EIO', `${displayName(path)} changed type during import`, { cause });

function lstatOrThrow(path: Buffer): fs.BigIntStats {
  try {
    return fs.lstatSync(path, { bigint: true });
  } catch (e) {
    throw walkError(e, 'stat', path);
  }
}

function statOrThrow(path: Buffer): fs.BigIntStats {
  try {
    return fs.statSync(path, { bigint: true });
  } catch (e) {
    throw walkError(e, 'stat', path);
  }
}

function fstatOrThrow(fd: number, path: Buffer): fs.BigIntStats {
  try {
    return fs.fstatSync(fd, { bigint: true });
  } catch (e) {
    throw walkError(e, 'stat', path);
  }
}

/**
 * Translates a host error into a StrataError naming the path: code ENOENT for a missing path,
 * EIO for anything else (the errno name stays in the message, the original error in `cause`).
 */
export function hostError(e: unknown, op: string, path: Buffer, missing = 'no such file or directory'): StrataError {
  if (e instanceof StrataError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOENT') {
    return new StrataError('ENOENT', `cannot ${op} ${displayName(path)}: ${missing} (ENOENT)`, { cause: e });
  }
  const text = e instanceof Error ? e.message : String(e);
  // Node's messages read "EACCES: permission denied, open '<path>'"; keep the words, drop its mangled path.
  const words = /^[A-Z0-9_]+: ([^,]+)/.exec(text)?.[1] ?? text;
  const why = err?.code ? `${words} (${err.code})` : text;
  return new StrataError('EIO', `cannot ${op} ${displayName(path)}: ${why}`, { cause: e });
}

/** hostError for the walk, where a missing path means it was removed while we were importing. */
const walkError = (e: unknown, op: string, path: Buffer) => hostError(e, op, path, 'it vanished during the import');

export function joinPath(dir: Buffer, name: Buffer): Buffer {
  if (dir.length > 0 && dir[dir.length - 1] === 0x2f) return Buffer.concat([dir, name]);
  return Buffer.concat([dir, Buffer.from('/'), name]);
}

function baseName(path: Buffer): Buffer {
  let end = path.length;
  while (end > 0 && path[end - 1] === 0x2f) end--;
  const start = path.lastIndexOf(0x2f, end - 1) + 1;
  return Buffer.from(path.subarray(start, end));
}
