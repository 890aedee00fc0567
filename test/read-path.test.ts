import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { containerBlobName } from '../src/cas/container-file.js';
import { LocalBlobStore } from '../src/cas/local-blob-store.js';
import { mountStore, sh } from './helpers/mounted-store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

// Listings and reads through a real mount: readdir carries each entry's type (d_type), so find
// and ls need no stat per name; views read with prefetch and still verify every chunk.

/** d_type values of <dirent.h>. */
const DT = { dir: 4, file: 8, symlink: 10 } as const;

/**
 * Each entry of `dir` as readdir(3) returns it: name -> { type: d_type, ino: d_ino }. Done by
 * libc in a python3 child, because Node fills in unknown types with lstat and would hide a
 * DT_UNKNOWN.
 */
function dirents(dir: string): Map<string, { type: number; ino: number }> {
  const py = [
    'import ctypes, sys',
    'class D(ctypes.Structure):',
    "    _fields_ = [('ino', ctypes.c_uint64), ('off', ctypes.c_int64), ('reclen', ctypes.c_ushort), ('type', ctypes.c_ubyte), ('name', ctypes.c_char * 256)]",
    'libc = ctypes.CDLL(None)',
    'libc.opendir.restype = ctypes.c_void_p',
    'libc.opendir.argtypes = [ctypes.c_char_p]',
    'libc.readdir.restype = ctypes.POINTER(D)',
    'libc.readdir.argtypes = [ctypes.c_void_p]',
    'libc.closedir.argtypes = [ctypes.c_void_p]',
    'd = libc.opendir(sys.argv[1].encode())',
    'assert d, "opendir failed"',
    'while True:',
    '    e = libc.readdir(d)',
    '    if not e: break',
    "    print(e.contents.type, e.contents.ino, e.contents.name.decode('utf-8', 'replace'))",
    'libc.closedir(d)',
  ].join('\n');
  const out = sh(`python3 -c '${py.replace(/'/g, `'\\''`)}' '${dir}'`);
  const m = new Map<string, { type: number; ino: number }>();
  for (const line of out.split('\n').filter(Boolean)) {
    const [type, ino, ...name] = line.split(' ');
    m.set(name.join(' '), { type: Number(type), ino: Number(ino) });
  }
  return m;
}

function checkTypes(t: Parameters<typeof mountStore>[0], dir: string, expected: Record<string, number>): void {
  const got = dirents(dir);
  for (const [name, type] of Object.entries(expected)) {
    const e = got.get(name);
    t.truthy(e, `${dir}: ${name} listed`);
    t.is(e?.type, type, `${dir}/${name}: d_type`);
    t.is(e?.ino, fs.lstatSync(path.join(dir, name)).ino, `${dir}/${name}: d_ino is the inode stat reports`);
  }
}

test.serial('readdir gives every entry its type and inode: live/, views and the synthetic folders', (t) => {
  const m = mountStore(t);
  fs.mkdirSync(path.join(m.live, 'd/sub'), { recursive: true });
  fs.writeFileSync(path.join(m.live, 'd/f'), 'file');
  fs.writeFileSync(path.join(m.live, 'd/sub/g'), 'deeper');
  fs.symlinkSync('f', path.join(m.live, 'd/l'));
  const expected = { f: DT.file, sub: DT.dir, l: DT.symlink };
  checkTypes(t, path.join(m.live, 'd'), expected);
  t.is(m.cli('snapshot', '--name', 's').code, 0);
  const view = path.join(m.mnt, 'pools/capacity/s');
  checkTypes(t, path.join(view, 'd'), expected);
  checkTypes(t, view, { d: DT.dir });
  checkTypes(t, m.mnt, { live: DT.dir, pools: DT.dir, at: DT.dir, tree: DT.dir, 'stats.json': DT.file });
  checkTypes(t, path.join(m.mnt, 'pools/capacity'), { s: DT.dir });
  checkTypes(t, path.join(m.mnt, 'tree/s'), { data: DT.symlink, children: DT.dir });

  for (const root of [m.live, view]) {
    const find = (type: string) => sh(`cd '${root}' && find . -type ${type} | sort`).trim().split('\n');
    t.deepEqual(find('f'), ['./d/f', './d/sub/g'], `find -type f in ${root}`);
    t.deepEqual(find('d'), ['.', './d', './d/sub'], `find -type d in ${root}`);
    t.deepEqual(find('l'), ['./d/l'], `find -type l in ${root}`);
    const ls = sh(`ls -l '${path.join(root, 'd')}'`).split('\n').filter((l) => / (f|l -> f|sub)$/.test(l));
    t.deepEqual(ls.map((l) => l[0]), ['-', 'l', 'd'], `ls -l in ${root}`);
  }
});

/** 40 MiB (over the performance pool's 32 MiB threshold): random, compressible text and a hole, so every codec and a hole are read. */
function imageBytes(): Buffer {
  const img = Buffer.alloc(40 << 20);
  pseudoRandomBytes(12 << 20, 5).copy(img, 0);
  const line = Buffer.from('the quick brown fox jumps over the lazy dog 0123456789\n');
  for (let p = 12 << 20; p < 28 << 20; p += line.length) line.copy(img, p, 0, Math.min(line.length, (28 << 20) - p));
  // 28..36 MiB stays zero (a hole once stored); the tail is random again.
  pseudoRandomBytes(4 << 20, 6).copy(img, 36 << 20);
  return img;
}

/** Random ranges (some crossing chunk edges, some past the end) read with pread in a child process. */
function randomReads(file: string, size: number, seed: number): Array<{ offset: number; length: number; hex: string }> {
  const script = `
    const fs = require('fs'); const [file, size, seed] = process.argv.slice(1);
    let r = Number(seed); const next = () => (r = (r * 1103515245 + 12345) >>> 0);
    const fd = fs.openSync(file, 'r'); const out = [];
    for (let i = 0; i < 60; i++) {
      const offset = next() % (Number(size) + 4096); const length = 1 + next() % (i % 3 === 0 ? 300000 : 5000);
      const b = Buffer.alloc(length); const n = fs.readSync(fd, b, 0, length, offset);
      out.push({ offset, length, hex: b.subarray(0, n).toString('hex') });
    }
    fs.closeSync(fd); process.stdout.write(JSON.stringify(out));`;
  return JSON.parse(sh(`node -e "${script.replace(/"/g, '\\"')}" '${file}' ${size} ${seed}`, { timeout: 120_000 })) as Array<{ offset: number; length: number; hex: string }>;
}

test.serial('large files read the same bytes sequentially and at random from capacity and performance views and live/', (t) => {
  const m = mountStore(t);
  const img = imageBytes();
  fs.mkdirSync(path.join(m.live, 'img'));
  fs.writeFileSync(path.join(m.live, 'img/disk.img'), img);
  t.is(m.cli('snapshot', '--name', 'base').code, 0);
  const perf = path.join(m.mnt, 'pools/performance/base/img/disk.img');
  for (let i = 0; i < 300 && !fs.existsSync(perf); i++) sh('sleep 0.1');
  const files = [path.join(m.mnt, 'pools/capacity/base/img/disk.img'), perf, path.join(m.live, 'img/disk.img')];
  for (const [k, file] of files.entries()) {
    // A separate process reads the whole file with 1 MiB requests, as dd or cp would.
    const whole = path.join(m.base, `whole-${k}`);
    sh(`dd if='${file}' of='${whole}' bs=1M status=none`);
    t.true(fs.readFileSync(whole).equals(img), `sequential read of ${file}`);
    for (const r of randomReads(file, img.length, 17 + k)) {
      const want = img.subarray(Math.min(r.offset, img.length), Math.min(r.offset + r.length, img.length)).toString('hex');
      if (r.hex !== want) {
        t.fail(`${file}: ${r.length} bytes at ${r.offset} differ`);
        return;
      }
    }
  }
  // Handles released mid-read-ahead leave nothing open behind, and the daemon keeps serving.
  sh(`for i in $(seq 20); do head -c 200000 '${files[0]}' > /dev/null; done`);
  // The kernel sends RELEASE after close(2) returns, and stats.json is cached for a second: poll.
  let open = -1;
  for (let i = 0; i < 50 && open !== 0; i++) {
    if (i) sh('sleep 0.2');
    open = (JSON.parse(fs.readFileSync(path.join(m.mnt, 'stats.json'), 'utf8')) as { live: { openFiles: number } }).live.openFiles;
  }
  t.is(open, 0, 'no handle is left open');
  t.true(fs.readFileSync(files[0]).equals(img));
});

test.serial('a flipped byte in a container gives EIO through a view with read-ahead, never wrong bytes', (t) => {
  const m = mountStore(t);
  const data = pseudoRandomBytes(6 << 20, 41);
  fs.writeFileSync(path.join(m.live, 'victim.bin'), data);
  t.is(m.cli('snapshot', '--name', 's').code, 0);
  // Damage a chunk in the middle of the file: the reads before it are served, read-ahead meets it early.
  const db = new Database(path.join(m.store, 'index.db'), { readonly: true });
  const rows = db.prepare('SELECT container, offset, stored FROM chunks WHERE kind = 0 ORDER BY container, offset').all() as { container: number; offset: number; stored: number }[];
  db.close();
  const loc = rows[Math.floor(rows.length / 2)];
  const blobs = new LocalBlobStore(path.join(m.store, 'containers'));
  const file = blobs.pathOf(containerBlobName(loc.container));
  blobs.close();
  const fd = fs.openSync(file, 'r+');
  const one = Buffer.alloc(1);
  fs.readSync(fd, one, 0, 1, loc.offset + 10);
  one[0] ^= 0x40;
  fs.writeSync(fd, one, 0, 1, loc.offset + 10);
  fs.closeSync(fd);

  const out = path.join(m.base, 'out');
  const view = path.join(m.mnt, 'pools/capacity/s/victim.bin');
  const r = spawnSync('dd', [`if=${view}`, `of=${out}`, 'bs=128k', 'status=none'], { encoding: 'utf8' });
  t.not(r.status, 0);
  t.regex(r.stderr, /Input\/output error/);
  const got = fs.readFileSync(out);
  t.true(got.length < data.length, 'the read stopped at the damage');
  t.true(got.equals(data.subarray(0, got.length)), 'every byte returned before the error is right');
  t.regex(fs.readFileSync(path.join(m.store, 'daemon.log'), 'utf8'), /read .*victim\.bin: ECORRUPT/);
});

test.serial('sequential view reads are answered from the read window, with the same bytes, beside random reads on the same handle and a second reader', (t) => {
  const m = mountStore(t);
  const img = imageBytes();
  const other = pseudoRandomBytes(9 << 20, 77);
  fs.writeFileSync(path.join(m.live, 'disk.img'), img);
  fs.writeFileSync(path.join(m.live, 'other.bin'), other);
  t.is(m.cli('snapshot', '--name', 's').code, 0);
  const view = path.join(m.mnt, 'pools/capacity/s');
  const readBoth = () => {
    // Two readers at once, each a dd in its own process with 128 KiB requests.
    sh(`dd if='${view}/disk.img' of='${m.base}/a' bs=128k status=none & dd if='${view}/other.bin' of='${m.base}/b' bs=1M status=none & wait`, { timeout: 120_000 });
    t.true(fs.readFileSync(path.join(m.base, 'a')).equals(img), 'disk.img read back');
    t.true(fs.readFileSync(path.join(m.base, 'b')).equals(other), 'other.bin read back');
  };
  const windowLine = () => {
    const lines = fs.readFileSync(path.join(m.store, 'daemon.log'), 'utf8').split('\n').filter((l) => l.includes('read window: '));
    return lines[lines.length - 1] ?? '';
  };
  const windowReads = () => Number(/read window: (\d+) reads/.exec(windowLine())?.[1] ?? -1);
  readBoth();
  // One handle: 12 MiB read in order (the window fills), then random reads on the same descriptor.
  const script = `
    const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'r'); const parts = [];
    for (let p = 0; p < 12 << 20; p += 131072) { const b = Buffer.alloc(131072); parts.push(b.subarray(0, fs.readSync(fd, b, 0, b.length, p))); }
    let r = 99; const next = () => (r = (r * 1103515245 + 12345) >>> 0); const random = [];
    for (let i = 0; i < 40; i++) { const o = next() % (40 << 20); const b = Buffer.alloc(1 + next() % 200000); random.push([o, b.subarray(0, fs.readSync(fd, b, 0, b.length, o)).toString('hex')]); }
    process.stdout.write(JSON.stringify({ head: Buffer.concat(parts).toString('hex'), random }));`;
  const got = JSON.parse(sh(`node -e "${script.replace(/"/g, '\\"')}" '${view}/disk.img'`, { timeout: 120_000 })) as { head: string; random: Array<[number, string]> };
  t.true(Buffer.from(got.head, 'hex').equals(img.subarray(0, 12 << 20)), 'the sequential part');
  for (const [o, hex] of got.random) t.is(hex, img.subarray(o, o + hex.length / 2).toString('hex'), `random read at ${o}`);
  m.unmount();
  t.true(windowReads() > 100, `reads answered by the binding: ${windowReads()}`);
  // Decoded chunks live in shared memory and are lent to the binding, not copied; every loan came
  // back once the files were closed (their memory is reused only then).
  const last = windowLine();
  t.true(Number(/(\d+) MiB offered without a copy/.exec(last)?.[1]) > 20, last);
  t.regex(last, / 0 loans outstanding/);

  // Without the window every read goes through the namespace, and the bytes are the same.
  process.env.STRATA_READ_WINDOW = 'off';
  try {
    m.remount();
  } finally {
    delete process.env.STRATA_READ_WINDOW;
  }
  readBoth();
  m.unmount();
  t.is(windowReads(), 0);
});
