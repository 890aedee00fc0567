import { LRUCache } from 'lru-cache';
import { corrupt, notFound, StrataError } from '../errors.js';
import { ChunkKind, type BlobStore, type ChunkLocation, type Handle } from '../types.js';
import { compressChunk, decompressChunk } from './codec.js';
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
}

export const DEFAULT_CHUNK_STORE_OPTIONS: ChunkStoreOptions = {
  containerSize: 32 * 1024 * 1024,
  cacheBytes: 64 * 1024 * 1024,
  locationCacheEntries: 200_000,
  commitEveryBytes: 64 * 1024 * 1024,
};

interface Pending {
  handle: Handle;
  loc: ChunkLocation;
}

/**
 * Content-addressed chunk storage: dedup check (cache, then index), compression, container appends,
 * and the durability order — container bytes are fsynced before the index rows naming them commit.
 * Single writer; reads verify every chunk's hash.
 */
export class ChunkStore {
  readonly stats: DedupStats = emptyStats();
  private writer: ContainerWriter | null = null;
  private readonly pending = new Map<string, Pending>();
  private readonly pendingRefs = new Map<string, { handle: Handle; delta: number }>();
  private readonly sealedSinceCommit: number[] = [];
  private pendingBytes = 0;
  private readonly locations: LRUCache<string, ChunkLocation>;
  private readonly data: LRUCache<string, Buffer>;

  constructor(
    readonly index: IndexDb,
    readonly blobs: BlobStore,
    readonly opts: ChunkStoreOptions = DEFAULT_CHUNK_STORE_OPTIONS,
  ) {
    this.locations = new LRUCache({ max: opts.locationCacheEntries });
    this.data = new LRUCache({ maxSize: Math.max(opts.cacheBytes, 1), sizeCalculation: (b) => b.length || 1 });
  }

  /** Where a chunk lives, or undefined. Looks at pending writes, the cache, then the index. */
  locate(handle: Handle): ChunkLocation | undefined {
    const key = handleKey(handle);
    const p = this.pending.get(key);
    if (p) return p.loc;
    const cached = this.locations.get(key);
    if (cached) return cached;
    const row = this.index.getChunk(handle);
    if (row) this.locations.set(key, row);
    return row;
  }

  has(handle: Handle): boolean {
    return this.locate(handle) !== undefined;
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
   * Returns true when the chunk was new.
   */
  put(handle: Handle, kind: ChunkKind, raw: Buffer, children?: Handle[]): boolean {
    const key = handleKey(handle);
    if (kind === ChunkKind.Data) {
      this.stats.chunksSeen++;
      this.stats.bytesSeen += raw.length;
    }
    if (this.pending.has(key) || this.locations.has(key)) {
      if (kind === ChunkKind.Data) { this.stats.cacheHits++; this.stats.dedupBytes += raw.length; }
      return false;
    }
    const row = this.index.getChunk(handle);
    if (row) {
      this.locations.set(key, row);
      if (kind === ChunkKind.Data) { this.stats.indexHits++; this.stats.dedupBytes += raw.length; }
      return false;
    }
    const { codec, payload } = compressChunk(raw);
    const w = this.currentWriter();
    let rec;
    try {
      rec = w.append(handle, kind, codec, raw.length, payload);
    } catch (e) {
      this.abort();
      throw e;
    }
    const loc: ChunkLocation = {
      container: rec.container, offset: rec.offset, storedLength: rec.storedLength,
      rawLength: rec.rawLength, codec: rec.codec, kind: rec.kind,
    };
    this.pending.set(key, { handle, loc });
    if (children) for (const c of children) this.addRef(c, 1);
    this.stats.newChunks++;
    this.stats.newBytes += raw.length;
    this.stats.storedBytes += payload.length;
    this.pendingBytes += payload.length;
    if (w.size >= this.opts.containerSize) this.sealCurrent();
    if (this.pendingBytes >= this.opts.commitEveryBytes) this.commit();
    return true;
  }

  /** Buffers a reference-count change, applied at the next commit. */
  addRef(handle: Handle, delta: number): void {
    const key = handleKey(handle);
    const r = this.pendingRefs.get(key);
    if (r) r.delta += delta;
    else this.pendingRefs.set(key, { handle, delta });
  }

  /**
   * Makes all pending chunks durable: fsync the open container, then commit their index rows,
   * buffered reference changes and `extra` (e.g. a snapshot row) in one transaction.
   */
  commit(extra?: () => void, durable = false): void {
    try {
      this.writer?.sync();
    } catch (e) {
      this.abort();
      throw e;
    }
    const pending = [...this.pending.values()];
    const refs = [...this.pendingRefs.values()];
    const sealed = this.sealedSinceCommit.splice(0);
    (durable ? this.index.durable.bind(this.index) : this.index.transaction.bind(this.index))(() => {
      for (const p of pending) this.index.insertChunk(p.handle, p.loc, 0);
      for (const r of refs) if (r.delta !== 0) this.index.addRefs(r.handle, r.delta);
      for (const id of sealed) this.index.markSealed(id);
      extra?.();
    });
    for (const p of pending) this.locations.set(handleKey(p.handle), p.loc);
    this.pending.clear();
    this.pendingRefs.clear();
    this.pendingBytes = 0;
  }

  /**
   * Forgets the uncommitted batch after a write or sync failure (a full disk, an I/O error): its
   * chunks were never acknowledged, the caller still holds their data and may try again; the
   * container they went to is left as it is (gc removes it).
   */
  abort(): void {
    this.writer?.abandon();
    this.writer = null;
    this.pending.clear();
    this.pendingRefs.clear();
    this.pendingBytes = 0;
  }

  /** Reads a chunk's raw bytes, verifying its hash. Throws ECORRUPT on mismatch, ENOENT if unknown. */
  get(handle: Handle): Buffer {
    const key = handleKey(handle);
    const hit = this.data.get(key);
    if (hit) return hit;
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
    if (w.size >= this.opts.containerSize) this.sealCurrent();
    return out;
  }

  forget(handle: Handle): void {
    const key = handleKey(handle);
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
    this.writer.seal();
    this.sealedSinceCommit.push(this.writer.id);
    this.writer = null;
  }
}
