import type { ObjectStore } from '../cas/object-store.js';
import type { Handle } from '../types.js';

// Unflushed writes of one live file: sorted, non-overlapping extents over the stored content.
// Every open handle of the file shares one buffer, so readers see writers at once.

export interface Extent {
  offset: number;
  data: Buffer;
}

export class FileBuffer {
  /** Extents sorted by offset, never overlapping or touching. */
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

  /** Records a write (copying `data`); later writes win where they overlap. */
  write(offset: number, data: Buffer): void {
    if (data.length === 0) return;
    const end = offset + data.length;
    const keep: Extent[] = [];
    let merged = Buffer.from(data);
    let mOff = offset;
    for (const e of this.extents) {
      const eEnd = e.offset + e.data.length;
      if (eEnd < mOff || e.offset > mOff + merged.length) { keep.push(e); continue; }
      // Overlapping or touching: fold into one extent, new bytes on top.
      const nOff = Math.min(mOff, e.offset);
      const nEnd = Math.max(mOff + merged.length, eEnd);
      const buf = Buffer.allocUnsafe(nEnd - nOff);
      e.data.copy(buf, e.offset - nOff);
      merged.copy(buf, mOff - nOff);
      merged = buf;
      mOff = nOff;
    }
    keep.push({ offset: mOff, data: merged });
    keep.sort((a, b) => a.offset - b.offset);
    this.extents = keep;
    this.dirtyBytes = keep.reduce((s, e) => s + e.data.length, 0);
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
