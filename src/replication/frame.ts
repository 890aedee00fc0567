// Replication wire format, layer 1: the byte stream of one connection cut into frames.
//
// Protocol (version 2: delta chunks, retired snapshots). All integers are big-endian.
//
//   Each side first sends an 8-byte preamble:  "STRATAR" (ASCII) | u8 protocol version (= 2)
//   then frames, back to back:                 u32 length | u8 type | body (length - 1 bytes)
//
// `length` counts the type byte and the body, so it is at least 1. A reader refuses a frame whose
// body would exceed its limit (MAX_FRAME_BODY, 16 MiB, by default; HANDSHAKE_MAX_FRAME_BODY until
// the peer has authenticated) as soon as the 4 length bytes have arrived, so a hostile length never
// makes it buffer or allocate the body. The preamble is checked byte by byte, so a stream that is
// not Strata replication (an HTTP request, random bytes) is refused at its first wrong byte, and a
// peer speaking another protocol version is named as such rather than failing later on a frame.
//
// The preamble is sent by both sides without waiting for the other's, so it costs no round trip.
// Frame types and bodies are defined in messages.ts; the handshake in auth.ts; connection.ts runs
// this over a socket with timeouts and backpressure.
//
// Conversation (S = sender, R = receiver; S usually connects, R listens):
//   S,R  preamble
//   S,R  CHALLENGE {role, nonce}                      both at once
//   S    PROOF                                        the sender proves first, so a listener never
//   R    PROOF  (or ERROR EAUTH and close)            hands an HMAC to a peer that has not proved itself
//   S    AUTH_OK (or ERROR EAUTH and close)
//   S,R  HELLO {storeId}
//   S    HOLDINGS_QUERY → R HOLDINGS                  which snapshots the receiver already has (or
//                                                     removed by retention: not sent again unless named)
//   S    OFFER(batch) … → R NEED(batch) …             pipelined: many OFFERs in flight, no per-batch wait;
//                                                     an offered item names its delta bases, the NEED says
//                                                     which needed items' bases the receiver holds
//   S    CHUNK | CHUNK_DELTA …                        the needed chunks as stored (compressed), or as a
//                                                     delta against bases the receiver holds when smaller
//   S    COMMIT → R COMMITTED                         chunks first, snapshot commit last
//   S    DONE, then both close
// Either side may send ERROR {code, message} at any time and close; the other reports it.

import { StrataError, type ErrorCode } from '../errors.js';

export const PREAMBLE_MAGIC = Buffer.from('STRATAR', 'ascii');
export const PROTOCOL_VERSION = 2;
export const PREAMBLE_BYTES = PREAMBLE_MAGIC.length + 1;
/** u32 length + u8 type. */
export const FRAME_HEADER_BYTES = 5;
/** Largest frame body accepted after authentication (a chunk is at most a few hundred KiB). */
export const MAX_FRAME_BODY = 16 * 1024 * 1024;
/** Largest frame body accepted from a peer that has not authenticated yet. */
export const HANDSHAKE_MAX_FRAME_BODY = 8 * 1024;

/** The preamble this side sends. */
export const PREAMBLE = Buffer.concat([PREAMBLE_MAGIC, Buffer.from([PROTOCOL_VERSION])]);

/** What went wrong on the wire. Strata error codes also travel (a peer's ENOSPC stays ENOSPC). */
export type WireFault =
  | 'EPROTO' // malformed or unexpected bytes: bad preamble or version, oversized frame, bad message
  | 'EAUTH' // the shared secrets differ (or someone without it tried)
  | 'ETIMEDOUT' // the peer said nothing (or read nothing) for too long
  | 'ECLOSED'; // the connection ended or broke, possibly in the middle of a frame
export type WireReason = WireFault | ErrorCode;

const FAULT_CODES: Record<WireFault, ErrorCode> = { EPROTO: 'EINVAL', EAUTH: 'EPERM', ETIMEDOUT: 'EIO', ECLOSED: 'EIO' };
const WIRE_FAULTS = new Set<string>(Object.keys(FAULT_CODES));
export const isWireFault = (s: string): s is WireFault => WIRE_FAULTS.has(s);

/**
 * A replication failure. `reason` names it precisely (EAUTH, EPROTO, ... or a Strata error code
 * reported by the peer); `code` is the nearest Strata error code, for layers that only know those.
 * `fromPeer` is true when the peer reported the error (an ERROR message) rather than this side
 * detecting it.
 */
export class ProtocolError extends StrataError {
  readonly reason: WireReason;
  readonly fromPeer: boolean;
  constructor(reason: WireReason, message: string, options?: { cause?: unknown; fromPeer?: boolean }) {
    super(isWireFault(reason) ? FAULT_CODES[reason] : reason, message, options);
    this.name = 'ProtocolError';
    this.reason = reason;
    this.fromPeer = options?.fromPeer ?? false;
  }
}

export const protocolError = (message: string) => new ProtocolError('EPROTO', message);

export const isProtocolError = (e: unknown, reason?: WireReason): e is ProtocolError =>
  e instanceof ProtocolError && (reason === undefined || e.reason === reason);

export interface Frame {
  type: number;
  /** May share memory with the socket's buffers; never reused by the reader. */
  body: Buffer;
}

const U32_MAX = 0xffff_ffff;

/** The 5-byte header of a frame of `type` with a body of `bodyLength` bytes. */
export function frameHeader(type: number, bodyLength: number): Buffer {
  if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new StrataError('EINVAL', `frame type ${type} is not a byte`);
  if (!Number.isSafeInteger(bodyLength) || bodyLength < 0 || bodyLength + 1 > U32_MAX) {
    throw new StrataError('EINVAL', `frame body of ${bodyLength} bytes cannot be framed`);
  }
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h.writeUInt32BE(bodyLength + 1, 0);
  h[4] = type;
  return h;
}

/** One whole frame (header and body) in a single buffer. */
export function encodeFrame(type: number, body: Buffer | readonly Buffer[]): Buffer {
  const parts = Buffer.isBuffer(body) ? [body] : body;
  const length = parts.reduce((n, p) => n + p.length, 0);
  return Buffer.concat([frameHeader(type, length), ...parts], FRAME_HEADER_BYTES + length);
}

const mib = (n: number) => (n >= 1024 * 1024 ? `${(n / (1024 * 1024)).toFixed(n % (1024 * 1024) ? 1 : 0)} MiB` : `${n} bytes`);

function describeBytes(b: Buffer): string {
  const printable = [...b].every((c) => c >= 0x20 && c < 0x7f);
  return printable ? JSON.stringify(b.toString('latin1')) : `0x${b.toString('hex')}`;
}

/**
 * Incremental frame parser. push() the bytes as they arrive, then read() complete frames one at a
 * time. Parsing is lazy so the size limit in force when a frame is read is the one applied (the
 * limit rises after authentication). Errors are ProtocolErrors; after one, the reader is unusable.
 */
export class FrameReader {
  /** Largest body accepted; checked against each frame's declared length before its body arrives. */
  maxFrame: number;
  private pieces: Buffer[] = [];
  /** Bytes of pieces[0] already consumed. */
  private head = 0;
  private total = 0;
  private preambleDone: boolean;
  private failed: ProtocolError | null = null;
  private consumed = 0;

  constructor(opts: { maxFrame?: number; preamble?: boolean } = {}) {
    this.maxFrame = opts.maxFrame ?? MAX_FRAME_BODY;
    this.preambleDone = opts.preamble === false;
  }

  /** Bytes received but not yet returned as frames. */
  get buffered(): number {
    return this.total;
  }

  /** Adds received bytes. The reader keeps `data` (no copy); the caller must not modify it afterwards. */
  push(data: Buffer): void {
    if (data.length === 0) return;
    this.pieces.push(data);
    this.total += data.length;
  }

  /**
   * True when read() would return a frame. Validates whatever has arrived (preamble, the next
   * frame's length) and throws on bad bytes, so garbage is refused as early as possible.
   */
  hasFrame(): boolean {
    if (this.failed) throw this.failed;
    if (!this.checkPreamble()) return false;
    if (this.total < 4) return false;
    return this.total >= 4 + this.declaredLength();
  }

  /** The next complete frame, or null until more bytes arrive. Throws a ProtocolError on bad bytes. */
  read(): Frame | null {
    if (!this.hasFrame()) return null;
    const length = this.declaredLength();
    this.take(4);
    const type = this.take(1)[0];
    const body = this.take(length - 1);
    return { type, body };
  }

  /** Parses everything in `data` (plus what was buffered) and returns the complete frames. */
  frames(data: Buffer): Frame[] {
    this.push(data);
    const out: Frame[] = [];
    for (let f = this.read(); f; f = this.read()) out.push(f);
    return out;
  }

  /**
   * The stream ended: throws ECLOSED if it stopped inside the preamble or a frame, naming how
   * much of it had arrived. Bad bytes still buffered are reported as such first.
   */
  end(): void {
    if (this.total === 0) return;
    this.hasFrame();
    if (!this.preambleDone) {
      throw this.fail('ECLOSED', `connection closed after ${this.total} of the ${PREAMBLE_BYTES} preamble bytes`);
    }
    if (this.total < 4) {
      throw this.fail('ECLOSED', `connection closed inside a frame header (${this.total} of 4 length bytes received)`);
    }
    const length = this.declaredLength();
    if (this.total < 4 + length) {
      throw this.fail('ECLOSED', `connection closed in the middle of a frame (${this.total} of ${4 + length} bytes received)`);
    }
  }

  private fail(reason: WireFault, message: string): ProtocolError {
    this.failed = new ProtocolError(reason, message);
    return this.failed;
  }

  /** True once the preamble is consumed; throws at the first byte that cannot start a valid one. */
  private checkPreamble(): boolean {
    if (this.preambleDone) return true;
    const have = Math.min(this.total, PREAMBLE_BYTES);
    const got = this.peek(have);
    const magic = got.subarray(0, PREAMBLE_MAGIC.length);
    if (!magic.equals(PREAMBLE_MAGIC.subarray(0, magic.length))) {
      throw this.fail('EPROTO', `the peer does not speak Strata replication (stream starts with ${describeBytes(magic)}, expected "STRATAR")`);
    }
    if (have < PREAMBLE_BYTES) return false;
    const version = got[PREAMBLE_MAGIC.length];
    if (version !== PROTOCOL_VERSION) {
      throw this.fail('EPROTO', `the peer speaks replication protocol version ${version}; this Strata speaks version ${PROTOCOL_VERSION}`);
    }
    this.take(PREAMBLE_BYTES);
    this.preambleDone = true;
    return true;
  }

  /** The next frame's length field, validated; needs 4 buffered bytes. */
  private declaredLength(): number {
    const length = this.peek(4).readUInt32BE(0);
    if (length === 0) throw this.fail('EPROTO', `frame at stream offset ${this.consumed} declares length 0 (no type byte)`);
    if (length - 1 > this.maxFrame) {
      throw this.fail('EPROTO', `frame at stream offset ${this.consumed} declares a ${mib(length - 1)} body, over the ${mib(this.maxFrame)} limit`);
    }
    return length;
  }

  /** The first n buffered bytes without consuming them (n <= total). */
  private peek(n: number): Buffer {
    const first = this.pieces[0];
    if (first && first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (let i = 0, off = this.head; filled < n; i++, off = 0) {
      filled += this.pieces[i].copy(out, filled, off, Math.min(this.pieces[i].length, off + n - filled));
    }
    return out;
  }

  /** Consumes and returns n buffered bytes (n <= total): a view when they lie in one piece, else one copy. */
  private take(n: number): Buffer {
    const out = this.peek(n);
    this.total -= n;
    this.consumed += n;
    let left = n;
    while (left > 0) {
      const avail = this.pieces[0].length - this.head;
      if (avail > left) {
        this.head += left;
        break;
      }
      left -= avail;
      this.pieces.shift();
      this.head = 0;
    }
    return out;
  }
}
