import fs from 'node:fs';

// Reads and fsyncs on libuv's pool with descriptors that outlive their closing: a descriptor closed
// while a read or fsync of it is still queued could be reused for another file by the time the read runs, so
// closing waits (without blocking) for the reads in flight on it.

/**
 * O_DIRECT reads need the file range and the memory aligned to the device's block size; 4 KiB
 * suits every block size Linux file systems use.
 */
export const DIRECT_ALIGN = 4096;
/** What a buffer needs beyond a direct read's length: the range rounded out on both sides, and room to align the memory. */
export const DIRECT_SLACK = 3 * DIRECT_ALIGN;

/** `file` opened for reading with O_DIRECT, or null where its file system refuses that (tmpfs, for one). */
export function openDirect(file: string): number | null {
  try {
    return fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return null;
    throw e;
  }
}

export class AsyncFds {
  private readonly busy = new Map<number, number>();
  private readonly closeWhenIdle = new Set<number>();
  /** Where each buffer's memory is aligned for O_DIRECT (see readDirect()), and where the last one's was. */
  private readonly alignedAt = new WeakMap<ArrayBufferLike, number>();
  private lastAligned = 0;

  /** Reads `length` bytes at `offset`; shorter only where the file ends. */
  async read(fd: number, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    const got = await this.readInto(fd, out, offset, length);
    return got === length ? out : out.subarray(0, got);
  }

  /**
   * Reads `length` bytes at `offset` into the start of `out`; resolves the count (shorter only where
   * the file ends). `out` must be memory nobody else may reuse before this settles: the read
   * runs on another thread.
   */
  readInto(fd: number, out: Buffer, offset: number, length: number): Promise<number> {
    return this.use(fd, async () => {
      let got = 0;
      while (got < length) {
        const n = await new Promise<number>((resolve, reject) => fs.read(fd, out, got, length - got, offset + got, (e, k) => (e ? reject(e) : resolve(k))));
        if (n <= 0) break;
        got += n;
      }
      return got;
    });
  }

  /**
   * Reads `length` bytes at `offset` of `fd` (opened by openDirect) into `ab`, which must hold
   * `length + DIRECT_SLACK` bytes, with one pread that bypasses the page cache; resolves a view of
   * `ab` holding the bytes from `offset` on (shorter only where the file ends). Rejects with
   * EINVAL if the file or the memory cannot be aligned after all.
   */
  readDirect(fd: number, ab: ArrayBufferLike, offset: number, length: number): Promise<Buffer> {
    if (ab.byteLength < length + DIRECT_SLACK) return Promise.reject(new RangeError(`a direct read of ${length} bytes needs a buffer of ${length + DIRECT_SLACK}, not ${ab.byteLength}`));
    const from = offset - (offset % DIRECT_ALIGN);
    const lead = offset - from;
    const span = Math.ceil((lead + length) / DIRECT_ALIGN) * DIRECT_ALIGN;
    const once = (base: number) => new Promise<number>((resolve, reject) => {
      // One read: after a short one (the end of the file) the next offset would not be aligned.
      fs.read(fd, new Uint8Array(ab, base, span), 0, span, from, (e, n) => (e ? reject(e) : resolve(n)));
    });
    return this.use(fd, async () => {
      // JavaScript cannot see an address, so where in `ab` the memory suits the device is found
      // by trying: a direct read into memory it cannot use fails with EINVAL before any I/O. The
      // first guess is where the last buffer's was (one allocator, one answer), then every 16
      // bytes; the answer is kept per buffer (BufferPool recycles them).
      const known = this.alignedAt.get(ab);
      const tries = known !== undefined ? [known] : [this.lastAligned, ...Array.from({ length: DIRECT_ALIGN / 16 }, (_, k) => k * 16).filter((k) => k !== this.lastAligned)];
      for (let k = 0; ; k++) {
        try {
          const n = await once(tries[k]);
          this.alignedAt.set(ab, tries[k]);
          this.lastAligned = tries[k];
          return Buffer.from(ab, tries[k] + lead, Math.max(0, Math.min(length, n - lead)));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL' || k + 1 >= tries.length) throw e;
        }
      }
    });
  }

  /** fsync(2) of `fd`. */
  fsync(fd: number): Promise<void> {
    return this.use(fd, () => new Promise<void>((resolve, reject) => fs.fsync(fd, (e) => (e ? reject(e) : resolve()))));
  }

  /** Runs `op` on `fd`, which close() keeps open until it is done. */
  private async use<T>(fd: number, op: () => Promise<T>): Promise<T> {
    this.busy.set(fd, (this.busy.get(fd) ?? 0) + 1);
    try {
      return await op();
    } finally {
      const n = (this.busy.get(fd) ?? 1) - 1;
      if (n > 0) this.busy.set(fd, n);
      else {
        this.busy.delete(fd);
        if (this.closeWhenIdle.delete(fd)) fs.closeSync(fd);
      }
    }
  }

  /** Closes `fd` now, or once its reads in flight are done. */
  close(fd: number): void {
    if (this.busy.has(fd)) this.closeWhenIdle.add(fd);
    else fs.closeSync(fd);
  }
}
