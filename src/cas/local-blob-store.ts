// Blobs as files in a local directory, spread over 256 subdirectories (<root>/<xx>/<name>) so no
// directory grows past a few thousand entries. The bucket comes from a hash of the name rather
// than its last characters, because container names end in decimal digits (only 100 buckets).
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import type { BlobAppender, BlobStore } from '../types.js';
import { AsyncFds } from './async-fd.js';
import { StrataError, invalid, notFound } from '../errors.js';

const DEFAULT_MAX_OPEN_READERS = 64;

export interface LocalBlobStoreOptions {
  /** How many read file descriptors stay open between reads (least recently used closed first). */
  maxOpenReaders?: number;
}

export class LocalBlobStore implements BlobStore {
  readonly root: string;
  private readonly maxOpenReaders: number;
  /** name -> read fd; Map order is recency order (oldest first). */
  private readonly readers = new Map<string, number>();
  /**
   * Asynchronous reads in flight per fd. A descriptor evicted or dropped meanwhile is closed only
   * when its last read is done: closing it earlier could let the number be reused by another open
   * and the read land in the wrong file.
   */
  private readonly asyncFds = new AsyncFds();

  /** Uses (and creates if needed) the directory `root`. */
  constructor(root: string, opts: LocalBlobStoreOptions = {}) {
    this.root = path.resolve(root);
    this.maxOpenReaders = Math.max(1, opts.maxOpenReaders ?? DEFAULT_MAX_OPEN_READERS);
    fs.mkdirSync(this.root, { recursive: true });
  }

  /** Where blob `name` lives on disk (for tools and tests; the file need not exist). */
  pathOf(name: string): string {
    checkName(name);
    return path.join(this.root, bucketOf(name), name);
  }

  /** Reads exactly `length` bytes at `offset`; ENOENT if the blob is missing, ETRUNC if it is shorter. */
  read(name: string, offset: number, length: number): Buffer {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw invalid(`blob ${name}: bad range offset=${offset} length=${length}`);
    }
    const fd = this.readerFd(name);
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = fs.readSync(fd, buf, got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    if (got < length) {
      throw new StrataError('ETRUNC', `blob ${name}: wanted ${length} bytes at offset ${offset}, only ${got} there`);
    }
    return buf;
  }

  /** read() on the libuv pool: the event loop keeps serving while the disk works. */
  async readAsync(name: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || (into && into.length < length)) {
      throw invalid(`blob ${name}: bad range offset=${offset} length=${length}`);
    }
    const buf = into ?? Buffer.allocUnsafe(length);
    const got = await this.asyncFds.readInto(this.readerFd(name), buf, offset, length);
    if (got < length) {
      throw new StrataError('ETRUNC', `blob ${name}: wanted ${length} bytes at offset ${offset}, only ${got} there`);
    }
    return buf.length === length ? buf : buf.subarray(0, length);
  }

  size(name: string): number {
    try {
      return fs.statSync(this.pathOf(name)).size;
    } catch (e) {
      if (errno(e) === 'ENOENT') throw notFound(`blob ${name}`);
      throw e;
    }
  }

  /** All blob names, sorted. */
  list(): string[] {
    const names: string[] = [];
    for (const bucket of fs.readdirSync(this.root)) {
      if (!/^[0-9a-f]{2}$/.test(bucket)) continue;
      let entries: string[];
      try {
        entries = fs.readdirSync(path.join(this.root, bucket));
      } catch (e) {
        if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') continue;
        throw e;
      }
      names.push(...entries);
    }
    return names.sort();
  }

  /** Removes the blob. An absent blob is not an error, so a retried deletion converges (like S3). */
  delete(name: string): void {
    this.dropReader(name);
    try {
      fs.unlinkSync(this.pathOf(name));
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e;
    }
  }

  /** Creates a new, empty blob; EEXIST if the name is taken. */
  create(name: string): BlobAppender {
    const file = this.pathOf(name);
    const dir = path.dirname(file);
    // A freshly made bucket must itself be recorded durably in the root directory: by the blob's
    // first sync(), as nothing needs it durable before its contents are.
    const newBucket = fs.mkdirSync(dir, { recursive: true }) !== undefined;
    let fd: number;
    try {
      fd = fs.openSync(file, 'wx');
    } catch (e) {
      if (errno(e) === 'EEXIST') throw new StrataError('EEXIST', `blob ${name} already exists`);
      throw e;
    }
    // A reader cached before a delete+create of the same name would still see the old file.
    this.dropReader(name);
    return new LocalBlobAppender(name, fd, dir, newBucket ? this.root : null);
  }

  /** Closes every cached read descriptor. The store stays usable (they reopen on demand). */
  close(): void {
    for (const fd of this.readers.values()) this.closeFd(fd);
    this.readers.clear();
  }

  private closeFd(fd: number): void {
    this.asyncFds.close(fd);
  }

  private readerFd(name: string): number {
    const cached = this.readers.get(name);
    if (cached !== undefined) {
      this.readers.delete(name);
      this.readers.set(name, cached);
      return cached;
    }
    let fd: number;
    try {
      fd = fs.openSync(this.pathOf(name), 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') throw notFound(`blob ${name}`);
      throw e;
    }
    this.readers.set(name, fd);
    if (this.readers.size > this.maxOpenReaders) {
      const [oldest, oldFd] = this.readers.entries().next().value as [string, number];
      this.readers.delete(oldest);
      this.closeFd(oldFd);
    }
    return fd;
  }

  private dropReader(name: string): void {
    const fd = this.readers.get(name);
    if (fd === undefined) return;
    this.readers.delete(name);
    this.closeFd(fd);
  }
}

class LocalBlobAppender implements BlobAppender {
  private end = 0;
  private dirSynced = false;
  private fd: number | null;
  /** Asynchronous fsyncs in flight keep the descriptor open past close(). */
  private readonly asyncFds = new AsyncFds();

  constructor(private readonly name: string, fd: number, private readonly dir: string, private parentToSync: string | null) {
    this.fd = fd;
  }

  get length(): number {
    return this.end;
  }

  /** Writes `data` at the end; on failure the blob is cut back to its previous length and the error rethrown. */
  append(data: Buffer): number {
    const fd = this.openFd();
    const at = this.end;
    let done = 0;
    try {
      while (done < data.length) {
        done += fs.writeSync(fd, data, done, data.length - done, at + done);
      }
    } catch (e) {
      // Without this, a torn write would leave bytes past `end` that a later, shorter append
      // would not fully cover, and a scan would read them as part of the blob.
      if (done > 0) {
        try {
          fs.ftruncateSync(fd, at);
        } catch {
          // The original error matters more; the tail is garbage a container scan rejects anyway.
        }
      }
      throw e;
    }
    this.end = at + data.length;
    return at;
  }

  sync(): void {
    fs.fsyncSync(this.openFd());
    this.syncDirOnce();
  }

  async syncAsync(): Promise<void> {
    await this.asyncFds.fsync(this.openFd());
    if (this.dirSynced) return;
    if (this.parentToSync !== null) await fsyncDirAsync(this.parentToSync);
    this.parentToSync = null;
    await fsyncDirAsync(this.dir);
    this.dirSynced = true;
  }

  /** The file's name is only durable once its directory entry is; that needs doing only once. */
  private syncDirOnce(): void {
    if (!this.dirSynced) {
      if (this.parentToSync !== null) {
        fsyncDir(this.parentToSync);
        this.parentToSync = null;
      }
      fsyncDir(this.dir);
      this.dirSynced = true;
    }
  }

  /** Syncs and closes; closing twice is harmless. The descriptor is released even if the sync fails. */
  close(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    try {
      this.sync();
    } finally {
      this.fd = null;
      // After any fsync still queued on libuv's pool (the sync above made the bytes durable).
      this.asyncFds.close(fd);
    }
  }

  private openFd(): number {
    if (this.fd === null) throw invalid(`blob ${this.name} is closed`);
    return this.fd;
  }
}

function bucketOf(name: string): string {
  // crc32 is a fixed, standard function: changing this mapping would orphan every stored blob.
  return (zlib.crc32(name) & 0xff).toString(16).padStart(2, '0');
}

function checkName(name: string): void {
  if (name.length === 0 || name === '.' || name === '..' || /[/\\\0]/.test(name)) {
    throw invalid(`bad blob name ${JSON.stringify(name)}`);
  }
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

async function fsyncDirAsync(dir: string): Promise<void> {
  const h = await fs.promises.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}
