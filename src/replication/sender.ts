import { compressChunk } from '../cas/codec.js';
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
import { planOffer, type OfferItem } from './plan.js';
import { storeId } from './store-id.js';

// The sending side. For each snapshot: ask which snapshots the peer holds, diff against the
// nearest one, offer the handles that differ in batches, and send the chunks the peer says it
// lacks — offers, answers and chunks stream without waiting per batch — then commit last.

const BATCH = 4096;
/** Fingerprints travel in COMMIT (at most 4 KiB): 60 objects x (32-byte root, u32 generation, 32-byte value). */
const FP_ENTRY = 68;
const FP_MAX = 60;

export interface SendReport {
  snapshots: { id: string; name: string | null; neighbour: string | null; skipped: boolean }[];
  bytesOnWire: number;
  chunksOffered: number;
  chunksNeeded: number;
  chunksSent: number;
  /** Payload bytes of the chunks sent (as they travelled). */
  payloadBytes: number;
  bytesFromCapacity: number;
  bytesFromPerformance: number;
  fingerprintsChecked: number;
}

export interface SendOptions {
  /** Read changed extents natively from the performance pool when it holds the object. */
  hybrid: boolean;
  pool?: PerformancePool | null;
}

/** Sends snapshots (parents before children) over an authenticated connection. */
export async function sendSnapshots(cas: CasStore, cat: Catalogue, conn: FramedConnection, snaps: SnapshotInfo[], opts: SendOptions): Promise<SendReport> {
  const report: SendReport = {
    snapshots: [], bytesOnWire: 0, chunksOffered: 0, chunksNeeded: 0, chunksSent: 0, payloadBytes: 0,
    bytesFromCapacity: 0, bytesFromPerformance: 0, fingerprintsChecked: 0,
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
    for (const x of all) {
      if (held.has(x.id)) holdings.record(x.id, peer);
      else holdings.forget(x.id, peer);
    }
    if (held.has(s.id)) {
      report.snapshots.push({ id: s.id, name: s.name, neighbour: null, skipped: true });
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
    report.snapshots.push({ id: s.id, name: s.name, neighbour: neighbour?.id ?? null, skipped: false });
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
      for (const i of need.needed) {
        const it = items[i];
        if (!it) throw invalid(`peer asked for item ${i} of a batch of ${items.length}`);
        if (!conn.sendMessage(chunkMessage(cas, it, opts, report))) await conn.drain();
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
    const ok = conn.sendMessage({ type: 'OFFER', batchId, handles: batch.map((b) => b.handle) });
    batchId++;
    sent++;
    batch = [];
    poke();
    if (!ok) await conn.drain();
  };
  for (const it of plan) {
    if (failure) break;
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

/** A CHUNK as stored in its container, or read natively from the performance pool (hybrid seeding). */
function chunkMessage(cas: CasStore, it: OfferItem, opts: SendOptions, report: SendReport) {
  if (opts.hybrid && opts.pool && it.source && opts.pool.holds(it.source.root)) {
    const raw = opts.pool.read(it.source.root, it.source.offset, it.source.length);
    const { codec, payload } = compressChunk(raw);
    report.bytesFromPerformance += raw.length;
    report.payloadBytes += payload.length;
    const loc = cas.chunks.locate(it.handle);
    return { type: 'CHUNK' as const, handle: it.handle, kind: loc?.kind ?? 0, codec, rawLength: raw.length, payload };
  }
  const loc = cas.chunks.locate(it.handle);
  if (!loc) throw notFound(`chunk ${it.handle.toString('hex').slice(0, 12)}`);
  // Read and check it first: a damaged chunk must not leave this store.
  cas.chunks.readVerified(it.handle, loc);
  const payload = cas.chunks.readPayload(loc);
  report.bytesFromCapacity += loc.rawLength;
  report.payloadBytes += payload.length;
  return { type: 'CHUNK' as const, handle: it.handle, kind: loc.kind, codec: loc.codec as Codec, rawLength: loc.rawLength, payload };
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
