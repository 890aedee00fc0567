import type { ObjectStore } from '../cas/object-store.js';
import type { Handle } from '../types.js';

// Unflushed writes of one live file: sorted, non-overlapping extents over the stored content.
// Every open handle of the file shares one buffer, so readers see writers at once.
//
// A flush runs across event-loop turns, so the file keeps changing while it runs: beginFlush()
// hands the writes so far to the flush (they stay readable as a layer between the stored content
// and newer writes), endFlush() makes its result the stored content, abortFlush() puts them back.

export interface Extent {
  offset: number;
  data: Buffer;
}

/** The state of a file a flush stores: `base` with `extents` written on top, cut to `truncatedTo`, then sized to `size`. */
/**
 * Writes are copied into slabs of this size, which go back to a shared pool once a flush has
 * stored them: a fresh buffer per 128 KiB write costs as much in page faults and garbage
 * collection as the copy itself.
 */
const SLAB_BYTES = 1024 * 1024;
const MAX_SPARE_SLABS = 64;
const spareSlabs: Buffer[] = [];

export interface FlushJob {
  readonly base: Handle | null;
  readonly extents: Extent[];
  readonly size: number;
  readonly truncatedTo: number | null;
  readonly resized: boolean;
  /** The mtime to store with the content. */
  readonly mtimeUs: number | undefined;
  /** Slabs holding the job's extents: reused once the job is stored. */
  readonly slabs: Buffer[];
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
  /** The flush in progress, if any: its writes are no longer in `extents` nor stored yet. */
  flushing: FlushJob | null = null;
  /** The flush that was running when an explicit mtime was set (utimens): it must not store its write time over it. */
  private timeSetDuring: FlushJob | null = null;
  /** Why the last background flush failed; reported (and cleared) by the next flush, fsync or close. */
  error: Error | null = null;
  /** Flushes begun so far; a flush's number is the value after its beginFlush(). */
  flushesBegun = 0;
  /** The number of the latest flush that ended (stored its job). */
  lastFlushEnded = 0;
  /** Slabs holding unflushed writes (not the flush's), and the bytes used in the last one. */
  private slabs: Buffer[] = [];
  private slabUsed = SLAB_BYTES;

  constructor(public base: Handle | null, size: number) {
    this.size = size;
    this.baseSize = size;
  }

  /** Changes not handed to a flush yet. */
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
    let piece: Extent = { offset, data: this.copyIn(data) };
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

  /** A copy of `data` in this buffer's current slab (big writes get their own buffer). */
  private copyIn(data: Buffer): Buffer {
    if (data.length > SLAB_BYTES / 2) return Buffer.from(data);
    if (this.slabUsed + data.length > SLAB_BYTES) {
      this.slabs.push(spareSlabs.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES));
      this.slabUsed = 0;
    }
    const out = this.slabs[this.slabs.length - 1].subarray(this.slabUsed, this.slabUsed + data.length);
    data.copy(out);
    this.slabUsed += data.length;
    return out;
  }

  truncate(size: number): void {
    this.extents = this.extents
      .filter((e) => e.offset < size)
      .map((e) => (e.offset + e.data.length > size ? { offset: e.offset, data: e.data.subarray(0, size - e.offset) } : e));
    this.dirtyBytes = this.extents.reduce((s, e) => s + e.data.length, 0);
    this.size = size;
    this.resized = true;
    // During a flush, `truncatedTo` is relative to what the flush will store.
    if (size < (this.flushing ? this.flushing.size : this.baseSize)) this.truncatedTo = this.truncatedTo === null ? size : Math.min(this.truncatedTo, size);
  }

  /** Reads through the buffer: stored content below, unflushed writes on top, zeros past the stored size. */
  read(objects: ObjectStore, offset: number, length: number): Buffer {
    const end = Math.min(this.size, offset + length);
    if (end <= offset) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offset);
    // A truncation below the base size hides the base's tail even where it is still stored.
    const cut = Math.min(this.size, this.truncatedTo ?? Infinity);
    const f = this.flushing;
    const baseLimit = Math.min(this.baseSize, cut, f ? Math.min(f.size, f.truncatedTo ?? Infinity) : Infinity);
    if (this.base && offset < baseLimit) {
      objects.readObject(this.base, offset, Math.min(end, baseLimit) - offset).copy(out, 0);
    }
    if (f) {
      const limit = Math.min(end, f.size, cut);
      for (const e of f.extents) {
        const s = Math.max(offset, e.offset);
        const t = Math.min(limit, e.offset + e.data.length);
        if (s < t) e.data.copy(out, s - offset, s - e.offset, t - e.offset);
      }
    }
    for (const e of this.extents) {
      const s = Math.max(offset, e.offset);
      const t = Math.min(end, e.offset + e.data.length);
      if (s < t) e.data.copy(out, s - offset, s - e.offset, t - e.offset);
    }
    return out;
  }


  /** Hands everything unflushed to a flush; the buffer then collects only later changes. */
  beginFlush(): FlushJob {
    if (this.flushing) throw new Error('a flush of this file is already running');
    const job: FlushJob = {
      base: this.base, extents: this.extents, size: this.size, truncatedTo: this.truncatedTo,
      resized: this.resized, mtimeUs: this.mtimeUs, slabs: this.slabs,
    };
    // Later writes go to other slabs, so the job's can be reused as a whole once it is stored.
    this.slabs = [];
    this.slabUsed = SLAB_BYTES;
    this.flushing = job;
    this.flushesBegun++;
    this.extents = [];
    this.dirtyBytes = 0;
    this.resized = false;
    this.truncatedTo = null;
    return job;
  }

  /** utimens set the mtime explicitly: it wins over the time of the writes made before it, flushing or not. */
  timeSet(): void {
    this.mtimeUs = undefined;
    if (this.flushing) this.timeSetDuring = this.flushing;
  }

  /** The mtime the flush of `job` stores with its content (undefined: leave the inode's). */
  mtimeToStore(job: FlushJob): number | undefined {
    return this.timeSetDuring === job ? undefined : job.mtimeUs;
  }

  /** The flush stored `job` as `base`: that is the stored content now. */
  endFlush(job: FlushJob, base: Handle | null): void {
    if (this.flushing !== job) throw new Error('ending a flush that is not running');
    this.flushing = null;
    this.timeSetDuring = null;
    this.lastFlushEnded = this.flushesBegun;
    // Nothing refers to the job's bytes any more: reads copied them out, the chunkers copied what they kept.
    for (const slab of job.slabs) if (spareSlabs.length < MAX_SPARE_SLABS) spareSlabs.push(slab);
    this.base = base;
    this.baseSize = job.size;
    if (!this.dirty && this.mtimeUs === job.mtimeUs) this.mtimeUs = undefined;
  }

  /** The flush of `job` failed: its writes become unflushed again, under the ones made since. */
  abortFlush(job: FlushJob): void {
    if (this.flushing !== job) throw new Error('aborting a flush that is not running');
    this.timeSetDuring = null; // the job's writes are unflushed again, and mtimeUs says whether a time was set since
    const later = this.extents;
    const laterCut = this.truncatedTo;
    const size = this.size;
    const resized = this.resized;
    this.flushing = null;
    // The job's slabs hold its extents again; the newest slab (and its fill level) stays current.
    if (this.slabs.length === 0) this.slabUsed = SLAB_BYTES;
    this.slabs = job.slabs.concat(this.slabs);
    this.extents = job.extents;
    this.dirtyBytes = job.extents.reduce((n, e) => n + e.data.length, 0);
    this.truncatedTo = job.truncatedTo;
    this.resized = job.resized;
    this.size = job.size;
    if (laterCut !== null) this.truncate(laterCut);
    if (resized) this.resized = true;
    this.size = size;
    for (const e of later) this.write(e.offset, e.data);
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
