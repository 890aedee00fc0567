// A BlobStore wrapper that injects faults, so tests can prove damage and I/O errors are caught
// rather than turned into wrong data. Faults are armed explicitly; with none armed it is a
// transparent pass-through.
import type { BlobAppender, BlobStore } from '../../src/types.js';
import { StrataError } from '../../src/errors.js';

/** An error shaped like the one node:fs throws (code, errno, syscall). */
export function ioError(code: string, syscall: string): NodeJS.ErrnoException {
  const errnos: Record<string, number> = { ENOSPC: -28, EIO: -5, EDQUOT: -122, EROFS: -30 };
  return Object.assign(new Error(`${code}: injected fault, ${syscall}`), {
    code,
    errno: errnos[code] ?? -5,
    syscall,
  });
}

interface Flip {
  name: string;
  offset: number;
  mask: number;
}

interface PendingFailure {
  /** Counts down on each matching operation; fires at 1. */
  remaining: number;
  code: string;
  /** For appends: bytes written to the inner blob before failing (a torn write). */
  partialBytes: number;
}

export class FaultyBlobStore implements BlobStore {
  /** Operations seen so far, for assertions. */
  appends = 0;
  syncs = 0;
  private flips: Flip[] = [];
  private truncations = new Map<string, number>();
  private appendFailures: PendingFailure[] = [];
  private syncFailures: PendingFailure[] = [];

  constructor(readonly inner: BlobStore) {}

  /** Every later read covering byte `offset` of blob `name` sees it XORed with `mask`. */
  flipByteOnRead(name: string, offset: number, mask = 0xff): this {
    this.flips.push({ name, offset, mask });
    return this;
  }

  /**
   * The n-th append from now (1 = the next one) throws an fs-style error with `code`, after
   * writing its first `partialBytes` bytes to the inner blob (0 by default: nothing written).
   */
  failAppend(n: number, code = 'ENOSPC', partialBytes = 0): this {
    this.appendFailures.push({ remaining: n, code, partialBytes });
    return this;
  }

  /** The n-th sync from now (1 = the next one, including the one inside close()) throws. */
  failSync(n: number, code = 'EIO'): this {
    this.syncFailures.push({ remaining: n, code, partialBytes: 0 });
    return this;
  }

  /** Blob `name` looks only `length` bytes long: size() says so and reads past it fail with ETRUNC. */
  truncate(name: string, length: number): this {
    this.truncations.set(name, length);
    return this;
  }

  clearFaults(): void {
    this.flips = [];
    this.truncations.clear();
    this.appendFailures = [];
    this.syncFailures = [];
  }

  read(name: string, offset: number, length: number): Buffer {
    const cut = this.truncations.get(name);
    if (cut !== undefined && offset + length > cut) {
      throw new StrataError(
        'ETRUNC',
        `blob ${name}: wanted ${length} bytes at offset ${offset}, only ${Math.max(0, cut - offset)} there`,
      );
    }
    const buf = this.inner.read(name, offset, length);
    const flips = this.flips.filter((f) => f.name === name && f.offset >= offset && f.offset < offset + length);
    if (flips.length === 0) return buf;
    // Copy: the inner store might hand out a buffer it also keeps.
    const out = Buffer.from(buf);
    for (const f of flips) out[f.offset - offset] ^= f.mask;
    return out;
  }

  size(name: string): number {
    const real = this.inner.size(name);
    const cut = this.truncations.get(name);
    return cut === undefined ? real : Math.min(real, cut);
  }

  list(): string[] {
    return this.inner.list();
  }

  delete(name: string): void {
    this.inner.delete(name);
  }

  create(name: string): BlobAppender {
    const inner = this.inner.create(name);
    const store = this;
    return {
      append(data: Buffer): number {
        store.appends++;
        const f = takeDue(store.appendFailures);
        if (f) {
          if (f.partialBytes > 0) inner.append(data.subarray(0, Math.min(f.partialBytes, data.length)));
          throw ioError(f.code, 'write');
        }
        return inner.append(data);
      },
      get length(): number {
        return inner.length;
      },
      sync(): void {
        store.syncs++;
        const f = takeDue(store.syncFailures);
        if (f) throw ioError(f.code, 'fsync');
        inner.sync();
      },
      close(): void {
        store.syncs++;
        const f = takeDue(store.syncFailures);
        if (f) {
          // Like a real close whose fsync failed: the descriptor is released all the same.
          try {
            inner.close();
          } catch {
            // The injected error is the one under test.
          }
          throw ioError(f.code, 'fsync');
        }
        inner.close();
      },
    };
  }
}

/** Counts every pending failure down by one and returns (and removes) the one that is due. */
function takeDue(pending: PendingFailure[]): PendingFailure | undefined {
  let due: PendingFailure | undefined;
  for (const p of pending) {
    p.remaining--;
    if (p.remaining === 0 && !due) due = p;
  }
  for (let i = pending.length - 1; i >= 0; i--) if (pending[i].remaining <= 0) pending.splice(i, 1);
  return due;
}
