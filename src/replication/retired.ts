import type Database from 'better-sqlite3';
import type { Handle } from '../types.js';

// Snapshots a receiver removed by its retention (--keep N). Remembered so that a sender's
// `replicate --all` learns (in HOLDINGS) that they were dropped on purpose and does not send them
// again on every run. A snapshot sent again on purpose (named explicitly) is held again and leaves
// this table until retention removes it once more. Kept in the index only: after an index rebuild
// the worst case is one more transfer of such a snapshot.

export class RetiredSnapshots {
  constructor(private readonly db: Database.Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS retired_snapshots (
      id TEXT PRIMARY KEY, root BLOB NOT NULL, at_ms INTEGER NOT NULL) WITHOUT ROWID`);
  }

  record(id: string, root: Handle): void {
    this.db.prepare('INSERT OR REPLACE INTO retired_snapshots (id, root, at_ms) VALUES (?, ?, ?)').run(id, root, Date.now());
  }

  forget(id: string): void {
    this.db.prepare('DELETE FROM retired_snapshots WHERE id = ?').run(id);
  }

  /** The root of a retired snapshot, or undefined. */
  root(id: string): Handle | undefined {
    const r = this.db.prepare('SELECT root FROM retired_snapshots WHERE id = ?').pluck().get(id) as Buffer | undefined;
    return r;
  }
}
