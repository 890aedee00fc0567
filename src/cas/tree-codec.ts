// Binary encoding of a directory listing (a tree). The encoding is canonical: one listing has exactly
// one encoding (entries sorted by name bytes, minimal varints, xattrs sorted), so identical
// directories hash to the same handle and deduplicate.
//
// Layout (version 1):
//   u8      version (= 1)
//   varint  entry count
//   per entry:
//     varint  name length (1..255), name bytes (no '/' or NUL, not '.' or '..')
//     u8      type code (0 file, 1 dir, 2 symlink, 3 fifo, 4 chardev, 5 blockdev, 6 socket)
//     varint  mode (0..0o7777)
//     varint  uid, varint gid (0..2^32-1)
//     i64 BE  mtimeNs, i64 BE atimeNs (signed, nanoseconds since the epoch)
//     varint  size
//     u8      content present (0 or 1), then 32 handle bytes when present
//     varint  symlink target: 0 = absent, else length + 1, then the bytes
//     varint  rdev: 0 = absent, else rdev + 1
//     varint  xattrs: 0 = absent, else count + 1, then per xattr:
//               varint name length (1..255), UTF-8 name bytes, varint value length, value bytes
//     varint  linkGroup: 0 = absent, else linkGroup + 1
// varint = unsigned LEB128, minimal, at most 2^53-1 (a JS safe integer).

import { corrupt, invalid } from '../errors.js';
import { HANDLE_BYTES, type EntryType, type TreeEntry } from '../types.js';

export const TREE_FORMAT_VERSION = 1;

const TYPE_CODES: readonly EntryType[] = ['file', 'dir', 'symlink', 'fifo', 'chardev', 'blockdev', 'socket'];
const TYPE_TO_CODE = new Map<EntryType, number>(TYPE_CODES.map((t, i) => [t, i]));

const MAX_NAME_BYTES = 255;
const MAX_XATTR_NAME_BYTES = 255;
const MAX_ID = 0xffff_ffff;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
// The smallest possible encoded entry: 1-byte name plus every fixed field at its minimum.
const MIN_ENTRY_BYTES = 1 + 1 + 1 + 1 + 1 + 1 + 8 + 8 + 1 + 1 + 1 + 1 + 1 + 1;

/** Printable, unambiguous form of raw name/path bytes for messages: UTF-8 when valid, else \xNN escapes. */
export function displayName(bytes: Buffer): string {
  const s = bytes.toString('utf8');
  if (Buffer.from(s, 'utf8').equals(bytes)) return JSON.stringify(s);
  let out = '';
  for (const b of bytes) {
    if (b === 0x5c) out += '\\\\';
    else if (b === 0x22) out += '\\"';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += '\\x' + b.toString(16).padStart(2, '0');
  }
  return `"${out}"`;
}

/** Throws invalid(...) unless `name` is a legal directory entry name. */
export function checkEntryName(name: Buffer): void {
  const problem = nameProblem(name);
  if (problem) throw invalid(`bad entry name ${displayName(name)}: ${problem}`);
}

function nameProblem(name: Buffer): string | null {
  if (name.length === 0) return 'empty';
  if (name.length > MAX_NAME_BYTES) return `longer than ${MAX_NAME_BYTES} bytes`;
  if (name.length === 1 && name[0] === 0x2e) return "'.' is reserved";
  if (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e) return "'..' is reserved";
  if (name.includes(0x2f)) return "contains '/'";
  if (name.includes(0)) return 'contains NUL';
  return null;
}

/** Encodes a listing canonically (sorted by name bytes); throws invalid(...) on bad names, duplicates or out-of-range fields. */
export function encodeTree(entries: TreeEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(a.name, b.name));
  const w = new ByteWriter();
  w.u8(TREE_FORMAT_VERSION);
  w.varint(sorted.length);
  for (let i = 0; i < sorted.length; i++) {
    const e = sorted[i]!;
    checkEntryName(e.name);
    if (i > 0 && sorted[i - 1]!.name.equals(e.name)) throw invalid(`duplicate entry name ${displayName(e.name)}`);
    encodeEntry(w, e);
  }
  return w.finish();
}

function encodeEntry(w: ByteWriter, e: TreeEntry): void {
  const where = displayName(e.name);
  const code = TYPE_TO_CODE.get(e.type);
  if (code === undefined) throw invalid(`entry ${where}: unknown type ${String(e.type)}`);
  checkInt(e.mode, 0o7777, `entry ${where}: mode`);
  checkInt(e.uid, MAX_ID, `entry ${where}: uid`);
  checkInt(e.gid, MAX_ID, `entry ${where}: gid`);
  checkTime(e.mtimeNs, `entry ${where}: mtimeNs`);
  checkTime(e.atimeNs, `entry ${where}: atimeNs`);
  checkInt(e.size, Number.MAX_SAFE_INTEGER, `entry ${where}: size`);
  w.varint(e.name.length);
  w.bytes(e.name);
  w.u8(code);
  w.varint(e.mode);
  w.varint(e.uid);
  w.varint(e.gid);
  w.i64(e.mtimeNs);
  w.i64(e.atimeNs);
  w.varint(e.size);
  if (e.content === null || e.content === undefined) {
    w.u8(0);
  } else {
    if (!Buffer.isBuffer(e.content) || e.content.length !== HANDLE_BYTES) {
      throw invalid(`entry ${where}: content handle must be ${HANDLE_BYTES} bytes`);
    }
    w.u8(1);
    w.bytes(e.content);
  }
  if (e.target === undefined) {
    w.varint(0);
  } else {
    checkInt(e.target.length, Number.MAX_SAFE_INTEGER - 1, `entry ${where}: target length`);
    w.varint(e.target.length + 1);
    w.bytes(e.target);
  }
  if (e.rdev === undefined) {
    w.varint(0);
  } else {
    checkInt(e.rdev, Number.MAX_SAFE_INTEGER - 1, `entry ${where}: rdev`);
    w.varint(e.rdev + 1);
  }
  if (e.xattrs === undefined) {
    w.varint(0);
  } else {
    // The original string rides along so names that do not survive UTF-8 (lone surrogates) are refused.
    const xattrs = e.xattrs.map(([k, v]) => [Buffer.from(k, 'utf8'), v, k] as const);
    xattrs.sort((a, b) => Buffer.compare(a[0], b[0]));
    w.varint(xattrs.length + 1);
    for (let i = 0; i < xattrs.length; i++) {
      const [k, v, original] = xattrs[i]!;
      if (k.length === 0 || k.length > MAX_XATTR_NAME_BYTES || k.includes(0) || k.toString('utf8') !== original) {
        throw invalid(`entry ${where}: bad xattr name ${displayName(k)}`);
      }
      if (i > 0 && xattrs[i - 1]![0].equals(k)) throw invalid(`entry ${where}: duplicate xattr ${displayName(k)}`);
      if (!Buffer.isBuffer(v)) throw invalid(`entry ${where}: xattr ${displayName(k)} value must be a Buffer`);
      w.varint(k.length);
      w.bytes(k);
      w.varint(v.length);
      w.bytes(v);
    }
  }
  if (e.linkGroup === undefined) {
    w.varint(0);
  } else {
    checkInt(e.linkGroup, Number.MAX_SAFE_INTEGER - 1, `entry ${where}: linkGroup`);
    w.varint(e.linkGroup + 1);
  }
}

function checkInt(v: number, max: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0 || v > max) throw invalid(`${what} out of range: ${v}`);
}

function checkTime(v: bigint, what: string): void {
  if (typeof v !== 'bigint' || v < INT64_MIN || v > INT64_MAX) throw invalid(`${what} must be a signed 64-bit bigint`);
}

/** Decodes an encoded listing; throws corrupt(...) on any malformed, non-canonical or trailing input. */
export function decodeTree(buf: Buffer): TreeEntry[] {
  const r = new ByteReader(buf);
  const version = r.u8('version');
  if (version !== TREE_FORMAT_VERSION) throw corrupt(`tree: unsupported format version ${version}`);
  const count = r.varint('entry count');
  // Bounds the allocation below by the input size, whatever the count field claims.
  if (count > r.remaining() / MIN_ENTRY_BYTES) throw corrupt(`tree: entry count ${count} exceeds the data`);
  const entries: TreeEntry[] = [];
  let prev: Buffer | null = null;
  for (let i = 0; i < count; i++) {
    const e = decodeEntry(r, i);
    if (prev !== null && Buffer.compare(prev, e.name) >= 0) {
      throw corrupt(`tree: entry ${i} ${displayName(e.name)} is out of order or duplicated`);
    }
    prev = e.name;
    entries.push(e);
  }
  if (r.remaining() !== 0) throw corrupt(`tree: ${r.remaining()} trailing bytes`);
  return entries;
}

function decodeEntry(r: ByteReader, i: number): TreeEntry {
  // Field labels are plain strings; the reader adds the entry (index and name) to a message only
  // when one is thrown: formatting them per field of every entry cost more than decoding it.
  r.entry = i;
  r.entryName = null;
  const nameLen = r.varint('name length');
  if (nameLen === 0 || nameLen > MAX_NAME_BYTES) throw corrupt(`tree: entry ${i} name length ${nameLen}`);
  const name = r.bytes(nameLen, 'name');
  const problem = nameProblem(name);
  if (problem) throw corrupt(`tree: entry ${i} name ${displayName(name)}: ${problem}`);
  r.entryName = name;
  const code = r.u8('type');
  const type = TYPE_CODES[code];
  if (type === undefined) throw r.corrupt(`has unknown type code ${code}`);
  const mode = r.varint('mode');
  if (mode > 0o7777) throw r.corrupt(`mode ${mode.toString(8)} out of range`);
  const uid = r.varint('uid');
  const gid = r.varint('gid');
  if (uid > MAX_ID || gid > MAX_ID) throw r.corrupt(`uid/gid out of range`);
  const mtimeNs = r.i64('mtime');
  const atimeNs = r.i64('atime');
  const size = r.varint('size');
  const hasContent = r.u8('content flag');
  if (hasContent > 1) throw r.corrupt(`bad content flag ${hasContent}`);
  const content = hasContent === 1 ? r.bytes(HANDLE_BYTES, 'content') : null;
  const entry: TreeEntry = { name, type, mode, uid, gid, mtimeNs, atimeNs, size, content };
  const target = r.varint('target length');
  if (target > 0) entry.target = r.bytes(target - 1, 'target');
  const rdev = r.varint('rdev');
  if (rdev > 0) entry.rdev = rdev - 1;
  const xattrCount = r.varint('xattr count');
  if (xattrCount > 0) {
    const n = xattrCount - 1;
    // Each xattr needs at least 3 bytes; bounds the loop by the input size.
    if (n > r.remaining() / 3) throw r.corrupt(`xattr count ${n} exceeds the data`);
    const xattrs: Array<[string, Buffer]> = [];
    let prevKey: Buffer | null = null;
    for (let j = 0; j < n; j++) {
      const kLen = r.varint('xattr name length');
      if (kLen === 0 || kLen > MAX_XATTR_NAME_BYTES) throw r.corrupt(`xattr name length ${kLen}`);
      const k = r.bytes(kLen, 'xattr name');
      if (k.includes(0)) throw r.corrupt(`xattr name contains NUL`);
      if (prevKey !== null && Buffer.compare(prevKey, k) >= 0) throw r.corrupt(`xattrs out of order`);
      const kStr = k.toString('utf8');
      // A name that does not survive UTF-8 decoding could not have come from encodeTree.
      if (!Buffer.from(kStr, 'utf8').equals(k)) throw r.corrupt(`xattr name is not UTF-8`);
      prevKey = k;
      const vLen = r.varint('xattr value length');
      xattrs.push([kStr, r.bytes(vLen, 'xattr value')]);
    }
    entry.xattrs = xattrs;
  }
  const linkGroup = r.varint('link group');
  if (linkGroup > 0) entry.linkGroup = linkGroup - 1;
  r.entry = -1;
  return entry;
}

class ByteWriter {
  private buf = Buffer.allocUnsafe(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf[this.len++] = v;
  }

  varint(v: number): void {
    this.reserve(8);
    // Division instead of bit shifts: values go up to 2^53, beyond 32-bit operators.
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }

  i64(v: bigint): void {
    this.reserve(8);
    this.buf.writeBigInt64BE(v, this.len);
    this.len += 8;
  }

  bytes(b: Buffer): void {
    this.reserve(b.length);
    b.copy(this.buf, this.len);
    this.len += b.length;
  }

  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}

class ByteReader {
  private pos = 0;
  /** The entry being decoded (-1: none) and, once read, its name: added to error messages by label(). */
  entry = -1;
  entryName: Buffer | null = null;
  constructor(private readonly buf: Buffer) {}

  /** ECORRUPT about the entry being decoded. */
  corrupt(what: string): Error {
    return corrupt(`tree: ${this.label(what)}`);
  }

  /** `what`, prefixed with the entry being decoded. */
  private label(what: string): string {
    if (this.entry < 0) return what;
    return `entry ${this.entry}${this.entryName ? ` ${displayName(this.entryName)}` : ''} ${what}`;
  }

  remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (n > this.buf.length - this.pos) throw corrupt(`tree: truncated at ${this.label(what)} (offset ${this.pos})`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  varint(what: string): number {
    let v = 0;
    let scale = 1;
    for (let i = 0; ; i++) {
      if (i === 8) throw corrupt(`tree: varint too long at ${this.label(what)}`);
      const b = this.u8(what);
      v += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) {
        if (b === 0 && i > 0) throw corrupt(`tree: non-minimal varint at ${this.label(what)}`);
        break;
      }
      scale *= 0x80;
    }
    if (v > Number.MAX_SAFE_INTEGER) throw corrupt(`tree: varint out of range at ${this.label(what)}`);
    return v;
  }

  i64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A copy, so decoded entries do not pin (or alias) the whole input buffer. */
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const out = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return out;
  }
}
