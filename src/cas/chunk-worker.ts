// Worker thread of ChunkOffload: cuts streams of bytes into chunks (FastCDC or fixed blocks) and
// hashes them, so the thread answering FUSE only looks chunks up and stores the new ones. The bytes
// arrive in shared memory and stay where they are: only lengths and handles travel back.
import { parentPort } from 'node:worker_threads';
import type { Chunker } from '../types.js';
import { createChunker } from './chunker.js';
import type { OffloadPiece, OffloadReply } from './chunk-offload.js';
import { hashBytes } from './hash.js';

const streams = new Map<number, Chunker>();
/**
 * Each piece is copied out of shared memory before it is cut: V8's loads from a SharedArrayBuffer
 * are slower in FastCDC's loop, and the memcpy (fill) costs less than the difference (measured
 * ~280 vs ~400 ms of CDC per 512 MiB). Reused: the chunker keeps nothing of its input after a call.
 */
let scratch = Buffer.allocUnsafeSlow(1024 * 1024);

parentPort?.on('message', (m: OffloadPiece) => {
  let reply: OffloadReply;
  try {
    let chunker = streams.get(m.stream);
    if (!chunker) {
      chunker = createChunker(m.mode, m.params);
      streams.set(m.stream, chunker);
    }
    // Chunks are hashed where they lie (in the shared piece or the chunker's buffer): copying each
    // out, as write() does, cost as much as cutting them.
    const lengths: number[] = [];
    const digests: Buffer[] = [];
    const emit = (c: Buffer) => {
      lengths.push(c.length);
      digests.push(hashBytes(c));
    };
    const shared = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    if (scratch.length < shared.length) scratch = Buffer.allocUnsafeSlow(shared.length);
    if (shared.length > 0) scratch.fill(shared, 0, shared.length);
    const data = scratch.subarray(0, shared.length);
    if (chunker.scan) chunker.scan(data, emit);
    else chunker.write(data).forEach(emit);
    if (m.end) {
      if (chunker.finish) chunker.finish(emit);
      else chunker.end().forEach(emit);
      streams.delete(m.stream);
    }
    const hashes = new Uint8Array(32 * digests.length);
    for (let i = 0; i < digests.length; i++) hashes.set(digests[i], 32 * i);
    reply = { stream: m.stream, end: m.end, lengths, hashes };
    parentPort!.postMessage(reply, [hashes.buffer as ArrayBuffer]);
  } catch (e) {
    streams.delete(m.stream);
    reply = { stream: m.stream, end: true, lengths: [], hashes: new Uint8Array(0), error: e instanceof Error ? e.message : String(e) };
    parentPort!.postMessage(reply);
  }
});
