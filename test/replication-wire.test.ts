import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { accept, authenticate, dial, generateKeyFile, proofOf, readKeyFile } from '../src/replication/auth.js';
import {
  FramedConnection, connect, formatAddress, listen, parseAddress, serverAddress, type Address,
} from '../src/replication/connection.js';
import {
  FrameReader, HANDSHAKE_MAX_FRAME_BODY, MAX_FRAME_BODY, PREAMBLE, ProtocolError, encodeFrame, isProtocolError, type Frame,
} from '../src/replication/frame.js';
import {
  MAX_BASES, MAX_OFFER_HANDLES, MESSAGE_CODES, decodeMessage, encodeMessage, messageFrame, type Message,
} from '../src/replication/messages.js';
import { StrataError } from '../src/errors.js';
import { ChunkKind, Codec } from '../src/types.js';
import { tmpDir } from './helpers/tmp.js';

// ---------------------------------------------------------------------------------------------
// Messages

const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a));
const idArb = fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/);
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });

const messageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ type: fc.constant('CHALLENGE' as const), role: fc.constantFrom('sender' as const, 'receiver' as const), nonce: bytes(32) }),
  fc.record({ type: fc.constant('PROOF' as const), hmac: bytes(32) }),
  fc.constant({ type: 'AUTH_OK' as const }),
  fc.record({ type: fc.constant('HELLO' as const), storeId: idArb }),
  fc.record({ type: fc.constant('ERROR' as const), code: fc.stringMatching(/^[A-Z0-9_]{1,32}$/), message: fc.string({ maxLength: 300 }) }),
  fc.record({ type: fc.constant('HOLDINGS_QUERY' as const), snapshotIds: fc.uniqueArray(idArb, { maxLength: 20 }) }),
  fc.record({
    type: fc.constant('HOLDINGS' as const),
    all: fc.uniqueArray(fc.record({ id: idArb, root: bytes(32) }), { maxLength: 20, selector: (s) => s.id }),
    split: fc.nat(20),
  }).map(({ type, all, split }) => ({ type, snapshots: all.slice(0, split), retired: all.slice(split) })),
  fc.array(fc.record({ handle: bytes(32), bases: fc.array(bytes(32), { maxLength: MAX_BASES }) }), { minLength: 1, maxLength: 40 })
    .chain((items) => fc.record({
      type: fc.constant('OFFER' as const), batchId: u32, handles: fc.constant(items.map((i) => i.handle)), bases: fc.constant(items.map((i) => i.bases)),
    })),
  fc.integer({ min: 1, max: 300 }).chain((count) => fc.record({
    type: fc.constant('NEED' as const),
    batchId: u32,
    count: fc.constant(count),
    needed: fc.uniqueArray(fc.integer({ min: 0, max: count - 1 }), { maxLength: count }).map((a) => a.sort((x, y) => x - y)),
  }).chain((m) => fc.subarray(m.needed).map((withBases) => ({ ...m, withBases })))),
  fc.record({
    type: fc.constant('CHUNK' as const),
    handle: bytes(32),
    kind: fc.constantFrom(ChunkKind.Data, ChunkKind.Node, ChunkKind.TreeRoot),
    codec: fc.constant(Codec.Raw),
    payload: fc.uint8Array({ maxLength: 2000 }).map((a) => Buffer.from(a)),
  }).map((m) => ({ ...m, rawLength: m.payload.length })),
  fc.record({
    type: fc.constant('CHUNK' as const),
    handle: bytes(32),
    kind: fc.constantFrom(ChunkKind.Data, ChunkKind.Node, ChunkKind.TreeRoot),
    codec: fc.constant(Codec.Zstd),
    rawLength: fc.integer({ min: 1, max: 1 << 20 }),
    payload: fc.uint8Array({ minLength: 1, maxLength: 2000 }).map((a) => Buffer.from(a)),
  }),
  fc.record({
    type: fc.constant('CHUNK_DELTA' as const),
    handle: bytes(32),
    kind: fc.constantFrom(ChunkKind.Data, ChunkKind.Node, ChunkKind.TreeRoot),
    rawLength: fc.integer({ min: 1, max: 1 << 20 }),
    bases: fc.array(bytes(32), { minLength: 1, maxLength: MAX_BASES }),
    payload: fc.uint8Array({ minLength: 1, maxLength: 2000 }).map((a) => Buffer.from(a)),
  }),
  fc.record({
    type: fc.constant('COMMIT' as const),
    record: fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 8 }).map((o) => JSON.stringify(o)),
    fingerprint: fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a)),
  }),
  fc.record({ type: fc.constant('COMMITTED' as const), snapshotId: idArb }),
  fc.constant({ type: 'DONE' as const }),
);

/** Frames of `m`, as a reader without preamble parses them. */
function reframe(m: Message): Frame {
  const frames = new FrameReader({ preamble: false }).frames(messageFrame(m));
  if (frames.length !== 1) throw new Error('expected one frame');
  return frames[0];
}

const bodyOf = (m: Message) => Buffer.concat(encodeMessage(m).body);
const decodeBody = (type: number, body: Buffer) => decodeMessage({ type, body });

test('every message type round-trips through frame and decoder', (t) => {
  const seen = new Set<string>();
  fc.assert(fc.property(messageArb, (m) => {
    seen.add(m.type);
    const back = decodeMessage(reframe(m));
    t.deepEqual(back, m);
  }), { numRuns: 2000 });
  t.deepEqual([...seen].sort(), Object.keys(MESSAGE_CODES).sort(), 'the generator covers every type');
});

test('every strict prefix of a body, and any trailing byte, is refused', (t) => {
  fc.assert(fc.property(messageArb, fc.integer({ min: 0, max: 255 }), (m, extra) => {
    const { type } = encodeMessage(m);
    const body = bodyOf(m);
    const longer = Buffer.concat([body, Buffer.from([extra])]);
    const trailing = (() => { try { decodeBody(type, longer); return null; } catch (e) { return e; } })();
    // A CHUNK's payload is "the rest", so an extra byte is payload: caught by the raw length check or hash (receiver).
    if (m.type !== 'CHUNK_DELTA' && (m.type !== 'CHUNK' || m.codec === Codec.Raw)) {
      t.true(isProtocolError(trailing, 'EPROTO'), `${m.type} with a trailing byte`);
    }
    for (let n = 0; n < body.length; n++) {
      // A zstd CHUNK cut inside its payload is indistinguishable from a shorter payload; frames carry the length.
      if (m.type === 'CHUNK' && m.codec === Codec.Zstd && n > 38) continue;
      if (m.type === 'CHUNK_DELTA' && n > 38 + 32 * m.bases.length) continue;
      t.throws(() => decodeBody(type, body.subarray(0, n)), { instanceOf: ProtocolError }, `${m.type} cut to ${n} of ${body.length}`);
    }
  }), { numRuns: 300 });
});

test('decoder refusals name the problem', (t) => {
  const refuse = (type: number, body: Buffer, re: RegExp) => {
    const e = t.throws(() => decodeBody(type, body), { instanceOf: ProtocolError });
    t.is(e?.reason, 'EPROTO');
    t.regex(e!.message, re);
  };
  refuse(0x7e, Buffer.alloc(3), /unknown message type 0x7e/);
  refuse(MESSAGE_CODES.AUTH_OK, Buffer.from([0]), /AUTH_OK: 1 trailing bytes/);
  refuse(MESSAGE_CODES.CHALLENGE, Buffer.concat([Buffer.from([3]), Buffer.alloc(32)]), /unknown role 3/);
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
  refuse(MESSAGE_CODES.OFFER, Buffer.concat([u32(1), u32(MAX_OFFER_HANDLES + 1)]), /count 65537 is outside 1..65536/);
  refuse(MESSAGE_CODES.OFFER, Buffer.concat([u32(1), u32(0)]), /count 0 is outside/);
  // A large count with few bytes behind it is refused before any allocation for it.
  refuse(MESSAGE_CODES.OFFER, Buffer.concat([u32(1), u32(1000), Buffer.alloc(64)]), /1000 items need at least 33000 bytes/);
  refuse(MESSAGE_CODES.HOLDINGS_QUERY, Buffer.concat([u32(0xffff_ffff)]), /count 4294967295 is outside 0..65536/);
  refuse(MESSAGE_CODES.HOLDINGS_QUERY, Buffer.concat([u32(2), Buffer.from([1, 0x61, 1, 0x61])]), /not distinct/);
  refuse(MESSAGE_CODES.HELLO, Buffer.from([3, 0x61, 0x2f, 0x62]), /storeId "a\/b" is not/);
  refuse(MESSAGE_CODES.HELLO, Buffer.from([0]), /storeId "" is not/);
  refuse(MESSAGE_CODES.NEED, Buffer.concat([u32(1), u32(3), Buffer.from([0b1000])]), /bit 3 set, beyond the 3 offered/);
  refuse(MESSAGE_CODES.ERROR, Buffer.from([2, 0x45, 0x78, 0, 0]), /code "Ex" is not/);
  refuse(MESSAGE_CODES.ERROR, Buffer.concat([Buffer.from([1, 0x45, 0, 2]), Buffer.from([0xc3, 0x28])]), /message is not valid UTF-8/);
  refuse(MESSAGE_CODES.ERROR, Buffer.concat([Buffer.from([1, 0x45]), Buffer.from([0x10, 0x01])]), /over the 4096-byte limit/);
  const chunkHead = (kind: number, codec: number, raw: number) => Buffer.concat([Buffer.alloc(32), Buffer.from([kind, codec]), u32(raw)]);
  refuse(MESSAGE_CODES.CHUNK, Buffer.concat([chunkHead(3, 0, 1), Buffer.alloc(1)]), /kind 3 is not one that replicates/);
  refuse(MESSAGE_CODES.CHUNK, Buffer.concat([chunkHead(0, 2, 1), Buffer.alloc(1)]), /codec 2 is unknown/);
  refuse(MESSAGE_CODES.CHUNK, Buffer.concat([chunkHead(0, 0, 5), Buffer.alloc(4)]), /payload is 4 bytes and its rawLength 5/);
  refuse(MESSAGE_CODES.CHUNK, Buffer.concat([chunkHead(0, 1, 0xffff_ffff), Buffer.alloc(4)]), /rawLength 4294967295 is over/);
  // OFFER bases: over the per-item limit, or announced but missing.
  refuse(MESSAGE_CODES.OFFER, Buffer.concat([u32(1), u32(1), Buffer.alloc(32), Buffer.from([MAX_BASES + 1]), Buffer.alloc(32 * (MAX_BASES + 1))]), /item 0 names 5 bases, over the limit of 4/);
  refuse(MESSAGE_CODES.OFFER, Buffer.concat([u32(1), u32(1), Buffer.alloc(32), Buffer.from([2]), Buffer.alloc(40)]), /body truncated at base 1 of item 0/);
  refuse(MESSAGE_CODES.OFFER, Buffer.concat([u32(1), u32(2), Buffer.alloc(32), Buffer.from([0]), Buffer.alloc(32)]), /body truncated: 2 items need at least 66 bytes/);
  // NEED: a "holds the bases" bit for an item not needed.
  refuse(MESSAGE_CODES.NEED, Buffer.concat([u32(1), u32(3), Buffer.from([0b001]), Buffer.from([0b010])]), /bit 1 set for an item that is not needed/);
  refuse(MESSAGE_CODES.NEED, Buffer.concat([u32(1), u32(3), Buffer.from([0b001])]), /body truncated at bases bitmap/);
  // CHUNK_DELTA: base count, lengths and payload.
  const deltaHead = (kind: number, raw: number, bases: number) => Buffer.concat([Buffer.alloc(32), Buffer.from([kind]), u32(raw), Buffer.from([bases]), Buffer.alloc(32 * bases)]);
  refuse(MESSAGE_CODES.CHUNK_DELTA, Buffer.concat([deltaHead(0, 10, 0), Buffer.alloc(4)]), /names 0 bases, must be 1..4/);
  refuse(MESSAGE_CODES.CHUNK_DELTA, Buffer.concat([deltaHead(0, 10, 5), Buffer.alloc(4)]), /names 5 bases, must be 1..4/);
  refuse(MESSAGE_CODES.CHUNK_DELTA, Buffer.concat([deltaHead(0, 0, 1), Buffer.alloc(4)]), /rawLength 0 is outside 1..16777216/);
  refuse(MESSAGE_CODES.CHUNK_DELTA, Buffer.concat([deltaHead(0, 0xffff_ffff, 1), Buffer.alloc(4)]), /rawLength 4294967295 is outside/);
  refuse(MESSAGE_CODES.CHUNK_DELTA, deltaHead(0, 10, 1), /CHUNK_DELTA has an empty payload/);
  refuse(MESSAGE_CODES.CHUNK_DELTA, Buffer.concat([deltaHead(4, 10, 1), Buffer.alloc(4)]), /CHUNK_DELTA kind 4 is not one that replicates/);
  refuse(MESSAGE_CODES.CHUNK_DELTA, Buffer.concat([Buffer.alloc(32), Buffer.from([0]), u32(10), Buffer.from([2]), Buffer.alloc(40)]), /body truncated at base 1/);
  // HOLDINGS: an id both held and retired.
  const idRoot = Buffer.concat([Buffer.from([1, 0x61]), Buffer.alloc(32)]);
  refuse(MESSAGE_CODES.HOLDINGS, Buffer.concat([u32(1), idRoot, u32(1), idRoot]), /not distinct/);
  refuse(MESSAGE_CODES.HOLDINGS, Buffer.concat([u32(1), idRoot]), /body truncated at retired count/);
  const commit = (json: string) => { const r = Buffer.from(json); return Buffer.concat([u32(r.length), r, Buffer.from([0, 0])]); };
  refuse(MESSAGE_CODES.COMMIT, commit('[1,2]'), /must be a JSON object/);
  refuse(MESSAGE_CODES.COMMIT, commit('{"a":'), /not valid JSON/);
  refuse(MESSAGE_CODES.COMMIT, Buffer.concat([u32(70_000), Buffer.alloc(10)]), /record length 70000 is outside 1..65536/);
});

test('encoders refuse what a decoder would refuse', (t) => {
  t.throws(() => encodeMessage({ type: 'HELLO', storeId: 'x'.repeat(65) }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'OFFER', batchId: 1, handles: [], bases: [] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'OFFER', batchId: 1, handles: [Buffer.alloc(31)], bases: [[]] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'OFFER', batchId: 1, handles: [Buffer.alloc(32)], bases: [] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'OFFER', batchId: 1, handles: [Buffer.alloc(32)], bases: [Array.from({ length: MAX_BASES + 1 }, () => Buffer.alloc(32))] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'OFFER', batchId: 1, handles: [Buffer.alloc(32)], bases: [[Buffer.alloc(31)]] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'NEED', batchId: 1, count: 4, needed: [2, 1], withBases: [] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'NEED', batchId: 1, count: 4, needed: [4], withBases: [] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'NEED', batchId: 1, count: 4, needed: [1], withBases: [2] }), { code: 'EINVAL' });
  const delta = { type: 'CHUNK_DELTA' as const, handle: Buffer.alloc(32), kind: ChunkKind.Data, rawLength: 10, bases: [Buffer.alloc(32)], payload: Buffer.alloc(3) };
  t.notThrows(() => encodeMessage(delta));
  t.throws(() => encodeMessage({ ...delta, bases: [] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ ...delta, rawLength: 0 }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ ...delta, payload: Buffer.alloc(0) }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ ...delta, kind: ChunkKind.Snapshot }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'HOLDINGS', snapshots: [{ id: 'a', root: Buffer.alloc(32) }], retired: [{ id: 'a', root: Buffer.alloc(32) }] }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'CHUNK', handle: Buffer.alloc(32), kind: ChunkKind.Tombstone, codec: Codec.Raw, rawLength: 0, payload: Buffer.alloc(0) }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'COMMIT', record: 'null', fingerprint: Buffer.alloc(0) }), { code: 'EINVAL' });
  t.throws(() => encodeMessage({ type: 'HOLDINGS_QUERY', snapshotIds: ['a', 'a'] }), { code: 'EINVAL' });
  // An over-long error message is cut to fit rather than refused: reporting an error must not fail.
  const m = decodeMessage(reframe({ type: 'ERROR', code: 'EIO', message: 'é'.repeat(5000) }));
  t.true(m.type === 'ERROR' && Buffer.byteLength(m.message) <= 4096 && m.message.endsWith('...'));
});

test('an OFFER of the maximum batch fits a frame, and a CHUNK payload is not copied', (t) => {
  const handles = Array.from({ length: MAX_OFFER_HANDLES }, (_, i) => Buffer.alloc(32, i & 0xff));
  // With the most bases on every item, too (the worst case a peer can be sent).
  const bases = handles.map(() => Array.from({ length: MAX_BASES }, () => Buffer.alloc(32, 9)));
  const m = decodeMessage(reframe({ type: 'OFFER', batchId: 7, handles, bases }));
  t.true(m.type === 'OFFER' && m.handles.length === MAX_OFFER_HANDLES && m.bases.every((b) => b.length === MAX_BASES));
  const payload = Buffer.alloc(100, 1);
  const { body } = encodeMessage({ type: 'CHUNK', handle: Buffer.alloc(32), kind: ChunkKind.Data, codec: Codec.Raw, rawLength: 100, payload });
  t.is(body[body.length - 1], payload);
});

// ---------------------------------------------------------------------------------------------
// Frames

function streamOf(messages: Message[]): Buffer {
  return Buffer.concat([PREAMBLE, ...messages.map(messageFrame)]);
}

test('FrameReader gives the same frames fed byte by byte and in random splits', (t) => {
  fc.assert(fc.property(fc.array(messageArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 30 }), (messages, cuts) => {
    const stream = streamOf(messages);
    const whole = new FrameReader().frames(stream);
    t.is(whole.length, messages.length);
    const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
    const split = new FrameReader();
    const got: Frame[] = [];
    let prev = 0;
    for (const p of [...points, stream.length]) {
      got.push(...split.frames(Buffer.from(stream.subarray(prev, p))));
      prev = p;
    }
    split.end();
    t.deepEqual(got, whole);
    t.deepEqual(got.map((f) => decodeMessage(f)), messages);
  }), { numRuns: 300 });
  const stream = streamOf([{ type: 'HELLO', storeId: 'a' }, { type: 'DONE' }, { type: 'COMMITTED', snapshotId: 'abc' }]);
  const r = new FrameReader();
  const got: Frame[] = [];
  for (const b of stream) got.push(...r.frames(Buffer.from([b])));
  t.deepEqual(got, new FrameReader().frames(stream));
});

test('a bad preamble is refused at its first wrong byte; another version is named', (t) => {
  let e = t.throws(() => new FrameReader().frames(Buffer.from('GET / HTTP/1.1\r\n')), { instanceOf: ProtocolError });
  t.regex(e!.message, /does not speak Strata replication \(stream starts with "GET \/ H", expected "STRATAR"\)/);
  e = t.throws(() => new FrameReader().frames(Buffer.from('STRAX')), { instanceOf: ProtocolError });
  t.regex(e!.message, /"STRAX"/);
  // A peer of the protocol before delta chunks (version 1) is named as such.
  e = t.throws(() => new FrameReader().frames(Buffer.from([...Buffer.from('STRATAR'), 1])), { instanceOf: ProtocolError });
  t.regex(e!.message, /version 1; this Strata speaks version 2/);
  t.is(e!.reason, 'EPROTO');
  // After an error the reader stays failed.
  const r = new FrameReader();
  t.throws(() => r.frames(Buffer.from([0])));
  t.throws(() => r.frames(PREAMBLE));
});

test('random garbage after a good preamble is refused, never taken for frames silently', (t) => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 5, maxLength: 200 }), (garbage) => {
    const r = new FrameReader({ maxFrame: 1024 });
    try {
      const frames = r.frames(Buffer.concat([PREAMBLE, Buffer.from(garbage)]));
      r.end();
      // Garbage that happens to frame correctly must still fail message decoding.
      for (const f of frames) decodeMessage(f);
    } catch (e) {
      return isProtocolError(e);
    }
    return true;
  }), { numRuns: 2000 });
  t.pass();
});

test('an oversized declared length is refused from the header alone', (t) => {
  const r = new FrameReader();
  r.push(PREAMBLE);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(MAX_FRAME_BODY + 2);
  const e = t.throws(() => r.frames(header), { instanceOf: ProtocolError });
  t.regex(e!.message, /declares a 16\.0 MiB body, over the 16 MiB limit/);
  t.is(r.buffered, 4, 'nothing beyond the length was needed');
  // Exactly at the limit is fine.
  const ok = new FrameReader({ preamble: false, maxFrame: 10 });
  t.is(ok.frames(encodeFrame(9, Buffer.alloc(10))).length, 1);
  t.throws(() => new FrameReader({ preamble: false, maxFrame: 10 }).frames(encodeFrame(9, Buffer.alloc(11))), { message: /11 bytes body, over the 10 bytes limit/ });
  t.throws(() => new FrameReader({ preamble: false }).frames(Buffer.alloc(4)), { message: /declares length 0/ });
});

test('a stream cut inside the preamble, a header or a body is reported as truncated', (t) => {
  const stream = streamOf([{ type: 'HELLO', storeId: 'store-1' }]);
  for (let n = 1; n < stream.length; n++) {
    if (n === 8) continue; // right after the preamble: a clean end
    const r = new FrameReader();
    r.frames(stream.subarray(0, n));
    const e = t.throws(() => r.end(), { instanceOf: ProtocolError });
    t.is(e!.reason, 'ECLOSED');
    t.regex(e!.message, n < 8 ? /preamble/ : n < 12 ? /frame header/ : /middle of a frame \(\d+ of 13 bytes/);
  }
  const r = new FrameReader();
  r.frames(stream);
  t.notThrows(() => r.end());
});

// ---------------------------------------------------------------------------------------------
// Connections

type Kind = 'tcp' | 'unix';

interface Pair {
  client: FramedConnection;
  server: FramedConnection;
  /** Every byte each side wrote, as the other side received it. */
  wire: { client: Buffer[]; server: Buffer[] };
  address: Address;
}

async function listenOn(t: ExecutionContext, kind: Kind, onConnection: (s: net.Socket) => void): Promise<Address> {
  const address = kind === 'tcp' ? '127.0.0.1:0' : `unix:${path.join(tmpDir(t, 'strata-sock-'), 'r.sock')}`;
  const server = await listen(address, onConnection);
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return serverAddress(server);
}

async function socketPair(t: ExecutionContext, kind: Kind): Promise<{ client: net.Socket; server: net.Socket; address: Address }> {
  let gotServer!: (s: net.Socket) => void;
  const serverSide = new Promise<net.Socket>((resolve) => (gotServer = resolve));
  const address = await listenOn(t, kind, (s) => gotServer(s));
  const client = await connect(address);
  const server = await serverSide;
  t.teardown(() => {
    client.destroy();
    server.destroy();
  });
  return { client, server, address };
}

async function pair(t: ExecutionContext, kind: Kind, opts: { timeoutMs?: number; highWaterMark?: number } = {}): Promise<Pair> {
  const { client, server, address } = await socketPair(t, kind);
  const wire = { client: [] as Buffer[], server: [] as Buffer[] };
  server.on('data', (d: Buffer) => wire.client.push(d));
  client.on('data', (d: Buffer) => wire.server.push(d));
  return {
    client: new FramedConnection(client, opts),
    server: new FramedConnection(server, opts),
    wire,
    address,
  };
}

const SECRET = Buffer.from('0123456789abcdef0123456789abcdef-shared');
const OTHER_SECRET = Buffer.from('fedcba9876543210fedcba9876543210-other!');

/** No 8-byte window of the secret appears in what went over the wire. */
function assertSecretNotOnWire(t: ExecutionContext, wire: Pair['wire'], secret: Buffer): void {
  const all = Buffer.concat([...wire.client, ...wire.server]);
  t.true(all.length > 0);
  for (let i = 0; i + 8 <= secret.length; i++) t.is(all.indexOf(secret.subarray(i, i + 8)), -1, 'secret bytes on the wire');
}

for (const kind of ['tcp', 'unix'] as const) {
  test(`${kind}: the same secret authenticates both ways, then messages flow`, async (t) => {
    const p = await pair(t, kind);
    await Promise.all([authenticate(p.client, SECRET, 'sender'), authenticate(p.server, SECRET, 'receiver')]);
    t.is(p.client.maxFrame, MAX_FRAME_BODY, 'the frame limit is back to normal after authentication');
    t.is(p.server.maxFrame, MAX_FRAME_BODY);
    p.client.sendMessage({ type: 'HELLO', storeId: 'store-a' });
    p.server.sendMessage({ type: 'HELLO', storeId: 'store-b' });
    t.deepEqual(await p.server.expect('HELLO'), { type: 'HELLO', storeId: 'store-a' });
    t.deepEqual(await p.client.expect('HELLO'), { type: 'HELLO', storeId: 'store-b' });
    // A frame far over the handshake limit is fine now.
    const payload = Buffer.alloc(HANDSHAKE_MAX_FRAME_BODY * 8, 7);
    p.client.sendMessage({ type: 'CHUNK', handle: Buffer.alloc(32, 1), kind: ChunkKind.Data, codec: Codec.Raw, rawLength: payload.length, payload });
    const c = await p.server.expect('CHUNK');
    t.true(c.payload.equals(payload));
    p.client.sendMessage({ type: 'DONE' });
    await p.server.expect('DONE');
    p.client.close();
    const e = await t.throwsAsync(p.server.next(), { instanceOf: ProtocolError });
    t.is(e!.reason, 'ECLOSED');
    assertSecretNotOnWire(t, p.wire, SECRET);
  });

  test(`${kind}: different secrets fail with EAUTH on both sides`, async (t) => {
    const p = await pair(t, kind);
    const [c, s] = await Promise.allSettled([authenticate(p.client, SECRET, 'sender'), authenticate(p.server, OTHER_SECRET, 'receiver')]);
    t.is(c.status, 'rejected');
    t.is(s.status, 'rejected');
    const ce = (c as PromiseRejectedResult).reason as ProtocolError;
    const se = (s as PromiseRejectedResult).reason as ProtocolError;
    t.true(isProtocolError(ce, 'EAUTH'), String(ce));
    t.true(isProtocolError(se, 'EAUTH'), String(se));
    t.is(se.code, 'EPERM');
    t.regex(se.message, /authentication failed: .* does not hold our shared secret/);
    t.true(ce.fromPeer);
    t.regex(ce.message, /reports EAUTH: authentication failed/);
    // Nothing more can be done on either connection, and both sockets close.
    t.throws(() => p.client.sendMessage({ type: 'DONE' }), { instanceOf: ProtocolError });
    await t.throwsAsync(p.server.next(), { instanceOf: ProtocolError });
    await Promise.all([p.client.whenClosed(), p.server.whenClosed()]);
    assertSecretNotOnWire(t, p.wire, SECRET);
    assertSecretNotOnWire(t, p.wire, OTHER_SECRET);
  });
}

test('dial and accept authenticate over a real socket', async (t) => {
  let accepted!: Promise<FramedConnection>;
  const address = await listenOn(t, 'tcp', (s) => { accepted = accept(s, SECRET, 'receiver'); });
  const client = await dial(formatAddress(address), SECRET, 'sender');
  const server = await accepted;
  client.sendMessage({ type: 'HOLDINGS_QUERY', snapshotIds: ['s1', 's2'] });
  t.deepEqual((await server.expect('HOLDINGS_QUERY')).snapshotIds, ['s1', 's2']);
  client.close();
  server.close();
});

test('two senders are told apart from a wrong secret', async (t) => {
  const p = await pair(t, 'tcp');
  const r = await Promise.allSettled([authenticate(p.client, SECRET, 'sender'), authenticate(p.server, SECRET, 'sender')]);
  for (const x of r) {
    t.is(x.status, 'rejected');
    t.regex(String((x as PromiseRejectedResult).reason.message), /act as senders/);
  }
});

test('a proof reflected back, or made for the other direction, is refused', async (t) => {
  // A fake receiver without the secret replays the sender's own proof.
  const { client, server } = await socketPair(t, 'tcp');
  const conn = new FramedConnection(client);
  const auth = authenticate(conn, SECRET, 'sender');
  const fake = new FramedConnection(server);
  const ch = await fake.expect('CHALLENGE');
  fake.sendMessage({ type: 'CHALLENGE', role: 'receiver', nonce: Buffer.alloc(32, 9) });
  const { hmac } = await fake.expect('PROOF');
  t.true(hmac.equals(proofOf(SECRET, 'sender', Buffer.alloc(32, 9), ch.nonce)));
  fake.sendMessage({ type: 'PROOF', hmac });
  const e = await t.throwsAsync(auth, { instanceOf: ProtocolError });
  t.is(e!.reason, 'EAUTH');
  const reply = await fake.expect('ERROR');
  t.is(reply.type === 'ERROR' && reply.code, 'EAUTH');
});

test('a receiver gives no proof to a peer that has not proved itself', async (t) => {
  const { client, server } = await socketPair(t, 'tcp');
  const auth = authenticate(new FramedConnection(server), SECRET, 'receiver');
  const fake = new FramedConnection(client);
  await fake.expect('CHALLENGE');
  fake.sendMessage({ type: 'CHALLENGE', role: 'sender', nonce: Buffer.alloc(32, 1) });
  fake.sendMessage({ type: 'PROOF', hmac: Buffer.alloc(32) });
  const reply = await fake.nextMessage();
  t.is(reply.type, 'ERROR', 'the answer to a bad proof is an error, not a proof');
  await t.throwsAsync(auth, { message: /authentication failed/ });
});

test('before authentication, frames over the handshake limit are refused from the header', async (t) => {
  const { client, server } = await socketPair(t, 'tcp');
  const auth = authenticate(new FramedConnection(server), SECRET, 'receiver');
  client.write(PREAMBLE);
  const header = Buffer.alloc(5);
  header.writeUInt32BE(HANDSHAKE_MAX_FRAME_BODY + 2);
  header[4] = MESSAGE_CODES.CHALLENGE;
  client.write(header); // no body follows: the refusal must not wait for one
  const e = await t.throwsAsync(auth, { instanceOf: ProtocolError });
  t.regex(e!.message, /over the 8192 bytes limit/);
});

test('garbage from a peer is refused with a clear error, and the peer is told', async (t) => {
  const { client, server } = await socketPair(t, 'unix');
  const conn = new FramedConnection(server);
  const received: Buffer[] = [];
  client.on('data', (d: Buffer) => received.push(d));
  client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const e = await t.throwsAsync(conn.next(), { instanceOf: ProtocolError });
  t.regex(e!.message, /does not speak Strata replication/);
  await new Promise<void>((resolve) => client.once('close', () => resolve()));
  const back = new FrameReader().frames(Buffer.concat(received));
  const m = decodeMessage(back[0]);
  t.is(m.type, 'ERROR');
  t.regex(m.type === 'ERROR' ? m.message : '', /does not speak Strata replication/);
});

test('a peer that closes in the middle of a frame is reported as truncation', async (t) => {
  const { client, server } = await socketPair(t, 'tcp');
  const conn = new FramedConnection(server);
  const frame = messageFrame({ type: 'HELLO', storeId: 'store-1' });
  client.end(Buffer.concat([PREAMBLE, messageFrame({ type: 'DONE' }), frame.subarray(0, 9)]));
  t.is((await conn.nextMessage()).type, 'DONE', 'frames before the cut are still delivered');
  const e = await t.throwsAsync(conn.next(), { instanceOf: ProtocolError });
  t.is(e!.reason, 'ECLOSED');
  t.regex(e!.message, /closed in the middle of a frame \(9 of 13 bytes received\)/);
});

test('a silent peer times out with a clear error instead of hanging', async (t) => {
  const { client, server } = await socketPair(t, 'tcp');
  const conn = new FramedConnection(server, { timeoutMs: 200 });
  const started = Date.now();
  const e = await t.throwsAsync(authenticate(conn, SECRET, 'receiver'), { instanceOf: ProtocolError });
  t.is(e!.reason, 'ETIMEDOUT');
  t.regex(e!.message, /no message from peer 127\.0\.0\.1:\d+ within 0\.2 s/);
  t.true(Date.now() - started < 5000);
  client.destroy();
  // A peer that sends half a frame and stops also times out.
  const p = await socketPair(t, 'unix');
  const c2 = new FramedConnection(p.server, { timeoutMs: 200 });
  p.client.write(Buffer.concat([PREAMBLE, messageFrame({ type: 'HELLO', storeId: 'x' }).subarray(0, 6)]));
  await t.throwsAsync(c2.next(), { message: /within 0\.2 s/ });
});

test('a peer that stops reading makes drain() time out', async (t) => {
  const { client, server } = await socketPair(t, 'unix');
  const conn = new FramedConnection(client, { timeoutMs: 300 });
  server.pause(); // never reads
  const chunk = Buffer.alloc(1024 * 1024);
  let sent = 0;
  while (conn.send(0x22, chunk) && sent < 512) sent++;
  t.true(sent < 512, 'backpressure was reported');
  const e = await t.throwsAsync(conn.drain(), { instanceOf: ProtocolError });
  t.is(e!.reason, 'ETIMEDOUT');
  t.regex(e!.message, /has read nothing for 0\.3 s/);
});

test('an ERROR from the peer surfaces with its code', async (t) => {
  const p = await pair(t, 'tcp');
  await Promise.all([authenticate(p.client, SECRET, 'sender'), authenticate(p.server, SECRET, 'receiver')]);
  p.client.sendMessage({ type: 'OFFER', batchId: 1, handles: [Buffer.alloc(32)], bases: [[]] });
  await p.server.expect('OFFER');
  p.server.abort(new StrataError('ENOSPC', 'the store is full'));
  const e = await t.throwsAsync(p.client.expect('NEED'), { instanceOf: ProtocolError });
  t.true(e!.fromPeer);
  t.is(e!.code, 'ENOSPC');
  t.regex(e!.message, /peer 127\.0\.0\.1:\d+ reports ENOSPC: the store is full/);
  // Later calls on either side fail with the same story rather than a bare "closed".
  await t.throwsAsync(p.client.next(), { message: /reports ENOSPC/ });
  t.throws(() => p.server.sendMessage({ type: 'DONE' }), { code: 'ENOSPC' });
});

test('an unexpected or malformed message aborts with EPROTO and tells the peer', async (t) => {
  const p = await pair(t, 'tcp');
  p.client.sendMessage({ type: 'DONE' });
  await t.throwsAsync(p.server.expect('HELLO'), { message: /expected HELLO from .* got DONE/ });
  const m = await p.client.nextMessage();
  t.true(m.type === 'ERROR' && m.code === 'EPROTO' && /expected HELLO/.test(m.message));
  const q = await pair(t, 'tcp');
  q.client.send(MESSAGE_CODES.HELLO, Buffer.from([2, 0x61]));
  await t.throwsAsync(q.server.nextMessage(), { message: /HELLO: body truncated at storeId/ });
});

test('offers, answers and chunks pipeline: the sender never waits per batch', async (t) => {
  const p = await pair(t, 'unix', { highWaterMark: 64 * 1024 });
  await Promise.all([authenticate(p.client, SECRET, 'sender'), authenticate(p.server, SECRET, 'receiver')]);
  const batches = 200;
  const handles = (b: number) => Array.from({ length: 100 }, (_, i) => Buffer.alloc(32, (b + i) & 0xff));
  // The receiver answers each OFFER with a NEED for its even handles and then takes the chunks.
  const receiver = (async () => {
    let chunks = 0;
    let offers = 0;
    for (;;) {
      const m = await p.server.expect(['OFFER', 'CHUNK', 'DONE']);
      if (m.type === 'DONE') return { chunks, offers };
      if (m.type === 'CHUNK') chunks++;
      else {
        offers++;
        p.server.sendMessage({ type: 'NEED', batchId: m.batchId, count: m.handles.length, needed: m.handles.map((_, i) => i).filter((i) => i % 2 === 0), withBases: [] });
      }
    }
  })();
  // The sender writes every OFFER up front, and chunks as NEEDs come back.
  let maxInFlight = 0;
  let answered = 0;
  const readNeeds = (async () => {
    for (let b = 0; b < batches; b++) {
      const need = await p.client.expect('NEED');
      answered++;
      for (const i of need.needed) {
        const payload = Buffer.alloc(4096, i);
        if (!p.client.sendMessage({ type: 'CHUNK', handle: handles(need.batchId)[i], kind: ChunkKind.Data, codec: Codec.Raw, rawLength: payload.length, payload })) {
          await p.client.drain();
        }
      }
    }
  })();
  for (let b = 0; b < batches; b++) {
    if (!p.client.sendMessage({ type: 'OFFER', batchId: b, handles: handles(b), bases: handles(b).map(() => []) })) await p.client.drain();
    maxInFlight = Math.max(maxInFlight, b + 1 - answered);
  }
  await readNeeds;
  p.client.sendMessage({ type: 'DONE' });
  t.deepEqual(await receiver, { chunks: batches * 50, offers: batches });
  t.true(maxInFlight > 1, `offers were in flight together (max ${maxInFlight})`);
});

test('a receiver that does not read pauses its socket instead of buffering without bound', async (t) => {
  const p = await pair(t, 'tcp', { highWaterMark: 256 * 1024 });
  const payload = Buffer.alloc(64 * 1024, 3);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let sent = 0;
  while (!p.server.socket.isPaused() && sent < 4000) {
    sent++;
    if (!p.client.send(MESSAGE_CODES.CHUNK, payload)) await Promise.race([p.client.drain(), sleep(50)]);
  }
  t.true(p.server.socket.isPaused(), 'the receiving socket is paused');
  await sleep(200);
  const unread = p.server.socket.readableLength;
  t.true(unread < 4 * 1024 * 1024, `the receiver holds little in Node's buffers (${unread} bytes)`);
  // Reading everything resumes the flow and every frame arrives intact.
  for (let i = 0; i < sent; i++) {
    const f = await p.server.next();
    t.is(f.body.length, payload.length);
  }
  t.false(p.server.socket.isPaused());
});

// ---------------------------------------------------------------------------------------------
// Addresses and key files

test('parseAddress reads HOST:PORT, [v6]:PORT, a bare PORT and unix:PATH', (t) => {
  t.deepEqual(parseAddress('peer.example:7070'), { kind: 'tcp', host: 'peer.example', port: 7070 });
  t.deepEqual(parseAddress('10.0.0.1:1'), { kind: 'tcp', host: '10.0.0.1', port: 1 });
  t.deepEqual(parseAddress('[::1]:7070'), { kind: 'tcp', host: '::1', port: 7070 });
  t.deepEqual(parseAddress('7070'), { kind: 'tcp', host: '127.0.0.1', port: 7070 });
  t.deepEqual(parseAddress('unix:/run/strata/r.sock'), { kind: 'unix', path: '/run/strata/r.sock' });
  t.is(parseAddress('unix:rel.sock').kind, 'unix');
  t.true(path.isAbsolute((parseAddress('unix:rel.sock') as { path: string }).path));
  for (const a of ['[::1]:7070', 'h:1', 'unix:/x/y']) t.is(formatAddress(parseAddress(a)), a);
  for (const bad of ['', 'host:', 'host:65536', 'host:07', ':80', '::1:80', '[zz]:1', 'a b:1', 'unix:', `unix:/${'x'.repeat(120)}`, 'host:-1']) {
    t.throws(() => parseAddress(bad), { code: 'EINVAL', message: /bad replication address/ }, bad);
  }
});

test('listen on a Unix socket: owner-only, replaces a stale socket, refuses a live one or a plain file', async (t) => {
  const dir = tmpDir(t);
  const sock = path.join(dir, 'r.sock');
  // A stale socket: a listener killed without cleaning up leaves the file behind.
  const stale = net.createServer();
  await new Promise<void>((r) => stale.listen(sock, () => r()));
  // Closing the handle would unlink the file; copy it aside first, then restore it after close.
  const keep = path.join(dir, 'keep.sock');
  fs.linkSync(sock, keep);
  await new Promise<void>((r) => stale.close(() => r()));
  fs.renameSync(keep, sock);
  t.true(fs.lstatSync(sock).isSocket());
  const server = await listen(`unix:${sock}`, (s) => s.destroy());
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  t.is(fs.statSync(sock).mode & 0o777, 0o600);
  await t.throwsAsync(listen(`unix:${sock}`, () => {}), { code: 'EEXIST', message: /another process is listening/ });
  const plain = path.join(dir, 'plain');
  fs.writeFileSync(plain, 'x');
  await t.throwsAsync(listen(`unix:${plain}`, () => {}), { code: 'EEXIST', message: /not a socket/ });
  t.true(fs.existsSync(plain), 'a plain file is never removed');
});

test('connect names the address when nobody listens', async (t) => {
  const dir = tmpDir(t);
  await t.throwsAsync(connect(`unix:${path.join(dir, 'none.sock')}`), { code: 'ENOENT', message: /cannot connect to unix:.*none\.sock: no such socket/ });
  const free = await listen('127.0.0.1:0', () => {});
  const port = (serverAddress(free) as { port: number }).port;
  await new Promise<void>((r) => free.close(() => r()));
  await t.throwsAsync(connect(`127.0.0.1:${port}`), { message: new RegExp(`cannot connect to 127\\.0\\.0\\.1:${port}: nothing is listening`) });
});

test('key files: 0600 accepted, group/other access refused, short or empty secrets refused', (t) => {
  const dir = tmpDir(t);
  const key = path.join(dir, 'peer.key');
  const secret = generateKeyFile(key);
  t.is(fs.statSync(key).mode & 0o777, 0o600);
  t.is(secret.length, 64);
  t.deepEqual(readKeyFile(key), secret);
  t.throws(() => generateKeyFile(key), { code: 'EEXIST' });
  fs.chmodSync(key, 0o644);
  t.throws(() => readKeyFile(key), { code: 'EPERM', message: /accessible by group or others \(mode 0644\); make it private with: chmod 600/ });
  fs.chmodSync(key, 0o620);
  t.throws(() => readKeyFile(key), { code: 'EPERM' });
  fs.chmodSync(key, 0o400);
  t.deepEqual(readKeyFile(key), secret);
  const write = (name: string, content: string | Buffer) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, content, { mode: 0o600 });
    return f;
  };
  t.throws(() => readKeyFile(write('empty', '')), { code: 'EINVAL', message: /no secret/ });
  t.throws(() => readKeyFile(write('nl', '\n')), { code: 'EINVAL', message: /no secret/ });
  t.throws(() => readKeyFile(write('short', 'fifteen-bytes!!\n')), { code: 'EINVAL', message: /only 15 bytes; it needs at least 16/ });
  t.deepEqual(readKeyFile(write('crlf', 'sixteen-bytes!!!\r\n')), Buffer.from('sixteen-bytes!!!'));
  t.deepEqual(readKeyFile(write('raw', Buffer.alloc(20, 0xfe))), Buffer.alloc(20, 0xfe));
  t.throws(() => readKeyFile(write('big', Buffer.alloc(10_000, 0x61))), { code: 'EINVAL' });
  t.throws(() => readKeyFile(path.join(dir, 'missing')), { code: 'ENOENT', message: /does not exist/ });
  t.throws(() => readKeyFile(dir), { code: 'EINVAL', message: /not a regular file/ });
});
