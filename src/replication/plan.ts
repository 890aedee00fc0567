import { diffObjects } from '../cas/diff.js';
import { handleKey } from '../cas/hash.js';
import type { ObjectStore } from '../cas/object-store.js';
import type { Handle, SnapshotInfo, TreeEntry } from '../types.js';
import { leafBases, nodeBase, nodePositions } from './delta.js';

// What to offer a peer for snapshot S: the handles of S's Merkle DAG that are not in the
// neighbour snapshot N the peer already holds, found with the difference engine (so the work
// follows the change), in post-order — every chunk before the node that names it. The receiver
// stores in arrival order and refuses a node whose children it lacks, so "node present" always
// means "whole subtree present" there, and a snapshot is complete when its root is.
//
// An item new in S that has a predecessor in N (the same path's old object, the same position in
// it) carries that predecessor's chunks as delta bases: the peer holds them, so the item can
// travel as a delta against them (see delta.ts).

export interface OfferItem {
  handle: Handle;
  /** For data chunks of a file: the file's object root and the chunk's offset (hybrid seeding reads it natively). */
  source?: { root: Handle; offset: number; length: number };
  /** Chunks of N the item probably shares bytes with (its old version); empty when it has none. */
  bases: Handle[];
}

/** Handles of S not in N (all of S's when N is null), children before parents, each once. */
export function* planOffer(objects: ObjectStore, s: SnapshotInfo, n: SnapshotInfo | null): Generator<OfferItem> {
  const seen = new Set<string>();
  const once = function* (items: Iterable<OfferItem>): Generator<OfferItem> {
    for (const it of items) {
      const k = handleKey(it.handle);
      if (seen.has(k)) continue;
      seen.add(k);
      yield it;
    }
  };
  yield* once(objectNew(objects, n ? n.root : null, s.root, true));
}

/**
 * New handles of object `b` against `a`; for trees, the entries' new content first (recursively,
 * matched by name), then the tree's own chunks and nodes, its root last.
 */
function* objectNew(objects: ObjectStore, a: Handle | null, b: Handle, tree: boolean): Generator<OfferItem> {
  if (a && a.equals(b)) return;
  if (tree) {
    const la = a ? objects.readTree(a) : [];
    const byName = new Map(la.map((e) => [e.name.toString('latin1'), e]));
    for (const e of objects.readTree(b)) {
      if (!e.content) continue;
      const old = byName.get(e.name.toString('latin1'));
      const oldContent = old && old.type === e.type ? old.content : null;
      yield* entryNew(objects, oldContent, e);
    }
  }
  const d = diffObjects(objects, a, b);
  const chunking = objects.node(b).chunking;
  for (const l of d.newLeaves) {
    yield {
      handle: l.handle,
      source: tree ? undefined : { root: b, offset: l.offset, length: l.length },
      bases: a ? leafBases(objects, a, l.offset, l.length, chunking) : [],
    };
  }
  const positions = a ? nodePositions(objects, b, new Set(d.newNodes.map(handleKey))) : null;
  for (let i = d.newNodes.length - 1; i >= 0; i--) {
    const pos = positions?.get(handleKey(d.newNodes[i]));
    const base = a && pos ? nodeBase(objects, a, pos) : null;
    yield { handle: d.newNodes[i], bases: base ? [base] : [] };
  }
}

function* entryNew(objects: ObjectStore, old: Handle | null, e: TreeEntry): Generator<OfferItem> {
  if (!e.content) return;
  yield* objectNew(objects, old, e.content, e.type === 'dir');
}
