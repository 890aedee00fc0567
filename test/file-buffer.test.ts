import test from 'ava';
import fc from 'fast-check';
import { FileBuffer } from '../src/fs/file-buffer.js';
import { rewriteContent } from '../src/fs/rewrite-content.js';
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

test('a flush running while the file changes: reads see every write, and ending or aborting it loses nothing', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const base = pseudoRandomBytes(30_000, 5);
  const { root } = cas.objects.writeObject(base);
  fc.assert(
    fc.property(
      fc.array(fc.oneof(
        fc.tuple(fc.constant('w'), fc.nat({ max: 40_000 }), fc.nat({ max: 6000 }), fc.nat()),
        fc.tuple(fc.constant('t'), fc.nat({ max: 40_000 }), fc.constant(0), fc.constant(0)),
        fc.tuple(fc.constantFrom('begin', 'end', 'abort'), fc.constant(0), fc.constant(0), fc.constant(0)),
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
          } else if (op === 't') {
            b.truncate(off);
            ref = off <= ref.length ? ref.subarray(0, off) : Buffer.concat([ref, Buffer.alloc(off - ref.length)]);
          } else if (op === 'begin') {
            if (!b.flushing) b.beginFlush();
          } else if (b.flushing) {
            const job = b.flushing;
            if (op === 'end') b.endFlush(job, rewriteContent(cas.objects, job).root);
            else b.abortFlush(job);
          }
          if (b.size !== ref.length || !b.read(cas.objects, 0, ref.length + 10).equals(ref)) return false;
        }
        if (b.flushing) b.endFlush(b.flushing, rewriteContent(cas.objects, b.flushing).root);
        const stored = rewriteContent(cas.objects, b);
        if (stored.root === null) return ref.length === 0;
        return cas.objects.readObject(stored.root, 0, ref.length + 10).equals(ref);
      }),
    { numRuns: 300 },
  );
  t.pass();
});
