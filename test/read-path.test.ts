import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { mountStore, sh } from './helpers/mounted-store.js';

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
