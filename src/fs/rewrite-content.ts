import { patchObject } from '../cas/object-patch.js';
import type { ObjectStore } from '../cas/object-store.js';
import type { ObjectInfo } from '../types.js';
import type { FileBuffer } from './file-buffer.js';

/**
 * The stored object for a file's content with its unflushed writes applied. Incremental: only
 * chunks around the written extents are re-cut and hashed (see patchObject).
 */
export function rewriteContent(objects: ObjectStore, b: FileBuffer): ObjectInfo {
  let base = b.base;
  // A cut below the stored size followed by growth must read zeros, not the old tail.
  if (base && b.truncatedTo !== null) base = patchObject(objects, base, [], b.truncatedTo).root;
  return patchObject(objects, base, b.extents, b.size);
}
