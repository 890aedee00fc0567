import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { FingerprintLedger } from '../src/cas/fingerprint.js';
import { checkRestored } from '../src/host/restore-check.js';
import { restoreToHost } from '../src/host/restore-tree.js';
import type { TreeEntry } from '../src/types.js';
import { createTestStore } from './helpers/store.js';
import { pseudoRandomBytes, tmpDir } from './helpers/tmp.js';

test('a restored file is checked by fingerprint; damage on disk is named, coverage is recorded', (t) => {
  const { cas } = createTestStore(t);
  const data = pseudoRandomBytes(3 << 20, 12);
  const { root, size } = cas.objects.writeObject(data);
  const dir = cas.objects.writeTree([{ name: Buffer.from('f.bin'), type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, atimeNs: 0n, size, content: root }]);
  cas.chunks.commit();
  const entry: TreeEntry = { name: Buffer.from('d'), type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: 0n, atimeNs: 0n, size: 0, content: dir };
  const dest = path.join(tmpDir(t), 'out');
  restoreToHost(entry, dest, { objects: cas.objects, trees: cas.objects });
  const ledger = new FingerprintLedger(cas.index.db);
  t.is(checkRestored(cas.objects, entry, dest, ledger).files, 1);
  t.is(ledger.coverage(root!, size), 1, 'a 3 MiB object is covered whole by one fingerprint');
  const f = path.join(dest, 'f.bin');
  const b = fs.readFileSync(f);
  b[2_000_000] ^= 1;
  fs.writeFileSync(f, b);
  t.throws(() => checkRestored(cas.objects, entry, dest, ledger), { message: /f\.bin.*does not match/ });
});
