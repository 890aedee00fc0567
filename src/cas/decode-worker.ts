// Worker thread of DecodePool: turns container bytes into verified raw chunks (zstd, then BLAKE3
// against each chunk's handle) and sends them back in one buffer.
import { parentPort } from 'node:worker_threads';
import { decodeBatch, isShared, type DecodeReply, type DecodeRequest } from './decode-pool.js';

parentPort?.on('message', (req: DecodeRequest) => {
  const reply: DecodeReply = decodeBatch(req);
  // Both buffers go back, for the caller to reuse: unshared ones transferred, shared ones left
  // out of the reply (the caller holds the same memory).
  const transfer: ArrayBuffer[] = [];
  if (reply.out && isShared(reply.out)) delete reply.out;
  else if (reply.out) transfer.push(reply.out);
  if (reply.data && isShared(reply.data.buffer)) delete reply.data;
  else if (reply.data && !transfer.includes(reply.data.buffer as ArrayBuffer)) transfer.push(reply.data.buffer as ArrayBuffer);
  parentPort?.postMessage(reply, transfer);
});
