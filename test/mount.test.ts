// The mount: FUSE translation (unit tests, no mount), then end-to-end tests with real mounts,
// driven from this process while the daemon serves from another one (a process must never touch
// its own mount synchronously). Every test that mounts registers a teardown that unmounts and
// stops the daemon whatever happened, before its temporary directories are removed.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import Fuse from 'fuse-native';
import { CasStore } from '../src/cas/store.js';
import { daemonFiles, parseRequest, processRunning, readPidFile } from '../src/daemon/control-protocol.js';
import { StrataError } from '../src/errors.js';
import { buildFuseOps, decodeTimes, packStat, toFuseStat, usePackedStats } from '../src/fuse/fuse-ops.js';
import { isMounted, unmountQuietly } from '../src/fuse/mount-options.js';
import type { Attr, DirEntry, Namespace } from '../src/types.js';
import { MemNamespace } from './fixtures/mem-namespace.js';
import { REPO, STRATA } from './helpers/cli.js';
import { startFuseServer } from './helpers/fuse-harness.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

const DAEMON = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'daemon', 'daemon.js');
const MOUNT_HELPER = path.join(REPO, 'mount', 'mount.strata');
const REAL_ENV: NodeJS.ProcessEnv = { ...process.env, STRATA_TEST_NAMESPACE: undefined };
/** The in-memory namespace (test/fixtures/mem-namespace.ts), which can fail on demand. */
const MEM_ENV: NodeJS.ProcessEnv = { ...process.env, STRATA_TEST_NAMESPACE: 'mem' };
const CLI_TIMEOUT_MS = 90_000;

// ---- unit: the translation layer, called directly ------------------------------------------------

type Call = { args: unknown[] };

/** Calls one op and resolves with the arguments of its (single) callback; fails on a second answer. */
function callOp(t: ExecutionContext, ops: Fuse.Operations, name: keyof Fuse.Operations, ...args: unknown[]): Promise<Call> {
  return new Promise((resolve) => {
    let answers = 0;
    const cb = (...cbArgs: unknown[]) => {
      answers++;
      if (answers > 1) t.fail(`${name} answered ${answers} times`);
      resolve({ args: cbArgs });
    };
    (ops[name] as (...a: unknown[]) => void)(...args, cb);
  });
}

test('namespace errors become errno; unexpected ones become EIO and are logged', async (t) => {
  const logged: string[] = [];
  const ops = buildFuseOps(new MemNamespace(), (m) => logged.push(m));
  t.deepEqual((await callOp(t, ops, 'getattr', '/missing')).args, [Fuse.ENOENT]);
  t.deepEqual((await callOp(t, ops, 'getattr', '/boom-locked')).args, [Fuse.EBUSY]);
  t.deepEqual((await callOp(t, ops, 'getattr', '/boom-rofs')).args, [Fuse.EROFS]);
  t.is(logged.length, 0, 'expected errors are not logged');
  t.deepEqual((await callOp(t, ops, 'getattr', '/boom-throw')).args, [Fuse.EIO]);
  t.deepEqual((await callOp(t, ops, 'getattr', '/boom-reject')).args, [Fuse.EIO]);
  t.deepEqual((await callOp(t, ops, 'getattr', '/boom-corrupt')).args, [Fuse.EIO]);
  t.is(logged.length, 3);
  t.regex(logged[0], /getattr \/boom-throw: TypeError: boom/);
  t.regex(logged[1], /getattr \/boom-reject: Error: boom: rejected/);
  t.regex(logged[2], /ECORRUPT/);
  t.deepEqual((await callOp(t, ops, 'mkdir', '/d', 0o755)).args, [0]);
  t.deepEqual((await callOp(t, ops, 'mkdir', '/d', 0o755)).args, [Fuse.EEXIST]);
  t.deepEqual((await callOp(t, ops, 'getxattr', '/d', 'user.none', 0)).args, [Fuse.ENODATA]);
  const root = await callOp(t, ops, 'getattr', '/');
  t.is(root.args[0], 0);
  t.is((root.args[1] as Uint32Array)[0] & 0o170000, 0o040000, 'a packed stat: mode first');
});

test('every call is answered exactly once, also when the reply cannot be built', async (t) => {
  const logged: string[] = [];
  // Namespace bugs: a handle that does not fit fuse_file_info.fh (the reply cannot be built), a
  // value that is not a Buffer, and a rejection.
  const broken = Object.assign(Object.create(new MemNamespace()) as Namespace, {
    open: () => -1,
    read: () => Promise.resolve('not a buffer' as unknown as Buffer),
    fsync: () => Promise.reject(new StrataError('EBADF', 'gone')),
  });
  const ops = buildFuseOps(broken, (m) => logged.push(m));
  t.deepEqual((await callOp(t, ops, 'open', '/', 0)).args, [Fuse.EIO]);
  t.regex(logged.join('\n'), /file handle -1/);
  t.deepEqual((await callOp(t, ops, 'read', '/f', 7, Buffer.alloc(8), 8, 0)).args, [Fuse.EIO]);
  t.deepEqual((await callOp(t, ops, 'fsync', '/f', 0, 7)).args, [Fuse.EBADF]);
  await new Promise((resolve) => setTimeout(resolve, 20)); // a late second answer would fail the test
});

test('write hands the namespace libfuse\'s buffer until it answers; what it stored survives the buffer\'s reuse; read fills the kernel buffer', async (t) => {
  const ns = new MemNamespace();
  const ops = buildFuseOps(ns, (m) => t.log(m));
  const created = await callOp(t, ops, 'create', '/f', 0o100644);
  t.is(created.args[0], 0);
  const fh = created.args[1] as number;
  const kernelBuf = Buffer.from('0123456789');
  // libfuse's buffer stays valid until the answer (its thread waits for it), then is reused.
  t.deepEqual((await callOp(t, ops, 'write', '/f', fh, kernelBuf, 8, 0)).args, [8]);
  kernelBuf.fill(0x78);
  const out = Buffer.alloc(16, 0xff);
  t.deepEqual((await callOp(t, ops, 'read', '/f', fh, out, 16, 0)).args, [8]);
  t.is(out.subarray(0, 8).toString(), '01234567');
  t.is(out[8], 0xff, 'nothing written past the data');
  t.deepEqual((await callOp(t, ops, 'setxattr', '/f', 'user.k', Buffer.from('v'), 0, 0)).args, [0]);
  t.deepEqual((await callOp(t, ops, 'getxattr', '/f', 'user.k', 0)).args, [0, Buffer.from('v')]);
  t.deepEqual((await callOp(t, ops, 'listxattr', '/f')).args, [0, ['user.k']]);
  t.deepEqual((await callOp(t, ops, 'release', '/f', fh)).args, [0]);
});

test('attributes and times convert as fuse-native expects', (t) => {
  const st = toFuseStat({ ino: 7, mode: 0o100600, nlink: 2, uid: 5, gid: 6, size: 2 ** 40, blocks: 9, rdev: 0, atimeMs: 1.5e12 + 0.7, mtimeMs: -5, ctimeMs: 1e12 });
  t.like(st, { ino: 7, mode: 0o100600, nlink: 2, uid: 5, gid: 6, size: 2 ** 40, blocks: 9, atime: 1.5e12, mtime: 0, ctime: 1e12 });
  // UTIME_NOW/UTIME_OMIT arrive as 1073 ms; both special means touch (now), one special means omit.
  t.deepEqual(decodeTimes(1073, 1073, 42), { atimeMs: 42, mtimeMs: 42 });
  t.deepEqual(decodeTimes(1073, 5000, 42), { atimeMs: undefined, mtimeMs: 5000 });
  t.deepEqual(decodeTimes(3000, 5000, 42), { atimeMs: 3000, mtimeMs: 5000 });
});

test('readdir: stats are packed as fuse-native packs them, once per listing the namespace answers again', async (t) => {
  const attrs: Attr[] = [
    { ino: 2 ** 31 + 12345, mode: 0o100644, nlink: 1, uid: 1000, gid: 100, size: 2 ** 33 + 7, blocks: 2 ** 24 + 1, rdev: 0, atimeMs: 1.7e12 + 0.9, mtimeMs: -5, ctimeMs: 499162000000 },
    { ino: 3, mode: 0o040755, nlink: 0, uid: 0, gid: 0, size: 0, blocks: 0, rdev: 0x0801, atimeMs: 0, mtimeMs: 1, ctimeMs: 2 ** 41 },
  ];
  // fuse-native's own packing (getStatArray), reached through its unreplaced _op_readdir.
  const theirs = await new Promise<unknown[]>((resolve) => {
    const host = { ops: { readdir: (_p: string, cb: (e: number, n: string[], s: Fuse.Stat[]) => void) => cb(0, ['a', 'b'], attrs.map(toFuseStat)) } };
    (Fuse.prototype as unknown as { _op_readdir: (this: unknown, sig: (...a: unknown[]) => void, p: string) => void })._op_readdir.call(host, (...a: unknown[]) => resolve(a), '/');
  });
  t.deepEqual(attrs.map(packStat), theirs[2] as Uint32Array[]);

  // A namespace that answers the same (immutable) listing twice, as StrataFs does for views.
  const listing: readonly DirEntry[] = Object.freeze(attrs.map((attr, i) => ({ name: `n${i}`, attr })));
  const ns = Object.assign(Object.create(new MemNamespace()) as Namespace, { readdir: () => listing });
  const ops = buildFuseOps(ns, (m) => t.log(m));
  const first = await callOp(t, ops, 'readdir', '/v');
  const again = await callOp(t, ops, 'readdir', '/v');
  t.deepEqual(first.args.slice(0, 2), [0, ['n0', 'n1']]);
  t.deepEqual(first.args[2], attrs.map(packStat));
  t.is(again.args[2], first.args[2], 'packed once');

  // The instance hooks hand the packed stats to the binding untouched.
  const fuse = usePackedStats({ ops, _op_readdir: () => t.fail('replaced'), _op_getattr: () => t.fail('replaced') } as unknown as object);
  const signalled = await new Promise<unknown[]>((resolve) => (fuse as unknown as { _op_readdir: (sig: (...a: unknown[]) => void, p: string) => void })._op_readdir((...a) => resolve(a), '/v'));
  t.is(signalled[2], first.args[2]);
  t.throws(() => usePackedStats({ _op_getattr: () => undefined }), { message: /_op_readdir/ });
  t.throws(() => usePackedStats({ _op_readdir: () => undefined }), { message: /_op_getattr/ });
});

test('getattr: a packed stat with the path\'s lifetime where it differs from the mount\'s, and the generation', async (t) => {
  const attr: Attr = { ino: 9, mode: 0o040555, nlink: 2, uid: 0, gid: 0, size: 0, blocks: 0, rdev: 0, atimeMs: 1, mtimeMs: 2, ctimeMs: 3 };
  const ns = Object.assign(Object.create(new MemNamespace()) as Namespace, {
    getattr: (p: string) => (p === '/snap' ? { ...attr, generation: 7 } : p === '/gone' ? Promise.reject(new StrataError('ENOENT', 'gone')) : attr),
    cacheTimeout: (p: string) => (p.startsWith('/snap/') ? 3600 : 1),
  });
  const ops = buildFuseOps(ns, (m) => t.log(m));
  t.deepEqual((await callOp(t, ops, 'getattr', '/live')).args, [0, packStat(attr), 0, -1], 'the mount\'s lifetime: nothing to write');
  t.deepEqual((await callOp(t, ops, 'getattr', '/snap/f')).args, [0, packStat(attr), 3600_000, -1]);
  t.deepEqual((await callOp(t, ops, 'getattr', '/snap')).args, [0, packStat(attr), 0, 7]);
  // Through the hook, as the binding's signal gets them (an error still carries a stat to read).
  const fuse = usePackedStats({ ops, _op_readdir: () => undefined, _op_getattr: () => undefined } as unknown as object) as unknown as { _op_getattr: (sig: (...a: unknown[]) => void, p: string) => void };
  const signal = (p: string) => new Promise<unknown[]>((resolve) => fuse._op_getattr((...a) => resolve(a), p));
  t.deepEqual(await signal('/snap/f'), [0, packStat(attr), 3600_000, -1]);
  const failed = await signal('/gone');
  t.true((failed[0] as number) < 0);
  t.true(failed[1] instanceof Uint32Array);
});

test('control requests are validated', (t) => {
  const err = (line: string) => {
    const r = parseRequest(line);
    return 'error' in r ? r.error : null;
  };
  t.like(err('not json'), { ok: false, code: 'EINVAL', id: null });
  t.like(err('[1]'), { ok: false, code: 'EINVAL' });
  t.like(err('{"id":3,"cmd":"format-disk"}'), { ok: false, code: 'EINVAL', id: 3 });
  t.like(err('{"id":4,"cmd":"snapshot","args":{"name":7}}'), { ok: false, code: 'EINVAL', id: 4 });
  t.like(err('{"id":5,"cmd":"snapshot","args":{"nmae":"x"}}'), { ok: false, code: 'EINVAL' });
  t.like(err('{"id":6,"cmd":"branch","args":{}}'), { ok: false, code: 'EINVAL' });
  t.like(err('{"id":7,"cmd":"status","args":{"x":1}}'), { ok: false, code: 'EINVAL' });
  t.like(err('{"id":{},"cmd":"status"}'), { ok: false, code: 'EINVAL' });
  t.deepEqual(parseRequest('{"id":"a","cmd":"snapshot"}'), { request: { id: 'a', cmd: 'snapshot', args: { name: null } } });
  t.deepEqual(parseRequest('{"id":1,"cmd":"branch","args":{"ref":"s1"}}'), { request: { id: 1, cmd: 'branch', args: { ref: 's1' } } });
});

// ---- end to end -----------------------------------------------------------------------------------

interface Run { code: number | null; stdout: string; stderr: string }

/** Runs the strata command asynchronously (never blocking this process), with a deadline. */
function runStrata(args: string[], env: NodeJS.ProcessEnv = REAL_ENV, timeoutMs = CLI_TIMEOUT_MS): Promise<Run> {
  return runProgram(process.execPath, [STRATA, ...args], env, timeoutMs);
}

function runProgram(file: string, args: string[], env: NodeJS.ProcessEnv = REAL_ENV, timeoutMs = CLI_TIMEOUT_MS): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${path.basename(file)} ${args.join(' ')} did not finish within ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    // 'close', not 'exit': a detached grandchild (the daemon) must not hold our pipes, and all output is read.
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

async function strataOk(t: ExecutionContext, args: string[], env: NodeJS.ProcessEnv = REAL_ENV): Promise<string> {
  const r = await runStrata(args, env);
  if (r.code !== 0) t.fail(`strata ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** A fresh store (removed at teardown). */
function newStore(t: ExecutionContext): string {
  const store = path.join(tmpDir(t), 'store');
  CasStore.init(store);
  return store;
}

/**
 * An empty mountpoint, plus the teardown that makes sure nothing stays mounted there and no
 * daemon of `store` keeps running: registered after the directories, so it runs before they go.
 */
function newMountpoint(t: ExecutionContext, stores: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-mnt-'));
  const mountpoint = path.join(dir, 'mnt');
  fs.mkdirSync(mountpoint);
  t.teardown(async () => {
    for (const store of stores) {
      const pid = readPidFile(daemonFiles(store).pid);
      if (pid !== null && processRunning(pid)) {
        process.kill(pid, 'SIGTERM');
        await waitFor(`daemon ${pid} stops`, () => !processRunning(pid), 10_000).catch(() => process.kill(pid, 'SIGKILL'));
      }
    }
    await unmountQuietly(mountpoint);
    if (isMounted(mountpoint)) throw new Error(`${mountpoint} is still mounted after teardown`);
    // Non-recursive: never delete through a mount.
    fs.rmdirSync(mountpoint);
    fs.rmdirSync(dir);
  });
  return mountpoint;
}

async function mountViaCli(t: ExecutionContext, store: string, mountpoint: string, env = REAL_ENV): Promise<number> {
  const out = await strataOk(t, ['mount', store, mountpoint, '--json'], env);
  const { pid } = JSON.parse(out) as { pid: number };
  t.true(isMounted(mountpoint), 'mounted once strata mount returns');
  return pid;
}

/** The store holds no trace of a daemon: no pid file, socket or lock. */
function assertNoDaemonFiles(t: ExecutionContext, store: string): void {
  const files = daemonFiles(store);
  t.false(fs.existsSync(files.pid), 'pid file removed');
  t.false(fs.existsSync(files.socket), 'control socket removed');
  t.false(fs.existsSync(files.lock), 'store lock released');
}

test.serial('mount with the CLI, use the live tree, snapshot, unmount', async (t) => {
  const store = newStore(t);
  const mnt = newMountpoint(t, [store]);
  const pid = await mountViaCli(t, store, mnt);

  const files = daemonFiles(store);
  t.is(readPidFile(files.pid), pid, 'daemon.pid names the daemon');
  t.is(readPidFile(files.lock), pid, 'the daemon holds the store lock');
  const sock = fs.statSync(files.socket);
  t.true(sock.isSocket());
  t.is(sock.mode & 0o777, 0o600, 'control socket is owner-only');
  t.regex(fs.readFileSync(files.log, 'utf8'), new RegExp(`\\[${pid}\\] mounted `));

  const live = path.join(mnt, 'live');
  const data = pseudoRandomBytes(3 * 1024 * 1024 + 17, 7);
  await fs.promises.writeFile(path.join(live, 'hello.txt'), 'hello\n');
  await fs.promises.mkdir(path.join(live, 'dir'));
  await fs.promises.writeFile(path.join(live, 'dir', 'data.bin'), data);
  await fs.promises.symlink('../hello.txt', path.join(live, 'dir', 'link'));
  await fs.promises.rename(path.join(live, 'hello.txt'), path.join(live, 'greeting.txt'));
  t.deepEqual((await fs.promises.readdir(live)).sort(), ['dir', 'greeting.txt']);
  t.is(await fs.promises.readFile(path.join(live, 'greeting.txt'), 'utf8'), 'hello\n');
  t.is(await fs.promises.readlink(path.join(live, 'dir', 'link')), '../hello.txt');
  t.true((await fs.promises.readFile(path.join(live, 'dir', 'data.bin'))).equals(data));
  t.is((await fs.promises.stat(path.join(live, 'dir', 'data.bin'))).size, data.length);
  await t.throwsAsync(fs.promises.stat(path.join(live, 'nothing')), { code: 'ENOENT' });
  await t.throwsAsync(fs.promises.rmdir(path.join(live, 'dir')), { code: 'ENOTEMPTY' });

  const snap = JSON.parse(await strataOk(t, ['snapshot', '--name', 's1', '--json', '--store', store])) as { id: string; name: string };
  t.is(snap.name, 's1');
  t.regex(snap.id, /^[0-9a-f]{8}$/);
  const dup = await runStrata(['snapshot', '--name', 's1', '--store', store]);
  t.is(dup.code, 1);
  t.regex(dup.stderr, /^strata: .*s1.*exists\n$/);
  const view = path.join(mnt, 'pools', 'capacity', 's1');
  t.true((await fs.promises.readFile(path.join(view, 'dir', 'data.bin'))).equals(data), 'the snapshot view holds the data');
  await t.throwsAsync(fs.promises.writeFile(path.join(view, 'x'), 'x'), { code: 'EROFS' });

  const un = await runStrata(['unmount', mnt]);
  t.is(un.code, 0, un.stderr);
  t.is(un.stdout, `unmounted ${mnt}\n`);
  t.false(isMounted(mnt));
  t.false(processRunning(pid), 'the daemon has exited');
  assertNoDaemonFiles(t, store);
  t.regex(fs.readFileSync(files.log, 'utf8'), /stopping: unmount requested[\s\S]*stopped \(exit 0\)/);
  // The store is usable without the mount: the snapshot is there.
  const log = JSON.parse(await strataOk(t, ['log', '--json', '--store', store])) as Array<{ name: string }>;
  t.deepEqual(log.map((s) => s.name), ['s1']);
});

test.serial('a mounted store refuses a second mount and other writers with a clear message', async (t) => {
  const store = newStore(t);
  const other = newStore(t);
  const mnt = newMountpoint(t, [store, other]);
  const mnt2 = newMountpoint(t, [store]);
  const pid = await mountViaCli(t, store, mnt);
  const expected = new RegExp(`^strata: store is mounted at ${mnt} by process ${pid}; use the mount or unmount first`);

  const again = await runStrata(['mount', store, mnt2]);
  t.is(again.code, 1);
  t.regex(again.stderr, expected);
  t.false(isMounted(mnt2));

  const src = tmpDir(t);
  fs.writeFileSync(path.join(src, 'f'), 'f');
  for (const args of [['import', src], ['gc'], ['rm', 'nothing'], ['index', 'rebuild']]) {
    const r = await runStrata([...args, '--store', store]);
    t.is(r.code, 1, `strata ${args[0]} refuses`);
    t.regex(r.stderr, expected, `strata ${args[0]}: ${r.stderr}`);
    t.is(r.stderr.trim().split('\n').length, 1, 'one line');
  }
  // Readers need no lock.
  t.is((await runStrata(['log', '--store', store])).code, 0);

  // Another store cannot mount over a live mount; it fails without keeping its own lock.
  const busy = await runStrata(['mount', other, mnt]);
  t.is(busy.code, 1);
  t.regex(busy.stderr, new RegExp(`^strata: cannot mount: cannot mount ${other} at ${mnt}: ${mnt} is already a mount point`));
  assertNoDaemonFiles(t, other);
  t.is(readPidFile(daemonFiles(store).pid), pid, 'the first mount is untouched');

  await strataOk(t, ['unmount', mnt]);
  assertNoDaemonFiles(t, store);
});

test.serial('a mount that cannot happen is one clear line and leaves the store unlocked', async (t) => {
  const store = newStore(t);
  const mnt = newMountpoint(t, [store]);
  const missing = path.join(path.dirname(mnt), 'no-such-dir');
  const r1 = await runStrata(['mount', store, missing]);
  t.is(r1.code, 1);
  t.is(r1.stderr, `strata: cannot mount: cannot mount ${store} at ${missing}: mountpoint ${missing} does not exist\n`);
  assertNoDaemonFiles(t, store);

  fs.writeFileSync(path.join(mnt, 'occupied'), 'x');
  const r2 = await runStrata(['mount', store, mnt]);
  t.is(r2.code, 1);
  t.regex(r2.stderr, /^strata: cannot mount: .*mountpoint .* is not empty\n$/);
  assertNoDaemonFiles(t, store);
  fs.rmSync(path.join(mnt, 'occupied'));

  const r3 = await runStrata(['mount', path.join(path.dirname(mnt), 'no-store'), mnt]);
  t.is(r3.code, 1);
  t.regex(r3.stderr, /^strata: no store at /);
  const r4 = await runStrata(['mount']);
  t.is(r4.code, 2);
  t.regex(r4.stderr, /usage: strata mount STORE MOUNTPOINT/);
  const r5 = await runStrata(['unmount', mnt]);
  t.is(r5.code, 1);
  t.is(r5.stderr, `strata: ${mnt} is not mounted\n`);
  t.false(isMounted(mnt));
});

/** Starts the daemon as a child of this process (so this process reaps it when it is killed). */
async function startDaemonChild(t: ExecutionContext, store: string, env = REAL_ENV) {
  const server = await startFuseServer(t, DAEMON, { args: ['--store', store], env, timeoutMs: 20_000 });
  t.teardown(async () => {
    // After a test remounted with the CLI, that daemon (not this child) holds the mount.
    const pid = readPidFile(daemonFiles(store).pid);
    if (pid !== null && pid !== server.child.pid && processRunning(pid)) {
      process.kill(pid, 'SIGTERM');
      await waitFor(`daemon ${pid} stops`, () => !processRunning(pid), 10_000).catch(() => process.kill(pid, 'SIGKILL'));
    }
  });
  await waitFor('the control socket is up', () => fs.existsSync(daemonFiles(store).socket));
  return server;
}

async function killHard(server: { child: import('node:child_process').ChildProcess }): Promise<void> {
  const gone = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGKILL');
  await gone;
}

test.serial('after a SIGKILL, strata unmount clears the dead mount and the next mount takes over', async (t) => {
  const store = newStore(t);
  const server = await startDaemonChild(t, store);
  const mnt = server.mountpoint;
  const file = path.join(mnt, 'live', 'kept.txt');
  const fh = await fs.promises.open(file, 'w');
  await fh.writeFile('fsynced before the kill\n');
  await fh.sync();
  await fh.close();

  await killHard(server);
  const files = daemonFiles(store);
  t.true(isMounted(mnt), 'a killed daemon leaves its mount behind');
  await t.throwsAsync(fs.promises.stat(path.join(mnt, 'live')), { code: 'ENOTCONN' });
  t.true(fs.existsSync(files.lock) && fs.existsSync(files.socket), 'and its lock and socket');

  const un = await runStrata(['unmount', mnt]);
  t.is(un.code, 0, un.stderr);
  t.regex(un.stdout, /its daemon was not running; cleared the dead mount/);
  t.false(isMounted(mnt));

  const pid = await mountViaCli(t, store, mnt);
  t.is(readPidFile(files.lock), pid, 'the stale lock was taken over');
  t.is(fs.statSync(files.socket).mode & 0o777, 0o600, 'a fresh control socket');
  t.is(await fs.promises.readFile(file, 'utf8'), 'fsynced before the kill\n', 'fsynced data survived SIGKILL');
  await strataOk(t, ['unmount', mnt]);
  assertNoDaemonFiles(t, store);
});

test.serial('after a SIGKILL, mounting again clears the dead mount itself', async (t) => {
  const store = newStore(t);
  const server = await startDaemonChild(t, store);
  const mnt = server.mountpoint;
  await killHard(server);
  t.true(isMounted(mnt));

  const pid = await mountViaCli(t, store, mnt);
  t.regex(fs.readFileSync(daemonFiles(store).log, 'utf8'), new RegExp(`\\[${pid}\\] clearing a dead mount at ${mnt}`));
  t.deepEqual(await fs.promises.readdir(path.join(mnt, 'live')), []);
  await strataOk(t, ['unmount', mnt]);
  t.false(isMounted(mnt));
});

test.serial('a daemon started by strata mount and killed with SIGKILL does not block the next mount', async (t) => {
  // This daemon's parent (strata mount) has exited, so nobody here reaps it: where PID 1 does not
  // reap orphans it stays a zombie, which must not count as the store lock's live owner.
  const store = newStore(t);
  const mnt = newMountpoint(t, [store]);
  const first = await mountViaCli(t, store, mnt);
  await fs.promises.writeFile(path.join(mnt, 'live', 'f'), 'x');
  process.kill(first, 'SIGKILL');
  await waitFor('the daemon is dead', () => !processRunning(first));
  const second = await mountViaCli(t, store, mnt);
  t.not(second, first);
  t.is(readPidFile(daemonFiles(store).lock), second);
  t.deepEqual(await fs.promises.readdir(path.join(mnt, 'live')), ['f'], 'the entry was committed before the kill');
  await strataOk(t, ['unmount', mnt]);
  assertNoDaemonFiles(t, store);
});

test.serial('SIGTERM stops the daemon cleanly', async (t) => {
  const store = newStore(t);
  const server = await startDaemonChild(t, store);
  await fs.promises.writeFile(path.join(server.mountpoint, 'live', 'f'), 'unflushed?');
  const exited = new Promise<number | null>((resolve) => server.child.once('exit', (code) => resolve(code)));
  server.child.kill('SIGTERM');
  t.is(await exited, 0);
  t.false(isMounted(server.mountpoint));
  assertNoDaemonFiles(t, store);
  t.regex(fs.readFileSync(daemonFiles(store).log, 'utf8'), /stopping: SIGTERM[\s\S]*stopped \(exit 0\)/);
});

test.serial('namespace failures reach applications as errno; unexpected ones are logged', async (t) => {
  const store = newStore(t);
  const server = await startDaemonChild(t, store, MEM_ENV);
  const at = (name: string) => path.join(server.mountpoint, name);
  await t.throwsAsync(fs.promises.stat(at('boom-throw')), { code: 'EIO' });
  await t.throwsAsync(fs.promises.stat(at('boom-reject')), { code: 'EIO' });
  await t.throwsAsync(fs.promises.stat(at('boom-corrupt')), { code: 'EIO' });
  await t.throwsAsync(fs.promises.stat(at('boom-locked')), { code: 'EBUSY' });
  await t.throwsAsync(fs.promises.stat(at('boom-rofs')), { code: 'EROFS' });
  await t.throwsAsync(fs.promises.stat(at('missing')), { code: 'ENOENT' });
  await fs.promises.mkdir(at('d'));
  await t.throwsAsync(fs.promises.mkdir(at('d')), { code: 'EEXIST' });
  await fs.promises.writeFile(at('d/f'), 'x');
  await t.throwsAsync(fs.promises.rmdir(at('d')), { code: 'ENOTEMPTY' });
  const log = fs.readFileSync(daemonFiles(store).log, 'utf8');
  t.regex(log, /getattr \/boom-throw: TypeError: boom: a bug in the namespace\n\s+at /);
  t.regex(log, /getattr \/boom-reject: Error: boom: rejected/);
  t.regex(log, /getattr \/boom-corrupt: ECORRUPT/);
  t.notRegex(log, /boom-locked|boom-rofs|missing/);
});

test.serial('times set through the mount', async (t) => {
  const store = newStore(t);
  const server = await startDaemonChild(t, store);
  const file = path.join(server.mountpoint, 'live', 'f');
  await fs.promises.writeFile(file, 'x');
  const when = new Date('2021-03-04T05:06:07.250Z');
  await fs.promises.utimes(file, when, when); // touch -d: both times alike
  const st = await fs.promises.stat(file);
  t.is(st.mtimeMs, when.getTime());
  t.is(st.atimeMs, when.getTime());
});

// fuse-native 2.2.6 passes the access time in both utimens slots (fuse-native.c: utimens sends
// l->atime twice), so a different mtime would be lost: `cp -p`, `rsync -t` and `tar x` would store the
// source's atime as mtime. scripts/patch-fuse-native.mjs (our postinstall) fixes the line and rebuilds.
test.serial('a modification time different from the access time survives utimes (fuse-native patched by scripts/patch-fuse-native.mjs)', async (t) => {
  const store = newStore(t);
  const server = await startDaemonChild(t, store);
  const file = path.join(server.mountpoint, 'live', 'f');
  await fs.promises.writeFile(file, 'x');
  await fs.promises.utimes(file, new Date('2022-01-01T00:00:00Z'), new Date('2020-01-01T00:00:00Z'));
  t.is((await fs.promises.stat(file)).mtimeMs, Date.parse('2020-01-01T00:00:00Z'));
});

test.serial('the control socket answers bad requests with errors and keeps serving', async (t) => {
  const store = newStore(t);
  await startDaemonChild(t, store);
  const lines = await new Promise<string[]>((resolve, reject) => {
    const conn = net.createConnection(daemonFiles(store).socket);
    let text = '';
    conn.setEncoding('utf8');
    conn.on('connect', () => conn.write('garbage\n{"id":1,"cmd":"nope"}\n{"id":2,"cmd":"snapshot","args":{"name":""}}\n\n{"id":3,"cmd":"status"}\n'));
    conn.on('data', (s: string) => {
      text += s;
      if (text.split('\n').length > 4) { conn.end(); resolve(text.trim().split('\n')); }
    });
    conn.on('error', reject);
    setTimeout(() => reject(new Error(`no full answer: ${text}`)), 10_000).unref();
  });
  const answers = lines.map((l) => JSON.parse(l) as { id: unknown; ok: boolean; code?: string; result?: { pid: number } });
  t.like(answers[0], { id: null, ok: false, code: 'EINVAL' });
  t.like(answers[1], { id: 1, ok: false, code: 'EINVAL' });
  t.like(answers[2], { id: 2, ok: false, code: 'EINVAL' });
  t.like(answers[3], { id: 3, ok: true });
  t.is(answers[3].result?.pid, readPidFile(daemonFiles(store).pid) ?? undefined);
});

test.serial('mount(8): mount -t fuse.strata and an fstab line use the helper', async (t) => {
  const link = '/sbin/mount.fuse.strata';
  let existing: string | null = null;
  try {
    existing = fs.readlinkSync(link);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') existing = '(a file)';
  }
  if (existing !== null && existing !== MOUNT_HELPER) {
    t.log(`${link} already exists (${existing}); running the helper directly instead`);
  }
  const viaMount = (process.getuid?.() === 0 && existing === null) || existing === MOUNT_HELPER;
  if (viaMount && existing === null) {
    fs.symlinkSync(MOUNT_HELPER, link);
    t.teardown(() => fs.rmSync(link, { force: true }));
  }
  const store = newStore(t);
  const mnt = newMountpoint(t, [store]);

  const first = viaMount
    ? await runProgram('mount', ['-t', 'fuse.strata', store, mnt])
    : await runProgram(MOUNT_HELPER, [store, mnt, '-o', 'rw,_netdev']);
  t.is(first.code, 0, first.stderr);
  t.true(isMounted(mnt));
  const pid = readPidFile(daemonFiles(store).pid)!;
  await fs.promises.writeFile(path.join(mnt, 'live', 'f'), 'via mount(8)');
  // A plain umount(8), not strata unmount: the daemon notices, flushes and stops on its own.
  const um = await runProgram('umount', [mnt]);
  t.is(um.code, 0, um.stderr);
  await waitFor('the daemon stops after umount', () => !processRunning(pid));
  assertNoDaemonFiles(t, store);
  t.regex(fs.readFileSync(daemonFiles(store).log, 'utf8'), /was unmounted by someone else[\s\S]*stopped \(exit 0\)/);

  if (viaMount) {
    const fstab = path.join(tmpDir(t), 'fstab');
    fs.writeFileSync(fstab, `${store} ${mnt} fuse.strata defaults,_netdev 0 0\n`);
    const second = await runProgram('mount', ['-T', fstab, mnt]);
    t.is(second.code, 0, second.stderr);
  } else {
    const second = await runProgram(MOUNT_HELPER, [store, mnt, '-o', 'defaults,_netdev']);
    t.is(second.code, 0, second.stderr);
  }
  t.is(await fs.promises.readFile(path.join(mnt, 'live', 'f'), 'utf8'), 'via mount(8)', 'the live tree persisted');
  const ro = await runProgram(MOUNT_HELPER, [store, path.join(mnt, 'elsewhere'), '-o', 'ro']);
  t.is(ro.code, 1);
  t.regex(ro.stderr, /read-only mounts are not supported/);
  await strataOk(t, ['unmount', mnt]);
  t.false(isMounted(mnt));
});

test.after.always('nothing is left mounted', () => {
  const left = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => / fuse\.strata /.test(l) && /strata-(mnt|fuse)-/.test(l));
  if (left.length) throw new Error(`left mounted:\n${left.join('\n')}`);
});
