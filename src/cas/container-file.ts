// Container file format: an append-only blob of compressed chunks that describes itself, so the
// index can be rebuilt from containers alone. All integers are little-endian.
//
//   offset  size  file header (16 bytes)
//   0       8     magic "STRATAC1" (ASCII)
//   8       4     u32 format version = 1
//   12      4     u32 reserved = 0
//
// then records, back to back, each a 48-byte header followed by its payload:
//   0       32    handle: BLAKE3-256 of the RAW chunk bytes
//   32      4     u32 storedLength (payload bytes that follow the header)
//   36      4     u32 rawLength (bytes after decoding)
//   40      1     u8 codec (Codec: 0 raw, 1 zstd)
//   41      1     u8 kind (ChunkKind: 0 data, 1 node, 2 tree root, 3 snapshot record, 4 tombstone)
//   42      2     u16 reserved = 0
//   44      4     u32 crc32 (zlib) of header bytes 0..43
//   48      n     payload; its file offset is the ChunkLocation.offset
//
// A sealed container then has a metadata section at metaOffset (right after the last payload),
// one 50-byte entry per record, in record order:
//   0       32    handle
//   32      8     u64 payload offset
//   40      4     u32 storedLength
//   44      4     u32 rawLength
//   48      1     u8 codec
//   49      1     u8 kind
//
// and finally a 56-byte trailer ending the blob:
//   0       8     u64 metaOffset
//   8       4     u32 record count
//   12      4     u32 reserved = 0
//   16      32    BLAKE3-256 of (metadata section || trailer bytes 0..15)
//   48      8     magic "STRATAF1" (ASCII)
//
// A sealed container satisfies metaOffset + 50 * count + 56 == blob size. Reading a sealed
// container costs two reads (trailer, metadata); an unsealed one (a crash before sealing) is
// recovered by walking the record headers, whose crc32 stops the walk at a torn tail.
import zlib from 'node:zlib';
import { ChunkKind, Codec, HANDLE_BYTES } from '../types.js';
import type { BlobAppender, BlobStore, ChunkLocation, ContainerRecord, Handle } from '../types.js';
import { StrataError, invalid, isStrataError } from '../errors.js';
import { hashBytes } from './hash.js';
import { decompressChunk } from './codec.js';

export const CONTAINER_MAGIC = Buffer.from('STRATAC1', 'ascii');
export const CONTAINER_TRAILER_MAGIC = Buffer.from('STRATAF1', 'ascii');
export const CONTAINER_VERSION = 1;
export const CONTAINER_HEADER_BYTES = 16;
export const RECORD_HEADER_BYTES = 48;
export const META_ENTRY_BYTES = 50;
export const TRAILER_BYTES = 56;
const U32_MAX = 0xffffffff;

/** The blob name of container `id`: "c" + id zero-padded to 10 digits (so names sort by id). */
const isKnownKind = (k: number) => k >= ChunkKind.Data && k <= ChunkKind.Tombstone;

export function containerBlobName(id: number): string {
  if (!Number.isSafeInteger(id) || id < 0) throw invalid(`bad container id ${id}`);
  return 'c' + String(id).padStart(10, '0');
}

/** Appends chunk records to a new container; seal() writes its metadata and closes it. */
export class ContainerWriter {
  readonly id: number;
  private readonly out: BlobAppender;
  // Kept for the metadata section; bounded because the caller seals at a fixed container size.
  private readonly records: ContainerRecord[] = [];
  private state: 'open' | 'sealed' | 'failed' = 'open';
  private failure: unknown = null;

  /** Creates blob containerBlobName(id) (EEXIST if it exists) and writes the file header. */
  constructor(blobs: BlobStore, id: number) {
    this.id = id;
    this.out = blobs.create(containerBlobName(id));
    const header = Buffer.alloc(CONTAINER_HEADER_BYTES);
    CONTAINER_MAGIC.copy(header, 0);
    header.writeUInt32LE(CONTAINER_VERSION, 8);
    try {
      this.out.append(header);
    } catch (e) {
      this.abandon();
      throw e;
    }
  }

  /** Bytes written so far (header and records; the footer is added by seal()). */
  get size(): number {
    return this.out.length;
  }

  get count(): number {
    return this.records.length;
  }

  /**
   * Appends one chunk record and returns where it lives. Not durable until sync() or seal().
   * If the write fails the writer refuses further use: abandon it and start a new container.
   */
  append(handle: Handle, kind: ChunkKind, codec: Codec, rawLength: number, payload: Buffer): ContainerRecord {
    this.checkOpen();
    if (handle.length !== HANDLE_BYTES) throw invalid(`handle must be ${HANDLE_BYTES} bytes, got ${handle.length}`);
    if (!isU32(rawLength)) throw invalid(`bad raw length ${rawLength}`);
    if (payload.length > U32_MAX) throw invalid(`payload of ${payload.length} bytes is too large for a container`);
    if (codec !== Codec.Raw && codec !== Codec.Zstd) throw invalid(`unknown codec ${codec as number}`);
    if (!isKnownKind(kind)) throw invalid(`unknown chunk kind ${kind as number}`);
    if (codec === Codec.Raw && payload.length !== rawLength) {
      throw invalid(`raw payload is ${payload.length} bytes but rawLength is ${rawLength}`);
    }
    const rec: ContainerRecord = {
      handle: Buffer.from(handle),
      container: this.id,
      offset: this.out.length + RECORD_HEADER_BYTES,
      storedLength: payload.length,
      rawLength,
      codec,
      kind,
    };
    // One write per record, so a crash tears at most the last record rather than splitting
    // a header from its payload across two writes.
    const buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length);
    encodeRecordHeader(rec, buf);
    payload.copy(buf, RECORD_HEADER_BYTES);
    this.guard(() => {
      const at = this.out.append(buf);
      if (at + RECORD_HEADER_BYTES !== rec.offset) {
        throw new StrataError('EIO', `container ${containerBlobName(this.id)}: append landed at ${at}, expected ${rec.offset - RECORD_HEADER_BYTES}`);
      }
    });
    this.records.push(rec);
    return { ...rec };
  }

  /** Makes every record appended so far durable. */
  sync(): void {
    this.checkOpen();
    this.guard(() => this.out.sync());
  }

  /** sync() without blocking the thread, where the blob store can (appends may go on meanwhile). */
  async syncAsync(): Promise<void> {
    this.checkOpen();
    if (!this.out.syncAsync) return this.sync();
    try {
      await this.out.syncAsync();
    } catch (e) {
      this.guard(() => { throw e; });
    }
  }

  /** Writes the metadata section and trailer, syncs and closes. The container is then final. */
  seal(): void {
    this.checkOpen();
    const metaOffset = this.out.length;
    const metaLen = this.records.length * META_ENTRY_BYTES;
    const footer = Buffer.alloc(metaLen + TRAILER_BYTES);
    this.records.forEach((r, i) => encodeMetaEntry(r, footer, i * META_ENTRY_BYTES));
    const trailer = footer.subarray(metaLen);
    trailer.writeBigUInt64LE(BigInt(metaOffset), 0);
    trailer.writeUInt32LE(this.records.length, 8);
    footerDigest(footer.subarray(0, metaLen), trailer).copy(trailer, 16);
    CONTAINER_TRAILER_MAGIC.copy(trailer, 48);
    this.guard(() => {
      this.out.append(footer);
      this.out.close();
    });
    this.state = 'sealed';
  }

  /** Releases the blob without sealing (after a failure). What was synced stays recoverable by a scan. */
  abandon(): void {
    if (this.state === 'sealed') return;
    if (this.state === 'open') this.state = 'failed';
    this.failure ??= invalid(`container ${containerBlobName(this.id)} was abandoned`);
    try {
      this.out.close();
    } catch {
      // Abandoning happens on an error path already; the first error is the one to report.
    }
  }

  private checkOpen(): void {
    if (this.state === 'sealed') throw invalid(`container ${containerBlobName(this.id)} is sealed`);
    if (this.state === 'failed') {
      throw new StrataError('EIO', `container ${containerBlobName(this.id)} failed earlier and cannot be written`, {
        cause: this.failure,
      });
    }
  }

  private guard(op: () => void): void {
    try {
      op();
    } catch (e) {
      // After a failed write or fsync the blob's tail is unknown (and, after a failed fsync, the
      // kernel may have dropped dirty pages), so appending more would risk silent loss.
      this.state = 'failed';
      this.failure = e;
      throw e;
    }
  }
}

/** Reads a chunk's stored payload (exactly loc.storedLength bytes at loc.offset). Not verified. */
export function readChunkPayload(blobs: BlobStore, loc: ChunkLocation): Buffer {
  return blobs.read(containerBlobName(loc.container), loc.offset, loc.storedLength);
}

export interface ContainerContents {
  records: ContainerRecord[];
  /** True when the records come from an intact footer. */
  sealed: boolean;
  /** Human-readable descriptions of what was damaged or dropped (empty for a healthy container). */
  problems: string[];
}

/**
 * Lists a container's records: from its footer when intact, else by walking record headers up
 * to the first invalid or truncated one. With verifyPayloads, each payload is decoded and
 * re-hashed and records that fail are dropped (and named in `problems`).
 * Throws ENOENT if the container does not exist.
 */
export function readContainerRecords(
  blobs: BlobStore,
  id: number,
  opts: { verifyPayloads?: boolean } = {},
): ContainerContents {
  const name = containerBlobName(id);
  const size = blobs.size(name);
  const problems: string[] = [];
  if (size < CONTAINER_HEADER_BYTES) {
    problems.push(`${name}: only ${size} bytes, no complete file header`);
    return { records: [], sealed: false, problems };
  }
  const header = blobs.read(name, 0, CONTAINER_HEADER_BYTES);
  if (!header.subarray(0, 8).equals(CONTAINER_MAGIC)) {
    problems.push(`${name}: not a container (bad magic)`);
    return { records: [], sealed: false, problems };
  }
  const version = header.readUInt32LE(8);
  if (version !== CONTAINER_VERSION) {
    problems.push(`${name}: unsupported container format version ${version}`);
    return { records: [], sealed: false, problems };
  }

  const footer = readFooter(blobs, name, id, size);
  let records: ContainerRecord[];
  let sealed: boolean;
  if (footer.records) {
    records = footer.records;
    sealed = true;
  } else {
    if (footer.problem) problems.push(footer.problem);
    records = scanRecords(blobs, name, id, size, footer.metaOffset, problems);
    sealed = false;
  }

  if (opts.verifyPayloads) {
    records = records.filter((r) => {
      const problem = verifyRecord(blobs, name, r);
      if (problem) problems.push(problem);
      return problem === null;
    });
  }
  return { records, sealed, problems };
}

interface FooterResult {
  records?: ContainerRecord[];
  problem?: string;
  /** Where a damaged footer claims the records end, when plausible: a scan may stop there cleanly. */
  metaOffset?: number;
}

function readFooter(blobs: BlobStore, name: string, id: number, size: number): FooterResult {
  if (size < CONTAINER_HEADER_BYTES + TRAILER_BYTES) return {};
  const trailer = blobs.read(name, size - TRAILER_BYTES, TRAILER_BYTES);
  // No trailer magic: the normal state of a container that was never sealed, not a problem.
  if (!trailer.subarray(48).equals(CONTAINER_TRAILER_MAGIC)) return {};
  const metaOffset = Number(trailer.readBigUInt64LE(0));
  const count = trailer.readUInt32LE(8);
  const plausible =
    metaOffset >= CONTAINER_HEADER_BYTES && metaOffset + count * META_ENTRY_BYTES + TRAILER_BYTES === size;
  if (!plausible) return { problem: `${name}: footer is damaged (its lengths do not match the blob size)` };
  const meta = blobs.read(name, metaOffset, count * META_ENTRY_BYTES);
  if (!footerDigest(meta, trailer).equals(trailer.subarray(16, 48))) {
    return { problem: `${name}: footer checksum mismatch, records recovered by scanning`, metaOffset };
  }
  const records: ContainerRecord[] = [];
  let end = CONTAINER_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    const r = decodeMetaEntry(meta, i * META_ENTRY_BYTES, id);
    // The checksum matched, so an inconsistent entry means a writer bug; trust the headers instead.
    const bad = entryProblem(r, end, metaOffset);
    if (bad) return { problem: `${name}: footer entry ${i} is inconsistent (${bad}), records recovered by scanning`, metaOffset };
    records.push(r);
    end = r.offset + r.storedLength;
  }
  if (end !== metaOffset) {
    return { problem: `${name}: footer leaves bytes ${end}..${metaOffset} unaccounted for, records recovered by scanning`, metaOffset };
  }
  return { records };
}

function scanRecords(
  blobs: BlobStore,
  name: string,
  id: number,
  size: number,
  stopAt: number | undefined,
  problems: string[],
): ContainerRecord[] {
  const records: ContainerRecord[] = [];
  let at = CONTAINER_HEADER_BYTES;
  while (at < size && at !== stopAt) {
    if (size - at < RECORD_HEADER_BYTES) {
      problems.push(`${name} @${at}: truncated record header (${size - at} of ${RECORD_HEADER_BYTES} bytes), ignored`);
      break;
    }
    const hdr = blobs.read(name, at, RECORD_HEADER_BYTES);
    const r = decodeRecordHeader(hdr, id, at + RECORD_HEADER_BYTES);
    if (typeof r === 'string') {
      problems.push(`${name} @${at}: invalid record header (${r}); this and any later records ignored`);
      break;
    }
    if (r.offset + r.storedLength > size) {
      problems.push(
        `${name} @${at}: truncated record (payload of ${r.storedLength} bytes, ${size - r.offset} present), ignored`,
      );
      break;
    }
    records.push(r);
    at = r.offset + r.storedLength;
  }
  return records;
}

/** Returns null when the record's header and payload are intact and hash to its handle. */
function verifyRecord(blobs: BlobStore, name: string, r: ContainerRecord): string | null {
  const where = `${name} @${r.offset - RECORD_HEADER_BYTES}`;
  try {
    // Header and payload in one read; re-checking the header keeps a later scan able to walk past it.
    const buf = blobs.read(name, r.offset - RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + r.storedLength);
    const hdr = decodeRecordHeader(buf.subarray(0, RECORD_HEADER_BYTES), r.container, r.offset);
    if (typeof hdr === 'string') return `${where}: invalid record header (${hdr}), record dropped`;
    if (!sameRecord(hdr, r)) return `${where}: record header disagrees with the footer, record dropped`;
    const raw = decompressChunk(r.codec, buf.subarray(RECORD_HEADER_BYTES), r.rawLength, where);
    if (!hashBytes(raw).equals(r.handle)) return `${where}: payload does not hash to its handle, record dropped`;
    return null;
  } catch (e) {
    if (isStrataError(e, 'ECORRUPT') || isStrataError(e, 'ETRUNC')) return `${e.message}, record dropped`;
    throw e;
  }
}

function encodeRecordHeader(r: ContainerRecord, buf: Buffer): void {
  r.handle.copy(buf, 0);
  buf.writeUInt32LE(r.storedLength, 32);
  buf.writeUInt32LE(r.rawLength, 36);
  buf.writeUInt8(r.codec, 40);
  buf.writeUInt8(r.kind, 41);
  buf.writeUInt16LE(0, 42);
  buf.writeUInt32LE(zlib.crc32(buf.subarray(0, 44)), 44);
}

/**
 * Whether `buf` (the 48 bytes before a payload) is an intact record header naming `handle` with
 * these lengths and codec: a read that finds it there read the record it meant to, not a
 * neighbour's or a reused container's.
 */
export function headerDescribes(buf: Uint8Array, handle: Uint8Array, codec: Codec, storedLength: number, rawLength: number): boolean {
  if (buf.length !== RECORD_HEADER_BYTES) return false;
  const r = decodeRecordHeader(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), 0, 0);
  return typeof r !== 'string' && r.handle.equals(handle) && r.storedLength === storedLength && r.rawLength === rawLength && r.codec === codec;
}

/** Decodes a record header whose payload starts at `payloadOffset`, or says why it is invalid. */
function decodeRecordHeader(buf: Buffer, container: number, payloadOffset: number): ContainerRecord | string {
  if (zlib.crc32(buf.subarray(0, 44)) !== buf.readUInt32LE(44)) return 'crc32 mismatch';
  const r: ContainerRecord = {
    handle: Buffer.from(buf.subarray(0, 32)),
    container,
    offset: payloadOffset,
    storedLength: buf.readUInt32LE(32),
    rawLength: buf.readUInt32LE(36),
    codec: buf.readUInt8(40),
    kind: buf.readUInt8(41),
  };
  if (buf.readUInt16LE(42) !== 0) return 'reserved bits set';
  return fieldProblem(r) ?? r;
}

function encodeMetaEntry(r: ContainerRecord, buf: Buffer, at: number): void {
  r.handle.copy(buf, at);
  buf.writeBigUInt64LE(BigInt(r.offset), at + 32);
  buf.writeUInt32LE(r.storedLength, at + 40);
  buf.writeUInt32LE(r.rawLength, at + 44);
  buf.writeUInt8(r.codec, at + 48);
  buf.writeUInt8(r.kind, at + 49);
}

function decodeMetaEntry(buf: Buffer, at: number, container: number): ContainerRecord {
  return {
    handle: Buffer.from(buf.subarray(at, at + 32)),
    container,
    offset: Number(buf.readBigUInt64LE(at + 32)),
    storedLength: buf.readUInt32LE(at + 40),
    rawLength: buf.readUInt32LE(at + 44),
    codec: buf.readUInt8(at + 48),
    kind: buf.readUInt8(at + 49),
  };
}

/** Checks a footer entry against the layout: records are contiguous from `expectedHeaderAt`, before the metadata. */
function entryProblem(r: ContainerRecord, expectedHeaderAt: number, metaOffset: number): string | null {
  if (r.offset !== expectedHeaderAt + RECORD_HEADER_BYTES) return `payload offset ${r.offset} out of sequence`;
  if (r.offset + r.storedLength > metaOffset) return `payload runs into the metadata`;
  return fieldProblem(r);
}

function fieldProblem(r: ContainerRecord): string | null {
  if (r.codec !== Codec.Raw && r.codec !== Codec.Zstd) return `unknown codec ${r.codec as number}`;
  if (!isKnownKind(r.kind)) return `unknown kind ${r.kind as number}`;
  if (r.codec === Codec.Raw && r.storedLength !== r.rawLength) return 'raw record with differing lengths';
  return null;
}

function sameRecord(a: ContainerRecord, b: ContainerRecord): boolean {
  return (
    a.handle.equals(b.handle) &&
    a.offset === b.offset &&
    a.storedLength === b.storedLength &&
    a.rawLength === b.rawLength &&
    a.codec === b.codec &&
    a.kind === b.kind
  );
}

function footerDigest(meta: Buffer, trailer: Buffer): Buffer {
  return hashBytes(Buffer.concat([meta, trailer.subarray(0, 16)]));
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= U32_MAX;
}
