// Chunking and hashing on a worker thread for the asynchronous flusher: the main thread copies a
// stream's bytes into shared memory (one memcpy, into recycled slabs) and, as each piece's chunk
// lengths and handles come back, deduplicates and stores the chunks, answering FUSE in between.
// The chunks are exactly the ones the same chunker gives on the calling thread.
import { Worker } from 'node:worker_threads';
import { StrataError } from '../errors.js';
import type { ChunkerParams, Chunking, Handle } from '../types.js';

/** One piece of a stream, to the worker. */
export interface OffloadPiece {
  stream: number;
  mode: Chunking;
  params: ChunkerParams;
  /** The piece's bytes, in shared memory. */
  data: Uint8Array;
  /** The last piece: the worker also cuts what its chunker still holds. */
  end: boolean;
}

/** The chunks a piece completed, in order: their lengths and BLAKE3 handles (32 bytes each, back to back). */
export interface OffloadReply {
  stream: number;
  end: boolean;
  lengths: number[];
  hashes: Uint8Array;
  error?: string;
}

/** A stream to chunk: its bytes in order, and where each chunk goes. */
export interface ChunkStream {
  readonly mode: Chunking;
  readonly params: ChunkerParams;
  pieces(): Iterable<Buffer>;
  /** Receives the next chunk (its bytes are valid during the call only) and its handle. */
  add(chunk: Buffer, handle: Handle): void;
  /** Called with the handles of the chunks add() receives next, in the same synchronous run (batched lookups). */
  prefetch?(handles: Handle[]): void;
}

const SLAB_BYTES = 1024 * 1024;
/** Bytes sent to the worker and not yet chunked before the sender waits for replies. */
const MAX_AHEAD = 8 * 1024 * 1024;
const MAX_SPARE_SLABS = 16;

interface Sent {
  /** Stream offset of data[0]. */
  at: number;
  data: Buffer;
}

export class ChunkOffload {
  private worker: Worker | null = null;
  private nextStream = 1;
  private readonly listeners = new Map<number, (r: OffloadReply) => void>();
  private spare: Buffer[] = [];
  /** Set when the worker failed; callers then chunk on their own thread. */
  broken: StrataError | null = null;
  /** Streams chunked on the worker so far (for tests and figures). */
  streams = 0;
  private closed = false;

  constructor(private readonly script = new URL('./chunk-worker.js', import.meta.url)) {}

  get usable(): boolean {
    return !this.broken && !this.closed;
  }

  /**
   * Chunks the stream on the worker, handing each chunk to s.add() in order; `between` runs after
   * each piece's chunks were added (the caller's chance to wait for its own back-pressure).
   * Throws (and breaks this offload for good) if the worker fails.
   */
  async chunk(s: ChunkStream, between: () => Promise<void>): Promise<void> {
    const w = this.start();
    const id = this.nextStream++;
    const replies: OffloadReply[] = [];
    let wake: (() => void) | null = null;
    this.listeners.set(id, (r) => {
      replies.push(r);
      wake?.();
    });
    const sent: Sent[] = [];
    let sentBytes = 0;
    let consumed = 0;
    let done = false;
    const next = async (): Promise<OffloadReply> => {
      while (replies.length === 0) {
        if (this.broken) throw this.broken;
        await new Promise<void>((r) => { wake = r; });
        wake = null;
      }
      return replies.shift()!;
    };
    const take = (r: OffloadReply) => {
      if (r.error !== undefined) throw this.fail(new Error(r.error));
      const handles: Handle[] = new Array(r.lengths.length);
      for (let i = 0; i < handles.length; i++) handles[i] = Buffer.from(r.hashes.buffer, r.hashes.byteOffset + 32 * i, 32);
      s.prefetch?.(handles);
      for (let i = 0; i < r.lengths.length; i++) {
        const end = consumed + r.lengths[i];
        s.add(this.bytes(sent, consumed, end), handles[i]);
        consumed = end;
        // Slabs wholly chunked go back to the pool.
        while (sent.length && sent[0].at + sent[0].data.length <= consumed) this.recycle(sent.shift()!.data);
      }
      if (r.end) done = true;
    };
    w.ref();
    try {
      for (const piece of s.pieces()) {
        for (let off = 0; off < piece.length; off += SLAB_BYTES) {
          const part = piece.subarray(off, Math.min(piece.length, off + SLAB_BYTES));
          const slab = this.spare.pop() ?? Buffer.from(new SharedArrayBuffer(SLAB_BYTES));
          // fill() with a Buffer is a plain memcpy; set()/copy() into shared memory go element by element.
          slab.fill(part, 0, part.length);
          const data = slab.subarray(0, part.length);
          sent.push({ at: sentBytes, data });
          sentBytes += part.length;
          this.post({ stream: id, mode: s.mode, params: s.params, data, end: false });
          while (sentBytes - consumed > MAX_AHEAD) {
            take(await next());
            await between();
          }
        }
      }
      this.post({ stream: id, mode: s.mode, params: s.params, data: new Uint8Array(0), end: true });
      while (!done) {
        take(await next());
        await between();
      }
      if (consumed !== sentBytes) throw this.fail(new Error(`the chunk worker cut ${consumed} of ${sentBytes} bytes`));
      this.streams++;
    } finally {
      this.listeners.delete(id);
      for (const x of sent) this.recycle(x.data);
      if (this.listeners.size === 0) this.worker?.unref();
    }
  }

  close(): void {
    this.closed = true;
    this.worker?.terminate().catch(() => {});
    this.worker = null;
  }

  /** The stream's bytes [from, to), from the slabs (copied only when they span two). */
  private bytes(sent: Sent[], from: number, to: number): Buffer {
    const first = sent.find((x) => x.at + x.data.length > from);
    if (first && first.at + first.data.length >= to) return first.data.subarray(from - first.at, to - first.at);
    const out = Buffer.allocUnsafe(to - from);
    for (const x of sent) {
      const a = Math.max(from, x.at);
      const b = Math.min(to, x.at + x.data.length);
      // fill(), not copy(): copy() out of shared memory goes element by element too.
      if (a < b) out.fill(x.data.subarray(a - x.at, b - x.at), a - from, b - from);
    }
    return out;
  }

  private recycle(data: Buffer): void {
    if (this.spare.length < MAX_SPARE_SLABS) this.spare.push(Buffer.from(data.buffer, 0, SLAB_BYTES));
  }

  private post(m: OffloadPiece): void {
    if (this.broken) throw this.broken;
    this.worker!.postMessage(m);
  }

  private start(): Worker {
    if (this.broken) throw this.broken;
    if (this.closed) throw new StrataError('EIO', 'the chunk worker is closed');
    if (this.worker) return this.worker;
    const w = new Worker(this.script, { execArgv: [] });
    w.on('message', (r: OffloadReply) => this.listeners.get(r.stream)?.(r));
    w.on('error', (e) => this.fail(e));
    w.on('exit', (code) => { if (!this.closed) this.fail(new Error(`exited with code ${code}`)); });
    w.unref();
    this.worker = w;
    return w;
  }

  private fail(e: Error): StrataError {
    const err = this.broken ?? new StrataError('EIO', `chunk worker failed: ${e.message}`, { cause: e });
    this.broken = err;
    this.worker?.terminate().catch(() => {});
    this.worker = null;
    // Wake every stream waiting for a reply: they throw.
    for (const l of this.listeners.values()) l({ stream: 0, end: true, lengths: [], hashes: new Uint8Array(0), error: err.message });
    return err;
  }
}
