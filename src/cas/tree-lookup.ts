import { displayName } from './tree-codec.js';
import { invalid, notFound, StrataError } from '../errors.js';
import type { TreeEntry, TreeReader } from '../types.js';

// Path lookup inside stored trees (snapshot views, cat, restore of a part).

/** Resolves `relPath` ('a/b/c' as raw bytes; '' or '.' is `root` itself) inside `root`; no symlinks are followed. */
export function lookupPath(trees: TreeReader, root: TreeEntry, relPath: Buffer | string): TreeEntry {
  const bytes = typeof relPath === 'string' ? Buffer.from(relPath) : relPath;
  const walked: string[] = []; // latin1, so bytes round-trip
  let cur = root;
  for (const part of splitPath(bytes)) {
    if (part.length === 2 && part[0] === 0x2e && part[1] === 0x2e) throw invalid(`path ${displayName(bytes)} contains '..'`);
    if (cur.type !== 'dir') {
      const here = walked.length === 0 ? '.' : displayName(Buffer.from(walked.join('/'), 'latin1'));
      throw new StrataError('ENOTDIR', `${here} is not a directory (looking up ${displayName(bytes)})`);
    }
    walked.push(part.toString('latin1'));
    const found = cur.content ? findEntry(trees.readTree(cur.content), part) : undefined;
    if (!found) throw notFound(displayName(Buffer.from(walked.join('/'), 'latin1')));
    cur = found;
  }
  return cur;
}

export function splitPath(path: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path[i] === 0x2f) {
      const part = path.subarray(start, i);
      if (part.length > 0 && !(part.length === 1 && part[0] === 0x2e)) out.push(part);
      start = i + 1;
    }
  }
  return out;
}

/** Binary search: listings are sorted by name bytes. */
export function findEntry(entries: TreeEntry[], name: Buffer): TreeEntry | undefined {
  let lo = 0;
  let hi = entries.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = Buffer.compare(entries[mid]!.name, name);
    if (c === 0) return entries[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

