#!/usr/bin/env node
// Mount benchmark: what the Strata mount does through FUSE, against the in-memory FUSE ceiling
// (test/fixtures/memfs-server.ts mounted with the daemon's options) and against `restic mount` and
// `borg mount` of the same data, all measured in the same run. Prints a Markdown table and writes it
// to benchmarks/results/mount-latest.md (every figure: mount-latest.json). See benchmarks/README.md.
//
//   npm run bench:mount        (= npm run build && node benchmarks/mount-bench.mjs)
//
// Phases (data from benchmarks/mount-data.mjs, cached in benchmarks/work/mount/data/):
//   1. writes     per round, a fresh memfs and a fresh store: `dd bs=1M conv=fsync` of the unique text
//                 file into memfs and into live/u, then the same file again into live/d (all
//                 duplicates); the memfs dd runs before, between and after. Before each timed write
//                 the page cache is dropped and the source read back in (see sameStart). The
//                 daemon's CPU per thread, dd's own CPU and the machine's idle time are sampled
//                 around each dd. Rounds stop early when the next would overrun the budget.
//   2. views      the last round's store also gets the image-like file (live/img/), then
//                 `strata snapshot --name base`; the bench waits until pools/performance/base shows
//                 it. The 100k-file tree goes into a second store with `strata import` (creating 100k
//                 files through the mount would take minutes) and becomes its live tree with
//                 `strata branch`; a few directories are also copied in with cp -r to measure the
//                 create rate, then `strata snapshot --name base`. restic and borg back up the same
//                 tree and image and mount them with their own mount commands. Round-robin over
//                 memfs / capacity view / performance view / restic / borg: read the image with dd
//                 (page cache dropped, then again warm); find | wc -l and find -exec stat over the
//                 tree (page cache dropped), also on live/ and on the host copy; find -exec stat
//                 again at once, caches kept (not on live/).
//   3. snapshots  3 x (append a line to live/notes/changes.txt, `strata snapshot`, wait for the
//                 performance pool) on the tree store (100k files), on the first store (~5.4 GB in
//                 live/) and on a fresh store holding ~100 MB.
// Every mount is unmounted at the end and on failure. The bench never serves a mount itself.
//
// Environment:
//   MOUNT_BENCH_WRITE_MIB    size of the write test file (default 2048)
//   MOUNT_BENCH_IMAGE_MIB    size of the image-like read test file (default 1024)
//   MOUNT_BENCH_TREE         DIRSxFILES of the listing tree (default 100x1000)
//   MOUNT_BENCH_SMALL_MIB    live data of the small snapshot store (default 100)
//   MOUNT_BENCH_CREATE_DIRS  directories of the tree copied in with cp -r to time file creation (default 2)
//   MOUNT_BENCH_CEILING_FILES empty files in the (flat) memfs for the per-file listing ceiling (default 10000)
//   MOUNT_BENCH_REPEAT       rounds of each phase; the table shows medians (default 3)
//   MOUNT_BENCH_WRITE_BUDGET seconds: no further write round starts if it would end later (default 330)
//   MOUNT_BENCH_VIEW_BUDGET  seconds: the same for the read/listing rounds (default 600)
//   MOUNT_BENCH_TOOLS        comparison tools (default restic,borg; empty for none)
//   MOUNT_BENCH_DROP_CACHES  1 (default): drop the page cache before cold reads and listings
//   MOUNT_BENCH_PROFILE      1: after the write rounds, repeat the two writes, reads of both views,
//                            the cp -r and find/stat over its snapshot with the daemon under
//                            node --cpu-prof (separate daemons and stores, not counted) and list
//                            where its main thread spends its time
//   MOUNT_BENCH_TIMEOUT      seconds one command may take (default 900)
//   MOUNT_BENCH_WORK         work directory (default benchmarks/work/mount)
//   MOUNT_BENCH_RESULTS      where mount-latest.md/.json go (default benchmarks/results)

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { FUSE_READ_AHEAD_KB, setReadAhead } from '../dist/src/fuse/mount-options.js';
import { ensureImage, ensureText, ensureTree } from './mount-data.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.resolve(process.env.MOUNT_BENCH_WORK ?? path.join(ROOT, 'benchmarks', 'work', 'mount'));
const DATA = path.join(WORK, 'data');
const STORES = path.join(WORK, 'stores');
const REPOS = path.join(WORK, 'repos');
const HOMES = path.join(WORK, 'home');
const LOGS = path.join(WORK, 'logs');
const SCRATCH = path.join(WORK, 'scratch');
const RESULTS = path.resolve(process.env.MOUNT_BENCH_RESULTS ?? path.join(ROOT, 'benchmarks', 'results'));
const STRATA = path.join(ROOT, 'bin', 'strata');
const DAEMON = path.join(ROOT, 'dist', 'src', 'daemon', 'daemon.js');
const MEMFS = path.join(ROOT, 'dist', 'test', 'fixtures', 'memfs-server.js');

const WRITE_MIB = Number(process.env.MOUNT_BENCH_WRITE_MIB ?? 2048);
const IMAGE_MIB = Number(process.env.MOUNT_BENCH_IMAGE_MIB ?? 1024);
const [TREE_DIRS, TREE_FILES] = (process.env.MOUNT_BENCH_TREE ?? '100x1000').split('x').map(Number);
const SMALL_MIB = Number(process.env.MOUNT_BENCH_SMALL_MIB ?? 100);
const CREATE_DIRS = Number(process.env.MOUNT_BENCH_CREATE_DIRS ?? 2);
const CEILING_FILES = Number(process.env.MOUNT_BENCH_CEILING_FILES ?? 10000);
const REPEAT = Math.max(1, Number(process.env.MOUNT_BENCH_REPEAT ?? 3));
const WRITE_BUDGET = Number(process.env.MOUNT_BENCH_WRITE_BUDGET ?? 330);
const VIEW_BUDGET = Number(process.env.MOUNT_BENCH_VIEW_BUDGET ?? 600);
const TOOLS = (process.env.MOUNT_BENCH_TOOLS ?? 'restic,borg').split(',').map((s) => s.trim()).filter(Boolean);
const WANT_DROP = (process.env.MOUNT_BENCH_DROP_CACHES ?? '1') === '1';
const PROFILE = process.env.MOUNT_BENCH_PROFILE === '1';
const TIMEOUT = Number(process.env.MOUNT_BENCH_TIMEOUT ?? 900);
const MB = 1e6;
const MIB = 1024 * 1024;
/** The daemon's mount options beyond fuse-native's own (src/daemon/daemon.ts), for the memfs ceiling. */
const CEILING_OPTIONS = 'big_writes,max_write=131072,default_permissions,use_ino,attr_timeout=1,entry_timeout=1';
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function say(msg) {
  process.stderr.write(`[mount-bench] ${msg}\n`);
}

/**
 * This process runs synchronously from start to end (spawnSync), so its own signal handlers only
 * run when it finishes. Ctrl-C reaches the whole process group, though: the command running at
 * that moment dies of the signal, and run() turns that into Interrupted, which unwinds through the
 * cleanup. Waiting is done with sleep(1) for the same reason.
 */
class Interrupted extends Error {}
const STOP_SIGNALS = new Set(['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT']);
const sleepSync = (ms) => {
  const r = spawnSync('sleep', [String(ms / 1000)]);
  if (STOP_SIGNALS.has(r.signal) && !cleaning) throw new Interrupted(`interrupted (${r.signal})`);
};
const median = (xs) => {
  const a = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((x, y) => x - y);
  if (!a.length) return NaN;
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};

// ---------------------------------------------------------------------------------------------
// Commands

let logFile = path.join(LOGS, 'mount-bench.log');
/** Set while unmounting at the end: a second Ctrl-C must not stop the unmounting. */
let cleaning = false;

function logLine(text) {
  fs.appendFileSync(logFile, text.endsWith('\n') ? text : text + '\n');
}

class BenchError extends Error {}

/**
 * Runs a command (stdin ignored), logs it, and returns { status, stdout, stderr, seconds, user, sys }:
 * wall seconds measured here, user/sys CPU seconds of the command from GNU time when `cpu` is set.
 */
function run(cmd, args, { cwd = ROOT, env = {}, timeout = TIMEOUT, cpu = false, input } = {}) {
  const timeFile = path.join(LOGS, '.time');
  const argv = cpu ? ['/usr/bin/time', ['-f', '%e %U %S', '-o', timeFile, cmd, ...args]] : [cmd, args];
  const t0 = performance.now();
  const r = spawnSync(argv[0], argv[1], {
    cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout: timeout * 1000, killSignal: 'SIGKILL',
    maxBuffer: 256 * MIB, input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  const seconds = (performance.now() - t0) / 1000;
  if (STOP_SIGNALS.has(r.signal) && !cleaning) throw new Interrupted(`interrupted (${r.signal}) during ${cmd} ${args.join(' ')}`);
  let user = NaN;
  let sys = NaN;
  if (cpu) {
    try {
      const last = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ');
      user = Number(last[1]);
      sys = Number(last[2]);
    } catch { /* no figures */ }
  }
  const status = r.error ? (r.error.code === 'ETIMEDOUT' ? 'timeout' : r.error.message) : r.status;
  logLine(`$ (cd ${cwd} && ${cmd} ${args.join(' ')})\n${(r.stdout ?? '').slice(-4000)}${(r.stderr ?? '').slice(-4000)}` +
    `[exit ${status}, ${seconds.toFixed(2)} s]`);
  return { status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', seconds, user, sys };
}

function must(r, what) {
  if (r.status !== 0) {
    const last = `${r.stderr}\n${r.stdout}`.trim().split('\n').filter((l) => l.trim()).slice(-3).join(' / ');
    throw new BenchError(`${what} failed (${r.status === 'timeout' ? `timed out after ${TIMEOUT} s` : `exit ${r.status}`}): ${last.slice(0, 300)}`);
  }
  return r;
}

function sh(script, opts) {
  return run('bash', ['-c', script], opts);
}

const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

function isMounted(mountpoint) {
  const target = path.resolve(mountpoint);
  try {
    return fs.readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => {
      const f = l.split(' ')[1];
      return f !== undefined && f.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))) === target;
    });
  } catch {
    return false;
  }
}

/** True when `p` exists; asked in a child process with a deadline, so a hung mount cannot hang us. */
function exists(p) {
  return spawnSync('test', ['-e', p], { timeout: 10_000 }).status === 0;
}

function waitFor(what, pred, seconds, everyMs = 100) {
  const t0 = performance.now();
  for (;;) {
    if (pred()) return (performance.now() - t0) / 1000;
    if ((performance.now() - t0) / 1000 > seconds) throw new BenchError(`${what}: not there after ${seconds} s`);
    sleepSync(everyMs);
  }
}

let dropCaches = false;
let dropNote = '';
function probeDropCaches() {
  if (!WANT_DROP) { dropNote = 'not dropped (MOUNT_BENCH_DROP_CACHES=0)'; return; }
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    dropCaches = true;
    dropNote = 'dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every cold read and listing, and before every timed write (then the source file is read back in)';
  } catch (e) {
    dropNote = `could not be dropped (${e.code ?? e.message}); "cold" figures are warm`;
  }
}

function drop() {
  if (!dropCaches) return;
  spawnSync('sync', [], { timeout: 120_000 });
  try { fs.writeFileSync('/proc/sys/vm/drop_caches', '3'); } catch { /* probed before */ }
}

/** Reads a file once so it sits in the page cache. */
function warm(file) {
  must(run('dd', [`if=${file}`, 'of=/dev/null', 'bs=4M', 'status=none']), `reading ${file}`);
}

/**
 * Before every timed write: drop the page cache, then read the source back into it. Without this,
 * the pages of files written earlier through FUSE (they stay cached, clean, on the filesystem's
 * inodes) make the kernel side of later writes slower: measured here, a memfs write ran at
 * 550-770 MB/s after a fresh mount and at 160-230 MB/s with 4 GiB written through a Strata mount
 * still cached, and at full speed again once that mount was gone. Each write then starts from the
 * same state. (Without permission to drop, only the source is read.)
 */
function sameStart(file) {
  drop();
  warm(file);
}

/** `dd` with timing and CPU; checks the byte count. Returns { seconds, MBps, user, sys }. */
function dd(from, to, bytes, extra = []) {
  const r = must(run('dd', [`if=${from}`, `of=${to}`, 'bs=1M', ...extra], { cpu: true }), `dd ${from} -> ${to}`);
  const copied = Number(/^(\d+) bytes/m.exec(r.stderr)?.[1]);
  if (copied !== bytes) throw new BenchError(`dd ${from} -> ${to} copied ${copied} bytes, expected ${bytes}`);
  return { seconds: r.seconds, MBps: bytes / MB / r.seconds, user: r.user, sys: r.sys };
}

// ---------------------------------------------------------------------------------------------
// CPU sampling: per-thread CPU of a process, and the machine's CPU time split.

function threadTicks(pid) {
  const out = new Map();
  let tids = [];
  try { tids = fs.readdirSync(`/proc/${pid}/task`); } catch { return out; }
  for (const tid of tids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      out.set(tid, { comm, user: Number(f[11]), sys: Number(f[12]) });
    } catch { /* thread ended */ }
  }
  return out;
}

function machineTicks() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  return { user: user + nice, system: system + irq + softirq, idle, iowait, steal: steal ?? 0, total: f.slice(0, 8).reduce((a, b) => a + (b || 0), 0) };
}

/** Runs fn() (a synchronous dd) and returns its result with the CPU spent meanwhile. */
function withCpu(pid, fn) {
  const t0 = pid ? threadTicks(pid) : new Map();
  const m0 = machineTicks();
  const res = fn();
  const t1 = pid ? threadTicks(pid) : new Map();
  const m1 = machineTicks();
  const wall = res.seconds;
  const threads = [];
  for (const [tid, b] of t1) {
    const a = t0.get(tid) ?? { user: 0, sys: 0 };
    const user = (b.user - a.user) / CLK_TCK;
    const sys = (b.sys - a.sys) / CLK_TCK;
    if (user + sys > 0) threads.push({ tid: Number(tid), main: Number(tid) === pid, comm: b.comm, user, sys });
  }
  threads.sort((x, y) => y.user + y.sys - (x.user + x.sys));
  const main = threads.find((t) => t.main) ?? { user: 0, sys: 0 };
  const others = threads.filter((t) => !t.main);
  const mt = m1.total - m0.total || 1;
  return {
    ...res,
    cpu: {
      daemonMainPct: (100 * (main.user + main.sys)) / wall,
      daemonMainUserPct: (100 * main.user) / wall,
      daemonMainSysPct: (100 * main.sys) / wall,
      daemonOtherPct: (100 * others.reduce((s, t) => s + t.user + t.sys, 0)) / wall,
      daemonThreads: threads.slice(0, 8),
      ddUserPct: (100 * res.user) / wall,
      ddSysPct: (100 * res.sys) / wall,
      // share of all CPUs (100 % = every core busy the whole time)
      machineUserPct: (100 * (m1.user - m0.user)) / mt,
      machineSysPct: (100 * (m1.system - m0.system)) / mt,
      machineIdlePct: (100 * (m1.idle - m0.idle)) / mt,
      machineIowaitPct: (100 * (m1.iowait - m0.iowait)) / mt,
    },
  };
}

function vmHWM(pid) {
  try {
    const kb = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb ? Number(kb) * 1024 : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Mounts. Every mount registers a synchronous stop, run at the end, on failure, on SIGINT/SIGTERM and
// at exit; each falls back to fusermount -u, then umount -l.

const mounts = new Map(); // mountpoint -> { label, stop }
const MNT_BASE = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-mountbench-'));

function newMountpoint(name) {
  const p = path.join(MNT_BASE, name);
  fs.mkdirSync(p, { recursive: true });
  return p;
}

function forceUnmount(mountpoint) {
  for (const [cmd, args] of [['fusermount', ['-u', mountpoint]], ['umount', ['-l', mountpoint]]]) {
    if (!isMounted(mountpoint)) return;
    spawnSync(cmd, args, { timeout: 20_000 });
  }
  if (isMounted(mountpoint)) say(`WARNING: ${mountpoint} is still mounted`);
}

function killPid(pid, signal = 'SIGTERM', waitMs = 5000) {
  try { process.kill(pid, signal); } catch { return; }
  const t0 = Date.now();
  while (Date.now() - t0 < waitMs) {
    try { process.kill(pid, 0); } catch { return; }
    sleepSync(50);
  }
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

function unmountAll() {
  for (const [mountpoint, m] of [...mounts].reverse()) {
    try {
      m.stop();
    } catch (e) {
      say(`stopping ${m.label}: ${e.message}`);
    }
    forceUnmount(mountpoint);
    mounts.delete(mountpoint);
  }
}

let cleanedUp = false;
function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  cleaning = true;
  unmountAll();
  try {
    for (const n of fs.readdirSync(MNT_BASE)) if (!isMounted(path.join(MNT_BASE, n))) fs.rmdirSync(path.join(MNT_BASE, n));
    fs.rmdirSync(MNT_BASE);
  } catch { /* something still mounted: said above */ }
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    say(`${sig}: unmounting everything`);
    cleanup();
    process.exit(130);
  });
}
process.on('exit', cleanup);

/** A store mounted with `strata mount` (or, for profiling, the daemon under node --cpu-prof). */
function mountStrata(name, { fresh = true, profileDir = null } = {}) {
  const store = path.join(STORES, name);
  const mnt = newMountpoint(name);
  if (fresh) {
    fs.rmSync(store, { recursive: true, force: true });
    fs.mkdirSync(STORES, { recursive: true });
    must(run(process.execPath, [STRATA, 'init', '--store', store]), `strata init ${name}`);
  }
  let pid;
  if (profileDir) {
    const logFd = fs.openSync(path.join(store, 'daemon.log'), 'a');
    const child = spawn(process.execPath, [`--cpu-prof`, `--cpu-prof-dir=${profileDir}`, DAEMON, '--store', store, '--mountpoint', mnt],
      { detached: true, stdio: ['ignore', logFd, logFd], cwd: '/' });
    fs.closeSync(logFd);
    child.unref();
    pid = child.pid;
    mounts.set(mnt, { label: `strata ${name}`, stop: () => stopStrata(store, mnt, pid) });
    waitFor(`daemon for ${name}`, () => isMounted(mnt) && fs.existsSync(path.join(store, 'control.sock')), 60);
  } else {
    const r = must(run(process.execPath, [STRATA, 'mount', store, mnt, '--json']), `strata mount ${name}`);
    pid = JSON.parse(r.stdout).pid;
    mounts.set(mnt, { label: `strata ${name}`, stop: () => stopStrata(store, mnt, pid) });
  }
  return { name, store, mnt, pid, live: path.join(mnt, 'live') };
}

function stopStrata(store, mnt, pid) {
  if (isMounted(mnt)) {
    const r = run(process.execPath, [STRATA, 'unmount', mnt], { timeout: 300 });
    if (r.status !== 0) say(`strata unmount ${mnt}: ${r.stderr.trim() || r.status}`);
  }
  // the daemon exits right after unmounting; make sure
  const t0 = Date.now();
  while (Date.now() - t0 < 10_000) {
    try { process.kill(pid, 0); } catch { break; }
    sleepSync(50);
  }
  killPid(pid);
}

function unmount(m) {
  const entry = mounts.get(m.mnt);
  if (!entry) return;
  entry.stop();
  forceUnmount(m.mnt);
  mounts.delete(m.mnt);
  try { fs.rmdirSync(m.mnt); } catch { /* still there */ }
}

/** A child process that serves a mount until signalled (memfs, restic mount, borg mount -f). */
function mountChild(label, name, cmd, args, { env = {}, ready, signal = 'SIGTERM', ipc = false }) {
  const mnt = newMountpoint(name);
  const log = path.join(LOGS, `${name}.log`);
  const logFd = fs.openSync(log, 'w');
  const child = spawn(cmd, typeof args === 'function' ? args(mnt) : args, {
    env: { ...process.env, ...env }, stdio: ['ignore', logFd, logFd, ...(ipc ? ['ipc'] : [])],
  });
  fs.closeSync(logFd);
  // This process mostly blocks in spawnSync/sleepSync, so the child's 'exit' event may not have run:
  // ask /proc whether it is still alive (a zombie counts as gone).
  const alive = () => {
    try {
      const stat = fs.readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
    } catch {
      return false;
    }
  };
  const stop = () => {
    if (alive()) {
      try { child.kill(signal); } catch { /* gone */ }
      const t0 = Date.now();
      while (isMounted(mnt) && Date.now() - t0 < 15_000) sleepSync(100);
    }
    forceUnmount(mnt);
    if (alive()) killPid(child.pid, 'SIGTERM', 3000);
  };
  mounts.set(mnt, { label, stop });
  const m = { label, name, mnt, pid: child.pid, log, child };
  try {
    waitFor(`${label} at ${mnt}`, () => {
      if (!alive()) throw new BenchError(`${label} exited: ${fs.readFileSync(log, 'utf8').trim().split('\n').slice(-3).join(' / ')}`);
      return isMounted(mnt) && ready(mnt);
    }, 120, 200);
  } catch (e) {
    unmount(m);
    throw e;
  }
  return m;
}

function mountMemfs(name) {
  const m = mountChild('memfs ceiling', name, process.execPath, (mnt) => [MEMFS, mnt, `--options=${CEILING_OPTIONS}`], {
    ready: (mnt) => exists(path.join(mnt, '.stats')), ipc: true,
  });
  // The read-ahead the daemon sets on its mounts, so that the ceiling reads as Strata's mount does.
  const ra = setReadAhead(m.mnt, FUSE_READ_AHEAD_KB);
  if (ra instanceof Error) {
    unmount(m);
    throw new BenchError(`memfs ceiling: cannot set its read-ahead: ${ra.message}`);
  }
  return m;
}

function memfsStats(m) {
  try {
    return JSON.parse(fs.readFileSync(path.join(m.mnt, '.stats'), 'utf8'));
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Tools

function version(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n')[0] : null;
}

/** The Python interpreter that runs borg (its shebang), to check for llfuse/pyfuse3. */
function borgPython() {
  const borg = spawnSync('bash', ['-c', 'command -v borg'], { encoding: 'utf8' }).stdout.trim();
  if (!borg) return null;
  try {
    const first = fs.readFileSync(borg, 'utf8').split('\n')[0];
    return first.startsWith('#!') ? first.slice(2).trim().split(/\s+/)[0] : null;
  } catch {
    return null;
  }
}

function borgHasFuse() {
  const py = borgPython();
  if (!py) return false;
  return ['llfuse', 'pyfuse3'].some((m) => spawnSync(py, ['-c', `import ${m}`]).status === 0);
}

/** apt-get install for what is missing; returns { tool: reason } for what stays unavailable. */
function installTools() {
  const missing = [];
  if (TOOLS.includes('restic') && !version('restic', ['version'])) missing.push('restic');
  if (TOOLS.includes('borg') && !version('borg', ['--version'])) missing.push('borgbackup', 'python3-llfuse');
  else if (TOOLS.includes('borg') && !borgHasFuse()) missing.push('python3-llfuse');
  if (!fs.existsSync('/usr/bin/time')) missing.push('time');
  if (missing.length) {
    say(`installing with apt-get: ${missing.join(' ')}`);
    const env = { DEBIAN_FRONTEND: 'noninteractive' };
    const apt = (...args) => (process.getuid?.() === 0 ? run('apt-get', args, { env, timeout: 900 }) : run('sudo', ['-E', 'apt-get', ...args], { env, timeout: 900 }));
    const up = apt('update', '-qq');
    if (up.status !== 0) say(`apt-get update failed: ${up.stderr.trim().split('\n').pop()}`);
    const inst = apt('install', '-y', '-qq', '--no-install-recommends', ...missing);
    if (inst.status !== 0) say(`apt-get install failed: ${inst.stderr.trim().split('\n').pop()}`);
  }
  const unavailable = {};
  if (TOOLS.includes('restic') && !version('restic', ['version'])) unavailable.restic = 'restic not installed (apt-get install restic failed)';
  if (TOOLS.includes('borg')) {
    if (!version('borg', ['--version'])) unavailable.borg = 'borg not installed (apt-get install borgbackup failed)';
    else if (!borgHasFuse()) unavailable.borg = 'borg mount needs llfuse or pyfuse3 (apt-get install python3-llfuse failed)';
  }
  if (!fs.existsSync('/usr/bin/time')) throw new BenchError('/usr/bin/time (GNU time) is missing: apt-get install time');
  return unavailable;
}

const RESTIC_PASSWORD = 'strata-bench-not-secret';
function resticEnv(home, repo) {
  return { RESTIC_REPOSITORY: repo, RESTIC_PASSWORD_FILE: path.join(home, 'password'), RESTIC_CACHE_DIR: path.join(home, 'cache') };
}
function borgEnv(home, repo) {
  return {
    BORG_REPO: repo, BORG_BASE_DIR: home, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
  };
}

/**
 * Backs up the tree and the image with a tool and mounts the result read-only with the tool's own
 * mount command. Returns { label, mnt, pid, tree, image, backupSeconds } (paths inside the mount).
 */
const COMPARE = {
  restic: {
    label: 'restic mount',
    version: () => version('restic', ['version']),
    prepare(tree) {
      const repo = path.join(REPOS, 'restic');
      const home = path.join(HOMES, 'restic');
      for (const p of [repo, home]) fs.rmSync(p, { recursive: true, force: true });
      fs.mkdirSync(home, { recursive: true });
      fs.writeFileSync(path.join(home, 'password'), RESTIC_PASSWORD + '\n', { mode: 0o600 });
      const env = resticEnv(home, repo);
      must(run('restic', ['init', '--repository-version', '2'], { env }), 'restic init');
      const b = must(run('restic', ['backup', '--host', 'bench', '--compression', 'auto', tree.dir, path.join(DATA, 'image.bin')], { cwd: DATA, env }), 'restic backup');
      const m = mountChild('restic mount', 'restic', 'restic', (mnt) => ['mount', mnt], {
        env, signal: 'SIGINT', ready: (mnt) => exists(path.join(mnt, 'snapshots', 'latest')),
      });
      // restic names a target by its absolute path, or by its last component when that is unique
      // (versions differ); look for both.
      const latest = path.join(m.mnt, 'snapshots', 'latest');
      const find = (abs) => [path.join(latest, path.basename(abs)), path.join(latest, abs)].find((p) => exists(p));
      const treeAt = find(tree.dir);
      const imageAt = find(path.join(DATA, 'image.bin'));
      if (!treeAt || !imageAt) { unmount(m); throw new BenchError(`restic mount: the tree or image.bin not found under ${latest}`); }
      return { ...m, tree: treeAt, image: imageAt, backupSeconds: b.seconds };
    },
  },
  borg: {
    label: 'borg mount',
    version: () => version('borg', ['--version']),
    prepare(tree) {
      const repo = path.join(REPOS, 'borg');
      const home = path.join(HOMES, 'borg');
      for (const p of [repo, home]) fs.rmSync(p, { recursive: true, force: true });
      fs.mkdirSync(home, { recursive: true });
      const env = borgEnv(home, repo);
      must(run('borg', ['init', '--encryption=none'], { env }), 'borg init');
      const rel = path.relative(DATA, tree.dir);
      const b = must(run('borg', ['create', '--compression', 'lz4', '::base', rel, 'image.bin'], { cwd: DATA, env }), 'borg create');
      const m = mountChild('borg mount', 'borg', 'borg', (mnt) => ['mount', '-f', '::base', mnt], {
        env, signal: 'SIGINT', ready: (mnt) => exists(path.join(mnt, 'image.bin')),
      });
      return { ...m, tree: path.join(m.mnt, rel), image: path.join(m.mnt, 'image.bin'), backupSeconds: b.seconds };
    },
  },
};

// ---------------------------------------------------------------------------------------------
// Measurements

/** find | wc -l and find -exec stat over `dir` (page cache dropped first, unless `again`); checks the count. */
function listing(dir, kind, expected, again = false) {
  if (!again) drop();
  const script = kind === 'find'
    ? `find ${q(dir)} -type f | wc -l`
    : `find ${q(dir)} -type f -exec stat -c '%s %Y' {} + | wc -l`;
  const r = must(sh(script), `${kind} ${dir}`);
  const n = Number(r.stdout.trim());
  if (n !== expected) throw new BenchError(`${kind} ${dir} found ${n} files, expected ${expected}`);
  return r.seconds;
}

/** Snapshot through the daemon; wall time of the CLI (process start-up included). */
function snapshot(s, name) {
  const r = must(run(process.execPath, [STRATA, 'snapshot', '--store', s.store, '--name', name, '--json']), `strata snapshot ${name}`);
  return { seconds: r.seconds, id: JSON.parse(r.stdout).id };
}

/** Waits until the performance pool shows `path` (relative to pools/performance/); returns seconds. */
function waitPerformance(s, rel, seconds = 900) {
  return waitFor(`pools/performance/${rel}`, () => exists(path.join(s.mnt, 'pools', 'performance', rel)), seconds, 250);
}

function appendChange(s, n) {
  must(sh(`echo "change ${n} $(date +%s%N)" >> ${q(path.join(s.live, 'notes', 'changes.txt'))}`), 'append a change');
}

/** Snapshot timing: 3 x (small change, snapshot, wait for the performance pool to catch up). */
function snapshotSeries(s, prefix) {
  const out = [];
  for (let i = 1; i <= 3; i++) {
    appendChange(s, i);
    const snap = snapshot(s, `${prefix}${i}`);
    const catchUp = waitPerformance(s, `${prefix}${i}`, 300);
    out.push({ name: `${prefix}${i}`, seconds: snap.seconds, poolCatchUpSeconds: catchUp });
    say(`  snapshot ${prefix}${i}: ${snap.seconds.toFixed(2)} s (performance pool caught up ${catchUp.toFixed(1)} s later)`);
  }
  return out;
}

/** Predicts whether one more round fits into the budget (at least one round always runs). */
function anotherRound(done, startedMs, budget) {
  if (done >= REPEAT) return false;
  const used = (performance.now() - startedMs) / 1000;
  return used + used / done <= budget;
}

/** Summary of a V8 CPU profile: self time by function, and inclusive time of Strata's functions. */
function summariseProfile(file) {
  const p = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const ticks = new Map();
  let total = 0;
  p.samples.forEach((id, i) => { const d = p.timeDeltas[i] ?? 0; ticks.set(id, (ticks.get(id) ?? 0) + d); total += d; });
  const name = (n) => {
    const cf = n.callFrame;
    const url = cf.url.replace(/^file:\/\//, '').replace(ROOT + '/', '');
    return `${cf.functionName || '(anonymous)'}${url ? ` ${url}:${cf.lineNumber + 1}` : ''}`;
  };
  const self = new Map();
  const incl = new Map();
  for (const [id, t] of ticks) {
    const k = name(byId.get(id));
    self.set(k, (self.get(k) ?? 0) + t);
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const kk = name(byId.get(cur));
      if (!seen.has(kk)) { seen.add(kk); incl.set(kk, (incl.get(kk) ?? 0) + t); }
    }
  }
  const top = (m, n, filter = () => true) => [...m].filter(([k]) => filter(k)).sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([k, t]) => ({ fn: k, ms: t / 1000, pct: (100 * t) / total }));
  return {
    totalMs: total / 1000,
    self: top(self, 15),
    inclusive: top(incl, 15, (k) => k.includes('dist/src/')),
  };
}

// ---------------------------------------------------------------------------------------------
// The run

const started = performance.now();
const report = {
  date: new Date().toISOString(),
  command: process.env.MOUNT_BENCH_COMMAND ?? 'npm run bench:mount',
  host: {
    cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model?.trim() ?? 'unknown', memBytes: os.totalmem(),
    os: `${os.type()} ${os.release()}`, loadavgAtStart: os.loadavg(),
  },
  settings: { WRITE_MIB, IMAGE_MIB, TREE_DIRS, TREE_FILES, SMALL_MIB, REPEAT, WRITE_BUDGET, VIEW_BUDGET, TOOLS, ceilingOptions: CEILING_OPTIONS },
  versions: [],
  notes: [],
  writes: [], views: {}, snapshots: {}, rss: {}, setup: {}, unavailable: {},
};
let exitCode = 0;

function strataVersion() {
  let v = 'strata';
  try { v += ' ' + JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version; } catch { /* ignore */ }
  const git = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
  if (git.status === 0) v += ` (git ${git.stdout.trim()}`;
  const dirty = spawnSync('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no', 'src'], { encoding: 'utf8' });
  if (git.status === 0) v += dirty.stdout.trim() ? ', src/ modified)' : ')';
  return v;
}

try {
  fs.mkdirSync(LOGS, { recursive: true });
  fs.writeFileSync(logFile, `# mount benchmark ${report.date}\n`);
  for (const f of [STRATA, DAEMON, MEMFS]) {
    if (!fs.existsSync(f)) throw new BenchError(`${path.relative(ROOT, f)} is missing: run npm run build first`);
  }
  report.unavailable = installTools();
  for (const [t, why] of Object.entries(report.unavailable)) say(`${t}: ${why}`);
  const tools = TOOLS.filter((t) => COMPARE[t] && !report.unavailable[t]);
  report.versions = [strataVersion(), ...tools.map((t) => COMPARE[t].version()), `node ${process.version}`].filter(Boolean);
  probeDropCaches();
  report.pageCache = dropNote;
  say(`page cache: ${dropNote}`);

  // ---- data
  const text = ensureText(ROOT, DATA, WRITE_MIB);
  const image = ensureImage(ROOT, DATA, IMAGE_MIB);
  const tree = ensureTree(ROOT, DATA, TREE_DIRS, TREE_FILES);
  const textBytes = WRITE_MIB * MIB;
  const imageBytes = IMAGE_MIB * MIB;
  say(`data: ${WRITE_MIB} MiB text, ${IMAGE_MIB} MiB image, ${tree.files} files in ${tree.dirs} directories (${(tree.bytes / MB).toFixed(0)} MB)`);

  // ---- phase 1: writes
  let main = null;
  const writeStart = performance.now();
  for (let round = 1; ; round++) {
    say(`[writes ${round}/${REPEAT}] ${WRITE_MIB} MiB: memfs ceiling, Strata unique, Strata duplicate`);
    const rec = { round, ceilings: [] };
    // The ceiling is cheap next to Strata's writes, so it is measured before, between and after
    // them: drift in the shared machine's speed then shows in the ceiling samples too.
    const ceiling = () => {
      const m = mountMemfs(`memfs-w${round}-${rec.ceilings.length + 1}`);
      try {
        sameStart(text);
        rec.ceilings.push(dd(text, path.join(m.mnt, 'f'), textBytes, ['conv=fsync']));
        rec.ceilingStats = memfsStats(m);
        rec.ceilingRssBytes = vmHWM(m.pid);
      } finally {
        unmount(m);
      }
      say(`  memfs ceiling: ${rec.ceilings.at(-1).MBps.toFixed(0)} MB/s`);
    };
    const s = mountStrata(`write-${round}`);
    main = s;
    ceiling();
    sameStart(text);
    const u = withCpu(s.pid, () => dd(text, path.join(s.live, 'u'), textBytes, ['conv=fsync']));
    say(`  Strata unique: ${u.MBps.toFixed(0)} MB/s (daemon main thread ${u.cpu.daemonMainPct.toFixed(0)} % CPU, ` +
      `other threads ${u.cpu.daemonOtherPct.toFixed(0)} %, machine idle ${u.cpu.machineIdlePct.toFixed(0)} %)`);
    ceiling();
    sameStart(text);
    const d = withCpu(s.pid, () => dd(text, path.join(s.live, 'd'), textBytes, ['conv=fsync']));
    say(`  Strata duplicate: ${d.MBps.toFixed(0)} MB/s (daemon main thread ${d.cpu.daemonMainPct.toFixed(0)} % CPU, ` +
      `other threads ${d.cpu.daemonOtherPct.toFixed(0)} %, machine idle ${d.cpu.machineIdlePct.toFixed(0)} %)`);
    ceiling();
    rec.unique = u;
    rec.duplicate = d;
    rec.daemonRssBytes = vmHWM(s.pid);
    rec.ceilingMBps = median(rec.ceilings.map((c) => c.MBps));
    report.writes.push(rec);
    if (!anotherRound(round, writeStart, WRITE_BUDGET)) {
      if (round < REPEAT) report.notes.push(`writes: ${round} of ${REPEAT} rounds (budget MOUNT_BENCH_WRITE_BUDGET=${WRITE_BUDGET} s)`);
      break;
    }
    unmount(main);
    fs.rmSync(main.store, { recursive: true, force: true });
  }
  report.rss.writeDaemons = report.writes.map((w) => w.daemonRssBytes);
  report.phaseSeconds = { writes: (performance.now() - writeStart) / 1000 };

  if (PROFILE) {
    // Not counted: the daemon runs under node --cpu-prof, which slows it down. One profile per
    // daemon, so each is a daemon of its own: writes, small-file creates, reads of both views.
    const profile = (name, store, work, { fresh = true } = {}) => {
      const profDir = path.join(WORK, 'profile', name);
      fs.rmSync(profDir, { recursive: true, force: true });
      fs.mkdirSync(profDir, { recursive: true });
      const p = mountStrata(store, { profileDir: profDir, fresh });
      let what;
      try {
        what = work(p);
      } finally {
        unmount(p);
      }
      waitFor('cpu profile', () => fs.readdirSync(profDir).some((f) => f.endsWith('.cpuprofile')), 30);
      const file = fs.readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(profDir, f))[0];
      return { name, what, file: path.relative(ROOT, file), ...summariseProfile(file) };
    };
    say('[profile] the two writes again, the daemon under node --cpu-prof (not counted)');
    report.profiles = [profile('write', 'profile', (p) => {
      sameStart(text);
      const u = dd(text, path.join(p.live, 'u'), textBytes, ['conv=fsync']);
      sameStart(text);
      const d = dd(text, path.join(p.live, 'd'), textBytes, ['conv=fsync']);
      return `dd of ${WRITE_MIB} MiB unique (${u.MBps.toFixed(0)} MB/s under the profiler), then the same again (${d.MBps.toFixed(0)} MB/s)`;
    })];
    // snapshot and performance pool without the profiler, then the reads with it
    const plain = mountStrata('profile', { fresh: false });
    try {
      snapshot(plain, 'p');
      waitPerformance(plain, 'p/u');
    } finally {
      unmount(plain);
    }
    say('[profile] reads of the capacity and the performance view, the daemon under node --cpu-prof (not counted)');
    report.profiles.push(profile('read', 'profile', (p) => {
      drop();
      const c = dd(path.join(p.mnt, 'pools', 'capacity', 'p', 'u'), '/dev/null', textBytes);
      drop();
      const f = dd(path.join(p.mnt, 'pools', 'performance', 'p', 'u'), '/dev/null', textBytes);
      return `dd of the ${WRITE_MIB} MiB text from the capacity view (${c.MBps.toFixed(0)} MB/s under the profiler), ` +
        `then from the performance view (${f.MBps.toFixed(0)} MB/s), page cache dropped before each`;
    }, { fresh: false }));
    fs.rmSync(path.join(STORES, 'profile'), { recursive: true, force: true });
    say('[profile] cp -r of small files, the daemon under node --cpu-prof (not counted)');
    report.profiles.push(profile('create', 'profile-create', (p) => {
      const from = fs.readdirSync(tree.dir).sort().slice(0, CREATE_DIRS).map((d) => path.join(tree.dir, d));
      const r = must(run('cp', ['-r', ...from, p.live]), 'cp -r');
      const n = from.reduce((k, d) => k + fs.readdirSync(d).length, 0);
      return `cp -r of ${n} small files into live/ (${(n / r.seconds).toFixed(0)} files/s under the profiler)`;
    }));
    say('[profile] find and find -exec stat over a snapshot of those files, the daemon under node --cpu-prof (not counted)');
    report.profiles.push(profile('list', 'profile-create', (p) => {
      snapshot(p, 'p');
      const view = path.join(p.mnt, 'pools', 'capacity', 'p');
      const n = CREATE_DIRS * TREE_FILES;
      const times = [1, 2, 3].map(() => [listing(view, 'find', n), listing(view, 'stat', n)]);
      return `3 x (find | wc -l, find -exec stat) over ${n} files in a capacity view, page cache dropped before each ` +
        `(${times.map(([a, b]) => `${a.toFixed(2)} s / ${b.toFixed(2)} s`).join(', ')} under the profiler)`;
    }, { fresh: false }));
    fs.rmSync(path.join(STORES, 'profile-create'), { recursive: true, force: true });
  }

  // ---- phase 2a: the image, written into the last write round's store (now ~5.4 GB in live/)
  const s = main;
  say(`[views] ${main.name}: writing the ${IMAGE_MIB} MiB image into live/img/, snapshot, performance pool`);
  must(run('mkdir', ['-p', path.join(s.live, 'img'), path.join(s.live, 'notes')]), 'mkdir');
  sameStart(image);
  const imgWrite = withCpu(s.pid, () => dd(image, path.join(s.live, 'img', 'image.bin'), imageBytes, ['conv=fsync']));
  appendChange(s, 0);
  const liveBytes = 2 * textBytes + imageBytes;
  const first = snapshot(s, 'base');
  say(`  image write ${imgWrite.MBps.toFixed(0)} MB/s; first snapshot (${(liveBytes / 1e9).toFixed(1)} GB in live/) ${first.seconds.toFixed(1)} s`);
  const poolSeconds = waitPerformance(s, 'base/img/image.bin');
  say(`  performance pool shows the image ${poolSeconds.toFixed(1)} s after the snapshot`);
  report.setup.imageWrite = imgWrite;
  report.snapshots.firstLarge = { seconds: first.seconds, liveBytes, poolCatchUpSeconds: poolSeconds };
  const capacity = path.join(s.mnt, 'pools', 'capacity', 'base');
  const perf = path.join(s.mnt, 'pools', 'performance', 'base');
  for (const view of [capacity, perf]) {
    const c = run('cmp', [image, path.join(view, 'img', 'image.bin')]);
    if (c.status !== 0) throw new BenchError(`the image read back from ${view} differs from the original: ${c.stdout.trim() || c.stderr.trim()}`);
  }

  // ---- phase 2b: the 100k-file tree in a store of its own. Creating 100k files through the mount
  // takes minutes (see the create row), so the tree is imported (`strata import`, before mounting)
  // and made the live tree with `strata branch`; a few directories are also created with cp -r
  // through the mount to measure the create rate. Then a snapshot through the daemon, as usual.
  say(`[views] tree store: strata import of ${tree.files} files, mount, strata branch, cp -r of ${CREATE_DIRS} directories, snapshot`);
  const treeStore = path.join(STORES, 'tree');
  fs.rmSync(treeStore, { recursive: true, force: true });
  must(run(process.execPath, [STRATA, 'init', '--store', treeStore]), 'strata init tree');
  const imp = must(run(process.execPath, [STRATA, 'import', tree.parent, '--store', treeStore, '--name', 'imported', '--json']), 'strata import');
  report.setup.importSeconds = imp.seconds;
  const T = mountStrata('tree', { fresh: false });
  must(run(process.execPath, [STRATA, 'branch', 'imported', '--store', treeStore]), 'strata branch');
  const createFrom = fs.readdirSync(tree.dir).sort().slice(0, CREATE_DIRS).map((d) => path.join(tree.dir, d));
  const createFiles = createFrom.reduce((n, d) => n + fs.readdirSync(d).length, 0);
  fs.rmSync(SCRATCH, { recursive: true, force: true });
  fs.mkdirSync(SCRATCH, { recursive: true });
  const cpHost = must(run('bash', ['-c', 'cp -r "$@" && sync', '_', ...createFrom, SCRATCH], { cpu: true }), 'cp -r to the host disk');
  fs.rmSync(SCRATCH, { recursive: true, force: true });
  must(run('mkdir', ['-p', path.join(T.live, 'created'), path.join(T.live, 'notes')]), 'mkdir');
  const cpLive = withCpu(T.pid, () => must(run('cp', ['-r', ...createFrom, path.join(T.live, 'created')], { cpu: true }), 'cp -r into live/'));
  report.setup.createFiles = { files: createFiles, strataSeconds: cpLive.seconds, hostSeconds: cpHost.seconds, cpu: cpLive.cpu };
  say(`  strata import ${imp.seconds.toFixed(1)} s; cp -r of ${createFiles} files: live/ ${cpLive.seconds.toFixed(1)} s ` +
    `(${(createFiles / cpLive.seconds).toFixed(0)} files/s, daemon main thread ${cpLive.cpu.daemonMainPct.toFixed(0)} % CPU), host disk ${cpHost.seconds.toFixed(2)} s`);
  const treeSnap = snapshot(T, 'base');
  report.snapshots.treeBase = { seconds: treeSnap.seconds };
  const treeView = path.join(T.mnt, 'pools', 'capacity', 'base', 'tree');

  // memfs holding the image, for the read ceiling
  const memR = mountMemfs('memfs-r');
  sameStart(image);
  const memImageWrite = dd(image, path.join(memR.mnt, 'image.bin'), imageBytes, ['conv=fsync']);
  report.setup.imageWriteCeiling = memImageWrite;
  // and CEILING_FILES empty files (memfs has no subdirectories): the per-file cost of find/stat
  must(sh(`seq -f 'f%06g' 1 ${CEILING_FILES} | xargs touch`, { cwd: memR.mnt }), 'touch in memfs');

  // comparison tools
  const others = {};
  for (const t of tools) {
    try {
      say(`[views] ${COMPARE[t].label}: backing up the tree and the image, mounting`);
      others[t] = COMPARE[t].prepare(tree);
      say(`  ${t} backup ${others[t].backupSeconds.toFixed(1)} s`);
    } catch (e) {
      if (!(e instanceof BenchError)) throw e;
      report.unavailable[t] = e.message;
      say(`${t}: ${e.message}`);
    }
  }
  report.setup.backupSeconds = Object.fromEntries(Object.entries(others).map(([t, o]) => [t, o.backupSeconds]));

  const readTargets = [
    { id: 'memfs', file: path.join(memR.mnt, 'image.bin') },
    { id: 'capacity', file: path.join(capacity, 'img', 'image.bin') },
    { id: 'performance', file: path.join(perf, 'img', 'image.bin') },
    ...Object.entries(others).map(([t, o]) => ({ id: t, file: o.image })),
    { id: 'host', file: image },
  ];
  const listTargets = [
    { id: 'capacity', dir: treeView, files: tree.files },
    { id: 'live', dir: path.join(T.live, 'tree'), files: tree.files },
    { id: 'host', dir: tree.dir, files: tree.files },
    { id: 'memfs', dir: memR.mnt, files: CEILING_FILES + 2 }, // + .stats and image.bin
    ...Object.entries(others).map(([t, o]) => ({ id: t, dir: o.tree, files: tree.files })),
  ];
  const reads = Object.fromEntries(readTargets.map((t) => [t.id, { cold: [], warm: [] }]));
  const lists = Object.fromEntries(listTargets.map((t) => [t.id, { find: [], stat: [], statAgain: [], first: null }]));
  const viewStart = performance.now();
  for (let round = 1; ; round++) {
    say(`[views ${round}/${REPEAT}] reads of the image (cold, warm) and listings of the tree`);
    const order = round % 2 ? readTargets : [...readTargets].reverse();
    for (const t of order) {
      drop();
      const cold = dd(t.file, '/dev/null', imageBytes);
      const warmRead = dd(t.file, '/dev/null', imageBytes);
      reads[t.id].cold.push(cold.MBps);
      reads[t.id].warm.push(warmRead.MBps);
      say(`  read ${t.id}: cold ${cold.MBps.toFixed(0)} MB/s, warm ${warmRead.MBps.toFixed(0)} MB/s`);
    }
    for (const t of round % 2 ? listTargets : [...listTargets].reverse()) {
      const f = listing(t.dir, 'find', t.files);
      const st = listing(t.dir, 'stat', t.files);
      // At once again, caches kept: what the kernel kept of the first pass (for views, an hour).
      const again = t.id === 'live' ? null : listing(t.dir, 'stat', t.files, true);
      if (lists[t.id].first === null) lists[t.id].first = f;
      lists[t.id].find.push(f);
      lists[t.id].stat.push(st);
      if (again !== null) lists[t.id].statAgain.push(again);
      say(`  list ${t.id}: find ${f.toFixed(2)} s, find -exec stat ${st.toFixed(2)} s${again === null ? '' : `, again ${again.toFixed(2)} s`}`);
    }
    if (!anotherRound(round, viewStart, VIEW_BUDGET)) {
      if (round < REPEAT) report.notes.push(`views: ${round} of ${REPEAT} rounds (budget MOUNT_BENCH_VIEW_BUDGET=${VIEW_BUDGET} s)`);
      break;
    }
  }
  report.phaseSeconds.views = (performance.now() - viewStart) / 1000;
  report.views = { reads, lists, listFiles: Object.fromEntries(listTargets.map((t) => [t.id, t.files])) };
  report.memfsReadStats = memfsStats(memR)?.reads ?? null;
  report.rss.memfs = vmHWM(memR.pid);
  for (const [t, o] of Object.entries(others)) report.rss[t] = vmHWM(o.pid);
  unmount(memR);
  for (const o of Object.values(others)) unmount(o);
  say(`[snapshots] 3 snapshots after a small change each, ${tree.files + createFiles} files in live/`);
  report.snapshots.files = { files: tree.files + createFiles, liveBytes: tree.bytes, runs: snapshotSeries(T, 'files-') };
  report.rss.treeDaemon = vmHWM(T.pid);
  unmount(T);

  // ---- phase 3: snapshot time at ~5 GB (this store) and ~100 MB (a fresh one)
  say(`[snapshots] 3 snapshots after a small change each, ${(liveBytes / 1e9).toFixed(1)} GB in live/`);
  const large = snapshotSeries(s, 'big-');
  report.rss.mainDaemon = vmHWM(s.pid);
  unmount(s);
  const smallBytes = SMALL_MIB * MIB;
  say(`[snapshots] fresh store with ${SMALL_MIB} MiB in live/`);
  const small = mountStrata('small');
  must(run('mkdir', ['-p', path.join(small.live, 'notes')]), 'mkdir');
  must(run('dd', [`if=${text}`, `of=${path.join(small.live, 'u')}`, 'bs=1M', `count=${SMALL_MIB}`, 'conv=fsync', 'status=none']), 'dd small');
  appendChange(small, 0);
  const firstSmall = snapshot(small, 'small-0');
  const smallPool = waitPerformance(small, 'small-0');
  const smallSeries = snapshotSeries(small, 'small-');
  report.rss.smallDaemon = vmHWM(small.pid);
  unmount(small);
  report.snapshots.firstSmall = { seconds: firstSmall.seconds, liveBytes: smallBytes, poolCatchUpSeconds: smallPool };
  report.snapshots.large = { liveBytes, runs: large };
  report.snapshots.small = { liveBytes: smallBytes, runs: smallSeries };
  // start-up of the CLI, which every snapshot's wall time includes
  report.snapshots.cliStartupSeconds = median([1, 2, 3].map(() => run(process.execPath, [STRATA, '--help']).seconds));
} catch (e) {
  exitCode = e instanceof Interrupted ? 130 : 1;
  report.error = e instanceof BenchError || e instanceof Interrupted ? e.message : (e.stack ?? String(e));
  say(`FAILED: ${report.error}`);
} finally {
  cleanup();
}
const leftover = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes('strata-mountbench-'));
if (leftover.length) {
  say(`still mounted: ${leftover.join('; ')}`);
  exitCode = 1;
}
report.benchSeconds = (performance.now() - started) / 1000;
report.host.loadavgAtEnd = os.loadavg();

// ---------------------------------------------------------------------------------------------
// Report

const f0 = (x) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(0) : 'n/a');
const f1 = (x) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(1) : 'n/a');
const f2 = (x) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(2) : 'n/a');
const mbs = (x) => (Number.isFinite(x) ? `${f0(x)} MB/s` : 'n/a');
const secs = (x) => (Number.isFinite(x) ? `${x < 10 ? f2(x) : f1(x)} s` : 'n/a');
/** Median MB/s with the range of the samples when there are several: "301 MB/s (162–638)". */
const mbsr = (xs) => {
  const v = xs.filter(Number.isFinite);
  return v.length > 1 ? `${mbs(median(v))} (${f0(Math.min(...v))}–${f0(Math.max(...v))})` : mbs(median(v));
};

function rows(r) {
  const out = [];
  const row = (measure, strata, baseline, ratio, target, met) => out.push({ measure, strata, baseline, ratio, target, met });
  const metText = (ok) => (ok === null || ok === undefined ? '—' : ok ? 'yes' : '**no**');
  const w = r.writes;
  const ceilW = median(w.flatMap((x) => x.ceilings.map((c) => c.MBps)));
  const uniq = median(w.map((x) => x.unique?.MBps));
  const dup = median(w.map((x) => x.duplicate?.MBps));
  const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? a / b : NaN);
  const versus = (a, b, target) => {
    const x = ratio(a, b);
    return [Number.isFinite(x) ? `${f2(x)}×` : 'n/a', target === undefined ? '—' : `≥ ${target}×`, target === undefined || !Number.isFinite(x) ? null : x >= target];
  };
  const n = w.length;
  if (n) {
    let [rt, tg, ok] = versus(uniq, ceilW, 0.5);
    const nc = w.reduce((k, x) => k + x.ceilings.length, 0);
    const ceilAll = w.flatMap((x) => x.ceilings.map((c) => c.MBps));
    row(`Sequential write, ${WRITE_MIB / 1024} GiB unique text → live/ (dd bs=1M conv=fsync; median of ${n}; ceiling: median of ${nc})`,
      mbsr(w.map((x) => x.unique?.MBps)), `memfs ${mbsr(ceilAll)}`, rt, tg, metText(ok));
    [rt, tg, ok] = versus(dup, ceilW, 0.8);
    row(`Sequential write, the same ${WRITE_MIB / 1024} GiB again → live/ (all duplicate; median of ${n})`,
      mbsr(w.map((x) => x.duplicate?.MBps)), `memfs ${mbsr(ceilAll)}`, rt, tg, metText(ok));
  }
  const iw = r.setup.imageWrite;
  const iwc = r.setup.imageWriteCeiling;
  if (iw && iwc) {
    const [rt] = versus(iw.MBps, iwc.MBps);
    row(`Sequential write, ${IMAGE_MIB} MiB image-like (text/random/zeros) → live/ (once)`, mbs(iw.MBps), `memfs ${mbs(iwc.MBps)}`, rt, '—', '—');
  }
  const rd = r.views?.reads;
  if (rd) {
    const nr = rd.memfs?.cold.length ?? 0;
    const cold = r.pageCache.startsWith('dropped') ? 'page cache dropped' : 'page cache NOT dropped';
    for (const [id, label, target] of [['capacity', 'capacity view', 0.5], ['performance', 'performance view', 0.8]]) {
      if (!rd[id]) continue;
      let [rt, tg, ok] = versus(median(rd[id].cold), median(rd.memfs.cold), target);
      row(`Sequential read, ${IMAGE_MIB} MiB image, ${label} (${cold}; median of ${nr})`, mbsr(rd[id].cold), `memfs ${mbsr(rd.memfs.cold)}`, rt, tg, metText(ok));
      [rt, tg, ok] = versus(median(rd[id].warm), median(rd.memfs.warm), target);
      row(`Sequential read, ${IMAGE_MIB} MiB image, ${label} (warm page cache, read again)`, mbsr(rd[id].warm), `memfs ${mbsr(rd.memfs.warm)}`, rt, tg, metText(ok));
    }
    if (rd.host) {
      const [rt] = versus(median(rd.performance.cold), median(rd.host.cold));
      row(`Sequential read, ${IMAGE_MIB} MiB image: performance view vs the same file on the host disk (ext4, no FUSE; ${cold})`,
        mbs(median(rd.performance.cold)), `ext4 ${mbs(median(rd.host.cold))}`, rt, '—', '—');
    }
    for (const t of ['restic', 'borg']) {
      if (!rd[t]) continue;
      for (const id of ['capacity', 'performance']) {
        const [rt] = versus(median(rd[id].cold), median(rd[t].cold));
        row(`Sequential read, ${IMAGE_MIB} MiB image: Strata ${id} view vs ${t} mount (${cold})`, mbs(median(rd[id].cold)), `${t} ${mbs(median(rd[t].cold))}`, rt, '—', '—');
      }
    }
  }
  const ls = r.views?.lists;
  if (ls?.capacity) {
    const files = `${(TREE_DIRS * TREE_FILES / 1000).toFixed(0)}k files`;
    for (const t of ['restic', 'borg']) {
      if (!ls[t]) continue;
      const target = t === 'restic' ? 5 : undefined;
      for (const [kind, label] of [['find', '`find -type f | wc -l`'], ['stat', '`find -type f -exec stat {} +`']]) {
        const a = median(ls.capacity[kind]);
        const b = median(ls[t][kind]);
        const [rt, tg, ok] = versus(b, a, target);
        row(`${label} over ${files}, capacity view vs ${t} mount (median of ${ls.capacity[kind].length}; ratio = how many times faster)`, secs(a), `${t} ${secs(b)}`, rt, tg, metText(ok));
      }
      if (ls.capacity.statAgain?.length && ls[t].statAgain?.length) {
        const a = median(ls.capacity.statAgain);
        const b = median(ls[t].statAgain);
        const [rt] = versus(b, a);
        row(`\`find -type f -exec stat {} +\` at once again (caches kept), capacity view vs ${t} mount (median of ${ls.capacity.statAgain.length}; ratio = how many times faster)`, secs(a), `${t} ${secs(b)}`, rt, '—', '—');
      }
    }
    if (ls.memfs) {
      const nf = r.views.listFiles ?? {};
      for (const [kind, label] of [['find', '`find -type f`'], ['stat', '`find -type f -exec stat {} +`']]) {
        const a = (median(ls.capacity[kind]) / nf.capacity) * 1e6;
        const b = (median(ls.memfs[kind]) / nf.memfs) * 1e6;
        const [rt] = versus(b, a);
        row(`${label} per file: capacity view (${files}) vs memfs ceiling (${f0(nf.memfs / 1000)}k files in one directory; ratio = memfs time ÷ Strata time)`,
          `${f0(a)} µs`, `memfs ${f0(b)} µs`, rt, '—', '—');
      }
    }
    if (ls.live && ls.host) {
      const [rt] = versus(median(ls.host.find), median(ls.live.find));
      row(`\`find -type f | wc -l\` over ${files} in live/ vs the same tree on the host disk (ext4)`, secs(median(ls.live.find)), `ext4 ${secs(median(ls.host.find))}`, rt, '—', '—');
    }
  }
  const cf = r.setup.createFiles;
  if (cf) {
    const [rt] = versus(cf.hostSeconds, cf.strataSeconds);
    row(`Create ${cf.files} small files: \`cp -r\` into live/ vs to the host disk (ext4, with sync)`, `${secs(cf.strataSeconds)} (${f0(cf.files / cf.strataSeconds)} files/s)`, `ext4 ${secs(cf.hostSeconds)}`, rt, '—', '—');
  }
  const sn = r.snapshots;
  if (sn.small && sn.large) {
    const a = median(sn.small.runs.map((x) => x.seconds));
    const b = median(sn.large.runs.map((x) => x.seconds));
    row(`\`strata snapshot\` after a small change, ~${f0(sn.small.liveBytes / MB)} MB in live/ (median of 3)`, secs(a), '—', '—', '—', '—');
    const x = ratio(b, a);
    row(`\`strata snapshot\` after a small change, ~${f1(sn.large.liveBytes / 1e9)} GB in live/ (median of 3; ratio = time ÷ time at ~${f0(sn.small.liveBytes / MB)} MB)`,
      secs(b), `${f0(sn.small.liveBytes / MB)} MB: ${secs(a)}`, `${f2(x)}×`, '≤ 2× ("about the same")', metText(Number.isFinite(x) ? x <= 2 : null));
    if (sn.files) {
      const c = median(sn.files.runs.map((y) => y.seconds));
      const z = ratio(c, a);
      row(`\`strata snapshot\` after a small change, ${f0(sn.files.files / 1000)}k files (${f0(sn.files.liveBytes / MB)} MB) in live/ (median of 3; ratio as above)`,
        secs(c), `${f0(sn.small.liveBytes / MB)} MB: ${secs(a)}`, `${f2(z)}×`, '≤ 2×', metText(Number.isFinite(z) ? z <= 2 : null));
    }
  }
  if (sn.firstLarge) {
    row(`First snapshot after writing ~${f1(sn.firstLarge.liveBytes / 1e9)} GB through the mount (flushes, writes all trees)`, secs(sn.firstLarge.seconds), '—', '—', '—', '—');
    row('Performance pool catch-up after that snapshot (until the image shows in pools/performance/)', secs(sn.firstLarge.poolCatchUpSeconds), '—', '—', '—', '—');
  }
  const rss = [...(r.rss.writeDaemons ?? []), r.rss.mainDaemon, r.rss.smallDaemon].filter((x) => typeof x === 'number');
  if (rss.length) {
    const cmp = ['restic', 'borg'].filter((t) => r.rss[t]).map((t) => `${t} mount ${f0(r.rss[t] / MIB)} MiB`).join(', ');
    row('Peak RSS of the Strata daemon (VmHWM, max over the daemons of this run)', `${f0(Math.max(...rss) / MIB)} MiB`, cmp || '—', '—', '—', '—');
  }
  return out;
}

function markdown(r) {
  const L = [];
  L.push(`### Mount benchmark, ${r.date.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}`);
  L.push('');
  L.push(`Command: \`${r.command}\` · host: ${r.host.cpus} CPUs (${r.host.cpuModel}), ${(r.host.memBytes / 2 ** 30).toFixed(1)} GiB RAM, ` +
    `${r.host.os}, load ${r.host.loadavgAtStart.map((x) => x.toFixed(1)).join(' ')} at start · ${r.versions.join(' · ')} · ` +
    `${f1(r.benchSeconds / 60)} min`);
  L.push('');
  L.push(`Page cache: ${r.pageCache ?? 'n/a'}. Ceiling: memfs-server (test/fixtures) mounted with the daemon's options ` +
    `(\`${CEILING_OPTIONS}\`) and its read-ahead (${FUSE_READ_AHEAD_KB} KiB), measured in the same run, round-robin with Strata.`);
  L.push('');
  if (r.error) {
    L.push(`**The run failed:** ${r.error.split('\n')[0]} (log: ${path.relative(ROOT, logFile)}). Rows below are what was measured before.`);
    L.push('');
  }
  for (const [t, why] of Object.entries(r.unavailable ?? {})) {
    L.push(`- ${t}: not measured: ${why}`);
  }
  for (const n of r.notes) L.push(`- ${n}`);
  if (Object.keys(r.unavailable ?? {}).length || r.notes.length) L.push('');
  L.push('| measure | Strata | baseline | ratio | target | met? |');
  L.push('|---|--:|--:|--:|---|---|');
  for (const x of rows(r)) L.push(`| ${x.measure} | ${x.strata} | ${x.baseline} | ${x.ratio} | ${x.target} | ${x.met} |`);
  L.push('');
  L.push('MB = 10^6 bytes; (a–b) = the range of the samples behind a median. Ratio: Strata ÷ baseline for rates, baseline time ÷ Strata time for times (so > 1 means Strata ' +
    'is faster), except the snapshot row (time at ~5 GB ÷ time at ~100 MB). Snapshot times are wall times of the ' +
    `\`strata snapshot\` command, process start-up included (${secs(r.snapshots.cliStartupSeconds)} for \`strata --help\`).`);
  L.push('');
  if (r.writes.length) {
    L.push('<details><summary>Where the time goes during the writes</summary>');
    L.push('');
    L.push('CPU during each dd, as % of one core over the dd\'s wall time (medians over the rounds); machine figures are ' +
      `shares of all ${r.host.cpus} cores and include other load on the shared machine.`);
    L.push('');
    L.push('| write | MB/s | daemon main thread (user + sys) | other daemon threads | dd (user + sys) | machine user / sys / idle / iowait |');
    L.push('|---|--:|--:|--:|--:|--:|');
    for (const kind of ['unique', 'duplicate']) {
      const m = (k) => median(r.writes.map((w) => w[kind]?.cpu?.[k]));
      L.push(`| ${kind} | ${f0(median(r.writes.map((w) => w[kind]?.MBps)))} | ${f0(m('daemonMainPct'))} % (${f0(m('daemonMainUserPct'))} + ${f0(m('daemonMainSysPct'))}) | ` +
        `${f0(m('daemonOtherPct'))} % | ${f0(median(r.writes.map((w) => w[kind]?.cpu?.ddUserPct + w[kind]?.cpu?.ddSysPct)))} % | ` +
        `${f0(m('machineUserPct'))} / ${f0(m('machineSysPct'))} / ${f0(m('machineIdlePct'))} / ${f0(m('machineIowaitPct'))} % |`);
    }
    const last = r.writes.at(-1);
    const threadText = (w) => {
      const main = w.cpu.daemonThreads.find((t) => t.main)?.tid ?? 0;
      return w.cpu.daemonThreads.map((t) => `${t.main ? 'main' : `+${t.tid - main}`} ${f1(t.user + t.sys)}`).join(', ');
    };
    if (last?.unique?.cpu) {
      L.push('');
      L.push(`CPU seconds per daemon thread in round ${last.round} (thread id as offset from the main thread; the four threads ` +
        'right after it are most likely V8\'s platform workers, i.e. parallel and concurrent GC, and the compression worker ' +
        `starts later): unique (${f1(last.unique.seconds)} s wall): ${threadText(last.unique)}; duplicate ` +
        `(${f1(last.duplicate.seconds)} s wall): ${threadText(last.duplicate)}.`);
    }
    const cs = r.writes.at(-1)?.ceilingStats;
    if (cs) {
      const top = Object.entries(cs.histogram).sort((a, b) => b[1] - a[1]).slice(0, 2).map(([k, v]) => `${k} B × ${v}`).join(', ');
      L.push('');
      L.push(`memfs received ${cs.count} write requests (${top}; max ${cs.max} B): the kernel sends 128 KiB writes to both.`);
    }
    L.push('');
    L.push('Per round (MB/s): ' + r.writes.map((w) => `#${w.round} memfs ${w.ceilings.map((c) => f0(c.MBps)).join(' / ')}, ` +
      `unique ${f0(w.unique?.MBps)}, duplicate ${f0(w.duplicate?.MBps)}`).join('; ') + ' (memfs before, between and after the two Strata writes).');
    for (const pr of r.profiles ?? []) {
      L.push('');
      L.push(`CPU profile of the daemon's main thread (MOUNT_BENCH_PROFILE=1, a separate store, not counted above): ${pr.what}; ` +
        `${f1(pr.totalMs / 1000)} s sampled, idle included (${pr.file}).`);
      L.push('');
      L.push('| self time | % | function |');
      L.push('|--:|--:|---|');
      for (const x of pr.self.slice(0, 12)) L.push(`| ${f0(x.ms)} ms | ${f1(x.pct)} | \`${x.fn}\` |`);
      L.push('');
      L.push('| inclusive (Strata code) | % | function |');
      L.push('|--:|--:|---|');
      for (const x of pr.inclusive.slice(0, 12)) L.push(`| ${f0(x.ms)} ms | ${f1(x.pct)} | \`${x.fn}\` |`);
    }
    L.push('');
    L.push('</details>');
    L.push('');
  }
  const rd = r.views?.reads;
  if (rd) {
    L.push('<details><summary>Every read and listing</summary>');
    L.push('');
    L.push('| source | read cold MB/s, per round | read warm MB/s, per round | find s, per round | find -exec stat s, per round | find -exec stat at once again s, per round |');
    L.push('|---|---|---|---|---|---|');
    const ids = [...new Set([...Object.keys(rd), ...Object.keys(r.views.lists)])];
    for (const id of ids) {
      const a = rd[id];
      const b = r.views.lists[id];
      L.push(`| ${id} | ${a ? a.cold.map(f0).join(', ') : '—'} | ${a ? a.warm.map(f0).join(', ') : '—'} | ` +
        `${b ? b.find.map(f2).join(', ') : '—'} | ${b ? b.stat.map(f2).join(', ') : '—'} | ${b?.statAgain?.length ? b.statAgain.map(f2).join(', ') : '—'} |`);
    }
    L.push('');
    const sn = r.snapshots;
    if (sn.large) L.push(`Snapshots at ~${f1(sn.large.liveBytes / 1e9)} GB: ${sn.large.runs.map((x) => `${f2(x.seconds)} s (pool ${f1(x.poolCatchUpSeconds)} s)`).join(', ')}.`);
    if (sn.small) L.push(`Snapshots at ~${f0(sn.small.liveBytes / MB)} MB: ${sn.small.runs.map((x) => `${f2(x.seconds)} s (pool ${f1(x.poolCatchUpSeconds)} s)`).join(', ')}; first ${f2(sn.firstSmall?.seconds)} s.`);
    const rs = r.rss ?? {};
    const mib = (x) => (typeof x === 'number' ? `${f0(x / MIB)} MiB` : 'n/a');
    L.push(`Peak RSS (VmHWM): write-round daemons ${(rs.writeDaemons ?? []).map(mib).join(', ')} (after the two writes); ` +
      `the same daemon after the image, snapshots and reads ${mib(rs.mainDaemon)}; tree store ${mib(rs.treeDaemon)}; ` +
      `small store ${mib(rs.smallDaemon)}; restic mount ${mib(rs.restic)}, borg mount ${mib(rs.borg)}, memfs with the image ${mib(rs.memfs)}.`);
    const b = r.setup.backupSeconds ?? {};
    if (Object.keys(b).length) L.push(`Backups of the tree and the image before mounting: ${Object.entries(b).map(([t, x]) => `${t} ${f1(x)} s`).join(', ')}.`);
    L.push('');
    L.push('</details>');
  }
  return L.join('\n') + '\n';
}

const md = markdown(report);
fs.mkdirSync(RESULTS, { recursive: true });
fs.writeFileSync(path.join(RESULTS, 'mount-latest.md'), md);
fs.writeFileSync(path.join(RESULTS, 'mount-latest.json'), JSON.stringify(report, null, 2) + '\n');
process.stdout.write('\n' + md);
say(`done in ${f1(report.benchSeconds / 60)} min; wrote ${path.relative(ROOT, RESULTS)}/mount-latest.md and mount-latest.json (log: ${path.relative(ROOT, logFile)})`);
process.exit(exitCode);
