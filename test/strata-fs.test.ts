import test from 'ava';
import { CasStore } from '../src/cas/store.js';
import { isStrataError } from '../src/errors.js';
import { StrataFs } from '../src/fs/strata-fs.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

// The namespace in-process (no kernel): routing, live-tree semantics, snapshots and branches.
// The same behaviour through a real mount is tested in mount.test.ts.

const O_RDWR = 2;
const names = (entries: readonly { name: string }[]) => entries.map((e) => e.name);
const code = (fn: () => unknown) => {
  try { fn(); } catch (e) { if (isStrataError(e)) return e.code; throw e; }
  return 'ok';
};

function writeFile(f: StrataFs, path: string, data: Buffer): void {
  const fh = f.create(path, 0o644, O_RDWR, 0, 0) as number;
  f.write(fh, data, 0);
  f.release(fh);
}

async function readFile(f: StrataFs, path: string): Promise<Buffer> {
  const fh = f.open(path, 0) as number;
  const size = (f.getattr(path) as { size: number }).size;
  const b = await f.read(fh, 0, size);
  f.release(fh);
  return b;
}

test('live tree basics, snapshot views, and a snapshot that does not change with the live tree', async (t) => {
  const { cas } = createTestStore(t);
  const f = StrataFs.open(cas);
  t.deepEqual(names(f.readdir('/')), ['live', 'pools', 'at', 'tree', 'stats.json']);
  f.mkdir('/live/d', 0o755, 0, 0);
  const data = pseudoRandomBytes(300_000, 4);
  writeFile(f, '/live/d/a.bin', data);
  t.true((await readFile(f, '/live/d/a.bin')).equals(data));
  t.is(code(() => f.mkdir('/live/d', 0o755, 0, 0)), 'EEXIST');
  t.is(code(() => f.rmdir('/live/d')), 'ENOTEMPTY');
  t.is(code(() => f.getattr('/live/nope')), 'ENOENT');
  const s1 = await f.snapshot('s1');
  t.deepEqual(names(f.readdir('/pools/capacity')), ['s1']);
  t.true((await readFile(f, '/pools/capacity/s1/d/a.bin')).equals(data));
  // Change the live tree: the snapshot stays as it was.
  const fh = f.open('/live/d/a.bin', O_RDWR) as number;
  f.write(fh, Buffer.from('XXXX'), 10);
  f.release(fh);
  f.rename('/live/d/a.bin', '/live/b.bin');
  t.true((await readFile(f, '/pools/capacity/s1/d/a.bin')).equals(data));
  t.is((await readFile(f, '/live/b.bin')).subarray(10, 14).toString(), 'XXXX');
  t.is(code(() => f.create('/pools/capacity/s1/new', 0o644, O_RDWR, 0, 0)), 'EROFS');
  t.is(code(() => f.unlink('/pools/capacity/s1/d/a.bin')), 'EROFS');
  const s2 = await f.snapshot('s2');
  t.is(s2.parent, s1.id);
  t.is(f.readlink('/tree/s2/parent'), '../s1');
  t.deepEqual(names(f.readdir('/tree/s1/children')), ['s2']);
  t.deepEqual(names(f.readdir('/pools/capacity/s2')), ['b.bin', 'd']);
  t.is(s2.fileCount, 1);
  t.is(s2.logicalBytes, data.length);
  // at/: the latest snapshot at or before a time.
  t.deepEqual(names(f.readdir(`/at/${new Date(s2.createdMs + 1).toISOString()}`)), ['b.bin', 'd']);
  // A view's listing cannot change: it is answered from cache (the same array, attributes included).
  t.is(f.readdir('/pools/capacity/s2'), f.readdir('/pools/capacity/s2'));
  t.deepEqual(f.readdir(`/at/${new Date(s2.createdMs + 1).toISOString()}`), f.readdir('/pools/capacity/s2'));
  t.not(f.readdir('/live'), f.readdir('/live'), 'live/ is listed afresh');
  t.is(code(() => f.readdir('/at/1999-01-01T00:00:00Z')), 'ENOENT');
  const stats = JSON.parse((await readFile(f, '/stats.json')).toString());
  t.is(stats.snapshots, 2);
  t.true(stats.dedupRatio > 0);
});

test('branch restarts the live tree from an older snapshot; the old line stays', async (t) => {
  const { cas } = createTestStore(t);
  const f = StrataFs.open(cas);
  writeFile(f, '/live/v', Buffer.from('one'));
  const s1 = await f.snapshot('s1');
  const fh = f.open('/live/v', O_RDWR) as number;
  f.ftruncate(fh, 0);
  f.write(fh, Buffer.from('two'), 0);
  f.release(fh);
  await f.snapshot('s2');
  await f.branch('s1');
  t.is((await readFile(f, '/live/v')).toString(), 'one');
  writeFile(f, '/live/w', Buffer.from('branch'));
  const s3 = await f.snapshot('s3');
  t.is(s3.parent, s1.id);
  t.deepEqual(names(f.readdir('/tree/s1/children')).sort(), ['s2', 's3']);
  t.is((await readFile(f, '/pools/capacity/s2/v')).toString(), 'two');
});

test('the live tree survives closing and reopening the store; removing snapshots frees nothing it shows', async (t) => {
  const { cas, dir } = createTestStore(t);
  let f = StrataFs.open(cas);
  const data = pseudoRandomBytes(1 << 20, 9);
  f.mkdir('/live/x', 0o700, 0, 0);
  writeFile(f, '/live/x/f', data);
  f.symlink('x/f', '/live/l', 0, 0);
  f.link('/live/x/f', '/live/hard');
  await f.snapshot('keep');
  await f.close();
  cas.close();
  const cas2 = CasStore.open(dir, { write: true });
  t.teardown(() => cas2.close());
  f = StrataFs.open(cas2);
  t.true((await readFile(f, '/live/x/f')).equals(data));
  t.is(f.readlink('/live/l'), 'x/f');
  t.is((f.getattr('/live/hard') as { nlink: number }).nlink, 2);
  t.is((f.getattr('/live/x') as { mode: number }).mode & 0o777, 0o700);
  new (await import('../src/temporal/catalogue.js')).Catalogue(cas2).remove('keep');
  t.true((await readFile(f, '/live/x/f')).equals(data));
});

test('an index rebuilt from containers keeps the live tree and its head', async (t) => {
  const { cas, dir } = createTestStore(t);
  const f = StrataFs.open(cas);
  writeFile(f, '/live/a', Buffer.from('kept'));
  const s = await f.snapshot('s');
  writeFile(f, '/live/b', pseudoRandomBytes(100_000, 1));
  await f.close();
  cas.close();
  const { rebuildIndex } = await import('../src/cas/rebuild.js');
  const r = rebuildIndex(dir, () => CasStore.open(dir, { write: true }));
  t.deepEqual(r.problems, []);
  const cas2 = CasStore.open(dir, { write: true });
  t.teardown(() => cas2.close());
  const g = StrataFs.open(cas2);
  t.is((await readFile(g, '/live/a')).toString(), 'kept');
  t.true((await readFile(g, '/live/b')).equals(pseudoRandomBytes(100_000, 1)));
  t.is(g.head, s.id);
  t.is((await g.snapshot('after')).parent, s.id);
});

test('a time set while the file is being flushed in the background wins over its writes\' time (cp -p, rsync -t)', async (t) => {
  const { cas } = createTestStore(t);
  const f = StrataFs.open(cas);
  const past = Date.UTC(2020, 0, 2, 3, 4, 5, 678);
  for (const [i, when] of (['before', 'during'] as const).entries()) {
    const path = `/live/${when}.bin`;
    const fh = f.create(path, 0o644, O_RDWR, 0, 0) as number;
    f.write(fh, pseudoRandomBytes(1_000_000, 10 + i), 0);
    if (when === 'before') f.utimens(path, past, past);
    f.release(fh); // the flusher takes the file's writes at once, then yields
    if (when === 'during') f.utimens(path, past, past);
    await f.flushAll(false);
    t.is((f.getattr(path) as { mtimeMs: number }).mtimeMs, past, `time set ${when} the flush`);
  }
  // A write after the time was set is a newer change: its time counts again.
  const fh = f.open('/live/during.bin', O_RDWR) as number;
  f.write(fh, Buffer.from('later'), 0);
  f.release(fh);
  await f.flushAll(false);
  t.true((f.getattr('/live/during.bin') as { mtimeMs: number }).mtimeMs > past);
  await f.close();
});
