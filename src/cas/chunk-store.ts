import os from 'node:os';
import { LRUCache } from 'lru-cache';
import { corrupt, notFound, StrataError } from '../errors.js';
import { ChunkKind, Codec, type BlobStore, type ChunkLocation, type Handle } from '../types.js';
import { compressChunk, decompressChunk } from './codec.js';
import type { CompressOutcome } from './compressor-pool.js';
import { ContainerWriter, readChunkPayload } from './container-file.js';
import { handleKey, hashBytes, shortHex } from './hash.js';
import type { IndexDb } from './index-db.js';

/** Deduplication figures the user wants to see (STYLE 3): where each duplicate was found. */
export interface DedupStats {
  chunksSeen: number;
  bytesSeen: number;
  newChunks: number;
  newBytes: number;
  /** Compressed bytes appended to containers (payloads only). */
  storedBytes: number;
  temporalHits: number;
  cacheHits: number;
  indexHits: number;
  /** All-zero chunks, stored as holes (no bytes). */
  zeroBytes: number;
  dedupBytes: number;
}

export const emptyStats = (): DedupStats => ({
  chunksSeen: 0, bytesSeen: 0, newChunks: 0, newBytes: 0, storedBytes: 0,
  temporalHits: 0, cacheHits: 0, indexHits: 0, zeroBytes: 0, dedupBytes: 0,
});

export interface ChunkStoreOptions {
  containerSize: number;
  /** Bytes of decompressed, verified chunks kept in memory for reads. */
  cacheBytes: number;
  /** Handles whose location is cached (the "cache" tier before the index). */
  locationCacheEntries: number;
  /** Commit pending index rows once this many new bytes are buffered. */
  commitEveryBytes: number;
  /**
   * Compression threads the store's owner (CasStore) starts; 0 compresses on the calling thread.
   * One is enough on two cores: the calling thread still chunks, hashes and writes.
   */
  compressWorkers: number;
}

export const DEFAULT_CHUNK_STORE_OPTIONS: ChunkStoreOptions = {
  containerSize: 32 * 1024 * 1024,
  cacheBytes: 64 * 1024 * 1024,
  locationCacheEntries: 200_000,
  commitEveryBytes: 64 * 1024 * 1024,
  compressWorkers: os.availableParallelism() > 1 ? 1 : 0,
};

/** The part of CompressorPool the chunk store uses (results in submission order, never awaited). */
export interface ParallelCompressor {
  /** Queues a copy of `raw`; returns its sequence number and that copy, unchanged until the next submit() after its outcome is handed out. */
  submit(raw: Uint8Array): { seq: number; copy: Buffer };
  /** The next outcome in submission order; undefined if none is ready (wait=false) or none is in flight. */
  next(wait: boolean): CompressOutcome | undefined;
  /** Drops every job in flight (their outcomes are never returned). */
  cancelAll(): void;
  readonly inFlightBytes: number;
  readonly maxInFlightBytes: number;
  /**
   * Posts what is queued and resolves when the oldest job's outcome may be ready (or after a short
   * while): lets an asynchronous caller wait without blocking its thread.
   */
  whenReady?(): Promise<void>;
}

/** What a batch built across event-loop turns relied on; see ChunkStore.watch() and intact(). */
export interface BatchWatch {
  readonly epoch: number;
  /** Chunks its put() calls found already stored. */
  readonly hits: Set<string>;
  /** Chunks forgotten (freed) since the watch began. */
  readonly forgotten: Set<string>;
}

interface Pending {
  handle: Handle;
  kind: ChunkKind;
  /** Null while the chunk is being compressed. */
  loc: ChunkLocation | null;
  /** The chunk's own copy of its raw bytes, kept until its payload is in the container. */
  raw: Buffer | null;
}

/**
 * Content-addressed chunk storage: dedup check (cache, then index), compression, container appends,
 * and the durability order — container bytes are fsynced before the index rows naming them commit.
 * Single writer; reads verify every chunk's hash.
 *
 * With a ParallelCompressor, a new chunk is pending without a location until its compressed
 * payload comes back (or is compressed here, when the workers are saturated); record order in a
 * container may then differ from put() order. Errors of an earlier put (compression, append) may
 * surface from a later put() or from commit(), having aborted the batch as an inline failure would.
 */
export class ChunkStore {
  readonly stats: DedupStats = emptyStats();
  private writer: ContainerWriter | null = null;
  private readonly pending = new Map<string, Pending>();
  /** Chunks whose compression is in flight, by job sequence number. */
  private readonly compressing = new Map<number, Pending>();
  private readonly pendingRefs = new Map<string, { handle: Handle; delta: number }>();
  private readonly sealedSinceCommit: number[] = [];
  private pendingBytes = 0;
  /** Appends to containers so far, and how many of them are fsynced (sealing fsyncs, too). */
  private appends = 0;
  private syncedAppends = 0;
  /** The open container has appends not fsynced yet. */
  private get unsynced(): boolean {
    return this.appends !== this.syncedAppends;
  }
  /** Bumped by abort(): pending chunks of an earlier epoch are gone. */
  private epoch = 0;
  private readonly watches = new Set<BatchWatch>();
  private readonly locations: LRUCache<string, ChunkLocation>;
  /**
   * Chunks prefetch() found missing from the index; valid only until the current synchronous run
   * ends (a microtask clears it), so nothing can have stored them meanwhile but put() itself.
   */
  private readonly absent = new Set<string>();
  private absentClearQueued = false;
  private readonly data: LRUCache<string, Buffer>;

  constructor(
    readonly index: IndexDb,
    readonly blobs: BlobStore,
    readonly opts: ChunkStoreOptions = DEFAULT_CHUNK_STORE_OPTIONS,
    private readonly compressor: ParallelCompressor | null = null,
  ) {
    this.locations = new LRUCache({ max: opts.locationCacheEntries });
    this.data = new LRUCache({ maxSize: Math.max(opts.cacheBytes, 1), sizeCalculation: (b) => b.length || 1 });
    // Whatever makes index commits durable (a durable commit, a checkpoint) first makes the
    // container bytes they may name durable.
    index.onBeforeDurable(() => this.syncContainers());
  }

  /**
   * Where a chunk lives, or undefined. Looks at pending writes, the cache, then the index.
   * Waits for the compression of a pending chunk (it has no location before).
   */
  locate(handle: Handle): ChunkLocation | undefined {
    const key = handleKey(handle);
    const p = this.pending.get(key);
    if (p) {
      if (!p.loc) this.drain(p);
      if (!p.loc) throw new StrataError('EIO', `chunk ${shortHex(handle)} was dropped before it was stored`);
      return p.loc;
    }
    const cached = this.locations.get(key);
    if (cached) return cached;
    const row = this.index.getChunk(handle);
    if (row) this.locations.set(key, row);
    return row;
  }

  /** locate() for many handles: the index is asked once per batch for those not pending or cached. */
  locateMany(handles: readonly Handle[]): (ChunkLocation | undefined)[] {
    const out: (ChunkLocation | undefined)[] = new Array(handles.length);
    const ask: number[] = [];
    for (let i = 0; i < handles.length; i++) {
      const key = handleKey(handles[i]);
      if (this.pending.has(key)) out[i] = this.locate(handles[i]);
      else if ((out[i] = this.locations.get(key)) === undefined) ask.push(i);
    }
    if (ask.length) {
      const rows = this.index.getChunks(ask.map((i) => handles[i]));
      for (const i of ask) {
        const key = handleKey(handles[i]);
        const row = rows.get(key);
        if (row) this.locations.set(key, row);
        out[i] = row;
      }
    }
    return out;
  }

  has(handle: Handle): boolean {
    return this.pending.has(handleKey(handle)) || this.locate(handle) !== undefined;
  }

  /** Chunks put but not yet compressed and appended (always 0 without a compressor). */
  get compressingCount(): number {
    return this.compressing.size;
  }

  /** Counts a duplicate found by the caller's temporal check (predecessor's chunk at the same offset). */
  noteTemporalHit(length: number): void {
    this.stats.chunksSeen++;
    this.stats.bytesSeen += length;
    this.stats.temporalHits++;
    this.stats.dedupBytes += length;
  }

  noteZero(length: number): void {
    this.stats.bytesSeen += length;
    this.stats.zeroBytes += length;
  }

  /**
   * Stores `raw` under `handle` (its BLAKE3, computed by the caller) unless already present.
   * When new and `children` are given, each child's reference count grows by one.
   * Returns true when the chunk was new. `raw` is copied if it has to be kept.
   */
  put(handle: Handle, kind: ChunkKind, raw: Buffer, children?: Handle[]): boolean {
    const key = handleKey(handle);
    if (kind === ChunkKind.Data) {
      this.stats.chunksSeen++;
      this.stats.bytesSeen += raw.length;
    }
    if (this.pending.has(key) || this.locations.has(key)) {
      if (kind === ChunkKind.Data) { this.stats.cacheHits++; this.stats.dedupBytes += raw.length; }
      for (const w of this.watches) w.hits.add(key);
      return false;
    }
    const row = this.absent.delete(key) ? undefined : this.index.getChunk(handle);
    if (row) {
      this.locations.set(key, row);
      for (const w of this.watches) w.hits.add(key);
      if (kind === ChunkKind.Data) { this.stats.indexHits++; this.stats.dedupBytes += raw.length; }
      return false;
    }
    const p: Pending = { handle, kind, loc: null, raw: null };
    const c = this.compressor;
    if (c) while (this.compressing.size && this.collect(false));
    // With the workers' queue full, compressing here rather than waiting keeps both cores busy
    // and the memory held for jobs in flight bounded.
    if (c && (c.inFlightBytes === 0 || c.inFlightBytes + raw.length <= c.maxInFlightBytes)) {
      this.submit(c, p, raw);
    } else {
      const { codec, payload } = compressChunk(raw);
      this.store(p, codec, raw.length, payload);
    }
    this.pending.set(key, p);
    if (children) for (const child of children) this.addRef(child, 1);
    this.stats.newChunks++;
    this.stats.newBytes += raw.length;
    if (this.pendingBytes >= this.opts.commitEveryBytes) this.commit();
    return true;
  }

  /**
   * Looks up in one index query the handles about to be put() in this synchronous run (a worker
   * hashed a run of chunks), so that put() does not query the index once per new chunk. Only what
   * put() would ask the index about is asked; the answer lasts until the run ends.
   */
  prefetch(handles: readonly Handle[]): void {
    const ask: Handle[] = [];
    const keys: string[] = [];
    for (const h of handles) {
      const key = handleKey(h);
      if (this.pending.has(key) || this.locations.has(key) || this.absent.has(key)) continue;
      ask.push(h);
      keys.push(key);
    }
    if (ask.length === 0) return;
    const present = new Set<string>();
    for (const h of this.index.presentChunks(ask)) present.add(handleKey(h));
    for (const key of keys) if (!present.has(key)) this.absent.add(key);
    if (!this.absentClearQueued) {
      this.absentClearQueued = true;
      queueMicrotask(() => {
        this.absent.clear();
        this.absentClearQueued = false;
      });
    }
  }

  private submit(c: ParallelCompressor, p: Pending, raw: Buffer): void {
    // Keep the compressor's copy, not `raw`: the caller may reuse its buffer once put() returns.
    let job;
    try {
      job = c.submit(raw);
    } catch (e) {
      this.abort();
      throw e;
    }
    p.raw = job.copy;
    this.compressing.set(job.seq, p);
  }

  /**
   * Applies the next compression outcome, if any (waiting for it if `wait`); returns false when
   * there was none. Any failure aborts the batch and is thrown.
   */
  private collect(wait: boolean): boolean {
    let out: CompressOutcome | undefined;
    try {
      out = (this.compressor as ParallelCompressor).next(wait);
    } catch (e) {
      this.abort();
      throw e;
    }
    if (!out) return false;
    const p = this.compressing.get(out.seq);
    if (!p) return true; // from a batch that was aborted meanwhile
    this.compressing.delete(out.seq);
    const raw = p.raw as Buffer;
    if ('error' in out) {
      this.abort();
      throw new StrataError('EIO', `compressing chunk ${shortHex(p.handle)}: ${out.error}`);
    }
    this.store(p, out.codec, raw.length, out.codec === Codec.Raw ? raw : out.payload);
    return true;
  }

  /** Waits for compressions to finish and stores them: all of them, or up to and including `until`. */
  private drain(until?: Pending): void {
    while (this.compressing.size && !until?.loc) {
      if (!this.collect(true)) {
        this.abort();
        throw new StrataError('EIO', 'the compressor lost track of chunks in flight');
      }
    }
  }

  /** Appends a chunk's payload to the open container and gives the pending chunk its location. */
  private store(p: Pending, codec: Codec, rawLength: number, payload: Buffer): void {
    const w = this.currentWriter();
    let rec;
    try {
      rec = w.append(p.handle, p.kind, codec, rawLength, payload);
    } catch (e) {
      this.abort();
      throw e;
    }
    p.loc = {
      container: rec.container, offset: rec.offset, storedLength: rec.storedLength,
      rawLength: rec.rawLength, codec: rec.codec, kind: rec.kind,
    };
    p.raw = null;
    this.appends++;
    this.stats.storedBytes += payload.length;
    this.pendingBytes += payload.length;
    if (w.size >= this.opts.containerSize) this.sealCurrent();
  }

  /** Buffers a reference-count change, applied at the next commit. */
  addRef(handle: Handle, delta: number): void {
    const key = handleKey(handle);
    const r = this.pendingRefs.get(key);
    if (r) r.delta += delta;
    else this.pendingRefs.set(key, { handle, delta });
  }

  /**
   * Commits all pending chunks' index rows, buffered reference changes and `extra` (e.g. a
   * snapshot row) in one transaction, after their container bytes were written. The open container
   * is fsynced first when the commit is durable: `durable`, or any commit of an index that is not
   * relaxed. A relaxed commit survives a killed process (its container bytes are in the page
   * cache); power loss only once a later durable commit or checkpoint fsynced both.
   */
  commit(extra?: () => void, durable = false): void {
    this.drain();
    // Index rows may only name container bytes that reach the disk first: a relaxed commit can
    // reach it before the container's pages do (the kernel writes back in its own order), and
    // after a power loss the index would name bytes that are not there. So chunk rows always
    // follow a container fsync; a commit without new chunks (metadata, references) needs none.
    // Asynchronous writers (the mount's flusher) call syncContainersAsync() first, so this finds
    // nothing left to sync and the thread never blocks on the disk.
    if (!durable && (!this.index.relaxed || this.pending.size > 0)) this.syncContainers();
    const pending = [...this.pending.values()];
    // A new chunk's reference changes go into its row as it is inserted (one statement, not two).
    // (Nothing is cleared before the transaction: a failed commit leaves the batch as it was.)
    const rows = pending.map((p) => ({ handle: p.handle, loc: p.loc as ChunkLocation, refs: this.pendingRefs.get(handleKey(p.handle))?.delta ?? 0 }));
    const refs: { handle: Handle; delta: number }[] = [];
    for (const [key, r] of this.pendingRefs) if (!this.pending.has(key)) refs.push(r);
    const sealed = this.sealedSinceCommit.splice(0);
    (durable ? this.index.durable.bind(this.index) : this.index.transaction.bind(this.index))(() => {
      this.index.insertChunks(rows);
      for (const r of refs) if (r.delta !== 0) this.index.addRefs(r.handle, r.delta);
      for (const id of sealed) this.index.markSealed(id);
      extra?.();
    });
    for (const p of pending) this.locations.set(handleKey(p.handle), p.loc as ChunkLocation);
    this.pending.clear();
    this.pendingRefs.clear();
    this.pendingBytes = 0;
  }

  /**
   * syncContainers() without blocking the thread: afterwards everything appended before the call
   * is durable, and a commit() that follows at once (no appends between) has nothing to sync.
   */
  async syncContainersAsync(): Promise<void> {
    const w = this.writer;
    if (!w || !this.unsynced) return;
    const seq = this.appends;
    try {
      await w.syncAsync();
    } catch (e) {
      if (this.writer !== w) return; // sealed meanwhile: sealing fsynced it, the failure is moot
      this.abort();
      throw e;
    }
    if (this.writer === w) this.syncedAppends = Math.max(this.syncedAppends, seq);
  }

  /** Fsyncs container bytes appended since the last fsync (the open container's; sealing fsyncs). */
  syncContainers(): void {
    if (!this.writer || !this.unsynced) return;
    try {
      this.writer.sync();
    } catch (e) {
      this.abort();
      throw e;
    }
    this.syncedAppends = this.appends;
  }

  /** Chunks put but whose compression has not come back yet: all of them, or only what is ready (wait=false). */
  private collectReady(): void {
    if (this.compressor) while (this.compressing.size && this.collect(false));
  }

  /**
   * Waits without blocking the thread until no compression is in flight (their payloads appended),
   * so that commit() then has nothing to wait for.
   */
  async settle(): Promise<void> {
    const started = Date.now();
    this.collectReady();
    while (this.compressing.size) {
      // A dead or silent worker is detected by the blocking path, which throws after its timeout.
      if (!this.compressor?.whenReady || Date.now() - started > 30_000) return this.drain();
      await this.compressor.whenReady();
      this.collectReady();
    }
  }

  /**
   * Lets the event loop run, collects finished compressions and, while more than half of the
   * compressor's budget is in flight, waits for it: an asynchronous writer calls this between
   * slices of work so put() never has to compress on the calling thread.
   */
  async relieve(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    this.collectReady();
    const c = this.compressor;
    if (!c?.whenReady) return;
    while (this.compressing.size && c.inFlightBytes > c.maxInFlightBytes / 2) {
      await c.whenReady();
      this.collectReady();
    }
  }

  /** Starts recording what a batch built across event-loop turns relies on (see intact()). */
  watch(): BatchWatch {
    const w: BatchWatch = { epoch: this.epoch, hits: new Set(), forgotten: new Set() };
    this.watches.add(w);
    return w;
  }

  unwatch(w: BatchWatch): void {
    this.watches.delete(w);
  }

  /**
   * Whether everything the watched batch put is still there: no abort dropped pending chunks, and
   * no chunk it found stored was freed since (another file's release may free a chunk the batch
   * deduplicated against). If not, the batch must be rebuilt rather than committed.
   */
  intact(w: BatchWatch): boolean {
    if (w.epoch !== this.epoch) return false;
    for (const k of w.forgotten) if (w.hits.has(k)) return false;
    return true;
  }

  /**
   * Forgets the uncommitted batch after a write, sync or compression failure (a full disk, an I/O
   * error): its chunks were never acknowledged, the caller still holds their data and may try
   * again; the container they went to is left as it is (gc removes it). Compressions still in
   * flight are cancelled: their results are never stored.
   */
  abort(): void {
    this.compressor?.cancelAll();
    this.compressing.clear();
    this.absent.clear();
    this.epoch++;
    this.writer?.abandon();
    this.writer = null;
    this.syncedAppends = this.appends;
    this.pending.clear();
    this.pendingRefs.clear();
    this.pendingBytes = 0;
  }

  /** Reads a chunk's raw bytes, verifying its hash. Throws ECORRUPT on mismatch, ENOENT if unknown. */
  get(handle: Handle): Buffer {
    const key = handleKey(handle);
    const hit = this.data.get(key);
    if (hit) return hit;
    // Still being compressed: the bytes the caller hashed are all there is yet. Copied, because the
    // compressor's copy lives in memory shared with a worker.
    const inFlight = this.pending.get(key)?.raw;
    if (inFlight) return Buffer.from(inFlight);
    const loc = this.locate(handle);
    if (!loc) throw notFound(`chunk ${shortHex(handle)}`);
    const raw = this.readVerified(handle, loc);
    this.data.set(key, raw);
    return raw;
  }

  /** Reads and verifies a chunk at a known location, bypassing caches (verify, compaction). */
  readVerified(handle: Handle, loc: ChunkLocation): Buffer {
    let raw: Buffer;
    try {
      raw = decompressChunk(loc.codec, readChunkPayload(this.blobs, loc), loc.rawLength);
    } catch (e) {
      if (e instanceof StrataError) {
        throw corrupt(`chunk ${shortHex(handle)} in container ${loc.container} at offset ${loc.offset}: ${e.message}`);
      }
      throw e;
    }
    if (!hashBytes(raw).equals(handle)) {
      throw corrupt(`chunk ${shortHex(handle)} in container ${loc.container} at offset ${loc.offset}: hash mismatch`);
    }
    return raw;
  }

  /** Stored payload bytes as they sit in the container (for replication and compaction). */
  readPayload(loc: ChunkLocation): Buffer {
    return readChunkPayload(this.blobs, loc);
  }

  /** Appends an already-compressed payload (compaction); returns the new location. Caller indexes it. */
  appendPayload(handle: Handle, loc: ChunkLocation, payload: Buffer): ChunkLocation {
    const w = this.currentWriter();
    const rec = w.append(handle, loc.kind, loc.codec, loc.rawLength, payload);
    const out = { ...loc, container: rec.container, offset: rec.offset };
    this.appends++;
    if (w.size >= this.opts.containerSize) this.sealCurrent();
    return out;
  }

  forget(handle: Handle): void {
    const key = handleKey(handle);
    for (const w of this.watches) w.forgotten.add(key);
    this.locations.delete(key);
    this.data.delete(key);
  }

  /** Seals the open container (if any) so no container is left half-written by a clean close. */
  close(): void {
    if (this.pending.size || this.pendingRefs.size) this.commit();
    if (this.writer) {
      this.sealCurrent();
      this.commit();
    }
  }

  get openContainer(): number | null {
    return this.writer ? this.writer.id : null;
  }

  private currentWriter(): ContainerWriter {
    if (!this.writer) {
      const id = this.index.allocateContainer();
      this.writer = new ContainerWriter(this.blobs, id);
    }
    return this.writer;
  }

  private sealCurrent(): void {
    if (!this.writer) return;
    this.writer.seal(); // fsyncs it
    this.syncedAppends = this.appends;
    this.sealedSinceCommit.push(this.writer.id);
    this.writer = null;
  }
}
