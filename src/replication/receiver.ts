import { decompressChunk } from '../cas/codec.js';
import { decompressDelta } from '../cas/delta-codec.js';
import { computeFingerprint, fingerprintParams, FingerprintLedger } from '../cas/fingerprint.js';
import { handleFromHex, hashBytes, shortHex } from '../cas/hash.js';
import { decodeNode, FLAG_ROOT, FLAG_TREE, isHole } from '../cas/merkle-node.js';
import type { CasStore } from '../cas/store.js';
import { decodeTree } from '../cas/tree-codec.js';
import { corrupt, invalid, StrataError } from '../errors.js';
import { retained } from '../pools/performance-pool.js';
import type { Catalogue } from '../temporal/catalogue.js';
import { ChunkKind, type Handle, type SnapshotInfo } from '../types.js';
import type { FramedConnection } from './connection.js';
import { MAX_CHUNK_RAW_BYTES, type MessageOf } from './messages.js';
import { RetiredSnapshots } from './retired.js';
import { decodeFingerprints } from './sender.js';
import { storeId } from './store-id.js';

// The receiving side. Chunks are checked (decompressed and re-hashed) and stored as they arrive;
// a node is refused unless everything it names is already here, so a present node always means a
// complete subtree. A snapshot commits last, in one transaction, once its root is present and its
// fingerprints match; an interrupted transfer resumes by answering offers from the index.
// A chunk may arrive as a delta against chunks this store holds (bases named in the offer); it is
// decoded with this store's own, verified copies of the bases and then checked and stored as any
// other chunk. Snapshots removed by retention are remembered, so a sender does not resend them.

/** A sender silent for this long is dropped (it may resume later: nothing acknowledged is lost). */
const IDLE_MS = 5 * 60_000;
/** Received chunks are made durable at least this often, so a killed receiver keeps most of them. */
const COMMIT_EVERY_BYTES = 8 * 1024 * 1024;

export interface ReceiveOptions {
  /** Keep only the latest N snapshots per branch after each commit (undefined: keep all). */
  keepPerBranch?: number;
  /** Called after a snapshot committed (e.g. to refresh a mount's views). */
  onCommit?: (s: SnapshotInfo) => void;
  log?: (msg: string) => void;
}

export interface ReceiveReport {
  peer: string | null;
  committed: string[];
  chunksStored: number;
  bytesStored: number;
}

/** Serves one authenticated sender until it says DONE or the connection ends. */
export async function receiveSnapshots(cas: CasStore, cat: Catalogue, conn: FramedConnection, opts: ReceiveOptions = {}): Promise<ReceiveReport> {
  const report: ReceiveReport = { peer: null, committed: [], chunksStored: 0, bytesStored: 0 };
  const hello = await conn.expect('HELLO', IDLE_MS);
  report.peer = hello.storeId;
  conn.sendMessage({ type: 'HELLO', storeId: storeId(cas) });
  const ledger = new FingerprintLedger(cas.index.db);
  const retired = new RetiredSnapshots(cas.index.db);
  let sinceCommit = 0;
  const stored = (payloadBytes: number) => {
    report.chunksStored++;
    report.bytesStored += payloadBytes;
    sinceCommit += payloadBytes;
    if (sinceCommit >= COMMIT_EVERY_BYTES) {
      cas.chunks.commit();
      sinceCommit = 0;
    }
  };
  try {
    for (;;) {
      const m = await conn.nextMessage(IDLE_MS);
      switch (m.type) {
        case 'HOLDINGS_QUERY': {
          const snaps = new Map(cat.list().map((s) => [s.id, s]));
          const held = m.snapshotIds.filter((id) => snaps.has(id)).map((id) => ({ id, root: snaps.get(id)!.root }));
          const gone = m.snapshotIds.filter((id) => !snaps.has(id)).flatMap((id) => {
            const root = retired.root(id);
            return root ? [{ id, root }] : [];
          });
          conn.sendMessage({ type: 'HOLDINGS', snapshots: held, retired: gone });
          break;
        }
        case 'OFFER': {
          const needed: number[] = [];
          const withBases: number[] = [];
          m.handles.forEach((h, i) => {
            if (cas.chunks.has(h)) return;
            needed.push(i);
            const bases = m.bases[i];
            if (bases.length && bases.every((b) => cas.chunks.has(b))) withBases.push(i);
          });
          if (!conn.sendMessage({ type: 'NEED', batchId: m.batchId, count: m.handles.length, needed, withBases })) await conn.drain();
          break;
        }
        case 'CHUNK':
          if (storeChunk(cas, m)) stored(m.payload.length);
          break;
        case 'CHUNK_DELTA':
          if (storeDelta(cas, m)) stored(m.payload.length);
          break;
        case 'COMMIT': {
          const s = commitSnapshot(cas, cat, ledger, m);
          retired.forget(s.id);
          report.committed.push(s.id);
          if (opts.keepPerBranch !== undefined) prune(cat, retired, opts.keepPerBranch, opts.log);
          opts.onCommit?.(s);
          conn.sendMessage({ type: 'COMMITTED', snapshotId: s.id });
          break;
        }
        case 'DONE':
          cas.chunks.commit();
          conn.close();
          return report;
        default:
          throw invalid(`unexpected ${m.type} from the sender`);
      }
    }
  } catch (e) {
    // Keep what arrived intact: committed batches stay (a retry will not resend them).
    try { cas.chunks.commit(); } catch { cas.chunks.abort(); }
    conn.abort(e);
    throw e;
  }
}

/** Checks and stores one chunk; false when it was already here. */
function storeChunk(cas: CasStore, m: MessageOf<'CHUNK'>): boolean {
  if (cas.chunks.has(m.handle)) return false;
  const raw = decompressChunk(m.codec, m.payload, m.rawLength, `chunk ${shortHex(m.handle)} from the peer`);
  storeRaw(cas, m.handle, m.kind, raw);
  return true;
}

/**
 * Decodes a delta with this store's copies of its bases, then checks and stores the chunk as
 * storeChunk does; false when it was already here. A missing base, a delta that does not decode
 * or decodes to other bytes than its handle names is refused before anything is stored.
 */
function storeDelta(cas: CasStore, m: MessageOf<'CHUNK_DELTA'>): boolean {
  if (cas.chunks.has(m.handle)) return false;
  const what = `delta chunk ${shortHex(m.handle)} from the peer`;
  let baseBytes = 0;
  for (const b of m.bases) {
    const loc = cas.chunks.locate(b);
    if (!loc) throw invalid(`${what} names base ${shortHex(b)}, which this store does not hold`);
    baseBytes += loc.rawLength;
  }
  // Bounds the memory a peer can make us spend on one dictionary.
  if (baseBytes > MAX_CHUNK_RAW_BYTES) throw invalid(`${what}: its bases hold ${baseBytes} bytes, over the ${MAX_CHUNK_RAW_BYTES}-byte limit`);
  const raw = decompressDelta(m.payload, m.rawLength, m.bases.map((b) => cas.chunks.get(b)), what);
  storeRaw(cas, m.handle, m.kind, raw);
  return true;
}

/** Checks a chunk's raw bytes against its handle and kind (a node's children must be here) and stores it. */
function storeRaw(cas: CasStore, handle: Handle, kind: ChunkKind, raw: Buffer): void {
  const m = { handle, kind };
  if (!hashBytes(raw).equals(m.handle)) throw corrupt(`chunk ${shortHex(m.handle)} from the peer does not match its handle`);
  let children: Handle[] = [];
  if (m.kind === ChunkKind.Node || m.kind === ChunkKind.TreeRoot) {
    const n = decodeNode(raw);
    const isTreeRoot = (n.flags & FLAG_ROOT) !== 0 && (n.flags & FLAG_TREE) !== 0;
    if ((m.kind === ChunkKind.TreeRoot) !== isTreeRoot) throw corrupt(`node ${shortHex(m.handle)} arrived with the wrong kind`);
    children = n.handles.filter((h) => !isHole(h));
    for (const c of children) {
      if (!cas.chunks.has(c)) throw invalid(`node ${shortHex(m.handle)} arrived before its child ${shortHex(c)}`);
    }
    if (isTreeRoot) {
      // The listing is this object's content (read through its children, all present); its
      // entries must be complete too, and the tree root holds a reference on each.
      const listing = Buffer.concat(n.handles.map((c, i) => (n.level === 0 ? cas.chunks.get(c) : cas.objects.readObject(c, 0, n.lengths[i]))));
      const refs = decodeTree(listing).filter((e) => e.content).map((e) => e.content as Handle);
      for (const c of refs) {
        if (!cas.chunks.has(c)) throw invalid(`directory ${shortHex(m.handle)} arrived before its entry ${shortHex(c)}`);
      }
      children = children.concat(refs);
    }
  } else if (m.kind !== ChunkKind.Data) {
    throw invalid(`chunk kind ${m.kind as number} cannot be replicated`);
  }
  cas.chunks.put(m.handle, m.kind, raw, children);
}

function commitSnapshot(cas: CasStore, cat: Catalogue, ledger: FingerprintLedger, m: MessageOf<'COMMIT'>): SnapshotInfo {
  const info = parseRecord(m.record);
  const loc = cas.chunks.locate(info.root);
  if (!loc) throw new StrataError('EINVAL', `snapshot ${info.id}: its root ${shortHex(info.root)} has not arrived`);
  // A snapshot root is a one-entry tree holding a directory or a file (see Catalogue.create).
  const top = loc.kind === ChunkKind.TreeRoot ? cas.objects.readTree(info.root) : [];
  if (top.length !== 1 || top[0].type !== info.rootType) throw invalid(`snapshot ${info.id}: its root is not a snapshot root`);
  const checks = decodeFingerprints(m.fingerprint);
  for (const f of checks) {
    if (!cas.chunks.has(f.root)) throw invalid(`fingerprint for an object that has not arrived: ${shortHex(f.root)}`);
    const size = cas.objects.objectSize(f.root);
    const mine = computeFingerprint((o, l) => cas.objects.readObject(f.root, o, l), size, fingerprintParams(f.root, size, f.generation));
    if (!mine.equals(f.value)) throw corrupt(`snapshot ${info.id}: object ${shortHex(f.root)} does not match the sender's fingerprint`);
  }
  const s = cat.adopt(info);
  cas.index.transaction(() => {
    for (const f of checks) ledger.record(f.root, cas.objects.objectSize(f.root), f.generation);
  });
  return s;
}

/** A snapshot record from the wire, every field checked. */
function parseRecord(json: string): SnapshotInfo {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(json) as Record<string, unknown>;
  } catch {
    throw invalid('snapshot record is not JSON');
  }
  const str = (k: string, re: RegExp, nullable: boolean): string | null => {
    const v = r[k];
    if (v === null && nullable) return null;
    if (typeof v !== 'string' || !re.test(v)) throw invalid(`snapshot record: bad ${k}`);
    return v;
  };
  const num = (k: string): number => {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw invalid(`snapshot record: bad ${k}`);
    return v;
  };
  if (r.v !== 1) throw invalid('snapshot record: unknown version');
  const rootType = r.rootType;
  if (rootType !== 'dir' && rootType !== 'file') throw invalid('snapshot record: bad rootType');
  return {
    id: str('id', /^[0-9a-f]{8}$/, false) as string,
    name: str('name', /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$/, true),
    parent: str('parent', /^[0-9a-f]{8}$/, true),
    source: typeof r.source === 'string' && r.source.length < 4096 ? r.source : null,
    root: handleFromHex(str('root', /^[0-9a-f]{64}$/, false) as string),
    rootType,
    createdMs: num('createdMs'),
    logicalBytes: num('logicalBytes'),
    fileCount: num('fileCount'),
  };
}

/** Keeps the latest `keep` snapshots of every branch (removal re-parents; nothing else is touched) and remembers what it removed. */
function prune(cat: Catalogue, retired: RetiredSnapshots, keep: number, log?: (msg: string) => void): void {
  const snaps = cat.list();
  const kept = retained(snaps, keep);
  for (const s of snaps) {
    if (kept.has(s.id)) continue;
    cat.remove(s.id);
    retired.record(s.id, s.root);
    log?.(`retention: removed snapshot ${s.name ?? s.id} (keeping ${keep} per branch)`);
  }
}
