// Worker thread of ChunkOffload: cuts streams of bytes into chunks (FastCDC or fixed blocks) and
// hashes them, so the thread answering FUSE only looks chunks up and stores the new ones. The bytes
// arrive in shared memory and stay where they are: only lengths and handles travel back.
import { parentPort } from 'node:worker_threads';
import type { Chunker } from '../types.js';
import { createChunker } from './chunker.js';
import type { OffloadPiece, OffloadReply } from './chunk-offload.js';
import { hashBytes } from './hash.js';

const streams = new Map<number, Chunker>();

parentPort?.on('message', (m: OffloadPiece) => {
  let reply: OffloadReply;
  try {
    let chunker = streams.get(m.stream);
    if (!chunker) {
      chunker = createChunker(m.mode, m.params);
      streams.set(m.stream, chunker);
    }
    const chunks = chunker.write(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
    if (m.end) {
      chunks.push(...chunker.end());
      streams.delete(m.stream);
    }
    const hashes = new Uint8Array(32 * chunks.length);
    chunks.forEach((c, i) => hashes.set(hashBytes(c), 32 * i));
    reply = { stream: m.stream, end: m.end, lengths: chunks.map((c) => c.length), hashes };
    parentPort!.postMessage(reply, [hashes.buffer as ArrayBuffer]);
  } catch (e) {
    streams.delete(m.stream);
    reply = { stream: m.stream, end: true, lengths: [], hashes: new Uint8Array(0), error: e instanceof Error ? e.message : String(e) };
    parentPort!.postMessage(reply);
  }
});
