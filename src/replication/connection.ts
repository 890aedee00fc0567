// A replication connection: frames (frame.ts) and messages (messages.ts) over one socket, with
// timeouts, flow control in both directions, and errors that say what happened. Also the
// addresses replication listens on and connects to (TCP HOST:PORT, or unix:PATH).
//
// Sending never waits for the peer: send() queues the frame and reports backpressure, and the
// caller awaits drain() when told to, so a sender can keep OFFERs, CHUNKs and its own reading of
// NEEDs in flight at once. Receiving is pulled: next() hands out one frame at a time, and when
// frames pile up unread the socket is paused, so a slow receiver slows the sender through TCP
// instead of buffering without bound.
//
// Failure is final: bad bytes, a bad message, a timeout or abort() send the peer an ERROR (so
// both ends can say why), close the socket, and make every later call reject with that one error.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { isStrataError, StrataError, type ErrorCode } from '../errors.js';
import {
  FrameReader, MAX_FRAME_BODY, PREAMBLE, ProtocolError, frameHeader, isWireFault,
  protocolError, type Frame, type WireReason,
} from './frame.js';
import { decodeMessage, encodeMessage, messageName, type Message, type MessageOf, type MessageType } from './messages.js';

export interface ConnectionOptions {
  /** Largest frame body accepted (and sent). Default MAX_FRAME_BODY. */
  maxFrame?: number;
  /** How long next() waits for a frame and drain() waits for the peer to read anything. Default 30 s. */
  timeoutMs?: number;
  /** Received bytes held unread before the socket is paused. Default 4 MiB. */
  highWaterMark?: number;
  /** How the peer is named in error messages. Default: its address. */
  peerName?: string;
}

export const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_HIGH_WATER = 4 * 1024 * 1024;
/** Bodies are written in slices this big so drain()'s progress check sees a large frame move. */
const WRITE_SLICE = 1024 * 1024;
/** After closing, how long a peer gets to close its side before the socket is destroyed. */
const LINGER_MS = 5_000;

const KNOWN_CODES = new Set<string>([
  'ENOENT', 'EEXIST', 'EINVAL', 'ECORRUPT', 'ETRUNC', 'ELOCKED', 'ENOTDIR', 'EISDIR', 'ENOTEMPTY', 'EROFS',
  'ENAMETOOLONG', 'ENODATA', 'EPERM', 'EXDEV', 'EBADF', 'ENOSPC', 'EIO',
] satisfies ErrorCode[]);

const seconds = (ms: number) => `${+(ms / 1000).toFixed(1)} s`;

interface Waiter {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

/** Frames over a connected (or connecting) socket. Sends this side's preamble at once. */
export class FramedConnection {
  readonly socket: net.Socket;
  readonly timeoutMs: number;
  readonly peerName: string;
  private readonly reader: FrameReader;
  private readonly highWater: number;
  private readonly waiters: Waiter[] = [];
  private readonly drainWaiters = new Set<(e?: Error) => void>();
  /** Fatal: every call fails with it at once. */
  private failure: ProtocolError | null = null;
  /** The stream ended: calls fail with it once the frames already received are used up. */
  private ended: ProtocolError | null = null;
  private paused = false;
  private lingering = false;
  private readonly closedPromise: Promise<void>;

  constructor(socket: net.Socket, opts: ConnectionOptions = {}) {
    this.socket = socket;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.highWater = opts.highWaterMark ?? DEFAULT_HIGH_WATER;
    this.reader = new FrameReader({ maxFrame: opts.maxFrame ?? MAX_FRAME_BODY });
    this.peerName = opts.peerName ?? describePeer(socket);
    this.closedPromise = new Promise((resolve) => {
      if (socket.destroyed) resolve();
      else socket.once('close', () => resolve());
    });
    // Small frames (NEED, COMMITTED) must not sit in Nagle's buffer waiting for a delayed ACK.
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.onEnded(new ProtocolError('ECLOSED', `${this.peerName} closed the connection`)));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.onEnded(new ProtocolError('ECLOSED', `connection to ${this.peerName} broke: ${e.code ?? e.message}`, { cause: e }));
    });
    socket.on('close', () => {
      this.onEnded(new ProtocolError('ECLOSED', `connection to ${this.peerName} closed`));
      for (const d of [...this.drainWaiters]) d(this.failure ?? this.ended ?? undefined);
    });
    if (socket.destroyed) this.onEnded(new ProtocolError('ECLOSED', `connection to ${this.peerName} is already closed`));
    else socket.write(PREAMBLE);
  }

  /** Largest frame body accepted from the peer from now on (authentication lowers it until the peer has proved itself). */
  get maxFrame(): number {
    return this.reader.maxFrame;
  }
  set maxFrame(n: number) {
    this.reader.maxFrame = n;
  }

  /** True once the connection failed or closed (frames already received may still be read). */
  get closed(): boolean {
    return this.failure !== null || this.ended !== null;
  }

  /** Resolves when the socket has closed. */
  whenClosed(): Promise<void> {
    return this.closedPromise;
  }

  /**
   * Queues one frame. Returns false when the socket's buffer is full: await drain() before sending
   * more. `body` buffers are kept until written and must not be modified. Throws once closed.
   */
  send(type: number, body: Buffer | readonly Buffer[] = []): boolean {
    this.checkOpen();
    const parts = Buffer.isBuffer(body) ? [body] : body;
    let length = 0;
    for (const p of parts) length += p.length;
    if (length > this.reader.maxFrame) {
      throw new StrataError('EINVAL', `${messageName(type)} of ${length} bytes is over the ${this.reader.maxFrame}-byte frame limit`);
    }
    return this.write(frameHeader(type, length), parts);
  }

  /** Encodes and queues a message; see send(). */
  sendMessage(m: Message): boolean {
    const { type, body } = encodeMessage(m);
    return this.send(type, body);
  }

  /**
   * Resolves when the socket can take more data. Rejects with the connection's error if it fails,
   * and with ETIMEDOUT (aborting the connection) if the peer reads nothing for timeoutMs.
   */
  drain(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended) return Promise.reject(this.ended);
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      let last = this.socket.writableLength;
      const tick = setInterval(() => {
        const now = this.socket.writableLength;
        if (now >= last) {
          this.abort(new ProtocolError('ETIMEDOUT', `${this.peerName} has read nothing for ${seconds(this.timeoutMs)}`),
            `you read nothing for ${seconds(this.timeoutMs)}`);
        }
        last = now;
      }, this.timeoutMs);
      const done = (e?: Error) => {
        clearInterval(tick);
        this.socket.off('drain', onDrain);
        this.drainWaiters.delete(done);
        if (e) reject(e);
        else resolve();
      };
      const onDrain = () => done();
      this.socket.on('drain', onDrain);
      this.drainWaiters.add(done);
    });
  }

  /**
   * The next frame. Rejects with ETIMEDOUT (aborting the connection) if none arrives within
   * `timeoutMs` (default: the connection's; 0 waits forever), with EPROTO on bad bytes, and with
   * ECLOSED once the peer has closed and every frame it sent has been read.
   */
  next(timeoutMs = this.timeoutMs): Promise<Frame> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiters.length === 0) {
      try {
        const f = this.reader.read();
        if (f) {
          this.flow();
          return Promise.resolve(f);
        }
      } catch (e) {
        this.abort(e);
        return Promise.reject(this.failure ?? e);
      }
      if (this.ended) return Promise.reject(this.endError());
    }
    return new Promise((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: null };
      if (timeoutMs > 0) {
        w.timer = setTimeout(() => {
          this.abort(new ProtocolError('ETIMEDOUT', `no message from ${this.peerName} within ${seconds(timeoutMs)}`),
            `no message from you within ${seconds(timeoutMs)}`);
        }, timeoutMs);
      }
      this.waiters.push(w);
      this.pump();
    });
  }

  /** The next message, validated; a malformed one aborts the connection (EPROTO). ERROR messages are returned, not thrown. */
  async nextMessage(timeoutMs?: number): Promise<Message> {
    const f = await this.next(timeoutMs);
    try {
      return decodeMessage(f);
    } catch (e) {
      this.abort(e);
      throw this.failure ?? e;
    }
  }

  /**
   * The next message, which must be one of `types`. An ERROR from the peer is thrown as a
   * ProtocolError with the peer's code (fromPeer) and closes the connection; any other type
   * aborts it with EPROTO.
   */
  async expect<T extends MessageType>(types: T | readonly T[], timeoutMs?: number): Promise<MessageOf<T>> {
    const wanted: readonly MessageType[] = typeof types === 'string' ? [types] : types;
    const m = await this.nextMessage(timeoutMs);
    if (m.type === 'ERROR' && !wanted.includes('ERROR')) {
      const e = this.peerError(m.code, m.message);
      this.shutDown(e);
      throw e;
    }
    if (!wanted.includes(m.type)) {
      const e = protocolError(`expected ${wanted.join(' or ')} from ${this.peerName}, got ${m.type}`);
      this.abort(e);
      throw e;
    }
    return m as MessageOf<T>;
  }

  /**
   * Ends the connection because of `error`: tells the peer (an ERROR with the error's code and
   * `peerMessage`, default its message) unless the peer caused it by reporting an error itself,
   * then closes. Later calls fail with the error (a ProtocolError; others are wrapped).
   */
  abort(error: unknown, peerMessage?: string): void {
    if (this.failure) return;
    const e = asProtocolError(error);
    if (!e.fromPeer && !this.ended && !this.socket.destroyed) {
      try {
        const { type, body } = encodeMessage({ type: 'ERROR', code: e.reason, message: peerMessage ?? e.message });
        this.write(frameHeader(type, body.reduce((n, b) => n + b.length, 0)), body);
      } catch {
        // The peer learns of it from the close instead.
      }
    }
    this.shutDown(e);
  }

  /** Closes the connection after the frames already queued are sent. Later calls fail with ECLOSED. */
  close(): void {
    if (this.failure) return;
    this.shutDown(new ProtocolError('ECLOSED', `connection to ${this.peerName} was closed by this side`));
  }

  /** The error a peer reported with an ERROR message. */
  peerError(code: string, message: string): ProtocolError {
    const reason: WireReason = isWireFault(code) || KNOWN_CODES.has(code) ? (code as WireReason) : 'EIO';
    return new ProtocolError(reason, `${this.peerName} reports ${code}: ${message}`, { fromPeer: true });
  }

  private checkOpen(): void {
    if (this.failure) throw this.failure;
    if (this.ended || this.socket.destroyed || this.socket.writableEnded) {
      throw new ProtocolError('ECLOSED', `cannot send: the connection to ${this.peerName} is closed`, { cause: this.ended ?? undefined });
    }
  }

  private write(header: Buffer, parts: readonly Buffer[]): boolean {
    const s = this.socket;
    s.cork();
    let ok = s.write(header);
    for (const p of parts) {
      for (let off = 0; off < p.length; off += WRITE_SLICE) {
        ok = s.write(off === 0 && p.length <= WRITE_SLICE ? p : p.subarray(off, off + WRITE_SLICE));
      }
    }
    s.uncork();
    return ok && !s.writableNeedDrain;
  }

  private onData(d: Buffer): void {
    if (this.failure) return; // after a failure incoming bytes are read only to let the peer finish
    this.reader.push(d);
    this.pump();
  }

  private onEnded(e: ProtocolError): void {
    if (!this.ended) this.ended = e;
    if (!this.failure) this.pump();
  }

  /** Hands frames to waiting next() calls, fails them if the stream has ended, and applies flow control. */
  private pump(): void {
    try {
      while (this.waiters.length) {
        const f = this.reader.read();
        if (!f) break;
        const w = this.waiters.shift()!;
        if (w.timer) clearTimeout(w.timer);
        w.resolve(f);
      }
      if (this.waiters.length && this.ended) {
        const e = this.endError();
        for (const w of this.waiters.splice(0)) {
          if (w.timer) clearTimeout(w.timer);
          w.reject(e);
        }
      }
      this.flow();
    } catch (e) {
      this.abort(e);
    }
  }

  /** The error for reading past the end: truncation if the stream stopped inside a frame, else the end itself. */
  private endError(): ProtocolError {
    try {
      this.reader.end();
    } catch (e) {
      const t = asProtocolError(e);
      return new ProtocolError(t.reason, `${this.peerName}: ${t.message}`, { cause: this.ended });
    }
    return this.ended!;
  }

  /** Pauses the socket while a complete frame waits unread and much is buffered; resumes otherwise. Validates what arrived. */
  private flow(): void {
    const ready = this.reader.hasFrame();
    const full = ready && this.waiters.length === 0 && this.reader.buffered >= this.highWater;
    if (full && !this.paused) this.socket.pause();
    else if (!full && this.paused) this.socket.resume();
    this.paused = full;
  }

  private shutDown(e: ProtocolError): void {
    if (this.failure) return;
    this.failure = e;
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(e);
    }
    for (const d of [...this.drainWaiters]) d(e);
    const s = this.socket;
    if (s.destroyed) return;
    // Keep reading (and discarding) until the peer closes too: closing a socket with unread
    // input sends a reset, which can destroy the ERROR frame before the peer reads it.
    s.resume();
    this.paused = false;
    s.end();
    if (!this.lingering) {
      this.lingering = true;
      setTimeout(() => s.destroy(), this.timeoutMs > 0 ? Math.min(LINGER_MS, this.timeoutMs) : LINGER_MS).unref();
    }
  }
}

function asProtocolError(e: unknown): ProtocolError {
  if (e instanceof ProtocolError) return e;
  if (isStrataError(e)) return new ProtocolError(e.code, e.message, { cause: e });
  return new ProtocolError('EIO', e instanceof Error ? e.message : String(e), { cause: e });
}

function describePeer(socket: net.Socket): string {
  if (socket.remoteAddress) return `peer ${formatAddress({ kind: 'tcp', host: socket.remoteAddress, port: socket.remotePort ?? 0 })}`;
  return 'the peer';
}

// ---------------------------------------------------------------------------------------------
// Addresses

export type Address = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** The host a bare port number listens on or connects to: replication stays on this machine unless told otherwise. */
export const DEFAULT_HOST = '127.0.0.1';
/** sun_path is 108 bytes including its terminating NUL. */
const MAX_UNIX_PATH = 107;
const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

const badAddress = (s: string, why: string) =>
  new StrataError('EINVAL', `bad replication address ${JSON.stringify(s)}: ${why} (use HOST:PORT, [IPv6]:PORT, PORT for ${DEFAULT_HOST}, or unix:PATH)`);

/**
 * Parses `HOST:PORT`, `[IPv6]:PORT`, a bare `PORT` (meaning 127.0.0.1:PORT) or `unix:PATH`
 * (made absolute). Port 0 is accepted (listen on any free port). Throws EINVAL naming the problem.
 */
export function parseAddress(s: string): Address {
  if (s.startsWith('unix:')) {
    const p = s.slice('unix:'.length);
    if (!p) throw badAddress(s, 'empty socket path');
    if (p.includes('\0')) throw badAddress(s, 'NUL in socket path');
    const abs = path.resolve(p);
    if (Buffer.byteLength(abs) > MAX_UNIX_PATH) throw badAddress(s, `socket path ${abs} is longer than the ${MAX_UNIX_PATH} bytes a Unix socket allows`);
    return { kind: 'unix', path: abs };
  }
  let host = DEFAULT_HOST;
  let portText = s;
  const v6 = /^\[([^\]]*)\]:([^:]*)$/.exec(s);
  if (v6) {
    if (!net.isIPv6(v6[1])) throw badAddress(s, `${v6[1]} is not an IPv6 address`);
    [host, portText] = [v6[1], v6[2]];
  } else if (s.includes(':')) {
    const i = s.lastIndexOf(':');
    [host, portText] = [s.slice(0, i), s.slice(i + 1)];
    if (host.includes(':')) throw badAddress(s, 'an IPv6 address needs brackets');
    if (!net.isIPv4(host) && !HOSTNAME_RE.test(host)) throw badAddress(s, `${JSON.stringify(host)} is not a host name or IPv4 address`);
  }
  if (!/^(0|[1-9][0-9]{0,4})$/.test(portText) || Number(portText) > 65535) {
    throw badAddress(s, `port ${JSON.stringify(portText)} is not a number from 0 to 65535`);
  }
  return { kind: 'tcp', host, port: Number(portText) };
}

/** The text form parseAddress() reads back. */
export function formatAddress(a: Address): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return net.isIPv6(a.host) ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

const toAddress = (a: Address | string) => (typeof a === 'string' ? parseAddress(a) : a);

/** Where a listening server can be reached (with the real port when it listened on port 0). */
export function serverAddress(server: net.Server): Address {
  const a = server.address();
  if (a === null) throw new StrataError('EINVAL', 'the server is not listening');
  if (typeof a === 'string') return { kind: 'unix', path: a };
  return { kind: 'tcp', host: a.address, port: a.port };
}

/**
 * Listens for replication connections. A Unix socket is created owner-only (0600); a stale socket
 * file (nobody listening) is replaced, while a live one or a non-socket file is refused (EEXIST).
 * Resolves once listening; errors name the address.
 */
export async function listen(address: Address | string, onConnection: (socket: net.Socket) => void): Promise<net.Server> {
  const addr = toAddress(address);
  const where = formatAddress(addr);
  const server = net.createServer(onConnection);
  const listening = new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      resolve();
    });
  });
  if (addr.kind === 'unix') {
    await removeStaleSocket(addr.path);
    // bind() happens inside listen(), synchronously, so the umask covers exactly the socket's
    // creation: nobody can connect to it in the moment before the chmod.
    const oldMask = process.umask(0o177);
    try {
      server.listen(addr.path);
    } finally {
      process.umask(oldMask);
    }
  } else {
    server.listen({ host: addr.host, port: addr.port });
  }
  try {
    await listening;
  } catch (e) {
    server.close();
    throw netError('cannot listen on', where, e);
  }
  if (addr.kind === 'unix') fs.chmodSync(addr.path, 0o600);
  return server;
}

async function removeStaleSocket(p: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new StrataError('EEXIST', `cannot listen on unix:${p}: a file that is not a socket is in the way`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.createConnection(p);
    const done = (v: boolean) => {
      probe.destroy();
      resolve(v);
    };
    probe.once('connect', () => done(true));
    probe.once('error', () => done(false));
    probe.setTimeout(1000, () => done(true));
  });
  if (live) throw new StrataError('EEXIST', `cannot listen on unix:${p}: another process is listening there`);
  fs.rmSync(p, { force: true });
}

/** Connects to a peer; resolves with the connected socket. Rejects with a StrataError naming the address (EIO; ENOENT for a missing Unix socket). */
export function connect(address: Address | string, opts: { timeoutMs?: number } = {}): Promise<net.Socket> {
  const addr = toAddress(address);
  const where = formatAddress(addr);
  if (addr.kind === 'tcp' && addr.port === 0) return Promise.reject(badAddress(where, 'cannot connect to port 0'));
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const socket = addr.kind === 'unix' ? net.createConnection(addr.path) : net.createConnection({ host: addr.host, port: addr.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new StrataError('EIO', `cannot connect to ${where}: no answer within ${seconds(timeoutMs)}`));
    }, timeoutMs);
    const onError = (e: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(netError('cannot connect to', where, e));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

function netError(doing: string, where: string, e: unknown): StrataError {
  const code = (e as NodeJS.ErrnoException).code;
  const why: Record<string, [ErrorCode, string]> = {
    ECONNREFUSED: ['EIO', 'nothing is listening there (is the peer running with replication enabled?)'],
    ENOENT: ['ENOENT', 'no such socket (is the peer running with replication enabled?)'],
    ENOTFOUND: ['EIO', 'unknown host'],
    EADDRINUSE: ['EEXIST', 'the address is already in use'],
    EADDRNOTAVAIL: ['EINVAL', 'that address does not belong to this machine'],
    EACCES: ['EPERM', 'permission denied'],
    EHOSTUNREACH: ['EIO', 'host unreachable'],
    ETIMEDOUT: ['EIO', 'timed out'],
  };
  const [c, text] = (code && why[code]) || ['EIO', e instanceof Error ? e.message : String(e)];
  return new StrataError(c, `${doing} ${where}: ${text}`, { cause: e });
}
