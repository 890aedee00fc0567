// Fixed-size, offset-aligned chunking for disk and LUN images, where a changed block stays in place.

import { invalid } from '../errors.js';
import type { Chunker } from '../types.js';

const MAX_FIXED_SIZE = 1 << 26;

/** Throws EINVAL unless size is an integer in [1, 64 MiB]. */
export function validateFixedSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 1 || size > MAX_FIXED_SIZE) {
    throw invalid(`fixed chunk size must be an integer in [1, ${MAX_FIXED_SIZE}], got ${String(size)}`);
  }
}

/** Chunk k is bytes [k*size, (k+1)*size) of the stream, however it was split into writes; the last may be shorter. */
export function createFixedChunker(size: number): Chunker {
  validateFixedSize(size);
  return new FixedChunker(size);
}

class FixedChunker implements Chunker {
  private readonly size: number;
  /** The partial block; handed out whole once full, so it is never written after being returned. */
  private pending: Buffer | null = null;
  private pendingLength = 0;

  constructor(size: number) {
    this.size = size;
  }

  /** The chunks `data` completes, each a copy of its own (the caller may reuse `data`). */
  write(data: Buffer): Buffer[] {
    const out: Buffer[] = [];
    this.scan(data, (c) => out.push(Buffer.from(c)));
    return out;
  }

  scan(data: Buffer, emit: (chunk: Buffer) => void): void {
    const size = this.size;
    let pos = 0;
    if (this.pendingLength > 0) {
      const pending = this.pending!;
      const take = Math.min(size - this.pendingLength, data.length);
      data.copy(pending, this.pendingLength, 0, take);
      this.pendingLength += take;
      pos = take;
      if (this.pendingLength < size) return;
      // A view valid during the call: the block buffer is reused for the next partial block.
      emit(pending);
      this.pendingLength = 0;
    }
    for (; data.length - pos >= size; pos += size) emit(data.subarray(pos, pos + size));
    if (pos < data.length) {
      this.pending ??= Buffer.allocUnsafeSlow(size);
      data.copy(this.pending, 0, pos);
      this.pendingLength = data.length - pos;
    }
  }

  finish(emit: (chunk: Buffer) => void): void {
    for (const c of this.end()) emit(c);
  }

  end(): Buffer[] {
    const out = this.pendingLength > 0 ? [this.pending!.subarray(0, this.pendingLength)] : [];
    this.pending = null;
    this.pendingLength = 0;
    return out;
  }
}
