import { CasStore } from '../cas/store.js';
import { invalid } from '../errors.js';
import { PerformancePool } from '../pools/performance-pool.js';
import { dial, generateKeyFile, readKeyFile } from '../replication/auth.js';
import { sendSnapshots } from '../replication/sender.js';
import { startReplicationServer } from '../replication/server.js';
import { Catalogue } from '../temporal/catalogue.js';
import { temporalOrder } from '../cas/gc.js';
import type { SnapshotInfo } from '../types.js';
import { formatBytes } from './format.js';
import type { Ctx } from './main.js';

// strata keygen / serve / replicate.

export const REPLICATION_USAGE = `  keygen KEYFILE                    create a shared secret for replication (mode 0600)
  serve --listen HOST:PORT|unix:PATH --key KEYFILE [--keep N]
                                    receive replicated snapshots (keep the latest N per branch, or all)
  replicate (SNAP | --branch SNAP | --all) --to HOST:PORT|unix:PATH --key KEYFILE [--no-hybrid] [--no-delta]
                                    send snapshots a peer lacks (only the chunks it lacks, changed chunks as
                                    deltas against their old versions unless --no-delta); with --branch or
                                    --all, snapshots the peer removed by its retention are not sent again`;

export const REPLICATION_OPTIONS = {
  listen: { type: 'string' },
  key: { type: 'string' },
  keep: { type: 'string' },
  to: { type: 'string' },
  branch: { type: 'string' },
  all: { type: 'boolean' },
  'no-hybrid': { type: 'boolean' },
  'no-delta': { type: 'boolean' },
} as const;


const out = (s: string) => process.stdout.write(s + '\n');

function keepOption(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw invalid('--keep must be a whole number of snapshots per branch (1 or more)');
  return n;
}

/** The snapshots to send: one, the line from the root to one, or all; parents first. */
export function selectSnapshots(cat: Catalogue, values: Ctx['values'], args: string[]): SnapshotInfo[] {
  const all = cat.list();
  if (values.all) return temporalOrder(all);
  if (values.branch) {
    const byId = new Map(all.map((s) => [s.id, s]));
    const line: SnapshotInfo[] = [];
    for (let s: SnapshotInfo | undefined = cat.get(values.branch as string); s; s = s.parent ? byId.get(s.parent) : undefined) line.unshift(s);
    return line;
  }
  if (!args[0]) throw invalid('name a snapshot, or use --branch SNAP or --all');
  return [cat.get(args[0])];
}

export const replicationCommands: Record<string, (ctx: Ctx) => Promise<void> | void> = {
  keygen(ctx) {
    const file = ctx.args[0];
    if (!file) throw invalid('usage: strata keygen KEYFILE');
    generateKeyFile(file);
    out(`wrote a new replication key to ${file} (mode 0600); copy it to the peer over a safe channel`);
  },

  async serve(ctx) {
    if (!ctx.values.listen || !ctx.values.key) throw invalid('usage: strata serve --store DIR --listen HOST:PORT|unix:PATH --key KEYFILE [--keep N]');
    const cas = CasStore.open(ctx.store, { write: true, relaxed: true });
    const cat = new Catalogue(cas);
    const pool = new PerformancePool(cas, cat);
    const log = (m: string) => process.stderr.write(`${new Date().toISOString()} ${m}\n`);
    try {
      const server = await startReplicationServer(cas, cat, {
        listen: ctx.values.listen as string,
        keyFile: ctx.values.key as string,
        keepPerBranch: keepOption(ctx.values.keep),
        // One pool, one queue: updates run one after another and a failure is logged, not fatal.
        onCommit: (s) => { pool.schedule(s.id).catch((e: Error) => log(`performance pool update for ${s.id} failed: ${e.message}`)); },
        log,
      });
      out(`serving ${ctx.store} for replication on ${server.address}`);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      await server.close();
      await pool.idle();
    } finally {
      cas.close();
    }
  },

  async replicate(ctx) {
    if (!ctx.values.to || !ctx.values.key) throw invalid('usage: strata replicate (SNAP | --branch SNAP | --all) --store DIR --to ADDRESS --key KEYFILE');
    const secret = readKeyFile(ctx.values.key as string);
    // Sending only reads the store (it may be mounted); it records which peer holds what.
    const cas = CasStore.open(ctx.store, { write: false });
    const cat = new Catalogue(cas);
    try {
      const snaps = selectSnapshots(cat, ctx.values, ctx.args);
      const conn = await dial(ctx.values.to as string, secret, 'sender');
      const started = Date.now();
      const pool = new PerformancePool(cas, cat);
      // Only a snapshot named on its own counts as explicit: --branch and --all respect the peer's retention.
      const explicit = new Set(ctx.values.all || ctx.values.branch ? [] : snaps.map((s) => s.id));
      const r = await sendSnapshots(cas, cat, conn, snaps, { hybrid: !ctx.values['no-hybrid'], pool, delta: !ctx.values['no-delta'], explicit });
      conn.close();
      const seconds = (Date.now() - started) / 1000;
      if (ctx.json) { process.stdout.write(JSON.stringify({ ...r, seconds }, null, 2) + '\n'); return; }
      for (const s of r.snapshots) {
        const what = s.skipReason === 'retired' ? 'not sent (the peer removed it by retention; name it to send it anyway)' : s.skipped ? 'already there' : 'sent';
        out(`${what}: ${s.name ?? s.id}${s.neighbour ? ` (diffed against ${s.neighbour})` : ''}`);
      }
      out(`${formatBytes(r.bytesOnWire)} on the wire in ${seconds.toFixed(1)} s; chunks offered ${r.chunksOffered}, needed ${r.chunksNeeded}, ` +
        `sent ${r.chunksSent} (${r.chunksSentAsDelta} as deltas, ${formatBytes(r.deltaBytes)}); ` +
        `read ${formatBytes(r.bytesFromCapacity)} from containers, ${formatBytes(r.bytesFromPerformance)} from the performance pool`);
    } finally {
      cas.close();
    }
  },
};
