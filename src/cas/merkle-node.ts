import { corrupt } from '../errors.js';
import { Chunking, HANDLE_BYTES, type Handle } from '../types.js';

// A Merkle node lists children in byte order: (handle, length). At level 0 the children are data
// chunks; above, they are nodes. An all-zero handle marks a hole (zeros that cost no storage).
//
// Layout (little-endian): u8 version=1 | u8 level | u8 flags | u8 chunking | u32 count |
// count x (32-byte handle | u32 length-low | u32 length-high)
// Flags keep roots apart from interior nodes and file objects apart from trees, so a node's role
// (and thus which references it holds) follows from its handle alone.

export const NODE_VERSION = 1;
export const FLAG_ROOT = 1;
export const FLAG_TREE = 2;
const HEADER = 8;
const ENTRY = HANDLE_BYTES + 8;
export const ZERO_HANDLE: Handle = Buffer.alloc(HANDLE_BYTES);

export interface MerkleNode {
  level: number;
  flags: number;
  chunking: Chunking;
  handles: Handle[];
  lengths: number[];
  /** starts[i] = byte offset of child i within this node; starts[count] = node size. */
  starts: number[];
}

/** A hole's handle is all zeros; a hash's first byte rules almost every other handle out without a native call. */
export const isHole = (h: Handle) => h[0] === 0 && h.equals(ZERO_HANDLE);
export const nodeSize = (n: MerkleNode) => n.starts[n.starts.length - 1];

export function encodeNode(level: number, flags: number, chunking: Chunking, handles: Handle[], lengths: number[]): Buffer {
  const buf = Buffer.allocUnsafe(HEADER + ENTRY * handles.length);
  buf[0] = NODE_VERSION;
  buf[1] = level;
  buf[2] = flags;
  buf[3] = chunking;
  buf.writeUInt32LE(handles.length, 4);
  let o = HEADER;
  for (let i = 0; i < handles.length; i++) {
    handles[i].copy(buf, o);
    const len = lengths[i];
    buf.writeUInt32LE(len % 0x100000000, o + 32);
    buf.writeUInt32LE(Math.floor(len / 0x100000000), o + 36);
    o += ENTRY;
  }
  return buf;
}

export function decodeNode(buf: Buffer): MerkleNode {
  if (buf.length < HEADER || buf[0] !== NODE_VERSION) throw corrupt('bad Merkle node header');
  const count = buf.readUInt32LE(4);
  if (buf.length !== HEADER + count * ENTRY) throw corrupt('bad Merkle node length');
  const handles: Handle[] = new Array(count);
  const lengths: number[] = new Array(count);
  const starts: number[] = new Array(count + 1);
  let pos = 0;
  for (let i = 0, o = HEADER; i < count; i++, o += ENTRY) {
    handles[i] = Buffer.from(buf.subarray(o, o + 32));
    const len = buf.readUInt32LE(o + 32) + buf.readUInt32LE(o + 36) * 0x100000000;
    lengths[i] = len;
    starts[i] = pos;
    pos += len;
  }
  starts[count] = pos;
  return { level: buf[1], flags: buf[2], chunking: buf[3] as Chunking, handles, lengths, starts };
}

/** Index of the child containing byte `offset` (0 <= offset < size). */
export function childAt(n: MerkleNode, offset: number): number {
  let lo = 0;
  let hi = n.handles.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (n.starts[mid] <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
