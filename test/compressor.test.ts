import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { ChunkStore, DEFAULT_CHUNK_STORE_OPTIONS, type ChunkStoreOptions } from '../src/cas/chunk-store.js';
import { decompressChunk, frameChecksummed } from '../src/cas/codec.js';
import { CompressorPool, type CompressorPoolOptions, type CompressOutcome } from '../src/cas/compressor-pool.js';
import { hashBytes } from '../src/cas/hash.js';
import { IndexDb } from '../src/cas/index-db.js';
import { LocalBlobStore } from '../src/cas/local-blob-store.js';
import { CasStore } from '../src/cas/store.js';
import { verifyStore } from '../src/cas/verify.js';
import { ChunkKind, Codec, type Handle } from '../src/types.js';
import { FaultyBlobStore } from './helpers/faulty-blob-store.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

// Compression on worker threads behind the synchronous ChunkStore API: same results as inline,
// dedup and reads of chunks still in flight, abort, and every worker failure surfacing as an error.

const WORDS = ['const', 'return', 'function', 'export', 'import', 'value', 'length', 'buffer', 'chunk', 'handle', '=>', '{', '}', ';', '\n'];

/** Source-like text (compresses to ~30%), deterministic per seed. */
function textBytes(length: number, seed: number): Buffer {
  const pick = pseudoRandomBytes(length, seed);
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < length; i++) {
    const w = WORDS[pick[i % length] % WORDS.length] + ' ';
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('').slice(0, length));
}

/** Compressible and random chunks of many sizes, some repeated, one larger than a pool batch. */
function mixedChunks(): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < 120; i++) {
    const len = 1 + ((i * 7919) % 40_000);
    out.push(i % 3 === 0 ? pseudoRandomBytes(len, i + 1) : textBytes(len, i + 1));
    if (i % 10 === 5) out.push(out[i - 3]); // a duplicate, often of a chunk still in flight
  }
  out.push(textBytes(300 * 1024, 999), pseudoRandomBytes(300 * 1024, 998));
  return out;
}

function setup(t: ExecutionContext, pool: CompressorPool | null, opts: Partial<ChunkStoreOptions> = {}, dir = tmpDir(t)) {
  const index = new IndexDb(path.join(dir, 'index.db'));
  t.teardown(() => index.close());
  const blobs = new FaultyBlobStore(new LocalBlobStore(path.join(dir, 'containers')));
  const chunks = new ChunkStore(index, blobs, { ...DEFAULT_CHUNK_STORE_OPTIONS, ...opts }, pool);
  return { dir, index, blobs, chunks };
}

function newPool(t: ExecutionContext, opts: Partial<CompressorPoolOptions> = {}): CompressorPool {
  const pool = new CompressorPool(opts);
  t.teardown(() => pool.close());
  return pool;
}

type Fault = 'slow' | 'crash' | 'error' | 'hang' | 'nostart';

/**
 * A worker script that serves like the real one but misbehaves on chunks of exactly `mark` bytes:
 * exits the thread (crash), fails the compression (error) or never answers (hang); 'slow' sleeps
 * 150 ms before every chunk, 'nostart' fails while loading (as a broken install would).
 */
function faultyWorker(t: ExecutionContext, fault: Fault, mark = -1): URL {
  const serve = new URL('../src/cas/compress-worker.js', import.meta.url).href;
  const codec = new URL('../src/cas/codec.js', import.meta.url).href;
  const file = path.join(tmpDir(t), `worker-${fault}.mjs`);
  fs.writeFileSync(file, `
import { workerData } from 'node:worker_threads';
import { serveCompression } from ${JSON.stringify(serve)};
import { compressChunk } from ${JSON.stringify(codec)};
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
if (${JSON.stringify(fault)} === 'nostart') throw new Error('broken install');
serveCompression(workerData.port, workerData.signal, (raw) => {
  if (${JSON.stringify(fault)} === 'slow') sleep(150);
  if (raw.length === ${mark}) {
    if (${JSON.stringify(fault)} === 'crash') process.exit(70);
    if (${JSON.stringify(fault)} === 'error') throw new Error('injected compression failure');
    if (${JSON.stringify(fault)} === 'hang') sleep(60_000);
  }
  return compressChunk(raw);
});
`);
  return pathToFileURL(file);
}

function put(chunks: ChunkStore, raw: Buffer): Handle {
  const h = hashBytes(raw);
  chunks.put(h, ChunkKind.Data, raw);
  return h;
}

test('the pool hands outcomes back in submission order, checksummed zstd frames for text and random data alike', (t) => {
  const pool = newPool(t, { workers: 2, batchBytes: 64 * 1024 });
  const inputs = mixedChunks();
  const seqs = inputs.map((raw) => pool.submit(raw).seq);
  const outcomes: CompressOutcome[] = [];
  for (let o = pool.next(true); o; o = pool.next(true)) outcomes.push(o);
  t.deepEqual(outcomes.map((o) => o.seq), seqs);
  t.is(pool.inFlightBytes, 0);
  outcomes.forEach((o, i) => {
    if ('error' in o) return t.fail(o.error);
    const raw = inputs[i];
    if (o.codec !== Codec.Zstd) return t.fail(`chunk ${i}: codec ${o.codec}`);
    t.true(frameChecksummed(o.payload), `chunk ${i} carries a checksum`);
    t.true(decompressChunk(Codec.Zstd, o.payload, raw.length).equals(raw));
  });
  t.true((outcomes[1] as { payload: Buffer }).payload.length < inputs[1].length / 2, 'text compresses');
  t.true((outcomes[0] as { payload: Buffer }).payload.length >= inputs[0].length, 'random data does not');
});

test('a pooled store gives the same answers, stats and stored chunks as inline compression', (t) => {
  // Small containers and commits, so sealing and automatic commits happen with jobs in flight.
  const opts = { containerSize: 512 * 1024, commitEveryBytes: 300 * 1024 };
  const inline = setup(t, null, opts);
  const pooled = setup(t, newPool(t, { batchBytes: 64 * 1024, maxInFlightBytes: 512 * 1024 }), opts);
  const inputs = mixedChunks();
  const handles = inputs.map((raw) => hashBytes(raw));
  const a = inputs.map((raw, i) => inline.chunks.put(handles[i], ChunkKind.Data, raw));
  const b = inputs.map((raw, i) => pooled.chunks.put(handles[i], ChunkKind.Data, raw));
  t.deepEqual(b, a);
  inline.chunks.commit();
  pooled.chunks.commit();
  t.is(pooled.chunks.compressingCount, 0);
  t.deepEqual(pooled.chunks.stats, inline.chunks.stats);
  inputs.forEach((raw, i) => {
    const x = inline.index.getChunk(handles[i]);
    const y = pooled.index.getChunk(handles[i]);
    t.truthy(y);
    t.deepEqual([y?.codec, y?.storedLength, y?.rawLength], [x?.codec, x?.storedLength, x?.rawLength]);
    t.true(pooled.chunks.get(handles[i]).equals(raw));
  });
  // And read back cold, from the containers alone.
  const cold = new ChunkStore(pooled.index, pooled.blobs);
  for (const [i, raw] of inputs.entries()) t.true(cold.get(handles[i]).equals(raw));
});

test('objects written through a store with a compression worker have the same handles as inline', (t) => {
  const data = Buffer.concat([textBytes(3_000_000, 5), pseudoRandomBytes(1_000_000, 6), textBytes(500_000, 7)]);
  const roots = [0, 1].map((workers) => {
    const dir = path.join(tmpDir(t), 'store');
    CasStore.init(dir);
    const cas = CasStore.open(dir, { write: true, compressWorkers: workers });
    try {
      const { root } = cas.objects.writeObject(data);
      cas.chunks.commit();
      return { root: root?.toString('hex'), stored: cas.chunks.stats.storedBytes };
    } finally {
      cas.close();
    }
  });
  t.deepEqual(roots[1], roots[0]);
});

test('a chunk whose compression is in flight deduplicates, reads back, and gets its location', (t) => {
  const pool = newPool(t, { script: faultyWorker(t, 'slow'), batchBytes: 1 });
  const { index, chunks } = setup(t, pool);
  const a = textBytes(20_000, 11);
  const ha = put(chunks, a);
  t.is(chunks.compressingCount, 1, 'still with the worker');
  t.false(chunks.put(ha, ChunkKind.Data, a), 'a duplicate of a chunk in flight is not stored again');
  t.is(chunks.stats.cacheHits, 1);
  t.true(chunks.has(ha));
  t.true(chunks.get(ha).equals(a));
  t.is(chunks.compressingCount, 1, 'reading it did not wait for the worker');
  const loc = chunks.locate(ha);
  t.is(loc?.codec, Codec.Zstd);
  t.is(chunks.compressingCount, 0);
  t.false(index.hasChunk(ha));
  chunks.commit();
  t.true(index.hasChunk(ha));
  t.is(chunks.stats.newChunks, 1);
});

test('a commit after many puts leaves every object readable after reopening', (t) => {
  const dir = path.join(tmpDir(t), 'store');
  CasStore.init(dir, { containerSize: 1024 * 1024 });
  const objects = Array.from({ length: 12 }, (_, i) => (i % 4 === 0 ? pseudoRandomBytes(400_000 + i, i) : textBytes(700_000 + i * 1000, i)));
  const cas = CasStore.open(dir, { write: true, compressWorkers: 1 });
  const roots = objects.map((o) => cas.objects.writeObject(o).root as Handle);
  cas.chunks.commit();
  cas.close();
  const again = CasStore.open(dir, { write: true, compressWorkers: 0 });
  t.teardown(() => again.close());
  objects.forEach((o, i) => t.true(again.objects.readObject(roots[i], 0, o.length).equals(o)));
  const report = verifyStore(again, []);
  t.true(report.ok);
  t.true(report.chunksChecked > 100);
});

test('abort with compressions in flight drops them and leaves a consistent store', (t) => {
  const pool = newPool(t, { script: faultyWorker(t, 'slow'), batchBytes: 1 });
  const { index, blobs, chunks } = setup(t, pool);
  const kept = textBytes(30_000, 21);
  const hk = put(chunks, kept);
  chunks.commit();
  const dropped = [textBytes(25_000, 22), pseudoRandomBytes(25_000, 23), textBytes(26_000, 24)];
  const hd = dropped.map((d) => put(chunks, d));
  t.true(chunks.compressingCount > 0);
  chunks.abort();
  t.is(chunks.compressingCount, 0);
  for (const h of hd) t.false(chunks.has(h));
  // Results of the aborted jobs arrive meanwhile and must be ignored.
  const later = [textBytes(27_000, 25), textBytes(28_000, 26)];
  const hl = later.map((d) => put(chunks, d));
  chunks.commit();
  for (const h of hd) t.false(index.hasChunk(h));
  later.forEach((d, i) => t.true(chunks.get(hl[i]).equals(d)));
  t.true(chunks.get(hk).equals(kept));
  // Every indexed row is intact where the index says (no late payload landed on top of it).
  const cold = new ChunkStore(index, blobs);
  const rows = [...index.iterateChunks()];
  t.is(rows.length, 3);
  for (const r of rows) t.notThrows(() => cold.readVerified(r.handle, r));
  // Dropped chunks can be stored again.
  t.true(chunks.put(hd[0], ChunkKind.Data, dropped[0]));
  chunks.commit();
  t.true(cold.get(hd[0]).equals(dropped[0]));
});

test('a crashed worker surfaces as an error from put() or commit(), never a hang, and the store goes on', (t) => {
  const mark = 12_345;
  const pool = newPool(t, { script: faultyWorker(t, 'crash', mark), batchBytes: 16 * 1024 });
  const { index, chunks } = setup(t, pool);
  const before = textBytes(20_000, 31);
  const hb = put(chunks, before);
  chunks.commit();
  const batch = [textBytes(mark, 32), ...Array.from({ length: 20 }, (_, i) => textBytes(20_000 + i, 33 + i))];
  const err = t.throws(() => {
    for (const d of batch) put(chunks, d);
    chunks.commit();
  });
  t.regex(String(err?.message), /compression worker died/);
  for (const d of batch) t.false(index.hasChunk(hashBytes(d)));
  t.true(chunks.get(hb).equals(before));
  // New workers start; the same data (without the fatal chunk) goes in.
  const hs = batch.slice(1).map((d) => put(chunks, d));
  chunks.commit();
  batch.slice(1).forEach((d, i) => t.true(chunks.get(hs[i]).equals(d)));
});

test('a compression error fails the batch, naming the chunk', (t) => {
  const mark = 23_456;
  const pool = newPool(t, { script: faultyWorker(t, 'error', mark) });
  const { index, chunks } = setup(t, pool);
  const bad = textBytes(mark, 41);
  const other = textBytes(20_000, 42);
  put(chunks, other);
  const hbad = put(chunks, bad);
  const err = t.throws(() => chunks.commit());
  t.regex(String(err?.message), new RegExp(`compressing chunk ${hbad.toString('hex').slice(0, 12)}: injected compression failure`));
  t.false(index.hasChunk(hashBytes(other)), 'the whole batch is dropped');
  t.true(chunks.put(hashBytes(other), ChunkKind.Data, other));
  chunks.commit();
  t.true(index.hasChunk(hashBytes(other)));
});

test('a worker that stops answering is given up on after the stall timeout', (t) => {
  const mark = 34_567;
  const pool = newPool(t, { script: faultyWorker(t, 'hang', mark), stallTimeoutMs: 400 });
  const { chunks } = setup(t, pool);
  put(chunks, textBytes(20_000, 50));
  chunks.commit(); // the worker is up: a slow start on a busy machine is not what this test is about
  put(chunks, textBytes(mark, 51));
  const started = Date.now();
  t.throws(() => chunks.commit(), { message: /returned nothing for 400 ms/ });
  t.true(Date.now() - started < 10_000);
  const h = put(chunks, textBytes(20_000, 52));
  chunks.commit();
  t.true(chunks.has(h));
});

test('a worker that cannot start is given up on after the start timeout', (t) => {
  const pool = newPool(t, { script: faultyWorker(t, 'nostart'), startTimeoutMs: 500 });
  const { index, chunks } = setup(t, pool);
  const h = put(chunks, textBytes(20_000, 56));
  t.throws(() => chunks.commit(), { message: /did not start within 500 ms/ });
  t.false(index.hasChunk(h));
});

test('an append failure with compressions in flight surfaces and loses nothing committed', (t) => {
  const { index, blobs, chunks } = setup(t, newPool(t));
  const a = textBytes(20_000, 61);
  const ha = put(chunks, a);
  chunks.commit();
  blobs.failAppend(1, 'ENOSPC');
  const b = textBytes(20_000, 62);
  t.throws(() => {
    put(chunks, b);
    chunks.commit();
  }, { message: /ENOSPC/ });
  t.false(index.hasChunk(hashBytes(b)));
  t.true(chunks.get(ha).equals(a));
  put(chunks, b);
  chunks.commit();
  t.true(chunks.get(hashBytes(b)).equals(b));
});

test('compression workers never keep the process alive', (t) => {
  const dir = path.join(tmpDir(t), 'store');
  CasStore.init(dir);
  const store = new URL('../src/cas/store.js', import.meta.url).href;
  // Writes without closing the store: the process must still end on its own.
  const script = `
    const { CasStore } = await import(${JSON.stringify(store)});
    const cas = CasStore.open(${JSON.stringify(dir)}, { write: true, compressWorkers: 1 });
    cas.objects.writeObject(Buffer.from(Array.from({ length: 400_000 }, (_, i) => i.toString(36)).join(' ')));
    cas.chunks.commit();
    console.log('done');
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000, encoding: 'utf8' });
  t.is(r.stderr, '');
  t.is(r.stdout.trim(), 'done');
  t.is(r.status, 0, 'exited by itself, not killed by the timeout');
});
