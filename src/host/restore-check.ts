import fs from 'node:fs';
import { computeFingerprint, fingerprintParams, type FingerprintLedger } from '../cas/fingerprint.js';
import type { ObjectStore } from '../cas/object-store.js';
import { displayName } from '../cas/tree-codec.js';
import { corrupt } from '../errors.js';
import type { TreeEntry } from '../types.js';
import { joinPath } from './import-tree.js';

// After a restore, each restored file of at least `minBytes` is checked against the store with a
// sparse fingerprint (about 1000 samples of 64 KiB): cheap even for disk images, and each run
// samples other regions, so coverage of what was written grows over time.

export interface RestoreCheck {
  files: number;
  bytesSampled: number;
}

/** Throws ECORRUPT naming the first restored file whose bytes differ from the store's. */
export function checkRestored(objects: ObjectStore, entry: TreeEntry, dest: Buffer | string, ledger: FingerprintLedger | null, minBytes = 1 << 20): RestoreCheck {
  const result: RestoreCheck = { files: 0, bytesSampled: 0 };
  const seen = new Set<string>();
  const visit = (e: TreeEntry, p: Buffer) => {
    if (e.type === 'dir' && e.content) {
      for (const c of objects.readTree(e.content)) visit(c, joinPath(p, c.name));
      return;
    }
    if (e.type !== 'file' || !e.content || e.size < minBytes) return;
    const key = p.toString('latin1');
    if (seen.has(key)) return;
    seen.add(key);
    const root = e.content;
    const gen = ledger ? ledger.nextGeneration(root) : Math.floor(Date.now() / 1000);
    const params = fingerprintParams(root, e.size, gen);
    const want = computeFingerprint((o, l) => objects.readObject(root, o, l), e.size, params);
    const fd = fs.openSync(p, 'r');
    let got: Buffer;
    try {
      got = computeFingerprint((o, l) => {
        const b = Buffer.alloc(l);
        const n = fs.readSync(fd, b, 0, l, o);
        result.bytesSampled += n;
        return b.subarray(0, n);
      }, fs.fstatSync(fd).size, params);
    } finally {
      fs.closeSync(fd);
    }
    if (!got.equals(want)) throw corrupt(`restored file ${displayName(p)} does not match the snapshot (fingerprint generation ${gen})`);
    ledger?.record(root, e.size, gen);
    result.files++;
  };
  visit(entry, typeof dest === 'string' ? Buffer.from(dest) : dest);
  return result;
}
