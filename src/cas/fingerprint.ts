import type Database from 'better-sqlite3';
import { invalid, StrataError } from '../errors.js';
import type { Handle } from '../types.js';
import { hashBytes } from './hash.js';

// Sparse data fingerprints: check a copy of an object (on a peer, in the performance pool, restored
// to disk) by reading about 1000 samples of 64 KiB instead of all of it.
//
// The object is cut into windows of `period` bytes; a generation reads one sample at the same
// offset `start` in every window. Windows are split into ceil(period / 64 KiB) stripes, and each
// cycle of that many generations visits every stripe once, in an order drawn from the root handle
// and the cycle number. So consecutive generations never repeat a sample, and one cycle covers
// every byte: coverage reaches 1.0 after ceil(period / 64 KiB) generations (17 for 1 GiB) instead
// of creeping up as random starts would (coupon collector).
//
// Objects up to SAMPLE_SIZE * TARGET_SAMPLES (62.5 MiB) have period == sample size: one stripe,
// start 0, and every fingerprint covers all of the object. That is deliberate: reading such an
// object whole costs no more than sampling a large one, so there is no reason to sample it sparsely.

/** Bytes per sample. */
export const SAMPLE_SIZE = 64 * 1024;
/** Samples per fingerprint for objects larger than SAMPLE_SIZE * TARGET_SAMPLES (a few fewer after alignment). */
export const TARGET_SAMPLES = 1000;
/** Periods and starts are multiples of this, so samples stay page- and block-aligned on disk. */
export const SAMPLE_ALIGN = 4096;

const FINGERPRINT_TAG = Buffer.from('strata-fingerprint-v1\0');
const ORDER_TAG = Buffer.from('strata-fingerprint-order-v1\0');

export interface FingerprintParams {
  generation: number;
  /** Distance between sample starts; a multiple of SAMPLE_ALIGN, at least sampleSize. */
  period: number;
  sampleSize: number;
  /** Offset of the first sample: 0 <= start <= period - sampleSize, a multiple of SAMPLE_ALIGN. */
  start: number;
}

export interface SampledRange {
  offset: number;
  length: number;
}

function checkCount(name: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw invalid(`fingerprint: ${name} must be a non-negative integer, got ${n}`);
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/** About size / TARGET_SAMPLES, rounded up to SAMPLE_ALIGN, never below one sample. */
const periodFor = (size: number) => Math.max(SAMPLE_SIZE, alignUp(Math.ceil(size / TARGET_SAMPLES), SAMPLE_ALIGN));

/** Generations per cycle: the number of distinct sample positions inside one window. */
const stripesPerWindow = (period: number, sampleSize: number) => Math.ceil(period / sampleSize);

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** The stripe order of one cycle: stripe(j) = (mul * j + add) mod stripes, a permutation since gcd(mul, stripes) = 1. */
function cycleOrder(root: Handle, stripes: number, cycle: number): { mul: bigint; add: bigint } {
  if (stripes === 1) return { mul: 0n, add: 0n };
  const c = Buffer.alloc(8);
  c.writeBigUInt64LE(BigInt(cycle));
  const seed = hashBytes(Buffer.concat([ORDER_TAG, root, c]));
  let mul = 1 + (seed.readUIntLE(0, 6) % (stripes - 1));
  while (gcd(mul, stripes) !== 1) mul = (mul % (stripes - 1)) + 1; // reaches 1 at worst
  return { mul: BigInt(mul), add: BigInt(seed.readUIntLE(6, 6) % stripes) };
}

function startOf(order: { mul: bigint; add: bigint }, stripes: number, j: number, period: number, sampleSize: number): number {
  const stripe = Number((order.mul * BigInt(j) + order.add) % BigInt(stripes));
  // The last stripe of a window may be partial; its sample ends at the window's end instead.
  return Math.min(stripe * sampleSize, period - sampleSize);
}

/** Sampling parameters for `generation` of the object `root` of `size` bytes; both sides of a check derive the same. */
export function fingerprintParams(root: Handle, size: number, generation: number): FingerprintParams {
  checkCount('size', size);
  checkCount('generation', generation);
  const sampleSize = SAMPLE_SIZE;
  const period = periodFor(size);
  const stripes = stripesPerWindow(period, sampleSize);
  const cycle = Math.floor(generation / stripes);
  const start = startOf(cycleOrder(root, stripes, cycle), stripes, generation % stripes, period, sampleSize);
  return { generation, period, sampleSize, start };
}

function checkParams(p: FingerprintParams): void {
  checkCount('generation', p.generation);
  checkCount('start', p.start);
  if (!Number.isSafeInteger(p.sampleSize) || p.sampleSize <= 0) throw invalid(`fingerprint: bad sample size ${p.sampleSize}`);
  if (!Number.isSafeInteger(p.period) || p.period < p.sampleSize) throw invalid(`fingerprint: bad period ${p.period}`);
  if (p.start > p.period - p.sampleSize) throw invalid(`fingerprint: start ${p.start} beyond period ${p.period}`);
}

/** The byte ranges a fingerprint with `params` reads, in order, disjoint, within [0, size). */
export function sampledRanges(size: number, params: FingerprintParams): SampledRange[] {
  checkCount('size', size);
  checkParams(params);
  const out: SampledRange[] = [];
  for (let offset = params.start; offset < size; offset += params.period) {
    out.push({ offset, length: Math.min(params.sampleSize, size - offset) });
  }
  return out;
}

/**
 * The 32-byte fingerprint of an object of `size` bytes, reading only the sampled ranges through
 * `read`, which must return exactly the bytes at [offset, offset + length). A copy that answers
 * short or different bytes gets a different fingerprint. Size and params are part of the digest.
 */
export function computeFingerprint(read: (offset: number, length: number) => Buffer, size: number, params: FingerprintParams): Buffer {
  const ranges = sampledRanges(size, params);
  const header = Buffer.alloc(FINGERPRINT_TAG.length + 6 * 8);
  let at = FINGERPRINT_TAG.copy(header);
  for (const n of [size, params.generation, params.period, params.sampleSize, params.start, ranges.length]) {
    at = header.writeBigUInt64LE(BigInt(n), at);
  }
  const parts: Buffer[] = [header];
  for (const r of ranges) parts.push(hashBytes(read(r.offset, r.length)));
  return hashBytes(Buffer.concat(parts));
}

/** Length of the union of intervals [s, s + len) clipped to [0, limit), for sorted distinct starts. */
function unionLength(starts: number[], len: number, limit: number): number {
  let total = 0;
  let end = 0; // covered up to here
  for (const s of starts) {
    if (s >= limit) break;
    const from = Math.max(s, end);
    const to = Math.min(s + len, limit);
    if (to > from) total += to - from;
    end = Math.max(end, to);
  }
  return total;
}

/**
 * Fraction of an object's bytes that the fingerprints of `generations` have read together: the
 * exact size of the union of their sampled ranges, divided by `size` (1 for an empty object).
 */
export function coverageOf(root: Handle, size: number, generations: Iterable<number>): number {
  checkCount('size', size);
  if (size === 0) return 1;
  const period = periodFor(size);
  const stripes = stripesPerWindow(period, SAMPLE_SIZE);
  const orders = new Map<number, { mul: bigint; add: bigint }>();
  const starts = new Set<number>();
  for (const g of generations) {
    checkCount('generation', g);
    const cycle = Math.floor(g / stripes);
    let order = orders.get(cycle);
    if (!order) orders.set(cycle, (order = cycleOrder(root, stripes, cycle)));
    starts.add(startOf(order, stripes, g % stripes, period, SAMPLE_SIZE));
  }
  // Every generation samples the same offset inside each window, so the union is periodic: whole
  // windows all cover the same bytes, and the trailing partial window covers what falls inside it.
  const sorted = [...starts].sort((a, b) => a - b);
  const fullWindows = Math.floor(size / period);
  const tail = size - fullWindows * period;
  const covered = fullWindows * unionLength(sorted, SAMPLE_SIZE, period) + unionLength(sorted, SAMPLE_SIZE, tail);
  return covered / size;
}

const SCHEMA = `CREATE TABLE IF NOT EXISTS fingerprints (
  root BLOB NOT NULL,
  generation INTEGER NOT NULL,
  PRIMARY KEY (root, generation)
) WITHOUT ROWID`;

/**
 * Which fingerprint generations have been checked for each object, in the index database. Only
 * generation numbers are kept: the sampled ranges follow from (root, size, generation), so coverage
 * is recomputed on demand, in O(g log g) for g recorded generations, independent of object size.
 */
export class FingerprintLedger {
  private readonly q: {
    insert: Database.Statement;
    generations: Database.Statement;
    max: Database.Statement;
  } | null;

  /** Creates the table if missing; on a read-only database without it, the ledger is empty. */
  constructor(db: Database.Database) {
    if (!db.readonly) db.exec(SCHEMA);
    const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fingerprints'").get() !== undefined;
    this.q = exists
      ? {
          insert: db.prepare('INSERT OR IGNORE INTO fingerprints (root, generation) VALUES (?, ?)'),
          generations: db.prepare('SELECT generation FROM fingerprints WHERE root = ?').pluck(),
          max: db.prepare('SELECT max(generation) FROM fingerprints WHERE root = ?').pluck(),
        }
      : null;
  }

  /** Notes that `generation` of `root` was checked and matched; recording it again is harmless. */
  record(root: Handle, size: number, generation: number): void {
    checkCount('size', size); // the root fixes the size, so it is not stored
    checkCount('generation', generation);
    if (!this.q) throw new StrataError('EROFS', 'fingerprint ledger: read-only index without a fingerprints table');
    this.q.insert.run(root, generation);
  }

  /** Fraction (0..1) of the object's bytes covered by the recorded generations together. */
  coverage(root: Handle, size: number): number {
    const gens = this.q ? (this.q.generations.all(root) as number[]) : [];
    return coverageOf(root, size, gens);
  }

  /** The generation to check next: one past the highest recorded, 0 if none. */
  nextGeneration(root: Handle): number {
    const max = this.q ? (this.q.max.get(root) as number | null) : null;
    return max === null ? 0 : max + 1;
  }
}
