import type { ObjectStore } from '../cas/object-store.js';
import type { Handle } from '../types.js';

// Unflushed writes of one live file: sorted, non-overlapping extents over the stored content.
// Every open handle of the file shares one buffer, so readers see writers at once.

export interface Extent {
  offset: number;
  data: Buffer;
}

export class FileBuffer {
  /** Extents sorted by offset, never overlapping (they may touch). */
  extents: Extent[] = [];
  dirtyBytes = 0;
  /** Logical size including unflushed writes and truncation. */
  size: number;
  /** Size of `base` content (what the stored object holds). */
  baseSize: number;
  /** Time of the last unflushed change, reported as mtime until the flush stores it. */
  mtimeUs: number | undefined = undefined;
  /** Set by truncation even when nothing else is dirty. */
  resized = false;
  /** The smallest size below the stored size the file was cut to since the last flush: stored bytes past it are gone. */
  truncatedTo: number | null = null;

  constructor(public base: Handle | null, size: number) {
    this.size = size;
    this.baseSize = size;
  }

  get dirty(): boolean {
    return this.extents.length > 0 || this.resized;
  }

  /**
   * Records a write (copying `data`); later writes win where they overlap. Sequential writes only
   * append an extent (no copying of what is already buffered); overlapping ones are folded.
   */
  write(offset: number, data: Buffer): void {
    if (data.length === 0) return;
    const end = offset + data.length;
    const ex = this.extents;
    // First extent that ends after `offset` (extents are sorted and disjoint).
    let lo = 0;
    let hi = ex.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ex[mid].offset + ex[mid].data.length <= offset) lo = mid + 1;
      else hi = mid;
    }
    let last = lo;
    while (last < ex.length && ex[last].offset < end) last++;
    let piece: Extent = { offset, data: Buffer.from(data) };
    if (last > lo) {
      // Overlap: one extent covering old and new, new bytes on top.
      const nOff = Math.min(offset, ex[lo].offset);
      const nEnd = Math.max(end, ex[last - 1].offset + ex[last - 1].data.length);
      const buf = Buffer.allocUnsafe(nEnd - nOff);
      for (let i = lo; i < last; i++) {
        ex[i].data.copy(buf, ex[i].offset - nOff);
        this.dirtyBytes -= ex[i].data.length;
      }
      data.copy(buf, offset - nOff);
      piece = { offset: nOff, data: buf };
    }
    ex.splice(lo, last - lo, piece);
    this.dirtyBytes += piece.data.length;
    if (end > this.size) this.size = end;
  }

  truncate(size: number): void {
    this.extents = this.extents
      .filter((e) => e.offset < size)
      .map((e) => (e.offset + e.data.length > size ? { offset: e.offset, data: e.data.subarray(0, size - e.offset) } : e));
    this.dirtyBytes = this.extents.reduce((s, e) => s + e.data.length, 0);
    this.size = size;
    this.resized = true;
    if (size < this.baseSize) this.truncatedTo = this.truncatedTo === null ? size : Math.min(this.truncatedTo, size);
  }

  /** Reads through the buffer: stored content below, unflushed writes on top, zeros past the stored size. */
  read(objects: ObjectStore, offset: number, length: number): Buffer {
    const end = Math.min(this.size, offset + length);
    if (end <= offset) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offset);
    // A truncation below the base size hides the base's tail even where it is still stored.
    const baseLimit = Math.min(this.baseSize, this.size, this.truncatedTo ?? Number.POSITIVE_INFINITY);
    if (this.base && offset < baseLimit) {
      objects.readObject(this.base, offset, Math.min(end, baseLimit) - offset).copy(out, 0);
    }
    for (const e of this.extents) {
      const s = Math.max(offset, e.offset);
      const t = Math.min(end, e.offset + e.data.length);
      if (s < t) e.data.copy(out, s - offset, s - e.offset, t - e.offset);
    }
    return out;
  }


  /** After a flush: the new stored content is `base` of `size` bytes, nothing dirty. */
  flushed(base: Handle | null): void {
    this.base = base;
    this.baseSize = this.size;
    this.extents = [];
    this.dirtyBytes = 0;
    this.resized = false;
    this.truncatedTo = null;
    this.mtimeUs = undefined;
  }
}
