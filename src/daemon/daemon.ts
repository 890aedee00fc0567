// The mount daemon: owns one store (its writer lock), serves it over FUSE and answers the control
// socket. Started by `strata mount` (detached, stdio to STORE/daemon.log), by `strata mount
// --foreground`, by systemd, or directly:
//
//   node dist/src/daemon/daemon.js --store DIR --mountpoint MNT [--foreground]
//   node dist/src/daemon/daemon.js MNT --store DIR            (the fuse test harness's convention)
//
// Life cycle: lock the store -> open the filesystem -> clear a dead mount left at MNT -> mount ->
// control socket -> serve. SIGTERM, SIGINT, a control `unmount`, the mount disappearing (umount
// by someone else) or a closed IPC channel (a test parent that died) stop it: flush everything,
// unmount, close the filesystem and the store (which releases the lock), remove the pid file and
// the socket. The process never touches its own mount synchronously: its event loop must stay
// free to answer the kernel.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type net from 'node:net';
import Fuse from 'fuse-native';
import { CasStore } from '../cas/store.js';
import { startReplicationServer, type ReplicationServer } from '../replication/server.js';
import { invalid, isStrataError, StrataError } from '../errors.js';
import { StrataFs } from '../fs/strata-fs.js';
import { createFuse, readWindowInfo, repliesWithOwnTimeouts, statCache } from '../fuse/fuse-ops.js';
import { FUSE_MOUNT_DEFAULTS, applyMountOptions, isMounted, raiseReadAhead, unmountQuietly } from '../fuse/mount-options.js';
import type { Namespace, SnapshotInfo } from '../types.js';
import {
  daemonFiles, explainLockError, processRunning, readPidFile, serveControl, snapshotJson, type ControlHandlers, type StatusResult,
} from './control-protocol.js';

/** What the daemon needs of a filesystem besides the FUSE operations. StrataFs provides it. */
export interface MountableFs extends Namespace {
  snapshot(name?: string | null): Promise<SnapshotInfo>;
  /** Restarts the live tree from snapshot `ref`; resolves to that snapshot. */
  branch(ref: string): Promise<SnapshotInfo>;
  flushAll(): Promise<void>;
  /** Flushes everything and releases the filesystem's resources. */
  close(): Promise<void>;
}

export interface DaemonOptions {
  store: string;
  mountpoint: string;
  /** Also write log lines to stderr (an interactive or systemd --foreground run). */
  foreground?: boolean;
  /** Receive replicated snapshots on this address (HOST:PORT or unix:PATH), authenticated with keyFile. */
  listen?: string;
  keyFile?: string;
  /** Keep only the latest N snapshots per branch of what peers send. */
  keep?: number;
}

/**
 * Per-request answer deadlines (fuse-native answers ETIMEDOUT to the kernel when one passes).
 * Flushing calls may write a whole file's buffered data, so they get far longer than lookups.
 */
const FUSE_TIMEOUTS = { default: 60_000, flush: 600_000, fsync: 600_000, release: 600_000 };
/** How often the daemon checks that its mount is still there (someone may umount it directly). */
const MOUNT_WATCH_MS = 1000;
/** At most this many FUSE failure lines per window, so a failing disk cannot flood the log. */
const LOG_BURST = 200;
const LOG_WINDOW_MS = 10_000;

/**
 * Runs the daemon until it stops; resolves to the process exit code (0 after a clean stop, 1 when
 * it could not mount or could not flush). Never rejects: failures are logged as `error: ...` lines.
 */
export async function runDaemon(opts: DaemonOptions): Promise<number> {
  const store = path.resolve(opts.store);
  const mountpoint = path.resolve(opts.mountpoint);
  const files = daemonFiles(store);
  const log = openLog(files.log, Boolean(opts.foreground));

  // Signals are caught from the start, so a stop requested while mounting (strata mount giving up)
  // still unmounts and releases the lock instead of killing the process halfway.
  let stopNow: ((reason: string) => unknown) | null = null;
  let stopRequested: string | null = null;
  const onSignal = (signal: string) => {
    if (stopNow) stopNow(signal);
    else stopRequested ??= `${signal} while mounting`;
  };
  const onHup = () => log.line('SIGHUP ignored (stop with SIGTERM or strata unmount)');
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', onHup);
  const forgetSignals = () => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('SIGHUP', onHup);
  };

  let cas: CasStore | null = null;
  let mounted: MountableFs | null = null;
  let wrotePid = false;
  const cleanup = async () => {
    if (mounted) await mounted.close().catch((e) => log.line(`error: closing the filesystem: ${describe(e)}`));
    try { cas?.close(); } catch (e) { log.line(`error: closing the store: ${describe(e)}`); }
    if (wrotePid) removeIfOurs(files.pid);
  };

  let fuse: Fuse;
  let attempted = false;
  try {
    checkMountpoint(mountpoint);
    clearZombieLock(files.lock, log.line);
    try {
      cas = CasStore.open(store, { write: true, relaxed: true });
    } catch (e) {
      throw explainLockError(store, e);
    }
    fs.writeFileSync(files.pid, `${process.pid}\n`);
    wrotePid = true;
    await clearDeadMount(mountpoint, log.line);
    checkEmpty(mountpoint);
    mounted = await openFilesystem(cas);
    fuse = createFuse(mountpoint, mounted, log.limited, { timeout: FUSE_TIMEOUTS });
    // The root's cache lifetime is the mount's (the live tree needs it short); views' longer
    // lifetimes travel with getattr's answers (src/fuse/fuse-ops.ts).
    const ttl = Math.max(0, mounted.cacheTimeout('/'));
    applyMountOptions(fuse, [
      ...FUSE_MOUNT_DEFAULTS,
      'use_ino', // st_ino is the namespace's deterministic inode number
      `attr_timeout=${ttl}`,
      `entry_timeout=${ttl}`,
      `fsname=${fsnameFor(store)}`,
      'subtype=strata', // the mount table shows type fuse.strata, which `strata unmount` looks for
    ]);
    attempted = true;
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
    const readAhead = await raiseReadAhead(mountpoint);
    if (readAhead instanceof Error) log.line(`read-ahead left at the kernel's default: ${readAhead.message}`);
  } catch (e) {
    const message = isStrataError(e) ? e.message : (e as Error).message === 'fuse failed'
      ? `libfuse refused to mount ${mountpoint} (its own message is in the lines above in ${files.log})`
      : describe(e);
    log.line(`error: cannot mount ${store} at ${mountpoint}: ${message}`);
    // fuse-native can fail after the kernel mount exists (fuse_new rejecting an option).
    if (attempted) await unmountQuietly(mountpoint).catch((u) => log.line(`error: ${describe(u)}`));
    await cleanup();
    log.close();
    forgetSignals();
    return 1;
  }

  const startedMs = Date.now();
  let stopping: Promise<number> | null = null;
  let finished: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => { finished = resolve; });
  let server: net.Server | null = null;
  let watcher: NodeJS.Timeout | null = null;
  const fsRef = mounted;
  let replication: ReplicationServer | null = null;
  const stop = (reason: string): Promise<number> => (stopping ??= (async () => {
    log.line(`stopping: ${reason}`);
    const cached = statCache()?.info();
    if (cached) log.line(`stat cache: ${cached.hits} getattr answered by the binding from view listings, ${cached.entries} entries held`);
    const own = repliesWithOwnTimeouts();
    if (own !== null) log.line(`cache timeouts: ${own} lookup and getattr replies in views given their own lifetime or generation`);
    const window = readWindowInfo();
    if (window) log.line(`read window: ${window.reads} reads (${(window.bytesRead / 2 ** 20).toFixed(0)} MiB) answered by the binding, ${(window.bytes / 2 ** 20).toFixed(1)} MiB held in ${window.windows} windows, ${(window.bytesLent / 2 ** 20).toFixed(0)} MiB offered without a copy, ${window.loans} loans outstanding`);
    if (watcher) clearInterval(watcher);
    await replication?.close().catch((e) => log.line(`error: closing the replication listener: ${describe(e)}`));
    let code = 0;
    try {
      await fsRef.flushAll();
    } catch (e) {
      code = 1;
      log.line(`error: flushing before unmount: ${describe(e)}`);
    }
    await new Promise<void>((resolve) => fuse.unmount((err) => {
      if (err && isMounted(mountpoint)) log.line(`fuse unmount: ${err.message}; trying fusermount/umount`);
      resolve();
    }));
    await unmountQuietly(mountpoint).catch((e) => { code = 1; log.line(`error: ${describe(e)}`); });
    server?.close();
    fs.rmSync(files.socket, { force: true });
    try {
      await fsRef.close();
    } catch (e) {
      code = 1;
      log.line(`error: closing the filesystem: ${describe(e)}`);
    }
    try { cas!.close(); } catch (e) { code = 1; log.line(`error: closing the store: ${describe(e)}`); }
    removeIfOurs(files.pid);
    log.line(`stopped (exit ${code})`);
    log.close();
    finished(code);
    return code;
  })());

  // Control commands that change state run one at a time.
  let queue: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };
  const notStopping = () => { if (stopping) throw new StrataError('ELOCKED', 'the daemon is unmounting'); };
  const handlers: ControlHandlers = {
    status: (): StatusResult => ({ pid: process.pid, mountpoint, store, startedMs }),
    snapshot: ({ name }) => exclusive(async () => {
      notStopping();
      const s = await fsRef.snapshot(name);
      log.line(`snapshot ${s.id}${s.name ? ` (${s.name})` : ''}`);
      return snapshotJson(s);
    }),
    branch: ({ ref }) => exclusive(async () => {
      notStopping();
      const from = await fsRef.branch(ref);
      log.line(`live tree branched from ${from.id}${from.name ? ` (${from.name})` : ''}`);
      return snapshotJson(from);
    }),
    flush: () => exclusive(async () => { notStopping(); await fsRef.flushAll(); return {}; }),
    unmount: () => exclusive(async () => {
      // Flushed while still mounted, so a failure is reported and the mount stays usable.
      if (!stopping) await fsRef.flushAll();
      setImmediate(() => void stop('unmount requested'));
      return { pid: process.pid };
    }),
  };

  try {
    server = await serveControl(files.socket, handlers, log.line);
  } catch (e) {
    log.line(`error: control socket ${files.socket}: ${describe(e)}`);
    return stop('no control socket');
  }
  log.line(`mounted ${store} at ${mountpoint} (pid ${process.pid})`);
  if (opts.listen) {
    if (!(fsRef instanceof StrataFs) || !opts.keyFile) {
      log.line('error: --listen needs --key and the real filesystem');
      return stop('cannot listen for replication');
    }
    const live = fsRef;
    try {
      // Replicated snapshots appear in the mount as they commit.
      replication = await startReplicationServer(cas!, live.cat, {
        listen: opts.listen, keyFile: opts.keyFile, keepPerBranch: opts.keep, log: log.line,
        onCommit: (snap) => {
          live.catalogueChanged();
          live.pool.schedule(snap.id).catch((e: Error) => log.line(`error: performance pool: ${e.message}`));
        },
      });
    } catch (e) {
      log.line(`error: replication listener on ${opts.listen}: ${describe(e)}`);
      return stop('no replication listener');
    }
  }

  stopNow = stop;
  if (stopRequested) void stop(stopRequested);
  // A crash would leave a dead mount and lose buffered writes: flush and unmount on the way out.
  process.on('uncaughtException', (e) => {
    log.line(`error: uncaught exception: ${describe(e)}`);
    void stop('uncaught exception').finally(() => process.exit(1));
  });
  process.on('unhandledRejection', (e) => log.line(`error: unhandled rejection: ${describe(e)}`));
  if (process.connected) process.once('disconnect', () => void stop('parent process went away'));
  watcher = setInterval(() => {
    if (!stopping && !isMounted(mountpoint)) void stop(`${mountpoint} was unmounted by someone else`);
  }, MOUNT_WATCH_MS);
  watcher.unref();

  // Keeps the process alive until a stop completes: the FUSE thread does not hold the event loop.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  const code = await done;
  clearInterval(keepAlive);
  forgetSignals();
  return code;
}

/**
 * Opens the filesystem to serve: StrataFs on `cas`. Test-only: STRATA_TEST_NAMESPACE=mem serves
 * the in-memory tree of test/fixtures instead (it can fail on demand, which the real one cannot),
 * still holding the store's lock, so the daemon, control socket and CLI are tested as they run.
 */
export async function openFilesystem(cas: CasStore): Promise<MountableFs> {
  if (process.env.STRATA_TEST_NAMESPACE === 'mem') {
    const spec = '../../test/fixtures/mem-namespace.js'; // not a static import: src must not depend on test/
    const { MemNamespace } = (await import(spec)) as { MemNamespace: new () => MountableFs };
    return new MemNamespace();
  }
  return StrataFs.open(cas);
}

/**
 * A daemon killed with SIGKILL after its parent (`strata mount`) exited is reparented to PID 1;
 * where PID 1 does not reap orphans (containers, some VMs) it stays a zombie, which kill(pid, 0)
 * still reports as alive, so the store lock's own stale-lock check would refuse every remount.
 * Removes a lock whose owner is such a zombie; the lock code then takes the store as usual.
 */
function clearZombieLock(lockFile: string, log: (msg: string) => void): void {
  const pid = readPidFile(lockFile);
  if (pid === null || pid === process.pid || processRunning(pid) || !fs.existsSync(`/proc/${pid}`)) return;
  // Read again just before removing, so a lock taken meanwhile by a live process is kept.
  if (readPidFile(lockFile) !== pid) return;
  fs.rmSync(lockFile, { force: true });
  log(`removed the stale lock of process ${pid}, which has exited (a zombie nobody reaped)`);
}

/** A clear message for a mountpoint that is missing or not a directory (libfuse's are cryptic). */
function checkMountpoint(mountpoint: string): void {
  // A mount there is probed asynchronously by clearDeadMount(): its server may hang a stat.
  if (isMounted(mountpoint)) return;
  let st: fs.Stats;
  try {
    st = fs.statSync(mountpoint);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new StrataError('ENOENT', `mountpoint ${mountpoint} does not exist`);
    throw invalid(`mountpoint ${mountpoint}: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) throw new StrataError('ENOTDIR', `mountpoint ${mountpoint} is not a directory`);
}

/** libfuse2 refuses a non-empty mountpoint with a cryptic message; say it plainly first. */
function checkEmpty(mountpoint: string): void {
  if (fs.readdirSync(mountpoint).length > 0) throw invalid(`mountpoint ${mountpoint} is not empty`);
}

/**
 * A daemon killed with SIGKILL leaves its mount behind, answering ENOTCONN. Clears that; refuses
 * a mountpoint where a live filesystem is mounted.
 */
async function clearDeadMount(mountpoint: string, log: (msg: string) => void): Promise<void> {
  if (!isMounted(mountpoint)) return;
  // The lookup of a name that cannot exist goes to the server (a stat of the mountpoint itself may
  // be answered from the kernel's attribute cache). Asynchronous, with a deadline: the mount
  // belongs to another process, which may be hung.
  const probe = path.join(mountpoint, `.strata-probe-${process.pid}-${Date.now()}`);
  const outcome = await Promise.race([
    fs.promises.lstat(probe).then(() => 'alive', (e: NodeJS.ErrnoException) => (e.code === 'ENOTCONN' ? 'dead' : 'alive')),
    new Promise<string>((resolve) => setTimeout(resolve, 5000, 'hung').unref()),
  ]);
  if (outcome === 'alive') throw new StrataError('EEXIST', `${mountpoint} is already a mount point; unmount it first`);
  log(`clearing a dead mount at ${mountpoint} (${outcome === 'hung' ? 'its server does not answer' : 'its server is gone'})`);
  await unmountQuietly(mountpoint);
}

/** The mount's source as /proc/mounts shows it: the store path when libfuse can carry it. */
function fsnameFor(store: string): string {
  return /^[^,\\\s]+$/.test(store) ? store : 'strata';
}

function removeIfOurs(pidFile: string): void {
  try {
    if (Number.parseInt(fs.readFileSync(pidFile, 'utf8'), 10) === process.pid) fs.rmSync(pidFile, { force: true });
  } catch {
    // already gone
  }
}

const describe = (e: unknown) => (isStrataError(e) ? e.message : e instanceof Error ? e.stack ?? e.message : String(e));

interface Log {
  /** Appends one timestamped line. */
  line(msg: string): void;
  /** Like line(), but rate-limited (for per-request failures). */
  limited(msg: string): void;
  close(): void;
}

/**
 * The daemon log: STORE/daemon.log, appended to (the detached daemon's stderr is the same file, so
 * libfuse's own messages land there too). In the foreground, lines also go to stderr.
 */
function openLog(file: string, foreground: boolean): Log {
  let fd: number | null = null;
  try {
    fd = fs.openSync(file, 'a', 0o600);
  } catch {
    // No store directory: stderr is all there is, and the open fails with a clear message later.
  }
  const toStderr = foreground || fd === null;
  let windowStart = 0;
  let inWindow = 0;
  let suppressed = 0;
  const line = (msg: string) => {
    const text = `${new Date().toISOString()} [${process.pid}] ${msg.replace(/\n/g, '\n    ')}\n`;
    if (fd !== null) {
      try { fs.writeSync(fd, text); } catch { /* a full disk must not stop the daemon */ }
    }
    if (toStderr) process.stderr.write(`strata-daemon: ${msg}\n`);
  };
  return {
    line,
    limited(msg) {
      const now = Date.now();
      if (now - windowStart > LOG_WINDOW_MS) {
        if (suppressed) line(`(${suppressed} similar lines suppressed)`);
        windowStart = now;
        inWindow = 0;
        suppressed = 0;
      }
      if (++inWindow <= LOG_BURST) line(msg);
      else suppressed++;
    },
    close() {
      if (fd !== null) fs.closeSync(fd);
      fd = null;
    },
  };
}

/** Command-line entry: parses the arguments, runs, and exits with the daemon's code. */
async function main(argv: string[]): Promise<void> {
  let store: string | undefined;
  let mountpoint: string | undefined;
  let foreground = false;
  let listen: string | undefined;
  let keyFile: string | undefined;
  let keep: number | undefined;
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        store: { type: 'string' }, mountpoint: { type: 'string' }, foreground: { type: 'boolean' },
        listen: { type: 'string' }, key: { type: 'string' }, keep: { type: 'string' },
      },
    });
    store = values.store ?? process.env.STRATA_STORE;
    mountpoint = values.mountpoint ?? positionals[0];
    foreground = Boolean(values.foreground);
    listen = values.listen;
    keyFile = values.key;
    keep = values.keep === undefined ? undefined : Number(values.keep);
    if (!store || !mountpoint || positionals.length > 1) throw new Error('usage: daemon.js --store DIR --mountpoint MNT [--foreground]');
  } catch (e) {
    process.stderr.write(`strata-daemon: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const code = await runDaemon({ store, mountpoint, foreground, listen, keyFile, keep });
  process.exitCode = code;
  // fuse-native may keep a handle open after unmounting; do not linger because of it.
  setTimeout(() => process.exit(code), 1000).unref();
}

const entry = process.argv[1] ? fs.realpathSync(process.argv[1]) : '';
if (entry === fileURLToPath(import.meta.url)) void main(process.argv.slice(2));
