// FUSE operations -> Namespace calls. Translation only: each handler parses fuse-native's
// arguments, makes exactly one Namespace call, and answers the kernel exactly once, with the
// result or with a negative errno. No storage logic lives here.
//
// fuse-native facts this file relies on (node_modules/fuse-native/index.js and fuse-native.c):
// - getattr wants { mode, uid, gid, size, nlink, ino, rdev, blocks, blksize, atime, mtime, ctime }
//   with times as Date or milliseconds; it converts to timespec at millisecond precision and keeps
//   ino in 32 bits (st_ino reaches applications only with the `use_ino` mount option).
// - read/write answer with the byte count in the error slot; their `buf` is libfuse's memory and is
//   detached once answered: Namespace.write copies what it keeps before answering, so the handler
//   passes a view of it (copying here as well cost a second memcpy and a 128 KiB buffer per write);
//   Namespace.read may fill it in place (a late write into a detached buffer writes nothing).
// - create gets the mode but not the open flags, and no handler gets the caller's uid/gid
//   (fuse_get_context is not exposed): new files belong to the daemon's user.
// - utimens gets milliseconds computed from timespecs, which folds UTIME_NOW and UTIME_OMIT
//   (tv_sec 0, tv_nsec ~2^30) into the same value; see decodeTimes().
// - there is no per-path entry/attr timeout in the high-level libfuse2 API fuse-native wraps: every
//   LOOKUP and GETATTR reply gets the mount's (the root's Namespace.cacheTimeout(), see the daemon).
//   scripts/patch-fuse-native.mjs lets getattr's answer carry a lifetime and a generation after the
//   stat, which the binding writes into that request's reply; getattr here answers with
//   cacheTimeout(path) and Attr.generation (see usePackedStats()).
// - fgetattr is left unimplemented: libfuse then answers it with getattr by path.
// - readdir answers (0, names, stats): with as many stats as names, fuse-native passes each stat to
//   libfuse2's filler, so the kernel gets d_type instead of DT_UNKNOWN; with other lengths it
//   passes names only. libfuse2 has no readdirplus, so the kernel still looks names up on stat:
//   scripts/patch-fuse-native.mjs adds a stat cache to the binding, and a listing is signalled with
//   the namespace's listingTimeout(), for which the binding answers getattr on those entries itself,
//   on the FUSE thread, telling the kernel to keep each answer for what is left of it (see
//   statCache()); when the namespace's snapshots change (watchViews) the binding forgets them.
//   Its _op_readdir packs every stat object into a fresh 18-word Uint32Array (getStatArray) on each
//   call, which for a 100k-file tree cost about as much as the rest of the listing: see
//   usePackedStats() for how packed stats are passed instead.
// - every read is a round trip FUSE thread -> JavaScript thread -> FUSE thread: the same patch
//   adds a read window to the binding, where the namespace leaves verified bytes ahead of a
//   reader of a view file; reads they cover are answered on the FUSE thread (see readWindowOf()).
// - open answers only a file handle: fuse-native 2.2.6 sets fuse_file_info.fh and nothing else, so
//   keep_cache (keep a view file's pages across opens) cannot be set from here. It would take a
//   change to fuse-native.c's open signal (say, a flag bit in the returned handle) rebuilt by
//   scripts/patch-fuse-native.mjs. Not done, because with libfuse2's high-level API the kernel
//   inode follows the path, not the content, so pools/capacity/NAME after a snapshot
//   is removed and another takes its name, or at/TIME once a newer snapshot falls before TIME,
//   could serve stale pages for up to the attribute timeout, unless every such change also
//   invalidated the kernel's cache (fuse_invalidate is not exposed by fuse-native either).

import { createRequire } from 'node:module';
import nodePath from 'node:path';
import Fuse from 'fuse-native';
import { isStrataError } from '../errors.js';
import type { Attr, DirEntry, Lease, Namespace, ReadWindow, StatFs } from '../types.js';

/** Codes that are not errno names, or that the kernel should see as another errno. */
const SPECIAL_ERRNO: Readonly<Record<string, number>> = {
  ECORRUPT: Fuse.EIO, // stored bytes failed their hash: an I/O error, never wrong data
  ETRUNC: Fuse.EIO,
  ELOCKED: Fuse.EBUSY,
};

/** Codes worth a log line even though they are expected StrataErrors: they mean damage. */
const LOGGED_CODES = new Set(['ECORRUPT', 'ETRUNC', 'EIO']);

/** open(2) flags for create(): fuse-native does not pass the caller's flags through. */
const CREATE_FLAGS = 0o2 /* O_RDWR */ | 0o100 /* O_CREAT */;

/**
 * libfuse2 reports UTIME_NOW and UTIME_OMIT as { tv_sec: 0, tv_nsec: 2^30 - 1 or - 2 }, which
 * fuse-native turns into 0 * 1000 + floor(tv_nsec / 1e6) ms. No real timestamp is 1.073 s after
 * the epoch, so this value means "now or leave as is".
 */
const UTIME_SPECIAL_MS = Math.floor(((1 << 30) - 1) / 1e6);

/** The negative errno fuse-native should answer for a failure of the Namespace. */
export function errnoFor(e: unknown): number | null {
  if (!isStrataError(e)) return null;
  const special = SPECIAL_ERRNO[e.code];
  if (special !== undefined) return special;
  const errno = (Fuse as unknown as Record<string, unknown>)[e.code];
  return typeof errno === 'number' && errno < 0 ? errno : null;
}

/** Attr (milliseconds) -> the stat object fuse-native packs; times before 1970 are clamped to 0. */
export function toFuseStat(a: Attr): Fuse.Stat {
  const ms = (t: number) => (Number.isFinite(t) && t > 0 ? Math.floor(t) : 0);
  return {
    mode: a.mode,
    uid: a.uid,
    gid: a.gid,
    size: a.size,
    nlink: a.nlink,
    ino: a.ino,
    rdev: a.rdev,
    blocks: a.blocks,
    // A hint for applications' I/O size: the largest write the mount accepts (max_write).
    blksize: 131072,
    atime: ms(a.atimeMs),
    mtime: ms(a.mtimeMs),
    ctime: ms(a.ctimeMs),
  };
}

/**
 * A stat packed as fuse-native's binding reads it (index.js getStatArray, fuse-native.c
 * populate_stat): mode, uid, gid, size (2 words, low first), dev, nlink, ino, rdev, blksize,
 * blocks (2), atime, mtime, ctime (2 each, milliseconds).
 */
export function packStat(a: Attr): Uint32Array {
  const s = toFuseStat(a);
  const w = new Uint32Array(18);
  const put64 = (i: number, v: unknown) => {
    const n = Number(v ?? 0);
    w[i] = n % 4294967296;
    w[i + 1] = Math.floor(n / 4294967296);
  };
  w[0] = s.mode ?? 0;
  w[1] = s.uid ?? 0;
  w[2] = s.gid ?? 0;
  put64(3, s.size);
  w[6] = s.nlink || 1;
  w[7] = s.ino ?? 0;
  w[8] = s.rdev ?? 0;
  w[9] = s.blksize ?? 0;
  put64(10, s.blocks);
  put64(12, s.atime);
  put64(14, s.mtime);
  put64(16, s.ctime);
  return w;
}

/** What readdir hands fuse-native for a listing: names and packed stats of equal length. */
interface PackedListing {
  names: string[];
  stats: Uint32Array[];
}

/** The stat cache scripts/patch-fuse-native.mjs adds to fuse-native's binding (a mount forgets its entries when it starts and stops, and when its snapshots change: createFuse()). */
export interface StatCache {
  /** Entries held, and getattr requests answered from them so far (all mounts of this process). */
  info(): { entries: number; hits: number };
}

let nativeBinding: Record<string, unknown> | undefined;

/** The very module fuse-native loaded (node-gyp-build resolves the same file; a process loads it once). */
function binding(): Record<string, unknown> {
  if (nativeBinding) return nativeBinding;
  const require = createRequire(import.meta.url);
  nativeBinding = require('node-gyp-build')(nodePath.dirname(require.resolve('fuse-native/package.json'))) as Record<string, unknown>;
  return nativeBinding;
}

let statCacheBinding: StatCache | null | undefined;

/**
 * The binding's stat cache, or null when fuse-native was built without the patch (readdir's
 * lifetime argument is then ignored, and every getattr comes here).
 */
export function statCache(): StatCache | null {
  if (statCacheBinding !== undefined) return statCacheBinding;
  const info = binding().fuse_native_stat_cache_info as (() => [number, number]) | undefined;
  statCacheBinding = typeof info === 'function' ? { info: () => { const [entries, hits] = info(); return { entries, hits }; } } : null;
  return statCacheBinding;
}

/** LOOKUP and GETATTR replies given a lifetime or generation of their own so far (all mounts of this process), or null without the patch. */
export function repliesWithOwnTimeouts(): number | null {
  const info = binding().fuse_native_reply_info as (() => number) | undefined;
  return typeof info === 'function' ? info() : null;
}

/** What the binding's read window holds and has answered (all mounts of this process). */
export interface ReadWindowInfo {
  windows: number;
  bytes: number;
  /** Read requests answered on the FUSE thread, and their bytes. */
  reads: number;
  bytesRead: number;
  /** Bytes offered without a copy (lent shared memory), and loans the binding has not handed back yet. */
  bytesLent: number;
  loans: number;
}

interface ReadWindowBinding {
  fuse_native_window_put(thread: Buffer, fh: number, size: number, offset: number, bytes: Buffer | number, token?: number): boolean;
  fuse_native_window_reclaim(): number[];
  fuse_native_window_mark(thread: Buffer, fh: number, mark: number): void;
  fuse_native_window_drop(thread: Buffer, fh: number): void;
  fuse_native_window_info(): [number, number, number, number];
  fuse_native_window_listen(fn: (owner: number, fh: number, position: number) => void): void;
  fuse_native_window_owner(thread: Buffer): number;
}

/**
 * Bytes lent to the binding's read windows (all mounts of this process), by token: each keeps its
 * buffer referenced and its lease held until the binding hands the token back (window_reclaim),
 * so the memory is neither collected nor reused while a window may copy from it.
 */
const lent = {
  next: 1,
  bytes: 0,
  loans: new Map<number, { bytes: Buffer; lease: Lease }>(),
  lend(bytes: Buffer, lease: Lease): number {
    const after = (t: number) => (t >= 0xfffffffe ? 1 : t + 1); // tokens are u32, never 0
    let token = this.next;
    while (this.loans.has(token)) token = after(token);
    this.next = after(token);
    lease.hold();
    this.loans.set(token, { bytes, lease });
    return token;
  },
  end(token: number): void {
    const loan = this.loans.get(token);
    if (!loan) return;
    this.loans.delete(token);
    loan.lease.release();
  },
  endAll(tokens: readonly number[]): void {
    for (const t of tokens) this.end(t);
  },
};

/** The listeners of the mounts of this process, by the binding's name for each (window_owner). */
const windowListeners = new Map<number, (fh: number, position: number) => void>();

function readWindowBinding(): ReadWindowBinding | null {
  const b = binding() as Partial<ReadWindowBinding>;
  return typeof b.fuse_native_window_put === 'function' && typeof b.fuse_native_window_reclaim === 'function' ? b as ReadWindowBinding : null;
}

/** The read window's counters, or null when fuse-native was built without the patch. */
export function readWindowInfo(): ReadWindowInfo | null {
  const b = readWindowBinding();
  if (!b) return null;
  lent.endAll(b.fuse_native_window_reclaim());
  const [windows, bytes, reads, bytesRead] = b.fuse_native_window_info();
  return { windows, bytes, reads, bytesRead, bytesLent: lent.bytes, loans: lent.loans.size };
}

/**
 * The read window (scripts/fuse-native/read-window.c) of the mount `fuse` serves: bytes the
 * namespace offers there are answered to the kernel on the FUSE thread. Null when the binding
 * lacks the patch, or when STRATA_READ_WINDOW=off (every read then comes to the namespace; for
 * comparisons). Offers made while `fuse` is not mounted are refused.
 */
function readWindowOf(fuse: Fuse): ReadWindow | null {
  const b = readWindowBinding();
  if (!b || process.env.STRATA_READ_WINDOW === 'off') return null;
  const thread = () => (fuse as unknown as { _thread: Buffer | null })._thread;
  let reached: ((fh: number, position: number) => void) | null = null;
  /** This mount's name in windowListeners (a remount allocates its thread anew). */
  let owner = -1;
  return {
    put(fh, size, offset, bytes, length, lease) {
      const t = thread();
      if (!t) return false;
      // Shared memory is lent rather than copied (it never moves, and is not reused while held).
      if (!bytes || !lease || !(bytes.buffer instanceof SharedArrayBuffer)) return b.fuse_native_window_put(t, fh, size, offset, bytes ?? length);
      const token = lent.lend(bytes, lease);
      if (b.fuse_native_window_put(t, fh, size, offset, bytes, token)) {
        lent.bytes += bytes.length;
        return true;
      }
      lent.end(token);
      return false;
    },
    mark(fh, mark) {
      const t = thread();
      if (!t) return;
      if (reached) {
        const id = b.fuse_native_window_owner(t);
        if (id !== owner) {
          windowListeners.delete(owner);
          windowListeners.set(id, reached);
          owner = id;
        }
      }
      b.fuse_native_window_mark(t, fh, mark);
      lent.endAll(b.fuse_native_window_reclaim());
    },
    listen(fn) {
      reached = fn;
      b.fuse_native_window_listen((id, fh, position) => {
        try {
          windowListeners.get(id)?.(fh, position);
        } catch (e) {
          process.emitWarning(`read window listener: ${e instanceof Error ? e.message : String(e)}`);
        }
      });
    },
    drop(fh) {
      const t = thread();
      if (t) b.fuse_native_window_drop(t, fh);
      lent.endAll(b.fuse_native_window_reclaim());
    },
  };
}

/** The parts of a fuse-native instance usePackedStats() replaces. */
export interface PackedStatsHost {
  _op_readdir(signal: (code: number, ...rest: unknown[]) => void, path: string): void;
  _op_getattr(signal: (code: number, ...rest: unknown[]) => void, path: string): void;
  ops: Fuse.Operations;
}

type Signal = (code: number, ...rest: unknown[]) => void;

/**
 * Makes `fuse` pass readdir's and getattr's stats to its binding as they come (already packed by
 * packStat), where fuse-native's own _op_readdir and _op_getattr would pack every stat object
 * again, and with what follows them: a listing's lifetime for the stat cache; getattr's lifetime
 * and generation for the reply (-1: the mount's), which fuse-native's own handlers would drop. It
 * is the same kind of hook as applyMountOptions' (own properties on this one instance, checked to
 * exist, no patch of node_modules); fuse-native looks handlers up by name on the instance at every
 * request. The operations built by buildFuseOps() answer with packed stats, so they need this:
 * createFuse() makes the two together.
 */
export function usePackedStats<T extends object>(fuse: T): T {
  const host = fuse as unknown as PackedStatsHost;
  for (const name of ['_op_readdir', '_op_getattr'] as const) {
    if (typeof host[name] !== 'function') throw new Error(`fuse-native no longer has ${name}(); src/fuse/fuse-ops.ts needs updating for this version`);
  }
  const readdir = function (this: PackedStatsHost, signal: Signal, path: string): void {
    const op = this.ops.readdir as unknown as (p: string, cb: (err: number, names?: string[], stats?: Uint32Array[], keepMs?: number) => void) => void;
    op(path, (err, names, stats, keepMs) => (err ? signal(err) : signal(0, names ?? [], stats ?? [], keepMs ?? 0)));
  };
  const getattr = function (this: PackedStatsHost, signal: Signal, path: string): void {
    const op = this.ops.getattr as unknown as (p: string, cb: (err: number, stat?: Uint32Array, keepMs?: number, generation?: number) => void) => void;
    op(path, (err, stat, keepMs, generation) => (err ? signal(err, EMPTY_STAT) : signal(0, stat ?? EMPTY_STAT, keepMs ?? 0, generation ?? -1)));
  };
  Object.defineProperty(fuse, '_op_readdir', { value: readdir, configurable: true, writable: true });
  Object.defineProperty(fuse, '_op_getattr', { value: getattr, configurable: true, writable: true });
  return fuse;
}

/** What getattr's signal carries with an error (the binding reads a stat either way). */
const EMPTY_STAT = new Uint32Array(18);

/** A fuse-native instance serving `ns` at `mountpoint`, readdir and getattr set up for buildFuseOps' packed stats. */
export function createFuse(mountpoint: string, ns: Namespace, log: (msg: string) => void, opts: Fuse.Options): Fuse {
  const fuse = usePackedStats(new Fuse(mountpoint, buildFuseOps(ns, log), opts));
  const window = readWindowOf(fuse);
  if (window) ns.useReadWindow?.(window);
  const forget = binding().fuse_native_stat_forget as ((thread: Buffer) => void) | undefined;
  if (typeof forget === 'function') {
    ns.watchViews?.(() => {
      const t = (fuse as unknown as { _thread: Buffer | null })._thread;
      if (t) forget(t);
    });
  }
  return fuse;
}

function toFuseStatfs(s: StatFs): Fuse.Statfs {
  return { ...s };
}

/**
 * Decodes utimens arguments into Namespace times (undefined = leave unchanged). The special value
 * cannot tell "now" from "omit": when both times carry it (touch), both become now; when only one
 * does, the other was given explicitly, and the special one is most likely "omit" (touch -d, -m).
 */
export function decodeTimes(atime: number, mtime: number, now = Date.now()): { atimeMs: number | undefined; mtimeMs: number | undefined } {
  const a = atime === UTIME_SPECIAL_MS;
  const m = mtime === UTIME_SPECIAL_MS;
  if (a && m) return { atimeMs: now, mtimeMs: now };
  return { atimeMs: a ? undefined : atime, mtimeMs: m ? undefined : mtime };
}

/** Any fuse-native callback: every one takes a number (0, a count or a negative errno) first. */
type Answer = (code: number, ...rest: never[]) => void;

/**
 * Builds the fuse-native operations object for `ns`. `log` receives one line per unexpected
 * failure (answered EIO) and per integrity error.
 */
export function buildFuseOps(ns: Namespace, log: (msg: string) => void): Fuse.Operations {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;

  /**
   * Runs one Namespace call and answers `cb` exactly once: `reply(value)` gives the callback's
   * arguments on success; any throw or rejection (also from `reply`) becomes a negative errno.
   */
  function serve<T>(op: string, where: string, cb: Answer, call: () => T | Promise<T>, reply: (value: T) => unknown[]): void {
    let answered = false;
    const fail = (e: unknown) => {
      if (answered) return;
      answered = true;
      const errno = errnoFor(e);
      if (errno === null || (isStrataError(e) && LOGGED_CODES.has(e.code))) {
        const detail = e instanceof Error ? (isStrataError(e) ? `${e.code}: ${e.message}` : e.stack ?? e.message) : String(e);
        log(`${op} ${where}: ${detail}`);
      }
      cb(errno ?? Fuse.EIO);
    };
    const succeed = (value: T) => {
      if (answered) return;
      let args: unknown[];
      try {
        args = reply(value);
      } catch (e) {
        return fail(e);
      }
      answered = true;
      (cb as (...a: unknown[]) => void)(...args);
    };
    let result: T | Promise<T>;
    try {
      result = call();
    } catch (e) {
      return fail(e);
    }
    if (isPromiseLike(result)) result.then(succeed, fail);
    else succeed(result);
  }

  const done = () => [0];
  /** The mount's lifetime for entries and attributes: getattr answers name one only where theirs differs. */
  const mountTimeout = ns.cacheTimeout('/');
  /** Listings the namespace answers again unchanged (views) are packed once. */
  const packed = new WeakMap<readonly DirEntry[], PackedListing>();
  const pack = (entries: readonly DirEntry[]): PackedListing => {
    let p = packed.get(entries);
    if (!p) {
      p = { names: entries.map((e) => e.name), stats: entries.map((e) => packStat(e.attr)) };
      packed.set(entries, p);
    }
    return p;
  };

  return {
    getattr(path, cb) {
      // Packed, with the path's lifetime and generation (see usePackedStats).
      serve('getattr', path, cb, () => ns.getattr(path), (a) => {
        const t = ns.cacheTimeout(path);
        return [0, packStat(a), t === mountTimeout ? 0 : Math.max(0, t) * 1000, a.generation ?? -1];
      });
    },
    readdir(path, cb) {
      // Names and packed stats of equal length (see usePackedStats): the binding hands each stat to
      // libfuse's filler, which sets d_type from st_mode (and d_ino from st_ino under use_ino).
      serve('readdir', path, cb, () => ns.readdir(path), (entries) => {
        const p = pack(entries);
        return [0, p.names, p.stats, Math.max(0, ns.listingTimeout(path)) * 1000];
      });
    },
    readlink(path, cb) {
      serve('readlink', path, cb, () => ns.readlink(path), (target) => [0, target]);
    },
    statfs(path, cb) {
      serve('statfs', path, cb, () => ns.statfs(path), (s) => [0, toFuseStatfs(s)]);
    },
    open(path, flags, cb) {
      serve('open', path, cb, () => ns.open(path, flags), (fh) => [0, checkHandle(fh)]);
    },
    create(path, mode, cb) {
      serve('create', path, cb, () => ns.create(path, mode, CREATE_FLAGS, uid, gid), (fh) => [0, checkHandle(fh)]);
    },
    read(path, fd, buf, len, pos, cb) {
      // The namespace may answer with bytes it already placed in buf (see Namespace.read).
      serve('read', path, cb, () => ns.read(fd, pos, len, buf), (data) => [inPlace(data, buf) ? Math.min(len, data.length) : data.copy(buf, 0, 0, Math.min(len, data.length))]);
    },
    write(path, fd, buf, len, pos, cb) {
      // libfuse's own buffer, valid until answered; Namespace.write copies it (see above).
      const data = buf.subarray(0, len);
      serve('write', path, cb, () => ns.write(fd, data, pos), (n) => [n]);
    },
    flush(path, fd, cb) {
      serve('flush', path, cb, () => ns.flush(fd), done);
    },
    fsync(path, datasync, fd, cb) {
      serve('fsync', path, cb, () => ns.fsync(fd, datasync !== 0), done);
    },
    release(path, fd, cb) {
      serve('release', path, cb, () => ns.release(fd), done);
    },
    truncate(path, size, cb) {
      serve('truncate', path, cb, () => ns.truncate(path, size), done);
    },
    ftruncate(path, fd, size, cb) {
      serve('ftruncate', path, cb, () => ns.ftruncate(fd, size), done);
    },
    unlink(path, cb) {
      serve('unlink', path, cb, () => ns.unlink(path), done);
    },
    rename(src, dest, cb) {
      serve('rename', `${src} -> ${dest}`, cb, () => ns.rename(src, dest), done);
    },
    mkdir(path, mode, cb) {
      serve('mkdir', path, cb, () => ns.mkdir(path, mode, uid, gid), done);
    },
    rmdir(path, cb) {
      serve('rmdir', path, cb, () => ns.rmdir(path), done);
    },
    // fuse-native passes (target, linkpath) for symlink and (existing, newpath) for link.
    symlink(target, path, cb) {
      serve('symlink', path, cb, () => ns.symlink(target, path, uid, gid), done);
    },
    link(existing, path, cb) {
      serve('link', `${existing} -> ${path}`, cb, () => ns.link(existing, path), done);
    },
    chmod(path, mode, cb) {
      serve('chmod', path, cb, () => ns.chmod(path, mode), done);
    },
    chown(path, owner, group, cb) {
      serve('chown', path, cb, () => ns.chown(path, owner, group), done);
    },
    utimens(path, atime, mtime, cb) {
      const t = decodeTimes(atime, mtime);
      serve('utimens', path, cb, () => ns.utimens(path, t.atimeMs, t.mtimeMs), done);
    },
    getxattr(path, name, _position, cb) {
      serve('getxattr', path, cb, () => ns.getxattr(path, name), (value) => [0, value]);
    },
    setxattr(path, name, value, _position, flags, cb) {
      const copy = Buffer.from(value); // libfuse's memory, like a write buffer
      serve('setxattr', path, cb, () => ns.setxattr(path, name, copy, flags), done);
    },
    listxattr(path, cb) {
      serve('listxattr', path, cb, () => ns.listxattr(path), (names) => [0, names]);
    },
    removexattr(path, name, cb) {
      serve('removexattr', path, cb, () => ns.removexattr(path, name), done);
    },
  };
}

/** True when `data` is the start of `buf` already (nothing to copy). */
function inPlace(data: Buffer, buf: Buffer): boolean {
  return Buffer.isBuffer(data) && data.buffer === buf.buffer && data.byteOffset === buf.byteOffset;
}

/** fuse_file_info.fh travels as a 32-bit number through fuse-native; 0 means "none". */
function checkHandle(fh: number): number {
  if (!Number.isInteger(fh) || fh < 0 || fh > 0x7fffffff) throw new Error(`namespace returned file handle ${fh}, outside 0..2^31-1`);
  return fh;
}

function isPromiseLike<T>(v: T | Promise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown } | null)?.then === 'function';
}
