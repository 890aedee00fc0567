// Worker thread of DecodePool: turns container bytes into verified raw chunks (zstd, then BLAKE3
// against each chunk's handle) and sends them back in one buffer.
import { parentPort } from 'node:worker_threads';
import { isShared, transferList } from './buffer-pool.js';
import { decodeBatch, type DecodeReply, type DecodeRequest } from './decode-pool.js';

parentPort?.on('message', (req: DecodeRequest) => {
  const { id, out, data, at, errors } = decodeBatch(req);
  // Both buffers go back for the caller to reuse: unshared ones transferred, shared ones left out
  // of the reply (the caller holds the same memory, and a new object for it would count as new
  // external memory to V8).
  const reply: DecodeReply = {
    id, at, errors,
    out: out && !isShared(out) ? out : undefined,
    data: data && !isShared(data.buffer) ? data : undefined,
  };
  parentPort?.postMessage(reply, transferList(reply.out, reply.data?.buffer, at.buffer));
});
