#!/usr/bin/env node
// The FUSE ceiling: sequential write and read throughput through memfs-server (an in-memory
// filesystem whose handlers cost next to nothing), mounted with and without FUSE_MOUNT_DEFAULTS.
// Whatever Strata does on top can only be slower than this, so it is the baseline for the other
// benchmarks. A tmpfs row (no FUSE at all) puts the figures in context.
//
//   npx tsc -p . && node benchmarks/fuse-ceiling.mjs
// Environment:
//   CEILING_MIB     file size in MiB (default 1024)
//   CEILING_REPEAT  runs per variant; the table shows the median (default 3)
//   CEILING_JSON    also print the full figures as JSON when set to 1
//
// Each run starts a fresh server in a child process (this process only runs dd against the mount,
// never serves it), writes the file with `dd bs=1M conv=fsync`, reads it back with `dd bs=1M`, and
// unmounts. The server's own counters confirm the request sizes and that reads reached it.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SERVER = path.join(ROOT, 'dist', 'test', 'fixtures', 'memfs-server.js');
const { isMounted, unmountQuietly } = await import(path.join(ROOT, 'dist', 'src', 'fuse', 'mount-options.js'));

const MIB = Number(process.env.CEILING_MIB ?? 1024);
const REPEAT = Math.max(1, Number(process.env.CEILING_REPEAT ?? 3));
const MB = 1e6;

const VARIANTS = [
  { name: 'FUSE, FUSE_MOUNT_DEFAULTS', args: [] },
  { name: 'FUSE, fuse-native defaults', args: ['--plain'] },
  { name: 'FUSE, defaults, no op timer', args: ['--no-timeout'] },
  { name: 'tmpfs (no FUSE)', tmpfs: true },
];

function say(msg) {
  process.stderr.write(`[ceiling] ${msg}\n`);
}

const live = new Set();
async function cleanup() {
  for (const server of live) await server.stop().catch((e) => say(String(e)));
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { void cleanup().finally(() => process.exit(130)); });
}

/** Starts memfs-server on a fresh mountpoint and waits until it answers there. */
async function startServer(args) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-ceiling-'));
  const mountpoint = path.join(dir, 'mnt');
  fs.mkdirSync(mountpoint);
  const child = spawn(process.execPath, [SERVER, mountpoint, ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (s) => { err += s; });
  child.stdout.resume();
  const exited = new Promise((resolve) => child.once('exit', resolve));
  let stopped = null;
  const server = {
    mountpoint,
    stop: () => (stopped ??= (async () => {
      await unmountQuietly(mountpoint).catch(() => {});
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(timer);
      }
      await unmountQuietly(mountpoint);
      live.delete(server);
      fs.rmdirSync(mountpoint);
      fs.rmdirSync(dir);
    })()),
  };
  live.add(server);
  const parentDev = fs.statSync(dir).dev;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (isMounted(mountpoint)) {
      const dev = await fs.promises.stat(mountpoint).then((st) => st.dev, () => -1);
      if (dev !== -1 && dev !== parentDev) return server;
    }
    if (child.exitCode !== null || Date.now() > deadline) {
      await server.stop().catch(() => {});
      throw new Error(`memfs-server did not mount:\n${err}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Runs dd and returns the wall time in seconds (open, copy, fsync, close). */
function timedDd(args) {
  const start = performance.now();
  const res = spawnSync('dd', [...args, 'status=none'], { encoding: 'utf8', timeout: 600_000 });
  const seconds = (performance.now() - start) / 1000;
  if (res.status !== 0) throw new Error(`dd ${args.join(' ')} failed: ${res.stderr || res.error}`);
  return seconds;
}

async function runOnce(variant) {
  let server = null;
  let dir = null;
  try {
    if (variant.tmpfs) {
      dir = fs.mkdtempSync(path.join('/dev/shm', 'strata-ceiling-'));
    } else {
      server = await startServer(variant.args);
    }
    const file = path.join(server ? server.mountpoint : dir, 'f');
    const writeS = timedDd(['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${MIB}`, 'conv=fsync']);
    const readS = timedDd([`if=${file}`, 'of=/dev/null', 'bs=1M']);
    const stats = server ? JSON.parse(fs.readFileSync(path.join(server.mountpoint, '.stats'), 'utf8')) : null;
    if (stats && stats.reads.bytes < MIB * 1024 * 1024) {
      say(`warning: only ${stats.reads.bytes} bytes were read through FUSE; the page cache served the rest`);
    }
    return { writeMBs: (MIB * 1024 * 1024) / MB / writeS, readMBs: (MIB * 1024 * 1024) / MB / readS, stats };
  } finally {
    if (server) await server.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function histogramText(stats) {
  if (!stats) return '-';
  return Object.entries(stats.histogram)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([size, n]) => `${size}x${n}`)
    .join(' ');
}

if (!fs.existsSync(SERVER)) {
  say(`${SERVER} is missing; run npx tsc -p . first`);
  process.exit(1);
}
say(`${MIB} MiB per run, ${REPEAT} runs per variant; node ${process.version}, kernel ${os.release()}, ${os.cpus().length} cpus`);

// Round-robin, so drift in the machine's speed (a VM's neighbours) spreads over all variants.
const runs = VARIANTS.map(() => []);
try {
  for (let i = 0; i < REPEAT; i++) {
    for (const [v, variant] of VARIANTS.entries()) {
      const r = await runOnce(variant);
      say(`${variant.name} #${i + 1}: write ${r.writeMBs.toFixed(0)} MB/s, read ${r.readMBs.toFixed(0)} MB/s`);
      runs[v].push(r);
    }
  }
} finally {
  await cleanup();
}
const results = VARIANTS.map((variant, v) => ({
  name: variant.name,
  writeMBs: median(runs[v].map((r) => r.writeMBs)),
  readMBs: median(runs[v].map((r) => r.readMBs)),
  stats: runs[v].at(-1).stats,
  runs: runs[v].map(({ writeMBs, readMBs }) => ({ writeMBs, readMBs })),
}));

const plain = results.find((r) => r.name === 'FUSE, fuse-native defaults');
const rows = results.map((r) => [
  r.name,
  r.writeMBs.toFixed(0),
  (r.writeMBs / plain.writeMBs).toFixed(2) + 'x',
  r.readMBs.toFixed(0),
  (r.readMBs / plain.readMBs).toFixed(2) + 'x',
  r.stats ? String(r.stats.max) : '-',
  histogramText(r.stats),
  r.stats ? String(r.stats.reads.max) : '-',
  r.runs.map((x) => x.writeMBs.toFixed(0)).join(' '),
]);
const header = ['variant', 'write MB/s', 'vs plain', 'read MB/s', 'vs plain', 'max write', 'write sizes (bytes x requests)', 'max read', 'write MB/s, each run'];
console.log(`\nFUSE ceiling: ${MIB} MiB sequential, dd bs=1M (write with conv=fsync), median of ${REPEAT}\n`);
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map(() => '---').join('|')}|`);
for (const row of rows) console.log(`| ${row.join(' | ')} |`);
if (process.env.CEILING_JSON === '1') console.log(JSON.stringify(results, null, 2));
const leftover = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes('strata-ceiling-'));
if (leftover.length) say(`still mounted: ${leftover.join('; ')}`);
