import test from 'ava';
import { StrataError } from '../src/errors.js';
import { Prefetcher } from '../src/fs/prefetch.js';
import type { LeafFetch, LeafSource, ObjectLeaf } from '../src/types.js';

// The prefetcher against a fake source: which leaves it fetches, when, and what it forgets.

const HOLE = Buffer.alloc(32);

/** An object of `n` leaves of `size` bytes; leaf i's bytes are all (i % 251) + 1, holes where asked. */
function fakeSource(n: number, size: number, opts: { holes?: Set<number>; failing?: Set<number> } = {}) {
  const leaves: ObjectLeaf[] = Array.from({ length: n }, (_, i) => ({
    offset: i * size, length: size, handle: opts.holes?.has(i) ? HOLE : Buffer.alloc(32, i % 251 + 1),
  }));
  const fetched: number[] = [];
  const batches: number[][] = [];
  const waiting: Array<() => void> = [];
  let manual = false;
  const source: LeafSource = {
    leaves: (from, to) => leaves.filter((l) => l.offset < to && l.offset + l.length > from),
    isHole: (l) => l.handle.equals(HOLE),
    fetch: (ls) => {
      batches.push(ls.map((l) => l.offset / size));
      // Like the real source: the batch settles together (one `done`), each leaf with its own outcome.
      const fetches: LeafFetch[] = ls.map(() => ({ done: Promise.resolve() }));
      const fill = () => ls.forEach((l, k) => {
        const i = l.offset / size;
        if (opts.failing?.has(i)) fetches[k].error = new StrataError('ECORRUPT', `leaf ${i}: hash mismatch`);
        else fetches[k].bytes = Buffer.alloc(size, i % 251 + 1);
      });
      for (const l of ls) fetched.push(l.offset / size);
      const done = manual ? new Promise<void>((resolve) => waiting.push(() => { fill(); resolve(); })) : Promise.resolve().then(fill);
      for (const f of fetches) f.done = done;
      return fetches;
    },
  };
  const expected = (from: number, to: number) => {
    const out = Buffer.alloc(to - from);
    for (let p = from; p < to; p++) {
      const i = Math.floor(p / size);
      out[p - from] = opts.holes?.has(i) ? 0 : i % 251 + 1;
    }
    return out;
  };
  return { source, fetched, batches, expected, total: n * size, hold: () => { manual = true; }, release: () => waiting.splice(0).forEach((f) => f()) };
}

test('sequential reads return the right bytes and fetch ahead, in batches, each leaf once', async (t) => {
  const f = fakeSource(64, 1000);
  const p = new Prefetcher(f.source, f.total, { aheadBytes: 8000, slackBytes: 2000, behindBytes: 0 });
  for (let off = 0; off < f.total; off += 700) {
    const got = await p.read(off, 700);
    t.true(got.equals(f.expected(off, Math.min(f.total, off + 700))), `bytes at ${off}`);
  }
  t.deepEqual([...f.fetched].sort((a, b) => a - b), Array.from({ length: 64 }, (_, i) => i), 'every leaf fetched exactly once');
  t.true(f.batches.some((b) => b.length > 1), 'read-ahead asks for several leaves at once');
  t.true(p.windowSize <= 8000 / 1000 + 3, `window stays bounded (${p.windowSize})`);
});

test('sequential reads arriving out of order (the kernel\'s concurrent read-ahead) still fetch each leaf once, ahead, in batches', async (t) => {
  const f = fakeSource(200, 1000);
  const p = new Prefetcher(f.source, f.total, { aheadBytes: 16_000, slackBytes: 4000, behindBytes: 4000 });
  // Requests of 500 bytes in groups of 8 (4000 bytes, the "read-ahead window"), each group shuffled.
  let rng = 7;
  const next = () => (rng = (rng * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let g = 0; g < f.total; g += 4000) {
    const group = Array.from({ length: 8 }, (_, i) => g + i * 500).sort(() => next() - 0.5);
    const got = await Promise.all(group.map((off) => p.read(off, 500)));
    group.forEach((off, i) => t.true(got[i].equals(f.expected(off, off + 500)), `bytes at ${off}`));
  }
  t.deepEqual([...f.fetched].sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i), 'every leaf fetched exactly once');
  t.true(f.batches.filter((b) => b.length > 1).length >= 10, 'fetched ahead in batches');
  t.true(p.windowSize <= (16_000 + 4000) / 1000 + 3, `window stays bounded (${p.windowSize})`);
});

test('a read whose chunks are all in the window answers at once, with no promise; one that must wait gets a promise', async (t) => {
  const f = fakeSource(40, 1000);
  const p = new Prefetcher(f.source, f.total, { aheadBytes: 10_000, slackBytes: 1000, behindBytes: 1000 });
  const first = p.read(0, 1000);
  t.true(first instanceof Promise, 'nothing fetched yet');
  t.true((await first).equals(f.expected(0, 1000)));
  await new Promise((r) => setImmediate(r)); // the read-ahead arrives
  const into = Buffer.alloc(2500, 0xee);
  const next = p.read(1000, 2000, into);
  t.false(next instanceof Promise, 'served from the window');
  t.true((next as Buffer).equals(f.expected(1000, 3000)));
  t.is((next as Buffer).buffer, into.buffer, 'in place');
  t.is(into[2000], 0xee, 'nothing written past the read');
});

test('random reads fetch only what they need and keep no window', async (t) => {
  const f = fakeSource(100, 1000);
  const p = new Prefetcher(f.source, f.total, { aheadBytes: 8000, slackBytes: 0, behindBytes: 0 });
  await p.read(50_500, 10);
  await p.read(10_200, 1500);
  await p.read(90_000, 1000);
  t.true((await p.read(70_999, 2)).equals(f.expected(70_999, 71_001)));
  t.deepEqual(f.fetched, [50, 10, 11, 90, 70, 71]);
  t.true(p.windowSize <= 2);
});

test('holes read as zeros without a fetch; reads are clamped to the size', async (t) => {
  const f = fakeSource(10, 1000, { holes: new Set([2, 3]) });
  const p = new Prefetcher(f.source, 9500, { aheadBytes: 0, slackBytes: 0, behindBytes: 0 });
  t.true((await p.read(1500, 3000)).equals(f.expected(1500, 4500)));
  t.false(f.fetched.includes(2) || f.fetched.includes(3));
  t.is((await p.read(9000, 4096)).length, 500);
  t.is((await p.read(9500, 10)).length, 0);
});

test('a failed leaf fails the read that needs it, not a read before it, and is fetched again next time', async (t) => {
  const f = fakeSource(20, 1000, { failing: new Set([5]) });
  const p = new Prefetcher(f.source, f.total, { aheadBytes: 10_000, slackBytes: 1000, behindBytes: 0 });
  t.true((await p.read(0, 4000)).equals(f.expected(0, 4000)), 'leaf 5 was prefetched and failed; this read does not need it');
  const e = await t.throwsAsync(Promise.resolve(p.read(4000, 2000)));
  t.is((e as StrataError).code, 'ECORRUPT');
  const before = f.fetched.filter((i) => i === 5).length;
  await t.throwsAsync(Promise.resolve(p.read(5000, 10)));
  t.is(f.fetched.filter((i) => i === 5).length, before + 1, 'retried, not served from a remembered failure');
});

test('close forgets the window; fetches in flight finish and leave nothing behind', async (t) => {
  const f = fakeSource(50, 1000);
  f.hold();
  const p = new Prefetcher(f.source, f.total, { aheadBytes: 20_000, slackBytes: 1000, behindBytes: 0 });
  const first = p.read(0, 1000);
  t.true(p.pending > 10, 'read-ahead in flight');
  p.close();
  t.is(p.windowSize, 0);
  f.release();
  await Promise.resolve(first).catch(() => undefined);
  await new Promise((r) => setImmediate(r));
  t.is(p.pending, 0);
  t.is(p.windowSize, 0);
  await t.throwsAsync(Promise.resolve(p.read(0, 10)));
});

test('recycled chunk memory: every fetch is released exactly once per holder, never while a read still copies it', async (t) => {
  const size = 1000;
  const n = 120;
  const leaves: ObjectLeaf[] = Array.from({ length: n }, (_, i) => ({ offset: i * size, length: size, handle: Buffer.alloc(32, i % 251 + 1) }));
  const all: Array<{ holders: number; f: LeafFetch }> = [];
  const source: LeafSource = {
    leaves: (from, to) => leaves.filter((l) => l.offset < to && l.offset + l.length > from),
    isHole: () => false,
    fetch: (ls) => {
      // Settles a little later (a macrotask), so reads and the window's forgetting interleave with it.
      const done = new Promise<void>((resolve) => setImmediate(resolve));
      return ls.map((l) => {
        const rec = { holders: 1, f: { done } as LeafFetch };
        const bytes = Buffer.alloc(size, (l.offset / size) % 251 + 1);
        rec.f.done = done.then(() => { rec.f.bytes = bytes; });
        rec.f.hold = () => { rec.holders++; };
        rec.f.release = () => {
          rec.holders--;
          if (rec.holders < 0) t.fail('released more often than held');
          if (rec.holders === 0) bytes.fill(0xee); // "reused": a read still copying would see this
        };
        all.push(rec);
        return rec.f;
      });
    },
  };
  const expected = (from: number, to: number) => Buffer.from(Array.from({ length: to - from }, (_, k) => Math.floor((from + k) / size) % 251 + 1));
  const p = new Prefetcher(source, n * size, { aheadBytes: 10_000, slackBytes: 3000, behindBytes: 2000 });
  // Sequential groups read concurrently and out of order, then random reads, then close with reads in flight.
  for (let g = 0; g < 60_000; g += 3000) {
    const offs = [g + 2000, g, g + 1000, g + 2500, g + 500, g + 1500];
    const got = await Promise.all(offs.map((o) => p.read(o, 500, Buffer.alloc(500))));
    offs.forEach((o, i) => t.true(got[i].equals(expected(o, o + 500)), `bytes at ${o}`));
  }
  for (const o of [90_100, 5_300, 70_000, 70_700]) t.true((await p.read(o, 900)).equals(expected(o, o + 900)), `random read at ${o}`);
  const late = p.read(100_000, 3000);
  p.close();
  t.true((await late).equals(expected(100_000, 103_000)), 'a read in flight at close still answers right');
  await new Promise((r) => setImmediate(r));
  t.deepEqual(all.filter((r) => r.holders !== 0).length, 0, 'everything released once the reader is closed');
});
