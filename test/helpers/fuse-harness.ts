// Runs a FUSE server script in a child process for an end-to-end test. The test process then uses
// the mount like any other program would; the server's event loop, in its own process, is free to
// answer the kernel (a process touching its own mount synchronously deadlocks).

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { isMounted, unmountQuietly } from '../../src/fuse/mount-options.js';

export interface FuseServerOptions {
  /** Arguments after the mountpoint. */
  args?: readonly string[];
  /** Mount here instead of a fresh directory under the OS temporary directory. */
  mountpoint?: string;
  /** How long to wait for the mount to come up (default 10 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface FuseServer {
  mountpoint: string;
  child: ChildProcess;
  /** Everything the server printed so far (the last 1 MiB of each stream). */
  stdout(): string;
  stderr(): string;
  /** Unmounts and stops the server now; teardown does the same if the test did not. Idempotent. */
  stop(): Promise<void>;
}

const TAIL = 1 << 20;
const POLL_MS = 20;

/**
 * Starts `node <script> <mountpoint> ...args` and resolves once `mountpoint` shows in /proc/mounts
 * and the server answers a stat there. Rejects with the server's stderr if it exits first or the
 * mount does not come up in time (default 10 s). A teardown registered on `t` always unmounts
 * (unmountQuietly), stops the child and removes a mountpoint it created, whether the test passed,
 * failed or this function rejected.
 *
 * The child gets an IPC channel; a server should unmount and exit when it closes ('disconnect'),
 * which covers a test worker that dies before its teardown.
 */
export async function startFuseServer(t: ExecutionContext, script: string, opts: FuseServerOptions = {}): Promise<FuseServer> {
  const ownDir = opts.mountpoint ? null : fs.mkdtempSync(path.join(os.tmpdir(), 'strata-fuse-'));
  const mountpoint = path.resolve(opts.mountpoint ?? path.join(ownDir!, 'mnt'));
  fs.mkdirSync(mountpoint, { recursive: true });

  const child = spawn(process.execPath, [script, mountpoint, ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    env: opts.env ?? process.env,
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { out = (out + s).slice(-TAIL); });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { err = (err + s).slice(-TAIL); });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  // A spawn failure (ENOENT...) arrives as 'error' and may come without 'exit'.
  let spawnError: Error | null = null;
  child.once('error', (e) => { spawnError = e; });

  let stopped: Promise<void> | null = null;
  const stop = (): Promise<void> => (stopped ??= (async () => {
    // Unmount first, so the kernel stops sending requests, then the child; a dead mount left by a
    // child that died is cleared by the second unmount.
    const problems: unknown[] = [];
    await unmountQuietly(mountpoint).catch((e) => problems.push(e));
    await stopChild(child, exited);
    await unmountQuietly(mountpoint).catch((e) => problems.push(e));
    if (isMounted(mountpoint)) {
      throw new Error(`${mountpoint} is still mounted after teardown: ${problems.map(String).join('; ')}`);
    }
    // Non-recursive: never delete through a mount, whatever state it is in.
    if (ownDir) {
      fs.rmdirSync(mountpoint);
      fs.rmdirSync(ownDir);
    }
  })());
  t.teardown(stop);

  const timeoutMs = opts.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  const parentDev = fs.statSync(path.dirname(mountpoint)).dev;
  for (;;) {
    // In /proc/mounts is not enough: fuse-native can fail after the kernel mount exists (libfuse's
    // fuse_new rejecting an option fuse_mount accepted). A stat answered from a device other than
    // the parent's proves the server is serving.
    if (isMounted(mountpoint) && (await servedDev(mountpoint, deadline)) !== parentDev && isMounted(mountpoint)) break;
    if (spawnError || child.exitCode !== null || child.signalCode !== null) {
      await Promise.race([exited, delay(100)]);
      const how = spawnError ? `failed to start (${String(spawnError)})` : `exited (${child.exitCode ?? child.signalCode})`;
      throw new Error(`FUSE server ${script} ${how} before mounting ${mountpoint}:\n${err}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`FUSE server ${script} did not mount ${mountpoint} within ${timeoutMs} ms:\n${err}`);
    }
    await delay(POLL_MS);
  }

  return { mountpoint, child, stdout: () => out, stderr: () => err, stop };
}

/**
 * The device of `mountpoint` as its server reports it, asynchronously (the answer comes from
 * another process), or -1 on error or once `deadline` has passed.
 */
async function servedDev(mountpoint: string, deadline: number): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<number>((resolve) => { timer = setTimeout(resolve, Math.max(0, deadline - Date.now()), -1); });
  const answer = fs.promises.stat(mountpoint).then((st) => st.dev, () => -1);
  try {
    return await Promise.race([answer, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** SIGTERM, then SIGKILL after 3 s; resolves when the child has exited. */
async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
