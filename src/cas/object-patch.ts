// Incremental rewrite of an object: base content plus patches, re-chunked only around the patches.
//
// A cut depends only on the bytes from the start of its chunk (FastCDC hashes nothing before it; a
// fixed block is cut by counting), so once the new chunking cuts where an old leaf starts,
// and that leaf's bytes are unchanged, the new chunking goes on exactly like the old one: the old
// leaves are copied without reading them. The result is the object writeObject would make from the
// whole new content, as long as the base itself was cut that way (anything writeObject or
// patchObject made with the same chunker parameters).
//
// Zeros are never fed in bulk. A run of zeros starting at a cut is cut every `zeroChunk` bytes (a
// constant of the chunker), and all-zero chunks become holes, so a run known to be zero (an old hole,
// or the area past the old end) is emitted as a hole of whole zero chunks, and chunking restarts at
// the last of those cuts, less than one zero chunk before the data that follows.

import { corrupt, invalid } from '../errors.js';
import { Chunking, type ChunkerParams, type Handle, type ObjectInfo } from '../types.js';
import { createChunker } from './chunker.js';
import { isHole, nodeSize, ZERO_HANDLE } from './merkle-node.js';
import type { ChunkStream } from './chunk-offload.js';
import { closesNode, iterateLeaves, type Leaf, type ObjectBuilder, type ObjectStore } from './object-store.js';
import { childAt } from './merkle-node.js';

export interface Patch {
  offset: number;
  data: Buffer;
}

/** Patch bytes handed to the chunker per call; the chunker copies what it keeps. */
const PATCH_PIECE = 1024 * 1024;

/**
 * Returns the object whose content is `base` (null = empty) with each patch written at its offset
 * (later patches win where they overlap), resized to `newSize` (truncating or extending with zeros).
 * Work is proportional to the patched regions (plus a walk over the base's leaf list), not the file size.
 * `chunking` defaults to the base's; a different one re-chunks all the content.
 */
export function patchObject(
  objects: ObjectStore, base: Handle | null, patches: Patch[], newSize: number, chunking?: Chunking,
): ObjectInfo {
  const steps = patchObjectSteps(objects, base, patches, newSize, chunking);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * patchObject in steps: the generator yields after each piece of at most PATCH_PIECE bytes fed to
 * the chunker (and every few hundred copied leaves), so a caller can let other work run between
 * steps. Nothing may change the base object or the patches' bytes until it returns.
 *
 * When the rest of the object is one stream to chunk to its end (written data past the old end,
 * as sequential writes leave it: no old leaf can be copied and no zeros skipped), it yields that
 * stream instead; the caller either chunks it (handing every chunk to its add()) and resumes with
 * true, or resumes with anything else to have it chunked here.
 */
export function* patchObjectSteps(
  objects: ObjectStore, base: Handle | null, patches: Patch[], newSize: number, chunking?: Chunking,
): Generator<ChunkStream | void, ObjectInfo, unknown> {
  if (!Number.isSafeInteger(newSize) || newSize < 0) throw invalid(`patch: bad new size ${String(newSize)}`);
  const baseNode = base ? objects.node(base) : null;
  const mode = chunking ?? baseNode?.chunking ?? Chunking.Cdc;
  const p = new Patcher(objects, base, baseNode ? nodeSize(baseNode) : 0, new DirtyExtents(patches, newSize), newSize, mode,
    // Old leaf starts are cut points of the new chunking only if the same chunker made them.
    baseNode !== null && baseNode.chunking === mode);
  return yield* p.run();
}

/** Copied leaves between two yields of patchObjectSteps. */
const LEAVES_PER_STEP = 256;
/** A tail shorter than this is chunked here rather than offered as a stream. */
const TAIL_STREAM_MIN = 1024 * 1024;

class Patcher {
  private readonly leaves: LeafWindow;
  private readonly builder: ObjectBuilder;
  private readonly zeroChunk: number;
  private readonly zeros: Buffer;
  private readonly base: Handle | null;
  private lastLeaf: Leaf | null = null;
  private lastData: Buffer = Buffer.alloc(0);
  /** Whether to offer the caller the tail as a stream (until it declines one). */
  private offerTails = true;

  constructor(
    private readonly objects: ObjectStore,
    base: Handle | null,
    private readonly oldSize: number,
    private readonly dirty: DirtyExtents,
    private readonly newSize: number,
    private readonly mode: Chunking,
    private readonly resync: boolean,
  ) {
    this.base = base;
    this.leaves = new LeafWindow(base ? (from) => iterateLeaves(objects, base, from) : null);
    // The base's leaves double as the temporal check for re-chunked chunks.
    this.builder = objects.builder(mode, (offset) => (offset < oldSize ? this.leaves.at(offset) : undefined));
    this.zeroChunk = zeroChunkLength(mode, objects.params);
    this.zeros = zeroBuffer(Math.max(objects.params.max, objects.params.fixedSize));
  }

  *run(): Generator<ChunkStream | void, ObjectInfo, unknown> {
    // Invariant: `pos` is a cut of the new chunking and everything before it has been added.
    let pos = 0;
    let copied = 0;
    while (pos < this.newSize) {
      this.leaves.release(pos);
      const z = this.zeroRunEnd(pos);
      if (z === this.newSize) {
        this.addHole(z - pos);
        pos = z;
      } else if (z - pos >= this.zeroChunk) {
        const to = pos + Math.floor((z - pos) / this.zeroChunk) * this.zeroChunk;
        this.addHole(to - pos);
        pos = to;
      } else {
        const node = this.copyableNode(pos);
        const leaf = node ? undefined : this.copyable(pos);
        if (node) {
          // A whole unchanged subtree: what adding its leaves one by one would rebuild, unread.
          this.builder.addNode(node.level, node.handle, node.length);
          pos += node.length;
          this.leaves.skipTo(pos);
          if (++copied % LEAVES_PER_STEP === 0) yield;
        } else if (leaf) {
          this.builder.add(leaf.handle, leaf.length);
          pos += leaf.length;
          if (++copied % LEAVES_PER_STEP === 0) yield;
        } else if (this.offerTails && this.tailIsStream(pos) && (yield this.tail(pos)) === true) {
          pos = this.newSize;
        } else {
          // Declined: this caller chunks everything itself.
          if (this.tailIsStream(pos)) this.offerTails = false;
          pos = yield* this.rechunk(pos);
        }
      }
    }
    if (this.builder.size !== this.newSize) throw corrupt(`patch built ${this.builder.size} bytes, expected ${this.newSize}`);
    return { root: this.builder.finish(), size: this.newSize };
  }

  /**
   * Chunks the new content from `start` (a cut) until a cut from which a shortcut applies, or the
   * end; returns that cut. Chunks the chunker already holds past it are dropped: a fresh chunker
   * started there would cut them the same way.
   */
  private *rechunk(start: number): Generator<void, number, unknown> {
    const chunker = createChunker(this.mode, this.objects.params);
    let cut = start;
    let fed = start;
    for (;;) {
      const ending = fed === this.newSize;
      let out: Buffer[];
      if (ending) {
        out = chunker.end();
      } else {
        const piece = this.piece(fed);
        fed += piece.length;
        out = chunker.write(piece);
      }
      for (const c of out) {
        this.builder.addChunk(c);
        cut += c.length;
        if (cut === this.newSize || this.shortcutAt(cut) || (this.offerTails && this.tailIsStream(cut))) return cut;
      }
      if (ending) return cut;
      this.leaves.release(cut);
      yield;
    }
  }

  /**
   * Whether chunking from `pos` (a cut) runs to the end without a shortcut: patches cover
   * everything from there (no old leaf is copyable, no zeros are known), or past the old end they
   * do and before it lies only the old last leaf, which is never copyable (the stream no longer
   * ends where it was cut) nor a hole.
   */
  private tailIsStream(pos: number): boolean {
    if (this.newSize - pos < TAIL_STREAM_MIN) return false;
    if (this.dirty.covers(pos, this.newSize)) return true;
    if (this.newSize <= this.oldSize || !this.dirty.covers(Math.max(pos, this.oldSize), this.newSize)) return false;
    if (pos >= this.oldSize) return true;
    const leaf = this.leaves.at(pos);
    return leaf !== undefined && leaf.offset + leaf.length === this.oldSize && !isHole(leaf.handle);
  }

  /** The stream from `pos` to the end, its chunks going to the builder as rechunk() would add them. */
  private tail(pos: number): ChunkStream {
    const self = this;
    return {
      mode: this.mode,
      params: this.objects.params,
      *pieces() {
        for (let x = pos; x < self.newSize;) {
          const p = self.piece(x);
          x += p.length;
          yield p;
        }
      },
      add: (chunk, handle) => this.builder.addHashedChunk(chunk, handle),
      prefetch: (handles) => this.objects.chunks.prefetch(handles),
    };
  }

  private shortcutAt(pos: number): boolean {
    const z = this.zeroRunEnd(pos);
    return z === this.newSize || z - pos >= this.zeroChunk || this.copyable(pos) !== undefined;
  }

  /** The old data leaf starting at `pos` if the new chunking, cutting at `pos`, reproduces it. */
  private copyable(pos: number): Leaf | undefined {
    if (!this.resync || pos >= this.oldSize) return undefined;
    const leaf = this.leaves.at(pos);
    if (!leaf || leaf.offset !== pos || isHole(leaf.handle)) return undefined;
    const end = pos + leaf.length;
    if (end > this.newSize || this.dirty.overlaps(pos, end)) return undefined;
    // The old last leaf was cut by the end of the stream, not by its content: it holds only if the
    // stream still ends there.
    if (end === this.oldSize && end !== this.newSize) return undefined;
    return leaf;
  }

  /**
   * The largest node of the base starting at `pos` whose leaves the new object keeps as they are
   * (the bytes it covers are unchanged and the new chunking cuts at `pos`, so it cuts as the old one
   * did, see copyable()) and which the builder, having nothing below that node's level, closes
   * exactly as the base's builder did: a closed node, not the last of its level. Copying it whole
   * keeps each flush from walking (and re-hashing the nodes of) all the content before the change.
   */
  private copyableNode(pos: number): { level: number; handle: Handle; length: number } | undefined {
    if (!this.resync || !this.base || pos >= this.oldSize) return undefined;
    const empty = this.builder.emptyLevels;
    if (empty === 0) return undefined;
    let node = this.objects.node(this.base);
    let base = 0;
    while (node.level > 0) {
      const i = childAt(node, pos - base);
      const start = base + node.starts[i];
      const h = node.handles[i];
      if (isHole(h)) return undefined;
      const level = node.level - 1;
      const end = start + node.lengths[i];
      const child = this.objects.node(h);
      if (start === pos && level < empty && end <= this.newSize && (end < this.oldSize || end === this.newSize)
        && !this.dirty.overlaps(pos, end) && closesNode(child.handles)) {
        return { level, handle: h, length: node.lengths[i] };
      }
      node = child;
      base = start;
    }
    return undefined;
  }

  /** End of the run of zeros starting at `pos` that is known without reading: holes, past the old end. */
  private zeroRunEnd(pos: number): number {
    let x = pos;
    while (x < this.newSize) {
      const next = this.dirty.nextStart(x);
      if (next <= x) break;
      const limit = Math.min(this.newSize, next);
      if (x >= this.oldSize) return limit;
      const leaf = this.leaves.at(x);
      if (!leaf || !isHole(leaf.handle)) break;
      x = Math.min(leaf.offset + leaf.length, limit);
    }
    return x;
  }

  /**
   * Adds a hole made of whole zero chunks (or ending the object). Only the first chunk is added on
   * its own, because the builder treats it differently when it fills a node; the others merge into it
   * whatever happens, so the tree matches one built chunk by chunk.
   */
  private addHole(length: number): void {
    const first = Math.min(this.zeroChunk, length);
    this.builder.add(ZERO_HANDLE, first);
    if (length > first) this.builder.add(ZERO_HANDLE, length - first);
  }

  /** The next bytes of the new content from `pos`: one patch, or unpatched bytes within one old leaf. */
  private piece(pos: number): Buffer {
    const seg = this.dirty.at(pos);
    if (seg) return seg.data.subarray(pos - seg.start, Math.min(seg.end, pos + PATCH_PIECE) - seg.start);
    const end = Math.min(this.newSize, this.dirty.nextStart(pos), pos + this.zeros.length);
    if (pos >= this.oldSize) return this.zeros.subarray(0, end - pos);
    const leaf = this.leaves.at(pos)!;
    const leafEnd = Math.min(end, leaf.offset + leaf.length);
    if (isHole(leaf.handle)) return this.zeros.subarray(0, leafEnd - pos);
    const data = this.leafData(leaf);
    return data.subarray(pos - leaf.offset, leafEnd - leaf.offset);
  }

  /** A data leaf's bytes; the last one is kept, as a leaf around a patch is read in several pieces. */
  private leafData(leaf: Leaf): Buffer {
    if (this.lastLeaf !== leaf) {
      const data = this.objects.chunks.get(leaf.handle);
      if (data.length !== leaf.length) throw corrupt(`leaf at ${leaf.offset} holds ${data.length} bytes, its node says ${leaf.length}`);
      this.lastLeaf = leaf;
      this.lastData = data;
    }
    return this.lastData;
  }
}

interface Segment {
  start: number;
  end: number;
  data: Buffer;
}

/** The patched bytes as sorted, disjoint segments clipped to the new size, later patches winning. */
class DirtyExtents {
  private segs: Segment[] = [];

  constructor(patches: Patch[], newSize: number) {
    // Newest first: each patch only fills what newer ones left uncovered.
    for (let i = patches.length - 1; i >= 0; i--) {
      const { offset, data } = patches[i];
      if (!Number.isSafeInteger(offset) || offset < 0) throw invalid(`patch: bad offset ${String(offset)}`);
      const a = offset;
      const b = Math.min(offset + data.length, newSize);
      if (a >= b) continue;
      const gaps: Segment[] = [];
      let x = a;
      for (let k = this.firstEndingAfter(a); x < b; k++) {
        const s = this.segs[k];
        const gapEnd = s ? Math.min(b, s.start) : b;
        if (gapEnd > x) gaps.push({ start: x, end: gapEnd, data: data.subarray(x - offset, gapEnd - offset) });
        if (!s) break;
        x = Math.max(x, s.end);
      }
      if (gaps.length) this.segs = mergeSorted(this.segs, gaps);
    }
  }

  /** The segment holding byte `x`, if patched. */
  at(x: number): Segment | undefined {
    const s = this.segs[this.firstEndingAfter(x)];
    return s && s.start <= x ? s : undefined;
  }

  /** Start of the first patched byte at or after `x` (x itself if patched); Infinity if none. */
  nextStart(x: number): number {
    const s = this.segs[this.firstEndingAfter(x)];
    return s ? Math.max(s.start, x) : Infinity;
  }

  /** Whether patches cover every byte of [a, b). */
  covers(a: number, b: number): boolean {
    let x = a;
    for (let k = this.firstEndingAfter(a); x < b; k++) {
      const s = this.segs[k];
      if (!s || s.start > x) return false;
      x = s.end;
    }
    return true;
  }

  overlaps(a: number, b: number): boolean {
    return this.nextStart(a) < b;
  }

  private firstEndingAfter(x: number): number {
    let lo = 0;
    let hi = this.segs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.segs[mid].end > x) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}

function mergeSorted(a: Segment[], b: Segment[]): Segment[] {
  const out: Segment[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i].start < b[j].start)) out.push(a[i++]);
    else out.push(b[j++]);
  }
  return out;
}

/**
 * The base's leaves around the work position, read lazily in order. Lookups may go back to the last
 * release point (a re-chunk that stops at an earlier cut than it has read up to).
 */
class LeafWindow {
  private buf: Leaf[] = [];
  private head = 0;
  private it: Iterator<Leaf> | null;

  /** `from(offset)` iterates the base's leaves from the one containing offset. */
  constructor(private readonly from: ((offset: number) => Iterator<Leaf>) | null) {
    this.it = from ? from(0) : null;
  }

  /** No lookup will go below `offset` any more, and the leaves before it need not be read. */
  skipTo(offset: number): void {
    const last = this.buf[this.buf.length - 1];
    if (!this.from || (last && last.offset + last.length > offset)) {
      this.release(offset);
      return;
    }
    this.buf = [];
    this.head = 0;
    this.it = this.from(offset);
  }

  /** The leaf containing `offset`, or undefined past the base's end. */
  at(offset: number): Leaf | undefined {
    for (;;) {
      const last = this.buf[this.buf.length - 1];
      if (last && last.offset + last.length > offset) break;
      const n = this.it?.next();
      if (!n || n.done) return undefined;
      this.buf.push(n.value);
    }
    let lo = this.head;
    let hi = this.buf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.buf[mid].offset <= offset) lo = mid;
      else hi = mid - 1;
    }
    const leaf = this.buf[lo];
    if (leaf.offset > offset) throw new Error(`leaf lookup at ${offset} behind the released window`);
    return leaf;
  }

  /** No lookup will go below `offset` any more. */
  release(offset: number): void {
    while (this.head < this.buf.length && this.buf[this.head].offset + this.buf[this.head].length <= offset) this.head++;
    if (this.head > 1024) {
      this.buf = this.buf.slice(this.head);
      this.head = 0;
    }
  }
}

const zeroChunkLengths = new Map<string, number>();

/** Length of every chunk the chunker cuts from a run of zeros that starts at a cut. */
function zeroChunkLength(mode: Chunking, params: ChunkerParams): number {
  const key = `${mode}:${params.min}:${params.avg}:${params.max}:${params.fixedSize}`;
  let len = zeroChunkLengths.get(key);
  if (len === undefined) {
    // Each chunker cuts within its largest chunk, so a probe that long yields at least one chunk.
    const probe = Buffer.alloc(Math.max(params.max, params.fixedSize));
    len = createChunker(mode, params).write(probe)[0].length;
    zeroChunkLengths.set(key, len);
  }
  return len;
}

let sharedZeros = Buffer.alloc(0);

/** A zero-filled buffer of at least `length` bytes, never written (handed to chunkers as input only). */
function zeroBuffer(length: number): Buffer {
  if (sharedZeros.length < length) sharedZeros = Buffer.alloc(length);
  return sharedZeros;
}
