#!/usr/bin/env node
// Replication benchmark: how many bytes (and how much time) it takes to bring a peer up to date,
// for Strata (`strata replicate` to a `strata serve` peer: hybrid seeding on and off, deltas off), rsync (a
// daemon on loopback, plain and with -z) and restic (`restic copy` between two repositories), on
// the datasets of the dedup benchmark (benchmarks/datasets.mjs), in one run.
//
//   npm run bench:replication     (= npm run build && node benchmarks/replication-bench.mjs)
//
// For every dataset the versions are sent one after the other: step 1 seeds an empty peer with the
// first version, step k brings a peer that holds version k-1 to version k. Every network transfer
// goes through a counting TCP relay on 127.0.0.1 (benchmarks/tcp-meter.mjs), so the bytes that
// really crossed the loopback are measured in both directions, beside what each tool reports.
// Writes benchmarks/results/replication-latest.md (the Markdown table, also printed) and
// replication-latest.json (every figure of every round). Details: benchmarks/README.md.
//
// Environment:
//   BENCH_TOOLS     comma list of strata,rsync,rsync-z,restic (default: all)
//   BENCH_DATASETS  comma list of datasets (default: all in the manifest: src,image)
//   BENCH_REPEAT    rounds (fresh peers each round); times are medians over the rounds (default 3)
//   BENCH_BUDGET    seconds after which no further round starts (default 360)
//   BENCH_TIMEOUT   seconds one command may take before it is killed (default 600)
//   BENCH_WORK      work directory (default benchmarks/work)
//   BENCH_STRATA_BIN  the Strata CLI script, run with node (default bin/strata)
//   BENCH_RESULTS   where replication-latest.md / .json go (default benchmarks/results)

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { freePort, startMeter } from './tcp-meter.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.resolve(process.env.BENCH_WORK ?? path.join(ROOT, 'benchmarks', 'work'));
const RW = path.join(WORK, 'replication'); // everything this benchmark writes, apart from logs and results
const LOGS = path.join(WORK, 'logs');
const RESULTS = path.resolve(process.env.BENCH_RESULTS ?? path.join(ROOT, 'benchmarks', 'results'));
const TIMEOUT = Number(process.env.BENCH_TIMEOUT ?? 600);
const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 3));
const BUDGET = Number(process.env.BENCH_BUDGET ?? 360);
const STRATA_BIN = path.resolve(process.env.BENCH_STRATA_BIN ?? path.join(ROOT, 'bin', 'strata'));
const ALL_TOOLS = ['strata', 'rsync', 'rsync-z', 'restic'];
const RESTIC_PASSWORD = 'strata-bench-not-secret';
/** The target of the issue: incremental bytes on the wire <= 1.1 x the compressed chunks the peer lacked. */
const TARGET_FACTOR = 1.1;
/** Fixed bytes of a CHUNK message besides its payload: frame header (u32 length, u8 type) + 32 handle + kind + codec + u32 rawLength. */
const CHUNK_HEADER_BYTES = 5 + 32 + 1 + 1 + 4;
/** Per offered item: 32 handle + u8 base count (the base handles themselves are counted under "other"). */
const OFFER_HANDLE_BYTES = 33;

function say(msg) {
  process.stderr.write(`[replication-bench] ${msg}\n`);
}

class ToolError extends Error {}

const rmrf = (p) => fs.rmSync(p, { recursive: true, force: true });
const median = (xs) => {
  const a = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((x, y) => x - y);
  if (!a.length) return undefined;
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};
const sum = (xs) => xs.reduce((s, x) => s + (x ?? 0), 0);

/** Sum of the sizes of the regular files under p (like `du -sb` without directory entries). */
function bytesOnDisk(p) {
  let total = 0;
  const visit = (q) => {
    const st = fs.lstatSync(q);
    if (st.isDirectory()) for (const n of fs.readdirSync(q)) visit(path.join(q, n));
    else if (st.isFile()) total += st.size;
  };
  if (fs.existsSync(p)) visit(p);
  return total;
}

// ---------------------------------------------------------------------------------------------
// Processes. Everything runs asynchronously: the byte meters live in this process's event loop.

let logFile = null;
const children = new Set(); // long-running processes started here (servers), stopped by pid on exit

function log(text) {
  if (logFile) fs.appendFileSync(logFile, text);
}

/** Runs a command to completion; returns { status, stdout, stderr, seconds }. Killed (by its pid) after `timeout` s. */
function exec(cmd, args, { cwd = ROOT, env = {}, timeout = TIMEOUT } = {}) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    child.stdout.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }, timeout * 1000);
    let startError = null;
    child.on('error', (e) => { startError = e; });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const seconds = (performance.now() - t0) / 1000;
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      log(`\n$ (cd ${cwd} && ${cmd} ${args.join(' ')})\n${stdout}${stderr}` +
        `[exit ${code ?? signal}${timedOut ? ' (timed out)' : ''}, ${seconds.toFixed(2)} s]\n`);
      resolve({ status: startError ? -1 : code, signal, timedOut, stdout, stderr, seconds, error: startError });
    });
  });
}

function must(r, what) {
  if (r.error) throw new ToolError(`${what}: could not start: ${r.error.message}`);
  if (r.timedOut) throw new ToolError(`${what}: timed out after ${TIMEOUT} s`);
  if (r.status !== 0) {
    const last = (r.stderr.trim().split('\n').filter((l) => l.trim()).pop() ?? r.stdout.trim().split('\n').pop() ?? '').trim();
    throw new ToolError(`${what} exited with ${r.status ?? r.signal}: ${last.slice(0, 200).replace(/\|/g, '/')}`);
  }
  return r;
}

/**
 * Starts a long-running server. `ready(stdoutSoFar)` returns a value once the server is up (or
 * undefined while not yet). Returns { pid, value, stop() }; stop sends SIGTERM to that pid, then
 * SIGKILL after 10 s.
 */
function startServer(cmd, args, { cwd = ROOT, env = {}, ready, what }) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let settled = false;
    let gone = false; // never signal a pid whose process has already exited (the pid may be reused)
    const exited = new Promise((r) => child.once('exit', (code, signal) => { gone = true; r(code ?? signal); }));
    const kill = (sig) => { if (!gone) { try { process.kill(child.pid, sig); } catch { /* already gone */ } } };
    const handle = {
      pid: child.pid,
      value: undefined,
      stopped: null,
      stop() {
        handle.stopped ??= handle.stopOnce();
        return handle.stopped;
      },
      async stopOnce() {
        children.delete(handle);
        kill('SIGTERM');
        const t = setTimeout(() => kill('SIGKILL'), 10000);
        const code = await exited;
        clearTimeout(t);
        log(`\n[${what} (pid ${child.pid}) stopped: ${code}]\n${out}${err}`);
      },
    };
    children.add(handle);
    const check = async () => {
      if (settled) return;
      const v = await ready(out);
      if (v !== undefined && !settled) {
        settled = true;
        clearTimeout(timer);
        handle.value = v;
        resolve(handle);
      }
    };
    child.stdout.on('data', (b) => { out += b; void check(); });
    child.stderr.on('data', (b) => { err += b; });
    child.on('error', (e) => { if (!settled) { settled = true; children.delete(handle); reject(new ToolError(`${what}: ${e.message}`)); } });
    void exited.then((code) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        children.delete(handle);
        reject(new ToolError(`${what} exited with ${code} before it was ready: ${(err || out).trim().split('\n').pop()}`));
      }
    });
    const poll = setInterval(() => { if (settled) clearInterval(poll); else void check(); }, 100);
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      children.delete(handle);
      kill('SIGKILL');
      reject(new ToolError(`${what} did not come up within 20 s: ${(err || out).trim().split('\n').pop() ?? ''}`));
    }, 20000);
  });
}

async function stopAll() {
  await Promise.all([...children].map((c) => c.stop()));
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    say(`${sig}: stopping the servers this benchmark started`);
    void stopAll().finally(() => process.exit(130));
  });
}

const canConnect = (port) => new Promise((resolve) => {
  const s = net.connect({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(true); });
  s.on('error', () => resolve(false));
});

function version(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n')[0].replace(/\s+/g, ' ') : null;
}

/** Installs a missing Debian package with apt-get (as root, or with sudo), like benchmarks/run.sh. */
function ensureCommand(cmd, pkg) {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0) return null;
  const sudo = process.getuid?.() === 0 ? [] : spawnSync('sh', ['-c', 'command -v sudo']).status === 0 ? ['sudo'] : null;
  if (!sudo) return `${cmd} not installed (apt-get install ${pkg} as root)`;
  say(`installing ${pkg} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const a = (args) => spawnSync(sudo[0] ?? 'apt-get', sudo.length ? ['apt-get', ...args] : args, { env, stdio: ['ignore', 'ignore', 'inherit'] });
  if (a(['install', '-y', '-qq', '--no-install-recommends', pkg]).status !== 0) {
    a(['update', '-qq']);
    a(['install', '-y', '-qq', '--no-install-recommends', pkg]);
  }
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0 ? null : `${cmd} could not be installed (apt-get install ${pkg})`;
}

// ---------------------------------------------------------------------------------------------
// Datasets: the dedup benchmark's, copied once per run into RW/data so that a dedup benchmark
// running at the same time (it renames version directories while it backs them up) does not
// disturb this one, and vice versa. Strata and restic read every version from one path,
// RW/stage/<dataset> (a nightly backup of one directory or one image file); the copy of the
// version is renamed there for the import and back afterwards.

const DEDUP_STAGE = path.join(WORK, 'stage');

function dedupRunInProgress() {
  return fs.existsSync(DEDUP_STAGE) && fs.readdirSync(DEDUP_STAGE).some((n) => n.endsWith('.origin'));
}

/** Where a version's directory is now: its own place, or the dedup benchmark's stage while it is backed up there. */
function currentDir(v) {
  if (fs.existsSync(v.dir)) return v.dir;
  if (fs.existsSync(DEDUP_STAGE)) {
    for (const n of fs.readdirSync(DEDUP_STAGE)) {
      if (!n.endsWith('.origin')) continue;
      if (fs.readFileSync(path.join(DEDUP_STAGE, n), 'utf8').trim() === v.dir) return path.join(DEDUP_STAGE, n.slice(0, -'.origin'.length));
    }
  }
  throw new Error(`dataset version ${v.dir} is missing; run node benchmarks/datasets.mjs`);
}

function copyDatasets(datasets) {
  const data = path.join(RW, 'data');
  rmrf(data);
  rmrf(path.join(RW, 'stage'));
  fs.mkdirSync(path.join(RW, 'stage'), { recursive: true });
  for (const d of datasets) {
    fs.mkdirSync(path.join(data, d.id), { recursive: true });
    for (const v of d.versions) {
      v.copy = path.join(data, d.id, v.name);
      const r = spawnSync('cp', ['-a', '--sparse=always', currentDir(v), v.copy], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`cp ${v.dir} ${v.copy}: ${r.stderr}`);
    }
  }
}

/** Runs fn(stagedDir) with version v's copy at RW/stage/<dataset>. */
async function withStaged(d, v, fn) {
  const staged = path.join(RW, 'stage', d.id);
  if (fs.existsSync(staged)) throw new Error(`${staged} exists (left over?)`);
  fs.renameSync(v.copy, staged);
  try {
    return await fn(staged);
  } finally {
    fs.renameSync(staged, v.copy);
  }
}

/** Every regular file and symlink under a and b, compared by content (checks an rsync target). */
function sameTree(a, b) {
  const list = (root) => {
    const out = new Map();
    const visit = (rel) => {
      for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) visit(r);
        else out.set(r, e.isSymbolicLink() ? `link:${fs.readlinkSync(path.join(root, r))}` : 'file');
      }
    };
    visit('');
    return out;
  };
  const la = list(a);
  const lb = list(b);
  if (la.size !== lb.size) return `${la.size} entries vs ${lb.size}`;
  for (const [rel, kind] of la) {
    if (lb.get(rel) !== kind) return `${rel} missing or of another type`;
    if (kind !== 'file') continue;
    const h = (p) => createHash('sha1').update(fs.readFileSync(p)).digest('hex');
    if (h(path.join(a, rel)) !== h(path.join(b, rel))) return `${rel} differs`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Tools. Each run(d, round, record) sends every version of dataset d in turn to a fresh peer and
// calls record(stepIndex, mode, measurement) per step.

const strata = (args, opts) => exec(process.execPath, [STRATA_BIN, ...args], opts);

function parseJson(stdout, what) {
  const i = stdout.indexOf('{');
  try {
    return JSON.parse(stdout.slice(i));
  } catch {
    throw new ToolError(`${what}: no JSON on stdout`);
  }
}

/** `strata serve` for store B behind a byte meter. */
async function strataPeer(store, key, what) {
  must(await strata(['init', '--store', store, '--json']), `strata init ${what}`);
  const server = await startServer(process.execPath, [STRATA_BIN, 'serve', '--store', store, '--listen', '127.0.0.1:0', '--key', key], {
    what: `strata serve ${what}`,
    ready: (out) => out.match(/ on (127\.0\.0\.1:\d+)/)?.[1],
  });
  const [host, port] = server.value.split(':');
  const meter = await startMeter({ host, port: Number(port) });
  let stopped = null;
  const stop = () => (stopped ??= (async () => { await meter.close(); await server.stop(); })());
  return { server, meter, address: `127.0.0.1:${meter.port}`, stop };
}

/** Options of `strata replicate` per mode: hybrid seeding and deltas are on unless the mode turns one off. */
const STRATA_MODE_ARGS = { hybrid: [], 'no-hybrid': ['--no-hybrid'], 'no-delta': ['--no-delta'], branch: [] };

async function strataReplicate(peer, store, key, args, mode) {
  peer.meter.reset();
  const extra = STRATA_MODE_ARGS[mode];
  const r = must(await strata(['replicate', ...args, '--store', store, '--to', peer.address, '--key', key, '--json', ...extra]),
    `strata replicate ${[...args, ...extra].join(' ')}`);
  await peer.meter.idle();
  const j = parseJson(r.stdout, 'strata replicate');
  return {
    bytes: j.bytesOnWire,
    seconds: r.seconds,
    selfSeconds: j.seconds,
    measuredUp: peer.meter.up,
    measuredDown: peer.meter.down,
    payloadBytes: j.payloadBytes,
    chunksSentAsDelta: j.chunksSentAsDelta,
    deltaBytes: j.deltaBytes,
    // The chunks sent, at their compressed (stored) size: what they cost without deltas.
    plainBytes: j.payloadBytes - j.deltaBytes + j.deltaPlainBytes,
    chunksOffered: j.chunksOffered,
    chunksNeeded: j.chunksNeeded,
    chunksSent: j.chunksSent,
    bytesFromCapacity: j.bytesFromCapacity,
    bytesFromPerformance: j.bytesFromPerformance,
    fingerprintsChecked: j.fingerprintsChecked,
    neighbours: j.snapshots.map((s) => s.neighbour),
    snapshotsSent: j.snapshots.filter((s) => !s.skipped).length,
  };
}

const TOOLS = {
  strata: {
    id: 'strata',
    modes: {
      hybrid: 'Strata (hybrid, deltas)', 'no-hybrid': 'Strata --no-hybrid', 'no-delta': 'Strata --no-delta (whole chunks)',
      branch: 'Strata --branch (one command)',
    },
    available: () => (fs.existsSync(STRATA_BIN) ? null : `Strata CLI not found at ${path.relative(ROOT, STRATA_BIN)}`),
    version() {
      let v = 'strata';
      try { v += ' ' + JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version; } catch { /* ignore */ }
      const git = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
      if (git.status === 0) {
        // Read-only: does the build include changes not yet committed (src/ edited meanwhile)?
        const dirty = spawnSync('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no', '--', 'src'], { encoding: 'utf8' });
        v += ` (git ${git.stdout.trim()}${dirty.status === 0 && dirty.stdout.trim() ? ' + uncommitted changes in src/' : ''})`;
      }
      return v;
    },
    /**
     * Store A (`strata init` defaults: performance pool keeps native copies of files >= 32 MiB of the
     * latest 2 snapshots per branch). Per version: import it into A (a nightly backup), then replicate
     * it to three fresh peers: with hybrid seeding and deltas, --no-hybrid, and --no-delta (changed
     * chunks travel whole: the baseline of the same run), in rotating order per round. At the end,
     * the whole line again in one command (--branch) to a fourth fresh peer.
     */
    async run(d, round, record) {
      const dir = path.join(RW, 'strata', d.id);
      rmrf(dir);
      fs.mkdirSync(dir, { recursive: true });
      const key = path.join(dir, 'peer.key');
      must(await strata(['keygen', key]), 'strata keygen');
      const A = path.join(dir, 'A');
      must(await strata(['init', '--store', A, '--json']), 'strata init A');
      const peers = {};
      try {
        peers.hybrid = await strataPeer(path.join(dir, 'B-hybrid'), key, 'B-hybrid');
        peers['no-hybrid'] = await strataPeer(path.join(dir, 'B-no-hybrid'), key, 'B-no-hybrid');
        peers['no-delta'] = await strataPeer(path.join(dir, 'B-no-delta'), key, 'B-no-delta');
        const modes = ['hybrid', 'no-hybrid', 'no-delta'];
        const order = modes.map((_, k) => modes[(k + round) % modes.length]);
        for (const [i, v] of d.versions.entries()) {
          const imp = await withStaged(d, v, (staged) =>
            strata(['import', path.join(staged, v.target), '--store', A, '--name', v.name, '--json']));
          must(imp, `strata import ${v.name}`);
          const ij = parseJson(imp.stdout, 'strata import');
          for (const mode of order) {
            const m = await strataReplicate(peers[mode], A, key, [v.name], mode);
            m.importSeconds = imp.seconds;
            m.importStoredBytes = ij.storedBytes;
            m.performancePool = ij.performancePool;
            record(i, mode, m);
            say(`  strata ${mode} ${d.id} ${stepLabel(d, i)}: ${m.bytes} B on the wire (payload ${m.payloadBytes}, ` +
              `${m.chunksSentAsDelta} deltas of ${m.chunksSent} chunks), ${m.seconds.toFixed(2)} s`);
          }
        }
        for (const mode of modes) await peers[mode].stop();
        // The whole line in one command, to a fresh peer.
        peers.branch = await strataPeer(path.join(dir, 'B-branch'), key, 'B-branch');
        const last = d.versions[d.versions.length - 1].name;
        const m = await strataReplicate(peers.branch, A, key, ['--branch', last], 'branch');
        record('all', 'branch', m);
        say(`  strata --branch ${d.id}: ${m.bytes} B on the wire (payload ${m.payloadBytes}), ${m.seconds.toFixed(2)} s`);
        await peers.branch.stop();
      } finally {
        for (const p of Object.values(peers)) await p.stop();
      }
    },
  },

  rsync: rsyncTool('rsync', 'rsync', []),
  'rsync-z': rsyncTool('rsync-z', 'rsync -z (zstd)', ['--compress', '--compress-choice=zstd']),

  restic: {
    id: 'restic',
    modes: { copy: 'restic copy' },
    available: () => ensureCommand('restic', 'restic'),
    version: () => version('restic', ['version']),
    /**
     * R1 holds every version (backed up once per benchmark run, from the same path, --force). Each
     * round: a fresh R2 with R1's chunker parameters, then `restic copy` of each version's snapshot in
     * turn; the step's figure is how much R2 grew (sum of file sizes before and after).
     */
    async run(d, round, record) {
      const dir = path.join(RW, 'restic', d.id);
      const pw = path.join(RW, 'restic', 'password');
      const env = (repo, cache) => ({ RESTIC_REPOSITORY: repo, RESTIC_PASSWORD_FILE: pw, RESTIC_CACHE_DIR: cache });
      const R1 = path.join(dir, 'R1');
      if (!d.resticSnapshots) {
        rmrf(dir);
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(pw, RESTIC_PASSWORD + '\n', { mode: 0o600 });
        const e1 = env(R1, path.join(dir, 'cache-R1'));
        must(await exec('restic', ['init', '--repository-version', '2'], { env: e1 }), 'restic init R1');
        d.resticSnapshots = [];
        for (const v of d.versions) {
          const r = await withStaged(d, v, (staged) => exec('restic',
            ['backup', '--json', '--force', '--compression', 'auto', '--host', 'bench', '--tag', v.name, v.target],
            { cwd: staged, env: e1 }));
          must(r, `restic backup ${v.name}`);
          const summary = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => { try { return JSON.parse(l); } catch { return {}; } })
            .find((o) => o.message_type === 'summary');
          if (!summary?.snapshot_id) throw new ToolError(`restic backup ${v.name}: no snapshot id in its JSON summary`);
          d.resticSnapshots.push(summary.snapshot_id);
          say(`  restic backup into R1 ${d.id}/${v.name}: ${r.seconds.toFixed(2)} s`);
        }
      }
      const R2 = path.join(dir, 'R2');
      rmrf(R2);
      rmrf(path.join(dir, 'cache-R2'));
      const e2 = { ...env(R2, path.join(dir, 'cache-R2')), RESTIC_FROM_PASSWORD_FILE: pw };
      must(await exec('restic', ['init', '--repository-version', '2', '--from-repo', R1, '--copy-chunker-params'], { env: e2 }),
        'restic init R2');
      for (const [i, v] of d.versions.entries()) {
        const before = bytesOnDisk(R2);
        const r = must(await exec('restic', ['copy', '--from-repo', R1, d.resticSnapshots[i]], { env: e2 }), `restic copy ${v.name}`);
        const after = bytesOnDisk(R2);
        record(i, 'copy', { bytes: after - before, seconds: r.seconds });
        say(`  restic copy ${d.id} ${stepLabel(d, i)}: R2 grew by ${after - before} B, ${r.seconds.toFixed(2)} s`);
      }
    },
  },
};

/**
 * rsync to an rsync daemon on 127.0.0.1 (behind a byte meter), so that what it sends crosses a real
 * socket. -a --no-whole-file --delete --stats, plus --checksum: npm tarballs give every file the same
 * mtime and consecutive versions often keep sizes, so rsync's default size+mtime check would skip
 * changed files (the target would be wrong); --checksum compares content and still uses the delta
 * algorithm for changed files. The target directory persists across steps (it holds version k-1 when
 * version k is sent); it is checked against the source after every step of round 1.
 */
function rsyncTool(id, label, extra) {
  return {
    id,
    modes: { push: label },
    available: () => ensureCommand('rsync', 'rsync'),
    version: () => version('rsync', ['--version']),
    async run(d, round, record) {
      const daemon = await rsyncDaemon();
      const target = `${d.id}-${id}`;
      rmrf(path.join(daemon.root, target));
      for (const [i, v] of d.versions.entries()) {
        daemon.meter.reset();
        const r = must(await exec('rsync', ['-a', '--no-whole-file', '--checksum', '--delete', '--stats', ...extra,
          `${v.copy}/`, `rsync://127.0.0.1:${daemon.meter.port}/bench/${target}/`]), `rsync ${v.name}`);
        await daemon.meter.idle();
        const num = (label) => {
          const m = r.stdout.match(new RegExp(`^${label}: ([\\d,.]+)`, 'm'));
          return m ? Number(m[1].replace(/[,.]/g, '')) : undefined;
        };
        const sent = num('Total bytes sent');
        if (sent === undefined) throw new ToolError(`rsync ${v.name}: no "Total bytes sent" in --stats output`);
        const m = {
          bytes: sent, seconds: r.seconds, measuredUp: daemon.meter.up, measuredDown: daemon.meter.down,
          received: num('Total bytes received'), literal: num('Literal data'), matched: num('Matched data'),
        };
        if (round === 1) {
          const bad = sameTree(v.copy, path.join(daemon.root, target));
          if (bad) throw new ToolError(`rsync ${v.name}: the target does not match the source (${bad})`);
        }
        record(i, 'push', m);
        say(`  ${id} ${d.id} ${stepLabel(d, i)}: ${sent} B sent (literal ${m.literal}), ${r.seconds.toFixed(2)} s`);
      }
    },
  };
}

let rsyncd = null;
async function rsyncDaemon() {
  if (rsyncd) return rsyncd;
  const dir = path.join(RW, 'rsyncd');
  rmrf(dir);
  const root = path.join(dir, 'module');
  fs.mkdirSync(root, { recursive: true });
  const port = await freePort();
  const conf = path.join(dir, 'rsyncd.conf');
  const asRoot = process.getuid?.() === 0;
  fs.writeFileSync(conf, [
    `pid file = ${path.join(dir, 'rsyncd.pid')}`,
    `log file = ${path.join(dir, 'rsyncd.log')}`,
    'use chroot = no',
    '[bench]',
    `  path = ${root}`,
    '  read only = no',
    ...(asRoot ? ['  uid = root', '  gid = root'] : []),
    '',
  ].join('\n'));
  const server = await startServer('rsync', ['--daemon', '--no-detach', `--config=${conf}`, '--address=127.0.0.1', `--port=${port}`], {
    what: 'rsync --daemon',
    ready: async () => ((await canConnect(port)) ? port : undefined),
  });
  const meter = await startMeter({ host: '127.0.0.1', port });
  rsyncd = { root, port, meter, stop: async () => { await meter.close(); await server.stop(); rsyncd = null; } };
  return rsyncd;
}

// ---------------------------------------------------------------------------------------------
// Steps and measurements

function stepLabel(d, i) {
  if (i === 'all') return `all (${d.versions[0].name}…${d.versions[d.versions.length - 1].name})`;
  return i === 0 ? `seed ${d.versions[0].name}` : `${d.versions[i - 1].name}→${d.versions[i].name}`;
}

const MODES = []; // [{ tool, mode, label }] in table order
const f2 = (x) => (x === undefined || x === null || Number.isNaN(x) ? 'n/a' : x.toFixed(2));
const fx = (x) => (x === undefined || x === null || Number.isNaN(x) ? 'n/a' : `${x.toFixed(2)}×`);
const fb = (b) => (b === undefined || b === null || Number.isNaN(b) ? 'n/a' : Math.round(b).toLocaleString('en-US'));
const mbs = (b) => (b === undefined || b === null ? 'n/a' : (b / 1e6).toFixed(1));

/** One row: medians over rounds of a (dataset, step, tool, mode) cell. Numbers that must not vary are checked. */
function aggregate(runs) {
  if (!runs?.length) return null;
  const pick = (k) => median(runs.map((r) => r[k]));
  const row = {};
  for (const k of Object.keys(runs[0])) if (typeof runs[0][k] === 'number') row[k] = pick(k);
  row.secondsAll = runs.map((r) => r.seconds);
  row.bytesAll = runs.map((r) => r.bytes);
  row.bytesVary = new Set(runs.map((r) => r.bytes)).size > 1;
  row.neighbours = runs[0].neighbours;
  return row;
}

/** Sum of the per-step medians (the "all versions" row of tools that send one version per command). */
function sumRows(rows) {
  if (rows.some((r) => !r)) return null;
  const out = {};
  for (const k of ['bytes', 'seconds', 'measuredUp', 'measuredDown', 'payloadBytes', 'chunksOffered', 'chunksNeeded', 'chunksSent',
    'chunksSentAsDelta', 'deltaBytes', 'plainBytes', 'bytesFromCapacity', 'bytesFromPerformance']) {
    if (rows.every((r) => typeof r[k] === 'number')) out[k] = sum(rows.map((r) => r[k]));
  }
  out.summed = true;
  return out;
}

/** Strata's bytes besides chunk payloads, split the way the protocol spends them. */
function overhead(r) {
  if (r?.payloadBytes === undefined) return null;
  const total = r.bytes - r.payloadBytes;
  const offers = OFFER_HANDLE_BYTES * r.chunksOffered;
  const chunkHeaders = CHUNK_HEADER_BYTES * r.chunksSent;
  const other = total - offers - chunkHeaders;
  const parts = { offers, 'CHUNK headers': chunkHeaders, 'other (HELLO, HOLDINGS_QUERY, OFFER frame headers, COMMIT + fingerprints, DONE)': other };
  const dominant = Object.entries(parts).sort((a, b) => b[1] - a[1])[0][0].replace(/ \(.*/, '');
  return { total, offers, chunkHeaders, other, dominant };
}

// ---------------------------------------------------------------------------------------------
// Report

function markdown(report) {
  const L = [];
  L.push(`### Replication benchmark, ${report.date.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}`);
  L.push('');
  L.push(`Command: \`${report.command}\` · host: ${report.host.cpus} CPUs (${report.host.cpuModel}), ` +
    `${(report.host.memBytes / 2 ** 30).toFixed(1)} GiB RAM, ${report.host.os} · ${report.versions.filter(Boolean).join(' · ')} · ` +
    `times: median of ${report.rounds} round(s) · ${(report.benchSeconds / 60).toFixed(1)} min`);
  L.push('');
  for (const d of report.datasets) {
    L.push(`- **${d.id}**: ${d.title}; ${d.versions.map((v) => `${v.name}=${v.label.replace('generation ', 'gen ')}`).join(', ')}`);
  }
  L.push('');
  L.push('| dataset | step | tool / mode | bytes on wire (or added) | ratio vs compressed new chunks | time s | sources: capacity / performance MB | measured on loopback → / ← |');
  L.push('|---|---|---|--:|--:|--:|---|---|');
  const line = (d, stepName, label, r, ref, status) => {
    if (status) return `| ${d.id} | ${stepName} | ${label} | ${status} | | | | |`;
    if (!r) return `| ${d.id} | ${stepName} | ${label} | n/a | | | | |`;
    const src = r.bytesFromCapacity !== undefined ? `${mbs(r.bytesFromCapacity)} / ${mbs(r.bytesFromPerformance)}` : '—';
    const meas = r.measuredUp !== undefined ? `${fb(r.measuredUp)} / ${fb(r.measuredDown)}` : '— (local repositories)';
    return `| ${d.id} | ${stepName} | ${label} | ${fb(r.bytes)}${r.bytesVary ? ' ±' : ''} | ${fx(ref ? r.bytes / ref : NaN)} | ` +
      `${f2(r.seconds)}${r.summed ? ' (sum)' : ''} | ${src} | ${meas} |`;
  };
  const main = (d) => [0, 1, 'all'].filter((s) => s === 'all' || s < d.versions.length);
  for (const d of report.datasets) {
    const res = report.results[d.id];
    for (const s of main(d)) {
      const ref = res.reference[s];
      for (const { tool, mode, label } of MODES) {
        if (mode === 'branch' && s !== 'all') continue;
        const t = res.tools[tool];
        if (t?.status !== 'ok') {
          if (s === 0) L.push(line(d, stepLabel(d, s), label, null, null, t?.status === 'skipped' ? `skipped: ${t.reason}` : `**failed**: ${t?.error ?? 'not run'}`));
          continue;
        }
        L.push(line(d, stepLabel(d, s), label, res.rows[`${s}/${tool}/${mode}`], ref));
      }
    }
  }
  L.push('');
  L.push('Bytes: Strata = `bytesOnWire` of `strata replicate --json` (sender → receiver, after the handshake); rsync = ' +
    '"Total bytes sent" of `--stats` (client → daemon); restic = growth of the second repository (local; sum of file sizes). ' +
    '"Compressed new chunks" = the zstd-compressed size (as stored) of the chunks the peer lacked, from the Strata (hybrid) run of ' +
    'the same step (`payloadBytes` − `deltaBytes` + `deltaPlainBytes`; what --no-delta sends as payload). Measured on loopback: every byte through a counting TCP relay in front of the server, ' +
    '→ sender to receiver, ← back (Strata: HOLDINGS and NEED bitmaps; rsync: block checksums of the receiver\'s basis files). ' +
    'Sources: what Strata read to send the chunks, uncompressed: from containers (capacity pool) / native copies (performance pool). ' +
    'Time: wall time of the command (process start-up included), median over the rounds; "(sum)" = sum of the per-step medians. ' +
    '± = the bytes differed between rounds (median shown).');
  L.push('');
  L.push(`Target (issue): incremental bytes on the wire ≤ ${TARGET_FACTOR} × the compressed size of the chunks the peer lacked ` +
    '("compressed new chunks"; deltas bring Strata below 1×), and fewer than rsync and restic copy (rsync -z is not one of the ' +
    'issue\'s baselines; shown for reference).');
  L.push('');
  for (const d of report.datasets) {
    const res = report.results[d.id];
    if (res.tools.strata?.status !== 'ok') { L.push(`- ${d.id}: not evaluated (Strata ${res.tools.strata?.status ?? 'not run'})`); continue; }
    const evs = ['hybrid', 'no-hybrid', 'no-delta'].map((mode) => ({ mode, ev: res.targets[mode] })).filter((x) => x.ev?.steps.length);
    for (const { mode, ev } of evs) {
      const label = MODES.find((m) => m.mode === mode).label;
      if (mode === 'no-hybrid' && evs[0].mode === 'hybrid' && ev.steps.every((e, i) => e.bytes === evs[0].ev.steps[i]?.bytes)) {
        L.push(`- ${d.id}, ${label}: the same bytes as with hybrid seeding in every incremental step (the same chunks travel; only where they are read from differs)`);
        continue;
      }
      const first = ev.steps[0];
      const vs = (e, which) => e.versus.filter((x) => x.required === which && x.bytes !== undefined)
        .map((x) => `${x.label} ${fb(x.bytes)} ${e.bytes < x.bytes ? '✓' : '✗'}`).join(', ');
      const tally = ev.versusLabels.map((lab) => `${lab} in ${ev.steps.filter((e) => e.versus.some((x) => x.label === lab && x.bytes !== undefined && e.bytes < x.bytes)).length}/${ev.steps.length}`).join(', ');
      const dominant = [...new Set(ev.steps.map((e) => e.dominant))].join(' / ');
      L.push(`- ${d.id}, ${label}, first incremental ${first.step}: ${fb(first.bytes)} B = ${fx(first.factor)} the compressed new chunks ` +
        `(${fb(first.payload)}) → ${first.withinFactor ? 'met' : '**not met**'}; fewer than ${vs(first, true)} → ` +
        `${first.fewerThanRequired ? 'met' : '**not met**'}` + (vs(first, false) ? ` (for reference: ${vs(first, false)})` : '') + '. ' +
        `All ${ev.steps.length} incremental step(s): ${f2(ev.minFactor)}–${fx(ev.maxFactor)} the compressed new chunks, within ${TARGET_FACTOR}× in ` +
        `${ev.steps.filter((e) => e.withinFactor).length}/${ev.steps.length}; fewer bytes than ${tally}; largest overhead: ${dominant}`);
    }
  }
  L.push('');
  // Details: every step.
  L.push('<details><summary>Every step, every tool</summary>');
  L.push('');
  L.push('| dataset | step | tool / mode | bytes | ratio | time s (median; per round) | measured → / ← |');
  L.push('|---|---|---|--:|--:|---|---|');
  for (const d of report.datasets) {
    const res = report.results[d.id];
    for (const s of [...d.versions.keys(), 'all']) {
      for (const { tool, mode, label } of MODES) {
        if (mode === 'branch' && s !== 'all') continue;
        const r = res.rows[`${s}/${tool}/${mode}`];
        if (!r) continue;
        const ref = res.reference[s];
        L.push(`| ${d.id} | ${stepLabel(d, s)} | ${label} | ${fb(r.bytes)}${r.bytesVary ? ' ±' : ''} | ${fx(ref ? r.bytes / ref : NaN)} | ` +
          `${f2(r.seconds)}${r.secondsAll ? ` (${r.secondsAll.map(f2).join(', ')})` : ' (sum)'} | ` +
          `${r.measuredUp !== undefined ? `${fb(r.measuredUp)} / ${fb(r.measuredDown)}` : '—'} |`);
      }
    }
  }
  L.push('');
  L.push('</details>');
  L.push('');
  L.push('<details><summary>Strata: where the bytes on the wire go</summary>');
  L.push('');
  L.push(`Overhead = bytes on the wire − payload (deltas included). Offers = ${OFFER_HANDLE_BYTES} B per offered handle (handle and ` +
    `base count); CHUNK headers = ${CHUNK_HEADER_BYTES} B per chunk sent (frame header 5, handle 32, kind, codec, u32 raw length; ` +
    'a CHUNK_DELTA has a base count instead of the codec); other = the rest (the 32-byte base handles in OFFERs and ' +
    'CHUNK_DELTAs, HELLO, HOLDINGS_QUERY with every snapshot id of the sender, OFFER frame headers, COMMIT with the snapshot record and up to ' +
    '60 fingerprints of 68 B, DONE). Self-reported s = the `seconds` of the JSON (without process start-up); import s = the ' +
    '`strata import` of that version into store A just before.');
  L.push('');
  L.push('| dataset | step | mode | wire | payload | of which deltas | overhead | offers | CHUNK headers | other | chunks offered / needed / sent (as deltas) | neighbour | self-reported s | import s |');
  L.push('|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|--:|--:|');
  for (const d of report.datasets) {
    const res = report.results[d.id];
    for (const s of [...d.versions.keys(), 'all']) {
      for (const mode of s === 'all' ? ['branch'] : ['hybrid', 'no-hybrid', 'no-delta']) {
        const r = res.rows[`${s}/strata/${mode}`];
        const o = overhead(r);
        if (!r || !o) continue;
        L.push(`| ${d.id} | ${stepLabel(d, s)} | ${mode} | ${fb(r.bytes)} | ${fb(r.payloadBytes)} | ${fb(r.deltaBytes)} | ${fb(o.total)} (${((o.total / r.payloadBytes) * 100).toFixed(1)} %) | ` +
          `${fb(o.offers)} | ${fb(o.chunkHeaders)} | ${fb(o.other)} | ${fb(r.chunksOffered)} / ${fb(r.chunksNeeded)} / ${fb(r.chunksSent)} (${fb(r.chunksSentAsDelta)}) | ` +
          `${(r.neighbours ?? []).map((n) => n ?? '—').join(', ')} | ${f2(r.selfSeconds)} | ${f2(r.importSeconds)} |`);
      }
    }
  }
  L.push('');
  L.push('</details>');
  return L.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Main

const wantTools = (process.env.BENCH_TOOLS ?? ALL_TOOLS.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
for (const t of wantTools) if (!TOOLS[t]) { say(`unknown tool '${t}' in BENCH_TOOLS (known: ${ALL_TOOLS.join(', ')})`); process.exit(2); }
for (const t of ALL_TOOLS.filter((x) => wantTools.includes(x))) {
  for (const [mode, label] of Object.entries(TOOLS[t].modes)) MODES.push({ tool: t, mode, label });
}

const manifestPath = path.join(WORK, 'datasets', 'manifest.json');
if (dedupRunInProgress() && fs.existsSync(manifestPath)) {
  say('a dedup benchmark seems to be running (benchmarks/work/stage holds a version): reusing the datasets as they are');
} else {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'benchmarks', 'datasets.mjs')], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) { say('building the datasets failed (node benchmarks/datasets.mjs)'); process.exit(1); }
}
const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
const wantData = process.env.BENCH_DATASETS?.split(',').map((s) => s.trim()).filter(Boolean);
const datasets = manifest.datasets.filter((d) => !wantData || wantData.includes(d.id));
if (!datasets.length) { say(`no dataset selected (BENCH_DATASETS=${process.env.BENCH_DATASETS})`); process.exit(2); }

fs.mkdirSync(LOGS, { recursive: true });
fs.mkdirSync(RW, { recursive: true });
say('copying the dataset versions into benchmarks/work/replication/data');
copyDatasets(datasets);

const skip = {};
for (const t of wantTools) {
  const why = TOOLS[t].available();
  if (why) { skip[t] = why; say(`skipping ${t}: ${why}`); }
}

// raw[dataset][`${step}/${tool}/${mode}`] = [measurement per round]
const raw = Object.fromEntries(datasets.map((d) => [d.id, {}]));
const status = Object.fromEntries(datasets.map((d) => [d.id, {}]));
const started = performance.now();
let rounds = 0;
try {
  for (let round = 1; round <= REPEAT; round++) {
    if (round > 1 && (performance.now() - started) / 1000 > BUDGET) {
      say(`time budget of ${BUDGET} s used up after ${rounds} round(s); not repeating further (BENCH_BUDGET)`);
      break;
    }
    for (const d of datasets) {
      logFile = path.join(LOGS, `replication-${d.id}.log`);
      if (round === 1) fs.writeFileSync(logFile, `# replication benchmark on ${d.id}, ${new Date().toISOString()}\n`);
      // Rotate the tools' order per round, so that machine noise does not always hit the same one.
      const order = wantTools.map((_, i) => wantTools[(i + round - 1) % wantTools.length]);
      for (const t of order) {
        if (skip[t] || status[d.id][t]?.status === 'failed') continue;
        say(`[round ${round}/${REPEAT}] ${t} on ${d.id} (${d.versions.length} versions)`);
        log(`\n# round ${round}: ${t}\n`);
        const got = {};
        try {
          await TOOLS[t].run(d, round, (step, mode, m) => { got[`${step}/${t}/${mode}`] = m; });
          for (const [k, m] of Object.entries(got)) (raw[d.id][k] ??= []).push({ round, ...m });
          status[d.id][t] = { status: 'ok' };
        } catch (e) {
          if (!(e instanceof ToolError)) throw e;
          status[d.id][t] = { status: 'failed', error: e.message };
          say(`${t} on ${d.id} FAILED: ${e.message} (log: ${path.relative(ROOT, logFile)})`);
        }
      }
    }
    rounds = round;
  }
} finally {
  if (rsyncd) await rsyncd.stop();
  await stopAll();
  // The copies of the datasets are made afresh by every run; stores, repositories and the rsync
  // targets stay for inspection until the next run (rm -rf benchmarks/work/replication).
  rmrf(path.join(RW, 'data'));
}

const results = {};
for (const d of datasets) {
  const rows = {};
  for (const [k, runs] of Object.entries(raw[d.id])) rows[k] = aggregate(runs);
  for (const { tool, mode } of MODES) {
    if (mode === 'branch') continue;
    const steps = d.versions.map((_, i) => rows[`${i}/${tool}/${mode}`]);
    if (steps.every(Boolean)) rows[`all/${tool}/${mode}`] = sumRows(steps);
  }
  const reference = {};
  for (const s of [...d.versions.keys(), 'all']) {
    const h = rows[`${s}/strata/hybrid`];
    reference[s] = h?.plainBytes ?? h?.payloadBytes;
  }
  const targets = {};
  for (const mode of ['hybrid', 'no-hybrid', 'no-delta']) {
    const steps = [];
    for (let i = 1; i < d.versions.length; i++) {
      const r = rows[`${i}/strata/${mode}`];
      if (!r) continue;
      // The issue's baselines are rsync (-a --no-whole-file) and restic copy; rsync -z is shown for reference.
      const versus = MODES.filter((m) => m.tool !== 'strata')
        .map((m) => ({ label: m.label, required: m.tool !== 'rsync-z', bytes: rows[`${i}/${m.tool}/${m.mode}`]?.bytes }));
      const o = overhead(r);
      const plain = reference[i] ?? r.plainBytes ?? r.payloadBytes;
      steps.push({
        step: stepLabel(d, i), bytes: r.bytes, payload: plain, factor: r.bytes / plain,
        withinFactor: r.bytes <= TARGET_FACTOR * plain,
        fewerThanRequired: versus.every((x) => !x.required || x.bytes === undefined || r.bytes < x.bytes),
        versus, dominant: o?.dominant,
      });
    }
    targets[mode] = {
      steps,
      versusLabels: MODES.filter((m) => m.tool !== 'strata').map((m) => m.label),
      minFactor: Math.min(...steps.map((s) => s.factor)),
      maxFactor: Math.max(...steps.map((s) => s.factor)),
    };
  }
  const tools = {};
  for (const t of wantTools) tools[t] = skip[t] ? { status: 'skipped', reason: skip[t] } : status[d.id][t] ?? { status: 'failed', error: 'not run' };
  results[d.id] = { tools, rows, reference, targets, raw: raw[d.id] };
}

const report = {
  date: new Date().toISOString(),
  command: process.env.BENCH_COMMAND ?? 'npm run bench:replication',
  host: {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model?.trim() ?? 'unknown',
    memBytes: os.totalmem(),
    os: `${os.type()} ${os.release()}`,
  },
  versions: [...new Set(wantTools.filter((t) => !skip[t]).map((t) => TOOLS[t].version()).concat(`node ${process.version}`))],
  rounds,
  benchSeconds: (performance.now() - started) / 1000,
  method: {
    strata: 'store A: strata init (defaults); per version: strata import RW/stage/<dataset>[/disk.img] --name vN, then ' +
      'strata replicate vN --to <relay> --key K --json to peer B-hybrid, (--no-hybrid) to peer B-no-hybrid and (--no-delta) to ' +
      'peer B-no-delta, all strata serve ' +
      '--listen 127.0.0.1:0 on fresh stores; finally strata replicate --branch vLast to a fresh B-branch',
    rsync: 'rsync --daemon on 127.0.0.1 (module on local disk); rsync -a --no-whole-file --checksum --delete --stats [--compress ' +
      '--compress-choice=zstd] SRC/ rsync://127.0.0.1:<relay>/bench/<dataset>-<variant>/, the target keeping the previous version',
    restic: 'R1: restic init --repository-version 2, restic backup --force --compression auto of every version (from the same path); ' +
      'per round a fresh R2 (restic init --from-repo R1 --copy-chunker-params), then restic copy --from-repo R1 <snapshot> per version',
    meter: 'benchmarks/tcp-meter.mjs: a TCP relay on 127.0.0.1 in front of each server, counting bytes each way',
  },
  datasets: datasets.map((d) => ({ id: d.id, title: d.title, versions: d.versions.map(({ name, label, logicalBytes }) => ({ name, label, logicalBytes })) })),
  results,
};

const md = markdown(report);
fs.mkdirSync(RESULTS, { recursive: true });
fs.writeFileSync(path.join(RESULTS, 'replication-latest.md'), md);
fs.writeFileSync(path.join(RESULTS, 'replication-latest.json'), JSON.stringify(report, null, 2) + '\n');
process.stdout.write('\n' + md);
say(`done in ${(report.benchSeconds / 60).toFixed(1)} min; wrote ${path.relative(ROOT, RESULTS) || '.'}/replication-latest.md and .json`);
process.exit(Object.values(results).some((r) => Object.values(r.tools).some((t) => t.status === 'failed')) ? 1 : 0);
