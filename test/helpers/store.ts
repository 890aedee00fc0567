import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { CasStore, DEFAULT_PERFORMANCE } from '../../src/cas/store.js';
import { Catalogue } from '../../src/temporal/catalogue.js';
import { tmpDir } from './tmp.js';

/**
 * A real store on a temporary directory, closed and removed at teardown. Small chunk sizes keep
 * Merkle trees several levels deep even on small test data.
 */
export function createTestStore(t: ExecutionContext, opts: { small?: boolean; containerSize?: number; directReads?: boolean } = {}): { cas: CasStore; cat: Catalogue; dir: string } {
  const dir = path.join(tmpDir(t), 'store');
  CasStore.init(dir, {
    chunker: opts.small ? { min: 256, avg: 1024, max: 4096, fixedSize: 1024 } : undefined,
    containerSize: opts.containerSize,
    performance: opts.directReads === undefined ? undefined : { ...DEFAULT_PERFORMANCE, directReads: opts.directReads },
  });
  const cas = CasStore.open(dir, { write: true });
  let closed = false;
  t.teardown(() => { if (!closed) cas.close(); });
  const origClose = cas.close.bind(cas);
  cas.close = () => { closed = true; origClose(); };
  return { cas, cat: new Catalogue(cas), dir };
}
