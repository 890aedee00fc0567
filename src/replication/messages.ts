// Replication wire format, layer 2: the messages carried in frames (frame.ts), with encoders and
// strict decoders. A decoder checks every length, count and range, refuses trailing bytes and
// unknown types, and throws a ProtocolError (EPROTO) naming the message and field, so nothing a
// peer sends reaches the sender/receiver logic unvalidated. Encoders check the same limits
// (throwing EINVAL), so this side never sends what a peer of the same version would refuse.
//
// Bodies (integers big-endian; "id" = u8 length 1..64 then ASCII [A-Za-z0-9._:-]):
//   0x01 CHALLENGE       u8 role (1 sender, 2 receiver) | 32 nonce
//   0x02 PROOF           32 HMAC-SHA256
//   0x03 AUTH_OK         (empty)
//   0x04 HELLO           id storeId
//   0x05 ERROR           u8 code length 1..32 | code [A-Z0-9_] | u16 message length ≤ 4096 | UTF-8 message
//   0x10 HOLDINGS_QUERY  u32 count ≤ 65536 | count × id snapshotId (distinct)
//   0x11 HOLDINGS        u32 count ≤ 65536 | count × (id snapshotId | 32 root handle) (distinct ids)
//                        | u32 retired count ≤ 65536 | retired × (id snapshotId | 32 root handle):
//                        snapshots this store held and removed by retention (distinct ids, none held)
//   0x20 OFFER           u32 batchId | u32 count 1..65536 | count × (32 handle | u8 bases 0..4
//                        | bases × 32 base handle): bases are chunks the receiver should hold (the
//                        item's old version) that a delta of the item may be made against
//   0x21 NEED            u32 batchId | u32 count 1..65536 (the OFFER's count) | ceil(count/8) bitmap
//                        | ceil(count/8) bitmap: in the first, bit (i & 7) of byte (i >> 3) set =
//                        handle i of the offer is needed; in the second, set = needed and the receiver
//                        holds all of item i's bases (set only for needed items with bases); pad bits 0
//   0x22 CHUNK           32 handle | u8 kind (0 data, 1 node, 2 tree root) | u8 codec (0 raw, 1 zstd)
//                        | u32 rawLength ≤ 16 MiB | payload (the rest: the chunk as stored)
//   0x23 CHUNK_DELTA     32 handle | u8 kind | u32 rawLength 1..16 MiB | u8 bases 1..4 | bases × 32
//                        base handle | payload (the rest, ≥ 1 byte): zstd of the raw chunk with the
//                        bases' raw bytes, concatenated in this order, as dictionary (delta-codec.ts)
//   0x30 COMMIT          u32 record length 1..65536 | UTF-8 JSON object (the snapshot record)
//                        | u16 fingerprint length ≤ 4096 | fingerprint bytes
//   0x31 COMMITTED       id snapshotId
//   0x3f DONE            (empty)

import { invalid } from '../errors.js';
import { ChunkKind, Codec, HANDLE_BYTES, type Handle } from '../types.js';
import { encodeFrame, MAX_FRAME_BODY, protocolError, type Frame } from './frame.js';

export type Role = 'sender' | 'receiver';

export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;
export const MAX_ID_CHARS = 64;
export const MAX_ERROR_CODE_CHARS = 32;
export const MAX_ERROR_MESSAGE_BYTES = 4096;
export const MAX_HOLDINGS = 65536;
export const MAX_OFFER_HANDLES = 65536;
/** Delta bases per offered item (and per CHUNK_DELTA); a full OFFER then still fits a frame (10.5 MiB). */
export const MAX_BASES = 4;
export const MAX_RECORD_BYTES = 64 * 1024;
export const MAX_FINGERPRINT_BYTES = 4096;
/** Refused above this, so a hostile rawLength cannot make the receiver allocate gigabytes to decompress. */
export const MAX_CHUNK_RAW_BYTES = MAX_FRAME_BODY;
/** Kinds that travel as CHUNKs; snapshot records travel in COMMIT and tombstones never leave a store. */
export const CHUNK_KINDS: readonly ChunkKind[] = [ChunkKind.Data, ChunkKind.Node, ChunkKind.TreeRoot];

export type Message =
  | { type: 'CHALLENGE'; role: Role; nonce: Buffer }
  | { type: 'PROOF'; hmac: Buffer }
  | { type: 'AUTH_OK' }
  | { type: 'HELLO'; storeId: string }
  | { type: 'ERROR'; code: string; message: string }
  | { type: 'HOLDINGS_QUERY'; snapshotIds: string[] }
  /** `retired`: snapshots the receiver removed by retention (not held; the sender skips them unless named). */
  | { type: 'HOLDINGS'; snapshots: Array<{ id: string; root: Handle }>; retired: Array<{ id: string; root: Handle }> }
  /** `bases[i]`: the delta bases of handles[i] (0..MAX_BASES each; the same length as handles). */
  | { type: 'OFFER'; batchId: number; handles: Handle[]; bases: Handle[][] }
  /**
   * `needed`: indexes into the offer's handles, strictly ascending, each < count. `withBases`: the
   * needed indexes whose bases the receiver holds all of (a subset of `needed`, ascending).
   */
  | { type: 'NEED'; batchId: number; count: number; needed: number[]; withBases: number[] }
  | { type: 'CHUNK'; handle: Handle; kind: ChunkKind; codec: Codec; rawLength: number; payload: Buffer }
  | { type: 'CHUNK_DELTA'; handle: Handle; kind: ChunkKind; rawLength: number; bases: Handle[]; payload: Buffer }
  | { type: 'COMMIT'; record: string; fingerprint: Buffer }
  | { type: 'COMMITTED'; snapshotId: string }
  | { type: 'DONE' };

export type MessageType = Message['type'];
export type MessageOf<T extends MessageType> = Extract<Message, { type: T }>;

export const MESSAGE_CODES: Readonly<Record<MessageType, number>> = Object.freeze({
  CHALLENGE: 0x01,
  PROOF: 0x02,
  AUTH_OK: 0x03,
  HELLO: 0x04,
  ERROR: 0x05,
  HOLDINGS_QUERY: 0x10,
  HOLDINGS: 0x11,
  OFFER: 0x20,
  NEED: 0x21,
  CHUNK: 0x22,
  CHUNK_DELTA: 0x23,
  COMMIT: 0x30,
  COMMITTED: 0x31,
  DONE: 0x3f,
});
const TYPE_OF_CODE = new Map<number, MessageType>(Object.entries(MESSAGE_CODES).map(([t, c]) => [c, t as MessageType]));

/** The message name of a frame type byte, or a hex form for unknown ones (for messages). */
export const messageName = (code: number) => TYPE_OF_CODE.get(code) ?? `0x${code.toString(16).padStart(2, '0')}`;

const ROLE_CODES: Record<Role, number> = { sender: 1, receiver: 2 };
const ID_RE = /^[A-Za-z0-9._:-]{1,64}$/;
const ERROR_CODE_RE = /^[A-Z0-9_]{1,32}$/;
const U32_MAX = 0xffff_ffff;
const utf8 = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------------------------
// Encoding

class Writer {
  private parts: Buffer[] = [];
  private cur = Buffer.allocUnsafe(256);
  private pos = 0;
  private ensure(n: number): void {
    if (this.pos + n <= this.cur.length) return;
    this.parts.push(this.cur.subarray(0, this.pos));
    this.cur = Buffer.allocUnsafe(Math.max(n, 64 * 1024));
    this.pos = 0;
  }
  u8(v: number): this {
    this.ensure(1);
    this.cur[this.pos++] = v;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.pos = this.cur.writeUInt16BE(v, this.pos);
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.pos = this.cur.writeUInt32BE(v, this.pos);
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.cur.set(b, this.pos);
    this.pos += b.length;
    return this;
  }
  id(s: string, what: string): this {
    checkId(s, what);
    return this.u8(s.length).bytes(Buffer.from(s, 'ascii'));
  }
  done(): Buffer[] {
    return [...this.parts, this.cur.subarray(0, this.pos)];
  }
}

function checkId(s: unknown, what: string): void {
  if (typeof s !== 'string' || !ID_RE.test(s)) {
    throw invalid(`${what} must be 1..${MAX_ID_CHARS} characters of [A-Za-z0-9._:-], got ${JSON.stringify(s)}`);
  }
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX) throw invalid(`${what} must be a u32, got ${v}`);
}

function checkBytes(b: unknown, n: number, what: string): asserts b is Buffer {
  if (!Buffer.isBuffer(b) || b.length !== n) throw invalid(`${what} must be ${n} bytes`);
}

function checkCount(n: number, min: number, max: number, what: string): void {
  if (n < min || n > max) throw invalid(`${what}: ${n} items, must be ${min}..${max}`);
}

function checkDistinct(ids: string[], what: string): void {
  if (new Set(ids).size !== ids.length) throw invalid(`${what}: snapshot ids must be distinct`);
}

/** The frame type and body of a message (the body in parts, so a CHUNK's payload is not copied). Throws EINVAL on a bad field. */
export function encodeMessage(m: Message): { type: number; body: Buffer[] } {
  const w = new Writer();
  switch (m.type) {
    case 'CHALLENGE':
      if (!Object.hasOwn(ROLE_CODES, m.role)) throw invalid(`CHALLENGE: unknown role ${JSON.stringify(m.role)}`);
      checkBytes(m.nonce, NONCE_BYTES, 'CHALLENGE nonce');
      w.u8(ROLE_CODES[m.role]).bytes(m.nonce);
      break;
    case 'PROOF':
      checkBytes(m.hmac, PROOF_BYTES, 'PROOF hmac');
      w.bytes(m.hmac);
      break;
    case 'AUTH_OK':
    case 'DONE':
      break;
    case 'HELLO':
      w.id(m.storeId, 'HELLO storeId');
      break;
    case 'ERROR': {
      if (typeof m.code !== 'string' || !ERROR_CODE_RE.test(m.code)) {
        throw invalid(`ERROR code must be 1..${MAX_ERROR_CODE_CHARS} characters of [A-Z0-9_], got ${JSON.stringify(m.code)}`);
      }
      const text = Buffer.from(truncateUtf8(String(m.message), MAX_ERROR_MESSAGE_BYTES), 'utf8');
      w.u8(m.code.length).bytes(Buffer.from(m.code, 'ascii')).u16(text.length).bytes(text);
      break;
    }
    case 'HOLDINGS_QUERY':
      checkCount(m.snapshotIds.length, 0, MAX_HOLDINGS, 'HOLDINGS_QUERY');
      checkDistinct(m.snapshotIds, 'HOLDINGS_QUERY');
      w.u32(m.snapshotIds.length);
      for (const id of m.snapshotIds) w.id(id, 'HOLDINGS_QUERY snapshot id');
      break;
    case 'HOLDINGS': {
      checkCount(m.snapshots.length, 0, MAX_HOLDINGS, 'HOLDINGS');
      checkCount(m.retired.length, 0, MAX_HOLDINGS, 'HOLDINGS retired');
      checkDistinct([...m.snapshots, ...m.retired].map((s) => s.id), 'HOLDINGS');
      for (const list of [m.snapshots, m.retired]) {
        w.u32(list.length);
        for (const s of list) {
          checkBytes(s.root, HANDLE_BYTES, 'HOLDINGS root');
          w.id(s.id, 'HOLDINGS snapshot id').bytes(s.root);
        }
      }
      break;
    }
    case 'OFFER':
      checkU32(m.batchId, 'OFFER batchId');
      checkCount(m.handles.length, 1, MAX_OFFER_HANDLES, 'OFFER');
      if (!Array.isArray(m.bases) || m.bases.length !== m.handles.length) throw invalid('OFFER needs one list of bases per handle');
      w.u32(m.batchId).u32(m.handles.length);
      m.handles.forEach((h, i) => {
        checkBytes(h, HANDLE_BYTES, 'OFFER handle');
        checkCount(m.bases[i].length, 0, MAX_BASES, 'OFFER bases');
        w.bytes(h).u8(m.bases[i].length);
        for (const b of m.bases[i]) {
          checkBytes(b, HANDLE_BYTES, 'OFFER base');
          w.bytes(b);
        }
      });
      break;
    case 'NEED': {
      checkU32(m.batchId, 'NEED batchId');
      checkCount(m.count, 1, MAX_OFFER_HANDLES, 'NEED count');
      const needed = indexBitmap(m.needed, m.count, 'NEED indexes');
      const withBases = indexBitmap(m.withBases, m.count, 'NEED withBases indexes');
      const neededSet = new Set(m.needed);
      for (const i of m.withBases) if (!neededSet.has(i)) throw invalid(`NEED withBases index ${i} is not a needed index`);
      w.u32(m.batchId).u32(m.count).bytes(needed).bytes(withBases);
      break;
    }
    case 'CHUNK': {
      checkBytes(m.handle, HANDLE_BYTES, 'CHUNK handle');
      checkChunk(m.kind, m.codec, m.rawLength, m.payload.length, invalid);
      const head = new Writer().bytes(m.handle).u8(m.kind).u8(m.codec).u32(m.rawLength).done();
      return { type: MESSAGE_CODES.CHUNK, body: [...head, m.payload] };
    }
    case 'CHUNK_DELTA': {
      checkBytes(m.handle, HANDLE_BYTES, 'CHUNK_DELTA handle');
      checkDelta(m.kind, m.rawLength, m.bases.length, m.payload.length, invalid);
      const head = new Writer().bytes(m.handle).u8(m.kind).u32(m.rawLength).u8(m.bases.length);
      for (const b of m.bases) {
        checkBytes(b, HANDLE_BYTES, 'CHUNK_DELTA base');
        head.bytes(b);
      }
      return { type: MESSAGE_CODES.CHUNK_DELTA, body: [...head.done(), m.payload] };
    }
    case 'COMMIT': {
      const record = Buffer.from(m.record, 'utf8');
      checkCount(record.length, 1, MAX_RECORD_BYTES, 'COMMIT record bytes');
      checkRecord(m.record, invalid);
      if (!Buffer.isBuffer(m.fingerprint) || m.fingerprint.length > MAX_FINGERPRINT_BYTES) {
        throw invalid(`COMMIT fingerprint must be at most ${MAX_FINGERPRINT_BYTES} bytes`);
      }
      w.u32(record.length).bytes(record).u16(m.fingerprint.length).bytes(m.fingerprint);
      break;
    }
    case 'COMMITTED':
      w.id(m.snapshotId, 'COMMITTED snapshotId');
      break;
    default: {
      const never: never = m;
      throw invalid(`unknown message type ${JSON.stringify((never as { type: unknown }).type)}`);
    }
  }
  return { type: MESSAGE_CODES[m.type], body: w.done() };
}

/** The bitmap of strictly ascending indexes below `count` (bit i & 7 of byte i >> 3). */
function indexBitmap(indexes: number[], count: number, what: string): Buffer {
  const bitmap = Buffer.alloc(Math.ceil(count / 8));
  let prev = -1;
  for (const i of indexes) {
    if (!Number.isInteger(i) || i <= prev || i >= count) {
      throw invalid(`${what} must be strictly ascending integers below ${count}, got ${i} after ${prev}`);
    }
    bitmap[i >> 3] |= 1 << (i & 7);
    prev = i;
  }
  return bitmap;
}

/** Cuts a string to at most `max` UTF-8 bytes without splitting a character. */
function truncateUtf8(s: string, max: number): string {
  if (Buffer.byteLength(s) <= max) return s;
  let out = '';
  let n = 0;
  for (const ch of s) {
    const len = Buffer.byteLength(ch);
    if (n + len > max - 3) break;
    out += ch;
    n += len;
  }
  return out + '...';
}

function checkChunk(kind: number, codec: number, rawLength: number, payloadLength: number, fail: (m: string) => Error): void {
  if (!CHUNK_KINDS.includes(kind)) throw fail(`CHUNK kind ${kind} is not one that replicates (0 data, 1 node, 2 tree root)`);
  if (codec !== Codec.Raw && codec !== Codec.Zstd) throw fail(`CHUNK codec ${codec} is unknown (0 raw, 1 zstd)`);
  if (!Number.isInteger(rawLength) || rawLength < 0 || rawLength > MAX_CHUNK_RAW_BYTES) {
    throw fail(`CHUNK rawLength ${rawLength} is over the ${MAX_CHUNK_RAW_BYTES}-byte limit`);
  }
  if (codec === Codec.Raw && payloadLength !== rawLength) {
    throw fail(`CHUNK is raw but its payload is ${payloadLength} bytes and its rawLength ${rawLength}`);
  }
  if (codec === Codec.Zstd && (payloadLength === 0 || rawLength === 0)) {
    throw fail('CHUNK is zstd-compressed but empty (an empty chunk is stored raw)');
  }
}

function checkDelta(kind: number, rawLength: number, bases: number, payloadLength: number, fail: (m: string) => Error): void {
  if (!CHUNK_KINDS.includes(kind)) throw fail(`CHUNK_DELTA kind ${kind} is not one that replicates (0 data, 1 node, 2 tree root)`);
  if (!Number.isInteger(rawLength) || rawLength < 1 || rawLength > MAX_CHUNK_RAW_BYTES) {
    throw fail(`CHUNK_DELTA rawLength ${rawLength} is outside 1..${MAX_CHUNK_RAW_BYTES}`);
  }
  if (bases < 1 || bases > MAX_BASES) throw fail(`CHUNK_DELTA names ${bases} bases, must be 1..${MAX_BASES}`);
  if (payloadLength < 1) throw fail('CHUNK_DELTA has an empty payload');
}

function checkRecord(text: string, fail: (m: string) => Error): void {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw fail('COMMIT record is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw fail('COMMIT record must be a JSON object');
}

// ---------------------------------------------------------------------------------------------
// Decoding

class Cursor {
  private pos = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}
  private need(n: number, field: string): void {
    const left = this.buf.length - this.pos;
    if (left < n) throw protocolError(`${this.what}: body truncated at ${field} (needs ${n} bytes, ${left} left)`);
  }
  u8(field: string): number {
    this.need(1, field);
    return this.buf[this.pos++];
  }
  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  rest(): Buffer {
    return this.bytes(this.buf.length - this.pos, 'rest');
  }
  utf8(n: number, field: string): string {
    const b = this.bytes(n, field);
    try {
      return utf8.decode(b);
    } catch {
      throw this.bad(`${field} is not valid UTF-8`);
    }
  }
  id(field: string): string {
    const n = this.u8(`${field} length`);
    const b = this.bytes(n, field);
    const s = b.toString('latin1');
    if (!ID_RE.test(s)) throw this.bad(`${field} ${JSON.stringify(s)} is not 1..${MAX_ID_CHARS} characters of [A-Za-z0-9._:-]`);
    return s;
  }
  /** Checks that a count of items of at least `minBytes` each can fit in what is left, before allocating for them. */
  count(field: string, min: number, max: number, minBytes: number): number {
    const n = this.u32(field);
    if (n < min || n > max) throw this.bad(`${field} ${n} is outside ${min}..${max}`);
    const left = this.buf.length - this.pos;
    if (n * minBytes > left) throw this.bad(`body truncated: ${n} items need at least ${n * minBytes} bytes, ${left} left`);
    return n;
  }
  end(): void {
    const left = this.buf.length - this.pos;
    if (left !== 0) throw this.bad(`${left} trailing bytes after the body`);
  }
  bad(msg: string): Error {
    return protocolError(`${this.what}: ${msg}`);
  }
}

const bad = (m: string) => protocolError(m);

/** Ids in `ids` are distinct, or a ProtocolError. */
function requireDistinct(c: Cursor, ids: string[]): void {
  if (new Set(ids).size !== ids.length) throw c.bad('snapshot ids are not distinct');
}

/** The indexes set in a bitmap of `count` bits; a set pad bit is refused. */
function readBitmap(c: Cursor, count: number, field: string): number[] {
  const bitmap = c.bytes(Math.ceil(count / 8), field);
  const out: number[] = [];
  for (let byte = 0; byte < bitmap.length; byte++) {
    const bits = bitmap[byte];
    if (bits === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(bits & (1 << bit))) continue;
      const i = byte * 8 + bit;
      if (i >= count) throw c.bad(`${field} has bit ${i} set, beyond the ${count} offered handles`);
      out.push(i);
    }
  }
  return out;
}

const DECODERS: { [T in MessageType]: (c: Cursor) => MessageOf<T> } = {
  CHALLENGE(c) {
    const r = c.u8('role');
    const role = r === 1 ? 'sender' : r === 2 ? 'receiver' : null;
    if (!role) throw c.bad(`unknown role ${r}`);
    return { type: 'CHALLENGE', role, nonce: c.bytes(NONCE_BYTES, 'nonce') };
  },
  PROOF: (c) => ({ type: 'PROOF', hmac: c.bytes(PROOF_BYTES, 'hmac') }),
  AUTH_OK: () => ({ type: 'AUTH_OK' }),
  HELLO: (c) => ({ type: 'HELLO', storeId: c.id('storeId') }),
  ERROR(c) {
    const n = c.u8('code length');
    const code = c.bytes(n, 'code').toString('latin1');
    if (!ERROR_CODE_RE.test(code)) throw c.bad(`code ${JSON.stringify(code)} is not 1..${MAX_ERROR_CODE_CHARS} characters of [A-Z0-9_]`);
    const len = c.u16('message length');
    if (len > MAX_ERROR_MESSAGE_BYTES) throw c.bad(`message of ${len} bytes is over the ${MAX_ERROR_MESSAGE_BYTES}-byte limit`);
    return { type: 'ERROR', code, message: c.utf8(len, 'message') };
  },
  HOLDINGS_QUERY(c) {
    const n = c.count('count', 0, MAX_HOLDINGS, 2);
    const snapshotIds: string[] = [];
    for (let i = 0; i < n; i++) snapshotIds.push(c.id(`snapshot id ${i}`));
    requireDistinct(c, snapshotIds);
    return { type: 'HOLDINGS_QUERY', snapshotIds };
  },
  HOLDINGS(c) {
    const list = (what: string) => {
      const n = c.count(`${what}count`, 0, MAX_HOLDINGS, 2 + HANDLE_BYTES);
      const out: Array<{ id: string; root: Handle }> = [];
      for (let i = 0; i < n; i++) out.push({ id: c.id(`${what}snapshot id ${i}`), root: c.bytes(HANDLE_BYTES, `${what}root ${i}`) });
      return out;
    };
    const snapshots = list('');
    const retired = list('retired ');
    requireDistinct(c, [...snapshots, ...retired].map((s) => s.id));
    return { type: 'HOLDINGS', snapshots, retired };
  },
  OFFER(c) {
    const batchId = c.u32('batchId');
    const n = c.count('count', 1, MAX_OFFER_HANDLES, HANDLE_BYTES + 1);
    const handles: Handle[] = [];
    const bases: Handle[][] = [];
    for (let i = 0; i < n; i++) {
      handles.push(c.bytes(HANDLE_BYTES, `handle ${i}`));
      const k = c.u8(`base count ${i}`);
      if (k > MAX_BASES) throw c.bad(`item ${i} names ${k} bases, over the limit of ${MAX_BASES}`);
      const list: Handle[] = [];
      for (let j = 0; j < k; j++) list.push(c.bytes(HANDLE_BYTES, `base ${j} of item ${i}`));
      bases.push(list);
    }
    return { type: 'OFFER', batchId, handles, bases };
  },
  NEED(c) {
    const batchId = c.u32('batchId');
    const count = c.u32('count');
    if (count < 1 || count > MAX_OFFER_HANDLES) throw c.bad(`count ${count} is outside 1..${MAX_OFFER_HANDLES}`);
    const needed = readBitmap(c, count, 'bitmap');
    const withBases = readBitmap(c, count, 'bases bitmap');
    const neededSet = new Set(needed);
    for (const i of withBases) if (!neededSet.has(i)) throw c.bad(`bases bitmap has bit ${i} set for an item that is not needed`);
    return { type: 'NEED', batchId, count, needed, withBases };
  },
  CHUNK(c) {
    const handle = c.bytes(HANDLE_BYTES, 'handle');
    const kind = c.u8('kind');
    const codec = c.u8('codec');
    const rawLength = c.u32('rawLength');
    const payload = c.rest();
    checkChunk(kind, codec, rawLength, payload.length, bad);
    return { type: 'CHUNK', handle, kind: kind as ChunkKind, codec: codec as Codec, rawLength, payload };
  },
  CHUNK_DELTA(c) {
    const handle = c.bytes(HANDLE_BYTES, 'handle');
    const kind = c.u8('kind');
    const rawLength = c.u32('rawLength');
    const k = c.u8('base count');
    if (k < 1 || k > MAX_BASES) throw c.bad(`names ${k} bases, must be 1..${MAX_BASES}`);
    const bases: Handle[] = [];
    for (let j = 0; j < k; j++) bases.push(c.bytes(HANDLE_BYTES, `base ${j}`));
    const payload = c.rest();
    checkDelta(kind, rawLength, k, payload.length, bad);
    return { type: 'CHUNK_DELTA', handle, kind: kind as ChunkKind, rawLength, bases, payload };
  },
  COMMIT(c) {
    const n = c.u32('record length');
    if (n < 1 || n > MAX_RECORD_BYTES) throw c.bad(`record length ${n} is outside 1..${MAX_RECORD_BYTES}`);
    const record = c.utf8(n, 'record');
    checkRecord(record, bad);
    const fl = c.u16('fingerprint length');
    if (fl > MAX_FINGERPRINT_BYTES) throw c.bad(`fingerprint of ${fl} bytes is over the ${MAX_FINGERPRINT_BYTES}-byte limit`);
    return { type: 'COMMIT', record, fingerprint: c.bytes(fl, 'fingerprint') };
  },
  COMMITTED: (c) => ({ type: 'COMMITTED', snapshotId: c.id('snapshotId') }),
  DONE: () => ({ type: 'DONE' }),
};

/**
 * The message in a frame. Throws a ProtocolError (EPROTO) for an unknown type, a field out of
 * range, a truncated body or trailing bytes. Buffers in the result are views of the frame body.
 */
export function decodeMessage(frame: Frame): Message {
  const type = TYPE_OF_CODE.get(frame.type);
  if (!type) throw protocolError(`unknown message type ${messageName(frame.type)} (${frame.body.length}-byte body)`);
  const c = new Cursor(frame.body, type);
  const m = (DECODERS[type] as (c: Cursor) => Message)(c);
  c.end();
  return m;
}

/** A message as one buffer holding its whole frame (header and body); convenient for tests and small messages. */
export function messageFrame(m: Message): Buffer {
  const { type, body } = encodeMessage(m);
  return encodeFrame(type, body);
}
