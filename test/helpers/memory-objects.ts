// In-memory object and tree store for unit tests: one blob per object, no chunking, no durability.
// Stands in for the real store behind ObjectWriter/ObjectReader/TreeWriter/TreeReader.

import { hashBytes, handleHex } from '../../src/cas/hash.js';
import { decodeTree, encodeTree } from '../../src/cas/tree-codec.js';
import { notFound } from '../../src/errors.js';
import type {
  ContentSource,
  Extent,
  Handle,
  ObjectInfo,
  ObjectReader,
  ObjectWriter,
  TreeEntry,
  TreeReader,
  TreeWriter,
  WriteObjectOptions,
} from '../../src/types.js';

/** Block size at which all-zero, aligned runs are reported as holes by extents(). */
export const MEMORY_HOLE_BLOCK = 4096;

/** What one writeObject call was given, for tests that check hints (predecessor, chunking). */
export interface WriteCall {
  root: Handle | null;
  size: number;
  opts: WriteObjectOptions | undefined;
}

export class MemoryObjects implements ObjectWriter, ObjectReader, TreeWriter, TreeReader {
  private readonly objects = new Map<string, Buffer>();
  private readonly trees = new Map<string, Buffer>();
  private readonly extentCache = new Map<string, Extent[]>();
  /** Every writeObject call in order. */
  readonly writes: WriteCall[] = [];
  /** Every writeTree call in order (the handles returned). */
  readonly treeWrites: Handle[] = [];

  writeObject(source: ContentSource | Buffer, opts?: WriteObjectOptions): ObjectInfo {
    const content = Buffer.isBuffer(source) ? Buffer.from(source) : drain(source);
    // Domain-separate objects from trees so a file whose bytes equal an encoded tree is not confused with it.
    const root = content.length === 0 ? null : hashBytes(Buffer.concat([Buffer.from('object\0'), content]));
    if (root) this.objects.set(handleHex(root), content);
    this.writes.push({ root, size: content.length, opts });
    return { root, size: content.length };
  }

  objectSize(root: Handle): number {
    return this.get(root).length;
  }

  readObject(root: Handle, offset: number, length: number): Buffer {
    const data = this.get(root);
    const start = Math.min(Math.max(0, offset), data.length);
    const end = Math.min(data.length, start + Math.max(0, length));
    return Buffer.from(data.subarray(start, end));
  }

  extents(root: Handle): Extent[] {
    const key = handleHex(root);
    let cached = this.extentCache.get(key);
    if (!cached) {
      cached = zeroRunExtents(this.get(root));
      this.extentCache.set(key, cached);
    }
    return cached.map((e) => ({ ...e }));
  }

  writeTree(entries: TreeEntry[]): Handle {
    const bytes = encodeTree(entries);
    const handle = hashBytes(Buffer.concat([Buffer.from('tree\0'), bytes]));
    this.trees.set(handleHex(handle), bytes);
    this.treeWrites.push(handle);
    return handle;
  }

  readTree(handle: Handle): TreeEntry[] {
    const bytes = this.trees.get(handleHex(handle));
    if (!bytes) throw notFound(`tree ${handleHex(handle)}`);
    return decodeTree(bytes);
  }

  /** Number of distinct stored objects (not trees). */
  get objectCount(): number {
    return this.objects.size;
  }

  private get(root: Handle): Buffer {
    const data = this.objects.get(handleHex(root));
    if (!data) throw notFound(`object ${handleHex(root)}`);
    return data;
  }
}

function drain(source: ContentSource): Buffer {
  const parts: Buffer[] = [];
  let pos = 0;
  for (;;) {
    const buf = Buffer.allocUnsafe(1 << 20);
    const n = source.read(buf, pos);
    if (n === 0) break;
    parts.push(buf.subarray(0, n));
    pos += n;
  }
  return Buffer.concat(parts);
}

/** Data/hole extents where every aligned, whole MEMORY_HOLE_BLOCK of zeros is a hole (adjacent runs merged). */
export function zeroRunExtents(data: Buffer): Extent[] {
  const out: Extent[] = [];
  const zero = Buffer.alloc(MEMORY_HOLE_BLOCK);
  const push = (offset: number, length: number, hole: boolean) => {
    const last = out[out.length - 1];
    if (last && last.hole === hole) last.length += length;
    else out.push({ offset, length, hole });
  };
  for (let off = 0; off < data.length; off += MEMORY_HOLE_BLOCK) {
    const len = Math.min(MEMORY_HOLE_BLOCK, data.length - off);
    const hole = len === MEMORY_HOLE_BLOCK && data.subarray(off, off + len).equals(zero);
    push(off, len, hole);
  }
  return out;
}
