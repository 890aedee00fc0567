import type { Handle, TreeEntry } from '../types.js';
import { handleKey } from './hash.js';
import { isHole } from './merkle-node.js';
import type { ObjectStore } from './object-store.js';

// The difference engine. Two Merkle objects are compared top-down: subtrees whose handle appears on
// both sides are dropped unread, only the rest is expanded one level at a time. Node boundaries are
// content-defined, so after an edit (even an insertion) everything but the edit's path matches
// early and the work follows the size of the change, not of the data.

export interface ByteRange {
  offset: number;
  length: number;
}

export interface ObjectDiff {
  /** Ranges of B whose content does not occur in A at that level of the trees (merged, sorted). */
  changed: ByteRange[];
  /** Handles stored for B and not shared with A: nodes read on the way, then leaves (what a peer holding A lacks). */
  newHandles: Handle[];
  /** Nodes of B not shared with A, in the order they were expanded (top-down). */
  newNodes: Handle[];
  /** Data leaves of B not shared with A, with their offsets in B (for reading them from a native copy). */
  newLeaves: { offset: number; length: number; handle: Handle }[];
  /** Nodes read to compute the diff (cost measure). */
  nodesRead: number;
}

interface Frontier {
  handle: Handle;
  /** Node level, or -1 for a data chunk or hole. */
  level: number;
  offset: number;
  length: number;
}

const keyOf = (f: Frontier) => (isHole(f.handle) ? `hole:${f.length}` : handleKey(f.handle));

function rootFrontier(objects: ObjectStore, root: Handle | null): Frontier[] {
  if (!root) return [];
  const n = objects.node(root);
  return [{ handle: root, level: n.level, offset: 0, length: n.starts[n.starts.length - 1] }];
}

/** Compares object B against object A (either may be null for empty content). */
export function diffObjects(objects: ObjectStore, a: Handle | null, b: Handle | null): ObjectDiff {
  let fa = rootFrontier(objects, a);
  let fb = rootFrontier(objects, b);
  const newNodes: Handle[] = [];
  let nodesRead = 0;
  for (;;) {
    const ka = new Set(fa.map(keyOf));
    const kb = new Set(fb.map(keyOf));
    fa = fa.filter((f) => !kb.has(keyOf(f)));
    fb = fb.filter((f) => !ka.has(keyOf(f)));
    let top = -1;
    for (const f of fa) top = Math.max(top, f.level);
    for (const f of fb) top = Math.max(top, f.level);
    if (top < 0) break;
    const expand = (list: Frontier[], side: 'a' | 'b'): Frontier[] => {
      const out: Frontier[] = [];
      for (const f of list) {
        if (f.level !== top) { out.push(f); continue; }
        const n = objects.node(f.handle);
        nodesRead++;
        if (side === 'b') newNodes.push(f.handle);
        for (let i = 0; i < n.handles.length; i++) {
          out.push({ handle: n.handles[i], level: n.level === 0 || isHole(n.handles[i]) ? -1 : n.level - 1, offset: f.offset + n.starts[i], length: n.lengths[i] });
        }
      }
      return out;
    };
    fa = expand(fa, 'a');
    fb = expand(fb, 'b');
  }
  fb.sort((x, y) => x.offset - y.offset);
  const changed: ByteRange[] = [];
  const newLeaves: ObjectDiff['newLeaves'] = [];
  for (const f of fb) {
    if (!isHole(f.handle)) newLeaves.push({ offset: f.offset, length: f.length, handle: f.handle });
    const last = changed[changed.length - 1];
    if (last && last.offset + last.length === f.offset) last.length += f.length;
    else changed.push({ offset: f.offset, length: f.length });
  }
  return { changed, newHandles: [...newNodes, ...newLeaves.map((l) => l.handle)], newNodes, newLeaves, nodesRead };
}

export type ChangeKind = 'added' | 'removed' | 'modified' | 'type' | 'meta';

export interface PathChange {
  /** Path relative to the snapshot root, raw bytes ('' for the root itself). */
  path: Buffer;
  change: ChangeKind;
  type: TreeEntry['type'];
  sizeA?: number;
  sizeB?: number;
  /** For modified files: changed byte ranges of the new version. */
  extents?: ByteRange[];
}

const SLASH = Buffer.from('/');
const join = (dir: Buffer, name: Buffer) => (dir.length ? Buffer.concat([dir, SLASH, name]) : name);

function sameMeta(a: TreeEntry, b: TreeEntry): boolean {
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.mtimeNs !== b.mtimeNs || a.size !== b.size) return false;
  if ((a.rdev ?? 0) !== (b.rdev ?? 0)) return false;
  if (!(a.target ?? Buffer.alloc(0)).equals(b.target ?? Buffer.alloc(0))) return false;
  const xa = a.xattrs ?? [];
  const xb = b.xattrs ?? [];
  return xa.length === xb.length && xa.every(([n, v], i) => n === xb[i][0] && v.equals(xb[i][1]));
}

const sameContent = (a: Handle | null, b: Handle | null) => (a === null ? b === null : b !== null && a.equals(b));

/**
 * Lists what changed from entry A to entry B (two snapshot roots, or any two entries), pruning
 * directories whose tree handles are equal. Yields in path order.
 */
export function* diffEntries(objects: ObjectStore, a: TreeEntry, b: TreeEntry, path: Buffer = Buffer.alloc(0)): Generator<PathChange> {
  if (a.type !== b.type) {
    yield { path, change: 'type', type: b.type };
    return;
  }
  const contentSame = sameContent(a.content, b.content);
  if (a.type === 'dir') {
    if (!sameMeta(a, b) && path.length) yield { path, change: 'meta', type: 'dir' };
    if (contentSame) return;
    const la = a.content ? objects.readTree(a.content) : [];
    const lb = b.content ? objects.readTree(b.content) : [];
    let i = 0;
    let j = 0;
    while (i < la.length || j < lb.length) {
      const c = i >= la.length ? 1 : j >= lb.length ? -1 : Buffer.compare(la[i].name, lb[j].name);
      if (c < 0) { yield { path: join(path, la[i].name), change: 'removed', type: la[i].type, sizeA: la[i].size }; i++; }
      else if (c > 0) { yield { path: join(path, lb[j].name), change: 'added', type: lb[j].type, sizeB: lb[j].size }; j++; }
      else { yield* diffEntries(objects, la[i], lb[j], join(path, la[i].name)); i++; j++; }
    }
    return;
  }
  if (!contentSame) {
    const d = a.type === 'file' ? diffObjects(objects, a.content, b.content) : null;
    yield { path, change: 'modified', type: b.type, sizeA: a.size, sizeB: b.size, extents: d?.changed };
  } else if (!sameMeta(a, b)) {
    yield { path, change: 'meta', type: b.type, sizeA: a.size, sizeB: b.size };
  }
}
