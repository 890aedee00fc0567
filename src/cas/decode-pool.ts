import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { corrupt } from '../errors.js';
import { Codec, HANDLE_BYTES, type Handle } from '../types.js';
import { isShared, transferList } from './buffer-pool.js';
import { decompressChunkInto, frameChecksummed } from './codec.js';
import { RECORD_HEADER_BYTES, headerDescribes } from './container-file.js';
import { hashBytes } from './hash.js';

// Decompression and hash checks of chunks read for the mount, on a worker thread. The main
// thread also answers every FUSE request; zstd (~840 MB/s per core) and BLAKE3 (~3.6 GB/s) over
// the bytes of a sequential read would take it most of a core. A batch is the container bytes of
// one read (up to a few MiB, transferred, not copied) and the chunks inside it; the reply is
// their raw bytes in one transferred buffer. Chunks still reach the kernel only once verified
// here, against the handle the caller looked them up by. A check-only batch (raw bytes already
// in place, such as a performance pool's native copy) is hashed where it lies.
//
// Verification: a chunk is BLAKE3-hashed against its handle, unless its record header lies in the
// batch right before its payload (a `headed` batch, as ObjectStore's reads are), names that handle
// with the expected lengths and codec (its crc32 intact), and its payload is one checksummed zstd
// frame. zstd then checks the decoded bytes against the frame's XXH64 while it decodes, and the
// header proves the read found the record it meant to: BLAKE3 of every chunk cost a decode worker
// about a third of its time on a sequential read. Anything short of that is hashed, so a damaged
// header or an old frame without a checksum costs time, never a check. `strata verify` still
// re-hashes everything with BLAKE3.

/** One chunk inside a batch's container bytes. */
export interface DecodeItem {
  handle: Uint8Array;
  codec: Codec;
  rawLength: number;
  /** Where its payload lies in the batch's bytes. */
  start: number;
  length: number;
}

/**
 * A batch as it travels to a worker, packed so that no object per chunk is cloned (a sequential
 * read of 1 GiB is some 60k chunks): item i's handle is handles[32i, 32i + 32) and its codec,
 * rawLength, start and length are nums[4i, 4i + 4). Both arrays are transferred.
 */
export interface DecodeRequest {
  id: number;
  data: Uint8Array;
  handles: Uint8Array;
  nums: Float64Array;
  /** Where to put the raw bytes, when the caller has a buffer of at least their total size. */
  out?: ArrayBufferLike;
  /** Check only: every item is raw (`length` = `rawLength`) and is hashed in `data`; results point into `data`. */
  checkOnly?: boolean;
  /** Each item's record header is the RECORD_HEADER_BYTES of `data` right before its payload. */
  headed?: boolean;
}

/**
 * Per item: where its raw bytes start in `out` (in `data` for a check), or -1 with the reason in
 * `errors` (the caller makes that ECORRUPT). `data` is the request's buffer, handed back for
 * reuse. A worker leaves out `out` and `data` when they are shared buffers: the caller still has them.
 */
export interface DecodeReply {
  id: number;
  out?: ArrayBufferLike;
  data?: Uint8Array;
  at: Float64Array;
  errors: Array<[item: number, reason: string]>;
}

/** A decoded batch: each item's raw bytes (views of `out`) or its ECORRUPT error. */
export interface DecodedBatch {
  chunks: Array<Buffer | Error>;
  /** Holds every decoded chunk; reusable once none of them is used any more. */
  out: ArrayBufferLike;
  /** The container bytes' buffer, reusable now (a new object when an unshared one went to a worker and back). */
  input: ArrayBufferLike;
}

const NUMS = 4;

/** `items` in DecodeRequest's packed form; CheckItems as raw chunks. */
function pack(items: readonly DecodeItem[] | readonly CheckItem[]): { handles: Uint8Array; nums: Float64Array } {
  const handles = new Uint8Array(items.length * HANDLE_BYTES);
  const nums = new Float64Array(items.length * NUMS);
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    handles.set(it.handle, i * HANDLE_BYTES);
    const coded = 'codec' in it;
    nums[i * NUMS] = coded ? it.codec : Codec.Raw;
    nums[i * NUMS + 1] = coded ? it.rawLength : it.length;
    nums[i * NUMS + 2] = it.start;
    nums[i * NUMS + 3] = it.length;
  }
  return { handles, nums };
}

/** Decodes and verifies one batch (runs in the worker; also the inline fallback). */
export function decodeBatch(req: DecodeRequest): DecodeReply {
  const { handles, nums } = req;
  const n = nums.length / NUMS;
  const data = Buffer.from(req.data.buffer, req.data.byteOffset, req.data.byteLength);
  const at = new Float64Array(n).fill(-1);
  const errors: DecodeReply['errors'] = [];
  const handle = (i: number) => handles.subarray(i * HANDLE_BYTES, (i + 1) * HANDLE_BYTES);
  if (req.checkOnly) {
    for (let i = 0; i < n; i++) {
      const start = nums[i * NUMS + 2];
      const end = start + nums[i * NUMS + 3];
      if (end > data.length) errors.push([i, 'cut short']);
      else if (!hashBytes(data.subarray(start, end)).equals(handle(i))) errors.push([i, 'hash mismatch']);
      else at[i] = start;
    }
    return { id: req.id, data: req.data, at, errors };
  }
  let total = 0;
  for (let i = 0; i < n; i++) total += nums[i * NUMS + 1];
  const out = req.out && req.out.byteLength >= total ? req.out : new ArrayBuffer(total);
  let pos = 0;
  for (let i = 0; i < n; i++) {
    const codec = nums[i * NUMS] as Codec;
    const rawLength = nums[i * NUMS + 1];
    const start = nums[i * NUMS + 2];
    const length = nums[i * NUMS + 3];
    try {
      const payload = data.subarray(start, start + length);
      const checked = req.headed === true && codec === Codec.Zstd && start >= RECORD_HEADER_BYTES &&
        headerDescribes(data.subarray(start - RECORD_HEADER_BYTES, start), handle(i), codec, length, rawLength) && frameChecksummed(payload);
      const raw = decompressChunkInto(codec, payload, rawLength, Buffer.from(out, pos, rawLength));
      if (!checked && !hashBytes(raw).equals(handle(i))) throw new Error('hash mismatch');
      at[i] = pos;
      pos += rawLength;
    } catch (e) {
      errors.push([i, e instanceof Error ? e.message : String(e)]);
    }
  }
  return { id: req.id, out, data: req.data, at, errors };
}

/** A raw chunk in place: `length` bytes at `start`, which should hash to `handle`. */
export interface CheckItem {
  handle: Uint8Array;
  start: number;
  length: number;
}

/** Whether each item lies within `data` and hashes to its handle, checked on this thread (the worker's check-only batch). */
export function checkChunks(data: Uint8Array, items: readonly CheckItem[]): boolean[] {
  return passed(decodeBatch({ id: 0, data, checkOnly: true, ...pack(items) }));
}

/** Per item of a reply, whether it passed. */
function passed(r: DecodeReply): boolean[] {
  const ok: boolean[] = new Array(r.at.length);
  for (let i = 0; i < r.at.length; i++) ok[i] = r.at[i] >= 0;
  return ok;
}

/** Batches smaller than this are decoded on the calling thread: the message costs more than the work. */
const MIN_OFFLOAD_BYTES = 64 * 1024;

/**
 * A small pool of decode workers, started on first use; a worker keeps the process alive only
 * while it has batches in flight. Batches go to the worker with the least bytes outstanding. A worker that fails makes
 * its batches fail (EIO to the reader) and is replaced on the next batch.
 */
export class DecodePool {
  private workers: Array<{ w: Worker; bytes: number; jobs: Map<number, { bytes: number; resolve: (r: DecodeReply) => void; reject: (e: Error) => void }> }> = [];
  private nextId = 1;
  private static instance: DecodePool | null = null;

  /** The process's pool: every store open in a process shares its workers. */
  static shared(): DecodePool {
    return (DecodePool.instance ??= new DecodePool());
  }

  constructor(private readonly size = Math.max(1, Math.min(2, os.availableParallelism() - 1))) {}

  /**
   * Raw, verified bytes of each item, or the ECORRUPT error of those that fail, placed in `out`
   * when given and large enough; rejects only when the worker itself fails. Unshared, `data`'s
   * buffer and `out` are detached meanwhile (they travel to the worker) and come back in the
   * result as new objects; shared ones (BufferPool's) are written in place and come back as they are.
   * `headed`: each item's record header lies right before its payload in `data` (see the top of this file).
   */
  decode(data: Buffer, items: Array<DecodeItem & { handle: Handle }>, out?: ArrayBufferLike, headed = false): Promise<DecodedBatch> {
    if (data.length < MIN_OFFLOAD_BYTES) return Promise.resolve(unpack(decodeBatch({ id: 0, data, ...pack(items), out, headed }), items, {}));
    // Only a whole ArrayBuffer can be transferred; views of a part of one are copied first. A
    // shared buffer is not transferred at all: the worker writes into the same memory.
    const own = isShared(data.buffer) || data.byteOffset === 0 ? data : Buffer.from(data);
    const sent = { out, data: own };
    return this.post({ data: own, out, headed, ...pack(items) }, transferList(own.buffer, out)).then((r) => unpack(r, items, sent));
  }

  /**
   * checkChunks() on a worker when `data` is a shared buffer of some size; an unshared one, or a
   * small batch, is checked here (copying it there would cost about what hashing it does), and so
   * is a batch whose worker fails. `data` must stay unchanged until the promise settles.
   */
  check(data: Buffer, items: CheckItem[]): Promise<boolean[]> {
    let bytes = 0;
    for (const it of items) bytes += it.length;
    if (bytes < MIN_OFFLOAD_BYTES || !isShared(data.buffer)) return Promise.resolve(checkChunks(data, items));
    return this.post({ data, checkOnly: true, ...pack(items) }, []).then(passed, () => checkChunks(data, items));
  }

  /** Sends a batch to the worker with the least bytes outstanding. */
  private post(req: Omit<DecodeRequest, 'id'>, transfer: ArrayBuffer[]): Promise<DecodeReply> {
    const id = this.nextId++;
    return new Promise<DecodeReply>((resolve, reject) => {
      const slot = this.pick();
      if (slot.jobs.size === 0) slot.w.ref(); // a batch in flight keeps the process alive, an idle pool does not
      slot.jobs.set(id, { bytes: req.data.length, resolve, reject });
      slot.bytes += req.data.length;
      slot.w.postMessage({ ...req, id } satisfies DecodeRequest, [...transfer, ...transferList(req.handles.buffer, req.nums.buffer)]);
    });
  }

  close(): void {
    for (const s of this.workers) void s.w.terminate();
    this.workers = [];
  }

  private pick() {
    while (this.workers.length < this.size) this.workers.push(this.spawn());
    return this.workers.reduce((a, b) => (b.bytes < a.bytes ? b : a));
  }

  private spawn() {
    const w = new Worker(new URL('./decode-worker.js', import.meta.url), { execArgv: [] });
    const slot = { w, bytes: 0, jobs: new Map<number, { bytes: number; resolve: (r: DecodeReply) => void; reject: (e: Error) => void }>() };
    w.on('message', (r: DecodeReply) => {
      const job = slot.jobs.get(r.id);
      if (!job) return;
      slot.jobs.delete(r.id);
      slot.bytes -= job.bytes;
      if (slot.jobs.size === 0) w.unref();
      job.resolve(r);
    });
    const fail = (e: Error) => {
      this.workers = this.workers.filter((x) => x !== slot);
      for (const job of slot.jobs.values()) job.reject(new Error(`decode worker failed: ${e.message}`));
      slot.jobs.clear();
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`exited with code ${code}`)));
    // After the listeners: adding a 'message' listener refs the worker again.
    w.unref();
    return slot;
  }
}

/** Per item of a batch reply: its raw bytes, or ECORRUPT with the worker's reason; `sent` stands in for the shared buffers the worker left out. */
function unpack(r: DecodeReply, items: readonly DecodeItem[], sent: { out?: ArrayBufferLike; data?: Uint8Array }): DecodedBatch {
  const out = r.out ?? sent.out;
  const data = r.data ?? sent.data;
  if (!out || !data) throw new Error('decode reply without its buffers');
  const why = new Map(r.errors);
  return {
    chunks: items.map((it, i) => (r.at[i] >= 0 ? Buffer.from(out, r.at[i], it.rawLength) : corrupt(why.get(i) ?? 'not decoded'))),
    out,
    input: data.buffer,
  };
}
