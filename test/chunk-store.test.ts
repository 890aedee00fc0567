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
