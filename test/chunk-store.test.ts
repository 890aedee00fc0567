import path from 'node:path';
import test from 'ava';
import { ChunkStore, DEFAULT_CHUNK_STORE_OPTIONS } from '../src/cas/chunk-store.js';
import { hashBytes } from '../src/cas/hash.js';
import { IndexDb } from '../src/cas/index-db.js';
import { LocalBlobStore } from '../src/cas/local-blob-store.js';
import { ChunkKind } from '../src/types.js';
import { FaultyBlobStore } from './helpers/faulty-blob-store.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

function setup(t: Parameters<typeof tmpDir>[0]) {
  const dir = tmpDir(t);
  const index = new IndexDb(path.join(dir, 'index.db'));
  t.teardown(() => index.close());
  const blobs = new FaultyBlobStore(new LocalBlobStore(path.join(dir, 'containers')));
  return { index, blobs, chunks: new ChunkStore(index, blobs, DEFAULT_CHUNK_STORE_OPTIONS) };
}

test('durability order: index rows commit only after the container bytes are synced', (t) => {
  const { index, blobs, chunks } = setup(t);
  const a = pseudoRandomBytes(20_000, 1);
  const ha = hashBytes(a);
  chunks.put(ha, ChunkKind.Data, a);
  t.false(index.hasChunk(ha), 'nothing is indexed before a commit');
  blobs.failSync(1, 'EIO');
  const err = t.throws(() => chunks.commit());
  t.regex(String(err?.message), /EIO|sync/i);
  t.false(index.hasChunk(ha), 'a failed fsync leaves the index untouched');
});

test('a full disk surfaces as an error and loses nothing already committed', (t) => {
  const { index, blobs, chunks } = setup(t);
  const a = pseudoRandomBytes(20_000, 2);
  const ha = hashBytes(a);
  chunks.put(ha, ChunkKind.Data, a);
  chunks.commit();
  blobs.failAppend(1, 'ENOSPC');
  const b = pseudoRandomBytes(20_000, 3);
  t.throws(() => chunks.put(hashBytes(b), ChunkKind.Data, b), { message: /ENOSPC/ });
  t.true(index.hasChunk(ha));
  t.true(chunks.get(ha).equals(a));
  // Once space is back, the same store goes on in a new container.
  t.true(chunks.put(hashBytes(b), ChunkKind.Data, b));
  chunks.commit();
  t.true(chunks.get(hashBytes(b)).equals(b));
});

test('dedup tiers: a repeated chunk is found in the cache, then (after restart) in the index', (t) => {
  const { index, blobs, chunks } = setup(t);
  const a = pseudoRandomBytes(20_000, 4);
  const ha = hashBytes(a);
  t.true(chunks.put(ha, ChunkKind.Data, a));
  t.false(chunks.put(ha, ChunkKind.Data, a));
  t.is(chunks.stats.cacheHits, 1);
  chunks.commit();
  const again = new ChunkStore(index, blobs, DEFAULT_CHUNK_STORE_OPTIONS);
  t.false(again.put(ha, ChunkKind.Data, a));
  t.is(again.stats.indexHits, 1);
  t.is(again.stats.newChunks, 0);
});

test('presentChunks answers for any number of handles, in batches, duplicates included', (t) => {
  const { index, chunks } = setup(t);
  const stored = Array.from({ length: 150 }, (_, i) => pseudoRandomBytes(300, 1000 + i));
  for (const b of stored) chunks.put(hashBytes(b), ChunkKind.Data, b);
  chunks.commit();
  const missing = Array.from({ length: 70 }, (_, i) => hashBytes(pseudoRandomBytes(300, 5000 + i)));
  const asked = [...stored.map(hashBytes), ...missing, hashBytes(stored[0])];
  const found = new Set(index.presentChunks(asked).map((h) => h.toString('hex')));
  t.is(found.size, 150);
  for (const b of stored) t.true(found.has(hashBytes(b).toString('hex')));
  for (const h of missing) t.false(found.has(h.toString('hex')));
  t.deepEqual(index.presentChunks([]), []);
  t.is(index.presentChunks([missing[0]]).length, 0);
});

test('locateMany finds what locate finds, in batches, for pending, cached, stored and missing chunks', (t) => {
  const { index, blobs, chunks } = setup(t);
  const stored = Array.from({ length: 150 }, (_, i) => pseudoRandomBytes(300, 1000 + i));
  for (const b of stored) chunks.put(hashBytes(b), ChunkKind.Data, b);
  chunks.commit();
  const pending = pseudoRandomBytes(300, 9000);
  chunks.put(hashBytes(pending), ChunkKind.Data, pending); // not committed yet
  const missing = Array.from({ length: 70 }, (_, i) => hashBytes(pseudoRandomBytes(300, 5000 + i)));
  const asked = [...stored.map(hashBytes), ...missing, hashBytes(stored[0]), hashBytes(pending)];
  const fresh = new ChunkStore(index, blobs, DEFAULT_CHUNK_STORE_OPTIONS); // empty caches: all from the index
  fresh.locate(hashBytes(stored[3])); // one cached
  t.deepEqual(fresh.locateMany(asked.slice(0, -1)), asked.slice(0, -1).map((h) => fresh.locate(h)));
  t.is(fresh.locateMany(missing).filter(Boolean).length, 0);
  const all = chunks.locateMany(asked);
  t.deepEqual(all, asked.map((h) => chunks.locate(h)));
  t.truthy(all[all.length - 1], 'a pending chunk is located like locate() locates it');
  t.deepEqual(chunks.locateMany([]), []);
});

test('prefetch: put() after a batched lookup finds stored chunks and stores new ones exactly once', async (t) => {
  const { index, blobs, chunks } = setup(t);
  const old = Array.from({ length: 40 }, (_, i) => pseudoRandomBytes(2000, 2000 + i));
  for (const b of old) chunks.put(hashBytes(b), ChunkKind.Data, b);
  chunks.commit();
  // A fresh store (empty caches) must learn from the index which of these it holds.
  const again = new ChunkStore(index, blobs, DEFAULT_CHUNK_STORE_OPTIONS);
  const fresh = Array.from({ length: 40 }, (_, i) => pseudoRandomBytes(2000, 3000 + i));
  const all = [...old, ...fresh, fresh[0]];
  again.prefetch(all.map(hashBytes));
  const isNew = all.map((b) => again.put(hashBytes(b), ChunkKind.Data, b));
  t.deepEqual(isNew, [...old.map(() => false), ...fresh.map(() => true), false]);
  t.is(again.stats.indexHits, 40);
  t.is(again.stats.newChunks, 40);
  again.commit();
  for (const b of [...old, ...fresh]) t.true(again.get(hashBytes(b)).equals(b));
  // What prefetch found missing lasts only for the synchronous run: a chunk stored meanwhile by
  // someone else (here another store on the same index) is then found, not stored twice.
  const late = pseudoRandomBytes(2000, 4000);
  again.prefetch([hashBytes(late)]);
  await Promise.resolve();
  const other = new ChunkStore(index, blobs, DEFAULT_CHUNK_STORE_OPTIONS);
  other.put(hashBytes(late), ChunkKind.Data, late);
  other.commit();
  t.false(again.put(hashBytes(late), ChunkKind.Data, late));
});

test('commit: references to chunks new in the batch and to stored ones both count', (t) => {
  const { index, chunks } = setup(t);
  const old = pseudoRandomBytes(1000, 6000);
  chunks.put(hashBytes(old), ChunkKind.Data, old);
  chunks.commit();
  const fresh = pseudoRandomBytes(1000, 6001);
  chunks.put(hashBytes(fresh), ChunkKind.Data, fresh);
  const n1 = pseudoRandomBytes(100, 6002);
  const n2 = pseudoRandomBytes(100, 6003);
  chunks.put(hashBytes(n1), ChunkKind.Node, n1, [hashBytes(old), hashBytes(fresh)]);
  chunks.put(hashBytes(n2), ChunkKind.Node, n2, [hashBytes(fresh)]);
  chunks.commit();
  t.is(index.getChunk(hashBytes(old))?.refs, 1);
  t.is(index.getChunk(hashBytes(fresh))?.refs, 2);
  t.is(index.getChunk(hashBytes(n1))?.refs, 0);
  const live = index.db.prepare('SELECT sum(live_bytes) FROM containers').pluck().get() as number;
  const stored = index.db.prepare('SELECT sum(stored) FROM chunks').pluck().get() as number;
  t.is(live, stored, 'live bytes per container add up to the chunks stored in them');
});
