// Worker thread of DecodePool: turns container bytes into verified raw chunks (zstd, then BLAKE3
// against each chunk's handle) and sends them back in one transferred buffer.
import { parentPort } from 'node:worker_threads';
import { decodeBatch, type DecodeRequest } from './decode-pool.js';

parentPort?.on('message', (req: DecodeRequest) => {
  const reply = decodeBatch(req);
  // Both buffers go back: the caller reuses them.
  const transfer = [reply.out, ...(reply.data.buffer !== reply.out ? [reply.data.buffer as ArrayBuffer] : [])];
  parentPort?.postMessage(reply, transfer);
});
