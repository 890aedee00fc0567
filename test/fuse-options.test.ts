// End to end: the extra libfuse options really change what the kernel sends. memfs-server runs in
// a child process and counts the size of every write request; this process writes through the
// mount and reads the counts back from /.stats.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import Fuse from 'fuse-native';
import { FUSE_MOUNT_DEFAULTS, applyMountOptions, isMounted, mountOptionString } from '../src/fuse/mount-options.js';
import type { WriteStats } from './fixtures/memfs-server.js';
import { startFuseServer } from './helpers/fuse-harness.js';
import { tmpDir } from './helpers/tmp.js';

const SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'memfs-server.js');
const MiB = 1024 * 1024;

/** Writes `mib` MiB through the mount in 1 MiB write(2) calls, asynchronously. */
async function writeFile(file: string, mib: number): Promise<void> {
  const block = Buffer.alloc(MiB, 0xa5);
  const fh = await fs.promises.open(file, 'w');
  try {
    for (let i = 0; i < mib; i++) await fh.write(block, 0, MiB, i * MiB);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function readStats(mountpoint: string): Promise<WriteStats> {
  return JSON.parse(await fs.promises.readFile(path.join(mountpoint, '.stats'), 'utf8')) as WriteStats;
}

test('the option string fuse-native builds gets our options appended', (t) => {
  const fuse = new Fuse('/nonexistent-mountpoint', {}, { fsname: 'x', maxRead: 65536 });
  t.is(mountOptionString(fuse), '-omax_read=65536,fsname=x');
  applyMountOptions(fuse);
  t.is(mountOptionString(fuse), `-omax_read=65536,fsname=x,${FUSE_MOUNT_DEFAULTS.join(',')}`);
  // Applied twice, the later value of an option replaces the earlier one.
  applyMountOptions(fuse, ['max_read=131072']);
  t.is(mountOptionString(fuse), `-ofsname=x,${FUSE_MOUNT_DEFAULTS.join(',')},max_read=131072`);
  t.is(mountOptionString(applyMountOptions(new Fuse('/m', {}), [])), '');
  t.throws(() => applyMountOptions(new Fuse('/m', {}), ['big_writes,allow_other']), { message: /malformed/ });
  t.throws(() => applyMountOptions(new Fuse('/m', {}), [`fsname=${'a'.repeat(1100)}`]), { message: /truncates/ });
});

test('with FUSE_MOUNT_DEFAULTS the kernel sends 128 KiB writes', async (t) => {
  const server = await startFuseServer(t, SERVER);
  const file = path.join(server.mountpoint, 'f');
  await writeFile(file, 8);

  const stats = await readStats(server.mountpoint);
  t.log('write sizes with options:', JSON.stringify(stats.histogram));
  t.is(stats.bytes, 8 * MiB);
  t.is(stats.max, 131072);
  t.deepEqual(stats.histogram, { 131072: 64 });
  t.is((await fs.promises.stat(file)).size, 8 * MiB);
  const back = await fs.promises.readFile(file);
  t.true(back.equals(Buffer.alloc(8 * MiB, 0xa5)), 'data reads back intact');
  t.regex(server.stdout(), /"options":"-ofsname=strata-memfs,big_writes,max_write=131072,default_permissions"/);
});

test('without the extra options the kernel sends 4 KiB writes', async (t) => {
  const server = await startFuseServer(t, SERVER, { args: ['--plain'] });
  await writeFile(path.join(server.mountpoint, 'f'), 8);

  const stats = await readStats(server.mountpoint);
  t.log('write sizes without options:', JSON.stringify(stats.histogram));
  t.is(stats.bytes, 8 * MiB);
  t.true(stats.max <= 4096, `largest write ${stats.max}`);
  t.deepEqual(stats.histogram, { 4096: 2048 });
});

test('big_writes alone already gives 128 KiB writes', async (t) => {
  const server = await startFuseServer(t, SERVER, { args: ['--options=big_writes'] });
  await writeFile(path.join(server.mountpoint, 'f'), 2);
  const stats = await readStats(server.mountpoint);
  t.is(stats.max, 131072);
});

test('a server that cannot mount fails with its stderr and leaves nothing mounted', async (t) => {
  // libfuse's fuse_mount() accepts the unknown option and mounts; fuse_new() then rejects it and
  // fuse-native reports failure with the kernel mount still in place, which the server removes.
  const mountpoint = path.join(tmpDir(t), 'mnt');
  const error = await t.throwsAsync(startFuseServer(t, SERVER, { mountpoint, args: ['--options=no_such_option'] }));
  t.regex(error?.message ?? '', /exited \(1\) before mounting[\s\S]*unknown option/);
  t.false(isMounted(mountpoint));
});

test('teardown clears the dead mount of a server killed with SIGKILL', async (t) => {
  const server = await startFuseServer(t, SERVER);
  const gone = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGKILL');
  await gone;
  t.true(isMounted(server.mountpoint), 'a killed server leaves its mount behind');
  await t.throwsAsync(fs.promises.stat(path.join(server.mountpoint, 'f')), { code: 'ENOTCONN' });
  await server.stop();
  t.false(isMounted(server.mountpoint));
});

test('dd through the mount and cat back', async (t) => {
  const server = await startFuseServer(t, SERVER);
  const { execFile } = await import('node:child_process');
  const run = (cmd: string, args: string[]) =>
    new Promise<string>((resolve, reject) =>
      execFile(cmd, args, { encoding: 'latin1', maxBuffer: 8 * MiB, timeout: 60_000 }, (e, out) => (e ? reject(e) : resolve(out))));
  const file = path.join(server.mountpoint, 'dd');
  await run('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', 'count=4', 'conv=fsync', 'status=none']);
  t.is((await run('cat', [file])).length, 4 * MiB);
  const stats = await readStats(server.mountpoint);
  t.deepEqual(stats.histogram, { 131072: 32 });
  server.child.kill('SIGUSR1');
  await waitFor(() => /^stats /m.test(server.stdout()));
  const line = server.stdout().split('\n').find((l) => l.startsWith('stats '))!;
  t.deepEqual(JSON.parse(line.slice('stats '.length)), stats);
  await fs.promises.unlink(file);
  t.false(fs.existsSync(file));
});
