// A counting TCP relay for benchmarks/replication-bench.mjs: listens on 127.0.0.1 (a free port),
// forwards every connection to a target host:port, and counts the bytes that cross it in each
// direction. Putting it between a client and a server measures what really travels on the
// (loopback) network, independently of what the tools report about themselves.
//
//   const m = await startMeter({ host: '127.0.0.1', port: 8730 });
//   m.reset();  ...run a client against 127.0.0.1:m.port...;  await m.idle();
//   m.up    bytes client -> server (the sender's direction for Strata and rsync pushes)
//   m.down  bytes server -> client (answers: NEED bitmaps, HOLDINGS, rsync block checksums)
//   await m.close();
//
// The relay runs in the benchmark's own event loop, so the benchmark must run its commands
// asynchronously (child_process.spawn, not spawnSync) while a meter is in use.

import net from 'node:net';

export async function startMeter(target) {
  const open = new Set();
  let waiters = [];
  const meter = {
    port: 0,
    up: 0,
    down: 0,
    connections: 0,
    reset() {
      meter.up = 0;
      meter.down = 0;
      meter.connections = 0;
    },
    /** Resolves when no relayed connection is open any more (or after timeoutMs). */
    idle(timeoutMs = 10000) {
      if (!open.size) return Promise.resolve(true);
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          waiters = waiters.filter((w) => w !== done);
          resolve(false);
        }, timeoutMs);
        const done = () => {
          clearTimeout(t);
          resolve(true);
        };
        waiters.push(done);
      });
    },
    close() {
      for (const s of open) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  const settle = () => {
    if (open.size) return;
    const ws = waiters;
    waiters = [];
    ws.forEach((w) => w());
  };
  const server = net.createServer((client) => {
    meter.connections++;
    const upstream = net.connect(target);
    const pair = { client, upstream, closed: 0 };
    open.add(pair);
    const finish = () => {
      if (++pair.closed < 2) return;
      open.delete(pair);
      settle();
    };
    client.on('data', (b) => {
      meter.up += b.length;
      if (!upstream.write(b)) client.pause();
    });
    upstream.on('drain', () => client.resume());
    upstream.on('data', (b) => {
      meter.down += b.length;
      if (!client.write(b)) upstream.pause();
    });
    client.on('drain', () => upstream.resume());
    // Half-closes pass through (rsync and Strata both end with a FIN from one side first).
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', finish);
    upstream.on('close', finish);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  meter.port = server.address().port;
  return meter;
}

/** A TCP port that was free a moment ago on 127.0.0.1 (for servers that need a fixed port). */
export async function freePort() {
  const s = net.createServer();
  await new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(0, '127.0.0.1', resolve);
  });
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}
