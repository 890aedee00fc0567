import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { containerBlobName } from '../src/cas/container-file.js';
import { LocalBlobStore } from '../src/cas/local-blob-store.js';
import { strata, strataJson, strataSpawn } from './helpers/cli.js';
import { buildHostTree, canMknod } from './helpers/fixture-tree.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';
import { assertSameTree, snapshotHostTree } from './helpers/tree-compare.js';

// End-to-end tests: the real strata command in child processes, on real directories.

function newStore(t: Parameters<typeof tmpDir>[0]): { base: string; store: string } {
  const base = tmpDir(t);
  const store = path.join(base, 'store');
  const r = strata(store, 'init');
  if (r.code !== 0) throw new Error(r.stderr);
  return { base, store };
}

test('import then restore of a real tree is byte- and metadata-identical', (t) => {
  const { base, store } = newStore(t);
  const src = path.join(base, 'src');
  buildHostTree(src, { withDevice: canMknod(base) });
  const before = snapshotHostTree(src);
  const imp = strataJson(store, 'import', src, '--name', 'one');
  t.is(imp.name, 'one');
  t.true(imp.files >= 14);
  const dst = path.join(base, 'out');
  t.is(strata(store, 'restore', 'one', dst).code, 0);
  assertSameTree(t, before, snapshotHostTree(dst));
  // The sparse file stays sparse through the store.
  t.true(fs.statSync(path.join(dst, 'sparse.img')).blocks * 512 <= 64 * 1024);
  // Partial restore and cat of a single file.
  t.is(strata(store, 'restore', 'one:a/b', path.join(base, 'part')).code, 0);
  t.is(fs.readFileSync(path.join(base, 'part/c/deep.txt'), 'utf8'), 'deep content\n');
  t.is(strata(store, 'cat', 'one:a/b/c/deep.txt').stdout, 'deep content\n');
  t.true(strata(store, 'cat', 'one:a/random.bin').stdoutBuf.equals(fs.readFileSync(path.join(src, 'a/random.bin'))));
  const ls = strataJson<{ name: string | { hex: string } }[]>(store, 'ls', 'one');
  t.true(ls.some((e) => typeof e.name === 'object' && e.name.hex === '66fffe'), 'non-UTF-8 name listed as hex');
  t.true(ls.some((e) => e.name === 'new\nline'));
});

test('user errors give one-line messages and non-zero exits, no stack traces', (t) => {
  const { base, store } = newStore(t);
  const cases: [string[], RegExp][] = [
    [['ls', 'nosuch'], /snapshot nosuch not found/],
    [['import', path.join(base, 'does-not-exist')], /does-not-exist/],
    [['bogus'], /unknown command/],
    [['gc', '--threshold', '7'], /threshold/],
  ];
  for (const [args, re] of cases) {
    const r = strata(store, ...args);
    t.not(r.code, 0, args.join(' '));
    t.regex(r.stderr, re);
    t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  }
  const missing = strata(path.join(base, 'nostore'), 'log');
  t.is(missing.code, 1);
  t.regex(missing.stderr, /strata init/);
  fs.writeFileSync(path.join(base, 'f'), 'x');
  strata(store, 'import', path.join(base, 'f'), '--name', 'f1');
  const dup = strata(store, 'import', path.join(base, 'f'), '--name', 'f1');
  t.regex(dup.stderr, /already exists/);
});

test('a second writer is refused while the lock is held by a live process', (t) => {
  const { store } = newStore(t);
  fs.writeFileSync(path.join(store, 'lock'), `${process.pid}\n`); // this test process is alive
  const r = strata(store, 'import', '/etc/hostname');
  t.is(r.code, 1);
  t.regex(r.stderr, new RegExp(`in use by process ${process.pid}`));
  fs.writeFileSync(path.join(store, 'lock'), '999999999\n'); // a dead owner: taken over
  t.is(strata(store, 'import', '/etc/hostname').code, 0);
});

test('diff lists changed paths and the changed byte extents of files', (t) => {
  const { base, store } = newStore(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(path.join(src, 'd/e'), { recursive: true });
  const big = pseudoRandomBytes(4 << 20, 21);
  fs.writeFileSync(path.join(src, 'big.bin'), big);
  fs.writeFileSync(path.join(src, 'same.txt'), 'unchanged');
  fs.writeFileSync(path.join(src, 'gone.txt'), 'bye');
  fs.writeFileSync(path.join(src, 'd/e/mode.txt'), 'mode');
  strata(store, 'import', src, '--name', 'a');
  const big2 = Buffer.from(big);
  big2.write('CHANGED!', 3_000_000);
  fs.writeFileSync(path.join(src, 'big.bin'), big2);
  fs.rmSync(path.join(src, 'gone.txt'));
  fs.writeFileSync(path.join(src, 'd/new.txt'), 'hello');
  fs.chmodSync(path.join(src, 'd/e/mode.txt'), 0o600);
  strata(store, 'import', src, '--name', 'b');
  const changes = strataJson<{ path: string; change: string; extents?: { offset: number; length: number }[] }[]>(store, 'diff', 'a', 'b');
  const byPath = new Map(changes.map((c) => [c.path, c]));
  t.is(byPath.get('gone.txt')?.change, 'removed');
  t.is(byPath.get('d/new.txt')?.change, 'added');
  t.is(byPath.get('d/e/mode.txt')?.change, 'meta');
  t.false(byPath.has('same.txt'));
  const m = byPath.get('big.bin');
  t.is(m?.change, 'modified');
  const ext = m!.extents!;
  t.true(ext.length >= 1 && ext.length <= 2, JSON.stringify(ext));
  t.true(ext[0].offset <= 3_000_000 && ext[ext.length - 1].offset + ext[ext.length - 1].length >= 3_000_008);
  t.true(ext.reduce((s, e) => s + e.length, 0) < 200_000, 'only the chunk(s) around the edit');
  t.deepEqual(strataJson(store, 'diff', 'b', 'b'), []);
});

test('rm re-parents children; gc keeps everything referenced and frees the rest', (t) => {
  const { base, store } = newStore(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'shared.bin'), pseudoRandomBytes(3 << 20, 1));
  fs.writeFileSync(path.join(src, 'v.bin'), pseudoRandomBytes(6 << 20, 2)); // unique to v1
  strata(store, 'import', src, '--name', 'v1');
  fs.writeFileSync(path.join(src, 'v.bin'), pseudoRandomBytes(2 << 20, 3));
  strata(store, 'import', src, '--name', 'v2');
  const v2tree = snapshotHostTree(src);
  fs.writeFileSync(path.join(src, 'v3.bin'), 'three');
  strata(store, 'import', src, '--name', 'v3');
  const log1 = strataJson<{ id: string; name: string; parent: string | null }[]>(store, 'log');
  const id = (n: string) => log1.find((s) => s.name === n)!.id;
  t.is(log1.find((s) => s.name === 'v2')!.parent, id('v1'));

  const before = strataJson(store, 'stats');
  const unique = before.perSnapshot.find((p: { name: string }) => p.name === 'v1').uniqueBytes;
  t.true(unique > 5_000_000, `v1 holds ${unique} unique bytes`);
  const rm = strataJson(store, 'rm', 'v1');
  t.is(rm.freedBytes, unique, 'rm frees exactly what stats predicted');
  const log2 = strataJson<{ name: string; parent: string | null }[]>(store, 'log');
  t.is(log2.find((s) => s.name === 'v2')!.parent, null, 'v2 re-parented to the removed snapshot\'s parent');

  const gc = strataJson(store, 'gc');
  t.true(gc.reclaimedBytes > 5_000_000, `gc reclaimed ${gc.reclaimedBytes}`);
  const after = strataJson(store, 'stats');
  t.true(after.storedBytes < before.storedBytes - 5_000_000);
  t.true(after.deadBytes < 4096, `${after.deadBytes} dead bytes left in containers that stay mostly live`);
  t.true(strataJson(store, 'verify').ok);
  const out = path.join(base, 'out');
  strata(store, 'restore', 'v2', out);
  assertSameTree(t, v2tree, snapshotHostTree(out));
  // Removing a middle snapshot keeps the line: v3's parent becomes v2's parent.
  strata(store, 'rm', 'v2');
  t.is(strataJson<{ name: string; parent: string | null }[]>(store, 'log')[0].parent, null);
  strataJson(store, 'gc');
  t.is(strata(store, 'cat', 'v3:v3.bin').stdout, 'three');
  t.true(strataJson(store, 'verify').ok);
});

/** Total bytes of all containers of a store. */
function containerBytes(store: string): number {
  let n = 0;
  const root = path.join(store, 'containers');
  for (const d of fs.readdirSync(root)) {
    const p = path.join(root, d);
    if (fs.statSync(p).isDirectory()) for (const f of fs.readdirSync(p)) n += fs.statSync(path.join(p, f)).size;
  }
  return n;
}

test('kill -9 of an import leaves a store that verifies, the snapshot absent or complete', async (t) => {
  const { base, store } = newStore(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  let complete = 0;
  let absent = 0;
  for (let trial = 0; trial < 6; trial++) {
    // Fresh data each trial, so every import has real work to be interrupted in.
    for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(src, `f${i}`), pseudoRandomBytes(8 << 20, 1000 * trial + i));
    const expected = snapshotHostTree(src);
    const start = containerBytes(store);
    const child = strataSpawn(store, 'import', src, '--name', `k${trial}`);
    let exitedEarly = false;
    const exited = new Promise((r) => child.on('exit', () => { exitedEarly = true; r(undefined); }));
    // Kill once the import has written a trial-dependent share of its 80 MiB: before and after
    // its first intermediate index commit (every 64 MiB).
    const target = start + (trial + 1) * 12 * (1 << 20);
    while (!exitedEarly && containerBytes(store) < target) await new Promise((r) => setTimeout(r, 2));
    child.kill('SIGKILL');
    await exited;
    const v = strataJson(store, 'verify');
    t.true(v.ok, `trial ${trial}: verify after kill: ${JSON.stringify(v.bad)} ${JSON.stringify(v.missing)}`);
    const names = strataJson<{ name: string }[]>(store, 'log').map((s) => s.name);
    if (names.includes(`k${trial}`)) {
      complete++;
      const out = path.join(base, `out${trial}`);
      t.is(strata(store, 'restore', `k${trial}`, out).code, 0);
      assertSameTree(t, expected, snapshotHostTree(out));
    } else absent++;
  }
  t.log(`${complete} complete, ${absent} absent`);
  t.true(absent >= 3, 'most kills landed inside an import');
  // Leftovers of killed imports are garbage: gc removes them and everything still verifies.
  const gc = strataJson(store, 'gc');
  t.true(absent === 0 || gc.reclaimedBytes > 0, 'gc reclaimed the space of interrupted imports');
  t.true(gc.swept > 0, 'index rows committed by killed imports were swept');
  t.true(strataJson(store, 'verify').ok);
  t.is(strata(store, 'import', src, '--name', 'after').code, 0, 'the store accepts new imports after kills');
});

test('a flipped byte in a container is detected, naming the snapshot and path, never returning wrong bytes', (t) => {
  const { base, store } = newStore(t);
  const src = path.join(base, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'victim.bin'), pseudoRandomBytes(1 << 20, 77));
  fs.writeFileSync(path.join(src, 'bystander.txt'), 'fine');
  strata(store, 'import', src, '--name', 's');
  // The largest data chunk is one of victim.bin's (the other file is 4 bytes).
  const db = new Database(path.join(store, 'index.db'), { readonly: true });
  const loc = db.prepare('SELECT container, offset FROM chunks WHERE kind = 0 ORDER BY stored DESC LIMIT 1').get() as { container: number; offset: number };
  db.close();
  const blobs = new LocalBlobStore(path.join(store, 'containers'));
  const file = blobs.pathOf(containerBlobName(loc.container));
  blobs.close();
  const fd = fs.openSync(file, 'r+');
  const one = Buffer.alloc(1);
  fs.readSync(fd, one, 0, 1, loc.offset + 100);
  one[0] ^= 0x40;
  fs.writeSync(fd, one, 0, 1, loc.offset + 100);
  fs.closeSync(fd);

  const cat = strata(store, 'cat', 's:victim.bin');
  t.is(cat.code, 1);
  t.regex(cat.stderr, /hash mismatch|corrupt|decompress/i);
  t.is(cat.stdoutBuf.length, 0, 'no wrong bytes were written');
  t.is(strata(store, 'cat', 's:bystander.txt').stdout, 'fine');
  const v = strata(store, 'verify');
  t.is(v.code, 3);
  t.regex(v.stdout, /DAMAGED/);
  t.regex(v.stdout, /affected snapshot .* \(s\)/);
  t.regex(v.stdout, /\/victim\.bin/);
  t.notRegex(v.stdout, /bystander/);
  const sample = strata(store, 'verify', '--sample', '100', '--json');
  t.is(sample.code, 3);
  t.false(JSON.parse(sample.stdout).ok);
});

test('an index rebuilt from containers alone answers the same', (t) => {
  const { base, store } = newStore(t);
  const src = path.join(base, 'src');
  buildHostTree(src);
  strata(store, 'import', src, '--name', 'r1');
  fs.writeFileSync(path.join(src, 'a/random.bin'), pseudoRandomBytes(500_000, 8));
  strata(store, 'import', src, '--name', 'r2');
  fs.writeFileSync(path.join(src, 'more.txt'), 'more');
  strata(store, 'import', src, '--name', 'r3');
  strata(store, 'rm', 'r2'); // re-parents r3, writes a tombstone
  const ask = () => ({
    log: strataJson(store, 'log'),
    ls: strataJson(store, 'ls', 'r3:a'),
    diff: strataJson(store, 'diff', 'r1', 'r3'),
    cat: strata(store, 'cat', 'r3:a/random.bin').stdoutBuf.toString('hex'),
  });
  const before = ask();
  const rb = strataJson(store, 'index', 'rebuild');
  t.is(rb.snapshots, 2);
  t.deepEqual(ask(), before);
  t.true(strataJson(store, 'verify').ok);
  // Reference counts came back right: removing r1 frees its unique data and r3 stays whole.
  strata(store, 'rm', 'r1');
  strataJson(store, 'gc');
  t.true(strataJson(store, 'verify').ok);
  t.is(strata(store, 'cat', 'r3:more.txt').stdout, 'more');
});
