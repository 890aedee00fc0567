// Restores stored entries (directories recursively, files, symlinks, special files) onto the host
// with their metadata, keeping sparse files sparse and hard links linked; and resolves paths
// inside stored trees.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import * as xattr from 'fs-xattr';
import { checkEntryName, displayName } from '../cas/tree-codec.js';
import { StrataError, corrupt, invalid, isStrataError, notFound } from '../errors.js';
import type { Handle, ObjectReader, TreeEntry, TreeReader } from '../types.js';
import { O_PATH, hostError, joinPath } from './import-tree.js';

export { lookupPath } from '../cas/tree-lookup.js';

export interface RestoreDeps {
  objects: ObjectReader;
  trees: TreeReader;
}

export interface RestoreOptions {
  /** Called at most every ~200 ms, and once at the end with the totals. */
  onProgress?: (p: { files: number; bytes: number }) => void;
  /** Things restored partly or not at all (sockets, devices when not root, unsupported xattrs). Default: process.emitWarning. */
  onWarning?: (message: string) => void;
}

export interface RestoreResult {
  /** Regular-file entries restored, hard links included. */
  files: number;
  /** Content bytes written (logical sizes; hard-linked content counts once). */
  bytes: number;
}

const PROGRESS_INTERVAL_MS = 200;
const READ_PIECE = 4 * 1024 * 1024;

/**
 * Restores `entry` (and, for a directory, everything below it) at `dest`, which must not exist;
 * an existing empty directory is accepted for a directory entry. Metadata is applied after
 * content, times last (directories after their children); ownership only when running as root.
 */
export function restoreToHost(
  entry: TreeEntry,
  dest: string | Buffer,
  deps: RestoreDeps,
  opts: RestoreOptions = {},
): RestoreResult {
  const path = typeof dest === 'string' ? Buffer.from(dest) : Buffer.from(dest);
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw hostError(e, 'stat', path);
  }
  let reuseDir = false;
  if (existing) {
    if (entry.type === 'dir' && existing.isDirectory() && fs.readdirSync(path).length === 0) {
      reuseDir = true;
    } else {
      const why = entry.type === 'dir' ? 'exists and is not an empty directory' : 'already exists';
      throw new StrataError('EEXIST', `restore destination ${displayName(path)} ${why}`);
    }
  }
  const r = new Restorer(deps, opts);
  r.restore(entry, path, reuseDir);
  r.report(true);
  return { files: r.files, bytes: r.bytes };
}

class Restorer {
  files = 0;
  bytes = 0;
  private lastReport = Date.now();
  private tmpCounter = 0;
  private readonly firstOfLinkGroup = new Map<number, Buffer>();
  private readonly isRoot = process.geteuid?.() === 0;
  private readonly warn: (message: string) => void;

  constructor(
    private readonly deps: RestoreDeps,
    private readonly opts: RestoreOptions,
  ) {
    this.warn = opts.onWarning ?? ((m) => process.emitWarning(m, 'StrataRestoreWarning'));
  }

  restore(entry: TreeEntry, path: Buffer, reuseDir: boolean): void {
    switch (entry.type) {
      case 'dir':
        return this.restoreDir(entry, path, reuseDir);
      case 'file':
        return this.restoreFile(entry, path);
      case 'symlink':
        return this.restoreSymlink(entry, path);
      case 'fifo':
        this.makeWithTool(path, 'mkfifo', ['-m', '600']);
        return this.applySpecialMetadata(entry, path);
      case 'chardev':
      case 'blockdev': {
        if (!this.isRoot) {
          this.warn(`skipped device ${displayName(path)}: creating devices needs root`);
          return;
        }
        if (entry.rdev === undefined) throw corrupt(`device entry ${displayName(entry.name)} has no rdev`);
        const [major, minor] = splitRdev(entry.rdev);
        const kind = entry.type === 'chardev' ? 'c' : 'b';
        try {
          this.makeWithTool(path, 'mknod', [], [kind, String(major), String(minor)]);
        } catch (e) {
          // Root without CAP_MKNOD (containers) is common; the rest of the restore is still useful.
          this.warn(`skipped device ${displayName(path)}: ${e instanceof Error ? e.message : String(e)}`);
          return;
        }
        return this.applySpecialMetadata(entry, path);
      }
      case 'socket':
        // A socket is only meaningful to the process that bound it; like tar, do not recreate it.
        this.warn(`skipped socket ${displayName(path)}`);
        return;
      default:
        throw corrupt(`entry ${displayName(entry.name)} has unknown type ${String((entry as TreeEntry).type)}`);
    }
  }

  private restoreDir(entry: TreeEntry, path: Buffer, reuseDir: boolean): void {
    if (!reuseDir) {
      try {
        fs.mkdirSync(path, 0o700);
      } catch (e) {
        throw hostError(e, 'create directory', path);
      }
    }
    const children = entry.content ? this.deps.trees.readTree(entry.content) : [];
    for (const child of children) {
      // A stored name must never lead outside the directory being restored.
      try {
        checkEntryName(child.name);
      } catch {
        throw corrupt(`tree of ${displayName(path)} holds an illegal name ${displayName(child.name)}`);
      }
      this.restore(child, joinPath(path, child.name), false);
    }
    const fd = openOrThrow(path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
    try {
      this.applyFdMetadata(entry, fd, path);
    } finally {
      fs.closeSync(fd);
    }
  }

  private restoreFile(entry: TreeEntry, path: Buffer): void {
    const group = entry.linkGroup ?? 0;
    const first = group !== 0 ? this.firstOfLinkGroup.get(group) : undefined;
    if (first) {
      try {
        fs.linkSync(first, path);
      } catch (e) {
        throw hostError(e, `hard-link ${displayName(first)} as`, path);
      }
      this.files++;
      this.report(false);
      return;
    }
    const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
    const fd = openOrThrow(path, flags, 0o600);
    try {
      if (entry.content) this.writeContent(entry.content, entry.size, fd, path);
      try {
        // Sets the size without allocating: trailing holes (and files of zeros) stay sparse.
        fs.ftruncateSync(fd, entry.size);
      } catch (e) {
        throw hostError(e, 'truncate', path);
      }
      this.applyFdMetadata(entry, fd, path);
    } finally {
      fs.closeSync(fd);
    }
    if (group !== 0) this.firstOfLinkGroup.set(group, path);
    this.files++;
    this.bytes += entry.size;
    this.report(false);
  }

  /** Writes only the data extents; holes are skipped so the host file stays sparse. */
  private writeContent(root: Handle, size: number, fd: number, path: Buffer): void {
    const objects = this.deps.objects;
    const stored = objects.objectSize(root);
    if (stored !== size) throw corrupt(`${displayName(path)}: entry size ${size} but object holds ${stored} bytes`);
    let done = 0;
    for (const ext of objects.extents(root)) {
      if (ext.hole) continue;
      const end = ext.offset + ext.length;
      for (let off = ext.offset; off < end; off += READ_PIECE) {
        const len = Math.min(READ_PIECE, end - off);
        const buf = objects.readObject(root, off, len);
        if (buf.length !== len) throw corrupt(`${displayName(path)}: object returned ${buf.length} of ${len} bytes at ${off}`);
        writeFully(fd, buf, off, path);
        done += len;
        this.report(false, done);
      }
    }
  }

  private restoreSymlink(entry: TreeEntry, path: Buffer): void {
    if (!entry.target) throw corrupt(`symlink ${displayName(entry.name)} has no target`);
    try {
      fs.symlinkSync(entry.target, path);
    } catch (e) {
      throw hostError(e, 'create symlink', path);
    }
    if (this.isRoot) call(() => fs.lchownSync(path, entry.uid, entry.gid), 'chown', path);
    // Symlink permissions are fixed on Linux, and user xattrs are not allowed on them.
    call(() => fs.lutimesSync(path, utimeArg(entry.atimeNs), utimeArg(entry.mtimeNs)), 'set times of', path);
  }

  /** Creates a node with an external tool under a temporary ASCII name, then renames it (argv cannot carry arbitrary bytes portably). */
  private makeWithTool(path: Buffer, tool: string, optsBefore: string[], argsAfter: string[] = []): void {
    const parent = dirName(path);
    const tmpName = `.strata-restore-${process.pid}-${this.tmpCounter++}`;
    const dirFd = openOrThrow(parent, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      // The tool reaches the parent through our descriptor, whatever bytes the parent's path holds.
      const viaProc = `/proc/${process.pid}/fd/${dirFd}/${tmpName}`;
      try {
        execFileSync(tool, [...optsBefore, '--', viaProc, ...argsAfter], { stdio: ['ignore', 'ignore', 'pipe'] });
      } catch (e) {
        const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
        throw new StrataError('EIO', `${tool} failed for ${displayName(path)}: ${stderr || String(e)}`, { cause: e });
      }
    } finally {
      fs.closeSync(dirFd);
    }
    try {
      fs.renameSync(joinPath(parent, Buffer.from(tmpName)), path);
    } catch (e) {
      throw hostError(e, 'rename into place', path);
    }
  }

  private applySpecialMetadata(entry: TreeEntry, path: Buffer): void {
    if (this.isRoot) call(() => fs.lchownSync(path, entry.uid, entry.gid), 'chown', path);
    call(() => fs.chmodSync(path, entry.mode), 'chmod', path);
    if (entry.xattrs && entry.xattrs.length > 0) {
      const fd = openOrThrow(path, O_PATH | fs.constants.O_NOFOLLOW);
      try {
        this.setXattrs(entry, fd, path);
      } finally {
        fs.closeSync(fd);
      }
    }
    call(() => fs.lutimesSync(path, utimeArg(entry.atimeNs), utimeArg(entry.mtimeNs)), 'set times of', path);
  }

  /** chown before chmod (chown clears setuid/setgid) and before xattrs (it drops security.capability); times last. */
  private applyFdMetadata(entry: TreeEntry, fd: number, path: Buffer): void {
    if (this.isRoot) call(() => fs.fchownSync(fd, entry.uid, entry.gid), 'chown', path);
    call(() => fs.fchmodSync(fd, entry.mode), 'chmod', path);
    this.setXattrs(entry, fd, path);
    call(() => fs.futimesSync(fd, utimeArg(entry.atimeNs), utimeArg(entry.mtimeNs)), 'set times of', path);
  }

  private setXattrs(entry: TreeEntry, fd: number, path: Buffer): void {
    if (!entry.xattrs) return;
    const procPath = `/proc/self/fd/${fd}`;
    for (const [name, value] of entry.xattrs) {
      try {
        xattr.setAttributeSync(procPath, name, value);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        // Unsupported by the destination filesystem, or a namespace (trusted.*, security.*) only root may write.
        if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || (code === 'EPERM' && !this.isRoot)) {
          this.warn(`could not restore xattr ${name} on ${displayName(path)}: ${code}`);
          continue;
        }
        throw hostError(e, `set xattr ${name} on`, path);
      }
    }
  }

  report(force: boolean, bytesInFile = 0): void {
    const cb = this.opts.onProgress;
    if (!cb) return;
    const now = Date.now();
    if (!force && now - this.lastReport < PROGRESS_INTERVAL_MS) return;
    this.lastReport = now;
    cb({ files: this.files, bytes: this.bytes + bytesInFile });
  }
}

/**
 * A time argument for fs.*utimes* that lands on the exact microsecond of `ns` (rounded down).
 * libuv converts the double to a timespec and truncates it toward zero to whole microseconds, so
 * finer precision cannot survive; aiming at the middle of the target microsecond keeps the double's
 * rounding error (~0.24 µs at today's dates) from crossing into a neighbour. A numeric string is
 * used because Node replaces negative numbers (times before 1970) with "now".
 */
export function utimeArg(ns: bigint): string {
  let us = ns / 1000n;
  if (ns < 0n && ns % 1000n !== 0n) us -= 1n;
  // Truncation toward zero rounds negative times up, so aim below the target for them.
  const aim = us * 1000n + (us >= 0n ? 500n : -500n);
  const abs = aim < 0n ? -aim : aim;
  const frac = (abs % 1_000_000_000n).toString().padStart(9, '0');
  return `${aim < 0n ? '-' : ''}${abs / 1_000_000_000n}.${frac}`;
}

/** Linux dev_t encoding (glibc gnu_dev_major/minor). */
function splitRdev(rdev: number): [number, number] {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return [Number(major), Number(minor)];
}

function dirName(path: Buffer): Buffer {
  let end = path.length;
  while (end > 1 && path[end - 1] === 0x2f) end--;
  const slash = path.lastIndexOf(0x2f, end - 1);
  if (slash < 0) return Buffer.from('.');
  if (slash === 0) return Buffer.from('/');
  return Buffer.from(path.subarray(0, slash));
}

function openOrThrow(path: Buffer, flags: number, mode?: number): number {
  try {
    return fs.openSync(path, flags, mode);
  } catch (e) {
    throw hostError(e, 'open', path);
  }
}

function writeFully(fd: number, buf: Buffer, position: number, path: Buffer): void {
  let done = 0;
  while (done < buf.length) {
    let n: number;
    try {
      n = fs.writeSync(fd, buf, done, buf.length - done, position + done);
    } catch (e) {
      throw hostError(e, 'write', path);
    }
    if (n <= 0) throw new StrataError('EIO', `short write to ${displayName(path)}`);
    done += n;
  }
}

function call(fn: () => void, op: string, path: Buffer): void {
  try {
    fn();
  } catch (e) {
    if (isStrataError(e)) throw e;
    throw hostError(e, op, path);
  }
}
