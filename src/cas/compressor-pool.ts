// Chunk compression on worker threads, driven from synchronous code. The store API is synchronous
// (better-sqlite3, sync callers), so results are never awaited: the main thread polls each
// worker's MessagePort with receiveMessageOnPort, and when it must have a result it sleeps in
// Atomics.wait on a counter the worker bumps after every reply. The event loop is never needed,
// which also means the Worker's own 'error'/'exit' events may not arrive while we wait: a dying
// worker therefore raises a flag in shared memory itself, and a worker that stays silent for too
// long is declared dead.
//
// Jobs travel in batches (one message of ~256 KiB rather than one per 16 KiB chunk): per-message
// costs add up to as much as compressing incompressible data. A batch's raw bytes sit in a
// SharedArrayBuffer: the worker reads them where they are, and the caller keeps a view of them as
// its copy of the chunk until the payload is stored, so each chunk is copied once, not twice.
// Batch buffers are recycled: writing into fresh memory costs ~10x more (page faults) than the copy.
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { invalid, StrataError } from '../errors.js';
import { Codec } from '../types.js';

/** Int32 slots of the memory shared with each worker. */
export const SLOT_REPLIES = 0;
export const SLOT_DEAD = 1;
/** Set once the worker serves: a failure to start shows only as an 'error' event we cannot see while blocked. */
export const SLOT_READY = 2;
export const SIGNAL_SLOTS = 3;

/** A batch of jobs for a worker: jobs first..first+lengths.length-1, job i's raw bytes at offsets[i] of `data` (shared memory). */
export interface CompressBatch {
  first: number;
  offsets: number[];
  lengths: number[];
  data: Uint8Array;
}

/**
 * A submitted job: its sequence number and the pool's copy of its raw bytes, unchanged until the
 * first submit() after the job's outcome was handed out (or the job was cancelled).
 */
export interface SubmittedJob {
  seq: number;
  copy: Buffer;
}

/** The outcome of one job of a batch; Raw means "store the raw bytes as they are" (not sent back). */
export type CompressItem = { codec: Codec.Raw } | { codec: Codec.Zstd; length: number } | { error: string };

/** A worker's reply to one batch: an item per job, and the Zstd payloads back to back, in job order. */
export interface CompressReply {
  first: number;
  items: CompressItem[];
  payloads: Uint8Array;
}

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
  /** Jobs are posted once this many raw bytes are collected (or when someone waits for them). */
  batchBytes: number;
  /** A worker that returns nothing for this long while we wait for it is taken for dead. */
  stallTimeoutMs: number;
  /** The same, for a worker that has not started serving yet (a missing or failing script). */
  startTimeoutMs: number;
  /** Worker script (tests substitute a fault-injecting one). */
  script: URL;
}

export const DEFAULT_COMPRESSOR_POOL_OPTIONS: CompressorPoolOptions = {
  workers: 1,
  maxInFlightBytes: 16 * 1024 * 1024,
  batchBytes: 256 * 1024,
  stallTimeoutMs: 30_000,
  startTimeoutMs: 10_000,
  script: new URL('./compress-worker.js', import.meta.url),
};

/** Atomics.waitAsync (Node 16+; typed only from lib es2024 on, newer than this project's target). */
interface AtomicsWaitAsync {
  waitAsync(a: Int32Array, index: number, value: number, timeoutMs: number):
    | { async: false; value: 'not-equal' | 'timed-out' }
    | { async: true; value: Promise<'ok' | 'timed-out'> };
}

// How long one Atomics.wait sleeps before liveness is checked again.
const WAIT_SLICE_MS = 100;

interface Slot {
  worker: Worker;
  port: MessagePort;
  signal: Int32Array;
  /** Replies taken from the port; the worker's counter is ahead exactly when one is waiting there. */
  received: number;
  /** Set from the Worker's events, when the event loop got a chance to deliver them. */
  failure: Error | null;
}

interface Posted {
  first: number;
  lengths: number[];
  data: Buffer;
  slot: Slot;
}

/** The batch being filled: raw bytes are copied into `data` as they are submitted. */
interface Filling {
  first: number;
  offsets: number[];
  lengths: number[];
  data: Buffer;
  used: number;
}

interface Ready {
  outcome: CompressOutcome;
  rawLength: number;
  /** On a batch's last job: its buffer, reusable once this outcome is handed out. */
  release: Buffer | null;
}

/**
 * Compresses chunks on worker threads with codec.ts's rules, handing results back in submission
 * order through a synchronous, non-awaiting API. Workers start on the first submit and never keep
 * the process alive.
 */
export class CompressorPool {
  readonly opts: CompressorPoolOptions;
  private slots: Slot[] = [];
  private filling: Filling | null = null;
  private posted: Posted[] = [];
  private ready: Ready[] = [];
  private readyHead = 0;
  private spare: Buffer[] = [];
  private nextSeq = 1;
  /** Jobs below this sequence number were cancelled: collected, never handed out. */
  private cancelledBelow = 1;
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

  /**
   * Queues a copy of `raw` for compression; returns the job's sequence number (increasing) and the
   * copy, which stays valid and unchanged. Never blocks; callers bound inFlightBytes themselves.
   * Throws if the pool is broken or closed.
   */
  submit(raw: Uint8Array): SubmittedJob {
    if (this.closed) throw invalid('the compressor pool is closed');
    if (this.broken) throw this.broken;
    if (this.slots.length === 0) this.start();
    let f = this.filling;
    if (f && f.used + raw.length > f.data.length) {
      this.flush();
      f = null;
    }
    if (!f) {
      const data = raw.length <= this.opts.batchBytes
        ? this.spare.pop() ?? Buffer.from(new SharedArrayBuffer(this.opts.batchBytes))
        : Buffer.from(new SharedArrayBuffer(raw.length));
      f = { first: this.nextSeq, offsets: [], lengths: [], data, used: 0 };
      this.filling = f;
    }
    const at = f.used;
    // Not set() or copy(): into shared memory those copy element by element (V8 keeps each
    // element untorn for other threads), 2-5x slower; fill() with a Buffer is a plain memcpy.
    if (raw.length > 0) f.data.fill(raw, at, at + raw.length);
    f.used += raw.length;
    f.offsets.push(at);
    f.lengths.push(raw.length);
    this.bytes += raw.length;
    const copy = f.data.subarray(at, f.used);
    if (f.used >= this.opts.batchBytes) this.flush();
    return { seq: this.nextSeq++, copy };
  }

  /**
   * The oldest uncollected, uncancelled job's outcome, in submission order. With wait=false,
   * undefined when it is not finished yet; with wait=true, blocks until it is. Undefined when
   * nothing is in flight. A compression error is an outcome with `error` (the pool stays usable);
   * a dead or silent worker throws EIO and breaks the pool until cancelAll() or reset().
   */
  next(wait: boolean): CompressOutcome | undefined {
    if (this.broken) throw this.broken;
    for (;;) {
      while (this.readyHead < this.ready.length) {
        const r = this.ready[this.readyHead++];
        this.bytes -= r.rawLength;
        if (r.release) this.recycle(r.release);
        if (r.outcome.seq >= this.cancelledBelow) return r.outcome;
      }
      this.ready = [];
      this.readyHead = 0;
      if (this.posted.length === 0) {
        if (!wait || !this.filling) return undefined;
        this.flush();
      }
      if (!this.receive(this.posted[0], wait)) return undefined;
      this.posted.shift();
    }
  }

  /**
   * Posts the batch being filled and resolves once the worker owing the oldest outcome has replied
   * since (or after WAIT_SLICE_MS, or at once when a reply is waiting or nothing is in flight).
   * Never blocks the thread: Atomics.waitAsync, so the event loop runs meanwhile.
   */
  whenReady(): Promise<void> {
    if (this.broken || this.readyHead < this.ready.length) return Promise.resolve();
    if (this.posted.length === 0) {
      if (!this.filling) return Promise.resolve();
      this.flush();
    }
    const { slot } = this.posted[0];
    const w = (Atomics as unknown as AtomicsWaitAsync).waitAsync(slot.signal, SLOT_REPLIES, slot.received, WAIT_SLICE_MS);
    if (!w.async) return Promise.resolve();
    // A pending waitAsync does not keep the event loop alive; the timer does.
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, WAIT_SLICE_MS);
      void w.value.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Every job submitted so far is cancelled: its outcome will never be handed out. A broken pool is reset. */
  cancelAll(): void {
    if (this.broken) {
      this.reset();
      return;
    }
    this.cancelledBelow = this.nextSeq;
    // Not yet posted: no need to compress them at all.
    if (this.filling) {
      this.bytes -= this.filling.used;
      this.recycle(this.filling.data);
      this.filling = null;
    }
  }

  /** Stops the workers and forgets every job; new workers start on the next submit. */
  reset(): void {
    this.stopWorkers();
    this.filling = null;
    this.posted = [];
    this.ready = [];
    this.readyHead = 0;
    this.bytes = 0;
    this.cancelledBelow = this.nextSeq;
    this.broken = null;
  }

  /** Stops the workers; later submits throw. Jobs in flight are dropped. */
  close(): void {
    this.closed = true;
    this.reset();
    this.spare = [];
  }

  private start(): void {
    for (let i = 0; i < this.opts.workers; i++) {
      const { port1, port2 } = new MessageChannel();
      const sab = new SharedArrayBuffer(SIGNAL_SLOTS * Int32Array.BYTES_PER_ELEMENT);
      const data: CompressWorkerData = { port: port2, signal: sab, entry: this.opts.script.href };
      // No execArgv: the worker needs none of the parent's flags, and some (--input-type, --eval)
      // would keep it from loading its script at all.
      const worker = new Worker(this.opts.script, { workerData: data, transferList: [port2], execArgv: [] });
      const slot: Slot = { worker, port: port1, signal: new Int32Array(sab), received: 0, failure: null };
      // Without an 'error' listener a worker's crash would be rethrown in the main thread.
      worker.on('error', (e) => { slot.failure ??= e; });
      worker.on('exit', (code) => { slot.failure ??= new Error(`exited with code ${code}`); });
      worker.unref();
      port1.unref();
      this.slots.push(slot);
    }
  }

  private recycle(data: Buffer): void {
    // Bounded by what can be in flight anyway; odd-sized buffers (a chunk bigger than a batch) are not kept.
    if (data.length === this.opts.batchBytes && this.spare.length * this.opts.batchBytes < this.opts.maxInFlightBytes) {
      this.spare.push(data);
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

  private flush(): void {
    const f = this.filling;
    if (!f) return;
    this.filling = null;
    const slot = this.slots[this.turn++ % this.slots.length];
    const batch: CompressBatch = { first: f.first, offsets: f.offsets, lengths: f.lengths, data: f.data.subarray(0, f.used) };
    slot.port.postMessage(batch);
    this.posted.push({ first: f.first, lengths: f.lengths, data: f.data, slot });
  }

  /**
   * Takes the reply to `batch` (the oldest posted, so the next message of its worker) into `ready`.
   * Returns false if !wait and it has not arrived.
   */
  private receive(batch: Posted, wait: boolean): boolean {
    const { slot } = batch;
    let since = Date.now();
    for (;;) {
      // The worker bumps the counter after posting, so a counter ahead of `received` means a reply
      // is in the port; polling only then keeps the common "nothing yet" case to one atomic load.
      if (Atomics.load(slot.signal, SLOT_REPLIES) !== slot.received) {
        const m = receiveMessageOnPort(slot.port) as { message: CompressReply } | undefined;
        if (!m) this.fail('compression worker signalled a reply that is not there', null);
        slot.received++;
        this.accept(batch, m.message);
        return true;
      }
      if (Atomics.load(slot.signal, SLOT_DEAD) !== 0 || slot.failure) {
        // It may have replied just before it died.
        if (Atomics.load(slot.signal, SLOT_REPLIES) !== slot.received) continue;
        this.fail(`compression worker died${slot.failure ? `: ${slot.failure.message}` : ''}`, slot.failure);
      }
      if (!wait) return false;
      const started = Atomics.load(slot.signal, SLOT_READY) !== 0;
      const limit = started ? this.opts.stallTimeoutMs : Math.min(this.opts.stallTimeoutMs, this.opts.startTimeoutMs);
      if (Date.now() - since > limit) {
        this.fail(started ? `compression worker returned nothing for ${limit} ms` : `compression worker did not start within ${limit} ms`, null);
      }
      if (Atomics.wait(slot.signal, SLOT_REPLIES, slot.received, WAIT_SLICE_MS) !== 'timed-out') since = Date.now();
    }
  }

  private accept(batch: Posted, r: CompressReply): void {
    if (r.first !== batch.first || !Array.isArray(r.items) || r.items.length !== batch.lengths.length || !(r.payloads instanceof Uint8Array)) {
      this.fail(`compression worker sent a malformed reply for jobs from ${batch.first}`, null);
    }
    let at = 0;
    r.items.forEach((item, i) => {
      const seq = batch.first + i;
      let outcome: CompressOutcome;
      if ('error' in item) {
        outcome = { seq, error: item.error };
      } else if (item.codec === Codec.Raw) {
        outcome = { seq, codec: Codec.Raw, payload: null };
      } else if (item.codec === Codec.Zstd && Number.isInteger(item.length) && at + item.length <= r.payloads.length) {
        outcome = { seq, codec: Codec.Zstd, payload: Buffer.from(r.payloads.buffer, r.payloads.byteOffset + at, item.length) };
        at += item.length;
      } else {
        this.fail(`compression worker sent a malformed reply for job ${seq}`, null);
      }
      this.ready.push({ outcome, rawLength: batch.lengths[i], release: i === r.items.length - 1 ? batch.data : null });
    });
  }

  private fail(message: string, cause: unknown): never {
    this.broken = new StrataError('EIO', message, { cause: cause ?? undefined });
    this.stopWorkers();
    throw this.broken;
  }
}
