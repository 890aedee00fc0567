import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { patchObject, type Patch } from '../src/cas/object-patch.js';
import { hashBytes } from '../src/cas/hash.js';
import { iterateLeaves, ObjectBuilder } from '../src/cas/object-store.js';
import type { CasStore } from '../src/cas/store.js';
import { isStrataError } from '../src/errors.js';
import { ChunkKind, Chunking, type Handle } from '../src/types.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

const MiB = 1024 * 1024;

/** Random bytes with zero runs long enough to become holes (several zero chunks at the small sizes). */
function content(seed: number, length: number): Buffer {
  const b = pseudoRandomBytes(length, seed);
  for (let i = 0; i < 4; i++) {
    const at = (seed * 7919 * (i + 1)) % Math.max(1, length);
    b.fill(0, at, Math.min(length, at + 1000 + ((seed * (i + 3)) % 40_000)));
  }
  return b;
}

/** What the patched object must hold: patches applied in order, then resized. */
function applyPatches(base: Buffer, patches: Patch[], newSize: number): Buffer {
  const end = patches.reduce((m, p) => Math.max(m, p.offset + p.data.length), Math.max(base.length, newSize));
  const out = Buffer.alloc(end);
  base.copy(out);
  for (const p of patches) p.data.copy(out, p.offset);
  return out.subarray(0, newSize);
}

/** Counts bytes of data chunks and of nodes read through the chunk store from now on. */
function countReads(t: ExecutionContext, cas: CasStore): { data: number; nodes: number } {
  const counts = { data: 0, nodes: 0 };
  const orig = cas.chunks.get.bind(cas.chunks);
  cas.chunks.get = (h: Handle) => {
    const b = orig(h);
    if (cas.chunks.locate(h)?.kind === ChunkKind.Data) counts.data += b.length;
    else counts.nodes += b.length;
    return b;
  };
  t.teardown(() => { cas.chunks.get = orig; });
  // Nodes read earlier are cached; start cold so the node walk is counted too.
  (cas.objects as unknown as { nodes: { clear(): void } }).nodes.clear();
  return counts;
}

const patchArb = (maxOffset: number) => fc.record({
  offset: fc.nat({ max: maxOffset }),
  length: fc.nat({ max: 20_000 }),
  fill: fc.constantFrom('random', 'zeros', 'ones'),
  seed: fc.integer({ min: 1, max: 1 << 30 }),
});

function makePatch(p: { offset: number; length: number; fill: string; seed: number }): Patch {
  const data = p.fill === 'random' ? pseudoRandomBytes(p.length, p.seed) : Buffer.alloc(p.length, p.fill === 'ones' ? 1 : 0);
  return { offset: p.offset, data };
}

for (const chunking of [Chunking.Cdc, Chunking.Fixed]) {
  const name = chunking === Chunking.Cdc ? 'CDC' : 'fixed';

  test(`${name}: patched content matches the reference and its root equals a full re-chunk (property)`, (t) => {
    const { cas } = createTestStore(t, { small: true });
    const objects = cas.objects;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1 << 30 }),
        fc.nat({ max: 200_000 }),
        // Several rounds: each result is the next base, so a patched object must itself patch exactly.
        fc.array(fc.record({
          patches: fc.array(patchArb(300_000), { maxLength: 6 }),
          size: fc.oneof(fc.constant(-1), fc.constant(-2), fc.nat({ max: 320_000 })),
        }), { minLength: 1, maxLength: 3 }),
        (seed, length, rounds) => {
          let ref = content(seed, length);
          let info = objects.writeObject(ref, { chunking });
          for (const round of rounds) {
            const patches = round.patches.map(makePatch);
            // -1 keeps the size, -2 grows it to cover every patch; otherwise an arbitrary size.
            const newSize = round.size === -1 ? ref.length
              : round.size === -2 ? patches.reduce((m, p) => Math.max(m, p.offset + p.data.length), ref.length)
                : round.size;
            ref = applyPatches(ref, patches, newSize);
            // The chunking is not passed: it must follow the base's.
            info = info.root ? patchObject(objects, info.root, patches, newSize) : patchObject(objects, null, patches, newSize, chunking);
            if (info.size !== ref.length) return false;
            const full = objects.writeObject(ref, { chunking });
            if (ref.length === 0) {
              if (info.root !== null || full.root !== null) return false;
              continue;
            }
            if (!info.root || !full.root) return false;
            if (objects.node(info.root).chunking !== chunking) return false;
            if (!objects.readObject(info.root, 0, ref.length).equals(ref)) return false;
            if (!info.root.equals(full.root)) return false;
          }
          return true;
        }),
      { numRuns: 150 },
    );
    t.pass();
  });

  test(`${name}: 100 bytes patched in the middle of 64 MiB reads and hashes about one chunk`, (t) => {
    const { cas } = createTestStore(t);
    const data = pseudoRandomBytes(64 * MiB, 3);
    const base = cas.objects.writeObject(data, { chunking });
    cas.chunks.commit();
    const patch = { offset: 30_000_000, data: pseudoRandomBytes(100, 77) };
    const reads = countReads(t, cas);
    const s0 = { ...cas.chunks.stats };
    const out = patchObject(cas.objects, base.root, [patch], data.length);
    const hashed = cas.chunks.stats.bytesSeen - s0.bytesSeen;
    const stored = cas.chunks.stats.newBytes - s0.newBytes;
    t.log(`hashed ${hashed}, data read ${reads.data}, nodes read ${reads.nodes}, new bytes ${stored}`);
    t.true(hashed <= 256 * 1024, `hashed ${hashed} bytes`);
    t.true(reads.data <= 256 * 1024, `read ${reads.data} bytes of data`);
    if (chunking === Chunking.Fixed) {
      t.is(hashed, 64 * 1024, 'exactly the one block touched');
      t.is(reads.data, 64 * 1024);
    }
    const ref = applyPatches(data, [patch], data.length);
    t.true(cas.objects.readObject(out.root!, 29_990_000, 20_000).equals(ref.subarray(29_990_000, 30_010_000)));
    t.true(out.root!.equals(cas.objects.writeObject(ref, { chunking }).root!), 'same object as a full re-chunk');
  });
}

test('a write 1 GiB past the end of a small file becomes a hole without feeding the zeros', (t) => {
  const { cas } = createTestStore(t);
  const small = pseudoRandomBytes(10_000, 5);
  const base = cas.objects.writeObject(small);
  const at = 1024 * MiB + 10_000;
  const patch = { offset: at, data: pseudoRandomBytes(100, 6) };
  const s0 = { ...cas.chunks.stats };
  const out = patchObject(cas.objects, base.root, [patch], at + 100);
  const seen = cas.chunks.stats.bytesSeen - s0.bytesSeen;
  const stored = cas.chunks.stats.storedBytes - s0.storedBytes;
  t.true(seen < 256 * 1024, `${seen} bytes went through the chunker`);
  t.true(stored < 64 * 1024, `${stored} bytes stored`);
  t.is(out.size, at + 100);
  const ext = cas.objects.extents(out.root!);
  t.deepEqual(ext.map((e) => e.hole), [false, true, false]);
  t.true(ext[1].length > 1000 * MiB);
  t.true(cas.objects.readObject(out.root!, 0, 20_000).equals(Buffer.concat([small, Buffer.alloc(10_000)])));
  t.true(cas.objects.readObject(out.root!, at - 50, 150).equals(Buffer.concat([Buffer.alloc(50), patch.data])));
});

test('a patch inside a large hole re-chunks near the patch only and equals a full re-chunk', (t) => {
  const { cas } = createTestStore(t);
  const data = Buffer.alloc(48 * MiB);
  pseudoRandomBytes(MiB, 1).copy(data, 0);
  pseudoRandomBytes(MiB, 2).copy(data, 47 * MiB);
  for (const chunking of [Chunking.Cdc, Chunking.Fixed]) {
    const base = cas.objects.writeObject(data, { chunking });
    cas.chunks.commit();
    const patch = { offset: 20 * MiB + 12_345, data: pseudoRandomBytes(100, 3) };
    const reads = countReads(t, cas);
    const s0 = { ...cas.chunks.stats };
    const out = patchObject(cas.objects, base.root, [patch], data.length);
    const seen = cas.chunks.stats.bytesSeen - s0.bytesSeen;
    t.true(seen <= 2 * 64 * 1024, `${seen} bytes went through the chunker`);
    t.is(reads.data, 0, 'no data chunk is read');
    const ref = applyPatches(data, [patch], data.length);
    t.true(out.root!.equals(cas.objects.writeObject(ref, { chunking }).root!));
    t.deepEqual(cas.objects.extents(out.root!).map((e) => e.hole), [false, true, false, true, false]);
  }
});

test('truncation: to zero, into a data chunk, into a hole', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const data = content(42, 300_000);
  data.fill(0, 100_000, 200_000);
  for (const chunking of [Chunking.Cdc, Chunking.Fixed]) {
    const base = cas.objects.writeObject(data, { chunking });
    t.deepEqual(patchObject(cas.objects, base.root, [], 0), { root: null, size: 0 });

    const dataLeaf = [...iterateLeaves(cas.objects, base.root!)].find((l) => l.offset > 30_000 && l.length > 100)!;
    const hole = cas.objects.extents(base.root!).find((e) => e.hole && e.length > 50_000)!;
    for (const size of [dataLeaf.offset + 37, hole.offset + Math.floor(hole.length / 2) + 3]) {
      const out = patchObject(cas.objects, base.root, [], size);
      t.is(out.size, size);
      t.true(cas.objects.readObject(out.root!, 0, size).equals(data.subarray(0, size)));
      t.true(out.root!.equals(cas.objects.writeObject(data.subarray(0, size), { chunking }).root!), `truncated to ${size}`);
    }
    const intoHole = patchObject(cas.objects, base.root, [], hole.offset + 10_000);
    const ext = cas.objects.extents(intoHole.root!);
    t.deepEqual(ext[ext.length - 1], { offset: hole.offset, length: 10_000, hole: true }, 'the hole is shortened');
  }
});

test('an empty object extended by a hole then data', (t) => {
  const { cas } = createTestStore(t, { small: true });
  for (const chunking of [Chunking.Cdc, Chunking.Fixed]) {
    const patch = { offset: 5 * MiB, data: pseudoRandomBytes(1000, 8) };
    const out = patchObject(cas.objects, null, [patch], 5 * MiB + 1000, chunking);
    t.is(cas.objects.node(out.root!).chunking, chunking);
    t.deepEqual(cas.objects.extents(out.root!).map((e) => e.hole), [true, false]);
    const ref = applyPatches(Buffer.alloc(0), [patch], 5 * MiB + 1000);
    t.true(cas.objects.readObject(out.root!, 0, ref.length).equals(ref));
    t.true(out.root!.equals(cas.objects.writeObject(ref, { chunking }).root!));
    // Growing without patches only adds a hole.
    const grown = patchObject(cas.objects, out.root, [], 9 * MiB);
    t.true(grown.root!.equals(cas.objects.writeObject(applyPatches(ref, [], 9 * MiB), { chunking }).root!));
  }
  t.deepEqual(patchObject(cas.objects, null, [], 0), { root: null, size: 0 });
});

test('later patches win where they overlap; patches past the new size are cut off', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const base = cas.objects.writeObject(Buffer.alloc(10, 0x61));
  const patches = [
    { offset: 2, data: Buffer.from('BBBBBB') },
    { offset: 4, data: Buffer.from('cc') },
    { offset: 0, data: Buffer.from('d') },
    { offset: 8, data: Buffer.from('eeeeee') },
  ];
  const out = patchObject(cas.objects, base.root, patches, 12);
  t.is(cas.objects.readObject(out.root!, 0, 100).toString(), 'daBBccBBeeee');
});

test('a hole starting in the last slot of a full node is split as writeObject splits it', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const block = 1024; // the small store's fixed block
  // 1023 blocks whose handles never end a node, so the first zero block fills the node (1024 children):
  // writeObject then starts the rest of the zero run as a new hole in the next node.
  const quiet = (seed: number) => {
    for (let s = seed; ; s += 100_000) {
      const b = pseudoRandomBytes(block, s);
      if ((hashBytes(b).readUInt16LE(30) & 0x3f) !== 0) return b;
    }
  };
  const parts: Buffer[] = [];
  for (let i = 1; i <= 1023; i++) parts.push(quiet(i));
  parts.push(Buffer.alloc(10 * block), pseudoRandomBytes(5 * block, 99));
  const data = Buffer.concat(parts);
  const base = cas.objects.writeObject(data, { chunking: Chunking.Fixed });
  const first = cas.objects.node(cas.objects.node(base.root!).handles[0]);
  t.is(first.handles.length, 1024, 'the first node is full');
  t.is(first.lengths[1023], block, 'and ends with the first zero block only');
  for (const patch of [
    { offset: 3 * block, data: quiet(5000) },
    { offset: 1025 * block + 7, data: Buffer.from('inside the hole') },
  ]) {
    const out = patchObject(cas.objects, base.root, [patch], data.length);
    const ref = applyPatches(data, [patch], data.length);
    t.true(out.root!.equals(cas.objects.writeObject(ref, { chunking: Chunking.Fixed }).root!));
  }
});

test('a chunking other than the base\'s re-chunks everything but still skips known zeros', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const data = content(7, 150_000);
  const base = cas.objects.writeObject(data, { chunking: Chunking.Cdc });
  const patch = { offset: 70_000, data: Buffer.from('switch') };
  const out = patchObject(cas.objects, base.root, [patch], 400_000, Chunking.Fixed);
  const ref = applyPatches(data, [patch], 400_000);
  t.is(cas.objects.node(out.root!).chunking, Chunking.Fixed);
  t.true(out.root!.equals(cas.objects.writeObject(ref, { chunking: Chunking.Fixed }).root!));
});

test('bad sizes and offsets are EINVAL', (t) => {
  const { cas } = createTestStore(t, { small: true });
  t.true(isStrataError(t.throws(() => patchObject(cas.objects, null, [], -1)), 'EINVAL'));
  t.true(isStrataError(t.throws(() => patchObject(cas.objects, null, [{ offset: -5, data: Buffer.from('x') }], 10)), 'EINVAL'));
});

test('appends and patches to a deep object copy unchanged subtrees whole and still equal a full re-chunk', (t) => {
  // Small chunks: 12 MiB is ~12k leaves, so the base has nodes of two levels below its root to copy whole.
  const { cas } = createTestStore(t, { small: true });
  const objects = cas.objects;
  let ref = pseudoRandomBytes(12 * MiB, 5);
  let info = objects.writeObject(ref, { chunking: Chunking.Cdc });
  t.is(objects.node(info.root!).level, 2);
  const rounds: { patches: Patch[]; size: number }[] = [
    // Sequential writes, as the mount's flusher stores them: the content so far is unchanged.
    { patches: [{ offset: ref.length, data: pseudoRandomBytes(MiB, 12) }], size: 13 * MiB },
    { patches: [{ offset: 13 * MiB, data: pseudoRandomBytes(2 * MiB + 5, 13) }], size: 15 * MiB + 5 },
    // A change in the middle, one at the start, zeros, and a cut: copying resumes after each.
    { patches: [{ offset: 7 * MiB + 7, data: pseudoRandomBytes(100, 14) }, { offset: 10, data: Buffer.alloc(50_000) }], size: 15 * MiB + 5 },
    { patches: [{ offset: 16 * MiB, data: pseudoRandomBytes(4096, 15) }], size: 16 * MiB + 4096 },
    { patches: [], size: 5 * MiB + 3 },
  ];

  // Which levels of nodes were copied whole.
  const copied = new Set<number>();
  const addNode = ObjectBuilder.prototype.addNode;
  ObjectBuilder.prototype.addNode = function (this: ObjectBuilder, level: number, handle: Handle, length: number) {
    copied.add(level);
    addNode.call(this, level, handle, length);
  };
  t.teardown(() => { ObjectBuilder.prototype.addNode = addNode; });
  for (const round of rounds) {
    ref = applyPatches(ref, round.patches, round.size);
    info = patchObject(objects, info.root, round.patches, round.size);
    const full = objects.writeObject(ref, { chunking: Chunking.Cdc });
    t.is(info.size, ref.length);
    t.true(info.root!.equals(full.root!), `round with size ${round.size}: same root as writing it whole`);
    t.true(objects.readObject(info.root!, 0, ref.length).equals(ref));
  }
  t.deepEqual([...copied].sort(), [0, 1], 'nodes of both levels below the root were copied whole');
});

test('iterateLeaves from an offset starts at the leaf containing it', (t) => {
  const { cas } = createTestStore(t, { small: true });
  const data = content(21, 3 * MiB);
  const { root } = cas.objects.writeObject(data, { chunking: Chunking.Cdc });
  const all = [...iterateLeaves(cas.objects, root!)];
  for (const at of [0, 1, all[5].offset, all[5].offset + 1, all[700].offset - 1, 2 * MiB + 17, data.length - 1]) {
    const i = all.findIndex((l) => l.offset + l.length > at);
    t.deepEqual([...iterateLeaves(cas.objects, root!, at)].map((l) => l.offset), all.slice(i).map((l) => l.offset), `from ${at}`);
  }
  t.deepEqual([...iterateLeaves(cas.objects, root!, data.length)], []);
});
