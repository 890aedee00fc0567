// The strata commands that deal with a mount: mount, unmount, and snapshot/branch of the live
// tree (through the mount daemon's control socket when the store is mounted, else on the store
// directly). Each resolves to its exit code and prints its own errors, because mount and unmount
// find their store themselves instead of through main()'s --store check.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CasStore } from '../cas/store.js';
import {
  controlRequest, daemonFiles, explainLockError, isNotMounted, processRunning, snapshotJson, strataMounts,
  type SnapshotJson, type StatusResult,
} from '../daemon/control-protocol.js';
import { invalid, isStrataError, StrataError } from '../errors.js';
import { isMounted, unmountQuietly } from '../fuse/mount-options.js';

export const MOUNT_USAGE = `  mount STORE MOUNTPOINT [--foreground] [--listen ADDRESS --key KEYFILE [--keep N]]
                                    serve the store at MOUNTPOINT (a daemon; --foreground stays attached)
  unmount MOUNTPOINT                flush, unmount and stop the daemon
  snapshot [--name N]               snapshot the live tree (through the mount when mounted)
  branch SNAP                       make the live tree a new branch from snapshot SNAP`;

/** parseArgs options these commands add. */
export const MOUNT_OPTIONS = {
  foreground: { type: 'boolean' },
} as const;

export interface MountCtx {
  /** --store or STRATA_STORE, when given. */
  store: string | undefined;
  json: boolean;
  values: Record<string, string | boolean | undefined>;
  args: string[];
}

export { explainLockError };

const DAEMON = fileURLToPath(new URL('../daemon/daemon.js', import.meta.url));
/** How long `mount` waits for the daemon to mount, and `unmount` for it to stop. */
const MOUNT_WAIT_MS = 30_000;
const STOP_WAIT_MS = 60_000;
/** Snapshot, branch and unmount flush buffered data first, which can take a while. */
const SLOW_REQUEST_MS = 10 * 60_000;
const POLL_MS = 50;

const out = (s: string) => process.stdout.write(s + '\n');
const printJson = (v: unknown) => out(JSON.stringify(v, null, 2));
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `fn` and resolves to the exit code: `fn`'s own, else 0; 2 for bad usage (EINVAL), 1 for
 * other failures. Errors print as one line, like the other commands'.
 */
async function runCommand(store: string | undefined, fn: () => Promise<number | void>): Promise<number> {
  try {
    return (await fn()) ?? 0;
  } catch (e0) {
    const e = store ? explainLockError(store, e0) : e0;
    if (isStrataError(e)) {
      process.stderr.write(`strata: ${e.message}\n`);
      return e.code === 'EINVAL' ? 2 : 1;
    }
    process.stderr.write(`strata: ${e instanceof Error ? (process.env.STRATA_DEBUG ? e.stack : e.message) : String(e)}\n`);
    return 1;
  }
}

function needStore(ctx: MountCtx): string {
  if (!ctx.store) throw invalid('no store given: pass --store DIR or set STRATA_STORE');
  return path.resolve(ctx.store);
}

function checkStore(store: string): void {
  if (!fs.existsSync(path.join(store, 'store.json'))) throw new StrataError('ENOENT', `no store at ${store} (run 'strata init --store ${store}')`);
}

/** The daemon's status, or null when no daemon serves `store`. */
async function daemonStatus(store: string, timeoutMs = 5000): Promise<StatusResult | null> {
  try {
    return await controlRequest(store, 'status', {}, timeoutMs) as StatusResult;
  } catch (e) {
    if (isNotMounted(e)) return null;
    throw e;
  }
}

/** --listen/--key/--keep pass through to the daemon (it then also receives replication). */
function replicationArgs(values: MountCtx['values']): string[] {
  const out: string[] = [];
  for (const k of ['listen', 'key', 'keep'] as const) {
    const v = values[k];
    if (typeof v === 'string') out.push(`--${k}`, k === 'key' ? path.resolve(v) : v);
  }
  if (out.length && (typeof values.listen !== 'string' || typeof values.key !== 'string')) throw invalid('--listen and --key go together');
  return out;
}

async function mount(ctx: MountCtx): Promise<number | void> {
  if (ctx.args.length > 2) throw invalid('usage: strata mount STORE MOUNTPOINT [--foreground]');
  const [first, second] = ctx.args;
  const store = path.resolve((second !== undefined ? first : ctx.store) ?? '');
  const spec = second ?? first;
  if (!spec || (second === undefined && !ctx.store)) throw invalid('usage: strata mount STORE MOUNTPOINT [--foreground] (or --store DIR MOUNTPOINT)');
  const mountpoint = path.resolve(spec);
  checkStore(store);
  const running = await daemonStatus(store, 2000);
  if (running) {
    throw new StrataError('ELOCKED', `store ${store} is already mounted at ${running.mountpoint} by process ${running.pid}`);
  }

  if (ctx.values.foreground) {
    const { runDaemon } = await import('../daemon/daemon.js');
    const r = replicationArgs(ctx.values);
    const keep = ctx.values.keep === undefined ? undefined : Number(ctx.values.keep);
    const code = await runDaemon({
      store, mountpoint, foreground: true, listen: r.length ? (ctx.values.listen as string) : undefined,
      keyFile: r.length ? path.resolve(ctx.values.key as string) : undefined, keep,
    });
    // fuse-native may keep a handle open after unmounting; do not linger because of it.
    setTimeout(() => process.exit(code), 1000).unref();
    return code;
  }

  const files = daemonFiles(store);
  const logFd = fs.openSync(files.log, 'a', 0o600);
  const logStart = fs.fstatSync(logFd).size;
  let child;
  try {
    child = spawn(process.execPath, [DAEMON, '--store', store, '--mountpoint', mountpoint, ...replicationArgs(ctx.values)], {
      detached: true,
      stdio: ['ignore', logFd, logFd],
      cwd: '/',
    });
  } finally {
    fs.closeSync(logFd);
  }
  let exit: string | null = null;
  child.on('exit', (code, signal) => { exit = signal ?? String(code); });
  child.on('error', (e) => { exit = e.message; });
  child.unref();

  const deadline = Date.now() + MOUNT_WAIT_MS;
  for (;;) {
    if (exit !== null) {
      throw new StrataError('EIO', `cannot mount: ${daemonError(files.log, logStart) ?? `the daemon exited (${exit}); see ${files.log}`}`);
    }
    const status = await daemonStatus(store, 1000).catch(() => null);
    if (status && status.pid === child.pid && isMounted(mountpoint)) break;
    if (Date.now() > deadline) {
      child.kill('SIGTERM');
      throw new StrataError('EIO', `the daemon did not mount ${mountpoint} within ${MOUNT_WAIT_MS / 1000} s; see ${files.log}`);
    }
    await delay(POLL_MS);
  }
  if (ctx.json) printJson({ store, mountpoint, pid: child.pid, log: files.log });
  else out(`mounted ${store} at ${mountpoint} (daemon pid ${child.pid}, log ${files.log})`);
}

/** The daemon's error line written since `start`, else libfuse's last words there, else null. */
function daemonError(log: string, start: number): string | null {
  let text = '';
  try {
    const fd = fs.openSync(log, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(Math.min(Math.max(0, size - start), 1 << 20));
      fs.readSync(fd, buf, 0, buf.length, Math.max(start, size - buf.length));
      text = buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return null;
  }
  const lines = text.split('\n').filter((l) => l.trim());
  const errors = lines.map((l) => /^\S+ \[\d+\] error: (.*)$/.exec(l)?.[1]).filter((m): m is string => Boolean(m));
  if (errors.length) return errors[errors.length - 1];
  const raw = lines.filter((l) => !/^\S+ \[\d+\] /.test(l) && !/^\s/.test(l));
  return raw.length ? raw.slice(-3).join('; ') : null;
}

async function unmount(ctx: MountCtx): Promise<void> {
  if (ctx.args.length !== 1) throw invalid('usage: strata unmount MOUNTPOINT');
  const mountpoint = path.resolve(ctx.args[0]);
  // The mount table names the store (the daemon mounts with fsname=STORE); --store is the fallback.
  const source = strataMounts().find((m) => m.mountpoint === mountpoint)?.source;
  const store = source && path.isAbsolute(source) ? source : ctx.store ? path.resolve(ctx.store) : null;
  if (!store) {
    if (!isMounted(mountpoint)) throw new StrataError('ENOENT', `${mountpoint} is not mounted`);
    throw invalid(`${mountpoint} is not a strata mount whose store is known; pass --store DIR`);
  }
  const status = await daemonStatus(store);
  if (!status) {
    if (!isMounted(mountpoint)) throw new StrataError('ENOENT', `${mountpoint} is not mounted`);
    // The daemon is gone (killed) and left its mount behind.
    await unmountQuietly(mountpoint);
    report(ctx, { mountpoint, store, pid: null }, `unmounted ${mountpoint} (its daemon was not running; cleared the dead mount)`);
    return;
  }
  if (status.mountpoint !== mountpoint) {
    throw invalid(`store ${store} is mounted at ${status.mountpoint}, not at ${mountpoint}`);
  }
  await controlRequest(store, 'unmount', {}, SLOW_REQUEST_MS);
  const deadline = Date.now() + STOP_WAIT_MS;
  while (processRunning(status.pid) || isMounted(mountpoint)) {
    if (Date.now() > deadline) {
      throw new StrataError('EIO', `the daemon (pid ${status.pid}) did not stop within ${STOP_WAIT_MS / 1000} s; see ${daemonFiles(store).log}`);
    }
    await delay(POLL_MS);
  }
  report(ctx, { mountpoint, store, pid: status.pid }, `unmounted ${mountpoint}`);
}

function report(ctx: MountCtx, json: unknown, text: string): void {
  if (ctx.json) printJson(json);
  else out(text);
}

/**
 * Runs `op` on the live tree: through the daemon when the store is mounted, else on the store
 * itself (taking the writer lock for the duration).
 */
async function onLiveTree<T>(
  store: string,
  viaDaemon: () => Promise<T>,
  direct: (fs: import('../daemon/daemon.js').MountableFs) => Promise<T>,
): Promise<T> {
  try {
    return await viaDaemon();
  } catch (e) {
    if (!isNotMounted(e)) throw e;
  }
  checkStore(store);
  const { openFilesystem } = await import('../daemon/daemon.js');
  const cas = CasStore.open(store, { write: true });
  try {
    const live = await openFilesystem(cas);
    try {
      return await direct(live);
    } finally {
      await live.close();
    }
  } finally {
    cas.close();
  }
}

async function snapshot(ctx: MountCtx): Promise<void> {
  if (ctx.args.length) throw invalid('usage: strata snapshot [--name N]');
  const store = needStore(ctx);
  const name = typeof ctx.values.name === 'string' ? ctx.values.name : null;
  const snap = await onLiveTree(store,
    async () => await controlRequest(store, 'snapshot', { name }, SLOW_REQUEST_MS) as SnapshotJson,
    async (live) => snapshotJson(await live.snapshot(name)));
  if (ctx.json) printJson(snap);
  else out(`snapshot ${snap.id}${snap.name ? ` ${snap.name}` : ''}${snap.parent ? ` (parent ${snap.parent})` : ''}`);
}

async function branch(ctx: MountCtx): Promise<void> {
  if (ctx.args.length !== 1) throw invalid('usage: strata branch SNAP');
  const store = needStore(ctx);
  const ref = ctx.args[0];
  const from = await onLiveTree(store,
    async () => await controlRequest(store, 'branch', { ref }, SLOW_REQUEST_MS) as SnapshotJson,
    async (live) => snapshotJson(await live.branch(ref)));
  report(ctx, { branchedFrom: from }, `the live tree is now a branch from snapshot ${from.id}${from.name ? ` ${from.name}` : ''}`);
}

/** The commands, keyed by name; each resolves to its exit code. */
export const mountCommands: Record<string, (ctx: MountCtx) => Promise<number>> = {
  mount: (ctx) => runCommand(ctx.args.length >= 2 ? ctx.args[0] : ctx.store, () => mount(ctx)),
  unmount: (ctx) => runCommand(undefined, () => unmount(ctx)),
  snapshot: (ctx) => runCommand(ctx.store, () => snapshot(ctx)),
  branch: (ctx) => runCommand(ctx.store, () => branch(ctx)),
};
