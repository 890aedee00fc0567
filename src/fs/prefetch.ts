import { copyBytes } from '../cas/buffer-pool.js';
import type { LeafFetch, LeafSource, Lease, ObjectLeaf } from '../types.js';

/** Where offer() hands bytes on: see ReadWindow.put (a chunk in recycled memory comes with its fetch as the lease). */
export type OfferPut = (offset: number, bytes: Buffer | null, length: number, lease?: Lease) => boolean;

// Read-ahead for one open file. The kernel asks for 128 KiB at a time and waits for each answer
// before the application sees it; a read that goes to a container (pread, zstd, BLAKE3) costs far
// more than the FUSE round trip. Once reads are sequential (each starts where the previous one
// ended), the following chunks are fetched concurrently, so the disk, the I/O pool and the main
// thread overlap and most requests find their chunks already there.

export interface PrefetchOptions {
  /** How far past the end of a sequential read chunks are fetched ahead. */
  aheadBytes: number;
  /**
   * A read counts as sequential when it starts at most this far past the furthest end read so far
   * (requests of one kernel read-ahead window may arrive in any order)...
   */
  slackBytes: number;
  /**
   * ...or at most this far before it: the kernel's read-ahead sends several requests at once
   * (up to the mount's read_ahead_kb), and they arrive in any order. Chunks this far behind the
   * furthest read are kept for such stragglers.
   */
  behindBytes: number;
}

export const DEFAULT_PREFETCH: PrefetchOptions = { aheadBytes: 16 * 1024 * 1024, slackBytes: 4 * 1024 * 1024, behindBytes: 4 * 1024 * 1024 };

/**
 * The read-ahead is topped up each time this share of it has been read (4 MiB of the default
 * 16 MiB): a batch of a few MiB lets the source read neighbouring chunks with one I/O, and the
 * three quarters still ahead cover the batch's decoding on a busy second core. (Refilling half of
 * an 8 MiB window at a time left a fifth of this 2-core machine idle during a capacity-view dd;
 * this leaves a tenth.)
 */
const REFILL_STEPS = 4;
/** How far past the read-ahead (in read-ahead windows) the source prepares. */
const PREPARE_AHEAD = 4;
/** Chunks behind the read position are forgotten each time it has moved on this share of the read-ahead (a walk over the window on every request cost more than the copy). */
const FORGET_STEPS = 8;

/** Zeros of a hole handed to offer()'s `put` at a time. */
const OFFER_HOLE_BYTES = 4 * 1024 * 1024;
/** offer() lists the leaves ahead this much at a time. */
const OFFER_STEP_BYTES = 1024 * 1024;

interface Slot {
  leaf: ObjectLeaf;
  fetch: LeafFetch;
}

/**
 * Reads byte ranges of one object, keeping a window of fetched or in-flight chunks around the
 * read position. Memory per reader stays below aheadBytes plus behindBytes (trimmed in steps of an
 * eighth of aheadBytes) plus one request and one chunk on each side. Not safe to share between
 * objects: make one per open handle.
 */
export class Prefetcher {
  /** Fetched or in-flight leaves by offset, in the order they were started. */
  private readonly window = new Map<number, Slot>();
  /** The furthest end of the current sequential run; -1 before the first read. */
  private front = -1;
  /** Everything below this offset (and above the read position) was already started. */
  private aheadUntil = 0;
  /** The source was asked to prepare up to here (see LeafSource.prepare). */
  private preparedUntil = 0;
  /** Where the window was last trimmed behind the read position. */
  private forgotAt = 0;
  private closed = false;
  private inFlight = 0;
  /** Called each time a group of fetches settles (while open), for instance to offer() what arrived. */
  onSettled: (() => void) | null = null;
  /** Where the bytes handed to offer()'s `put` end; -1 before any. */
  private offeredUntil = -1;

  constructor(
    private readonly source: LeafSource,
    readonly size: number,
    private readonly opts: PrefetchOptions = DEFAULT_PREFETCH,
  ) {}

  /**
   * Bytes [offset, offset + length) clamped to the size; holes read as zeros. With `into` (at least
   * `length` bytes) the bytes are copied there and a view of its start is returned. Answers at once
   * (no promise) when every chunk the read needs is in the window already: the usual case in a
   * sequential read, where a promise per request cost more than the copy.
   */
  read(offset: number, length: number, into?: Buffer): Buffer | Promise<Buffer> {
    if (this.closed) return Promise.reject(new Error('read from a closed prefetcher'));
    const end = Math.min(this.size, offset + Math.max(0, length));
    if (end <= offset) return Buffer.alloc(0);
    const leaves = this.source.leaves(offset, end);
    // Reads answered from what offer() handed on never come here: up to where it ended is near too.
    const near = this.front >= 0 && offset >= this.front - this.opts.behindBytes && offset <= Math.max(this.front, this.offeredUntil) + this.opts.slackBytes;
    const missing = leaves.filter((l) => !this.source.isHole(l) && this.window.get(l.offset)?.leaf.length !== l.length);
    if (missing.length) this.start(missing);
    const parts = leaves.map((l) => (this.source.isHole(l) ? null : this.slot(l).fetch));
    // This read holds its chunks until it has copied them, whatever the window forgets meanwhile.
    for (const f of parts) f?.hold?.();
    let waiting = false;
    try {
      this.advance(offset, end, near, leaves);
      let waits: Promise<void>[] | null = null;
      for (const f of parts) if (f && !f.bytes && !f.error && !waits?.includes(f.done)) (waits ??= []).push(f.done);
      if (!waits) {
        try {
          return this.copyOut(offset, end, leaves, parts, into);
        } catch (e) {
          return Promise.reject(e);
        }
      }
      waiting = true;
      // `into` is written only once the read is sure to succeed, all at once, with no await in between.
      return (waits.length === 1 ? waits[0] : Promise.all(waits))
        .then(() => this.copyOut(offset, end, leaves, parts, into))
        .finally(() => { for (const f of parts) f?.release?.(); });
    } finally {
      if (!waiting) for (const f of parts) f?.release?.();
    }
  }

  /** Moves the window along with a read of [offset, end): forgets what is behind, fetches ahead. */
  private advance(offset: number, end: number, near: boolean, leaves: ObjectLeaf[]): void {
    if (!near) {
      // A jump (random access, or a new pass from the start): keep only what this read uses.
      // (Before the first read the window holds only what concurrent first reads asked for.)
      if (this.front >= 0) {
        const used = new Set(leaves.map((l) => l.offset));
        for (const k of [...this.window.keys()]) if (!used.has(k)) this.drop(k);
      }
      this.aheadUntil = end;
      this.preparedUntil = 0;
      this.front = end;
    } else {
      this.front = Math.max(this.front, end);
    }
    if (near || offset === 0) {
      if (Math.abs(this.front - this.forgotAt) >= this.opts.aheadBytes / FORGET_STEPS) {
        this.forgotAt = this.front;
        this.forgetBefore(this.front - this.opts.behindBytes);
      }
      // Refill in steps of a few MiB (see REFILL_STEPS), where a refill per request would not
      // let the source combine neighbouring chunks.
      const front = this.front;
      if (this.aheadUntil - front < this.opts.aheadBytes - this.opts.aheadBytes / REFILL_STEPS) this.fetchAhead(Math.max(front, this.aheadUntil), front + this.opts.aheadBytes);
    }
  }

  /** The read's bytes from its settled chunks, or the first chunk's error (that chunk is forgotten, so a later read tries again). */
  private copyOut(offset: number, end: number, leaves: ObjectLeaf[], parts: Array<LeafFetch | null>, into?: Buffer): Buffer {
    for (let i = 0; i < leaves.length; i++) {
      const f = parts[i];
      if (!f?.error) continue;
      if (this.window.get(leaves[i].offset)?.fetch === f) this.drop(leaves[i].offset);
      throw f.error;
    }
    // Always a copy: the chunks' memory is recycled once released (copyBytes: it is shared memory).
    const out = into ? into.subarray(0, end - offset) : Buffer.allocUnsafe(end - offset);
    for (let i = 0; i < leaves.length; i++) {
      const leaf = leaves[i];
      const s = Math.max(offset, leaf.offset);
      const e = Math.min(end, leaf.offset + leaf.length);
      const data = parts[i]?.bytes;
      if (data) copyBytes(data.subarray(s - leaf.offset, e - leaf.offset), out, s - offset);
      else out.fill(0, s - offset, e - offset); // a hole
    }
    return out;
  }

  /**
   * Hands the window's settled chunks from `from` on to `put`, in offset order, each chunk's
   * verified bytes once (a hole as null and its length, in pieces of at most OFFER_HOLE_BYTES),
   * until a chunk not fetched yet, a failed one, or a refusal. Carries on where the previous offer
   * ended when `from` lies within what it offered, so `put` sees one continuous run per
   * sequential pass. Returns the mark: the offset whose reaching should be reported (reached()),
   * so that the read-ahead moves on in the steps read() itself would take.
   */
  offer(from: number, put: OfferPut): number {
    const mark = Math.max(from, this.front) + this.opts.aheadBytes / REFILL_STEPS;
    if (this.closed || from >= this.size) return mark;
    let at = this.offeredUntil >= from && this.offeredUntil - from <= this.opts.aheadBytes + this.opts.slackBytes ? this.offeredUntil : from;
    const to = Math.min(this.size, Math.max(this.aheadUntil, at));
    if (at >= to) return mark;
    this.offeredUntil = at;
    // In steps, so that an offer that stops at the first chunk still in flight (the usual case
    // when called as each fetch settles) does not list the leaves of the whole read-ahead.
    for (let stepEnd = Math.min(to, at + OFFER_STEP_BYTES); at < to; stepEnd = Math.min(to, at + OFFER_STEP_BYTES)) {
      if (!this.offerRange(at, stepEnd, put)) break;
      at = this.offeredUntil;
    }
    return mark;
  }

  /** offer() over [at, to): true when all of it was handed on (offeredUntil is then `to`). */
  private offerRange(at: number, to: number, put: OfferPut): boolean {
    for (const leaf of this.source.leaves(at, to)) {
      const skip = at - leaf.offset;
      if (skip < 0) return false; // a gap in the leaves: should not happen
      if (!this.source.isHole(leaf)) {
        const f = this.window.get(leaf.offset);
        if (!f || f.leaf.length !== leaf.length || !f.fetch.bytes) return false;
        const bytes = f.fetch.bytes.subarray(skip, leaf.length);
        const { hold, release } = f.fetch;
        if (!put(at, bytes, bytes.length, hold && release ? f.fetch as Lease : undefined)) return false;
        at += bytes.length;
      } else {
        const end = Math.min(leaf.offset + leaf.length, to);
        while (at < end) {
          const n = Math.min(end - at, OFFER_HOLE_BYTES);
          if (!put(at, null, n)) return false;
          at += n;
          this.offeredUntil = at;
        }
      }
      this.offeredUntil = at;
    }
    return at >= to;
  }

  /**
   * The reader got to `position` through bytes offer() handed on (so read() never saw those
   * reads): the read-ahead moves on as read() would have moved it.
   */
  reached(position: number): void {
    if (this.closed || this.front < 0) return;
    if (position < this.front - this.opts.behindBytes || position > Math.max(this.front, this.offeredUntil) + this.opts.slackBytes) return;
    this.advance(position, position, true, []);
  }

  /** The furthest end read (or reached) in the current sequential run; -1 before any. */
  get position(): number {
    return this.front;
  }

  /** Forgets every chunk; fetches still in flight finish and are dropped. */
  close(): void {
    this.closed = true;
    for (const k of [...this.window.keys()]) this.drop(k);
  }

  /** Chunks held or awaited (for tests and stats). */
  get windowSize(): number {
    return this.window.size;
  }

  /** Fetches started and not yet finished. */
  get pending(): number {
    return this.inFlight;
  }

  /** The window's slot for `leaf`, starting its fetch if it has none. */
  private slot(leaf: ObjectLeaf): Slot {
    const have = this.window.get(leaf.offset);
    if (have && have.leaf.length === leaf.length) return have;
    return this.start([leaf])[0];
  }

  /** Starts fetching `leaves` together (the source may combine adjacent ones into one read). */
  private start(leaves: ObjectLeaf[]): Slot[] {
    const fetches = this.source.fetch(leaves);
    const groups = new Map<Promise<void>, number>();
    for (const f of fetches) groups.set(f.done, (groups.get(f.done) ?? 0) + 1);
    for (const [done, n] of groups) {
      this.inFlight += n;
      void done.then(() => {
        this.inFlight -= n;
        if (!this.closed) this.onSettled?.();
      });
    }
    return leaves.map((leaf, i) => {
      const s = { leaf, fetch: fetches[i] };
      // The window holds what it keeps; a closed reader keeps nothing.
      if (this.closed) s.fetch.release?.();
      else {
        this.drop(leaf.offset);
        this.window.set(leaf.offset, s);
      }
      return s;
    });
  }

  /** Forgets the window's chunk at `offset`, releasing it. */
  private drop(offset: number): void {
    const s = this.window.get(offset);
    if (!s) return;
    this.window.delete(offset);
    s.fetch.release?.();
  }

  private forgetBefore(offset: number): void {
    for (const [k, s] of this.window) if (s.leaf.offset + s.leaf.length <= offset) this.drop(k);
  }

  private fetchAhead(from: number, to: number): void {
    to = Math.min(to, this.size);
    if (from >= to) return;
    // The source readies what leaves() will need further on (Merkle nodes) well before it is needed.
    if (this.source.prepare && to + 2 * this.opts.aheadBytes > this.preparedUntil && this.preparedUntil < this.size) {
      const start = Math.max(to, this.preparedUntil);
      this.preparedUntil = Math.min(this.size, to + PREPARE_AHEAD * this.opts.aheadBytes);
      void this.source.prepare(start, this.preparedUntil);
    }
    const wanted = this.source.leaves(from, to).filter((l) => !this.source.isHole(l) && !this.window.has(l.offset));
    if (wanted.length) this.start(wanted);
    this.aheadUntil = to;
  }
}
