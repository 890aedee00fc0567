// Domain vocabulary and the narrow interfaces the layers use. Depends on nothing.

/** A BLAKE3-256 digest naming a chunk, an object node or a tree. Always 32 bytes. */
export type Handle = Buffer;
export const HANDLE_BYTES = 32;

/** What a stored chunk holds. Object nodes are interior/leaf-list nodes of a Merkle object. */
export enum ChunkKind {
  Data = 0,
  /** A Merkle node of a file object (interior or leaf list). */
  Node = 1,
  /** The root node of a tree object (a directory listing): it also references its entries' content. */
  TreeRoot = 2,
  /** A snapshot catalogue record (JSON), so the index can be rebuilt from containers alone. */
  Snapshot = 3,
  /** Records the removal of a snapshot (JSON with its id). */
  Tombstone = 4,
}

/** How a chunk's bytes are stored in a container. */
export enum Codec {
  Raw = 0,
  Zstd = 1,
}

/** How an object's content was cut into chunks. Recorded in the object's root node. */
export enum Chunking {
  /** FastCDC with normalized chunking (file content). */
  Cdc = 0,
  /** Fixed-size, offset-aligned blocks (disk and LUN images). */
  Fixed = 1,
}

export interface ChunkerParams {
  /** FastCDC: min/avg/max chunk sizes in bytes. */
  min: number;
  avg: number;
  max: number;
  /** Fixed-size chunking block size in bytes. */
  fixedSize: number;
}

/** Streaming chunker: bytes in, whole chunks out, in order. */
export interface Chunker {
  /** Feeds bytes; returns the chunks completed so far. Returned buffers stay valid (never reused). */
  write(data: Buffer): Buffer[];
  /** Ends the stream; returns the last chunks (possibly none). */
  end(): Buffer[];
  /**
   * write() without copying chunks out: `emit` gets each completed chunk as a view (of `data` or of
   * the chunker's own buffer) valid only during the call. For callers that only hash the chunks.
   */
  scan?(data: Buffer, emit: (chunk: Buffer) => void): void;
  /** end() the same way as scan(). */
  finish?(emit: (chunk: Buffer) => void): void;
}

/** Where one stored chunk lives. `offset` is the payload offset inside the container. */
export interface ChunkLocation {
  container: number;
  offset: number;
  storedLength: number;
  rawLength: number;
  codec: Codec;
  kind: ChunkKind;
}

/** One chunk record as a container describes itself (enough to rebuild the index). */
export interface ContainerRecord extends ChunkLocation {
  handle: Handle;
}

/** Write-once blobs (containers). Local directory first; an S3-compatible store later. */
export interface BlobStore {
  /** Reads `length` bytes at `offset` of blob `name`; throws a StrataError (code 'ENOENT' or 'ETRUNC') if not all there. */
  read(name: string, offset: number, length: number): Buffer;
  /**
   * The same as read(), without blocking the caller's thread (reads run on the I/O pool), into
   * `into` when given (at least `length` bytes; the answer is then a view of its start).
   * Optional: read() serves otherwise.
   */
  readAsync?(name: string, offset: number, length: number, into?: Buffer): Promise<Buffer>;
  size(name: string): number;
  list(): string[];
  delete(name: string): void;
  /** Opens a new blob for appending; it becomes durable at each sync() and final at close(). */
  create(name: string): BlobAppender;
}

export interface BlobAppender {
  /** Appends and returns the offset the bytes were written at. */
  append(data: Buffer): number;
  readonly length: number;
  /** Makes everything appended so far durable (fsync). */
  sync(): void;
  /** The same without blocking the thread (the fsync runs on libuv's pool); sync() where absent. */
  syncAsync?(): Promise<void>;
  close(): void;
}

/** A source of content to store, read like a file descriptor. */
export interface ContentSource {
  /** Fills `buf` from `position`; returns bytes read, 0 at the end. */
  read(buf: Buffer, position: number): number;
}

export interface WriteObjectOptions {
  chunking?: Chunking;
  /** The previous version of this object: its chunk at the same offset is compared first. */
  predecessor?: Handle | null;
}

export interface ObjectInfo {
  /** Root handle; null for empty content. */
  root: Handle | null;
  size: number;
}

/** An extent of an object: either stored data or a hole (zeros, costing no storage). */
export interface Extent {
  offset: number;
  length: number;
  hole: boolean;
}

export interface ObjectWriter {
  /** Stores content as a Merkle object. */
  writeObject(source: ContentSource | Buffer, opts?: WriteObjectOptions): ObjectInfo;
}

export interface ObjectReader {
  objectSize(root: Handle): number;
  /** Reads a byte range (clamped to the object's size); holes read as zeros. Verifies every chunk's hash. */
  readObject(root: Handle, offset: number, length: number): Buffer;
  /** Data and hole extents in order, covering the whole object (adjacent holes merged). */
  extents(root: Handle): Extent[];
}

/** One leaf of an object: a data chunk or a hole, at an absolute offset. */
export interface ObjectLeaf {
  offset: number;
  length: number;
  handle: Handle;
}

/** Where a reader of one object gets its leaves: the object's Merkle tree and a verified fetch per chunk. */
export interface LeafSource {
  /** The leaves overlapping [from, to), in order. */
  leaves(from: number, to: number): ObjectLeaf[];
  /** Whether a leaf is a hole (reads as zeros, nothing to fetch). */
  isHole(leaf: ObjectLeaf): boolean;
  /**
   * Starts fetching data leaves: one LeafFetch per leaf, its bytes verified against its handle
   * (ECORRUPT otherwise). Leaves stored next to each other may be read with one I/O and then
   * share one `done`.
   */
  fetch(leaves: ObjectLeaf[]): LeafFetch[];
  /** Optional: readies what leaves() will need over [from, to), in the background (never rejects). */
  prepare?(from: number, to: number): Promise<void>;
}

/** A holder's claim on recycled memory: see LeafFetch. */
export interface Lease {
  hold(): void;
  release(): void;
}

/**
 * One leaf being fetched. `done` never rejects: once it settles, exactly one of `bytes` and
 * `error` is set. (A promise per leaf cost more than the rest of a read for small chunks: a 1 GiB
 * image has some 45k of them.)
 */
export interface LeafFetch {
  done: Promise<void>;
  bytes?: Buffer;
  error?: Error;
  /**
   * When present, `bytes` lives in recycled memory: whoever received the fetch holds it, hold()
   * adds another holder, and each holder calls release() exactly once when done with `bytes`
   * (after the last release the memory may be reused). Without them, `bytes` is the fetch's own.
   */
  hold?(): void;
  release?(): void;
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'fifo' | 'chardev' | 'blockdev' | 'socket';

/** One entry of a directory listing (a tree). Names are raw bytes: any bytes except '/' and NUL. */
export interface TreeEntry {
  name: Buffer;
  type: EntryType;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  atimeNs: bigint;
  /** Logical size for files (sparse files count their holes); 0 otherwise. */
  size: number;
  /** file: object root (null when empty); dir: tree handle. */
  content: Handle | null;
  /** Symlink target, raw bytes. */
  target?: Buffer;
  /** Device number for chardev/blockdev. */
  rdev?: number;
  /** Extended attributes, sorted by name. */
  xattrs?: Array<[string, Buffer]>;
  /** Nonzero when hard-linked: entries of one snapshot sharing a group are one inode. */
  linkGroup?: number;
}

export interface TreeWriter {
  /** Stores a directory listing (entries in any order; stored sorted by name bytes) and returns its handle. */
  writeTree(entries: TreeEntry[]): Handle;
}

export interface TreeReader {
  /** Reads a directory listing, sorted by name bytes. */
  readTree(handle: Handle): TreeEntry[];
}

export interface SnapshotInfo {
  id: string;
  name: string | null;
  parent: string | null;
  /** Which source was imported (absolute host path), or null for the live tree. */
  source: string | null;
  /** Root tree handle (a directory) or, for a single-file import, the file's object root. */
  root: Handle;
  rootType: 'dir' | 'file';
  createdMs: number;
  logicalBytes: number;
  fileCount: number;
}

/** A snapshot as written into a container (JSON), so the catalogue can be rebuilt from containers. */
export interface SnapshotRecord {
  v: 1;
  id: string;
  name: string | null;
  parent: string | null;
  source: string | null;
  root: string;
  rootType: 'dir' | 'file';
  createdMs: number;
  logicalBytes: number;
  fileCount: number;
  seq: number;
}

/** File attributes as the filesystem layer reports them (times in milliseconds since the epoch). */
export interface Attr {
  ino: number;
  /** Full st_mode: type bits and permission bits. */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: number;
  /** 512-byte blocks allocated (approximate for deduplicated content). */
  blocks: number;
  rdev: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  /**
   * Optional, for a path whose meaning can change under the same name (a snapshot folder: at/TIME
   * moves on, a pool name may come to mean another snapshot): a number that changes when it does,
   * so that the kernel forgets what it cached below the old one.
   */
  generation?: number;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  namemax: number;
}

/**
 * One name of a directory listing with its attributes, so the kernel learns each entry's type
 * (d_type) and `find`, `ls -l` and friends need not ask getattr for every name. `attr` must be what
 * getattr of that path would answer (the same ino above all: the mount uses use_ino).
 */
export interface DirEntry {
  name: string;
  attr: Attr;
}

/**
 * Bytes of open files held below the namespace, from which the FUSE layer answers the kernel's
 * reads without a call into the namespace (the read window of fuse-native's patched binding).
 * Only for files whose content cannot change while they are open, and only verified bytes.
 */
export interface ReadWindow {
  /**
   * Offers [offset, offset + length) of open handle fh, a file of `size` bytes: `bytes` (copied;
   * length is bytes.length) or, when null, zeros. An offer that does not continue the handle's
   * previous one starts its window afresh. False when refused (no room): offer again later.
   * With `lease` (bytes in recycled shared memory, as a LeafFetch's), the window may hold the
   * bytes where they are instead of copying them: it calls lease.hold() then, and lease.release()
   * once it is done with them.
   */
  put(fh: number, size: number, offset: number, bytes: Buffer | null, length: number, lease?: Lease): boolean;
  /**
   * Once a read of fh answered from the window reaches `mark`, `reached` (see listen) hears of it
   * once; until the next mark() for fh. (Without a listener, such reads come to read() instead.)
   */
  mark(fh: number, mark: number): void;
  /** Where readers reaching their marks are reported: fh and the end of the read. */
  listen(reached: (fh: number, position: number) => void): void;
  /** Forgets fh's window; called before the handle number can be reused. */
  drop(fh: number): void;
}

/**
 * The namespace the FUSE layer translates to: one call per FUSE operation, paths as the kernel
 * gives them (absolute, '/'-separated). Errors are StrataErrors whose code is the errno name.
 * Methods may return a value or a Promise of it (long work such as flushing runs off the event loop).
 */
export interface Namespace {
  getattr(path: string): Attr | Promise<Attr>;
  /**
   * The entries of a directory with their attributes (no '.' or '..' needed). A directory that
   * cannot change (a snapshot view's) may be answered with the same array again: callers must not
   * modify it, and may keep what they derive from it for as long as they hold it.
   */
  readdir(path: string): readonly DirEntry[] | Promise<readonly DirEntry[]>;
  readlink(path: string): string | Promise<string>;
  /** Opens a file; returns a handle number. flags are open(2) flags. */
  open(path: string, flags: number): number | Promise<number>;
  create(path: string, mode: number, flags: number, uid: number, gid: number): number | Promise<number>;
  /**
   * Reads up to `length` bytes at `offset` (fewer only at the end of the file). Reads of stored
   * content may be asynchronous; the returned bytes are verified against their handles.
   * `into` (at least `length` bytes; FUSE's buffer for the answer) lets the read place the bytes
   * there and answer a view of its start instead of a buffer of its own; it is only written before
   * the read settles.
   */
  read(fh: number, offset: number, length: number, into?: Buffer): Buffer | Promise<Buffer>;
  /**
   * Optional: gives the namespace the FUSE layer's read window, where it may leave verified bytes
   * ahead of a reader of a file that cannot change while open, so that the kernel's reads of them
   * are answered without calling read().
   */
  useReadWindow?(window: ReadWindow): void;
  /**
   * Optional: `changed` is called when the snapshots views show change (one taken, removed or
   * received), before a view path answers by the new set: what the FUSE layer kept from earlier
   * listings (see listingTimeout()) may no longer be true.
   */
  watchViews?(changed: () => void): void;
  /** Copies `data` before any asynchronous step (it is FUSE's buffer, reused once answered). Returns bytes written. */
  write(fh: number, data: Buffer, offset: number): number | Promise<number>;
  flush(fh: number): void | Promise<void>;
  fsync(fh: number, datasync: boolean): void | Promise<void>;
  release(fh: number): void | Promise<void>;
  truncate(path: string, size: number): void | Promise<void>;
  ftruncate(fh: number, size: number): void | Promise<void>;
  unlink(path: string): void | Promise<void>;
  rename(from: string, to: string): void | Promise<void>;
  mkdir(path: string, mode: number, uid: number, gid: number): void | Promise<void>;
  rmdir(path: string): void | Promise<void>;
  symlink(target: string, path: string, uid: number, gid: number): void | Promise<void>;
  link(existing: string, path: string): void | Promise<void>;
  chmod(path: string, mode: number): void | Promise<void>;
  chown(path: string, uid: number, gid: number): void | Promise<void>;
  /** Times in milliseconds; undefined leaves that time as it is. */
  utimens(path: string, atimeMs: number | undefined, mtimeMs: number | undefined): void | Promise<void>;
  statfs(path: string): StatFs | Promise<StatFs>;
  getxattr(path: string, name: string): Buffer | Promise<Buffer>;
  setxattr(path: string, name: string, value: Buffer, flags: number): void | Promise<void>;
  listxattr(path: string): string[] | Promise<string[]>;
  removexattr(path: string, name: string): void | Promise<void>;
  /**
   * Seconds the kernel may keep `path`'s entry and attributes without asking again: the root's
   * is the mount's (short: the live tree changes); long inside snapshot views.
   */
  cacheTimeout(path: string): number;
  /**
   * Seconds for which the entries listed in directory `path` keep the attributes listed (inside
   * read-only snapshot views), so that getattr on them may be answered from the listing; 0 when
   * they may change at any time.
   */
  listingTimeout(path: string): number;
}
