import path from 'node:path';
import { parseArgs } from 'node:util';
import { diffEntries, type PathChange } from '../cas/diff.js';
import { collectGarbage } from '../cas/gc.js';
import { handleHex } from '../cas/hash.js';
import { rebuildIndex } from '../cas/rebuild.js';
import { CasStore, DEFAULT_PERFORMANCE } from '../cas/store.js';
import { fingerprintCoverage, verifyStore } from '../cas/verify.js';
import { invalid, isStrataError, StrataError } from '../errors.js';
import { importHostPath } from '../host/import-tree.js';
import { liveHeldHandles } from '../fs/live-tree.js';
import { PerformancePool } from '../pools/performance-pool.js';
import { checkRestored } from '../host/restore-check.js';
import { lookupPath, restoreToHost } from '../host/restore-tree.js';
import { Catalogue } from '../temporal/catalogue.js';
import { storeStats } from '../temporal/store-stats.js';
import { Chunking, type SnapshotInfo, type TreeEntry } from '../types.js';
import { displayPath, formatBytes, isoTime, jsonPath, modeString, Progress, snapshotLabel } from './format.js';
import { drawTemporalTree } from './log-draw.js';
import { explainLockError, MOUNT_OPTIONS, MOUNT_USAGE, mountCommands } from './mount-commands.js';
import { REPLICATION_OPTIONS, REPLICATION_USAGE, replicationCommands } from './replication-commands.js';

const USAGE = `usage: strata <command> [options]   (every command takes --store DIR or STRATA_STORE)

  init [--performance-keep N] [--performance-threshold SIZE]
                                    create a store (performance pool: latest N snapshots per
                                    branch of files >= SIZE kept natively; defaults 2 and 32M)
  import PATH [--name N] [--parent SNAP] [--chunking cdc|fixed]
                                    store a directory tree or an image file as a snapshot
  ls SNAP[:PATH] [-l]               list a directory of a snapshot
  cat SNAP:PATH                     write a file of a snapshot to stdout
  restore SNAP[:PATH] DEST          restore a snapshot (or part) to DEST
  diff A B                          changed paths and byte extents from snapshot A to B
  log                               the temporal tree of snapshots
  stats                             sizes, dedup and compression ratios, unique bytes per snapshot
  rm SNAP                           remove a snapshot (its children are re-parented)
  gc [--threshold F]                reclaim space of removed data; compact sparse containers
  verify [--sample PERCENT]         re-read and re-hash stored data
  verify --fingerprints             per object, the share of its bytes fingerprint checks have covered
  index rebuild                     rebuild the index from the containers alone
${MOUNT_USAGE}
${REPLICATION_USAGE}

  --json    machine-readable output`;

/** What every command gets: its store, --json, the parsed options and the positional arguments. */
export interface Ctx {
  store: string;
  json: boolean;
  values: Record<string, string | boolean | undefined>;
  args: string[];
}

const out = (s: string) => process.stdout.write(s + '\n');
const printJson = (v: unknown) => out(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), 2));

async function withStoreAsync<T>(ctx: Ctx, write: boolean, fn: (cas: CasStore, cat: Catalogue) => Promise<T>): Promise<T> {
  const cas = CasStore.open(ctx.store, { write });
  try {
    return await fn(cas, new Catalogue(cas));
  } finally {
    cas.close();
  }
}

function withStore<T>(ctx: Ctx, write: boolean, fn: (cas: CasStore, cat: Catalogue) => T): T {
  const cas = CasStore.open(ctx.store, { write });
  try {
    return fn(cas, new Catalogue(cas));
  } finally {
    cas.close();
  }
}

/** Parses SNAP or SNAP:PATH. */
function resolveSpec(cas: CasStore, cat: Catalogue, spec: string): { snap: SnapshotInfo; entry: TreeEntry; rel: Buffer } {
  const i = spec.indexOf(':');
  const ref = i < 0 ? spec : spec.slice(0, i);
  const rel = Buffer.from(i < 0 ? '' : spec.slice(i + 1).replace(/^\/+|\/+$/g, ''));
  const snap = cat.get(ref);
  const root = cat.rootEntry(snap);
  const entry = rel.length ? lookupPath(cas.objects, root, rel) : root;
  return { snap, entry, rel };
}

/** "64M", "1G", "4096" -> bytes. */
function parseSize(s: string): number {
  const m = /^(\d+)([KMGT]?)i?B?$/i.exec(s.trim());
  if (!m) throw invalid(`cannot read size '${s}' (use e.g. 4096, 64M, 1G)`);
  return Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
}

function need(ctx: Ctx, n: number, what: string): void {
  if (ctx.args.length < n) throw invalid(`missing ${what}\n${USAGE}`);
}

const commands: Record<string, (ctx: Ctx) => void | Promise<void>> = {
  init(ctx) {
    const keep = ctx.values['performance-keep'];
    const threshold = ctx.values['performance-threshold'];
    const performance = { ...DEFAULT_PERFORMANCE };
    if (keep !== undefined) {
      performance.keepPerBranch = Number(keep);
      if (!Number.isInteger(performance.keepPerBranch) || performance.keepPerBranch < 0) throw invalid('--performance-keep must be a whole number (0 turns the performance pool off)');
    }
    if (threshold !== undefined) {
      performance.thresholdBytes = parseSize(threshold as string);
    }
    CasStore.init(ctx.store, { performance });
    if (ctx.json) printJson({ store: path.resolve(ctx.store) });
    else out(`initialised store at ${path.resolve(ctx.store)}`);
  },

  async import(ctx) {
    need(ctx, 1, 'PATH to import');
    const source = path.resolve(ctx.args[0]);
    const chunkingOpt = ctx.values.chunking as string | undefined;
    if (chunkingOpt && chunkingOpt !== 'cdc' && chunkingOpt !== 'fixed') throw invalid(`--chunking must be cdc or fixed`);
    await withStoreAsync(ctx, true, async (cas, cat) => {
      const started = Date.now();
      const parent = ctx.values.parent ? cat.get(ctx.values.parent as string) : cat.latestBySource(source) ?? null;
      if (ctx.values.name) cat.checkNewName(ctx.values.name as string); // fail before the work, not after
      const progress = new Progress();
      const previousOf = (e: TreeEntry) =>
        e.content && (e.type === 'dir' || e.type === 'file') ? { trees: cas.objects, root: e.content, rootType: e.type } : null;
      const res = importHostPath(source, {
        objects: cas.objects,
        trees: cas.objects,
        previous: parent ? previousOf(cat.rootEntry(parent)) : null,
      }, {
        chunking: chunkingOpt === 'fixed' ? Chunking.Fixed : chunkingOpt === 'cdc' ? Chunking.Cdc : undefined,
        onProgress: (p) => progress.update(`importing: ${p.files} files, ${formatBytes(p.bytes)}  ${displayPath(Buffer.from(p.path))}`.slice(0, 160)),
      });
      progress.done();
      const snap = cat.create({
        name: (ctx.values.name as string | undefined) ?? null,
        parent: parent?.id ?? null,
        source,
        entry: res.rootEntry,
        logicalBytes: res.logicalBytes,
        fileCount: res.fileCount,
      });
      const pool = await new PerformancePool(cas, cat).update(snap.id);
      const st = cas.chunks.stats;
      const seconds = (Date.now() - started) / 1000;
      const storedBytes = st.storedBytes + 48 * st.newChunks;
      if (ctx.json) {
        printJson({
          id: snap.id, name: snap.name, parent: snap.parent, root: handleHex(snap.root), logicalBytes: res.logicalBytes,
          storedBytes, files: res.fileCount, dirs: res.dirCount, seconds, dedup: st, performancePool: pool,
        });
      } else {
        out(`snapshot ${snapshotLabel(snap)}${snap.parent ? ` (parent ${snap.parent})` : ''}: ${res.fileCount} files, ${formatBytes(res.logicalBytes)} in ${seconds.toFixed(1)} s`);
        out(`  new data ${formatBytes(st.newBytes)} stored as ${formatBytes(storedBytes)}; deduplicated ${formatBytes(st.dedupBytes)} ` +
          `(${st.temporalHits} temporal, ${st.cacheHits} cache, ${st.indexHits} index hits); zeros ${formatBytes(st.zeroBytes)}`);
      }
    });
  },

  ls(ctx) {
    need(ctx, 1, 'SNAP[:PATH]');
    withStore(ctx, false, (cas, cat) => {
      const { entry } = resolveSpec(cas, cat, ctx.args[0]);
      const list = entry.type === 'dir' && entry.content ? cas.objects.readTree(entry.content) : [entry];
      if (ctx.json) {
        printJson(list.map((e) => ({
          name: jsonPath(e.name), type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, size: e.size,
          mtime: new Date(Number(e.mtimeNs / 1_000_000n)).toISOString(),
          target: e.target ? jsonPath(e.target) : undefined, content: e.content ? handleHex(e.content) : null,
        })));
        return;
      }
      for (const e of list) {
        const name = displayPath(e.name) + (e.type === 'dir' ? '/' : '') + (e.target ? ` -> ${displayPath(e.target)}` : '');
        if (ctx.values.long) {
          out(`${modeString(e)} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${String(e.size).padStart(12)} ${isoTime(Number(e.mtimeNs / 1_000_000n))} ${name}`);
        } else out(name);
      }
    });
  },

  cat(ctx) {
    need(ctx, 1, 'SNAP:PATH');
    withStore(ctx, false, (cas, cat) => {
      const { entry } = resolveSpec(cas, cat, ctx.args[0]);
      if (entry.type !== 'file') throw new StrataError('EISDIR', `${ctx.args[0]} is a ${entry.type}, not a file`);
      if (!entry.content) return;
      const size = cas.objects.objectSize(entry.content);
      const piece = 4 * 1024 * 1024;
      for (let off = 0; off < size; off += piece) {
        writeAllSync(1, cas.objects.readObject(entry.content, off, piece));
      }
    });
  },

  restore(ctx) {
    need(ctx, 2, 'SNAP[:PATH] DEST');
    withStore(ctx, false, (cas, cat) => {
      const { entry } = resolveSpec(cas, cat, ctx.args[0]);
      const progress = new Progress();
      const started = Date.now();
      const r = restoreToHost(entry, path.resolve(ctx.args[1]), { objects: cas.objects, trees: cas.objects }, {
        onProgress: (p) => progress.update(`restoring: ${p.files} files, ${formatBytes(p.bytes)}`),
      });
      progress.done();
      // Large restored files are checked against the store by sparse fingerprints.
      const check = checkRestored(cas.objects, entry, path.resolve(ctx.args[1]), null);
      const seconds = (Date.now() - started) / 1000;
      if (ctx.json) printJson({ ...r, seconds, fingerprintChecked: check.files });
      else out(`restored ${r.files} files, ${formatBytes(r.bytes)} to ${path.resolve(ctx.args[1])} in ${seconds.toFixed(1)} s` +
        (check.files ? `; ${check.files} large files checked by fingerprint` : ''));
    });
  },

  diff(ctx) {
    need(ctx, 2, 'two snapshots A B');
    withStore(ctx, false, (cas, cat) => {
      const a = resolveSpec(cas, cat, ctx.args[0]);
      const b = resolveSpec(cas, cat, ctx.args[1]);
      const changes: PathChange[] = [...diffEntries(cas.objects, a.entry, b.entry)];
      if (ctx.json) {
        printJson(changes.map((c) => ({ ...c, path: jsonPath(c.path) })));
        return;
      }
      const sym: Record<PathChange['change'], string> = { added: '+', removed: '-', modified: 'M', type: 'T', meta: 'm' };
      for (const c of changes) {
        let line = `${sym[c.change]} ${displayPath(c.path) || '.'}`;
        if (c.extents) {
          const bytes = c.extents.reduce((s, e) => s + e.length, 0);
          const shown = c.extents.slice(0, 4).map((e) => `${e.offset}+${e.length}`).join(' ');
          line += `  (${formatBytes(bytes)} changed in ${c.extents.length} extents: ${shown}${c.extents.length > 4 ? ' ...' : ''})`;
        }
        out(line);
      }
    });
  },

  log(ctx) {
    withStore(ctx, false, (_cas, cat) => {
      const snaps = cat.list();
      if (ctx.json) printJson(snaps.map((s) => ({ ...s, root: handleHex(s.root), created: isoTime(s.createdMs) })));
      else for (const line of drawTemporalTree(snaps)) out(line);
    });
  },

  stats(ctx) {
    withStore(ctx, false, (cas, cat) => {
      const result = storeStats(cas, cat, { perSnapshot: true });
      const { logicalBytes: logical, storedBytes: onDisk } = result;
      const perSnapshot = result.perSnapshot ?? [];
      if (ctx.json) { printJson(result); return; }
      out(`snapshots          ${result.snapshots}`);
      out(`logical bytes      ${formatBytes(logical)}  (sum over snapshots)`);
      out(`performance pool   ${formatBytes(result.performanceBytes)}  (native copies of large files)`);
      out(`stored bytes       ${formatBytes(onDisk)}  in ${result.containers} containers (${formatBytes(result.deadBytes)} dead, reclaimable by gc)`);
      out(`unique data        ${formatBytes(result.uniqueDataBytes)} in ${result.dataChunks} chunks; metadata ${formatBytes(result.metadataBytes)} in ${result.metadataChunks} chunks`);
      out(`dedup ratio        ${result.dedupRatio.toFixed(2)}  (logical / stored)`);
      out(`compression ratio  ${result.compressionRatio.toFixed(2)}`);
      if (perSnapshot.length) out('unique bytes per snapshot (what removing it would free):');
      for (const p of perSnapshot) out(`  ${p.id} ${(p.name ?? '').padEnd(20)} ${formatBytes(p.uniqueBytes).padStart(12)} of ${formatBytes(p.logicalBytes)}`);
    });
  },

  rm(ctx) {
    need(ctx, 1, 'SNAP');
    withStore(ctx, true, (cas, cat) => {
      const r = cat.remove(ctx.args[0]);
      new PerformancePool(cas, cat).prune();
      if (ctx.json) printJson({ removed: r.removed.id, reparented: r.reparented, freedChunks: r.freed.chunks, freedBytes: r.freed.storedBytes });
      else {
        out(`removed ${snapshotLabel(r.removed)}; ${r.freed.chunks} chunks (${formatBytes(r.freed.storedBytes)}) are now free for 'strata gc'`);
        if (r.reparented.length) out(`re-parented ${r.reparented.join(', ')} to ${r.removed.parent ?? '(root)'}`);
      }
    });
  },

  gc(ctx) {
    const threshold = ctx.values.threshold === undefined ? 0.5 : Number(ctx.values.threshold);
    if (!(threshold >= 0 && threshold <= 1)) throw invalid('--threshold must be a fraction between 0 and 1');
    withStore(ctx, true, (cas, cat) => {
      const progress = new Progress();
      const r = collectGarbage(cas, cat.list(), [...cat.recordHandles(), ...liveHeldHandles(cas.index.db)], {
        threshold,
        onProgress: (p) => progress.update(`gc ${p.phase}: ${p.done}/${p.total}`),
      });
      progress.done();
      if (ctx.json) printJson(r);
      else out(`gc: marked ${r.marked} chunks, swept ${r.swept} (${formatBytes(r.sweptBytes)}), compacted ${r.compactedContainers} containers (${r.movedChunks} chunks moved), deleted ${r.deletedContainers} empty; reclaimed ${formatBytes(r.reclaimedBytes)}`);
    });
  },

  verify(ctx) {
    if (ctx.values.fingerprints) {
      const rows = withStore(ctx, false, (cas, cat) => fingerprintCoverage(cas, cat.list()));
      if (ctx.json) { printJson(rows); return; }
      for (const r of rows) out(`${(r.coverage * 100).toFixed(1).padStart(6)}%  ${formatBytes(r.size).padStart(10)}  ${r.snapshot}:${r.path}`);
      const total = rows.reduce((s, r) => s + r.size, 0);
      const covered = rows.reduce((s, r) => s + r.size * r.coverage, 0);
      out(`${rows.length} objects; fingerprints have covered ${total ? ((covered / total) * 100).toFixed(1) : '0.0'}% of their bytes`);
      return;
    }
    const sample = ctx.values.sample === undefined ? undefined : Number(ctx.values.sample);
    if (sample !== undefined && !(sample > 0 && sample <= 100)) throw invalid('--sample must be a percentage in (0, 100]');
    const report = withStore(ctx, false, (cas, cat) => {
      const progress = new Progress();
      const r = verifyStore(cas, cat.list(), { samplePercent: sample, onProgress: (p) => progress.update(`verifying: ${p.done}/${p.total} chunks, ${formatBytes(p.bytes)}`) });
      progress.done();
      return r;
    });
    if (ctx.json) printJson(report);
    else {
      out(`verified ${report.chunksChecked} chunks (${formatBytes(report.bytesChecked)})${sample !== undefined ? ` (${sample}% sample)` : ''}: ${report.ok ? 'ok' : 'DAMAGED'}`);
      for (const b of report.bad) out(`  corrupt: ${b.message}`);
      for (const m of report.missing) out(`  missing: chunk ${m.handle.slice(0, 12)} referenced by snapshot ${m.snapshot}`);
      for (const a of report.affected) {
        out(`  affected snapshot ${a.snapshot}${a.name ? ` (${a.name})` : ''}:`);
        for (const p of a.paths.slice(0, 50)) out(`    ${p}`);
        if (a.paths.length > 50) out(`    ... and ${a.paths.length - 50} more`);
      }
    }
    if (!report.ok) process.exitCode = 3;
  },

  index(ctx) {
    if (ctx.args[0] !== 'rebuild') throw invalid(`usage: strata index rebuild --store DIR`);
    CasStore.open(ctx.store, { write: true }).close(); // fails clearly if the store is missing or locked
    const r = rebuildIndex(ctx.store, () => CasStore.open(ctx.store, { write: true }));
    if (ctx.json) printJson(r);
    else {
      out(`rebuilt index from ${r.containers} containers: ${r.chunks} chunks, ${r.snapshots} snapshots${r.backup ? `; old index kept at ${r.backup}` : ''}`);
      for (const p of r.problems) out(`  problem: ${p}`);
    }
  },
};

function writeAllSync(fd: number, buf: Buffer): void {
  for (let off = 0; off < buf.length;) {
    try {
      off += require_fs().writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      if ((e as NodeJS.ErrnoException).code === 'EPIPE') process.exit(0);
      throw e;
    }
  }
}

import fsModule from 'node:fs';
const require_fs = () => fsModule;

export async function main(argv: string[]): Promise<number> {
  // `strata cat ... | head` closes the pipe early: that is not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'EPIPE') process.exit(0); throw e; });
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        store: { type: 'string', short: 's' },
        json: { type: 'boolean' },
        name: { type: 'string' },
        parent: { type: 'string' },
        chunking: { type: 'string' },
        long: { type: 'boolean', short: 'l' },
        threshold: { type: 'string' },
        sample: { type: 'string' },
        fingerprints: { type: 'boolean' },
        'performance-keep': { type: 'string' },
        'performance-threshold': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        ...MOUNT_OPTIONS,
        ...REPLICATION_OPTIONS,
      },
    });
  } catch (e) {
    process.stderr.write(`strata: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const [cmd, ...args] = parsed.positionals;
  if (!cmd || parsed.values.help) {
    out(USAGE);
    return cmd || parsed.values.help ? 0 : 2;
  }
  // Mount commands find their store themselves: mount takes it as a positional, unmount reads it
  // from the mount table.
  if (Object.hasOwn(mountCommands, cmd)) {
    return mountCommands[cmd]({
      store: (parsed.values.store as string | undefined) ?? process.env.STRATA_STORE,
      json: Boolean(parsed.values.json), values: parsed.values, args,
    });
  }
  const fn = commands[cmd] ?? replicationCommands[cmd];
  if (!fn) {
    process.stderr.write(`strata: unknown command '${cmd}'\n${USAGE}\n`);
    return 2;
  }
  const store = (parsed.values.store as string | undefined) ?? process.env.STRATA_STORE ?? (cmd === 'keygen' ? '' : undefined);
  if (store === undefined) {
    process.stderr.write(`strata: no store given: pass --store DIR or set STRATA_STORE\n`);
    return 2;
  }
  try {
    await fn({ store, json: Boolean(parsed.values.json), values: parsed.values, args });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (thrown) {
    const e = explainLockError(store, thrown); // "store is mounted at MNT by process N" when it is
    if (isStrataError(e)) {
      process.stderr.write(`strata: ${e.message}\n`);
      return e.code === 'EINVAL' ? 2 : 1;
    }
    const err = e as NodeJS.ErrnoException;
    if (err.code && err.message) {
      process.stderr.write(`strata: ${err.message}\n`);
      if (process.env.STRATA_DEBUG) process.stderr.write(`${err.stack}\n`);
      return 1;
    }
    process.stderr.write(`strata: internal error: ${err.stack ?? String(e)}\n`);
    return 70;
  }
}
