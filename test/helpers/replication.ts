import type { SendReport as CoreSendReport } from '../../src/replication/sender.js';
// Helpers for the end-to-end replication tests: stores mounted with a replication listener,
// standalone `strata serve` receivers, asynchronous CLI runs (so a test can watch and kill a
// transfer while it runs), and a source tree made only of what survives a FUSE mount.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { isMounted, unmountQuietly } from '../../src/fuse/mount-options.js';
import { STRATA, type CliResult } from './cli.js';
import { isRoot } from './fixture-tree.js';
import { utimeArg } from '../../src/host/restore-tree.js';
import { tmpDir } from './tmp.js';
import * as xattr from 'fs-xattr';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Runs the real strata command without blocking this process's event loop. */
export function run(store: string | null, args: string[], opts: { timeoutMs?: number } = {}): Promise<CliResult> {
  const argv = [STRATA, ...args, ...(store ? ['--store', store] : [])];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      try { process.kill(child.pid!, 'SIGKILL'); } catch { /* gone */ }
      reject(new Error(`strata ${args.join(' ')} did not finish within ${opts.timeoutMs ?? 120_000} ms`));
    }, opts.timeoutMs ?? 120_000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdoutBuf = Buffer.concat(out);
      resolve({ code: code ?? (signal ? 128 : -1), stdout: stdoutBuf.toString(), stderr: Buffer.concat(err).toString(), stdoutBuf });
    });
  });
}

/** Runs strata with --json and parses stdout; throws with stderr when it fails. */
export async function runJson<T = any>(store: string | null, args: string[]): Promise<T> {
  const r = await run(store, [...args, '--json']);
  if (r.code !== 0) throw new Error(`strata ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Runs strata and throws (with stderr) unless it exits 0. */
export async function runOk(store: string | null, args: string[]): Promise<CliResult> {
  const r = await run(store, args);
  if (r.code !== 0) throw new Error(`strata ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r;
}

/** What `strata replicate --json` prints. */
export type SendReport = CoreSendReport & { seconds: number };

export interface LogEntry { id: string; name: string | null; parent: string | null; root: string; createdMs: number }

/** `strata log --json`, in a stable order. */
export async function snapshotsOf(store: string): Promise<LogEntry[]> {
  const l = await runJson<LogEntry[]>(store, ['log']);
  return l.map(({ id, name, parent, root, createdMs }) => ({ id, name, parent, root, createdMs })).sort((a, b) => a.id.localeCompare(b.id));
}

/** Total bytes of the store's container files. */
export function containerBytes(store: string): number {
  let n = 0;
  const walk = (d: string) => {
    let names: fs.Dirent[];
    try { names = fs.readdirSync(d, { withFileTypes: true }); } catch { return; }
    for (const e of names) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) { try { n += fs.statSync(p).size; } catch { /* removed meanwhile */ } }
    }
  };
  walk(path.join(store, 'containers'));
  return n;
}

/** Every container file with its size (to show nothing was written). */
export function containerFiles(store: string): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(store, p)] = fs.statSync(p).size;
    }
  };
  walk(path.join(store, 'containers'));
  return out;
}

function waitForLog(file: string, from: number, re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  return (async () => {
    for (;;) {
      let text = '';
      try { text = fs.readFileSync(file).subarray(from).toString(); } catch { /* not yet */ }
      const m = re.exec(text);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`${file}: no line matching ${re} within ${timeoutMs} ms; log:\n${text.split('\n').slice(-15).join('\n')}`);
      await sleep(25);
    }
  })();
}

export interface PeerMount {
  store: string;
  mnt: string;
  live: string;
  base: string;
  /** The replication address the daemon listens on (the real port when it listened on port 0). */
  address: string;
  daemonPid: () => number | null;
  /** Daemon log text written since the last (re)mount. */
  log: () => string;
  /** Flushes, unmounts and stops the daemon through the CLI. */
  unmount: () => Promise<void>;
  /** Mounts again with the same options; resolves once the replication listener is up. */
  remount: () => Promise<void>;
  /** kill -9 of the daemon, then the dead FUSE mount is cleared. */
  kill: () => Promise<void>;
}

/**
 * A new store mounted by the real CLI, optionally receiving replication (--listen/--key/--keep).
 * Teardown always unmounts and kills a daemon still alive, even when the test failed.
 */
export async function mountPeer(
  t: ExecutionContext,
  opts: { listen?: string; key?: string; keep?: number; initArgs?: string[]; base?: string } = {},
): Promise<PeerMount> {
  const base = opts.base ?? tmpDir(t, 'strata-repl-');
  const store = path.join(base, 'store');
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  await runOk(store, ['init', ...(opts.initArgs ?? [])]);
  const logFile = path.join(store, 'daemon.log');
  let logStart = 0;
  const daemonPid = (): number | null => {
    try {
      return Number.parseInt(fs.readFileSync(path.join(store, 'daemon.pid'), 'utf8'), 10) || null;
    } catch {
      return null;
    }
  };
  const repArgs: string[] = [];
  if (opts.listen) repArgs.push('--listen', opts.listen, '--key', opts.key!);
  if (opts.keep !== undefined) repArgs.push('--keep', String(opts.keep));
  const peer: PeerMount = {
    store, mnt, base, live: path.join(mnt, 'live'), address: '',
    daemonPid,
    log: () => { try { return fs.readFileSync(logFile).subarray(logStart).toString(); } catch { return ''; } },
    unmount: async () => {
      const r = await run(null, ['unmount', mnt], { timeoutMs: 60_000 });
      if (r.code !== 0) throw new Error(`strata unmount exited ${r.code}: ${r.stderr}`);
    },
    remount: async () => {
      try { logStart = fs.statSync(logFile).size; } catch { logStart = 0; }
      const r = await run(null, ['mount', store, mnt, ...repArgs], { timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`strata mount exited ${r.code}: ${r.stderr}\n${peer.log()}`);
      if (!isMounted(mnt)) throw new Error(`strata mount returned but ${mnt} is not mounted\n${peer.log()}`);
      if (opts.listen) {
        const m = await waitForLog(logFile, logStart, /listening for replication on (\S+)/, 15_000);
        peer.address = m[1];
      }
    },
    kill: async () => {
      const pid = daemonPid();
      if (pid) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
        for (let i = 0; i < 200 && alive(pid); i++) await sleep(10);
      }
      await unmountQuietly(mnt);
    },
  };
  t.teardown(async () => {
    if (isMounted(mnt)) {
      await run(null, ['unmount', mnt], { timeoutMs: 30_000 }).catch(() => undefined);
      await unmountQuietly(mnt).catch(() => undefined);
    }
    const pid = daemonPid();
    if (pid && alive(pid)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    await unmountQuietly(mnt).catch(() => undefined);
  });
  await peer.remount();
  return peer;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie (killed, not yet reaped) still answers signal 0.
  try {
    return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

export interface Receiver {
  store: string;
  /** The address it listens on (the real port when asked for port 0). */
  address: string;
  pid: number;
  /** Everything it wrote to stderr (its log) so far. */
  log: () => string;
  exited: Promise<number | null>;
  kill: () => Promise<void>;
  /** SIGTERM and wait for a clean exit code. */
  stop: () => Promise<number | null>;
}

/**
 * A standalone `strata serve` receiver on `store`; resolves once it listens. Teardown kills it
 * (by pid) if it is still running.
 */
export async function startServe(t: ExecutionContext, store: string, opts: { listen: string; key: string; keep?: number }): Promise<Receiver> {
  const args = [STRATA, 'serve', '--store', store, '--listen', opts.listen, '--key', opts.key];
  if (opts.keep !== undefined) args.push('--keep', String(opts.keep));
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  let done = false;
  void exited.then(() => { done = true; });
  t.teardown(async () => {
    if (!done) {
      try { process.kill(child.pid!, 'SIGKILL'); } catch { /* gone */ }
      await exited;
    }
  });
  const deadline = Date.now() + 15_000;
  let address = '';
  for (;;) {
    const m = /serving .* for replication on (\S+)/.exec(out);
    if (m) { address = m[1]; break; }
    if (done) throw new Error(`strata serve exited early: ${err}${out}`);
    if (Date.now() > deadline) throw new Error(`strata serve did not start listening: ${err}${out}`);
    await sleep(20);
  }
  return {
    store, address, pid: child.pid!, exited,
    log: () => err,
    kill: async () => {
      if (!done) {
        try { process.kill(child.pid!, 'SIGKILL'); } catch { /* gone */ }
      }
      await exited;
    },
    stop: async () => {
      if (!done) {
        try { process.kill(child.pid!, 'SIGTERM'); } catch { /* gone */ }
      }
      return exited;
    },
  };
}

/** Waits until `cond()` holds (polling), or throws after `timeoutMs`. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Copies a host tree into `dst` (e.g. a mount's live tree) with plain system calls: content (holes
 * kept as holes), symlinks, hard links, user xattrs, owner, mode and times (deepest first). Unlike
 * `cp -a` it sets no POSIX ACL xattrs, which the mount would store as plain xattrs instead of
 * applying them to the mode.
 */
export function copyTree(src: string, dst: string): void {
  const firstOfInode = new Map<string, string>();
  const times: Array<[string, bigint, bigint]> = [];
  const visit = (s: string, d: string) => {
    const st = fs.lstatSync(s, { bigint: true });
    if (st.isDirectory()) {
      fs.mkdirSync(d);
      for (const name of fs.readdirSync(s).sort()) visit(path.join(s, name), path.join(d, name));
    } else if (st.isSymbolicLink()) {
      fs.symlinkSync(fs.readlinkSync(s), d);
    } else if (st.isFile()) {
      const ino = `${st.dev}:${st.ino}`;
      const first = firstOfInode.get(ino);
      if (first) {
        fs.linkSync(first, d);
        return;
      }
      firstOfInode.set(ino, d);
      const data = fs.readFileSync(s);
      const fd = fs.openSync(d, 'w');
      try {
        const BLOCK = 64 * 1024;
        for (let off = 0; off < data.length; off += BLOCK) {
          const piece = data.subarray(off, off + BLOCK);
          if (piece.some((x) => x !== 0)) fs.writeSync(fd, piece, 0, piece.length, off);
        }
        fs.ftruncateSync(fd, data.length);
      } finally {
        fs.closeSync(fd);
      }
    } else {
      throw new Error(`copyTree: ${s} is neither a file, a directory nor a symlink`);
    }
    if (!st.isSymbolicLink()) {
      for (const name of xattr.listAttributesSync(s)) {
        if (name.startsWith('user.')) xattr.setAttributeSync(d, name, xattr.getAttributeSync(s, name));
      }
    }
    if (isRoot) fs.lchownSync(d, Number(st.uid), Number(st.gid));
    if (!st.isSymbolicLink()) fs.chmodSync(d, Number(st.mode & 0o7777n));
    times.push([d, st.atimeNs, st.mtimeNs]);
  };
  visit(src, dst);
  for (const [d, at, mt] of times.reverse()) fs.lutimesSync(d, utimeArg(at), utimeArg(mt));
}
