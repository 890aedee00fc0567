import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { ChunkKind, Codec } from '../src/types.js';
import type { ContainerRecord } from '../src/types.js';
import { isStrataError } from '../src/errors.js';
import { hashBytes } from '../src/cas/hash.js';
import { compressChunk, decompressChunk, frameChecksummed } from '../src/cas/codec.js';
import { LocalBlobStore } from '../src/cas/local-blob-store.js';
import {
  ContainerWriter,
  RECORD_HEADER_BYTES,
  containerBlobName,
  readChunkPayload,
  readContainerRecords,
} from '../src/cas/container-file.js';
import { FaultyBlobStore } from './helpers/faulty-blob-store.js';
import { zstdFrameWithoutChecksum } from './helpers/frames.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

/** Compressible but not trivial: lines of varying words. */
function textBytes(length: number, seed = 1): Buffer {
  const words = ['alpha', 'beta', 'gamma', 'delta', 'chunk', 'handle', 'container', 'snapshot', 'tree', 'index'];
  const rnd = pseudoRandomBytes(length, seed);
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < length; i++) {
    const w = words[rnd[i % length] % words.length] + (rnd[(i * 7) % length] % 5 === 0 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, length);
}

function newStore(t: ExecutionContext, maxOpenReaders?: number): LocalBlobStore {
  const store = new LocalBlobStore(path.join(tmpDir(t), 'blobs'), { maxOpenReaders });
  t.teardown(() => store.close());
  return store;
}

interface Written {
  rec: ContainerRecord;
  raw: Buffer;
}

/** Appends chunks (alternating compressible and random, so both codecs appear) and returns them. */
function writeChunks(w: ContainerWriter, n: number, seed = 1): Written[] {
  const out: Written[] = [];
  for (let i = 0; i < n; i++) {
    const len = 1000 + ((i * 977) % 5000);
    const raw = i % 2 === 0 ? textBytes(len, seed + i) : pseudoRandomBytes(len, seed + i);
    // Random ones as Raw records, which stores written before checksummed frames hold.
    const { codec, payload } = i % 2 === 0 ? compressChunk(raw) : { codec: Codec.Raw, payload: raw };
    const kind = i % 3 === 2 ? ChunkKind.Node : ChunkKind.Data;
    out.push({ rec: w.append(hashBytes(raw), kind, codec, raw.length, payload), raw });
  }
  return out;
}

function throwsCode(t: ExecutionContext, fn: () => unknown, code: string): void {
  const e = t.throws(fn);
  t.is((e as NodeJS.ErrnoException | undefined)?.code, code, String(e));
}

// ---- codec ----

test('codec: compressible data round-trips through zstd and shrinks', (t) => {
  const raw = textBytes(16384);
  const { codec, payload } = compressChunk(raw);
  t.is(codec, Codec.Zstd);
  t.true(payload.length < raw.length / 2, `${payload.length} bytes`);
  t.deepEqual(decompressChunk(codec, payload, raw.length), raw);
});

test('codec: random data becomes a checksummed frame barely larger than itself and round-trips', (t) => {
  const raw = pseudoRandomBytes(16384, 7);
  const { codec, payload } = compressChunk(raw);
  t.is(codec, Codec.Zstd);
  t.true(payload.length <= raw.length + 32, `${payload.length} bytes for ${raw.length}`);
  t.true(frameChecksummed(payload));
  t.deepEqual(decompressChunk(codec, payload, raw.length), raw);
});

test('codec: a frame checksum catches a damaged payload; frames without one, or with trailing bytes, are not taken as checksummed', (t) => {
  for (const raw of [textBytes(16384, 3), pseudoRandomBytes(16384, 4)]) {
    const { payload } = compressChunk(raw);
    t.true(frameChecksummed(payload));
    const bad = Buffer.from(payload);
    bad[bad.length - 10] ^= 0x04; // in the last block's content (random data: raw bytes) or the checksum's neighbourhood
    const e = t.throws(() => decompressChunk(Codec.Zstd, bad, raw.length));
    t.true(isStrataError(e, 'ECORRUPT'), String(e));
    t.false(frameChecksummed(Buffer.concat([payload, Buffer.alloc(4)])), 'trailing bytes');
    t.false(frameChecksummed(payload.subarray(0, payload.length - 2)), 'cut short');
    const flagless = Buffer.from(payload);
    flagless[4] &= ~0x04;
    t.false(frameChecksummed(flagless), 'checksum flag cleared');
  }
  // A frame as stores wrote before: no checksum, still decodes.
  const raw = textBytes(8000, 5);
  const old = zstdFrameWithoutChecksum(raw);
  t.false(frameChecksummed(old));
  t.deepEqual(decompressChunk(Codec.Zstd, old, raw.length), raw);
});

test('codec: consecutive calls do not share output buffers', (t) => {
  const a = textBytes(8000, 1);
  const b = textBytes(8000, 2);
  const ca = compressChunk(a);
  const cb = compressChunk(b);
  t.deepEqual(decompressChunk(ca.codec, ca.payload, a.length), a);
  t.deepEqual(decompressChunk(cb.codec, cb.payload, b.length), b);
});

test('codec: empty chunk round-trips', (t) => {
  const { codec, payload } = compressChunk(Buffer.alloc(0));
  t.is(decompressChunk(codec, payload, 0).length, 0);
});

test('codec: wrong lengths, garbage and unknown codecs are ECORRUPT', (t) => {
  const raw = textBytes(10000);
  const { payload } = compressChunk(raw);
  const isCorrupt = (fn: () => unknown) => t.true(isStrataError(t.throws(fn), 'ECORRUPT'));
  isCorrupt(() => decompressChunk(Codec.Zstd, payload, raw.length - 1));
  isCorrupt(() => decompressChunk(Codec.Zstd, payload, raw.length + 1));
  isCorrupt(() => decompressChunk(Codec.Zstd, payload.subarray(0, payload.length - 3), raw.length));
  isCorrupt(() => decompressChunk(Codec.Zstd, pseudoRandomBytes(200), raw.length));
  isCorrupt(() => decompressChunk(Codec.Raw, raw, raw.length + 1));
  isCorrupt(() => decompressChunk(7 as Codec, raw, raw.length));
});

// ---- local blob store ----

test('blob store: create, append, sync, read, size, list, delete', (t) => {
  const store = newStore(t);
  const a = store.create('alpha');
  t.is(a.append(Buffer.from('hello ')), 0);
  t.is(a.append(Buffer.from('world')), 6);
  t.is(a.length, 11);
  a.sync();
  t.is(store.read('alpha', 0, 11).toString(), 'hello world');
  // Visible to readers while still open, and appends after a cached read are seen too.
  t.is(a.append(Buffer.from('!')), 11);
  t.is(store.read('alpha', 6, 6).toString(), 'world!');
  a.close();
  a.close();
  const b = store.create('beta');
  b.close();
  t.is(store.size('alpha'), 12);
  t.is(store.size('beta'), 0);
  t.is(store.read('beta', 0, 0).length, 0);
  t.deepEqual(store.list(), ['alpha', 'beta']);
  // Spread into a hashed subdirectory, not the root.
  const file = store.pathOf('alpha');
  t.true(fs.existsSync(file));
  t.regex(path.basename(path.dirname(file)), /^[0-9a-f]{2}$/);
  store.delete('alpha');
  t.deepEqual(store.list(), ['beta']);
  t.notThrows(() => store.delete('alpha'));
  t.throws(() => a.append(Buffer.from('x')));
});

test('blob store: spreads many names over many subdirectories', (t) => {
  const store = newStore(t);
  for (let i = 0; i < 200; i++) store.create(containerBlobName(i)).close();
  const dirs = fs.readdirSync(store.root);
  t.true(dirs.length > 100, `${dirs.length} subdirectories`);
  t.is(store.list().length, 200);
  t.deepEqual(store.list(), [...store.list()].sort());
});

test('blob store: errors are ENOENT, ETRUNC, EEXIST and EINVAL', (t) => {
  const store = newStore(t);
  const a = store.create('a');
  a.append(Buffer.alloc(100, 1));
  a.close();
  throwsCode(t, () => store.read('a', 90, 20), 'ETRUNC');
  throwsCode(t, () => store.read('a', 200, 1), 'ETRUNC');
  throwsCode(t, () => store.read('missing', 0, 1), 'ENOENT');
  throwsCode(t, () => store.size('missing'), 'ENOENT');
  throwsCode(t, () => store.create('a'), 'EEXIST');
  throwsCode(t, () => store.create('x/y'), 'EINVAL');
  throwsCode(t, () => store.create('..'), 'EINVAL');
  throwsCode(t, () => store.read('a', -1, 1), 'EINVAL');
  t.is(store.read('a', 90, 10).length, 10);
});

test('blob store: bounded reader cache stays correct, and delete drops the cached fd', (t) => {
  const store = newStore(t, 2);
  for (let i = 0; i < 5; i++) {
    const w = store.create(`b${i}`);
    w.append(Buffer.alloc(64, i));
    w.close();
  }
  const openFds = () => (fs.existsSync('/proc/self/fd') ? fs.readdirSync('/proc/self/fd').length : 0);
  const before = openFds();
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 5; i++) t.deepEqual(store.read(`b${i}`, 10, 4), Buffer.alloc(4, i));
  }
  t.true(openFds() - before <= 2, `${openFds() - before} descriptors kept open`);
  store.read('b4', 0, 1);
  store.delete('b4');
  // A stale cached descriptor would still read the unlinked file.
  throwsCode(t, () => store.read('b4', 0, 1), 'ENOENT');
  const again = store.create('b4');
  again.append(Buffer.alloc(8, 0xee));
  again.close();
  t.deepEqual(store.read('b4', 0, 8), Buffer.alloc(8, 0xee));
});

// ---- containers ----

test('container: write, seal, read back exactly the appended records', (t) => {
  const store = newStore(t);
  const w = new ContainerWriter(store, 3);
  const written = writeChunks(w, 40);
  t.is(w.count, 40);
  t.true(written.some((x) => x.rec.codec === Codec.Zstd) && written.some((x) => x.rec.codec === Codec.Raw));
  const sizeBeforeSeal = w.size;
  w.seal();
  t.throws(() => w.append(written[0].rec.handle, ChunkKind.Data, Codec.Raw, 1, Buffer.alloc(1)));
  t.is(store.size(containerBlobName(3)), sizeBeforeSeal + 40 * 50 + 56);

  const got = readContainerRecords(store, 3, { verifyPayloads: true });
  t.true(got.sealed);
  t.deepEqual(got.problems, []);
  t.deepEqual(got.records, written.map((x) => x.rec));
  for (const { rec, raw } of written) {
    t.deepEqual(decompressChunk(rec.codec, readChunkPayload(store, rec), rec.rawLength), raw);
  }
});

test('container: an empty sealed container has no records and no problems', (t) => {
  const store = newStore(t);
  new ContainerWriter(store, 0).seal();
  t.deepEqual(readContainerRecords(store, 0), { records: [], sealed: true, problems: [] });
});

test('container: names sort by id and refuse bad ids', (t) => {
  t.is(containerBlobName(42), 'c0000000042');
  t.true(containerBlobName(9) < containerBlobName(10));
  t.throws(() => containerBlobName(-1));
  t.throws(() => containerBlobName(1.5));
});

test('container: an unsealed container yields every complete record and a problem for a torn tail', (t) => {
  const store = newStore(t);
  const w = new ContainerWriter(store, 5);
  const written = writeChunks(w, 10);
  w.sync();
  // Left open, as after kill -9. Clean unsealed container first: no problems at all.
  let got = readContainerRecords(store, 5, { verifyPayloads: true });
  t.false(got.sealed);
  t.deepEqual(got.problems, []);
  t.deepEqual(got.records, written.map((x) => x.rec));

  // A half-written record: full header, half of its payload.
  const raw = textBytes(4000, 99);
  const { codec, payload } = compressChunk(raw);
  const hdr = Buffer.alloc(RECORD_HEADER_BYTES);
  hashBytes(raw).copy(hdr, 0);
  hdr.writeUInt32LE(payload.length, 32);
  hdr.writeUInt32LE(raw.length, 36);
  hdr.writeUInt8(codec, 40);
  hdr.writeUInt32LE(zlib.crc32(hdr.subarray(0, 44)), 44);
  const tornAt = w.size;
  fs.appendFileSync(store.pathOf(containerBlobName(5)), Buffer.concat([hdr, payload.subarray(0, payload.length >> 1)]));

  got = readContainerRecords(store, 5, { verifyPayloads: true });
  t.false(got.sealed);
  t.deepEqual(got.records, written.map((x) => x.rec));
  t.is(got.problems.length, 1);
  t.regex(got.problems[0], new RegExp(`c0000000005 @${tornAt}: truncated record`));
  w.abandon();
});

test('container: a tail shorter than a record header is reported', (t) => {
  const store = newStore(t);
  const w = new ContainerWriter(store, 6);
  const written = writeChunks(w, 3);
  w.sync();
  fs.appendFileSync(store.pathOf(containerBlobName(6)), Buffer.alloc(20, 0xab));
  const got = readContainerRecords(store, 6);
  t.deepEqual(got.records, written.map((x) => x.rec));
  t.is(got.problems.length, 1);
  t.regex(got.problems[0], /truncated record header/);
  w.abandon();
});

test('container: a corrupted footer checksum falls back to scanning', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 7);
  const written = writeChunks(w, 12);
  const metaOffset = w.size;
  w.seal();
  faulty.flipByteOnRead(containerBlobName(7), metaOffset + 50 * 4 + 33);
  const got = readContainerRecords(faulty, 7, { verifyPayloads: true });
  t.false(got.sealed);
  t.deepEqual(got.records, written.map((x) => x.rec));
  t.is(got.problems.length, 1, got.problems.join('\n'));
  t.regex(got.problems[0], /footer checksum mismatch/);
});

test('container: a damaged trailer length falls back to scanning', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 8);
  const written = writeChunks(w, 5);
  w.seal();
  const size = store.size(containerBlobName(8));
  faulty.flipByteOnRead(containerBlobName(8), size - 56 + 8, 0x01); // record count
  const got = readContainerRecords(faulty, 8);
  t.false(got.sealed);
  t.deepEqual(got.records, written.map((x) => x.rec));
  t.true(got.problems.some((p) => /footer is damaged/.test(p)));
});

test('container: a flipped payload byte is caught by verifyPayloads (raw and zstd)', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 9);
  const written = writeChunks(w, 8);
  w.seal();
  const zstd = written.find((x) => x.rec.codec === Codec.Zstd)!.rec;
  const raw = written.find((x) => x.rec.codec === Codec.Raw)!.rec;
  faulty.flipByteOnRead(containerBlobName(9), zstd.offset + (zstd.storedLength >> 1), 0x10);
  faulty.flipByteOnRead(containerBlobName(9), raw.offset + raw.storedLength - 1, 0x01);

  // Without verification the footer alone is trusted.
  t.is(readContainerRecords(faulty, 9).records.length, 8);

  const got = readContainerRecords(faulty, 9, { verifyPayloads: true });
  t.true(got.sealed);
  t.deepEqual(got.records, written.map((x) => x.rec).filter((r) => r !== zstd && r !== raw));
  t.is(got.problems.length, 2);
  for (const r of [zstd, raw]) {
    t.true(
      got.problems.some((p) => p.includes(`c0000000009 @${r.offset - RECORD_HEADER_BYTES}`)),
      got.problems.join('\n'),
    );
  }
  t.true(got.problems.some((p) => /does not hash to its handle/.test(p)));
});

test('container: a flipped header byte is caught by the crc', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 10);
  const written = writeChunks(w, 6);
  w.sync();
  const victim = written[3].rec;
  const headerAt = victim.offset - RECORD_HEADER_BYTES;
  faulty.flipByteOnRead(containerBlobName(10), headerAt + 34, 0x04); // inside storedLength

  // Unsealed: the scan stops at the damaged header and keeps everything before it.
  let got = readContainerRecords(faulty, 10);
  t.false(got.sealed);
  t.deepEqual(got.records, written.slice(0, 3).map((x) => x.rec));
  t.is(got.problems.length, 1);
  t.regex(got.problems[0], new RegExp(`@${headerAt}: invalid record header \\(crc32 mismatch\\)`));

  // Sealed: the footer still lists it, and verification re-checks the header.
  w.seal();
  got = readContainerRecords(faulty, 10, { verifyPayloads: true });
  t.true(got.sealed);
  t.deepEqual(got.records, written.filter((_, i) => i !== 3).map((x) => x.rec));
  t.is(got.problems.length, 1);
  t.regex(got.problems[0], /crc32 mismatch/);
});

test('container: a truncated sealed container is scanned up to the cut', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 11);
  const written = writeChunks(w, 6);
  w.seal();
  const cut = written[4].rec.offset + 10;
  faulty.truncate(containerBlobName(11), cut);
  const got = readContainerRecords(faulty, 11);
  t.false(got.sealed);
  t.deepEqual(got.records, written.slice(0, 4).map((x) => x.rec));
  t.regex(got.problems[0], /truncated record/);
  throwsCode(t, () => readChunkPayload(faulty, written[5].rec), 'ETRUNC');
  t.deepEqual(readChunkPayload(faulty, written[1].rec), readChunkPayload(store, written[1].rec));
});

test('container: a missing container is ENOENT; a foreign blob is reported, not parsed', (t) => {
  const store = newStore(t);
  throwsCode(t, () => readContainerRecords(store, 12), 'ENOENT');
  const b = store.create(containerBlobName(12));
  b.append(Buffer.from('definitely not a container'));
  b.close();
  const got = readContainerRecords(store, 12);
  t.deepEqual(got.records, []);
  t.regex(got.problems[0], /bad magic/);
});

test('container: ENOSPC on append surfaces, poisons the writer, and synced records survive', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 13);
  const written = writeChunks(w, 4);
  w.sync();
  faulty.failAppend(1, 'ENOSPC', 30); // a torn write: 30 bytes land, then the error
  const raw = textBytes(3000, 5);
  const c = compressChunk(raw);
  throwsCode(t, () => w.append(hashBytes(raw), ChunkKind.Data, c.codec, raw.length, c.payload), 'ENOSPC');
  t.is(w.count, 4);
  throwsCode(t, () => w.append(hashBytes(raw), ChunkKind.Data, c.codec, raw.length, c.payload), 'EIO');
  throwsCode(t, () => w.seal(), 'EIO');
  w.abandon();

  const got = readContainerRecords(store, 13, { verifyPayloads: true });
  t.false(got.sealed);
  t.deepEqual(got.records, written.map((x) => x.rec));
  t.is(got.problems.length, 1);
  t.regex(got.problems[0], /truncated record header/);
});

test('container: a failed sync surfaces and the container cannot be sealed afterwards', (t) => {
  const store = newStore(t);
  const faulty = new FaultyBlobStore(store);
  const w = new ContainerWriter(faulty, 14);
  writeChunks(w, 2);
  faulty.failSync(1, 'EIO');
  throwsCode(t, () => w.sync(), 'EIO');
  t.throws(() => w.seal());
  w.abandon();

  // A failure while sealing (the close's fsync) surfaces too.
  const w2 = new ContainerWriter(faulty, 15);
  writeChunks(w2, 2);
  faulty.failSync(1, 'ENOSPC');
  throwsCode(t, () => w2.seal(), 'ENOSPC');
});
