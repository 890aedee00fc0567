import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { StrataFs } from '../src/fs/strata-fs.js';
import { retained } from '../src/pools/performance-pool.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

const O_RDWR = 2;
const names = (entries: readonly { name: string }[]) => entries.map((e) => e.name);
const MiB = 1 << 20;

/** Whether this process has `file` open, and with which of them O_DIRECT (from /proc/self/fdinfo). */
function openedAs(file: string): { open: boolean; direct: boolean } {
  let open = false;
  let direct = false;
  for (const n of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${n}`) !== file) continue;
      open = true;
      const flags = parseInt(/^flags:\s*(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${n}`, 'utf8'))?.[1] ?? '0', 8);
      if (flags & fs.constants.O_DIRECT) direct = true;
    } catch { /* closed meanwhile */ }
  }
  return { open, direct };
}

function writeAt(f: StrataFs, p: string, data: Buffer, offset: number, create = false): void {
  const fh = (create ? f.create(p, 0o644, O_RDWR, 0, 0) : f.open(p, O_RDWR)) as number;
  f.write(fh, data, offset);
  f.release(fh);
}

async function readAll(f: StrataFs, p: string): Promise<Buffer> {
  const fh = f.open(p, 0) as number;
  const out = await f.read(fh, 0, (f.getattr(p) as { size: number }).size);
  f.release(fh);
  return out;
}

/** Writes garbage over 8 bytes at `at` of the pool's only native file; collects the process warnings (damage reports) from then on. */
function damageNative(t: ExecutionContext, poolDir: string, at: number): { file: string; warnings: string[] } {
  const file = path.join(poolDir, fs.readdirSync(poolDir)[0]);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, at);
  fs.closeSync(fd);
  const warnings: string[] = [];
  const onWarn = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarn);
  t.teardown(() => process.off('warning', onWarn));
  return { file, warnings };
}

test('retention keeps the latest snapshots of every branch', (t) => {
  const s = (id: string, parent: string | null) => ({ id, parent }) as never;
  const keep = retained([s('a', null), s('b', 'a'), s('c', 'b'), s('d', 'b'), s('e', 'd')], 2);
  t.deepEqual([...keep].sort(), ['b', 'c', 'd', 'e']);
});

test('performance views hold large files natively, update incrementally, and read the same bytes as capacity views', async (t) => {
  const { cas } = createTestStore(t);
  const f = StrataFs.open(cas);
  const img = pseudoRandomBytes(40 * MiB, 3);
  writeAt(f, '/live/disk.img', img, 0, true);
  writeAt(f, '/live/small.txt', Buffer.from('small'), 0, true);
  const s1 = await f.snapshot('s1');
  await f.pool.idle();
  t.deepEqual(names(f.readdir('/pools/performance')), ['s1']);
  t.true((await readAll(f, '/pools/performance/s1/disk.img')).equals(await readAll(f, '/pools/capacity/s1/disk.img')));
  t.true((await readAll(f, '/pools/performance/s1/disk.img')).equals(img));
  t.is((await readAll(f, '/pools/performance/s1/small.txt')).toString(), 'small');

  // Generation 2: one block changes; the pool writes only the changed extents.
  writeAt(f, '/live/disk.img', Buffer.alloc(4096, 7), 20 * MiB);
  img.fill(7, 20 * MiB, 20 * MiB + 4096);
  await f.snapshot('s2');
  const u = await f.pool.schedule((await f.snapshot('s3')).id); // s3: nothing changed
  t.is(u?.bytesWritten, 0);
  const s2files = names(f.readdir('/pools/performance'));
  t.deepEqual(s2files, ['s2', 's3'], 'only the latest two of the branch are kept');
  t.true((await readAll(f, '/pools/performance/s2/disk.img')).equals(img));
  t.is(f.readdir('/pools/capacity').length, 3);
  t.is(fs.readdirSync(f.pool.dir).length, 1, 's2 and s3 share one native file; s1\'s was recycled');
  t.not(s1.id, undefined);

  // A damaged native copy is detected on read and never served.
  const { warnings } = damageNative(t, f.pool.dir, 5 * MiB);
  const fresh = StrataFs.open(cas); // no verified-chunk memory
  t.true((await readAll(fresh, '/pools/performance/s2/disk.img')).equals(img));
  await new Promise((r) => setImmediate(r));
  t.true(warnings.some((w) => w.includes('damaged')), warnings.join('\n'));
  t.false(fresh.pool.holds(cas.objects.readTree(cas.objects.readTree(fresh.cat.get('s2').root)[0].content!).find((e) => e.name.toString() === 'disk.img')!.content!));
});

test('native reads into the caller\'s buffer, in any order, check every chunk once, holes included; damage past what was checked is still caught', async (t) => {
  const { cas } = createTestStore(t);
  const f = StrataFs.open(cas);
  const img = pseudoRandomBytes(40 * MiB, 9);
  img.fill(0, 8 * MiB, 16 * MiB); // stored as holes
  writeAt(f, '/live/disk.img', img, 0, true);
  await f.snapshot('s1');
  await f.pool.idle();
  const p = '/pools/performance/s1/disk.img';
  const fresh = StrataFs.open(cas); // nothing checked yet
  const fh = fresh.open(p, 0) as number;
  const REQ = 128 * 1024;
  // The first half in a scrambled order (as the kernel's concurrent read-ahead sends it).
  const offsets = Array.from({ length: (20 * MiB) / REQ }, (_, i) => i * REQ).sort((a, b) => ((a * 7919) % 97) - ((b * 7919) % 97));
  for (const off of offsets) {
    const into = Buffer.alloc(REQ, 0xee);
    const got = await fresh.read(fh, off, REQ, into);
    t.true(got.equals(img.subarray(off, off + REQ)), `bytes at ${off}`);
    t.is(got.buffer, into.buffer, 'answered in the caller\'s buffer');
  }
  // Damage in the part not read yet: found when read, never served, and the read still answers right.
  t.true(openedAs(path.join(fresh.pool.dir, fs.readdirSync(fresh.pool.dir)[0])).direct, 'read with O_DIRECT');
  const { warnings } = damageNative(t, fresh.pool.dir, 30 * MiB + 12345);
  for (let off = 20 * MiB; off < 40 * MiB; off += REQ) {
    const got = await fresh.read(fh, off, REQ, Buffer.alloc(REQ));
    t.true(got.equals(img.subarray(off, off + REQ)), `bytes at ${off}`);
  }
  fresh.release(fh);
  await new Promise((r) => setImmediate(r));
  t.true(warnings.some((w) => w.includes('damaged')), warnings.join('\n'));
});

test('with directReads off, native reads go through the page cache: same bytes, damage still caught', async (t) => {
  const { cas } = createTestStore(t, { directReads: false });
  const f = StrataFs.open(cas);
  const img = pseudoRandomBytes(36 * MiB, 11);
  writeAt(f, '/live/disk.img', img, 0, true);
  await f.snapshot('s1');
  await f.pool.idle();
  const { file, warnings } = damageNative(t, f.pool.dir, 30 * MiB + 999);
  const fresh = StrataFs.open(cas);
  const fh = fresh.open('/pools/performance/s1/disk.img', 0) as number;
  const REQ = 128 * 1024;
  for (let off = 0; off < img.length; off += REQ) {
    const got = await fresh.read(fh, off, REQ, Buffer.alloc(REQ));
    t.true(got.equals(img.subarray(off, off + REQ)), `bytes at ${off}`);
    // Before the damage is reached (the damaged copy is closed then).
    if (off === 8 * MiB) t.deepEqual(openedAs(file), { open: true, direct: false }, 'read through the page cache');
  }
  fresh.release(fh);
  await new Promise((r) => setImmediate(r));
  t.true(warnings.some((w) => w.includes('damaged')), 'the damage was read from the native copy and caught');
});
