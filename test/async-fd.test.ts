import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { AsyncFds, DIRECT_ALIGN, DIRECT_SLACK, openDirect } from '../src/cas/async-fd.js';
import { BufferPool } from '../src/cas/buffer-pool.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

test('direct reads return the bytes of any range, unaligned offsets and lengths and the file end included, into recycled buffers', async (t) => {
  const file = path.join(tmpDir(t), 'native.img');
  // Not a multiple of the block size, so the last read ends inside a block.
  const data = pseudoRandomBytes(3 * 1024 * 1024 + 1234, 7);
  fs.writeFileSync(file, data);
  const fd = openDirect(file);
  if (fd === null) return t.fail(`${path.dirname(file)} refuses O_DIRECT: run the tests where the temporary directory allows it`);
  const fds = new AsyncFds();
  t.teardown(() => fds.close(fd));
  t.throws(() => openDirect(path.join(path.dirname(file), 'missing.img')), { code: 'ENOENT' }, 'only EINVAL means refused');
  const pool = new BufferPool();
  const ranges: Array<[number, number]> = [
    [0, DIRECT_ALIGN], [1, 100], [DIRECT_ALIGN - 1, 2], [12345, 1024 * 1024], [0, data.length],
    [data.length - 5000, 5000], [data.length - 10, 100], [data.length, 10], [data.length + DIRECT_ALIGN, 10],
  ];
  for (const [offset, length] of ranges) {
    const ab = pool.take(length + DIRECT_SLACK);
    const got = await fds.readDirect(fd, ab, offset, length);
    t.is(got.buffer, ab, 'the bytes stay in the caller\'s buffer');
    t.true(got.equals(data.subarray(offset, offset + length)), `bytes at ${offset} (+${length})`);
    pool.give(ab);
  }
  // Concurrent reads into different buffers, in any order.
  const reads = [5, 3, 1, 4, 2, 0].map((k) => ({ k, ab: pool.take(512 * 1024 + DIRECT_SLACK) }));
  const done = await Promise.all(reads.map(({ k, ab }) => fds.readDirect(fd, ab, k * 512 * 1024 + 17, 512 * 1024)));
  reads.forEach(({ k }, i) => t.true(done[i].equals(data.subarray(k * 512 * 1024 + 17, (k + 1) * 512 * 1024 + 17)), `concurrent read ${k}`));
  // A buffer without the slack is refused before any read.
  await t.throwsAsync(fds.readDirect(fd, new SharedArrayBuffer(4096), 1, 4096), { instanceOf: RangeError });
});
