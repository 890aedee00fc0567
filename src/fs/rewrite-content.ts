import type { ChunkOffload } from '../cas/chunk-offload.js';
import { patchObject, patchObjectSteps } from '../cas/object-patch.js';
import type { ObjectStore } from '../cas/object-store.js';
import type { Handle, ObjectInfo } from '../types.js';
import type { Extent } from './file-buffer.js';

/** What a rewrite stores: `base` with `extents` on top, cut to `truncatedTo`, sized to `size` (a FileBuffer or a FlushJob). */
export interface ContentChange {
  readonly base: Handle | null;
  readonly extents: Extent[];
  readonly size: number;
  readonly truncatedTo: number | null;
}

/** Main-thread time one slice of an asynchronous rewrite may take before other work gets a turn. */
const SLICE_MS = 4;

/**
 * The stored object for a file's content with its unflushed writes applied. Incremental: only
 * chunks around the written extents are re-cut and hashed (see patchObject).
 */
export function rewriteContent(objects: ObjectStore, b: ContentChange): ObjectInfo {
  return patchObject(objects, cutBase(objects, b), b.extents, b.size);
}

/**
 * rewriteContent in slices of about SLICE_MS, letting the event loop run (FUSE requests are
 * answered) and compressions come back between them. With `offload`, a tail of new data (what
 * sequential writes leave) is chunked and hashed on its worker. The caller keeps `b`'s bytes unchanged.
 */
export async function rewriteContentAsync(objects: ObjectStore, b: ContentChange, offload: ChunkOffload | null = null): Promise<ObjectInfo> {
  const steps = patchObjectSteps(objects, cutBase(objects, b), b.extents, b.size);
  let sliceStart = performance.now();
  let answer: boolean | undefined;
  for (;;) {
    const r = steps.next(answer);
    answer = undefined;
    if (r.done) return r.value;
    if (r.value && offload?.usable) {
      await offload.chunk(r.value, () => objects.chunks.relieve());
      answer = true;
      sliceStart = performance.now();
    } else if (performance.now() - sliceStart >= SLICE_MS) {
      await objects.chunks.relieve();
      sliceStart = performance.now();
    }
  }
}

function cutBase(objects: ObjectStore, b: ContentChange): Handle | null {
  // A cut below the stored size followed by growth must read zeros, not the old tail.
  if (b.base && b.truncatedTo !== null) return patchObject(objects, b.base, [], b.truncatedTo).root;
  return b.base;
}
