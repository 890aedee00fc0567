// Worker thread of CompressorPool: compresses jobs from its port with codec.ts's rules and replies
// on the same port, bumping a shared counter after each reply so a main thread sleeping in
// Atomics.wait (it never runs its event loop while it waits) wakes up.
import { workerData, type MessagePort } from 'node:worker_threads';
import { Codec } from '../types.js';
import { compressChunk } from './codec.js';
import {
  SLOT_DEAD, SLOT_REPLIES, type CompressJob, type CompressReply, type CompressWorkerData,
} from './compressor-pool.js';

type Compress = (raw: Buffer) => { codec: Codec; payload: Buffer };

/**
 * Answers every job arriving on `port` until the thread ends; `compress` is replaceable so tests can
 * inject faults. Raises SLOT_DEAD when the thread exits for any reason JS still sees (a crash included).
 */
export function serveCompression(port: MessagePort, signal: SharedArrayBuffer, compress: Compress = compressChunk): void {
  const flags = new Int32Array(signal);
  const wake = () => Atomics.notify(flags, SLOT_REPLIES);
  process.on('exit', () => {
    Atomics.store(flags, SLOT_DEAD, 1);
    wake();
  });
  port.on('message', (job: CompressJob) => {
    let reply: CompressReply;
    const transfer: ArrayBuffer[] = [];
    try {
      const { codec, payload } = compress(Buffer.from(job.raw.buffer, job.raw.byteOffset, job.raw.byteLength));
      if (codec === Codec.Raw) {
        reply = { seq: job.seq, codec, payload: null };
      } else {
        // Transfer an exact-size buffer: small Buffers live in a shared pool that must not move.
        const own = payload.byteOffset === 0 && payload.buffer.byteLength === payload.length
          ? payload.buffer as ArrayBuffer
          : payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.length) as ArrayBuffer;
        reply = { seq: job.seq, codec: Codec.Zstd, payload: new Uint8Array(own) };
        transfer.push(own);
      }
    } catch (e) {
      reply = { seq: job.seq, error: e instanceof Error ? e.message : String(e) };
    }
    port.postMessage(reply, transfer);
    Atomics.add(flags, SLOT_REPLIES, 1);
    wake();
  });
}

// Serve only when started as the pool's script; a test's fault-injecting script imports
// serveCompression and calls it itself.
const data = workerData as CompressWorkerData | null;
if (data?.entry === import.meta.url) serveCompression(data.port, data.signal);
