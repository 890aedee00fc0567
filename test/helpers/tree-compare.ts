// Describes a host directory tree in a comparable form (every path with its metadata and a content
// digest), and compares two descriptions with a readable diff. Deliberately independent of
// src/host so a bug there is not mirrored here.

import crypto from 'node:crypto';
import fs from 'node:fs';
import * as xattr from 'fs-xattr';
import type { ExecutionContext } from 'ava';

export interface HostNodeInfo {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'chardev' | 'blockdev' | 'socket';
  /** Permission bits in octal, e.g. '4755'. */
  mode: string;
  uid: number;
  gid: number;
  /** Files only (directory sizes depend on the filesystem's history). */
  size?: number;
  /** Nanoseconds since the epoch, rounded down to the snapshot's precision, as a decimal string. */
  mtime: string;
  /** Only with { atime: true }: reading a tree (even this one) may move directory atimes. */
  atime?: string;
  sha256?: string;
  /** Symlink target, escaped like the keys. */
  target?: string;
  rdev?: number;
  /** name -> value in hex; absent when there are none (after filtering). */
  xattrs?: Record<string, string>;
  /** "same inode as <key>" for every link of a hard-linked inode after the first (in key order). */
  hardLink?: string;
  /** st_blocks (512-byte units); ignored by default when comparing, allocation is filesystem business. */
  blocks: number;
  /** Fewer bytes allocated than the logical size: the file has holes. */
  sparse: boolean;
}

/** Keys are relative paths escaped by escapePath ('.' is the root itself). */
export type HostTreeSnapshot = Record<string, HostNodeInfo>;

export interface SnapshotOptions {
  /**
   * Time precision in ns; default 1000 (µs): fs.utimes/futimes/lutimes go through libuv, which
   * truncates to whole microseconds, so a restore cannot keep more.
   */
  timePrecisionNs?: bigint;
  atime?: boolean;
  /** Which xattrs to record; default all. */
  xattrFilter?: (name: string) => boolean;
  /** Whether to hash file contents; default true. */
  content?: boolean;
}

export interface CompareOptions {
  /** Fields not compared; default ['blocks']. */
  ignore?: Array<keyof HostNodeInfo>;
  /** Keys (escaped paths) to leave out of the comparison entirely. */
  skipPath?: (key: string) => boolean;
}

const O_PATH = 0o10000000;

/** Printable, injective form of raw path bytes: printable ASCII kept, '\' doubled, every other byte as \xNN. */
export function escapePath(bytes: Buffer): string {
  let out = '';
  for (const b of bytes) {
    if (b === 0x5c) out += '\\\\';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += '\\x' + b.toString(16).padStart(2, '0');
  }
  return out;
}

/** Walks `root` (not following symlinks) and describes every node below it, the root included as '.'. */
export function snapshotHostTree(root: string | Buffer, opts: SnapshotOptions = {}): HostTreeSnapshot {
  const precision = opts.timePrecisionNs ?? 1000n;
  const out: HostTreeSnapshot = {};
  const firstOfInode = new Map<string, string>();
  const rootBuf = Buffer.from(root);

  const visit = (abs: Buffer, rel: Buffer | null) => {
    const key = rel === null ? '.' : escapePath(rel);
    const st = fs.lstatSync(abs, { bigint: true });
    const info: HostNodeInfo = {
      type: typeOf(st),
      mode: (st.mode & 0o7777n).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: floorTo(st.mtimeNs, precision).toString(),
      blocks: Number(st.blocks),
      sparse: st.isFile() && st.blocks * 512n < st.size,
    };
    if (opts.atime) info.atime = floorTo(st.atimeNs, precision).toString();
    if (st.isFile()) {
      info.size = Number(st.size);
      if (opts.content !== false) info.sha256 = sha256File(abs);
    }
    if (st.isSymbolicLink()) info.target = escapePath(fs.readlinkSync(abs, { encoding: 'buffer' }));
    if (st.isCharacterDevice() || st.isBlockDevice()) info.rdev = Number(st.rdev);
    if (!st.isSymbolicLink()) {
      const xa = readXattrs(abs, st, opts.xattrFilter);
      if (xa) info.xattrs = xa;
    }
    if (!st.isDirectory() && st.nlink > 1n) {
      const ino = `${st.dev}:${st.ino}`;
      const first = firstOfInode.get(ino);
      if (first === undefined) firstOfInode.set(ino, key);
      else info.hardLink = `same inode as ${first}`;
    }
    out[key] = info;
    if (st.isDirectory()) {
      const names = fs.readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
      for (const name of names) {
        const childRel = rel === null ? name : Buffer.concat([rel, Buffer.from('/'), name]);
        visit(Buffer.concat([abs, Buffer.from('/'), name]), childRel);
      }
    }
  };
  visit(rootBuf, null);
  return out;
}

/** Differences between two snapshots, one readable line each; empty when they match. */
export function diffTrees(expected: HostTreeSnapshot, actual: HostTreeSnapshot, opts: CompareOptions = {}): string[] {
  const ignore = new Set<string>(opts.ignore ?? ['blocks']);
  const skip = opts.skipPath ?? (() => false);
  const lines: string[] = [];
  const keys = [...new Set([...Object.keys(expected), ...Object.keys(actual)])].sort();
  for (const key of keys) {
    if (skip(key)) continue;
    const e = expected[key];
    const a = actual[key];
    if (!a) {
      lines.push(`missing: ${JSON.stringify(key)} (${e!.type})`);
      continue;
    }
    if (!e) {
      lines.push(`unexpected: ${JSON.stringify(key)} (${a.type})`);
      continue;
    }
    const fields = [...new Set([...Object.keys(e), ...Object.keys(a)])].sort();
    for (const f of fields) {
      if (ignore.has(f)) continue;
      const ev = JSON.stringify((e as unknown as Record<string, unknown>)[f]);
      const av = JSON.stringify((a as unknown as Record<string, unknown>)[f]);
      if (ev !== av) lines.push(`${JSON.stringify(key)} ${f}: expected ${ev ?? '(none)'}, got ${av ?? '(none)'}`);
    }
  }
  return lines;
}

/** Passes when both snapshots describe the same tree; otherwise fails listing every difference. */
export function assertSameTree(
  t: ExecutionContext,
  expected: HostTreeSnapshot,
  actual: HostTreeSnapshot,
  opts: CompareOptions = {},
): void {
  const lines = diffTrees(expected, actual, opts);
  if (lines.length === 0) t.pass();
  else t.fail(`trees differ (${lines.length}):\n  ${lines.join('\n  ')}`);
}

function typeOf(st: fs.BigIntStats): HostNodeInfo['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  return 'socket';
}

function floorTo(ns: bigint, precision: bigint): bigint {
  let q = ns / precision;
  if (ns < 0n && ns % precision !== 0n) q -= 1n;
  return q * precision;
}

function openQuietly(path: Buffer, flags: number): number {
  // O_NOATIME so describing a tree does not move file access times (refused unless owner or root).
  try {
    return fs.openSync(path, flags | fs.constants.O_NOATIME);
  } catch {
    return fs.openSync(path, flags);
  }
}

function sha256File(path: Buffer): string {
  const fd = openQuietly(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const h = crypto.createHash('sha256');
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
    return h.digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

function readXattrs(
  path: Buffer,
  st: fs.BigIntStats,
  filter: ((name: string) => boolean) | undefined,
): Record<string, string> | undefined {
  const special = !st.isFile() && !st.isDirectory();
  const fd = special
    ? fs.openSync(path, O_PATH | fs.constants.O_NOFOLLOW)
    : openQuietly(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const proc = `/proc/self/fd/${fd}`;
    let names: string[];
    try {
      names = xattr.listAttributesSync(proc);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') return undefined;
      throw e;
    }
    const out: Record<string, string> = {};
    let any = false;
    for (const name of names.sort()) {
      if (filter && !filter(name)) continue;
      out[name] = xattr.getAttributeSync(proc, name).toString('hex');
      any = true;
    }
    return any ? out : undefined;
  } finally {
    fs.closeSync(fd);
  }
}
