import test from 'ava';
import fc from 'fast-check';
import { FileBuffer } from '../src/fs/file-buffer.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

test('a file buffer reads like the reference after random writes and truncations over stored content', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const base = pseudoRandomBytes(50_000, 3);
  const { root } = cas.objects.writeObject(base);
  fc.assert(
    fc.property(
      fc.array(fc.oneof(
        fc.tuple(fc.constant('w'), fc.nat({ max: 70_000 }), fc.nat({ max: 9000 }), fc.nat()),
        fc.tuple(fc.constant('t'), fc.nat({ max: 70_000 }), fc.constant(0), fc.constant(0)),
      ), { maxLength: 30 }),
      (ops) => {
        const b = new FileBuffer(root, base.length);
        let ref = Buffer.from(base);
        for (const [op, off, len, seed] of ops) {
          if (op === 'w') {
            const data = pseudoRandomBytes(len, seed + 1);
            b.write(off, data);
            if (len > 0 && off + len > ref.length) ref = Buffer.concat([ref, Buffer.alloc(off + len - ref.length)]);
            data.copy(ref, off);
          } else {
            b.truncate(off);
            ref = off <= ref.length ? ref.subarray(0, off) : Buffer.concat([ref, Buffer.alloc(off - ref.length)]);
          }
        }
        return b.size === ref.length && b.read(cas.objects, 0, ref.length + 10).equals(ref) &&
          b.dirtyBytes === b.extents.reduce((s, e) => s + e.data.length, 0);
      }),
    { numRuns: 200 },
  );
  t.pass();
});

test('sequential writes append extents without copying what is buffered', (t) => {
  const b = new FileBuffer(null, 0);
  const piece = Buffer.alloc(131072, 1);
  for (let i = 0; i < 128; i++) b.write(i * piece.length, piece);
  t.is(b.extents.length, 128);
  t.is(b.dirtyBytes, 128 * piece.length);
});
