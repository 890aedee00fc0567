import assert from 'node:assert';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'ava';
import fc from 'fast-check';
import * as xattr from 'fs-xattr';
import { decodeTree, encodeTree } from '../src/cas/tree-codec.js';
import { isStrataError } from '../src/errors.js';
import { importHostPath } from '../src/host/import-tree.js';
import { lookupPath, restoreToHost, utimeArg } from '../src/host/restore-tree.js';
import { Chunking, type EntryType, type ObjectWriter, type TreeEntry } from '../src/types.js';
import { MemoryObjects } from './helpers/memory-objects.js';
import { buildHostTree, canMknod, isRoot, MiB, NON_UTF8, P, S, setTimes } from './helpers/fixture-tree.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';
import { assertSameTree, snapshotHostTree } from './helpers/tree-compare.js';

test('import then restore reproduces a host tree with all its metadata', (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  const withDevice = canMknod(base);
  buildHostTree(src, { withDevice });
  const before = snapshotHostTree(src);

  const store = new MemoryObjects();
  const progress: Array<{ files: number; bytes: number; path: string }> = [];
  const res = importHostPath(src, { objects: store, trees: store }, { onProgress: (p) => progress.push(p) });
  t.is(res.rootType, 'dir');
  t.is(res.dirCount, 8);
  t.is(res.fileCount, 14);
  t.deepEqual(res.rootEntry.content, res.root);
  t.true(progress.length >= 1);
  t.like(progress.at(-1), { files: res.fileCount, bytes: res.logicalBytes });
  for (const w of store.writes) t.is(w.opts?.chunking, Chunking.Cdc);

  // Times are kept to the nanosecond in the store; the host restore is what loses precision.
  const spaced = lookupPath(store, res.rootEntry, Buffer.from('with space.txt'));
  t.is(spaced.mtimeNs, fs.lstatSync(path.join(src, 'with space.txt'), { bigint: true }).mtimeNs);
  t.is(lookupPath(store, res.rootEntry, 'owned').mtimeNs, -86_400n * 365n * S - 250_000_000n);

  const dst = path.join(base, 'restored');
  const warnings: string[] = [];
  const out = restoreToHost(res.rootEntry, dst, { objects: store, trees: store }, { onWarning: (m) => warnings.push(m) });
  t.deepEqual(warnings, []);
  t.is(out.files, res.fileCount);
  t.is(out.bytes, res.logicalBytes);
  assertSameTree(t, before, snapshotHostTree(dst));

  const sparse = fs.statSync(path.join(dst, 'sparse.img'));
  t.is(sparse.size, 64 * MiB);
  t.true(sparse.blocks * 512 <= 64 * 1024, `restored sparse file allocates ${sparse.blocks * 512} bytes`);
  t.is(fs.statSync(path.join(dst, 'hard-a')).ino, fs.statSync(path.join(dst, 'a/hard-b')).ino);
  if (isRoot) t.is(fs.statSync(path.join(dst, 'owned')).uid, 1234);
});

test('hard links share one link group and are read once', (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'x1'), 'first inode');
  fs.linkSync(path.join(src, 'x1'), path.join(src, 'sub', 'x2'));
  fs.linkSync(path.join(src, 'x1'), path.join(src, 'x3'));
  fs.writeFileSync(path.join(src, 'y1'), 'second inode');
  fs.linkSync(path.join(src, 'y1'), path.join(src, 'y2'));
  fs.writeFileSync(path.join(src, 'z'), 'not linked');
  const store = new MemoryObjects();
  const res = importHostPath(src, { objects: store, trees: store });
  const get = (p: string) => lookupPath(store, res.rootEntry, p);
  // Walk order is depth-first by name: sub/x2 comes before x1.
  t.is(get('sub/x2').linkGroup, 1);
  t.is(get('x1').linkGroup, 1);
  t.is(get('x3').linkGroup, 1);
  t.is(get('y1').linkGroup, 2);
  t.is(get('y2').linkGroup, 2);
  t.is(get('z').linkGroup, undefined);
  t.is(store.writes.length, 3);
  t.is(res.fileCount, 6);
  t.is(res.logicalBytes, 'first inode'.length + 'second inode'.length + 'not linked'.length);
});

test('a second import passes the previous version of each path as predecessor', (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(path.join(src, 'd'), { recursive: true });
  fs.writeFileSync(path.join(src, 'd', 'same'), 'unchanged');
  fs.writeFileSync(path.join(src, 'changed'), 'version 1');
  fs.writeFileSync(path.join(src, 'becomes-dir'), 'a file first');
  const store = new MemoryObjects();
  const first = importHostPath(src, { objects: store, trees: store });
  const old = (p: string) => lookupPath(store, first.rootEntry, p).content;

  fs.writeFileSync(path.join(src, 'changed'), 'version 2');
  fs.writeFileSync(path.join(src, 'added'), 'new file');
  fs.rmSync(path.join(src, 'becomes-dir'));
  fs.mkdirSync(path.join(src, 'becomes-dir'));
  fs.writeFileSync(path.join(src, 'becomes-dir', 'inner'), 'inside');
  const mark = store.writes.length;
  const second = importHostPath(src, {
    objects: store,
    trees: store,
    previous: { trees: store, root: first.root, rootType: 'dir' },
  });
  const writes = store.writes.slice(mark);
  // Unchanged files are read again: size and mtime are no proof of equal content.
  t.is(writes.length, 4);
  const predecessorOf = (p: string) => {
    const root = lookupPath(store, second.rootEntry, p).content!;
    return writes.find((w) => w.root?.equals(root))!.opts?.predecessor ?? null;
  };
  t.deepEqual(predecessorOf('d/same'), old('d/same'));
  t.deepEqual(predecessorOf('changed'), old('changed'));
  t.is(predecessorOf('added'), null);
  t.is(predecessorOf('becomes-dir/inner'), null);
});

test('a single file is imported as one object with fixed chunking and restored sparse', (t) => {
  const base = tmpDir(t);
  const img = path.join(base, 'disk.img');
  const fd = fs.openSync(img, 'w');
  fs.ftruncateSync(fd, 16 * MiB);
  fs.writeSync(fd, pseudoRandomBytes(10_000, 3), 0, 10_000, 5 * MiB + 17);
  fs.closeSync(fd);
  const store = new MemoryObjects();
  const res = importHostPath(img, { objects: store, trees: store });
  t.is(res.rootType, 'file');
  t.is(res.fileCount, 1);
  t.is(res.dirCount, 0);
  t.is(res.logicalBytes, 16 * MiB);
  t.is(store.writes[0]!.opts?.chunking, Chunking.Fixed);
  t.is(store.treeWrites.length, 0);

  const again = importHostPath(img, { objects: store, trees: store, previous: { trees: store, root: res.root, rootType: 'file' } }, { chunking: Chunking.Cdc });
  t.is(store.writes[1]!.opts?.chunking, Chunking.Cdc);
  t.deepEqual(store.writes[1]!.opts?.predecessor, res.root);
  t.deepEqual(again.root, res.root);

  const out = path.join(base, 'out.img');
  restoreToHost(res.rootEntry, out, { objects: store, trees: store });
  t.true(fs.readFileSync(out).equals(fs.readFileSync(img)));
  t.true(fs.statSync(out).blocks * 512 < MiB);
  assertSameTree(t, snapshotHostTree(img), snapshotHostTree(out));

  fs.writeFileSync(path.join(base, 'empty'), '');
  const err = t.throws(() => importHostPath(path.join(base, 'empty'), { objects: store, trees: store }));
  t.true(isStrataError(err, 'EINVAL'), String(err));
});

test('import names the path that vanished during the walk', (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'a-first'), 'x');
  fs.writeFileSync(path.join(src, 'z-gone'), 'y');
  const store = new MemoryObjects();
  // Deletes a sibling the walk has listed but not reached yet, as a concurrent writer would.
  const racing: ObjectWriter = {
    writeObject(source, opts) {
      fs.rmSync(path.join(src, 'z-gone'), { force: true });
      return store.writeObject(source, opts);
    },
  };
  const err = t.throws(() => importHostPath(src, { objects: racing, trees: store }));
  t.true(isStrataError(err, 'ENOENT'), String(err));
  t.regex(err!.message, /z-gone/);

  const missing = t.throws(() => importHostPath(path.join(base, 'nope'), { objects: store, trees: store }));
  t.true(isStrataError(missing, 'ENOENT'));
  t.regex(missing!.message, /nope/);
});

test('sockets are recorded on import and skipped with a warning on restore', async (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'file'), 'data');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(path.join(src, 'sock'), resolve));
  t.teardown(() => server.close());
  const store = new MemoryObjects();
  const res = importHostPath(src, { objects: store, trees: store });
  t.is(lookupPath(store, res.rootEntry, 'sock').type, 'socket');
  const warnings: string[] = [];
  restoreToHost(res.rootEntry, path.join(base, 'dst'), { objects: store, trees: store }, { onWarning: (m) => warnings.push(m) });
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /socket/);
  t.false(fs.existsSync(path.join(base, 'dst', 'sock')));
  t.is(fs.readFileSync(path.join(base, 'dst', 'file'), 'utf8'), 'data');
});

test('restore accepts only a missing path or an empty directory as destination', (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'f'), 'content');
  const store = new MemoryObjects();
  const res = importHostPath(src, { objects: store, trees: store });

  fs.mkdirSync(path.join(base, 'empty'));
  restoreToHost(res.rootEntry, path.join(base, 'empty'), { objects: store, trees: store });
  t.is(fs.readFileSync(path.join(base, 'empty', 'f'), 'utf8'), 'content');

  const again = t.throws(() => restoreToHost(res.rootEntry, path.join(base, 'empty'), { objects: store, trees: store }));
  t.true(isStrataError(again, 'EEXIST'));
  const file = lookupPath(store, res.rootEntry, 'f');
  fs.mkdirSync(path.join(base, 'empty2'));
  const onDir = t.throws(() => restoreToHost(file, path.join(base, 'empty2'), { objects: store, trees: store }));
  t.true(isStrataError(onDir, 'EEXIST'));
  // A Buffer destination whose bytes are not UTF-8.
  const odd = Buffer.concat([Buffer.from(base + '/'), NON_UTF8]);
  restoreToHost(file, odd, { objects: store, trees: store });
  t.is(fs.readFileSync(odd, 'utf8'), 'content');
});

test('lookupPath resolves raw byte paths and reports missing parts and non-directories', (t) => {
  const base = tmpDir(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(path.join(src, 'a', 'b'), { recursive: true });
  fs.writeFileSync(path.join(src, 'a', 'b', 'c'), 'c');
  fs.writeFileSync(Buffer.concat([Buffer.from(src + '/a/'), NON_UTF8]), 'odd');
  const store = new MemoryObjects();
  const { rootEntry } = importHostPath(src, { objects: store, trees: store });
  t.is(lookupPath(store, rootEntry, Buffer.alloc(0)), rootEntry);
  t.is(lookupPath(store, rootEntry, Buffer.from('.')), rootEntry);
  t.is(lookupPath(store, rootEntry, Buffer.from('a/b/c')).type, 'file');
  t.is(lookupPath(store, rootEntry, Buffer.from('/a//b/./')).type, 'dir');
  t.true(lookupPath(store, rootEntry, P('a', NON_UTF8)).name.equals(NON_UTF8));
  const missing = t.throws(() => lookupPath(store, rootEntry, Buffer.from('a/nope/c')));
  t.true(isStrataError(missing, 'ENOENT'));
  t.regex(missing!.message, /a\/nope/);
  const notDir = t.throws(() => lookupPath(store, rootEntry, Buffer.from('a/b/c/d')));
  t.true(isStrataError(notDir, 'ENOTDIR'));
  t.true(isStrataError(t.throws(() => lookupPath(store, rootEntry, Buffer.from('a/../a'))), 'EINVAL'));
});

test('utimeArg lands on the exact microsecond, before and after 1970', (t) => {
  const dir = tmpDir(t);
  const f = path.join(dir, 'f');
  fs.writeFileSync(f, '');
  const samples = [0n, 1n, 999n, 1000n, -1n, -999n, -1000n, -1001n, -1_249_999_500n, 1_700_000_000_999_999_999n];
  let x = 12345n;
  for (let i = 0; i < 300; i++) {
    x = (x * 6364136223846793005n + 1442695040888963407n) % (1n << 63n);
    samples.push((x % (4_000_000_000n * S)) - 1_000_000_000n * S);
  }
  for (const ns of samples) {
    fs.utimesSync(f, utimeArg(ns), utimeArg(ns));
    const st = fs.statSync(f, { bigint: true });
    const want = ns - (((ns % 1000n) + 1000n) % 1000n);
    assert.strictEqual(st.mtimeNs, want, `mtime for ${ns}`);
    assert.strictEqual(st.atimeNs, want, `atime for ${ns}`);
  }
  t.pass();
});

// ---- tree codec -------------------------------------------------------------------------------

const TYPES: EntryType[] = ['file', 'dir', 'symlink', 'fifo', 'chardev', 'blockdev', 'socket'];
const byName = (a: TreeEntry, b: TreeEntry) => Buffer.compare(a.name, b.name);
const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((u) => Buffer.from(u));

const isLegalName = (b: Buffer) =>
  b.length > 0 && b.length <= 255 && !b.includes(0) && !b.includes(0x2f) && !['.', '..'].includes(b.toString('latin1'));

const nameArb = fc
  .oneof(
    // Arbitrary bytes (mostly not UTF-8) with the two forbidden bytes mapped away.
    fc.uint8Array({ minLength: 1, maxLength: 255 }).map((u) => Buffer.from(u.map((c) => (c === 0 || c === 0x2f ? 0x5f : c)))),
    fc.string({ minLength: 1, maxLength: 60, unit: 'binary' }).map((s) => Buffer.from(s)),
    fc.constantFrom(' ', 'a b', 'new\nline', '\t\r\n', '...', '.hidden', 'ünïcødé', 'x'.repeat(255)).map((s) => Buffer.from(s)),
  )
  .filter(isLegalName);

const xattrsArb = fc
  .uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 40 }).map((s) => `user.${s}`), bytes(64)), {
    selector: (x) => x[0],
    maxLength: 5,
  })
  .map((xs) => xs.sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0]))) as Array<[string, Buffer]>);

const entryArb: fc.Arbitrary<TreeEntry> = fc.record(
  {
    name: nameArb,
    type: fc.constantFrom(...TYPES),
    mode: fc.integer({ min: 0, max: 0o7777 }),
    uid: fc.integer({ min: 0, max: 0xffff_ffff }),
    gid: fc.integer({ min: 0, max: 0xffff_ffff }),
    mtimeNs: fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }),
    atimeNs: fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }),
    size: fc.maxSafeNat(),
    content: fc.option(fc.uint8Array({ minLength: 32, maxLength: 32 }).map((u) => Buffer.from(u)), { nil: null }),
    target: bytes(300),
    rdev: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - 1 }),
    xattrs: xattrsArb,
    linkGroup: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - 1 }),
  },
  { requiredKeys: ['name', 'type', 'mode', 'uid', 'gid', 'mtimeNs', 'atimeNs', 'size', 'content'] },
).map((e) => ({ ...e })); // fc.record builds null-prototype objects; decodeTree returns plain ones

const listingArb = fc.uniqueArray(entryArb, { selector: (e) => e.name.toString('latin1'), maxLength: 12 });

test('decodeTree(encodeTree(x)) reproduces x, sorted by name bytes', (t) => {
  fc.assert(
    fc.property(listingArb, (entries) => {
      const encoded = encodeTree(entries);
      assert.deepStrictEqual(decodeTree(encoded), [...entries].sort(byName));
      // Canonical: the order entries are given in does not change the bytes.
      assert.ok(encodeTree([...entries].reverse()).equals(encoded));
    }),
    { numRuns: 300 },
  );
  t.pass();
});

const plain = (name: string | Buffer): TreeEntry => ({
  name: Buffer.from(name),
  type: 'file',
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeNs: 0n,
  atimeNs: 0n,
  size: 0,
  content: null,
});

test('encodeTree rejects illegal and duplicate names', (t) => {
  const bad = ['', '.', '..', 'a/b', '/', 'a\0b', 'x'.repeat(256)];
  for (const name of bad) {
    const err = t.throws(() => encodeTree([plain(name)]), undefined, JSON.stringify(name));
    t.true(isStrataError(err, 'EINVAL'), JSON.stringify(name));
  }
  t.true(isStrataError(t.throws(() => encodeTree([plain('same'), plain('other'), plain('same')])), 'EINVAL'));
  t.true(isStrataError(t.throws(() => encodeTree([{ ...plain('m'), mode: 0o10000 }])), 'EINVAL'));
  t.true(isStrataError(t.throws(() => encodeTree([{ ...plain('c'), content: Buffer.alloc(31) }])), 'EINVAL'));
  t.true(isStrataError(t.throws(() => encodeTree([{ ...plain('t'), mtimeNs: 1n << 63n }])), 'EINVAL'));
  t.notThrows(() => encodeTree([plain('x'.repeat(255)), plain('...'), plain(NON_UTF8), plain('new\nline')]));
});

test('decodeTree throws corrupt on truncated, garbled or absurd input', (t) => {
  const sample = [
    { ...plain('b'), xattrs: [['user.k', Buffer.from('v')]] as Array<[string, Buffer]>, linkGroup: 3, content: Buffer.alloc(32, 7), size: 12 },
    { ...plain('a'), type: 'symlink' as const, target: Buffer.from('b') },
    { ...plain('dev'), type: 'chardev' as const, rdev: 259 },
  ];
  const good = encodeTree(sample);
  t.is(decodeTree(good).length, 3);
  for (let len = 0; len < good.length; len++) {
    const err = t.throws(() => decodeTree(good.subarray(0, len)));
    if (!isStrataError(err, 'ECORRUPT')) t.fail(`prefix of ${len} bytes: ${String(err)}`);
  }
  const expectCorrupt = (buf: Buffer, what: string) => {
    const err = t.throws(() => decodeTree(buf), undefined, what);
    t.true(isStrataError(err, 'ECORRUPT'), `${what}: ${String(err)}`);
  };
  expectCorrupt(Buffer.concat([good, Buffer.from([0])]), 'trailing byte');
  const badVersion = Buffer.from(good);
  badVersion[0] = 9;
  expectCorrupt(badVersion, 'bad version');
  const badType = Buffer.from(good);
  badType[1 + 1 + 1 + 1] = 42; // version, count, name length, name 'a', then the type byte
  expectCorrupt(badType, 'bad type');
  t.regex(String(t.throws(() => decodeTree(badType))), /entry 0 "a" has unknown type code 42/, 'the message names the entry');
  const badMode = encodeTree([plain('a')]);
  badMode[5] = 0x80; // the two-byte varint of mode 0644 made non-minimal
  badMode[6] = 0x00;
  t.regex(String(t.throws(() => decodeTree(badMode))), /non-minimal varint at entry 0 "a" mode/, 'and the field');
  expectCorrupt(Buffer.from([1, 0xff, 0xff, 0xff, 0xff, 0x0f]), 'absurd entry count');
  expectCorrupt(Buffer.from([1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), 'endless varint');
  expectCorrupt(Buffer.from([1, 0x80, 0x00]), 'overlong varint');
  expectCorrupt(encodeTree([plain('a')]).fill(0x2f, 3, 4), "name with '/'");
  const swapped = Buffer.concat([Buffer.from([1, 2]), encodeTree([plain('b')]).subarray(2), encodeTree([plain('a')]).subarray(2)]);
  expectCorrupt(swapped, 'out of order');

  // Random damage: either still a valid listing or a clean corrupt error, never anything else.
  fc.assert(
    fc.property(listingArb, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), (entries, hits) => {
      const buf = Buffer.from(encodeTree(entries));
      for (const [pos, value] of hits) buf[pos % buf.length] = value;
      try {
        decodeTree(buf);
      } catch (e) {
        if (!isStrataError(e, 'ECORRUPT')) throw e;
      }
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (u) => {
      try {
        decodeTree(Buffer.from(u));
      } catch (e) {
        if (!isStrataError(e, 'ECORRUPT')) throw e;
      }
    }),
  );
  t.pass();
});
