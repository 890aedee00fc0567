import test from 'ava';
import fc from 'fast-check';
import { compressChunk } from '../src/cas/codec.js';
import { compressDelta, decompressDelta } from '../src/cas/delta-codec.js';
import { handleKey, hashBytes } from '../src/cas/hash.js';
import { isHole } from '../src/cas/merkle-node.js';
import { iterateLeaves } from '../src/cas/object-store.js';
import { BASE_BYTES_BUDGET, BASES_PER_CHUNK, leafBases, leavesInRange, nodeBase, nodePositions } from '../src/replication/delta.js';
import { planOffer } from '../src/replication/plan.js';
import { Chunking } from '../src/types.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

// Delta replication below the wire: the lookup of an old version's chunks by byte range (checked
// against a brute-force walk of every leaf), the choice of bases, and the delta codec.

/** Content with holes (zero runs) and repeated runs, so trees hold holes and shared chunks. */
function content(seed: number, size: number): Buffer {
  const b = pseudoRandomBytes(size, seed);
  for (let o = 0; o + 5000 < size; o += 23_000) b.fill(0, o, o + 5000);
  return b;
}

test('leavesInRange finds exactly the data leaves a brute-force walk finds, for any range', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const objects = [
    cas.objects.writeObject(content(1, 1_000_000), { chunking: Chunking.Cdc }),
    cas.objects.writeObject(content(2, 800_000), { chunking: Chunking.Fixed }),
  ];
  for (const { root, size } of objects) {
    const all = [...iterateLeaves(cas.objects, root!)].filter((l) => !isHole(l.handle));
    const top = cas.objects.node(root!);
    t.true(top.level >= 1 && top.handles.length >= 8, 'ranges cross the boundaries of several leaf-list nodes');
    fc.assert(fc.property(fc.integer({ min: -100, max: size + 100 }), fc.integer({ min: 1, max: 40_000 }), (from, len) => {
      const want = all.filter((l) => l.offset < from + len && l.offset + l.length > from);
      const got = leavesInRange(cas.objects, root!, from, from + len);
      t.deepEqual(got.map((l) => [l.offset, l.length, l.handle.toString('hex')]), want.map((l) => [l.offset, l.length, l.handle.toString('hex')]));
    }), { numRuns: 300 });
  }
});

test('leafBases: the old chunk at the same offset for fixed chunking; neighbours within budget for CDC', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const old = content(3, 100_000);
  const fixed = cas.objects.writeObject(old, { chunking: Chunking.Fixed }).root!;
  const leaves = [...iterateLeaves(cas.objects, fixed)];
  const l = leaves.find((x) => !isHole(x.handle) && x.offset > 10_000)!;
  t.deepEqual(leafBases(cas.objects, fixed, l.offset, l.length, Chunking.Fixed), [l.handle]);
  // Beyond the old end (the file grew): its last data leaf.
  const last = leaves.filter((x) => !isHole(x.handle)).at(-1)!;
  t.deepEqual(leafBases(cas.objects, fixed, 200_000, 1024, Chunking.Fixed), [last.handle]);

  const cdc = cas.objects.writeObject(old, { chunking: Chunking.Cdc }).root!;
  const all = [...iterateLeaves(cas.objects, cdc)].filter((x) => !isHole(x.handle));
  fc.assert(fc.property(fc.integer({ min: 0, max: 99_000 }), fc.integer({ min: 1, max: 4096 }), (offset, length) => {
    const bases = leafBases(cas.objects, cdc, offset, length, Chunking.Cdc);
    t.true(bases.length >= 1 && bases.length <= BASES_PER_CHUNK, `${bases.length} bases at ${offset}+${length}`);
    const chosen = bases.map((h) => all.find((x) => x.handle.equals(h))!);
    t.true(chosen.every(Boolean), 'every base is a leaf of the old object');
    t.true(chosen.every((c, i) => i === 0 || chosen[i - 1].offset < c.offset), 'in offset order');
    const bytes = chosen.reduce((n, c) => n + c.length, 0);
    t.true(bytes <= Math.max(BASE_BYTES_BUDGET, chosen[0].length), `${bytes} bytes of bases`);
    // The old leaf over the new chunk's middle is always among them.
    const mid = Math.min(offset + Math.floor(length / 2), 99_999);
    const over = all.find((x) => x.offset <= mid && mid < x.offset + x.length);
    if (over) t.true(bases.some((h) => h.equals(over.handle)), `base over offset ${mid}`);
  }), { numRuns: 200 });
});

test('nodeBase finds the old node at the same level and offset', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const a = content(4, 400_000);
  const b = Buffer.from(a);
  b.write('changed!', 250_000);
  const ra = cas.objects.writeObject(a, { chunking: Chunking.Fixed }).root!;
  const rb = cas.objects.writeObject(b, { chunking: Chunking.Fixed, predecessor: ra }).root!;
  const all = new Set<string>();
  const walk = (h: Buffer) => { all.add(handleKey(h)); const n = cas.objects.node(h); if (n.level > 0) for (const c of n.handles) if (!isHole(c)) walk(c); };
  walk(rb);
  const pos = nodePositions(cas.objects, rb, all);
  t.deepEqual(pos.get(handleKey(rb)), { level: cas.objects.node(rb).level, offset: 0 });
  t.deepEqual(nodeBase(cas.objects, ra, pos.get(handleKey(rb))!), ra, 'root for root');
  // The level-0 node over the change in b pairs with the level-0 node over the same offset in a.
  const changed = [...pos].find(([h, p]) => p.level === 0 && p.offset <= 250_000 && 250_000 < p.offset + cas.objects.objectSize(Buffer.from(h, 'latin1')));
  t.truthy(changed);
  const base = nodeBase(cas.objects, ra, changed![1])!;
  t.is(cas.objects.node(base).level, 0);
  const leafA = leavesInRange(cas.objects, ra, 250_000, 250_001)[0];
  t.true(cas.objects.node(base).handles.some((h) => h.equals(leafA.handle)), 'the old node lists the old chunk at that offset');
});

test('the plan pairs changed chunks and nodes with their old versions', (t) => {
  const { cas, cat } = createTestStore(t, { small: true });
  const a = content(5, 300_000);
  const b = Buffer.from(a);
  b.write('x', 123_456);
  const fa = cas.objects.writeObject(a, { chunking: Chunking.Fixed }).root!;
  const fb = cas.objects.writeObject(b, { chunking: Chunking.Fixed, predecessor: fa }).root!;
  const snap = (root: Buffer, name: string) => cat.create({
    name, parent: null, source: null, logicalBytes: 300_000, fileCount: 1,
    entry: { name: Buffer.from('img'), type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, atimeNs: 0n, size: 300_000, content: root },
  });
  cas.chunks.commit();
  const s1 = snap(fa, 's1');
  const s2 = snap(fb, 's2');
  const items = [...planOffer(cas.objects, s2, s1)];
  t.true(items.length > 2);
  for (const it of items) t.true(it.bases.length >= 1, `item ${it.handle.toString('hex').slice(0, 8)} has a base`);
  const leaf = items.find((i) => i.source)!;
  const oldLeaf = leavesInRange(cas.objects, fa, leaf.source!.offset, leaf.source!.offset + 1)[0];
  t.deepEqual(leaf.bases, [oldLeaf.handle]);
  // Without a neighbour nothing has bases.
  t.true([...planOffer(cas.objects, s2, null)].every((i) => i.bases.length === 0));
});

test('the delta codec round-trips, is small for a small change, and refuses other bases or lengths', (t) => {
  const base = pseudoRandomBytes(64 * 1024, 6);
  const raw = Buffer.from(base);
  raw.write('a small change', 30_000);
  const payload = compressDelta(raw, [base]);
  t.true(payload.length < 200, `delta of ${payload.length} bytes`);
  t.true(payload.length * 50 < compressChunk(raw).payload.length);
  t.true(decompressDelta(payload, raw.length, [base]).equals(raw));
  // Other bases decode to other bytes (caught by the hash) or not at all; a wrong length is refused.
  const other = pseudoRandomBytes(64 * 1024, 7);
  let wrong: Buffer | null = null;
  try { wrong = decompressDelta(payload, raw.length, [other]); } catch (e) { t.is((e as { code?: string }).code, 'ECORRUPT'); }
  if (wrong) t.false(hashBytes(wrong).equals(hashBytes(raw)));
  t.throws(() => decompressDelta(payload, raw.length - 1, [base]), { code: 'ECORRUPT' });
  t.throws(() => decompressDelta(Buffer.from('not zstd'), raw.length, [base]), { code: 'ECORRUPT', message: /does not decode/ });
  // A base that starts with zstd's dictionary magic is still raw content.
  const magic = Buffer.concat([Buffer.from([0x37, 0xa4, 0x30, 0xec]), base.subarray(4)]);
  const raw2 = Buffer.concat([magic.subarray(0, 1000), Buffer.from('!'), magic.subarray(1001)]);
  t.true(decompressDelta(compressDelta(raw2, [magic]), raw2.length, [magic]).equals(raw2));
  // Several bases, content spanning two of them.
  const b1 = pseudoRandomBytes(20_000, 8);
  const b2 = pseudoRandomBytes(20_000, 9);
  const span = Buffer.concat([b1.subarray(10_000), Buffer.from('inserted'), b2.subarray(0, 10_000)]);
  const p2 = compressDelta(span, [b1, b2]);
  t.true(p2.length < 300, `spanning delta of ${p2.length} bytes`);
  t.true(decompressDelta(p2, span.length, [b1, b2]).equals(span));
});
