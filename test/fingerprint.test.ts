import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import {
  computeFingerprint, coverageOf, FingerprintLedger, fingerprintParams, SAMPLE_ALIGN, SAMPLE_SIZE, sampledRanges,
  type FingerprintParams,
} from '../src/cas/fingerprint.js';
import { hashBytes } from '../src/cas/hash.js';
import { isStrataError } from '../src/errors.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 1 << 30;
const TiB = 2 ** 40;

const ROOT = hashBytes(Buffer.from('some object'));

// Content of any size without a buffer of that size: a 1 MiB random pattern repeated, with every
// 4 KiB page stamped with its page number so that no two pages of the object are alike.
const PATTERN = pseudoRandomBytes(MiB + 64 * KiB, 11);
function syntheticByte(i: number): number {
  const page = Math.floor(i / 4096);
  const inPage = i % 4096;
  if (inPage < 4) return (page >>> (8 * inPage)) & 0xff;
  return PATTERN[i % MiB];
}

interface Reader {
  read: (offset: number, length: number) => Buffer;
  bytesRead: number;
  calls: { offset: number; length: number }[];
}

/** A reader over synthetic content of `size` bytes, with the bytes at `flips` inverted; counts what it reads. */
function syntheticReader(size: number, flips: number[] = []): Reader {
  const r: Reader = {
    bytesRead: 0,
    calls: [],
    read(offset, length) {
      if (offset < 0 || offset + length > size) throw new Error(`read beyond the object: ${offset}+${length}`);
      r.bytesRead += length;
      r.calls.push({ offset, length });
      const out = Buffer.allocUnsafe(length);
      // Copy the pattern piecewise (PATTERN has 64 KiB of slack past 1 MiB), then stamp page numbers.
      for (let done = 0; done < length;) {
        const at = (offset + done) % MiB;
        const n = Math.min(length - done, PATTERN.length - at);
        PATTERN.copy(out, done, at, at + n);
        done += n;
      }
      for (let p = Math.ceil(offset / 4096) * 4096; p < offset + length; p += 4096) {
        for (let k = 0; k < 4 && p + k < offset + length; k++) out[p + k - offset] = syntheticByte(p + k);
      }
      for (const f of flips) if (f >= offset && f < offset + length) out[f - offset] ^= 0xff;
      return out;
    },
  };
  return r;
}

const bufferReader = (b: Buffer) => (offset: number, length: number) => b.subarray(offset, offset + length);

const inRanges = (pos: number, ranges: { offset: number; length: number }[]) =>
  ranges.some((r) => pos >= r.offset && pos < r.offset + r.length);

/** The exact size of the union of the sampled ranges of `generations`, by merging them all. */
function bruteForceCovered(root: Buffer, size: number, generations: number[]): number {
  const all = generations.flatMap((g) => sampledRanges(size, fingerprintParams(root, size, g)));
  all.sort((a, b) => a.offset - b.offset);
  let covered = 0;
  let end = 0;
  for (const r of all) {
    const from = Math.max(r.offset, end);
    const to = r.offset + r.length;
    if (to > from) covered += to - from;
    end = Math.max(end, to);
  }
  return covered;
}

test('the synthetic reader is consistent with itself', (t) => {
  const r = syntheticReader(8 * MiB);
  const whole = r.read(MiB - 10_000, 80_000);
  t.true(whole.subarray(5000, 9000).equals(r.read(MiB - 5000, 4000)));
  t.is(whole[10_000 + 4096 * 0], syntheticByte(MiB));
  t.not(r.read(0, 4096).compare(r.read(MiB, 4096)), 0, 'repeats of the pattern differ by their page stamps');
});

test('the same object has the same fingerprint in two stores and as a plain buffer', (t) => {
  // Same chunker settings, so the same content gets the same root (and so the same sampling) in both.
  const a = createTestStore(t);
  const b = createTestStore(t);
  // One object sampled sparsely (> 62.5 MiB), one covered whole.
  const large = Buffer.alloc(80 * MiB);
  for (let i = 0; i < 80; i += 7) pseudoRandomBytes(512 * KiB, i + 1).copy(large, i * MiB + 1234);
  const small = pseudoRandomBytes(300 * KiB, 5);
  for (const content of [large, small]) {
    const wa = a.cas.objects.writeObject(content);
    const wb = b.cas.objects.writeObject(content);
    t.true(wa.root !== null && wb.root !== null && wa.root.equals(wb.root));
    const root = wa.root!;
    const size = a.cas.objects.objectSize(root);
    t.is(size, content.length);
    for (const g of [0, 1, 2, 9]) {
      const p = fingerprintParams(root, size, g);
      t.deepEqual(fingerprintParams(root, size, g), p, 'parameters are deterministic');
      const fa = computeFingerprint((o, l) => a.cas.objects.readObject(root, o, l), size, p);
      const fb = computeFingerprint((o, l) => b.cas.objects.readObject(wb.root!, o, l), b.cas.objects.objectSize(wb.root!), p);
      t.is(fa.length, 32);
      t.true(fa.equals(fb), `generation ${g}`);
      t.true(fa.equals(computeFingerprint(bufferReader(content), content.length, p)));
    }
  }
  // A different object, or a different generation, gives a different value.
  const root = hashBytes(small);
  const f0 = computeFingerprint(bufferReader(small), small.length, fingerprintParams(root, small.length, 0));
  const f1 = computeFingerprint(bufferReader(small), small.length, fingerprintParams(root, small.length, 1));
  t.false(f0.equals(f1));
  const other = Buffer.from(small);
  other[1000] ^= 1;
  t.false(f0.equals(computeFingerprint(bufferReader(other), other.length, fingerprintParams(root, small.length, 0))));
});

test('a flipped byte changes the fingerprint if sampled, not otherwise; a later generation catches it', (t) => {
  const size = 256 * MiB + 12_345;
  const clean = syntheticReader(size);
  const p0 = fingerprintParams(ROOT, size, 0);
  const ranges = sampledRanges(size, p0);
  const ref0 = computeFingerprint(clean.read, size, p0);

  const inside = ranges[500].offset + 777;
  t.false(computeFingerprint(syntheticReader(size, [inside]).read, size, p0).equals(ref0));
  const lastByte = ranges.at(-1)!.offset + ranges.at(-1)!.length - 1;
  t.false(computeFingerprint(syntheticReader(size, [lastByte]).read, size, p0).equals(ref0));

  const outside = ranges[500].offset + ranges[500].length + 100; // in the gap before the next sample
  t.false(inRanges(outside, ranges));
  const damaged = syntheticReader(size, [outside]);
  t.true(computeFingerprint(damaged.read, size, p0).equals(ref0), 'damage outside the samples is invisible to this generation');

  // One cycle of generations visits every stripe of every window, so the damage is found within it.
  const stripes = Math.ceil(p0.period / SAMPLE_SIZE);
  let caughtAt = -1;
  for (let g = 1; g < stripes && caughtAt < 0; g++) {
    const p = fingerprintParams(ROOT, size, g);
    const differs = !computeFingerprint(damaged.read, size, p).equals(computeFingerprint(clean.read, size, p));
    t.is(differs, inRanges(outside, sampledRanges(size, p)), `generation ${g}: detected exactly when sampled`);
    if (differs) caughtAt = g;
  }
  t.true(caughtAt > 0, `caught within ${stripes} generations`);
});

test('a truncated copy gets a different fingerprint', (t) => {
  const content = pseudoRandomBytes(200 * KiB, 9);
  const p = fingerprintParams(ROOT, content.length, 3);
  const ref = computeFingerprint(bufferReader(content), content.length, p);
  t.false(computeFingerprint(bufferReader(content.subarray(0, content.length - 1)), content.length, p).equals(ref));
});

test('sampled ranges are in bounds, aligned, disjoint, about 1000 for large objects', (t) => {
  const sizes = [0, 1, 4095, 64 * KiB, 64 * KiB + 1, MiB, 64_000 * KiB, 64 * MiB, 100 * MiB + 123, GiB, 3 * GiB + 17, TiB + 7, 2 ** 50];
  for (const size of sizes) {
    for (let g = 0; g < 40; g++) {
      const p = fingerprintParams(ROOT, size, g);
      t.is(p.sampleSize, SAMPLE_SIZE);
      t.is(p.period % SAMPLE_ALIGN, 0);
      t.is(p.start % SAMPLE_ALIGN, 0);
      t.true(p.start + p.sampleSize <= p.period);
      const ranges = sampledRanges(size, p);
      let end = 0;
      for (const r of ranges) {
        if (r.offset < end || r.length <= 0 || r.length > SAMPLE_SIZE || r.offset + r.length > size || r.offset % SAMPLE_ALIGN !== 0) {
          t.fail(`size ${size} generation ${g}: bad range ${JSON.stringify(r)} after ${end}`);
          return;
        }
        end = r.offset + r.length;
      }
      t.true(ranges.length <= 1000, `size ${size}: ${ranges.length} samples`);
      if (size >= GiB) t.true(ranges.length >= 990, `size ${size}: ${ranges.length} samples`);
      else if (size > 64_000 * KiB) t.true(ranges.length >= 930, `size ${size}: ${ranges.length} samples`);
      else t.is(ranges.length, Math.ceil(size / SAMPLE_SIZE), 'small objects are read whole');
    }
  }
});

test('the sample start changes from generation to generation', (t) => {
  for (const size of [100 * MiB, GiB, TiB]) {
    const stripes = Math.ceil(fingerprintParams(ROOT, size, 0).period / SAMPLE_SIZE);
    t.true(stripes >= 2);
    const starts = Array.from({ length: 3 * stripes }, (_, g) => fingerprintParams(ROOT, size, g).start);
    for (let c = 0; c < 3; c++) {
      const cycle = starts.slice(c * stripes, (c + 1) * stripes);
      t.is(new Set(cycle).size, stripes, `size ${size}: each generation of a cycle samples elsewhere`);
    }
    if (stripes > 2) t.notDeepEqual(starts.slice(0, stripes), starts.slice(stripes, 2 * stripes), 'cycles visit stripes in new orders');
    // Other objects use other orders.
    const otherRoot = hashBytes(Buffer.from('another object'));
    const others = Array.from({ length: stripes }, (_, g) => fingerprintParams(otherRoot, size, g).start);
    if (stripes > 2) t.notDeepEqual(others, starts.slice(0, stripes));
  }
  // Small objects have nowhere else to sample: always everything from offset 0.
  for (let g = 0; g < 10; g++) t.is(fingerprintParams(ROOT, 10 * MiB, g).start, 0);
});

test('computeFingerprint reads only the sampled bytes, about 1000 x 64 KiB whatever the size', (t) => {
  for (const size of [GiB, TiB + 4095]) {
    const r = syntheticReader(size);
    const p = fingerprintParams(ROOT, size, 4);
    computeFingerprint(r.read, size, p);
    const ranges = sampledRanges(size, p);
    t.deepEqual(r.calls, ranges, 'one read per sampled range, nothing else');
    t.is(r.bytesRead, ranges.reduce((s, x) => s + x.length, 0));
    t.true(r.bytesRead <= 1000 * SAMPLE_SIZE);
    t.true(r.bytesRead >= 990 * SAMPLE_SIZE, `${r.bytesRead} bytes read`);
  }
});

test('coverage grows monotonically and reaches 1.0 after one cycle (at once for small objects)', (t) => {
  const db = new Database(path.join(tmpDir(t), 'ledger.db'));
  t.teardown(() => db.close());
  const ledger = new FingerprintLedger(db);

  for (const size of [1, 300 * KiB, 64_000 * KiB]) {
    const root = hashBytes(Buffer.from(`small ${size}`));
    t.is(ledger.coverage(root, size), 0);
    ledger.record(root, size, ledger.nextGeneration(root));
    t.is(ledger.coverage(root, size), 1);
  }

  for (const size of [64 * MiB + 1, GiB, 5 * GiB + 4097]) {
    const root = hashBytes(Buffer.from(`large ${size}`));
    const stripes = Math.ceil(fingerprintParams(root, size, 0).period / SAMPLE_SIZE);
    let prev = ledger.coverage(root, size);
    t.is(prev, 0);
    for (let i = 0; i < stripes + 5; i++) {
      const g = ledger.nextGeneration(root);
      t.is(g, i);
      ledger.record(root, size, g);
      const c = ledger.coverage(root, size);
      if (i < stripes) t.true(c > prev, `size ${size}: generation ${g} adds coverage (${prev} -> ${c})`);
      else t.is(c, prev);
      t.is(c, i >= stripes - 1 ? 1 : bruteForceCovered(root, size, Array.from({ length: i + 1 }, (_, k) => k)) / size);
      prev = c;
    }
  }
});

test('coverage is the exact union of the sampled ranges (property)', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 2 * GiB }),
      fc.array(fc.integer({ min: 0, max: 200 }), { maxLength: 12 }),
      fc.integer(),
      (size, gens, seed) => {
        const root = hashBytes(Buffer.from(String(seed)));
        const exact = size === 0 ? 1 : bruteForceCovered(root, size, gens) / size;
        return coverageOf(root, size, gens) === exact;
      },
    ),
    { numRuns: 200 },
  );
  t.pass();
});

test('the ledger lives in the store index, records idempotently, and stays fast with 1000 generations', (t) => {
  const { cas } = createTestStore(t);
  const ledger = new FingerprintLedger(cas.index.db);
  const size = TiB;
  cas.index.transaction(() => {
    for (let g = 0; g < 1000; g++) ledger.record(ROOT, size, g);
  });
  ledger.record(ROOT, size, 7); // again
  t.is(ledger.nextGeneration(ROOT), 1000);
  t.is(ledger.nextGeneration(hashBytes(Buffer.from('unseen'))), 0);
  ledger.coverage(ROOT, size); // warm up
  const t0 = performance.now();
  const c = ledger.coverage(ROOT, size);
  const ms = performance.now() - t0;
  t.log(`coverage of a 1 TiB object over 1000 generations: ${c.toFixed(4)} in ${ms.toFixed(2)} ms`);
  t.true(ms < 50, `${ms} ms`);
  t.true(c > 0 && c <= 1);
  t.is(c, coverageOf(ROOT, size, Array.from({ length: 1000 }, (_, g) => g)));

  // A second ledger over the same database sees the same records.
  t.is(new FingerprintLedger(cas.index.db).coverage(ROOT, size), c);
});

test('a read-only index without the table reads as an empty ledger', (t) => {
  const file = path.join(tmpDir(t), 'ro.db');
  new Database(file).close();
  const db = new Database(file, { readonly: true });
  t.teardown(() => db.close());
  const ledger = new FingerprintLedger(db);
  t.is(ledger.coverage(ROOT, GiB), 0);
  t.is(ledger.nextGeneration(ROOT), 0);
  t.true(isStrataError(t.throws(() => ledger.record(ROOT, GiB, 0)), 'EROFS'));
});

test('bad sizes, generations and parameters are refused', (t) => {
  const einval = (fn: () => unknown) => t.true(isStrataError(t.throws(fn), 'EINVAL'));
  einval(() => fingerprintParams(ROOT, -1, 0));
  einval(() => fingerprintParams(ROOT, 1.5, 0));
  einval(() => fingerprintParams(ROOT, 100, -1));
  const good = fingerprintParams(ROOT, GiB, 0);
  const bad: FingerprintParams[] = [
    { ...good, period: 0 },
    { ...good, sampleSize: 0 },
    { ...good, start: good.period },
    { ...good, period: good.sampleSize - 1 },
  ];
  for (const p of bad) einval(() => computeFingerprint(() => Buffer.alloc(0), GiB, p));
});
