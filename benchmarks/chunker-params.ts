// Measures chunking speed and deduplication for candidate chunker parameters, to choose the defaults
// in src/cas/chunker.ts. Run: node dist/benchmarks/chunker-params.js [MiB of random data, default 256]

import fs from 'node:fs';
import path from 'node:path';
import { createFastCdc, findCut, type FastCdcParams } from '../src/cas/fastcdc.js';
import { createFixedChunker } from '../src/cas/fixed-chunker.js';
import { handleKey, hashBytes } from '../src/cas/hash.js';
import type { Chunker } from '../src/types.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const CANDIDATES: Array<{ name: string; params: FastCdcParams }> = [
  { name: 'cdc 2/8/32K', params: { min: 2 * KiB, avg: 8 * KiB, max: 32 * KiB } },
  { name: 'cdc 4/16/64K', params: { min: 4 * KiB, avg: 16 * KiB, max: 64 * KiB } },
  { name: 'cdc 8/32/128K', params: { min: 8 * KiB, avg: 32 * KiB, max: 128 * KiB } },
];
const FIXED_SIZES = [4 * KiB, 16 * KiB, 64 * KiB, 128 * KiB];

/** Small deterministic generator so every run measures the same bytes. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}

function randomBytes(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  const words = new Uint32Array(buf.buffer, buf.byteOffset, length >>> 2);
  const next = rng(seed);
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length * 4; i < length; i++) buf[i] = next() & 0xff;
  return buf;
}

/** Prose-like bytes: Zipf-ish words from a random vocabulary, punctuation and line breaks. */
function textLike(length: number, seed: number): Buffer {
  const next = rng(seed);
  const vocab: Buffer[] = [];
  for (let i = 0; i < 5000; i++) {
    const w = Buffer.allocUnsafe(2 + (next() % 9));
    for (let j = 0; j < w.length; j++) w[j] = 97 + (next() % 26);
    vocab.push(w);
  }
  const out = Buffer.allocUnsafe(length);
  let o = 0;
  let col = 0;
  while (o < length) {
    // Squaring a uniform draw favours the first words, as word frequencies do.
    const u = next() / 2 ** 32;
    const w = vocab[Math.floor(u * u * vocab.length)]!;
    o += w.copy(out, o);
    col += w.length + 1;
    if (o < length) out[o++] = col > 72 ? 10 : next() % 17 === 0 ? 44 : 32;
    if (col > 72) col = 0;
  }
  return out;
}

/** Real source text: the .js/.ts files under node_modules, in path order, up to `length` bytes. */
function sourceText(length: number): Buffer | null {
  const root = path.resolve('node_modules');
  if (!fs.existsSync(root)) return null;
  const parts: Buffer[] = [];
  let total = 0;
  const walk = (dir: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      if (total >= length) return;
      const p = path.join(dir, name);
      const st = fs.lstatSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && /\.(js|ts|mjs|cjs)$/.test(name)) {
        const b = fs.readFileSync(p);
        parts.push(b);
        total += b.length;
      }
    }
  };
  walk(root);
  return total >= 8 * MiB ? Buffer.concat(parts).subarray(0, Math.min(total, length)) : null;
}

/** Version 2 of `v1`: `count` small edits (insert, delete or replace 1-32 bytes) at scattered places. */
function edited(v1: Buffer, count: number, seed: number): Buffer {
  const next = rng(seed);
  const at = Array.from({ length: count }, () => next() % v1.length).sort((a, b) => a - b);
  const parts: Buffer[] = [];
  let prev = 0;
  for (const p of at) {
    if (p < prev) continue;
    parts.push(v1.subarray(prev, p));
    const n = 1 + (next() % 32);
    const kind = next() % 3;
    if (kind !== 1) parts.push(randomBytes(n, next()));
    prev = kind === 0 ? p : Math.min(v1.length, p + n);
  }
  parts.push(v1.subarray(prev));
  return Buffer.concat(parts);
}

/**
 * `v1` (a disk image) with `count` runs of 1 to `maxRun` 4 KiB blocks rewritten in place at scattered,
 * 4 KiB-aligned places. Returns the image and how many bytes were written.
 */
function blocksOverwritten(v1: Buffer, count: number, maxRun: number, seed: number): [Buffer, number] {
  const next = rng(seed);
  const v2 = Buffer.from(v1);
  const blocks = v1.length / (4 * KiB);
  let written = 0;
  for (let i = 0; i < count; i++) {
    const at = (next() % blocks) * 4 * KiB;
    const run = randomBytes((1 + (next() % maxRun)) * 4 * KiB, next()).subarray(0, v1.length - at);
    written += run.copy(v2, at);
  }
  return [v2, written];
}

function chunkAll(chunker: Chunker, data: Buffer, writeSize = MiB): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < data.length; o += writeSize) out.push(...chunker.write(data.subarray(o, o + writeSize)));
  out.push(...chunker.end());
  return out;
}

/** Bytes of v2 in chunks that v1 does not have, and the number of chunks (index rows) of v2. */
function newBytes(make: () => Chunker, v1: Buffer, v2: Buffer) {
  const known = new Set(chunkAll(make(), v1).map((c) => handleKey(hashBytes(c))));
  const chunks = chunkAll(make(), v2);
  let fresh = 0;
  for (const c of chunks) if (!known.has(handleKey(hashBytes(c)))) fresh += c.length;
  return { fresh, chunks: chunks.length };
}

function bestOf(runs: number, f: () => void): number {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const t = performance.now();
    f();
    best = Math.min(best, performance.now() - t);
  }
  return best;
}

const mbps = (bytes: number, ms: number) => (bytes / 1e6 / (ms / 1000)).toFixed(0);
const pct = (a: number, b: number) => `${((a / b) * 100).toFixed(2)}%`;

function table(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  console.log(line(head));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const r of rows) console.log(line(r));
  console.log();
}

function main(): void {
  const size = Number(process.argv[2] ?? 256) * MiB;
  console.log(`node ${process.version}; ${size / MiB} MiB pseudo-random data; best of 3 runs\n`);
  const random = randomBytes(size, 1);

  console.log('Throughput: findCut alone, and the streaming chunker fed 1 MiB writes (copying chunks out)');
  const speedRows: string[][] = [];
  for (const { name, params } of CANDIDATES) {
    let cuts = 0;
    const scan = bestOf(3, () => {
      cuts = 0;
      for (let s = 0; s < random.length; cuts++) s = findCut(random, s, random.length, params);
    });
    const stream = bestOf(3, () => {
      const c = createFastCdc(params);
      for (let o = 0; o < random.length; o += MiB) c.write(random.subarray(o, o + MiB));
      c.end();
    });
    speedRows.push([name, mbps(size, scan), mbps(size, stream), (size / cuts / KiB).toFixed(1), String(Math.round((cuts * 1024) / (size / MiB)))]);
  }
  for (const fixed of [4 * KiB, 64 * KiB]) {
    const stream = bestOf(3, () => {
      const c = createFixedChunker(fixed);
      for (let o = 0; o < random.length; o += MiB) c.write(random.subarray(o, o + MiB));
      c.end();
    });
    speedRows.push([`fixed ${fixed / KiB}K`, '-', mbps(size, stream), (fixed / KiB).toFixed(1), String((1024 * MiB) / fixed)]);
  }
  table(['chunker', 'findCut MB/s', 'stream MB/s', 'mean KiB', 'chunks/GiB'], speedRows);

  const textSize = 64 * MiB;
  const inputs: Array<[string, Buffer]> = [['text-like', textLike(textSize, 2)]];
  const source = sourceText(textSize);
  if (source) inputs.push(['node_modules source', source]);
  for (const [label, v1] of inputs) {
    console.log(`Dedup: ${label}, ${(v1.length / MiB).toFixed(0)} MiB; new bytes of version 2 after scattered 1-32 byte edits`);
    const densities = [
      ['1 edit/MiB', v1.length / MiB],
      ['1 edit/256K', v1.length / (256 * KiB)],
      ['1 edit/64K', v1.length / (64 * KiB)],
    ] as const;
    const versions = densities.map(([, n], i) => edited(v1, Math.round(n), 100 + i));
    const rows: string[][] = [];
    for (const { name, params } of CANDIDATES) {
      const cells = versions.map((v2) => {
        const r = newBytes(() => createFastCdc(params), v1, v2);
        return `${(r.fresh / MiB).toFixed(2)} MiB (${pct(r.fresh, v2.length)})`;
      });
      rows.push([name, ...cells]);
    }
    table(['chunker', ...densities.map(([d, n]) => `${d} (${Math.round(n)} edits)`)], rows);
  }

  const imageSize = 64 * MiB;
  const image = randomBytes(imageSize, 3);
  const scenarios: Array<[string, number, number]> = [
    ['16 blocks', 16, 1],
    ['256 blocks', 256, 1],
    ['1024 blocks', 1024, 1],
    ['64 runs of 1-64 blocks', 64, 64],
  ];
  const images = scenarios.map(([, n, run], i) => blocksOverwritten(image, n, run, 200 + i));
  console.log(`Dedup: ${imageSize / MiB} MiB disk image; new bytes after rewriting aligned 4 KiB blocks in place`);
  const rows: string[][] = [];
  const makers: Array<[string, () => Chunker, number]> = [
    ...FIXED_SIZES.map((s): [string, () => Chunker, number] => [`fixed ${s / KiB}K`, () => createFixedChunker(s), (1024 * MiB) / s]),
    ['cdc 4/16/64K', () => createFastCdc(CANDIDATES[1]!.params), 0],
  ];
  for (const [name, make, perGiB] of makers) {
    let rowsPerGiB = perGiB;
    const cells = images.map(([v2]) => {
      const r = newBytes(make, image, v2);
      rowsPerGiB ||= Math.round((r.chunks * 1024) / (imageSize / MiB));
      return `${(r.fresh / MiB).toFixed(2)} MiB (${pct(r.fresh, imageSize)})`;
    });
    rows.push([name, String(rowsPerGiB), ...cells]);
  }
  const written = (w: number) => (w >= MiB ? `${(w / MiB).toFixed(1)} MiB` : `${w / KiB} KiB`);
  table(['chunker', 'rows/GiB', ...scenarios.map(([label], i) => `${label} (${written(images[i]![1])})`)], rows);
}

main();
