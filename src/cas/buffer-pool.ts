// Recycled buffers for the read path. Every container read and every decoded batch used to get a
// fresh ArrayBuffer of a few MiB; V8 counts those as external memory and answers a steady stream
// of them with a full mark-compact every ~30 MiB (27 of them while reading a 1 GiB image, about a
// core-second of GC across the main and helper threads). Buffers taken from here go back when
// their user is done with them, so a sequential read allocates only while its window grows.
// They are SharedArrayBuffers: an ArrayBuffer transferred to the decode worker and back arrives
// as a new object that V8 counts as new external memory, so recycling transferred buffers still
// drew a scavenge ("external memory pressure") every ~11 MiB in a daemon that had written a few
// GB. A shared buffer goes to the worker and back without changing identity or accounting.

/** Smallest size class; smaller requests get a buffer of this size. */
const MIN_CLASS = 64 * 1024;

export class BufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>();
  private keptBytes = 0;

  /** At most `maxKeptBytes` of idle buffers are kept; beyond that, returned buffers are left to the GC. */
  constructor(private readonly maxKeptBytes = 64 * 1024 * 1024) {}

  /** A SharedArrayBuffer of at least `bytes` (its size rounded up to a power of two). */
  take(bytes: number): SharedArrayBuffer {
    const size = classOf(bytes);
    const list = this.free.get(size);
    const ab = list?.pop();
    if (ab) {
      this.keptBytes -= size;
      return ab;
    }
    return new SharedArrayBuffer(size);
  }

  /** Hands a buffer back for reuse; the caller must hold no view of it any more. Unshared or odd-sized buffers are ignored. */
  give(ab: ArrayBufferLike): void {
    if (!isShared(ab)) return;
    const size = ab.byteLength;
    if (size < MIN_CLASS || classOf(size) !== size || this.keptBytes + size > this.maxKeptBytes) return;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(ab);
    this.keptBytes += size;
  }

  /** Bytes of idle buffers held (for tests and stats). */
  get idleBytes(): number {
    return this.keptBytes;
  }
}

/**
 * One recycled buffer shared by the LeafFetches of one batch (a container read and its decoded
 * chunks, or one native read): it returns to the pool once its bytes are final (settle) and every
 * holder has released its chunk.
 */
export class PooledRun {
  private out: ArrayBufferLike | null = null;
  private settled = false;

  constructor(private readonly pool: BufferPool, private holders: number) {}

  hold(): void {
    this.holders++;
  }

  release(): void {
    if (--this.holders === 0 && this.settled && this.out) this.pool.give(this.out);
  }

  /** The batch's bytes are final (`out` null: nothing to give back, e.g. a worker that failed kept it). */
  settle(out: ArrayBufferLike | null): void {
    this.settled = true;
    this.out = out;
    if (this.holders === 0 && out) this.pool.give(out);
  }
}

export function isShared(b: ArrayBufferLike): b is SharedArrayBuffer {
  return b instanceof SharedArrayBuffer;
}

/**
 * What to pass as postMessage's transfer list for these buffers: each distinct unshared one
 * (transferred, so detached here); shared ones travel without it.
 */
export function transferList(...buffers: Array<ArrayBufferLike | undefined>): ArrayBuffer[] {
  return [...new Set(buffers)].filter((b): b is ArrayBuffer => b !== undefined && !isShared(b));
}

/**
 * Copies all of `src` into `dst` at `at` with one memcpy. Buffer#copy and TypedArray#set copy out
 * of a SharedArrayBuffer with V8's word-by-word relaxed-atomic loop: measured on a performance
 * view read (1 GiB, 128 KiB requests) that copy cost the main thread about 0.3 s per GiB more
 * than a memcpy, most of its time per read. Buffer#fill with a buffer value is node's native
 * fill, which memcpys the value once (and repeats it only when it is shorter than the range).
 */
export function copyBytes(src: Uint8Array, dst: Buffer, at: number): void {
  if (src.length === 0) return; // fill() rejects an empty value
  if (at < 0 || at + src.length > dst.length) throw new RangeError(`copy of ${src.length} bytes at ${at} overruns a buffer of ${dst.length}`);
  dst.fill(src, at, at + src.length);
}

function classOf(bytes: number): number {
  let size = MIN_CLASS;
  while (size < bytes) size *= 2;
  return size;
}
