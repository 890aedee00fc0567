import test from 'ava';
import { BufferPool, copyBytes } from '../src/cas/buffer-pool.js';
import { compressChunk } from '../src/cas/codec.js';
import { DecodePool } from '../src/cas/decode-pool.js';
import { hashBytes } from '../src/cas/hash.js';
import { isStrataError } from '../src/errors.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

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
