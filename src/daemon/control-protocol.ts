// The daemon's control socket: newline-delimited JSON over a Unix socket at STORE/control.sock.
//
//   request   {"id": 1, "cmd": "snapshot", "args": {"name": "s1"}}
//   response  {"id": 1, "ok": true, "result": {...}}
//             {"id": 1, "ok": false, "code": "EEXIST", "message": "a snapshot named 's1' already exists"}
//
// One request per line, answered in order on the same connection. A request that is not valid
// JSON, names an unknown command or carries bad arguments gets an error response (code EINVAL);
// the connection stays usable and the daemon never crashes on input. Also here: where a daemon
// keeps its files in the store, and how a client finds out who holds a store's lock.

import { processRunning } from '../cas/store.js';

export { processRunning };
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { handleHex } from '../cas/hash.js';
import { invalid, isStrataError, StrataError, type ErrorCode } from '../errors.js';
import type { SnapshotInfo } from '../types.js';

/** Files a daemon keeps in its store directory. */
export function daemonFiles(store: string): { socket: string; pid: string; log: string; lock: string } {
  const dir = path.resolve(store);
  return {
    socket: path.join(dir, 'control.sock'),
    pid: path.join(dir, 'daemon.pid'),
    log: path.join(dir, 'daemon.log'),
    lock: path.join(dir, 'lock'),
  };
}

/** Arguments of each command, as validated. */
export interface ControlArgs {
  status: Record<string, never>;
  snapshot: { name: string | null };
  branch: { ref: string };
  flush: Record<string, never>;
  unmount: Record<string, never>;
}
export type ControlCommand = keyof ControlArgs;

/** A snapshot as the control socket and `--json` output carry it (the root handle in hex). */
export type SnapshotJson = Omit<SnapshotInfo, 'root'> & { root: string };
export const snapshotJson = (s: SnapshotInfo): SnapshotJson => ({ ...s, root: handleHex(s.root) });

export interface StatusResult {
  pid: number;
  mountpoint: string;
  store: string;
  startedMs: number;
}

export type ControlRequest = { [C in ControlCommand]: { id: RequestId; cmd: C; args: ControlArgs[C] } }[ControlCommand];
export type RequestId = number | string | null;

export type ControlResponse =
  | { id: RequestId; ok: true; result: unknown }
  | { id: RequestId; ok: false; code: string; message: string };

/** The daemon's side: one function per command. Results must be JSON-serialisable. */
export type ControlHandlers = { [C in ControlCommand]: (args: ControlArgs[C]) => unknown | Promise<unknown> };

/** Longest request line accepted; a control request is tiny. */
const MAX_LINE = 64 * 1024;

const noArgs = (cmd: string, args: Record<string, unknown>): Record<string, never> => {
  const extra = Object.keys(args);
  if (extra.length) throw invalid(`${cmd} takes no arguments (got ${extra.join(', ')})`);
  return {};
};

const VALIDATORS: { [C in ControlCommand]: (args: Record<string, unknown>) => ControlArgs[C] } = {
  status: (a) => noArgs('status', a),
  flush: (a) => noArgs('flush', a),
  unmount: (a) => noArgs('unmount', a),
  snapshot(a) {
    for (const k of Object.keys(a)) if (k !== 'name') throw invalid(`snapshot: unknown argument '${k}'`);
    const name = a.name ?? null;
    if (name !== null && (typeof name !== 'string' || name.length === 0 || name.length > 128)) {
      throw invalid('snapshot: name must be a non-empty string of at most 128 characters');
    }
    return { name };
  },
  branch(a) {
    for (const k of Object.keys(a)) if (k !== 'ref') throw invalid(`branch: unknown argument '${k}'`);
    if (typeof a.ref !== 'string' || a.ref.length === 0 || a.ref.length > 256) {
      throw invalid('branch: ref must name a snapshot (a non-empty string)');
    }
    return { ref: a.ref };
  },
};

const isCommand = (cmd: unknown): cmd is ControlCommand => typeof cmd === 'string' && Object.hasOwn(VALIDATORS, cmd);

/**
 * Parses and validates one request line. Returns the request, or the error response to send
 * (with the request's id when one could be read).
 */
export function parseRequest(line: string): { request: ControlRequest } | { error: ControlResponse } {
  let id: RequestId = null;
  try {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      throw invalid('request is not valid JSON');
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid('request must be a JSON object');
    const r = raw as Record<string, unknown>;
    if (typeof r.id === 'number' || typeof r.id === 'string') id = r.id;
    else if (r.id !== undefined && r.id !== null) throw invalid('id must be a number or a string');
    if (!isCommand(r.cmd)) {
      throw invalid(`unknown command ${JSON.stringify(r.cmd)}; known: ${Object.keys(VALIDATORS).join(', ')}`);
    }
    const args = r.args ?? {};
    if (typeof args !== 'object' || args === null || Array.isArray(args)) throw invalid('args must be a JSON object');
    const cmd = r.cmd;
    const validated = VALIDATORS[cmd](args as Record<string, unknown>);
    return { request: { id, cmd, args: validated } as ControlRequest };
  } catch (e) {
    return { error: errorResponse(id, e) };
  }
}

/** The error response for `e`: a StrataError keeps its code, anything else is EIO. */
export function errorResponse(id: RequestId, e: unknown): ControlResponse {
  if (isStrataError(e)) return { id, ok: false, code: e.code, message: e.message };
  return { id, ok: false, code: 'EIO', message: e instanceof Error ? e.message : String(e) };
}

/**
 * Listens on `socketPath` with owner-only permissions (0600) and answers requests with
 * `handlers`. The caller must own the path (hold the store lock): a leftover file is removed.
 * `log` receives unexpected handler failures. Resolves once listening.
 */
export async function serveControl(socketPath: string, handlers: ControlHandlers, log: (msg: string) => void): Promise<net.Server> {
  fs.rmSync(socketPath, { force: true });
  const address = socketAddress(socketPath);
  const server = net.createServer((conn) => serveConnection(conn, handlers, log));
  // The umask makes the socket 0600 from its creation, so nobody can connect in the moment
  // between listen() and chmod(). listen() binds synchronously (outside a cluster), so the
  // process-wide umask is restored before anything else in this process creates a file.
  const listening = new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const oldMask = process.umask(0o177);
  try {
    server.listen(address.path);
  } finally {
    process.umask(oldMask);
  }
  try {
    await listening;
  } finally {
    address.close();
  }
  fs.chmodSync(socketPath, 0o600);
  server.on('error', (e) => log(`control socket error: ${e.message}`));
  return server;
}

function serveConnection(conn: net.Socket, handlers: ControlHandlers, log: (msg: string) => void): void {
  conn.setEncoding('utf8');
  let pending = '';
  // Requests of one connection are answered in order, one at a time.
  let queue: Promise<void> = Promise.resolve();
  const send = (r: ControlResponse) => {
    if (!conn.destroyed) conn.write(JSON.stringify(r) + '\n');
  };
  conn.on('data', (chunk: string) => {
    pending += chunk;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line) queue = queue.then(() => answer(line, handlers, log).then(send));
    }
    if (pending.length > MAX_LINE) {
      send({ id: null, ok: false, code: 'EINVAL', message: `request line longer than ${MAX_LINE} bytes` });
      conn.end();
      pending = '';
    }
  });
  conn.on('error', () => { /* a client that went away mid-answer is not the daemon's problem */ });
}

async function answer(line: string, handlers: ControlHandlers, log: (msg: string) => void): Promise<ControlResponse> {
  const parsed = parseRequest(line);
  if ('error' in parsed) return parsed.error;
  const { id, cmd, args } = parsed.request;
  try {
    const handler = handlers[cmd] as (a: typeof args) => unknown;
    const result = await handler(args);
    return { id, ok: true, result: result ?? null };
  } catch (e) {
    if (!isStrataError(e)) log(`control ${cmd} failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    return errorResponse(id, e);
  }
}

/**
 * A path to bind or connect to for `socketPath`. Unix socket addresses hold at most 107 bytes;
 * a longer path is reached through an open descriptor of its directory (/proc/self/fd/N/NAME),
 * which the kernel resolves to the same file. close() releases that descriptor once the
 * socket is bound or connected.
 */
function socketAddress(socketPath: string): { path: string; close(): void } {
  if (Buffer.byteLength(socketPath) <= 107) return { path: socketPath, close: () => undefined };
  const fd = fs.openSync(path.dirname(socketPath), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  const short = `/proc/self/fd/${fd}/${path.basename(socketPath)}`;
  if (Buffer.byteLength(short) > 107) {
    fs.closeSync(fd);
    throw invalid(`control socket name ${path.basename(socketPath)} is too long for a Unix socket`);
  }
  let open = true;
  return { path: short, close: () => { if (open) fs.closeSync(fd); open = false; } };
}

/** No daemon serves the store (no socket, or nobody listening on it). */
export class NotMountedError extends StrataError {
  constructor(storeDir: string, socketPath: string) {
    super('ENOENT', `store ${path.resolve(storeDir)} is not mounted (no daemon listens on ${socketPath})`);
  }
}
export const isNotMounted = (e: unknown): e is NotMountedError => e instanceof NotMountedError;

let nextId = 1;

/**
 * Sends one request to the daemon serving `storeDir` and resolves to its result. Rejects with the
 * daemon's error (as a StrataError with its code), ENOENT "store ... is not mounted" when no daemon
 * listens, or EIO when no answer comes within `timeoutMs`.
 */
export function controlRequest<C extends ControlCommand>(
  storeDir: string, cmd: C, args: Partial<ControlArgs[C]> = {}, timeoutMs = 10_000,
): Promise<unknown> {
  const { socket: socketPath } = daemonFiles(storeDir);
  const id = nextId++;
  return new Promise((resolve, reject) => {
    let settled = false;
    let pending = '';
    let address: ReturnType<typeof socketAddress>;
    try {
      address = socketAddress(socketPath);
    } catch (e) {
      // The store directory itself is missing: nothing can be mounted from it.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return reject(new NotMountedError(storeDir, socketPath));
      return reject(e);
    }
    const conn = net.createConnection(address.path);
    const finish = (err: Error | null, value?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      address.close();
      conn.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => {
      finish(new StrataError('EIO', `the daemon of ${path.resolve(storeDir)} did not answer '${cmd}' within ${Math.round(timeoutMs / 1000)} s`));
    }, timeoutMs);
    conn.setEncoding('utf8');
    conn.on('connect', () => {
      address.close();
      conn.write(JSON.stringify({ id, cmd, args }) + '\n');
    });
    conn.on('data', (chunk: string) => {
      pending += chunk;
      const nl = pending.indexOf('\n');
      if (nl < 0) return;
      let r: ControlResponse;
      try {
        r = JSON.parse(pending.slice(0, nl)) as ControlResponse;
      } catch {
        return finish(new StrataError('EIO', `the daemon sent a malformed answer to '${cmd}'`));
      }
      if (r.ok) finish(null, r.result);
      else finish(new StrataError(asErrorCode(r.code), r.message));
    });
    conn.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') {
        finish(new NotMountedError(storeDir, socketPath));
      } else finish(new StrataError('EIO', `control socket ${socketPath}: ${e.message}`));
    });
    conn.on('close', () => finish(new StrataError('EIO', `the daemon closed the connection before answering '${cmd}'`)));
  });
}

const KNOWN_CODES = new Set<string>([
  'ENOENT', 'EEXIST', 'EINVAL', 'ECORRUPT', 'ETRUNC', 'ELOCKED', 'ENOTDIR', 'EISDIR', 'ENOTEMPTY', 'EROFS',
  'ENAMETOOLONG', 'ENODATA', 'EPERM', 'EXDEV', 'EBADF', 'ENOSPC', 'EIO',
] satisfies ErrorCode[]);
const asErrorCode = (code: unknown): ErrorCode => (typeof code === 'string' && KNOWN_CODES.has(code) ? code as ErrorCode : 'EIO');


/** The pid in a pid or lock file, or null. */
export function readPidFile(file: string): number | null {
  try {
    const pid = Number.parseInt(fs.readFileSync(file, 'utf8'), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** Mounts of type fuse.strata from /proc/mounts: source (the store, as the daemon names it) and mountpoint. */
export function strataMounts(): Array<{ source: string; mountpoint: string }> {
  let table = '';
  try {
    table = fs.readFileSync('/proc/mounts', 'utf8');
  } catch {
    return [];
  }
  const unescape = (f: string) => f.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: Array<{ source: string; mountpoint: string }> = [];
  for (const line of table.split('\n')) {
    const [source, mountpoint, type] = line.split(' ');
    if (type === 'fuse.strata' && source && mountpoint) out.push({ source: unescape(source), mountpoint: unescape(mountpoint) });
  }
  return out;
}

/**
 * Rewrites a lock error when the lock holder is the store's mount daemon, so a user learns that
 * the store is mounted (and where) rather than just "in use". Other errors pass through unchanged.
 */
export function explainLockError(store: string, e: unknown): unknown {
  if (!isStrataError(e, 'ELOCKED')) return e;
  const files = daemonFiles(store);
  const holder = readPidFile(files.lock);
  if (holder === null || readPidFile(files.pid) !== holder || !processRunning(holder)) return e;
  const mnt = mountpointOf(store, holder);
  return new StrataError('ELOCKED',
    `store is mounted${mnt ? ` at ${mnt}` : ''} by process ${holder}; use the mount or unmount first (strata unmount ${mnt ?? 'MOUNTPOINT'})`,
    { cause: e });
}

/** Where the daemon `pid` of `store` mounted it: /proc/mounts by source, else the daemon's command line. */
export function mountpointOf(store: string, pid: number): string | null {
  const dir = path.resolve(store);
  const byTable = strataMounts().find((m) => m.source === dir);
  if (byTable) return byTable.mountpoint;
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('--mountpoint');
    if (i >= 0 && argv[i + 1]) return argv[i + 1];
  } catch {
    // not on Linux, or the process is gone
  }
  return null;
}
