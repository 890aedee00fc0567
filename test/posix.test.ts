import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import * as xattr from 'fs-xattr';
import { mountStore, sh } from './helpers/mounted-store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

// POSIX semantics of the live tree through a real FUSE mount, driven from this (other) process.
// One mount serves the whole file; each test works in its own directory.

const errno = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
  return 'ok';
};

function setup(t: Parameters<typeof mountStore>[0]) {
  const m = mountStore(t);
  return { m, d: m.live };
}

test.serial('create, read, write at any offset (holes read as zeros), truncate both ways', (t) => {
  const { d } = setup(t);
  const f = path.join(d, 'f');
  fs.writeFileSync(f, 'hello world');
  t.is(fs.readFileSync(f, 'utf8'), 'hello world');
  const fd = fs.openSync(f, 'r+');
  fs.writeSync(fd, Buffer.from('HOLE'), 0, 4, 1_000_000); // extends, leaving a hole
  fs.writeSync(fd, Buffer.from('W'), 0, 1, 6);
  fs.closeSync(fd);
  const b = fs.readFileSync(f);
  t.is(b.length, 1_000_004);
  t.is(b.subarray(0, 11).toString(), 'hello World');
  t.true(b.subarray(11, 1_000_000).equals(Buffer.alloc(1_000_000 - 11)));
  t.is(b.subarray(1_000_000).toString(), 'HOLE');
  fs.truncateSync(f, 5);
  t.is(fs.readFileSync(f, 'utf8'), 'hello');
  fs.truncateSync(f, 10);
  t.true(fs.readFileSync(f).equals(Buffer.concat([Buffer.from('hello'), Buffer.alloc(5)])));
  // A larger file, written in pieces and read back.
  const big = pseudoRandomBytes(20 << 20, 5);
  fs.writeFileSync(path.join(d, 'big'), big);
  t.true(fs.readFileSync(path.join(d, 'big')).equals(big));
});

test.serial('unlink, including a file still open; rename over entries and across directories', (t) => {
  const { d } = setup(t);
  fs.writeFileSync(path.join(d, 'open'), 'still here');
  const fd = fs.openSync(path.join(d, 'open'), 'r');
  fs.unlinkSync(path.join(d, 'open'));
  t.false(fs.existsSync(path.join(d, 'open')));
  const buf = Buffer.alloc(10);
  fs.readSync(fd, buf, 0, 10, 0);
  t.is(buf.toString(), 'still here');
  fs.closeSync(fd);

  fs.mkdirSync(path.join(d, 'a'));
  fs.mkdirSync(path.join(d, 'b'));
  fs.writeFileSync(path.join(d, 'a/x'), 'x');
  fs.writeFileSync(path.join(d, 'b/y'), 'y');
  fs.renameSync(path.join(d, 'a/x'), path.join(d, 'b/y')); // over an existing file, across directories
  t.is(fs.readFileSync(path.join(d, 'b/y'), 'utf8'), 'x');
  t.deepEqual(fs.readdirSync(path.join(d, 'a')), []);
  fs.mkdirSync(path.join(d, 'c'));
  fs.writeFileSync(path.join(d, 'c/z'), 'z');
  t.is(errno(() => fs.renameSync(path.join(d, 'a'), path.join(d, 'c'))), 'ENOTEMPTY');
  fs.renameSync(path.join(d, 'c'), path.join(d, 'a')); // over an empty directory
  t.is(fs.readFileSync(path.join(d, 'a/z'), 'utf8'), 'z');
  t.is(errno(() => fs.renameSync(path.join(d, 'a'), path.join(d, 'a/inside'))), 'EINVAL');
});

test.serial('mkdir, rmdir, symlink, readlink, hard links, chmod, chown, utimens, statfs', (t) => {
  const { d } = setup(t);
  fs.mkdirSync(path.join(d, 'dir'));
  fs.writeFileSync(path.join(d, 'dir/f'), 'content');
  t.is(errno(() => fs.rmdirSync(path.join(d, 'dir'))), 'ENOTEMPTY');
  fs.symlinkSync('dir/f', path.join(d, 'link'));
  t.is(fs.readlinkSync(path.join(d, 'link')), 'dir/f');
  t.is(fs.readFileSync(path.join(d, 'link'), 'utf8'), 'content');
  fs.linkSync(path.join(d, 'dir/f'), path.join(d, 'hard'));
  t.is(fs.statSync(path.join(d, 'hard')).nlink, 2);
  t.is(fs.readFileSync(path.join(d, 'hard'), 'utf8'), 'content');
  fs.unlinkSync(path.join(d, 'dir/f'));
  t.is(fs.readFileSync(path.join(d, 'hard'), 'utf8'), 'content');
  t.is(fs.statSync(path.join(d, 'hard')).nlink, 1);
  fs.rmdirSync(path.join(d, 'dir'));
  fs.chmodSync(path.join(d, 'hard'), 0o640);
  t.is(fs.statSync(path.join(d, 'hard')).mode & 0o7777, 0o640);
  fs.chownSync(path.join(d, 'hard'), 1234, 5678);
  t.like(fs.statSync(path.join(d, 'hard')), { uid: 1234, gid: 5678 });
  fs.utimesSync(path.join(d, 'hard'), new Date('2001-02-03T04:05:06Z'), new Date('2002-03-04T05:06:07Z'));
  t.is(fs.statSync(path.join(d, 'hard')).mtime.toISOString(), '2002-03-04T05:06:07.000Z');
  const df = fs.statfsSync(d);
  t.true(df.blocks > 0 && df.bsize > 0);
});

test.serial('error codes: ENOENT EEXIST ENOTEMPTY EISDIR ENOTDIR ENAMETOOLONG, and EROFS on views', (t) => {
  const { m, d } = setup(t);
  t.is(errno(() => fs.readFileSync(path.join(d, 'missing'))), 'ENOENT');
  fs.mkdirSync(path.join(d, 'x'));
  t.is(errno(() => fs.mkdirSync(path.join(d, 'x'))), 'EEXIST');
  fs.writeFileSync(path.join(d, 'x/f'), '');
  t.is(errno(() => fs.rmdirSync(path.join(d, 'x'))), 'ENOTEMPTY');
  t.is(errno(() => fs.writeFileSync(path.join(d, 'x'), 'no')), 'EISDIR');
  t.is(errno(() => fs.unlinkSync(path.join(d, 'x'))), 'EISDIR');
  t.is(errno(() => fs.writeFileSync(path.join(d, 'x/f/g'), '')), 'ENOTDIR');
  t.is(errno(() => fs.writeFileSync(path.join(d, 'n'.repeat(256)), '')), 'ENAMETOOLONG');
  t.is(errno(() => fs.openSync(path.join(d, 'x/f'), 'wx')), 'EEXIST');
  t.is(m.cli('snapshot', '--name', 'v').code, 0);
  const view = path.join(m.mnt, 'pools/capacity/v');
  t.is(errno(() => fs.writeFileSync(path.join(view, 'new'), 'x')), 'EROFS');
  t.is(errno(() => fs.writeFileSync(path.join(view, 'x/f'), 'x')), 'EROFS');
  t.is(errno(() => fs.unlinkSync(path.join(view, 'x/f'))), 'EROFS');
  t.is(errno(() => fs.mkdirSync(path.join(view, 'y'))), 'EROFS');
  t.is(errno(() => fs.renameSync(path.join(view, 'x'), path.join(view, 'z'))), 'EROFS');
});

test.serial('extended attributes, O_APPEND, fsync, shared mmap reads and writes', (t) => {
  const { d } = setup(t);
  const f = path.join(d, 'f');
  fs.writeFileSync(f, 'abc');
  xattr.setAttributeSync(f, 'user.note', 'hello');
  t.is(xattr.getAttributeSync(f, 'user.note').toString(), 'hello');
  t.deepEqual(xattr.listAttributesSync(f), ['user.note']);
  xattr.removeAttributeSync(f, 'user.note');
  t.deepEqual(xattr.listAttributesSync(f), []);
  t.is(errno(() => xattr.getAttributeSync(f, 'user.none')), 'ENODATA');

  const a = fs.openSync(path.join(d, 'log'), 'a');
  fs.writeSync(a, 'one\n');
  fs.writeSync(a, 'two\n');
  fs.fsyncSync(a);
  fs.closeSync(a);
  const a2 = fs.openSync(path.join(d, 'log'), 'a');
  fs.writeSync(a2, 'three\n');
  fs.closeSync(a2);
  t.is(fs.readFileSync(path.join(d, 'log'), 'utf8'), 'one\ntwo\nthree\n');

  fs.writeFileSync(path.join(d, 'm'), Buffer.alloc(8192, 0x61));
  const py = [
    'import mmap, sys',
    `f = open(${JSON.stringify(path.join(d, 'm'))}, 'r+b')`,
    'mm = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED)',
    'assert mm[0:4] == b"aaaa", mm[0:4]',
    'mm[100:105] = b"MMAP!"',
    'mm.flush(); mm.close(); f.close()',
  ].join('\n');
  const r = spawnSync('python3', ['-c', py], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(fs.readFileSync(path.join(d, 'm')).subarray(100, 105).toString(), 'MMAP!');
});

test.serial('files over 4 GiB (sparse) keep their size and content at the far end', (t) => {
  const { d } = setup(t);
  const f = path.join(d, 'huge');
  const fd = fs.openSync(f, 'w');
  const off = 5 * 1024 ** 3 + 12345;
  fs.writeSync(fd, Buffer.from('far away'), 0, 8, off);
  fs.closeSync(fd);
  t.is(fs.statSync(f).size, off + 8);
  const b = Buffer.alloc(16);
  const r = fs.openSync(f, 'r');
  fs.readSync(r, b, 0, 16, off - 8);
  fs.closeSync(r);
  t.true(b.equals(Buffer.concat([Buffer.alloc(8), Buffer.from('far away')])));
});

test.serial('a directory with 100k entries', (t) => {
  const { d } = setup(t);
  const dir = path.join(d, 'many');
  fs.mkdirSync(dir);
  // Created by a shell tool in one process: the kernel sends create/release per file.
  sh(`cd ${dir} && seq -f 'entry-%06g' 1 100000 | xargs touch`, { timeout: 600_000 });
  const names = fs.readdirSync(dir);
  t.is(names.length, 100000);
  t.true(fs.existsSync(path.join(dir, 'entry-054321')));
  t.is(fs.statSync(path.join(dir, 'entry-100000')).size, 0);
});
