// Chunk compression on worker threads, driven from synchronous code. The store API is synchronous
// (better-sqlite3, sync callers), so results are never awaited: the main thread polls each
// worker's MessagePort with receiveMessageOnPort, and when it must have a result it sleeps in
// Atomics.wait on a counter the worker bumps after every reply. The event loop is never needed,
// which also means the Worker's own 'error'/'exit' events may not arrive while we wait: a dying
// worker therefore raises a flag in shared memory itself, and a worker that stays silent for too
// long is declared dead.
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { invalid, StrataError } from '../errors.js';
import { Codec } from '../types.js';

/** Int32 slots of the memory shared with each worker. */
export const SLOT_REPLIES = 0;
export const SLOT_DEAD = 1;
export const SIGNAL_SLOTS = 2;

/** What the pool posts to a worker; `raw` is the worker's own copy (transferred). */
export interface CompressJob {
  seq: number;
  raw: Uint8Array;
}

/** A worker's reply: Raw means "store the raw bytes as they are", so they are not sent back. */
export type CompressReply =
  | { seq: number; codec: Codec.Raw; payload: null }
  | { seq: number; codec: Codec.Zstd; payload: Uint8Array }
  | { seq: number; error: string };

/** One finished job, as next() hands it out. */
export type CompressOutcome =
  | { seq: number; codec: Codec.Raw; payload: null }
  | { seq: number; codec: Codec.Zstd; payload: Buffer }
  | { seq: number; error: string };

/** What the pool passes to each worker as workerData. */
export interface CompressWorkerData {
  port: MessagePort;
  signal: SharedArrayBuffer;
  /** The script the pool started; the real worker serves only when it is that script (see compress-worker.ts). */
  entry: string;
}

export interface CompressorPoolOptions {
  /** Worker threads (at least 1). */
  workers: number;
  /** Raw bytes submitted but not yet handed out by next(); callers keep below this for memory. */
  maxInFlightBytes: number;
  /** A worker that returns nothing for this long while we wait for it is taken for dead. */
  stallTimeoutMs: number;
  /** Worker script (tests substitute a fault-injecting one). */
  script: URL;
}

export const DEFAULT_COMPRESSOR_POOL_OPTIONS: CompressorPoolOptions = {
  workers: 1,
  maxInFlightBytes: 16 * 1024 * 1024,
  stallTimeoutMs: 30_000,
  script: new URL('./compress-worker.js', import.meta.url),
};

// How long one Atomics.wait sleeps before liveness is checked again.
const WAIT_SLICE_MS = 100;

interface Slot {
  worker: Worker;
  port: MessagePort;
  signal: Int32Array;
  /** Set from the Worker's events, when the event loop got a chance to deliver them. */
  failure: Error | null;
}

interface Job {
  seq: number;
  slot: Slot;
  bytes: number;
  /** Cancelled jobs are still collected (their replies are in the ports) but never handed out. */
  cancelled: boolean;
}

/**
 * Compresses chunks on worker threads with codec.ts's rules, handing results back in submission
 * order through a synchronous, non-awaiting API. Workers start on the first submit and never keep
 * the process alive.
 */
export class CompressorPool {
  readonly opts: CompressorPoolOptions;
  private slots: Slot[] = [];
  // FIFO of submitted jobs; `head` avoids shifting a long array on every result.
  private jobs: Job[] = [];
  private head = 0;
  private nextSeq = 1;
  private turn = 0;
  private bytes = 0;
  private broken: StrataError | null = null;
  private closed = false;

  constructor(opts: Partial<CompressorPoolOptions> = {}) {
    this.opts = { ...DEFAULT_COMPRESSOR_POOL_OPTIONS, ...opts };
    if (!Number.isInteger(this.opts.workers) || this.opts.workers < 1) throw invalid(`compressor workers must be at least 1, got ${this.opts.workers}`);
  }

  /** Raw bytes of jobs submitted and not yet handed out (cancelled ones included until collected). */
  get inFlightBytes(): number {
    return this.bytes;
  }

  get maxInFlightBytes(): number {
    return this.opts.maxInFlightBytes;
  }

  /** Jobs submitted and not yet collected. */
  get inFlight(): number {
    return this.jobs.length - this.head;
  }

  /**
   * Queues `raw` for compression (it is copied; the caller keeps it) and returns the job's sequence
   * number, increasing from 1. Never blocks; callers bound inFlightBytes themselves.
   * Throws if the pool is broken (see next()) or closed.
   */
  submit(raw: Uint8Array): number {
    if (this.closed) throw invalid('the compressor pool is closed');
    if (this.broken) throw this.broken;
    if (this.slots.length === 0) this.start();
    const seq = this.nextSeq++;
    const slot = this.slots[this.turn++ % this.slots.length];
    // An exact-size copy, transferred: posting `raw` itself would clone its whole backing
    // ArrayBuffer, which for a chunker's subarray can be megabytes.
    const buffer = new ArrayBuffer(raw.length);
    const copy = new Uint8Array(buffer);
    copy.set(raw);
    const job: CompressJob = { seq, raw: copy };
    slot.port.postMessage(job, [buffer]);
    this.jobs.push({ seq, slot, bytes: raw.length, cancelled: false });
    this.bytes += raw.length;
    return seq;
  }

  /**
   * The oldest uncollected, uncancelled job's outcome, in submission order. With wait=false,
   * undefined when it is not finished yet; with wait=true, blocks until it is. Undefined when
   * nothing is in flight. A compression error is an outcome with `error` (the pool stays usable);
   * a dead or silent worker throws EIO and breaks the pool until reset().
   */
  next(wait: boolean): CompressOutcome | undefined {
    if (this.broken) throw this.broken;
    while (this.head < this.jobs.length) {
      const job = this.jobs[this.head];
      const reply = this.receive(job, wait);
      if (!reply) return undefined;
      this.jobs[this.head++] = undefined as unknown as Job; // let the slot's memory go
      if (this.head > 1024 && this.head * 2 > this.jobs.length) {
        this.jobs = this.jobs.slice(this.head);
        this.head = 0;
      }
      this.bytes -= job.bytes;
      if (job.cancelled) continue;
      return reply;
    }
    return undefined;
  }

  /** Marks every job in flight as cancelled: their results will never be handed out. A broken pool is reset. */
  cancelAll(): void {
    if (this.broken) {
      this.reset();
      return;
    }
    for (let i = this.head; i < this.jobs.length; i++) this.jobs[i].cancelled = true;
  }

  /** Stops the workers and forgets every job; new workers start on the next submit. */
  reset(): void {
    this.stopWorkers();
    this.jobs = [];
    this.head = 0;
    this.bytes = 0;
    this.broken = null;
  }

  /** Stops the workers; later submits throw. Jobs in flight are dropped. */
  close(): void {
    this.closed = true;
    this.reset();
  }

  private start(): void {
    for (let i = 0; i < this.opts.workers; i++) {
      const { port1, port2 } = new MessageChannel();
      const sab = new SharedArrayBuffer(SIGNAL_SLOTS * Int32Array.BYTES_PER_ELEMENT);
      const data: CompressWorkerData = { port: port2, signal: sab, entry: this.opts.script.href };
      const worker = new Worker(this.opts.script, { workerData: data, transferList: [port2] });
      const slot: Slot = { worker, port: port1, signal: new Int32Array(sab), failure: null };
      // Without an 'error' listener a worker's crash would be rethrown in the main thread.
      worker.on('error', (e) => { slot.failure ??= e; });
      worker.on('exit', (code) => { slot.failure ??= new Error(`exited with code ${code}`); });
      worker.unref();
      port1.unref();
      this.slots.push(slot);
    }
  }

  private stopWorkers(): void {
    for (const s of this.slots) {
      s.port.close();
      // terminate() settles asynchronously; nothing to wait for, and the worker is unref'd.
      s.worker.terminate().catch(() => {});
    }
    this.slots = [];
  }

  /** The reply for `job` (the head of its worker's queue), or undefined if !wait and not there yet. */
  private receive(job: Job, wait: boolean): CompressOutcome | undefined {
    const { slot } = job;
    let since = Date.now();
    for (;;) {
      // Read the counter before polling: a reply posted after the poll then changes it, so the
      // wait below cannot miss the wake-up.
      const seen = Atomics.load(slot.signal, SLOT_REPLIES);
      const m = receiveMessageOnPort(slot.port) as { message: CompressReply } | undefined;
      if (m) return this.decode(job, m.message);
      if (Atomics.load(slot.signal, SLOT_DEAD) !== 0 || slot.failure) {
        // The worker may have replied just before it died.
        const last = receiveMessageOnPort(slot.port) as { message: CompressReply } | undefined;
        if (last) return this.decode(job, last.message);
        this.fail(`compression worker died${slot.failure ? `: ${slot.failure.message}` : ''}`, slot.failure);
      }
      if (!wait) return undefined;
      if (Date.now() - since > this.opts.stallTimeoutMs) {
        this.fail(`compression worker returned nothing for ${this.opts.stallTimeoutMs} ms`, null);
      }
      if (Atomics.wait(slot.signal, SLOT_REPLIES, seen, WAIT_SLICE_MS) !== 'timed-out') since = Date.now();
    }
  }

  private decode(job: Job, r: CompressReply): CompressOutcome {
    if (r.seq !== job.seq) this.fail(`compression worker answered job ${r.seq}, expected ${job.seq}`, null);
    if ('error' in r) return r;
    if (r.codec === Codec.Raw) return r;
    if (r.codec === Codec.Zstd && r.payload instanceof Uint8Array) {
      return { seq: r.seq, codec: r.codec, payload: Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength) };
    }
    return this.fail(`compression worker sent a malformed reply for job ${r.seq}`, null);
  }

  private fail(message: string, cause: unknown): never {
    this.broken = new StrataError('EIO', message, { cause: cause ?? undefined });
    this.stopWorkers();
    throw this.broken;
  }
}
