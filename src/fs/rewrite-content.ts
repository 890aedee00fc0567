import type { ObjectStore } from '../cas/object-store.js';
import type { ObjectInfo } from '../types.js';
import type { FileBuffer } from './file-buffer.js';

/**
 * The stored object for a file's content with its unflushed writes applied.
 * (First version: re-chunks the whole content; deduplication keeps unchanged chunks free.)
 */
export function rewriteContent(objects: ObjectStore, b: FileBuffer): ObjectInfo {
  if (b.size === 0) return { root: null, size: 0 };
  return objects.writeObject({
    read: (buf, pos) => {
      const piece = b.read(objects, pos, buf.length);
      piece.copy(buf);
      return piece.length;
    },
  });
}
