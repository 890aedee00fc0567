import path from 'node:path';
import test from 'ava';
import { ChunkOffload } from '../src/cas/chunk-offload.js';
import { CasStore } from '../src/cas/store.js';
import { FileBuffer } from '../src/fs/file-buffer.js';
import { rewriteContent, rewriteContentAsync } from '../src/fs/rewrite-content.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

// The flusher's asynchronous rewrite, chunking on a worker, builds the very objects the
// synchronous one does.

function store(t: import('ava').ExecutionContext): CasStore {
  const dir = path.join(tmpDir(t), 'store');
  CasStore.init(dir);
  const cas = CasStore.open(dir, { write: true, compressWorkers: 1 });
  t.teardown(() => cas.close());
  return cas;
}

test('appended data chunked on the worker gives the same object as chunking on the calling thread', async (t) => {
  const cas = store(t);
  const offload = new ChunkOffload();
  t.teardown(() => offload.close());
  const base = pseudoRandomBytes(3_000_000, 31);
  const { root } = cas.objects.writeObject(base);
  const cases: Array<[string, (b: FileBuffer) => void]> = [
    ['appended in 128 KiB writes', (b) => { for (let at = base.length; at < base.length + 6_000_000; at += 131072) b.write(at, pseudoRandomBytes(131072, at)); }],
    ['rewritten from the middle on', (b) => b.write(1_000_000, pseudoRandomBytes(5_000_000, 7))],
    ['a gap of zeros past the end, then data', (b) => b.write(base.length + 2_000_000, pseudoRandomBytes(3_000_000, 8))],
    ['zeros written as data', (b) => b.write(base.length, Buffer.alloc(4_000_000))],
  ];
  for (const [name, change] of cases) {
    const b = new FileBuffer(root, base.length);
    change(b);
    const sync = rewriteContent(cas.objects, b);
    const job = b.beginFlush();
    const async = await rewriteContentAsync(cas.objects, job, offload);
    t.is(async.size, sync.size, name);
    t.true(async.root!.equals(sync.root!), name);
    b.endFlush(job, async.root);
    t.true(cas.objects.readObject(async.root!, 0, async.size).equals(b.read(cas.objects, 0, async.size)), name);
  }
  t.is(offload.broken, null);
  t.true(offload.streams >= 3, `${offload.streams} streams went to the worker`);
});

test('a chunk worker that dies breaks the offload with an error instead of hanging', async (t) => {
  const cas = store(t);
  const offload = new ChunkOffload(new URL('data:text/javascript,process.exit(3)'));
  const b = new FileBuffer(null, 0);
  b.write(0, pseudoRandomBytes(4_000_000, 9));
  const job = b.beginFlush();
  await t.throwsAsync(rewriteContentAsync(cas.objects, job, offload), { message: /chunk worker failed/ });
  t.truthy(offload.broken);
  // The flusher then chunks on its own thread.
  const again = await rewriteContentAsync(cas.objects, job, offload);
  t.true(again.root!.equals(rewriteContent(cas.objects, job).root!));
  offload.close();
});
