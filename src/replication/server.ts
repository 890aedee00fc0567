import type net from 'node:net';
import type { CasStore } from '../cas/store.js';
import type { Catalogue } from '../temporal/catalogue.js';
import { accept, readKeyFile } from './auth.js';
import { formatAddress, listen, parseAddress, serverAddress } from './connection.js';
import { receiveSnapshots, type ReceiveOptions } from './receiver.js';

// The replication listener of a store (`strata serve`, or the mount daemon with --listen).
// Senders are served one at a time: the store has a single writer.

const HANDSHAKE_MS = 5_000;

export interface ServeOptions extends ReceiveOptions {
  listen: string;
  keyFile: string;
}

export interface ReplicationServer {
  address: string;
  close(): Promise<void>;
}

export async function startReplicationServer(cas: CasStore, cat: Catalogue, opts: ServeOptions): Promise<ReplicationServer> {
  const secret = readKeyFile(opts.keyFile);
  const log = opts.log ?? (() => undefined);
  let queue: Promise<unknown> = Promise.resolve();
  const sockets = new Set<net.Socket>();
  const server = await listen(parseAddress(opts.listen), (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // The handshake runs at once, outside the queue: a peer that never authenticates must not
    // hold up the others. Authenticated senders are then served one at a time (one writer).
    const authed = accept(socket, secret, 'receiver', { timeoutMs: HANDSHAKE_MS });
    authed.catch((e: Error) => {
      log(`replication refused: ${e.message}`);
      socket.destroy();
    });
    queue = queue.then(async () => {
      let conn;
      try {
        conn = await authed;
      } catch {
        return;
      }
      try {
        const r = await receiveSnapshots(cas, cat, conn, opts);
        log(`replication from ${r.peer}: committed ${r.committed.length} snapshots, stored ${r.chunksStored} chunks`);
      } catch (e) {
        log(`replication failed: ${(e as Error).message}`);
        socket.destroy();
      }
    });
  });
  const address = formatAddress(serverAddress(server));
  log(`listening for replication on ${address}`);
  return {
    address,
    close: async () => {
      await new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await queue.catch(() => undefined);
    },
  };
}
