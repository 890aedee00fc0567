import { handleKey } from '../cas/hash.js';
import { childAt, isHole, nodeSize } from '../cas/merkle-node.js';
import type { Leaf, ObjectStore } from '../cas/object-store.js';
import { Chunking, type Handle } from '../types.js';

// Bases for delta replication: for a chunk new in object B, the chunks of the old version A (which
// the peer holds) that most likely share its bytes. Every lookup descends A's Merkle tree along a
// byte range (O(depth) nodes, all cached), so finding bases for a changed chunk of a multi-GB image
// never lists the image's leaves.

/** At most this many bases per chunk (the wire allows MAX_BASES). */
export const BASES_PER_CHUNK = 3;
/** Bytes of bases per chunk the sender reads and the dictionary holds, beyond the first base. */
export const BASE_BYTES_BUDGET = 256 * 1024;

/** Data leaves (holes left out) of object `root` overlapping [from, to), clamped to the object. */
export function leavesInRange(objects: ObjectStore, root: Handle, from: number, to: number): Leaf[] {
  const start = Math.max(0, from);
  const end = Math.min(objects.objectSize(root), to);
  if (end <= start) return [];
  return objects.leaves(root, start, end).filter((l) => !isHole(l.handle));
}

/** How far from the range to look for a neighbouring data leaf (past holes, or small chunks). */
const NEIGHBOUR_WINDOW = 64 * 1024;

/**
 * Base chunks in old object `a` for a leaf [offset, offset+length) of the new version: the old
 * leaves over the same bytes, and for content-defined chunking (where an edit shifts what follows)
 * the nearest data leaf on each side, keeping the BASES_PER_CHUNK leaves nearest the range within
 * BASE_BYTES_BUDGET. In offset order, so content running across two old chunks stays contiguous in
 * the dictionary. Past the end of `a` (the file grew), its last leaf is the best guess.
 */
export function leafBases(objects: ObjectStore, a: Handle, offset: number, length: number, chunking: Chunking): Handle[] {
  const size = objects.objectSize(a);
  if (size === 0) return [];
  const from = Math.min(offset, size - 1);
  let leaves = leavesInRange(objects, a, from, Math.max(from + 1, Math.min(size, offset + length)));
  if (chunking === Chunking.Cdc || leaves.length === 0) {
    const first = leaves[0];
    const last = leaves[leaves.length - 1];
    const lo = first ? first.offset : from;
    const hi = last ? last.offset + last.length : Math.max(from + 1, offset + length);
    const before = leavesInRange(objects, a, lo - NEIGHBOUR_WINDOW, lo).at(-1);
    const after = leavesInRange(objects, a, hi, hi + NEIGHBOUR_WINDOW)[0];
    leaves = [...(before ? [before] : []), ...leaves, ...(after ? [after] : [])];
  }
  // Nearest to the new chunk's middle first, within the count and byte budgets; then offset order.
  const mid = offset + length / 2;
  const dist = (l: Leaf) => Math.abs(l.offset + l.length / 2 - mid);
  const chosen: Leaf[] = [];
  const seen = new Set<string>();
  let bytes = 0;
  for (const l of [...leaves].sort((x, y) => dist(x) - dist(y))) {
    if (chosen.length >= BASES_PER_CHUNK) break;
    const k = handleKey(l.handle);
    if (seen.has(k)) continue;
    if (chosen.length > 0 && bytes + l.length > BASE_BYTES_BUDGET) continue;
    seen.add(k);
    chosen.push(l);
    bytes += l.length;
  }
  return chosen.sort((x, y) => x.offset - y.offset).map((l) => l.handle);
}

/** Where a node sits in its object: its level and the offset of its first byte. */
export interface NodePosition {
  level: number;
  offset: number;
}

/**
 * Positions of the nodes of `root` named in `wanted` (handle keys), found top-down through the
 * wanted nodes only: a node not wanted (shared with the old version) is not opened. The nodes a
 * diff reports as new form such a connected top part of the tree.
 */
export function nodePositions(objects: ObjectStore, root: Handle, wanted: Set<string>): Map<string, NodePosition> {
  const out = new Map<string, NodePosition>();
  const visit = (handle: Handle, offset: number) => {
    const k = handleKey(handle);
    if (!wanted.has(k) || out.has(k)) return;
    const n = objects.node(handle);
    out.set(k, { level: n.level, offset });
    if (n.level === 0) return;
    for (let i = 0; i < n.handles.length; i++) if (!isHole(n.handles[i])) visit(n.handles[i], offset + n.starts[i]);
  };
  visit(root, 0);
  return out;
}

/**
 * The node of old object `a` at the same position (same level, the one containing `offset`, or
 * the last one at that level when `a` is shorter); null when `a` has no node at that level.
 */
export function nodeBase(objects: ObjectStore, a: Handle, pos: NodePosition): Handle | null {
  let handle = a;
  let base = 0;
  for (;;) {
    const n = objects.node(handle);
    if (n.level < pos.level) return null;
    if (n.level === pos.level) return handle;
    const size = nodeSize(n);
    if (size === 0 || n.handles.length === 0) return null;
    const i = childAt(n, Math.min(Math.max(0, pos.offset - base), size - 1));
    if (isHole(n.handles[i])) return null;
    base += n.starts[i];
    handle = n.handles[i];
  }
}
