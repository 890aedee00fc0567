// Worker thread of CompressorPool: compresses batches of jobs from its port with codec.ts's rules
// and replies on the same port, bumping a shared counter after each reply so that a main thread
// sleeping in Atomics.wait (it never runs its event loop while it waits) wakes up.
import { workerData, type MessagePort } from 'node:worker_threads';
import { Codec } from '../types.js';
import { compressChunk } from './codec.js';
import {
  SLOT_DEAD, SLOT_READY, SLOT_REPLIES, type CompressBatch, type CompressItem, type CompressReply, type CompressWorkerData,
} from './compressor-pool.js';

export type Compress = (raw: Buffer) => { codec: Codec; payload: Buffer };

/**
 * Answers every batch arriving on `port` until the thread ends; `compress` is replaceable so tests
 * can inject faults. Raises SLOT_DEAD when the thread exits for any reason JS still sees (a crash too).
 */
export function serveCompression(port: MessagePort, signal: SharedArrayBuffer, compress: Compress = compressChunk): void {
  const flags = new Int32Array(signal);
  process.on('exit', () => {
    Atomics.store(flags, SLOT_DEAD, 1);
    Atomics.notify(flags, SLOT_REPLIES);
  });
  Atomics.store(flags, SLOT_READY, 1);
  port.on('message', (batch: CompressBatch) => {
    const items: CompressItem[] = [];
    const payloads: Buffer[] = [];
    batch.lengths.forEach((length, i) => {
      const raw = Buffer.from(batch.data.buffer, batch.data.byteOffset + batch.offsets[i], length);
      try {
        const { codec, payload } = compress(raw);
        if (codec === Codec.Raw) {
          items.push({ codec });
        } else {
          items.push({ codec: Codec.Zstd, length: payload.length });
          payloads.push(payload);
        }
      } catch (e) {
        items.push({ error: e instanceof Error ? e.message : String(e) });
      }
    });
    // One exact-size buffer, transferred rather than cloned.
    const all = Buffer.concat(payloads);
    const own = all.length === 0 ? new ArrayBuffer(0)
      : all.byteOffset === 0 && all.buffer.byteLength === all.length
      ? all.buffer as ArrayBuffer
      : all.buffer.slice(all.byteOffset, all.byteOffset + all.length) as ArrayBuffer;
    const reply: CompressReply = { first: batch.first, items, payloads: new Uint8Array(own) };
    port.postMessage(reply, [own]);
    Atomics.add(flags, SLOT_REPLIES, 1);
    Atomics.notify(flags, SLOT_REPLIES);
  });
}

// Serve only when started as the pool's script; a test's fault-injecting script imports
// serveCompression and calls it itself.
const data = workerData as CompressWorkerData | null;
if (data?.entry === import.meta.url) serveCompression(data.port, data.signal);
