// Mutual authentication of two Strata stores that share a secret, which never crosses the wire.
//
// Each side sends CHALLENGE {its role, a fresh 32-byte nonce}; then each proves it holds the
// secret with PROOF = HMAC-SHA256(secret, LABEL | own role | peer's nonce | own nonce). The role
// byte and the order of the nonces make a proof valid in one direction only, so a peer cannot
// reflect our own proof (or our challenge) back at us; the fresh nonces make every proof single-use.
// The sender proves first and the receiver answers only a correct proof, so a listener never
// hands an HMAC over an attacker's nonce to someone who has not proved themselves. The sender
// then confirms with AUTH_OK, so both ends learn the outcome: a wrong proof gets ERROR EAUTH and
// the connection closes, and both authenticate() calls reject with reason EAUTH.
//
// Until the peer has proved itself a connection accepts only small frames
// (HANDSHAKE_MAX_FRAME_BODY), so an unauthenticated peer cannot make us buffer megabytes.
//
// This authenticates the two ends; it does not encrypt or sign what follows. On a network path
// others can reach, run replication inside an encrypted tunnel (SSH, WireGuard) or over a Unix socket.

import crypto from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import { invalid, StrataError } from '../errors.js';
import { connect, formatAddress, FramedConnection, parseAddress, type Address, type ConnectionOptions } from './connection.js';
import { HANDSHAKE_MAX_FRAME_BODY, ProtocolError } from './frame.js';
import { NONCE_BYTES, type Role } from './messages.js';

export const MIN_SECRET_BYTES = 16;
/** A key file is a short line; anything bigger is not one. */
export const MAX_SECRET_BYTES = 4096;
const LABEL = Buffer.from('strata-replication-v1 proof\0', 'ascii');
const ROLE_BYTE: Record<Role, number> = { sender: 1, receiver: 2 };
const OTHER: Record<Role, Role> = { sender: 'receiver', receiver: 'sender' };

/**
 * Reads the shared secret from a key file: its bytes minus a trailing newline. Refuses (EPERM) a
 * file that group or others may read or write, or that belongs to another user (root excepted),
 * and (EINVAL) one that is not a regular file or whose secret is shorter than 16 bytes.
 */
export function readKeyFile(file: string): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new StrataError('ENOENT', `key file ${file} does not exist`, { cause: e });
    if (code === 'EACCES') throw new StrataError('EPERM', `key file ${file} is not readable by this user`, { cause: e });
    throw new StrataError('EIO', `cannot open key file ${file}: ${(e as Error).message}`, { cause: e });
  }
  try {
    // fstat the open file, not the path, so what is checked is what is read.
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw invalid(`key file ${file} is not a regular file`);
    if (st.mode & 0o077) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
      throw new StrataError('EPERM', `key file ${file} is accessible by group or others (mode ${mode}); make it private with: chmod 600 ${file}`);
    }
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
      throw new StrataError('EPERM', `key file ${file} belongs to user ${st.uid}, not to this user (${uid}) or root`);
    }
    if (st.size > MAX_SECRET_BYTES + 2) throw invalid(`key file ${file} is ${st.size} bytes; a key file holds one secret of at most ${MAX_SECRET_BYTES} bytes`);
    const buf = Buffer.alloc(MAX_SECRET_BYTES + 3);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    let end = n;
    if (end > 0 && buf[end - 1] === 0x0a) end--;
    if (end > 0 && buf[end - 1] === 0x0d) end--;
    if (end > MAX_SECRET_BYTES) throw invalid(`key file ${file} holds more than ${MAX_SECRET_BYTES} bytes`);
    if (end < MIN_SECRET_BYTES) {
      throw invalid(`key file ${file} holds ${end === 0 ? 'no secret' : `a secret of only ${end} bytes`}; it needs at least ${MIN_SECRET_BYTES} (generate one with 32 random bytes in hex)`);
    }
    return Buffer.from(buf.subarray(0, end));
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Creates a new key file holding 32 random bytes in hex and a newline, mode 0600; refuses (EEXIST)
 * to replace an existing file. Returns the secret as readKeyFile() will read it.
 */
export function generateKeyFile(file: string): Buffer {
  const secret = Buffer.from(crypto.randomBytes(32).toString('hex'), 'ascii');
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new StrataError('EEXIST', `key file ${file} already exists; not replacing it`, { cause: e });
    throw new StrataError('EIO', `cannot create key file ${file}: ${(e as Error).message}`, { cause: e });
  }
  try {
    fs.fchmodSync(fd, 0o600); // the umask may have left less, never more; state it exactly
    fs.writeSync(fd, Buffer.concat([secret, Buffer.from('\n')]));
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw new StrataError('EIO', `cannot write key file ${file}: ${(e as Error).message}`, { cause: e });
  }
  fs.closeSync(fd);
  return secret;
}

/** HMAC proof that the holder of `secret`, acting as `role`, answers `peerNonce` (and binds its own nonce). */
export function proofOf(secret: Buffer, role: Role, peerNonce: Buffer, ownNonce: Buffer): Buffer {
  return crypto.createHmac('sha256', secret).update(LABEL).update(Buffer.from([ROLE_BYTE[role]])).update(peerNonce).update(ownNonce).digest();
}

/**
 * Runs the mutual challenge-response on a fresh connection. Resolves when both sides have proved
 * they hold `secret`; rejects with a ProtocolError (EAUTH on a wrong secret on either side,
 * EPROTO on a protocol violation, ETIMEDOUT, ECLOSED) after closing the connection.
 */
export async function authenticate(conn: FramedConnection, secret: Buffer, role: Role): Promise<void> {
  const limit = conn.maxFrame;
  conn.maxFrame = Math.min(limit, HANDSHAKE_MAX_FRAME_BODY);
  try {
    if (secret.length < MIN_SECRET_BYTES) throw invalid(`the shared secret must be at least ${MIN_SECRET_BYTES} bytes`);
    const nonce = crypto.randomBytes(NONCE_BYTES);
    conn.sendMessage({ type: 'CHALLENGE', role, nonce });
    const challenge = await conn.expect('CHALLENGE');
    if (challenge.role === role) {
      fail(conn, new ProtocolError('EPROTO', `both ends of the connection to ${conn.peerName} act as ${role}s`), `both ends act as ${role}s`);
    }
    if (challenge.nonce.equals(nonce)) {
      fail(conn, new ProtocolError('EAUTH', `${conn.peerName} echoed our challenge back`), 'your challenge repeats ours');
    }
    const ours = proofOf(secret, role, challenge.nonce, nonce);
    const theirs = proofOf(secret, OTHER[role], nonce, challenge.nonce);
    const check = async () => {
      const { hmac } = await conn.expect('PROOF');
      if (!crypto.timingSafeEqual(hmac, theirs)) {
        fail(conn,
          new ProtocolError('EAUTH', `authentication failed: ${conn.peerName} does not hold our shared secret (are both ends using the same key file?)`),
          'authentication failed: your proof does not match our shared secret (are both ends using the same key file?)');
      }
      // The peer has proved itself: from here on it may send frames of any size.
      conn.maxFrame = limit;
    };
    if (role === 'sender') {
      conn.sendMessage({ type: 'PROOF', hmac: ours });
      await check();
      conn.sendMessage({ type: 'AUTH_OK' });
    } else {
      await check();
      conn.sendMessage({ type: 'PROOF', hmac: ours });
      await conn.expect('AUTH_OK');
    }
  } catch (e) {
    conn.abort(e);
    throw e;
  }
}

function fail(conn: FramedConnection, e: ProtocolError, peerMessage: string): never {
  conn.abort(e, peerMessage);
  throw e;
}

/** Connects to `address` and authenticates as `role`; resolves with the ready connection. */
export async function dial(address: Address | string, secret: Buffer, role: Role, opts: ConnectionOptions = {}): Promise<FramedConnection> {
  const addr = typeof address === 'string' ? parseAddress(address) : address;
  const socket = await connect(addr, { timeoutMs: opts.timeoutMs });
  const conn = new FramedConnection(socket, { peerName: `peer ${formatAddress(addr)}`, ...opts });
  await authenticate(conn, secret, role);
  return conn;
}

/** Wraps an accepted socket and authenticates as `role`; resolves with the ready connection. */
export async function accept(socket: net.Socket, secret: Buffer, role: Role, opts: ConnectionOptions = {}): Promise<FramedConnection> {
  const conn = new FramedConnection(socket, opts);
  await authenticate(conn, secret, role);
  return conn;
}
