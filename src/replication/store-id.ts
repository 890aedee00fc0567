import crypto from 'node:crypto';
import type { CasStore } from '../cas/store.js';

/** This store's identity towards peers: made once, kept in the index. */
export function storeId(cas: CasStore): string {
  let id = cas.index.getMeta('store_id');
  if (!id) {
    id = `s-${crypto.randomBytes(8).toString('hex')}`;
    cas.index.setMeta('store_id', id);
  }
  return id;
}
