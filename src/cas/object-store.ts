import { LRUCache } from 'lru-cache';
import {
  ChunkKind, Chunking, type ChunkerParams, type BlobStore, type ChunkLocation, type ContentSource, type Extent, type Handle, type LeafFetch, type LeafSource, type ObjectInfo,
  type ObjectReader, type ObjectWriter, type TreeEntry, type TreeReader, type TreeWriter, type WriteObjectOptions,
} from '../types.js';
import { createChunker } from './chunker.js';
import type { ChunkStore } from './chunk-store.js';
import { handleKey, hashBytes, shortHex } from './hash.js';
import {
  childAt, decodeNode, encodeNode, FLAG_ROOT, FLAG_TREE, isHole, nodeSize, ZERO_HANDLE, type MerkleNode,
} from './merkle-node.js';
import { decodeTree, encodeTree } from './tree-codec.js';
import { decompressChunk } from './codec.js';
import { DecodePool } from './decode-pool.js';
import { BufferPool, PooledRun } from './buffer-pool.js';
import { RECORD_HEADER_BYTES, containerBlobName } from './container-file.js';
import { corrupt, StrataError } from '../errors.js';

// Merkle objects over the chunk store. Node boundaries are content-defined (a node ends after a
// child whose handle matches a bit pattern), so an insertion changes only the nodes on its path
// and shifted data keeps its subtrees' handles: diffs stay proportional to the change.

const READ_PIECE = 4 * 1024 * 1024;
const NODE_MIN = 16;
const NODE_MAX = 1024;
const SPLIT_MASK = 0x3f; // ~64 children per node on average
const TREE_CACHE_BYTES = 64 * 1024 * 1024;
/** Rough heap cost of a decoded entry besides its name: the object, two bigints, a handle. */
const TREE_ENTRY_BYTES = 200;

/** Chunks of one container this close together are read with one I/O, up to COALESCE_BYTES in all. */
const COALESCE_GAP = 4096;
const COALESCE_BYTES = 2 * 1024 * 1024;

const where = (handle: Handle, loc: ChunkLocation) => `chunk ${shortHex(handle)} in container ${loc.container} at offset ${loc.offset}`;

/** A missing or short container, or a payload that does not decode, is damage (ECORRUPT), not a missing file. */
const asError = (e: unknown): Error => (e instanceof Error ? e : new Error(String(e)));

function damaged(handle: Handle, loc: ChunkLocation, e: unknown): unknown {
  return e instanceof StrataError ? corrupt(`${where(handle, loc)}: ${e.message}`) : e;
}

function treeBytes(entries: TreeEntry[]): number {
  let n = 64;
  for (const e of entries) n += TREE_ENTRY_BYTES + e.name.length + (e.target?.length ?? 0) + (e.xattrs?.reduce((a, [k, v]) => a + k.length + v.length + 64, 0) ?? 0);
  return n;
}

/** One leaf of an object: a data chunk or a hole, at an absolute offset. */
export interface Leaf {
  offset: number;
  length: number;
  handle: Handle;
}

/** The predecessor's leaf containing `offset`, or undefined; called with increasing offsets. */
export type LeafLookup = (offset: number) => Leaf | undefined;

/** Whether a node's entries end where the builder closes a node (a boundary child, or the most it holds). */
export function closesNode(handles: readonly Handle[]): boolean {
  const n = handles.length;
  if (n >= NODE_MAX) return true;
  const last = handles[n - 1];
  return n >= NODE_MIN && !isHole(last) && (last.readUInt16LE(30) & SPLIT_MASK) === 0;
}

/** Builds one object bottom-up as leaves arrive; `size` is the offset of the next leaf. */
export class ObjectBuilder {
  private readonly levels: { handles: Handle[]; lengths: number[] }[] = [];
  size = 0;

  constructor(
    private readonly chunks: ChunkStore,
    private readonly chunking: Chunking,
    private readonly tree: boolean,
    /** At least as long as the longest chunk. */
    private readonly zeros: Buffer,
    private readonly predecessor: LeafLookup | null = null,
  ) {}

  /**
   * Stores one chunk as the next leaf: all zeros become a hole; otherwise the predecessor's chunk at
   * the same offset is compared first (temporal check), then the chunk store deduplicates.
   */
  addChunk(chunk: Buffer): void {
    this.addHashedChunk(chunk, null);
  }

  /** addChunk with the chunk's BLAKE3 already computed (by a worker), or null to compute it here. */
  addHashedChunk(chunk: Buffer, hash: Handle | null): void {
    const len = chunk.length;
    // Most chunks differ from zeros in their first or last byte: no view nor native compare for them.
    if ((len === 0 || (chunk[0] === 0 && chunk[len - 1] === 0)) && this.zeros.subarray(0, len).equals(chunk)) {
      this.chunks.noteZero(len);
      this.add(ZERO_HANDLE, len);
      return;
    }
    const h = hash ?? hashBytes(chunk);
    const prev = this.predecessor?.(this.size);
    if (prev && prev.offset === this.size && prev.length === len && prev.handle.equals(h)) {
      this.chunks.noteTemporalHit(len);
    } else {
      this.chunks.put(h, ChunkKind.Data, chunk);
    }
    this.add(h, len);
  }

  /** Appends a leaf that is already stored (or a hole) as it is. */
  add(handle: Handle, length: number): void {
    this.size += length;
    this.push(0, handle, length);
  }

  /**
   * How many levels from the bottom hold no entries: a stored node of a lower level may be added
   * whole (addNode) exactly where the builder would have closed the same node itself.
   */
  get emptyLevels(): number {
    let k = 0;
    while (k < this.levels.length && this.levels[k].handles.length === 0) k++;
    return k === this.levels.length ? Infinity : k;
  }

  /**
   * Appends a stored node of `level` (0: its children are leaves) covering `length` bytes, as
   * adding its leaves one by one would: only when levels 0..level are empty (emptyLevels > level)
   * and the node was closed by the split rule (closesNode), not by the end of its object.
   */
  addNode(level: number, handle: Handle, length: number): void {
    if (this.emptyLevels <= level) throw new Error(`addNode at level ${level} with entries below it`);
    for (let l = 0; l <= level; l++) this.levels[l] ??= { handles: [], lengths: [] };
    this.size += length;
    this.push(level + 1, handle, length);
  }

  private push(level: number, handle: Handle, length: number): void {
    const l = (this.levels[level] ??= { handles: [], lengths: [] });
    const n = l.handles.length;
    // Adjacent holes merge into one entry.
    if (n > 0 && isHole(handle) && isHole(l.handles[n - 1])) {
      l.lengths[n - 1] += length;
      return;
    }
    l.handles.push(handle);
    l.lengths.push(length);
    if (closesNode(l.handles)) this.flush(level);
  }

  private flush(level: number): void {
    const l = this.levels[level];
    const h = this.storeNode(level, 0, l.handles, l.lengths);
    const total = l.lengths.reduce((a, b) => a + b, 0);
    this.levels[level] = { handles: [], lengths: [] };
    this.push(level + 1, h, total);
  }

  private storeNode(level: number, flags: number, handles: Handle[], lengths: number[], extra: Handle[] = []): Handle {
    const bytes = encodeNode(level, flags | (this.tree ? FLAG_TREE : 0), this.chunking, handles, lengths);
    const h = hashBytes(bytes);
    const kind = flags & FLAG_ROOT && this.tree ? ChunkKind.TreeRoot : ChunkKind.Node;
    const children = handles.filter((c) => !isHole(c)).concat(extra);
    this.chunks.put(h, kind, bytes, children);
    return h;
  }

  /** Writes the remaining nodes and the root; `extra` are references the root holds besides its children. */
  finish(extra: Handle[] = []): Handle | null {
    if (this.size === 0 && this.levels.length === 0) return null;
    let top = this.levels.length - 1;
    for (let level = 0; level < top; level++) {
      if (this.levels[level].handles.length > 0) this.flush(level);
      top = this.levels.length - 1;
    }
    const l = this.levels[top];
    return this.storeNode(top, FLAG_ROOT, l.handles, l.lengths, extra);
  }
}

/** Walks an object's leaves in order, lazily (used as the predecessor cursor), from the leaf containing `from`. */
export function* iterateLeaves(objects: ObjectStore, root: Handle, from = 0): Generator<Leaf> {
  const stack: { node: MerkleNode; i: number; base: number }[] = [];
  const top = objects.node(root);
  if (from >= nodeSize(top) && from > 0) return;
  // Descend straight to `from`: the nodes before it are not read.
  for (let node = top, base = 0; ;) {
    const i = from > base && from < base + nodeSize(node) ? childAt(node, from - base) : 0;
    const h = node.handles[i];
    if (node.level === 0 || h === undefined || isHole(h) || from <= base) {
      stack.push({ node, i, base });
      break;
    }
    stack.push({ node, i: i + 1, base });
    base += node.starts[i];
    node = objects.node(h);
  }
  while (stack.length) {
    const top = stack[stack.length - 1];
    if (top.i >= top.node.handles.length) { stack.pop(); continue; }
    const i = top.i++;
    const h = top.node.handles[i];
    const offset = top.base + top.node.starts[i];
    if (top.node.level === 0 || isHole(h)) yield { offset, length: top.node.lengths[i], handle: h };
    else stack.push({ node: objects.node(h), i: 0, base: offset });
  }
}

export class ObjectStore implements ObjectWriter, ObjectReader, TreeWriter, TreeReader {
  private readonly nodes = new LRUCache<string, MerkleNode>({ max: 4096 });
  /**
   * Decoded directory listings, bounded by an estimate of their memory rather than by count: one
   * listing may hold a handful of names or a million. Views list and look up from here.
   */
  private readonly trees = new LRUCache<string, TreeEntry[]>({ maxSize: TREE_CACHE_BYTES, sizeCalculation: treeBytes });
  private readonly zeros: Buffer;
  /** Decompression and hash checks of asynchronous reads, off the main thread (one pool per process). */
  private readonly decoder = DecodePool.shared();
  /** Buffers of asynchronous reads, recycled (see BufferPool). */
  readonly readBuffers = new BufferPool();

  constructor(readonly chunks: ChunkStore, readonly params: ChunkerParams) {
    this.zeros = Buffer.alloc(Math.max(params.max, params.fixedSize));
  }

  writeObject(source: ContentSource | Buffer, opts: WriteObjectOptions = {}): ObjectInfo {
    return this.write(source, opts.chunking ?? Chunking.Cdc, opts.predecessor ?? null, false, []);
  }

  /** A builder for a file object whose chunks are compared first with `predecessor`'s leaves. */
  builder(chunking: Chunking, predecessor: LeafLookup | null = null): ObjectBuilder {
    return new ObjectBuilder(this.chunks, chunking, false, this.zeros, predecessor);
  }

  private write(source: ContentSource | Buffer, chunking: Chunking, predecessor: Handle | null, tree: boolean, extra: Handle[]): ObjectInfo {
    const chunker = createChunker(chunking, this.params);
    const prev = predecessor ? iterateLeaves(this, predecessor) : null;
    let prevLeaf: Leaf | undefined = prev?.next().value ?? undefined;
    const lookup: LeafLookup | null = prev && ((offset) => {
      while (prevLeaf && prevLeaf.offset + prevLeaf.length <= offset) prevLeaf = prev.next().value ?? undefined;
      return prevLeaf;
    });
    const builder = new ObjectBuilder(this.chunks, chunking, tree, this.zeros, lookup);
    if (Buffer.isBuffer(source)) {
      for (const c of chunker.write(source)) builder.addChunk(c);
    } else {
      // The chunker copies what it keeps, so one read buffer serves the whole object.
      const buf = Buffer.allocUnsafe(READ_PIECE);
      for (let pos = 0; ;) {
        const n = source.read(buf, pos);
        if (n <= 0) break;
        pos += n;
        for (const c of chunker.write(n === buf.length ? buf : buf.subarray(0, n))) builder.addChunk(c);
      }
    }
    for (const c of chunker.end()) builder.addChunk(c);
    return { root: builder.finish(extra), size: builder.size };
  }

  /** Decoded node, cached. */
  node(handle: Handle): MerkleNode {
    const key = handleKey(handle);
    let n = this.nodes.get(key);
    if (!n) {
      n = decodeNode(this.chunks.get(handle));
      this.nodes.set(key, n);
    }
    return n;
  }

  objectSize(root: Handle): number {
    return nodeSize(this.node(root));
  }

  readObject(root: Handle, offset: number, length: number): Buffer {
    const size = this.objectSize(root);
    const start = Math.max(0, Math.min(offset, size));
    const end = Math.min(size, start + Math.max(0, length));
    const out = Buffer.alloc(end - start);
    if (end > start) this.readInto(root, 0, start, end, out, start);
    return out;
  }

  /** Fills out[from-outBase .. to-outBase) from the subtree at `handle` whose first byte is at `base`. */
  private readInto(handle: Handle, base: number, from: number, to: number, out: Buffer, outBase: number): void {
    const n = this.node(handle);
    for (let i = childAt(n, from - base); i < n.handles.length; i++) {
      const cStart = base + n.starts[i];
      if (cStart >= to) break;
      const cEnd = cStart + n.lengths[i];
      const h = n.handles[i];
      if (isHole(h)) continue; // out is zero-filled
      if (n.level === 0) {
        const data = this.chunks.get(h);
        const s = Math.max(from, cStart);
        const e = Math.min(to, cEnd);
        data.copy(out, s - outBase, s - cStart, e - cStart);
      } else {
        this.readInto(h, cStart, Math.max(from, cStart), Math.min(to, cEnd), out, outBase);
      }
    }
  }

  /** The leaves (chunks and holes) overlapping [from, to), found by descending the tree: O(log n + k). */
  leaves(root: Handle, from: number, to: number): Leaf[] {
    const out: Leaf[] = [];
    const visit = (h: Handle, base: number) => {
      const n = this.node(h);
      for (let i = childAt(n, Math.max(0, from - base)); i < n.handles.length; i++) {
        const start = base + n.starts[i];
        if (start >= to) break;
        if (start + n.lengths[i] <= from) continue;
        if (n.level === 0 || isHole(n.handles[i])) out.push({ offset: start, length: n.lengths[i], handle: n.handles[i] });
        else visit(n.handles[i], start);
      }
    };
    visit(root, 0);
    return out;
  }

  /**
   * Data chunks' raw bytes, verified against their handles like ChunkStore.get, with the
   * container reads on the I/O pool and the decoding on a worker instead of the calling thread.
   * Chunks stored close together in one container (a file's chunks usually are) are read with
   * one I/O and share one `done`. Chunks it cannot locate, and every chunk of a blob store
   * without readAsync, go through the synchronous ChunkStore.get (ENOENT from there).
   */
  readChunksAsync(handles: Handle[]): LeafFetch[] {
    const blobs = this.chunks.blobs;
    const out: LeafFetch[] = new Array(handles.length);
    const located: { i: number; loc: ChunkLocation }[] = [];
    const locs = blobs.readAsync ? this.chunks.locateMany(handles) : [];
    for (let i = 0; i < handles.length; i++) {
      const loc = locs[i];
      if (loc) {
        located.push({ i, loc });
        continue;
      }
      const f: LeafFetch = { done: Promise.resolve() };
      f.done = f.done.then(() => { f.bytes = this.chunks.get(handles[i]); }).catch((e: unknown) => { f.error = asError(e); });
      out[i] = f;
    }
    // In container order: a file's chunks are stored close together, though not always in file
    // order (parallel compression appends them as they come back).
    located.sort((x, y) => x.loc.container - y.loc.container || x.loc.offset - y.loc.offset);
    let run: { i: number; loc: ChunkLocation }[] = [];
    const flush = () => {
      if (!run.length) return;
      const first = run[0].loc;
      const last = run[run.length - 1].loc;
      const chunks = run;
      // Container bytes and decoded bytes both live in recycled buffers (see BufferPool): the
      // input goes back once decoded, the output once every chunk of the run is released.
      const pool = this.readBuffers;
      // From the first chunk's record header on, so that every chunk's header is read with it
      // (a chunk whose header names it is checked by its frame's checksum, see decode-pool.ts).
      const from = Math.max(0, first.offset - RECORD_HEADER_BYTES);
      const length = last.offset + last.storedLength - from;
      let rawTotal = 0;
      for (const { loc } of chunks) rawTotal += loc.rawLength;
      const input = pool.take(length);
      const batch = new PooledRun(pool, chunks.length);
      const fetches = chunks.map((): LeafFetch => ({ done: Promise.resolve(), hold: () => batch.hold(), release: () => batch.release() }));
      const done = (blobs.readAsync as NonNullable<BlobStore['readAsync']>)(containerBlobName(first.container), from, length, Buffer.from(input, 0, length))
        .catch((e: unknown) => {
          pool.give(input); // never sent to the worker
          throw e;
        })
        // Decoded and verified off the main thread; each chunk carries its own error.
        .then((b) => this.decoder.decode(b, chunks.map(({ i, loc }) => ({
          handle: handles[i], codec: loc.codec, rawLength: loc.rawLength, start: loc.offset - from, length: loc.storedLength,
        })), pool.take(rawTotal), true))
        .then(
          (r) => {
            pool.give(r.input);
            batch.settle(r.out);
            chunks.forEach(({ i, loc }, k) => {
              const c = r.chunks[k];
              if (Buffer.isBuffer(c)) fetches[k].bytes = c;
              else fetches[k].error = asError(damaged(handles[i], loc, c));
            });
          },
          (e: unknown) => {
            batch.settle(null);
            chunks.forEach(({ i, loc }, k) => { fetches[k].error = asError(damaged(handles[i], loc, e)); });
          },
        );
      chunks.forEach(({ i }, k) => {
        fetches[k].done = done;
        out[i] = fetches[k];
      });
      run = [];
    };
    for (const x of located) {
      const prev = run[run.length - 1]?.loc;
      const joins = prev && prev.container === x.loc.container && x.loc.offset >= prev.offset + prev.storedLength &&
        x.loc.offset - (prev.offset + prev.storedLength) <= COALESCE_GAP && x.loc.offset + x.loc.storedLength - run[0].loc.offset <= COALESCE_BYTES;
      if (!joins) flush();
      run.push(x);
    }
    flush();
    return out;
  }

  /**
   * Loads the lowest Merkle nodes of `root` over [from, to) that are not cached yet, without
   * blocking: their container reads go to the I/O pool and their checks to the decode worker, all
   * together. leaves() over that range then finds them cached instead of reading each one from
   * disk on the calling thread (on a cold cache, about a second per GiB of a CDC image).
   * The nodes above them are few and loaded as leaves() would. Never rejects: a node that cannot
   * be loaded here is left for leaves() to load, and to report.
   */
  async preloadNodes(root: Handle, from: number, to: number): Promise<void> {
    const want: Handle[] = [];
    const seen = new Set<string>();
    const visit = (h: Handle, base: number) => {
      const n = this.node(h);
      if (n.level === 0) return;
      for (let i = childAt(n, Math.max(0, from - base)); i < n.handles.length; i++) {
        const start = base + n.starts[i];
        if (start >= to) break;
        const c = n.handles[i];
        if (isHole(c)) continue;
        if (n.level > 1) visit(c, start);
        else if (!this.nodes.has(handleKey(c)) && !seen.has(handleKey(c))) {
          seen.add(handleKey(c));
          want.push(c);
        }
      }
    };
    try {
      if (to > from) visit(root, 0);
    } catch {
      return;
    }
    if (!want.length) return;
    const fetches = this.readChunksAsync(want);
    await Promise.all(new Set(fetches.map((f) => f.done)));
    fetches.forEach((f, i) => {
      try {
        if (f.bytes) this.nodes.set(handleKey(want[i]), decodeNode(f.bytes)); // decodeNode copies what it keeps
      } catch {
        // left for node() to load and report
      } finally {
        f.release?.();
      }
    });
  }

  /** The leaves of one object as a prefetcher reads them: chunks from containers, asynchronously. */
  leafSource(root: Handle): LeafSource {
    return {
      leaves: (from, to) => this.leaves(root, from, to),
      isHole: (leaf) => isHole(leaf.handle),
      fetch: (leaves) => this.readChunksAsync(leaves.map((l) => l.handle)),
      prepare: (from, to) => this.preloadNodes(root, from, to),
    };
  }

  extents(root: Handle): Extent[] {
    const out: Extent[] = [];
    for (const leaf of iterateLeaves(this, root)) {
      const hole = isHole(leaf.handle);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += leaf.length;
      else out.push({ offset: leaf.offset, length: leaf.length, hole });
    }
    return out;
  }

  writeTree(entries: TreeEntry[]): Handle {
    const bytes = encodeTree(entries);
    const refs = entries.filter((e) => e.content).map((e) => e.content as Handle);
    const { root } = this.write(bytes, Chunking.Cdc, null, true, refs);
    return root as Handle; // an encoded tree is never empty (it has a header)
  }

  readTree(handle: Handle): TreeEntry[] {
    const key = handleKey(handle);
    let t = this.trees.get(key);
    if (!t) {
      t = decodeTree(this.readObject(handle, 0, this.objectSize(handle)));
      this.trees.set(key, t);
    }
    return t;
  }

  /**
   * Every handle a stored chunk references: a node's children, plus for a tree root the content
   * of its entries. Data chunks reference nothing. Used by release (rm), mark (gc) and verify.
   */
  references(handle: Handle, kind: ChunkKind): Handle[] {
    if (kind !== ChunkKind.Node && kind !== ChunkKind.TreeRoot) return [];
    const n = this.node(handle);
    const out = n.handles.filter((h) => !isHole(h));
    if (kind === ChunkKind.TreeRoot) {
      for (const e of this.readTree(handle)) if (e.content) out.push(e.content);
    }
    return out;
  }

  forget(handle: Handle): void {
    const key = handleKey(handle);
    this.nodes.delete(key);
    this.trees.delete(key);
    this.chunks.forget(handle);
  }
}
