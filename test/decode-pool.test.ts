import test from 'ava';
import type { ExecutionContext } from 'ava';
import { BufferPool, copyBytes } from '../src/cas/buffer-pool.js';
import { ContainerWriter, RECORD_HEADER_BYTES, containerBlobName } from '../src/cas/container-file.js';
import { LocalBlobStore } from '../src/cas/local-blob-store.js';
import { ChunkKind, Codec } from '../src/types.js';
import { zstdFrameWithoutChecksum } from './helpers/frames.js';
import { compressChunk } from '../src/cas/codec.js';
import { DecodePool } from '../src/cas/decode-pool.js';
import { hashBytes } from '../src/cas/hash.js';
import { isStrataError } from '../src/errors.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

// The decode workers: raw bytes back for good payloads, ECORRUPT for damaged ones, inline or not.

function batch(chunks: Buffer[]) {
  const payloads = chunks.map((c) => compressChunk(c));
  const data = Buffer.concat(payloads.map((p) => p.payload));
  let at = 0;
  const items = chunks.map((c, i) => {
    const it = { handle: hashBytes(c), codec: payloads[i].codec, rawLength: c.length, start: at, length: payloads[i].payload.length };
    at += payloads[i].payload.length;
    return it;
  });
  return { data, items };
}

const text = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => `line ${seed} ${i}\n`).join(''));

for (const [name, chunks] of [
  ['on a worker (a batch of a few MiB)', [text(40_000, 1), pseudoRandomBytes(300_000, 2), text(50_000, 3)]],
  ['inline (a small batch)', [text(100, 4), pseudoRandomBytes(2000, 5), text(50, 6)]],
] as const) {
  test(`decodes and verifies ${name}; a damaged payload is ECORRUPT and spares its neighbours`, async (t) => {
    const pool = new DecodePool(1);
    t.teardown(() => pool.close());
    const good = batch([...chunks]);
    const got = (await pool.decode(Buffer.from(good.data), good.items)).chunks;
    got.forEach((g, i) => t.true(Buffer.isBuffer(g) && g.equals(chunks[i]), `chunk ${i}`));

    // Into a buffer of the caller's (larger than needed), which comes back with the input's.
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const into = await pool.decode(Buffer.from(good.data), good.items, new ArrayBuffer(total + 1000));
    t.is(into.out.byteLength, total + 1000);
    into.chunks.forEach((g, i) => t.true(Buffer.isBuffer(g) && g.buffer === into.out && g.equals(chunks[i]), `chunk ${i} in the given buffer`));
    t.true(into.input.byteLength >= good.data.length, 'the input buffer is handed back');

    const bad = batch([...chunks]);
    bad.data[bad.items[1].start + 5] ^= 0x20; // the middle chunk
    const results = (await pool.decode(bad.data, bad.items)).chunks;
    t.true(Buffer.isBuffer(results[0]) && results[0].equals(chunks[0]));
    t.true(Buffer.isBuffer(results[2]) && results[2].equals(chunks[2]));
    t.true(isStrataError(results[1], 'ECORRUPT'));
  });
}

test('shared buffers from the BufferPool are decoded in place on the worker and come back as the same objects', async (t) => {
  const pool = new DecodePool(1);
  t.teardown(() => pool.close());
  const buffers = new BufferPool();
  const chunks = [text(40_000, 7), pseudoRandomBytes(300_000, 8), text(50_000, 9)];
  const good = batch(chunks);
  const input = buffers.take(good.data.length);
  const out = buffers.take(chunks.reduce((n, c) => n + c.length, 0));
  t.true(input instanceof SharedArrayBuffer && out instanceof SharedArrayBuffer);
  good.data.copy(Buffer.from(input));
  const r = await pool.decode(Buffer.from(input, 0, good.data.length), good.items, out);
  t.is(r.out, out, 'the same output buffer, not a copy');
  t.is(r.input, input, 'the same input buffer');
  r.chunks.forEach((g, i) => t.true(Buffer.isBuffer(g) && g.buffer === out && g.equals(chunks[i]), `chunk ${i} decoded into the shared buffer`));

  // A damaged payload in a shared buffer is still ECORRUPT, and spares its neighbours.
  Buffer.from(input)[good.items[1].start + 5] ^= 0x20;
  const bad = await pool.decode(Buffer.from(input, 0, good.data.length), good.items, out);
  t.true(Buffer.isBuffer(bad.chunks[0]) && bad.chunks[0].equals(chunks[0]));
  t.true(isStrataError(bad.chunks[1], 'ECORRUPT'));
  t.true(Buffer.isBuffer(bad.chunks[2]) && bad.chunks[2].equals(chunks[2]));
});

test('the BufferPool recycles shared buffers by size class and ignores unshared or odd-sized ones', (t) => {
  const buffers = new BufferPool(1024 * 1024);
  const a = buffers.take(100_000);
  t.true(a instanceof SharedArrayBuffer);
  t.is(a.byteLength, 128 * 1024);
  buffers.give(a);
  t.is(buffers.idleBytes, 128 * 1024);
  t.is(buffers.take(128 * 1024), a, 'the same buffer again');
  t.is(buffers.idleBytes, 0);
  buffers.give(new ArrayBuffer(128 * 1024));
  buffers.give(new SharedArrayBuffer(100_000));
  t.is(buffers.idleBytes, 0, 'an unshared and an odd-sized buffer are not kept');
  for (let i = 0; i < 10; i++) buffers.give(new SharedArrayBuffer(256 * 1024));
  t.is(buffers.idleBytes, 1024 * 1024, 'no more than the limit is kept');
});

test('copyBytes copies a view of shared memory into a buffer at an offset, and refuses to overrun it', (t) => {
  const shared = Buffer.from(new BufferPool().take(1 << 16));
  pseudoRandomBytes(1 << 16, 3).copy(shared);
  const dst = Buffer.alloc(1000, 0xaa);
  copyBytes(shared.subarray(5000, 5600), dst, 100);
  t.true(dst.subarray(100, 700).equals(shared.subarray(5000, 5600)));
  t.is(dst[99], 0xaa);
  t.is(dst[700], 0xaa);
  copyBytes(shared.subarray(0, 0), dst, 1000); // empty: nothing to do, even at the end
  t.throws(() => copyBytes(shared.subarray(0, 10), dst, 995), { instanceOf: RangeError });
  t.is(dst[995], 0xaa, 'an overrun writes nothing');
});

test('check() hashes raw chunks where they lie: on a worker for a shared buffer, here for a small or unshared one; a changed byte or a piece past the end fails alone', async (t) => {
  const pool = new DecodePool(1);
  t.teardown(() => pool.close());
  const buffers = new BufferPool();
  for (const [name, chunks] of [
    ['large', [text(40_000, 10), pseudoRandomBytes(300_000, 11), text(50_000, 12)]],
    ['small', [text(100, 13), pseudoRandomBytes(2000, 14), text(50, 15)]],
  ] as const) {
    const raw = Buffer.concat([...chunks]);
    let at = 0;
    const items = chunks.map((c) => { const it = { handle: hashBytes(c), start: at, length: c.length }; at += c.length; return it; });
    const shared = Buffer.from(buffers.take(raw.length), 0, raw.length);
    raw.copy(shared);
    for (const [kind, data] of [['shared', shared], ['unshared', Buffer.from(raw)]] as const) {
      t.deepEqual(await pool.check(data, items), [true, true, true], `${name} ${kind}: all sound`);
      data[items[1].start + 7] ^= 1;
      t.deepEqual(await pool.check(data, items), [true, false, true], `${name} ${kind}: the changed chunk alone`);
      data[items[1].start + 7] ^= 1;
      t.deepEqual(await pool.check(data.subarray(0, data.length - 1), items), [true, true, false], `${name} ${kind}: the last chunk is cut short`);
    }
  }

  // A worker that goes away with a batch in flight: the batch is checked here instead, not lost.
  const chunks = [text(40_000, 16), pseudoRandomBytes(300_000, 17)];
  const shared = Buffer.from(buffers.take(chunks[0].length + chunks[1].length), 0, chunks[0].length + chunks[1].length);
  Buffer.concat(chunks).copy(shared);
  shared[chunks[0].length + 3] ^= 1;
  const items = [{ handle: hashBytes(chunks[0]), start: 0, length: chunks[0].length }, { handle: hashBytes(chunks[1]), start: chunks[0].length, length: chunks[1].length }];
  const pending = pool.check(shared, items);
  pool.close();
  t.deepEqual(await pending, [true, false]);
});

// A headed batch: container bytes from the first record header on, as ObjectStore reads them.
function headedBatch(t: ExecutionContext, records: Array<{ raw: Buffer; payload?: Buffer; codec?: Codec; handle?: Buffer }>) {
  const blobs = new LocalBlobStore(tmpDir(t));
  const w = new ContainerWriter(blobs, 1);
  const recs = records.map((r) => {
    const { codec, payload } = r.payload ? { codec: r.codec ?? Codec.Zstd, payload: r.payload } : compressChunk(r.raw);
    return w.append(r.handle ?? hashBytes(r.raw), ChunkKind.Data, codec, r.raw.length, payload);
  });
  w.seal();
  const from = recs[0].offset - RECORD_HEADER_BYTES;
  const last = recs[recs.length - 1];
  const data = blobs.read(containerBlobName(1), from, last.offset + last.storedLength - from);
  const items = recs.map((r) => ({ handle: r.handle, codec: r.codec, rawLength: r.rawLength, start: r.offset - from, length: r.storedLength }));
  return { data, items };
}

for (const [name, size] of [['on a worker', 200_000], ['inline', 2000]] as const) {
  test(`headed batches ${name}: checksummed frames decode; damage is ECORRUPT whichever way the chunk is checked`, async (t) => {
    const pool = new DecodePool(1);
    t.teardown(() => pool.close());
    const chunks = [text(size / 8, 1), pseudoRandomBytes(size, 2), text(size / 8, 3), text(size / 10, 4)];
    const good = headedBatch(t, chunks.map((raw) => ({ raw })));
    const got = (await pool.decode(Buffer.from(good.data), good.items, undefined, true)).chunks;
    got.forEach((g, i) => t.true(Buffer.isBuffer(g) && g.equals(chunks[i]), `chunk ${i}`));

    // A damaged payload: caught by the frame's checksum (random data sits in raw blocks, so only
    // the checksum can tell), sparing its neighbours.
    for (const k of [0, 1]) {
      const bad = Buffer.from(good.data);
      bad[good.items[k].start + good.items[k].length - 20] ^= 0x10;
      const r = (await pool.decode(bad, good.items, undefined, true)).chunks;
      t.true(isStrataError(r[k], 'ECORRUPT'), `chunk ${k}: ${String(r[k])}`);
      r.forEach((g, i) => { if (i !== k) t.true(Buffer.isBuffer(g) && g.equals(chunks[i]), `neighbour ${i} of ${k}`); });
    }

    // A damaged header only costs the shortcut: the chunk is hashed instead, and is sound.
    const header = Buffer.from(good.data);
    header[good.items[2].start - RECORD_HEADER_BYTES + 42] ^= 0x01; // a reserved byte: the header's crc32 fails
    const h = (await pool.decode(header, good.items, undefined, true)).chunks;
    t.true(Buffer.isBuffer(h[2]) && h[2].equals(chunks[2]));

    // A location that finds another chunk's record (a stale index, a reused container): its header
    // names that chunk, so it is hashed, and fails against the handle asked for.
    const swapped = good.items.map((it, i) => (i === 3 ? { ...it, handle: good.items[2].handle } : it));
    t.true(isStrataError((await pool.decode(Buffer.from(good.data), swapped, undefined, true)).chunks[3], 'ECORRUPT'));
  });
}

test('in a headed batch, only a checksummed frame whose header names its handle skips BLAKE3; old frames and unheaded batches are hashed', async (t) => {
  const pool = new DecodePool(1);
  t.teardown(() => pool.close());
  const raw = text(30_000, 5);
  const other = text(30_000, 6);
  const claimed = hashBytes(other); // the record says it holds `other`, but holds `raw`
  const old = zstdFrameWithoutChecksum(raw);
  const b = headedBatch(t, [
    { raw, handle: claimed },
    { raw, handle: claimed, payload: old },
    { raw: pseudoRandomBytes(100_000, 7) },
  ]);
  const items = b.items.map((it, i) => (i < 2 ? { ...it, handle: claimed } : it));
  const headed = (await pool.decode(Buffer.from(b.data), items, undefined, true)).chunks;
  // The header and the frame's checksum are what vouch for the first: it is taken as is.
  t.true(Buffer.isBuffer(headed[0]) && headed[0].equals(raw), 'checksummed frame named by its header');
  t.true(isStrataError(headed[1], 'ECORRUPT'), 'a frame without a checksum is hashed, and fails');
  t.true(Buffer.isBuffer(headed[2]));
  const unheaded = (await pool.decode(Buffer.from(b.data), items)).chunks;
  t.true(isStrataError(unheaded[0], 'ECORRUPT'), 'without headers every chunk is hashed');
});
