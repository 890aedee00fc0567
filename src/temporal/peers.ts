import type Database from 'better-sqlite3';
import type { SnapshotInfo } from '../types.js';

// Which peers hold which snapshots (recorded by the sender after a peer commits one), and the
// nearest snapshot a peer holds in the temporal tree: the neighbour to diff against.

export class PeerHoldings {
  constructor(private readonly db: Database.Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS snapshot_peers (
      snapshot TEXT NOT NULL, peer TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (snapshot, peer)) WITHOUT ROWID`);
  }

  record(snapshot: string, peer: string): void {
    this.db.prepare('INSERT OR REPLACE INTO snapshot_peers (snapshot, peer, at_ms) VALUES (?, ?, ?)').run(snapshot, peer, Date.now());
  }

  forget(snapshot: string, peer: string): void {
    this.db.prepare('DELETE FROM snapshot_peers WHERE snapshot = ? AND peer = ?').run(snapshot, peer);
  }

  heldBy(peer: string): Set<string> {
    return new Set(this.db.prepare('SELECT snapshot FROM snapshot_peers WHERE peer = ?').pluck().all(peer) as string[]);
  }

  peersOf(snapshot: string): string[] {
    return this.db.prepare('SELECT peer FROM snapshot_peers WHERE snapshot = ? ORDER BY peer').pluck().all(snapshot) as string[];
  }
}

/**
 * The snapshot closest to `from` in the temporal tree (by edges: parent and children, so
 * ancestors, descendants and siblings all count) among `held`; null if none is connected.
 */
export function nearestHeld(snaps: SnapshotInfo[], from: string, held: Set<string>): SnapshotInfo | null {
  const byId = new Map(snaps.map((s) => [s.id, s]));
  const adj = new Map<string, string[]>();
  for (const s of snaps) {
    if (!s.parent || !byId.has(s.parent)) continue;
    (adj.get(s.id) ?? adj.set(s.id, []).get(s.id)!).push(s.parent);
    (adj.get(s.parent) ?? adj.set(s.parent, []).get(s.parent)!).push(s.id);
  }
  const seen = new Set([from]);
  let frontier = [from];
  while (frontier.length) {
    const next: string[] = [];
    for (const id of frontier) {
      for (const n of adj.get(id) ?? []) {
        if (seen.has(n)) continue;
        seen.add(n);
        if (held.has(n)) return byId.get(n) ?? null;
        next.push(n);
      }
    }
    frontier = next;
  }
  return null;
}
