import { compressChunk } from '../cas/codec.js';
import { compressDelta } from '../cas/delta-codec.js';
import { computeFingerprint, fingerprintParams, FingerprintLedger } from '../cas/fingerprint.js';
import { handleKey } from '../cas/hash.js';
import type { CasStore } from '../cas/store.js';
import { invalid, notFound } from '../errors.js';
import type { PerformancePool } from '../pools/performance-pool.js';
import type { Catalogue } from '../temporal/catalogue.js';
import { recordOf } from '../temporal/catalogue.js';
import { nearestHeld, PeerHoldings } from '../temporal/peers.js';
import { Codec, type Handle, type SnapshotInfo } from '../types.js';
import type { FramedConnection } from './connection.js';
import type { Message } from './messages.js';
import { planOffer, type OfferItem } from './plan.js';
import { storeId } from './store-id.js';

// The sending side. For each snapshot: ask which snapshots the peer holds, diff against the
// nearest one, offer the handles that differ in batches, and send the chunks the peer says it
// lacks — offers, answers and chunks stream without waiting per batch — then commit last.
// A needed chunk whose old version the peer holds travels as a delta against it when that is
// smaller than the chunk as stored.

const BATCH = 4096;
/** Fingerprints travel in COMMIT (at most 4 KiB): 60 objects x (32-byte root, u32 generation, 32-byte value). */
const FP_ENTRY = 68;
const FP_MAX = 60;

export interface SendReport {
  /**
   * `skipped`: not sent, because the peer holds it (`skipReason` 'held') or removed it by its
   * retention and it was not named explicitly ('retired'); null when sent.
   */
  snapshots: { id: string; name: string | null; neighbour: string | null; skipped: boolean; skipReason: 'held' | 'retired' | null }[];
  bytesOnWire: number;
  chunksOffered: number;
  chunksNeeded: number;
  /** Chunks sent, as CHUNK or CHUNK_DELTA. */
  chunksSent: number;
  /** Of chunksSent, those sent as a delta against chunks the peer holds. */
  chunksSentAsDelta: number;
  /** Payload bytes of the chunks sent (as they travelled, deltas included). */
  payloadBytes: number;
  /** Of payloadBytes, the payloads of deltas. */
  deltaBytes: number;
  /** What the chunks sent as deltas take as stored (compressed): they would have cost this as CHUNKs. */
  deltaPlainBytes: number;
  /** Raw bytes read from containers: chunks sent (unless read natively) and delta bases. */
  bytesFromCapacity: number;
  /** Raw bytes of chunks read natively from the performance pool (hybrid seeding). */
  bytesFromPerformance: number;
  fingerprintsChecked: number;
}

export interface SendOptions {
  /** Read changed extents natively from the performance pool when it holds the object. */
  hybrid: boolean;
  pool?: PerformancePool | null;
  /** Offer delta bases and send deltas when smaller (default true; false for comparisons). */
  delta?: boolean;
  /**
   * Snapshots named explicitly: sent even when the peer removed them by retention (other such
   * snapshots are skipped, so `--all` does not undo the peer's retention).
   */
  explicit?: ReadonlySet<string>;
}

/** Sends snapshots (parents before children) over an authenticated connection. */
export async function sendSnapshots(cas: CasStore, cat: Catalogue, conn: FramedConnection, snaps: SnapshotInfo[], opts: SendOptions): Promise<SendReport> {
  const report: SendReport = {
    snapshots: [], bytesOnWire: 0, chunksOffered: 0, chunksNeeded: 0, chunksSent: 0, chunksSentAsDelta: 0, payloadBytes: 0,
    deltaBytes: 0, deltaPlainBytes: 0, bytesFromCapacity: 0, bytesFromPerformance: 0, fingerprintsChecked: 0,
  };
  const socket = conn.socket;
  const wireStart = socket.bytesWritten;
  conn.sendMessage({ type: 'HELLO', storeId: storeId(cas) });
  const hello = await conn.expect('HELLO');
  const peer = hello.storeId;
  const holdings = new PeerHoldings(cas.index.db);
  const ledger = new FingerprintLedger(cas.index.db);
  for (const s of snaps) {
    const all = cat.list();
    conn.sendMessage({ type: 'HOLDINGS_QUERY', snapshotIds: all.map((x) => x.id).slice(0, 65536) });
    const h = await conn.expect('HOLDINGS');
    const roots = new Map(all.map((x) => [x.id, x.root]));
    const held = new Set<string>();
    for (const x of h.snapshots) {
      // Ids are random per store: a held id counts only when its root matches ours.
      if (roots.get(x.id)?.equals(x.root)) held.add(x.id);
    }
    const retired = new Set(h.retired.filter((x) => roots.get(x.id)?.equals(x.root)).map((x) => x.id));
    for (const x of all) {
      if (held.has(x.id)) holdings.record(x.id, peer);
      else holdings.forget(x.id, peer);
    }
    if (held.has(s.id)) {
      report.snapshots.push({ id: s.id, name: s.name, neighbour: null, skipped: true, skipReason: 'held' });
      continue;
    }
    if (retired.has(s.id) && !opts.explicit?.has(s.id)) {
      report.snapshots.push({ id: s.id, name: s.name, neighbour: null, skipped: true, skipReason: 'retired' });
      continue;
    }
    const neighbour = nearestHeld(all, s.id, held);
    const newFileRoots = await streamChunks(cas, conn, planOffer(cas.objects, s, neighbour), opts, report);
    const fingerprint = fingerprintsFor(cas, ledger, newFileRoots);
    conn.sendMessage({ type: 'COMMIT', record: JSON.stringify(recordOf(s, 1)), fingerprint: fingerprint.bytes });
    const done = await conn.expect('COMMITTED', 0);
    if (done.snapshotId !== s.id) throw invalid(`peer committed ${done.snapshotId}, expected ${s.id}`);
    for (const f of fingerprint.checked) ledger.record(f.root, f.size, f.generation);
    report.fingerprintsChecked += fingerprint.checked.length;
    holdings.record(s.id, peer);
    report.snapshots.push({ id: s.id, name: s.name, neighbour: neighbour?.id ?? null, skipped: false, skipReason: null });
  }
  conn.sendMessage({ type: 'DONE' });
  await conn.drain();
  report.bytesOnWire = socket.bytesWritten - wireStart;
  return report;
}

/**
 * Offers the planned handles in batches and answers each NEED with the chunks asked for, in
 * offer order (so children still arrive before their parents). Returns the file objects new in
 * this transfer (for fingerprints).
 */
async function streamChunks(cas: CasStore, conn: FramedConnection, plan: Iterable<OfferItem>, opts: SendOptions, report: SendReport): Promise<Map<string, Handle>> {
  const pending = new Map<number, OfferItem[]>();
  const fileRoots = new Map<string, Handle>();
  let sent = 0;
  let answered = 0;
  let offersDone = false;
  let wake: (() => void) | null = null;
  const poke = () => { wake?.(); wake = null; };
  let failure: unknown = null;

  const answers = (async () => {
    for (;;) {
      if (answered === sent) {
        if (offersDone) return;
        await new Promise<void>((r) => { wake = r; });
        continue;
      }
      const need = await conn.expect('NEED', 0);
      const items = pending.get(need.batchId);
      if (!items || need.count !== items.length) throw invalid(`peer answered an unknown batch ${need.batchId}`);
      pending.delete(need.batchId);
      answered++;
      report.chunksNeeded += need.needed.length;
      const withBases = new Set(need.withBases);
      for (const i of need.needed) {
        const it = items[i];
        if (!it) throw invalid(`peer asked for item ${i} of a batch of ${items.length}`);
        if (withBases.has(i) && !it.bases.length) throw invalid(`peer says it holds the bases of item ${i}, which has none`);
        if (!conn.sendMessage(chunkMessage(cas, it, withBases.has(i), opts, report))) await conn.drain();
        report.chunksSent++;
      }
    }
  })().catch((e) => { failure = e; throw e; });

  let batch: OfferItem[] = [];
  let batchId = 0;
  const flush = async () => {
    if (!batch.length) return;
    pending.set(batchId, batch);
    report.chunksOffered += batch.length;
    const ok = conn.sendMessage({ type: 'OFFER', batchId, handles: batch.map((b) => b.handle), bases: batch.map((b) => b.bases) });
    batchId++;
    sent++;
    batch = [];
    poke();
    if (!ok) await conn.drain();
  };
  const useDelta = opts.delta !== false;
  for (const planned of plan) {
    if (failure) break;
    const it = useDelta ? planned : { ...planned, bases: [] };
    if (it.source) fileRoots.set(handleKey(it.source.root), it.source.root);
    batch.push(it);
    if (batch.length >= BATCH) await flush();
  }
  await flush();
  offersDone = true;
  poke();
  await answers;
  return fileRoots;
}

/**
 * A CHUNK as stored in its container, or read natively from the performance pool (hybrid
 * seeding); or, when the peer holds the item's bases, a CHUNK_DELTA if that is smaller than the
 * chunk as stored. Bases are always read from containers (verified).
 */
function chunkMessage(cas: CasStore, it: OfferItem, peerHasBases: boolean, opts: SendOptions, report: SendReport): Message {
  const loc = cas.chunks.locate(it.handle);
  if (!loc) throw notFound(`chunk ${it.handle.toString('hex').slice(0, 12)}`);
  const native = opts.hybrid && opts.pool && it.source && opts.pool.holds(it.source.root) ? it.source : null;
  // Read and check it first: a damaged chunk must not leave this store.
  let raw: Buffer;
  if (native) {
    raw = opts.pool!.read(native.root, native.offset, native.length);
    report.bytesFromPerformance += raw.length;
  } else {
    raw = cas.chunks.readVerified(it.handle, loc);
    report.bytesFromCapacity += loc.rawLength;
  }
  if (peerHasBases && raw.length > 0) {
    const bases = it.bases.map((b) => cas.chunks.get(b));
    for (const b of bases) report.bytesFromCapacity += b.length;
    const payload = compressDelta(raw, bases);
    // Worth it only when the delta and its base handles cost less than the chunk as stored.
    if (payload.length + 33 * it.bases.length < loc.storedLength) {
      report.chunksSentAsDelta++;
      report.deltaBytes += payload.length;
      report.deltaPlainBytes += loc.storedLength;
      report.payloadBytes += payload.length;
      return { type: 'CHUNK_DELTA', handle: it.handle, kind: loc.kind, rawLength: raw.length, bases: it.bases, payload };
    }
  }
  if (native) {
    const { codec, payload } = compressChunk(raw);
    report.payloadBytes += payload.length;
    return { type: 'CHUNK', handle: it.handle, kind: loc.kind, codec, rawLength: raw.length, payload };
  }
  const payload = cas.chunks.readPayload(loc);
  report.payloadBytes += payload.length;
  return { type: 'CHUNK', handle: it.handle, kind: loc.kind, codec: loc.codec as Codec, rawLength: loc.rawLength, payload };
}

/** Fingerprints of the largest new file objects, for the peer to check its copies against. */
function fingerprintsFor(cas: CasStore, ledger: FingerprintLedger, roots: Map<string, Handle>) {
  const sized = [...roots.values()].map((root) => ({ root, size: cas.objects.objectSize(root) }));
  sized.sort((a, b) => b.size - a.size);
  const checked = sized.slice(0, FP_MAX).map(({ root, size }) => {
    const generation = ledger.nextGeneration(root);
    const value = computeFingerprint((o, l) => cas.objects.readObject(root, o, l), size, fingerprintParams(root, size, generation));
    return { root, size, generation, value };
  });
  const bytes = Buffer.alloc(checked.length * FP_ENTRY);
  checked.forEach((c, i) => {
    c.root.copy(bytes, i * FP_ENTRY);
    bytes.writeUInt32BE(c.generation, i * FP_ENTRY + 32);
    c.value.copy(bytes, i * FP_ENTRY + 36);
  });
  return { bytes, checked };
}

export function decodeFingerprints(b: Buffer): { root: Handle; generation: number; value: Buffer }[] {
  if (b.length % FP_ENTRY !== 0) throw invalid('malformed fingerprint list');
  const out = [];
  for (let o = 0; o < b.length; o += FP_ENTRY) {
    out.push({ root: Buffer.from(b.subarray(o, o + 32)), generation: b.readUInt32BE(o + 32), value: Buffer.from(b.subarray(o + 36, o + 68)) });
  }
  return out;
}
