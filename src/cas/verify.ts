import { isStrataError } from '../errors.js';
import { ChunkKind, type Handle, type SnapshotInfo, type TreeEntry } from '../types.js';
import { FingerprintLedger } from './fingerprint.js';
import { handleKey } from './hash.js';
import { isHole } from './merkle-node.js';
import type { CasStore } from './store.js';

// Integrity check: re-read and re-hash stored chunks (all, or a random sample), check that every
// snapshot's references resolve, and name the snapshots and paths that damage reaches.

export interface VerifyOptions {
  /** Check only this percentage of chunks (chosen at random); reachability is then skipped. */
  samplePercent?: number;
  onProgress?: (p: { done: number; total: number; bytes: number }) => void;
}

export interface BadChunk {
  handle: string;
  container: number;
  offset: number;
  message: string;
}

export interface AffectedSnapshot {
  snapshot: string;
  name: string | null;
  paths: string[];
}

export interface VerifyReport {
  chunksChecked: number;
  bytesChecked: number;
  bad: BadChunk[];
  missing: { snapshot: string; handle: string }[];
  affected: AffectedSnapshot[];
  ok: boolean;
}

export function verifyStore(cas: CasStore, snapshots: SnapshotInfo[], opts: VerifyOptions = {}): VerifyReport {
  const sample = opts.samplePercent;
  const where = sample !== undefined && sample < 100
    ? `WHERE (abs(random()) % 1000000) < ${Math.round(Math.max(0, sample) * 10000)} ORDER BY container, offset`
    : 'ORDER BY container, offset';
  const total = Number(cas.index.db.prepare('SELECT count(*) FROM chunks').pluck().get());
  const report: VerifyReport = { chunksChecked: 0, bytesChecked: 0, bad: [], missing: [], affected: [], ok: true };
  const badKeys = new Set<string>();
  for (const row of cas.index.iterateChunks(where)) {
    try {
      cas.chunks.readVerified(row.handle, row);
    } catch (e) {
      if (!isStrataError(e)) throw e;
      report.bad.push({ handle: row.handle.toString('hex'), container: row.container, offset: row.offset, message: e.message });
      badKeys.add(handleKey(row.handle));
    }
    report.chunksChecked++;
    report.bytesChecked += row.rawLength;
    if (report.chunksChecked % 2000 === 0) opts.onProgress?.({ done: report.chunksChecked, total, bytes: report.bytesChecked });
  }
  opts.onProgress?.({ done: report.chunksChecked, total, bytes: report.bytesChecked });

  if (sample === undefined || sample >= 100) {
    // Every reference of every snapshot must resolve (nodes are visited once across snapshots).
    const seen = new Set<string>();
    for (const s of snapshots) {
      const stack: Handle[] = [s.root];
      while (stack.length) {
        const h = stack.pop() as Handle;
        const key = handleKey(h);
        if (seen.has(key)) continue;
        seen.add(key);
        const row = cas.index.getChunk(h);
        if (!row) {
          report.missing.push({ snapshot: s.id, handle: h.toString('hex') });
          badKeys.add(key);
          continue;
        }
        if (row.kind !== ChunkKind.Node && row.kind !== ChunkKind.TreeRoot) continue;
        if (badKeys.has(key)) continue;
        try {
          for (const c of cas.objects.references(h, row.kind)) stack.push(c);
        } catch (e) {
          if (!isStrataError(e)) throw e;
          badKeys.add(key);
        }
      }
    }
  }
  if (badKeys.size) report.affected = affectedPaths(cas, snapshots, badKeys);
  report.ok = report.bad.length === 0 && report.missing.length === 0;
  return report;
}

/** For each snapshot, the paths whose content or listing touches a bad handle. */
export function affectedPaths(cas: CasStore, snapshots: SnapshotInfo[], bad: Set<string>): AffectedSnapshot[] {
  const out: AffectedSnapshot[] = [];
  const touches = (root: Handle): boolean => {
    const stack = [root];
    while (stack.length) {
      const h = stack.pop() as Handle;
      if (bad.has(handleKey(h))) return true;
      let n;
      try { n = cas.objects.node(h); } catch { return true; }
      if (n.level === 0) { if (n.handles.some((c) => !isHole(c) && bad.has(handleKey(c)))) return true; }
      else stack.push(...n.handles.filter((c) => !isHole(c)));
    }
    return false;
  };
  for (const s of snapshots) {
    const paths: string[] = [];
    const walk = (e: TreeEntry, path: string) => {
      if (!e.content) return;
      if (e.type === 'dir') {
        let list: TreeEntry[];
        try { list = cas.objects.readTree(e.content); } catch { paths.push(`${path || '/'} (directory unreadable)`); return; }
        if (touches(e.content)) paths.push(`${path || '/'} (directory listing)`);
        for (const c of list) walk(c, `${path}/${c.name.toString('utf8')}`);
      } else if (touches(e.content)) {
        paths.push(path);
      }
    };
    walk({ name: Buffer.alloc(0), type: 'dir', content: s.root, mode: 0, uid: 0, gid: 0, mtimeNs: 0n, atimeNs: 0n, size: 0 }, '');
    if (paths.length) out.push({ snapshot: s.id, name: s.name, paths });
  }
  return out;
}

export interface FingerprintCoverage {
  root: string;
  /** Where the object was first seen: snapshot and path. */
  snapshot: string;
  path: string;
  size: number;
  /** Fraction of the object's bytes that recorded fingerprint checks have sampled (0..1). */
  coverage: number;
}

/** Per file object of the snapshots (each once), how much of it fingerprints have covered so far. */
export function fingerprintCoverage(cas: CasStore, snapshots: SnapshotInfo[]): FingerprintCoverage[] {
  const ledger = new FingerprintLedger(cas.index.db);
  const out: FingerprintCoverage[] = [];
  const seen = new Set<string>();
  for (const s of snapshots) {
    const walk = (e: TreeEntry, p: string) => {
      if (!e.content) return;
      const key = handleKey(e.content);
      if (seen.has(key)) return;
      seen.add(key);
      if (e.type === 'dir') {
        for (const c of cas.objects.readTree(e.content)) walk(c, `${p}/${c.name.toString('utf8')}`);
      } else if (e.type === 'file') {
        out.push({ root: e.content.toString('hex'), snapshot: s.name ?? s.id, path: p, size: e.size, coverage: ledger.coverage(e.content, e.size) });
      }
    };
    for (const top of cas.objects.readTree(s.root)) walk(top, `/${top.name.toString('utf8')}`);
  }
  return out;
}
