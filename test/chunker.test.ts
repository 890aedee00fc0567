import test from 'ava';
import fc from 'fast-check';
import { DEFAULT_CHUNKER_PARAMS, createChunker } from '../src/cas/chunker.js';
import { createFastCdc, findCut, type FastCdcParams } from '../src/cas/fastcdc.js';
import { createFixedChunker } from '../src/cas/fixed-chunker.js';
import { handleKey, hashBytes } from '../src/cas/hash.js';
import { isStrataError } from '../src/errors.js';
import { Chunking, type Chunker } from '../src/types.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

const SMALL: FastCdcParams = { min: 64, avg: 256, max: 1024 };
const DEFAULTS: FastCdcParams = DEFAULT_CHUNKER_PARAMS;
const MiB = 1024 * 1024;

/** Feeds `data` cut at `splits` through a reused buffer that is scribbled on after every write. */
function chunkSplit(chunker: Chunker, data: Buffer, splits: number[]): Buffer[] {
  const points = [...new Set(splits.map((s) => s % (data.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, data.length]) {
    const piece = Buffer.from(data.subarray(prev, p));
    out.push(...chunker.write(piece));
    piece.fill(0xa5); // a caller reusing its buffer must not corrupt chunks already returned
    prev = p;
  }
  out.push(...chunker.end());
  return out;
}

function chunkAll(chunker: Chunker, data: Buffer): Buffer[] {
  return [...chunker.write(data), ...chunker.end()];
}

/** Reference cut list: findCut applied to the whole buffer at once. */
function cutPoints(data: Uint8Array, params: FastCdcParams): number[] {
  const cuts: number[] = [];
  for (let s = 0; s < data.length; ) {
    s = findCut(data, s, data.length, params);
    cuts.push(s);
  }
  return cuts;
}

const ends = (chunks: Buffer[]) => {
  let o = 0;
  return chunks.map((c) => (o += c.length));
};

const inputArb = fc.record({
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
  length: fc.integer({ min: 0, max: 12_000 }),
  splits: fc.array(fc.nat(), { maxLength: 40 }),
});

test('CDC: chunks reproduce the input and do not depend on how it was split', (t) => {
  // Writes that end just around a cut point reach the edge cases of carrying bytes across writes.
  const nearCuts = fc.array(fc.record({ k: fc.nat(), d: fc.integer({ min: -2, max: 2 }) }), { maxLength: 20 });
  fc.assert(
    fc.property(inputArb, nearCuts, ({ seed, length, splits }, near) => {
      const data = pseudoRandomBytes(length, seed);
      const expected = cutPoints(data, SMALL);
      const extra = near.map(({ k, d }) => Math.max(0, expected[k % expected.length]! + d));
      const chunks = chunkSplit(createFastCdc(SMALL), data, [...splits, ...(length > 0 ? extra : [])]);
      t.true(Buffer.concat(chunks).equals(data));
      t.deepEqual(ends(chunks), expected);
    }),
    { numRuns: 300 },
  );
});

test('CDC: byte-at-a-time and huge writes agree with findCut at default sizes', (t) => {
  const data = pseudoRandomBytes(MiB + 12_345, 7);
  const expected = cutPoints(data, DEFAULTS);
  const oneShot = chunkAll(createFastCdc(DEFAULTS), data);
  t.deepEqual(ends(oneShot), expected);
  const chunker = createFastCdc(DEFAULTS);
  const bytewise: Buffer[] = [];
  const one = Buffer.alloc(1);
  for (const b of data.subarray(0, 300_000)) {
    one[0] = b;
    bytewise.push(...chunker.write(one));
  }
  bytewise.push(...chunker.write(data.subarray(300_000)), ...chunker.end());
  t.deepEqual(ends(bytewise), expected);
  t.true(Buffer.concat(bytewise).equals(data));
});

test('fixed: chunk k is bytes [k*size, (k+1)*size) however the input was split', (t) => {
  fc.assert(
    fc.property(inputArb, fc.integer({ min: 1, max: 700 }), ({ seed, length, splits }, size) => {
      const data = pseudoRandomBytes(length, seed);
      const chunks = chunkSplit(createFixedChunker(size), data, splits);
      t.true(Buffer.concat(chunks).equals(data));
      t.is(chunks.length, Math.ceil(length / size));
      chunks.forEach((c, k) => t.true(c.equals(data.subarray(k * size, (k + 1) * size))));
    }),
    { numRuns: 300 },
  );
});

test('empty streams give no chunks', (t) => {
  for (const mode of [Chunking.Cdc, Chunking.Fixed]) {
    const chunker = createChunker(mode, DEFAULT_CHUNKER_PARAMS);
    t.deepEqual(chunker.write(Buffer.alloc(0)), []);
    t.deepEqual(chunker.end(), []);
  }
});

test('CDC: every chunk but the last is within [min, max], and sizes centre near avg', (t) => {
  for (const params of [SMALL, DEFAULTS, { min: 2048, avg: 8192, max: 32768 }]) {
    const data = pseudoRandomBytes(4 * MiB, 3);
    const chunks = chunkAll(createFastCdc(params), data);
    for (const c of chunks.slice(0, -1)) {
      t.true(c.length >= params.min && c.length <= params.max, `chunk of ${c.length} outside [${params.min}, ${params.max}]`);
    }
    t.true(chunks.at(-1)!.length <= params.max);
    // Normalized chunking keeps the mean a little above avg; a swapped or wrong mask moves it a lot.
    const mean = data.length / chunks.length;
    t.true(mean > params.avg * 0.9 && mean < params.avg * 1.4, `mean chunk ${mean} for avg ${params.avg}`);
  }
  // Content without cut points (all zeros) is cut at max.
  const zeros = chunkAll(createFastCdc(DEFAULTS), Buffer.alloc(200_000));
  t.deepEqual(zeros.map((c) => c.length), [65536, 65536, 65536, 3392]);
});

test('findCut: returns end for short ranges and never passes start + max', (t) => {
  const data = pseudoRandomBytes(10_000, 9);
  t.is(findCut(data, 100, 100, SMALL), 100);
  t.is(findCut(data, 100, 164, SMALL), 164);
  const zeros = new Uint8Array(5000);
  t.is(findCut(zeros, 10, 5000, SMALL), 10 + SMALL.max);
  t.is(findCut(zeros, 10, 500, SMALL), 500);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 10_000 }), fc.integer({ min: 0, max: 10_000 }), (a, b) => {
      const [start, end] = a <= b ? [a, b] : [b, a];
      const c = findCut(data, start, end, SMALL);
      t.true(c <= end && c <= start + SMALL.max);
      t.true(end - start <= SMALL.min ? c === end : c >= start + SMALL.min);
    }),
    { numRuns: 500 },
  );
});

/** Fraction of `before`'s chunks (by count and by bytes) that re-appear byte-identical in `after`. */
function survival(before: Buffer[], after: Buffer[]) {
  const seen = new Set(after.map((c) => handleKey(hashBytes(c))));
  const kept = before.filter((c) => seen.has(handleKey(hashBytes(c))));
  const bytes = (cs: Buffer[]) => cs.reduce((n, c) => n + c.length, 0);
  return { count: kept.length / before.length, bytes: bytes(kept) / bytes(before), kept: kept.length };
}

test('CDC: boundaries survive an insertion near the start and a deletion in the middle', (t) => {
  const v1 = pseudoRandomBytes(4 * MiB, 11);
  const v2 = Buffer.concat([
    v1.subarray(0, 1000),
    Buffer.from('inserted!'),
    v1.subarray(1000, 2 * MiB),
    v1.subarray(2 * MiB + 13),
  ]);
  const before = chunkAll(createFastCdc(DEFAULTS), v1);
  const after = chunkAll(createFastCdc(DEFAULTS), v2);
  const s = survival(before, after);
  t.log(`${s.kept}/${before.length} chunks survive (${(s.bytes * 100).toFixed(1)}% of bytes)`);
  t.true(s.count >= 0.95, `only ${s.count} of chunks survive`);
  t.true(s.bytes >= 0.95, `only ${s.bytes} of bytes survive`);
  // Each edit should disturb only the chunk(s) around it, not a run of them.
  t.true(before.length - s.kept <= 6);
});

test('fixed: an insertion shifts every later block, an in-place overwrite changes one', (t) => {
  const size = DEFAULT_CHUNKER_PARAMS.fixedSize;
  const v1 = pseudoRandomBytes(4 * MiB, 12);
  const before = chunkAll(createFixedChunker(size), v1);

  const inserted = Buffer.concat([v1.subarray(0, 1000), Buffer.from([1, 2, 3]), v1.subarray(1000)]);
  const s = survival(before, chunkAll(createFixedChunker(size), inserted));
  t.is(s.kept, 0, 'no block after an insertion should survive');

  // A 4 KiB block rewritten in place, as a filesystem inside a disk image does.
  const overwritten = Buffer.from(v1);
  const at = 37 * 4096;
  pseudoRandomBytes(4096, 99).copy(overwritten, at);
  const after = chunkAll(createFixedChunker(size), overwritten);
  t.is(after.length, before.length);
  const changed = after.flatMap((c, k) => (c.equals(before[k]!) ? [] : [k]));
  t.deepEqual(changed, [Math.floor(at / size)]);
});

test('golden: cut points are pinned (the gear table and masks must never change)', (t) => {
  // If this fails, boundaries moved: data chunked before the change no longer deduplicates.
  const data = pseudoRandomBytes(2 * MiB, 42);
  t.deepEqual(cutPoints(data, DEFAULTS).slice(0, 10), GOLDEN_DEFAULT);
  t.deepEqual(cutPoints(data.subarray(0, 8192), SMALL).slice(0, 12), GOLDEN_SMALL);
  // A low-entropy (text-like) input exercises different gear entries.
  const text = Buffer.from('the quick brown fox jumps over the lazy dog 0123456789\n'.repeat(2000));
  for (let i = 0; i < text.length; i += 97) text[i] = 65 + (i % 26);
  t.deepEqual(cutPoints(text, SMALL).slice(0, 12), GOLDEN_TEXT);
});

const GOLDEN_DEFAULT = [16272, 34048, 51545, 65927, 82857, 100068, 119462, 137881, 154936, 175241];
const GOLDEN_SMALL = [76, 143, 261, 550, 928, 1217, 1366, 1801, 2058, 2352, 2591, 2950];
const GOLDEN_TEXT = [85, 250, 360, 470, 580, 745, 855, 965, 1130, 1240, 1350, 1515];

test('bad parameters throw EINVAL', (t) => {
  const bad: Array<Partial<FastCdcParams>> = [
    { min: 4096, avg: 12000, max: 65536 }, // avg not a power of two
    { min: 16384, avg: 16384, max: 65536 }, // min not below avg
    { min: 4096, avg: 16384, max: 16384 }, // max not above avg
    { min: 0, avg: 16384, max: 65536 },
    { min: 32, avg: 256, max: 1024 }, // min too small
    { min: 64, avg: 128, max: 1024 }, // avg too small
    { min: 4096, avg: 1 << 25, max: 1 << 26 }, // avg too large
    { min: 4096, avg: 16384, max: 2 ** 27 }, // max too large
    { min: 4096.5, avg: 16384, max: 65536 },
    { min: 4096, avg: Number.NaN, max: 65536 },
    { min: 4096, avg: 16384 },
  ];
  for (const p of bad) {
    const err = t.throws(() => createFastCdc(p as FastCdcParams), undefined, JSON.stringify(p));
    t.true(isStrataError(err, 'EINVAL'), String(err));
    t.true(isStrataError(t.throws(() => findCut(new Uint8Array(10), 0, 10, p as FastCdcParams)), 'EINVAL'));
    t.true(isStrataError(t.throws(() => createChunker(Chunking.Cdc, { ...DEFAULT_CHUNKER_PARAMS, ...p, max: p.max as number })), 'EINVAL'));
  }
  t.true(isStrataError(t.throws(() => findCut(new Uint8Array(10), 5, 11, SMALL)), 'EINVAL'));
  t.true(isStrataError(t.throws(() => findCut(new Uint8Array(10), 6, 5, SMALL)), 'EINVAL'));
  for (const size of [0, -4096, 1.5, Number.NaN, 2 ** 27]) {
    t.true(isStrataError(t.throws(() => createFixedChunker(size)), 'EINVAL'), String(size));
    t.true(isStrataError(t.throws(() => createChunker(Chunking.Fixed, { ...DEFAULT_CHUNKER_PARAMS, fixedSize: size })), 'EINVAL'));
  }
  t.true(isStrataError(t.throws(() => createChunker(7 as Chunking, DEFAULT_CHUNKER_PARAMS)), 'EINVAL'));
});

test('createChunker picks the chunker for the mode, with valid defaults', (t) => {
  const data = pseudoRandomBytes(300_000, 5);
  const cdc = chunkAll(createChunker(Chunking.Cdc, DEFAULT_CHUNKER_PARAMS), data);
  t.deepEqual(ends(cdc), cutPoints(data, DEFAULTS));
  const fixed = chunkAll(createChunker(Chunking.Fixed, DEFAULT_CHUNKER_PARAMS), data);
  t.deepEqual(fixed.map((c) => c.length), [65536, 65536, 65536, 65536, 37856]);
});

/** chunkSplit through scan()/finish(): each chunk is copied during emit, as a hashing caller reads it. */
function scanSplit(chunker: Chunker, data: Buffer, splits: number[]): Buffer[] {
  const points = [...new Set(splits.map((s) => s % (data.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  const emit = (c: Buffer) => out.push(Buffer.from(c));
  let prev = 0;
  for (const p of [...points, data.length]) {
    const piece = Buffer.from(data.subarray(prev, p));
    chunker.scan!(piece, emit);
    piece.fill(0xa5);
    prev = p;
  }
  chunker.finish!(emit);
  return out;
}

test('scan()/finish() cut exactly as write()/end(), however the input is split (CDC and fixed)', (t) => {
  fc.assert(
    fc.property(inputArb, fc.array(fc.nat(), { maxLength: 40 }), ({ seed, length, splits }, splits2) => {
      const data = pseudoRandomBytes(length, seed);
      for (const make of [() => createFastCdc(SMALL), () => createFixedChunker(700)]) {
        const written = chunkSplit(make(), data, splits);
        const scanned = scanSplit(make(), data, splits2);
        t.deepEqual(ends(scanned), ends(written));
        t.true(Buffer.concat(scanned).equals(data));
      }
    }),
    { numRuns: 300 },
  );
});
