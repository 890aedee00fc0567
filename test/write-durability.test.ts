import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { CasStore } from '../src/cas/store.js';
import { StrataFs } from '../src/fs/strata-fs.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

// When the mount's store fsyncs: container bytes always before the index rows naming them
// commit (so power loss never leaves the index naming missing bytes), but the mount's flusher
// does it off the thread (fs.fsync on libuv's pool), so a close never blocks FUSE on the disk;
// the index itself is fsynced only when durability is asked for (fsync, snapshot, unmount).

const O_RDWR = 2;

/** A relaxed store (as the daemon opens it) whose fsync(2) calls and index commits are logged in order. */
function spiedStore(t: import('ava').ExecutionContext): { cas: CasStore; events: string[] } {
  const dir = path.join(tmpDir(t), 'store');
  CasStore.init(dir);
  const cas = CasStore.open(dir, { write: true, relaxed: true, compressWorkers: 0 });
  const events: string[] = [];
  const fsyncSync = fs.fsyncSync;
  const fsync = fs.fsync;
  fs.fsyncSync = (fd: number) => { events.push('fsync'); fsyncSync(fd); };
  (fs as { fsync: unknown }).fsync = (fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
    events.push('fsync-async');
    fsync(fd, cb);
  };
  const db = cas.index.db;
  const transaction = db.transaction.bind(db);
  db.transaction = ((fn: (...a: unknown[]) => unknown) => {
    const run = transaction(fn);
    return (...a: unknown[]) => {
      const out = run(...a);
      if (!db.inTransaction) events.push('commit');
      return out;
    };
  }) as typeof db.transaction;
  t.teardown(() => {
    fs.fsyncSync = fsyncSync;
    (fs as { fsync: unknown }).fsync = fsync;
    cas.close();
  });
  return { cas, events };
}

test.serial('closing a written file commits after an fsync off the thread; fsync syncs the container before the index commit', async (t) => {
  const { cas, events } = spiedStore(t);
  const f = StrataFs.open(cas);
  const data = pseudoRandomBytes(200_000, 1);
  const fh = await f.create('/live/small', 0o644, O_RDWR, 0, 0);
  await f.write(fh, data, 0);
  await f.flush(fh);
  await f.release(fh);
  await f.flushAll(false);
  const commit = events.lastIndexOf('commit');
  t.true(commit > 0, `the content was committed: ${events.join(' ')}`);
  t.false(events.includes('fsync'), `no blocking fsync for a close: ${events.join(' ')}`);
  t.true(events.slice(0, commit).includes('fsync-async'), `the container was fsynced (asynchronously) before the commit: ${events.join(' ')}`);

  events.length = 0;
  const fh2 = await f.open('/live/small', O_RDWR);
  await f.write(fh2, Buffer.from('changed'), 10);
  await f.fsync(fh2);
  const lastCommit = events.lastIndexOf('commit');
  t.true(lastCommit > 0, `a commit after the fsync: ${events.join(' ')}`);
  t.true(events.slice(0, lastCommit).some((e) => e.startsWith('fsync')), `the container fsync comes first: ${events.join(' ')}`);
  await f.release(fh2);
  const expected = Buffer.from(data);
  Buffer.from('changed').copy(expected, 10);
  const rh = await f.open('/live/small', 0);
  t.true((await f.read(rh, 0, data.length)).equals(expected));
  await f.release(rh);
  await f.close();
});

test.serial('a checkpoint of the relaxed index fsyncs the containers first', (t) => {
  const { cas, events } = spiedStore(t);
  t.is(cas.index.db.pragma('wal_autocheckpoint', { simple: true }), 0, 'SQLite never checkpoints on its own');
  cas.objects.writeObject(pseudoRandomBytes(100_000, 2));
  cas.chunks.commit();
  t.deepEqual(events.slice(-4), ['fsync', 'fsync', 'fsync', 'commit'], `chunk rows commit after their container (file, bucket, directory) is fsynced: ${events.join(' ')}`);
  cas.objects.writeObject(pseudoRandomBytes(100_000, 3)); // appended, not committed
  events.length = 0;
  cas.index.checkpoint();
  t.deepEqual(events.slice(0, 1), ['fsync']);
});

test.serial('fsync returns although another handle keeps writing to the file', async (t) => {
  const { cas } = spiedStore(t);
  const f = StrataFs.open(cas);
  const fh = await f.create('/live/busy', 0o644, O_RDWR, 0, 0);
  const piece = pseudoRandomBytes(131072, 3);
  let at = 0;
  for (; at < 20 * 1024 * 1024; at += piece.length) await f.write(fh, piece, at);
  let synced = false;
  const fsynced = Promise.resolve(f.fsync(fh)).then(() => { synced = true; });
  let after = 0;
  while (!synced && after < 4000) {
    await f.write(fh, piece, at);
    at += piece.length;
    after++;
    await new Promise((r) => setImmediate(r));
  }
  await fsynced;
  t.true(after < 4000, `fsync still waiting after ${after} more writes`);
  t.log(`fsync returned after ${after} more writes`);
  await f.release(fh);
  await f.close();
  const rh = await f.open('/live/busy', 0);
  t.is((await f.getattr('/live/busy')).size, at);
  t.true((await f.read(rh, at - piece.length, piece.length)).equals(piece));
});
