import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { isMounted, unmountQuietly } from '../../src/fuse/mount-options.js';
import { strata, STRATA } from './cli.js';
import { tmpDir } from './tmp.js';

export interface MountedStore {
  store: string;
  mnt: string;
  /** mnt/live */
  live: string;
  base: string;
  /** Runs a strata command against this store. */
  cli: (...args: string[]) => ReturnType<typeof strata>;
  /** Unmounts through the CLI (flushes); the teardown does it anyway. */
  unmount: () => void;
  /** Mounts again (after unmount or a killed daemon). */
  remount: () => void;
  daemonPid: () => number | null;
}

/**
 * A new store mounted by the real CLI (a detached daemon). Teardown always unmounts (CLI, then
 * fusermount/umount -l) and kills a daemon that is still alive, even when the test failed.
 */
export function mountStore(t: ExecutionContext, opts: { initArgs?: string[] } = {}): MountedStore {
  const base = tmpDir(t, 'strata-mount-');
  const store = path.join(base, 'store');
  const mnt = path.join(base, 'mnt');
  fs.mkdirSync(mnt);
  const init = strata(store, 'init', ...(opts.initArgs ?? []));
  if (init.code !== 0) throw new Error(`strata init: ${init.stderr}`);
  const daemonPid = (): number | null => {
    try {
      return Number.parseInt(fs.readFileSync(path.join(store, 'daemon.pid'), 'utf8'), 10) || null;
    } catch {
      return null;
    }
  };
  const mount = () => {
    const r = spawnSync(process.execPath, [STRATA, 'mount', store, mnt], { encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`strata mount exited ${r.status}: ${r.stderr}\n${readLog(store)}`);
    if (!isMounted(mnt)) throw new Error(`strata mount returned but ${mnt} is not mounted\n${readLog(store)}`);
  };
  const unmount = () => {
    const r = spawnSync(process.execPath, [STRATA, 'unmount', mnt], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`strata unmount exited ${r.status}: ${r.stderr}`);
  };
  t.teardown(async () => {
    if (isMounted(mnt)) {
      spawnSync(process.execPath, [STRATA, 'unmount', mnt], { timeout: 30_000 });
      await unmountQuietly(mnt).catch(() => undefined);
    }
    const pid = daemonPid();
    if (pid) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    await unmountQuietly(mnt).catch(() => undefined);
  });
  mount();
  return {
    store, mnt, base, live: path.join(mnt, 'live'),
    cli: (...args: string[]) => strata(store, ...args),
    unmount,
    remount: mount,
    daemonPid,
  };
}

function readLog(store: string): string {
  try {
    return fs.readFileSync(path.join(store, 'daemon.log'), 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '(no daemon log)';
  }
}

/** Runs a shell command (never inside the daemon's process) and returns stdout; throws with stderr on failure. */
export function sh(cmd: string, opts: { cwd?: string; timeout?: number } = {}): string {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8', cwd: opts.cwd, timeout: opts.timeout ?? 120_000, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}
