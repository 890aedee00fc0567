import test from 'ava';
import fc from 'fast-check';
import { diffObjects } from '../src/cas/diff.js';
import { Chunking } from '../src/types.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

/** Random content with runs of zeros (holes) and repeated pieces, built from a seed. */
function content(seed: number, length: number): Buffer {
  const b = pseudoRandomBytes(length, seed);
  for (let i = 0; i < 6; i++) {
    const at = (seed * 7919 * (i + 1)) % Math.max(1, length);
    b.fill(0, at, Math.min(length, at + 5000 + ((seed * (i + 3)) % 20000)));
  }
  return b;
}

test('Merkle range reads match the reference buffer (property)', (t) => {
  const { cas } = createTestStore(t, { small: true });
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1 << 20 }), fc.integer({ min: 0, max: 300_000 }), fc.constantFrom(Chunking.Cdc, Chunking.Fixed),
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 70_000 })), { minLength: 1, maxLength: 12 }),
      (seed, length, chunking, ranges) => {
        const ref = content(seed, length);
        const { root, size } = cas.objects.writeObject(ref, { chunking });
        if (length === 0) return root === null && size === 0;
        if (!root || size !== length) return false;
        if (!cas.objects.readObject(root, 0, length).equals(ref)) return false;
        for (const [o, l] of ranges) {
          const off = o % (length + 10);
          if (!cas.objects.readObject(root, off, l).equals(ref.subarray(Math.min(off, length), Math.min(length, off + l)))) return false;
        }
        return true;
      }),
    { numRuns: 40 },
  );
  t.pass();
});

test('a range read costs O(log n) node lookups, not a scan', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const data = pseudoRandomBytes(8 << 20, 3); // ~8k chunks of ~1 KiB
  const { root } = cas.objects.writeObject(data);
  cas.chunks.commit();
  let gets = 0;
  const orig = cas.chunks.get.bind(cas.chunks);
  cas.chunks.get = (h) => { gets++; return orig(h); };
  const fresh = cas.objects;
  (fresh as unknown as { nodes: { clear(): void } }).nodes.clear();
  t.true(fresh.readObject(root!, 5_000_000, 100).equals(data.subarray(5_000_000, 5_000_100)));
  const depth = fresh.node(root!).level + 1;
  t.true(gets <= depth + 2, `${gets} chunk reads for a 100-byte read at depth ${depth}`);
});

test('preloadNodes loads a range\'s lowest nodes in the background: leaves() then reads no node itself', async (t) => {
  const { cas } = createTestStore(t, { small: true });
  const data = pseudoRandomBytes(8 << 20, 4); // ~8k chunks of ~1 KiB: several levels of nodes
  const { root } = cas.objects.writeObject(data);
  cas.chunks.commit();
  const objects = cas.objects;
  (objects as unknown as { nodes: { clear(): void } }).nodes.clear();
  const depth = objects.node(root!).level + 1;
  t.true(depth >= 2, `depth ${depth}`);
  let gets = 0;
  const orig = cas.chunks.get.bind(cas.chunks);
  cas.chunks.get = (h) => { gets++; return orig(h); };
  await objects.preloadNodes(root!, 2_000_000, 6_000_000);
  const upper = gets; // the few nodes above the lowest level, loaded as leaves() would
  t.true(upper <= 2 * depth, `${upper} synchronous node reads while preloading`);
  const leaves = objects.leaves(root!, 2_000_000, 6_000_000);
  t.is(gets, upper, 'no node read by leaves() over the preloaded range');
  t.true(leaves.length > 1000);
  t.deepEqual(leaves.map((l) => l.offset), objects.leaves(root!, 2_000_000, 6_000_000).map((l) => l.offset));
  objects.leaves(root!, 7_000_000, 7_100_000);
  t.true(gets > upper, 'outside the range, leaves() still loads its own nodes');
  await t.notThrowsAsync(objects.preloadNodes(root!, 5, 5), 'an empty range is nothing to do');
});

test('holes and all-zero blocks cost no storage and read back as zeros', (t) => {
  const { cas } = createTestStore(t);
  const data = Buffer.alloc(64 << 20);
  data.write('hello', 32 << 20);
  const before = cas.chunks.stats.storedBytes;
  const { root, size } = cas.objects.writeObject(data, { chunking: Chunking.Fixed });
  t.is(size, data.length);
  t.true(cas.chunks.stats.storedBytes - before < 4096, 'only the one non-zero block and nodes are stored');
  const ext = cas.objects.extents(root!);
  t.deepEqual(ext.map((e) => e.hole), [true, false, true]);
  t.true(cas.objects.readObject(root!, (32 << 20) - 10, 20).equals(data.subarray((32 << 20) - 10, (32 << 20) + 10)));
});

test('shifted data deduplicates: an insertion near the start stores about one chunk', (t) => {
  const { cas } = createTestStore(t);
  const v1 = pseudoRandomBytes(16 << 20, 9);
  const v2 = Buffer.concat([v1.subarray(0, 1000), Buffer.from('inserted bytes'), v1.subarray(1000)]);
  const a = cas.objects.writeObject(v1);
  const newBefore = cas.chunks.stats.newBytes;
  const b = cas.objects.writeObject(v2);
  const added = cas.chunks.stats.newBytes - newBefore;
  t.true(added < 200_000, `stored ${added} new bytes for a 14-byte insertion into 16 MiB`);
  const d = diffObjects(cas.objects, a.root, b.root);
  const changed = d.changed.reduce((s, e) => s + e.length, 0);
  t.true(changed > 0 && changed < 200_000, `diff reports ${changed} changed bytes`);
  t.true(d.changed[0].offset <= 1000 && d.changed[0].offset + d.changed[0].length >= 1014);
  t.true(d.nodesRead < 20, `diff read ${d.nodesRead} nodes`);
});

test('temporal dedup: the predecessor at the same offset is checked before the index', (t) => {
  const { cas } = createTestStore(t);
  const v1 = pseudoRandomBytes(8 << 20, 5);
  const v2 = Buffer.from(v1);
  v2.fill(7, 4 << 20, (4 << 20) + 4096); // an in-place change, like a disk image block
  const a = cas.objects.writeObject(v1, { chunking: Chunking.Fixed });
  const s0 = { ...cas.chunks.stats };
  const b = cas.objects.writeObject(v2, { chunking: Chunking.Fixed, predecessor: a.root });
  const s1 = cas.chunks.stats;
  const depth = cas.objects.node(b.root!).level + 1;
  t.is(s1.temporalHits - s0.temporalHits, 127, 'every unchanged 64 KiB block is a temporal hit');
  t.is(s1.newChunks - s0.newChunks, 1 + depth, 'one data chunk plus the nodes on its path');
  t.is(s1.indexHits - s0.indexHits, 0);
});

test('diff of objects: in-place block changes are reported at their offsets', (t) => {
  const { cas } = createTestStore(t);
  const v1 = pseudoRandomBytes(32 << 20, 11);
  const v2 = Buffer.from(v1);
  v2.fill(1, 3 << 20, (3 << 20) + 100);
  v2.fill(2, 20 << 20, (20 << 20) + 200_000);
  const a = cas.objects.writeObject(v1, { chunking: Chunking.Fixed });
  const b = cas.objects.writeObject(v2, { chunking: Chunking.Fixed });
  const d = diffObjects(cas.objects, a.root, b.root);
  const blk = 64 * 1024;
  t.deepEqual(d.changed, [
    { offset: 3 << 20, length: blk },
    { offset: Math.floor((20 << 20) / blk) * blk, length: Math.ceil(((20 << 20) + 200_000) / blk) * blk - (20 << 20) },
  ]);
  t.deepEqual(diffObjects(cas.objects, a.root, a.root).changed, []);
});
