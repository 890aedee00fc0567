import fs from 'node:fs';

// Reads and fsyncs on libuv's pool with descriptors that outlive their closing: a descriptor closed
// while a read or fsync of it is still queued could be reused for another file by the time the read runs, so
// closing waits (without blocking) for the reads in flight on it.

export class AsyncFds {
  private readonly busy = new Map<number, number>();
  private readonly closeWhenIdle = new Set<number>();

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
