#!/usr/bin/env node
// Dedup/ingest benchmark: backs up every version of every dataset (built by benchmarks/datasets.mjs)
// with Strata, restic and borg, each into a fresh repository of its own under benchmarks/work/repos/,
// in one run, and prints a Markdown table that it also writes to benchmarks/results/latest.md
// (and the full figures to benchmarks/results/latest.json).
//
// Usually started by benchmarks/run.sh (`npm run bench`), which installs the tools and builds the
// datasets first. Environment:
//   BENCH_TOOLS     comma list of tools to run (default: restic,borg,borg-zstd3,strata)
//   BENCH_DATASETS  comma list of datasets to run (default: all in the manifest: src,image)
//   BENCH_REPEAT    rounds: every tool runs on every dataset this many times, round-robin, each time
//                   into a fresh repository; the table shows medians over the rounds (default 3)
//   BENCH_BUDGET    seconds after which no further round is started (default 480)
//   BENCH_TIMEOUT   seconds one backup command may take before it is killed (default 1200)
//   BENCH_WORK      work directory (default benchmarks/work)
//   BENCH_STRATA_BIN  the Strata CLI script, run with node (default bin/strata)
//   BENCH_RESULTS   where latest.md and latest.json go (default benchmarks/results)

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.resolve(process.env.BENCH_WORK ?? path.join(ROOT, 'benchmarks', 'work'));
const REPOS = path.join(WORK, 'repos');
const HOMES = path.join(WORK, 'home');
const LOGS = path.join(WORK, 'logs');
const STAGE = path.join(WORK, 'stage');
const RESULTS = path.resolve(process.env.BENCH_RESULTS ?? path.join(ROOT, 'benchmarks', 'results'));
const TIMEOUT = Number(process.env.BENCH_TIMEOUT ?? 1200);
const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 3));
const BUDGET = Number(process.env.BENCH_BUDGET ?? 480);
const STRATA_BIN = path.resolve(process.env.BENCH_STRATA_BIN ?? path.join(ROOT, 'bin', 'strata'));
const MB = 1e6;

function say(msg) {
  process.stderr.write(`[bench] ${msg}\n`);
}

class ToolError extends Error {}

/**
 * Every version is backed up from the same path, benchmarks/work/stage/<dataset>, as a nightly backup
 * of one directory (or one image file) would be: the version's directory is renamed there for the
 * duration of the backup and renamed back afterwards. A marker file records where it came from, so a run
 * killed meanwhile (Ctrl-C) is repaired by the next one (recoverStage here and in datasets.mjs).
 */
function withStaged(dataset, v, fn) {
  const staged = path.join(STAGE, dataset.id);
  const marker = `${staged}.origin`;
  fs.mkdirSync(STAGE, { recursive: true });
  if (fs.existsSync(staged)) throw new Error(`${staged} exists; remove it or rerun to recover`);
  fs.writeFileSync(marker, v.dir);
  fs.renameSync(v.dir, staged);
  try {
    return fn({ ...v, dir: staged });
  } finally {
    fs.renameSync(staged, v.dir);
    fs.rmSync(marker);
  }
}

function recoverStage() {
  if (!fs.existsSync(STAGE)) return;
  for (const n of fs.readdirSync(STAGE)) {
    if (!n.endsWith('.origin')) continue;
    const origin = fs.readFileSync(path.join(STAGE, n), 'utf8').trim();
    const staged = path.join(STAGE, n.slice(0, -'.origin'.length));
    if (fs.existsSync(staged) && !fs.existsSync(origin)) {
      say(`putting ${staged} back to ${origin} (left over from an interrupted run)`);
      fs.renameSync(staged, origin);
    }
    fs.rmSync(path.join(STAGE, n));
  }
}

function rmrf(p) {
  fs.rmSync(p, { recursive: true, force: true });
}

/** Sum of the sizes of the regular files under p (like `du -sb`, without directory entries). */
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

/** Read every byte of the paths so that all tools start from a warm page cache. */
function warm(paths) {
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  const visit = (q) => {
    const st = fs.statSync(q);
    if (st.isDirectory()) {
      for (const n of fs.readdirSync(q)) visit(path.join(q, n));
    } else if (st.isFile()) {
      const fd = fs.openSync(q, 'r');
      try {
        while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
      } finally {
        fs.closeSync(fd);
      }
    }
  };
  paths.forEach(visit);
}

let logFile = null;

const median = (xs) => {
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};

/**
 * Runs a command under GNU time (peak RSS) and coreutils timeout; measures wall time here.
 * Returns { status, stdout, stderr, seconds, rssKiB }. Output goes to the current log file.
 */
function exec(cmd, args, { cwd = ROOT, env = {}, timeout = TIMEOUT } = {}) {
  const timeFile = path.join(LOGS, '.time');
  rmrf(timeFile);
  const t0 = performance.now();
  const r = spawnSync(
    '/usr/bin/time',
    ['-f', '%e %M', '-o', timeFile, 'timeout', '--kill-after=10', String(timeout), cmd, ...args],
    { cwd, env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 512 * 1024 * 1024 },
  );
  const seconds = (performance.now() - t0) / 1000;
  if (r.error) throw new ToolError(`could not start ${cmd}: ${r.error.message}`);
  let rssKiB = 0;
  try {
    const last = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop();
    rssKiB = Number(last.split(' ')[1]) || 0;
  } catch {
    /* time output missing: leave 0 */
  }
  if (logFile) {
    fs.appendFileSync(
      logFile,
      `\n$ (cd ${cwd} && ${cmd} ${args.join(' ')})\n${r.stdout}${r.stderr}` +
        `[exit ${r.status}, ${seconds.toFixed(2)} s, peak RSS ${(rssKiB / 1024).toFixed(1)} MiB]\n`,
    );
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, seconds, rssKiB };
}

function must(r, what) {
  if (r.status === 124 || r.status === 137) throw new ToolError(`${what}: timed out after ${TIMEOUT} s`);
  if (r.status !== 0) {
    const lines = `${r.stdout}\n${r.stderr}`.trim().split('\n').filter((l) => l.trim());
    const last = (r.stderr.trim().split('\n').filter((l) => l.trim()).pop() ?? lines.pop() ?? '').trim().slice(0, 200);
    throw new ToolError(`${what} exited with ${r.status}: ${last.replace(/\|/g, '/')}\n${lines.slice(-8).join('\n')}`);
  }
  return r;
}

/**
 * The last JSON object in stdout that matches pred: one-line JSON (restic prints one object per line)
 * or pretty-printed JSON (borg, strata), possibly after other output lines.
 */
function lastJson(stdout, pred = () => true) {
  const text = stdout.trimEnd();
  const starts = [];
  for (let i = 0; i < text.length; i = text.indexOf('\n', i) + 1 || text.length) {
    if (text[i] === '{') starts.push(i);
  }
  for (const start of starts.reverse()) {
    // the object starting here ends at the end of some later line; try the candidate line ends
    let end = text.indexOf('\n', start);
    for (;;) {
      const slice = end < 0 ? text.slice(start) : text.slice(start, end);
      try {
        const o = JSON.parse(slice);
        if (o && typeof o === 'object' && pred(o)) return o;
        break;
      } catch {
        if (end < 0) break;
        end = text.indexOf('\n', end + 1);
      }
    }
  }
  return null;
}

function version(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim().split('\n')[0] : null;
}

// ---------------------------------------------------------------------------------------------
// Tools. Each: available() -> null or reason to skip; init(ctx); backup(ctx, v) -> per-version info;
// stats(ctx) -> tool-reported figures. ctx = { repo, home, dataset }.

const RESTIC_PASSWORD = 'strata-bench-not-secret';

function resticEnv(ctx) {
  const pw = path.join(ctx.home, 'password');
  return {
    RESTIC_REPOSITORY: ctx.repo,
    RESTIC_PASSWORD_FILE: pw,
    RESTIC_CACHE_DIR: path.join(ctx.home, 'cache'),
  };
}

function borgEnv(ctx) {
  return {
    BORG_REPO: ctx.repo,
    BORG_BASE_DIR: ctx.home, // keeps borg's cache and security dirs out of ~ and per run
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
  };
}

function borgTool(id, compression) {
  return {
    id,
    label: `borg (${compression})`,
    available: () => (version('borg', ['--version']) ? null : 'borg not installed'),
    version: () => version('borg', ['--version']),
    init(ctx) {
      must(exec('borg', ['init', '--encryption=none'], { env: borgEnv(ctx) }), 'borg init');
    },
    backup(ctx, v) {
      const r = must(
        exec('borg', ['create', '--json', '--files-cache=disabled', '--compression', compression, `::${v.name}`, v.target], {
          cwd: v.dir,
          env: borgEnv(ctx),
        }),
        `borg create ${v.name}`,
      );
      const s = lastJson(r.stdout, (o) => o.archive)?.archive?.stats;
      if (!s) throw new ToolError(`borg create ${v.name}: no JSON stats on stdout`);
      return { r, newBytes: s.deduplicated_size, readBytes: s.original_size, files: s.nfiles };
    },
    probe: (ctx) => exec('borg', ['list'], { env: borgEnv(ctx) }),
    stats(ctx) {
      const r = must(exec('borg', ['info', '--json'], { env: borgEnv(ctx) }), 'borg info');
      const s = lastJson(r.stdout, (o) => o.cache)?.cache?.stats ?? {};
      return { uniqueBytes: s.unique_size, uniqueStoredBytes: s.unique_csize, raw: s };
    },
  };
}

const TOOLS = {
  restic: {
    id: 'restic',
    label: 'restic (auto)',
    available: () => (version('restic', ['version']) ? null : 'restic not installed'),
    version: () => version('restic', ['version']),
    init(ctx) {
      fs.writeFileSync(path.join(ctx.home, 'password'), RESTIC_PASSWORD + '\n', { mode: 0o600 });
      must(exec('restic', ['init', '--repository-version', '2'], { env: resticEnv(ctx) }), 'restic init');
    },
    backup(ctx, v) {
      // --force: re-read every file even if a parent snapshot says it is unchanged
      // (npm tarballs give all files the same 1985 mtime, and sizes often stay the same).
      const r = must(
        exec('restic', ['backup', '--json', '--force', '--compression', 'auto', '--host', 'bench', '--tag', v.name, v.target], {
          cwd: v.dir,
          env: resticEnv(ctx),
        }),
        `restic backup ${v.name}`,
      );
      const s = lastJson(r.stdout, (o) => o.message_type === 'summary');
      if (!s) throw new ToolError(`restic backup ${v.name}: no JSON summary on stdout`);
      if (s.files_unmodified) say(`warning: restic skipped ${s.files_unmodified} unmodified files in ${v.name}`);
      return { r, newBytes: s.data_added, readBytes: s.total_bytes_processed, files: s.total_files_processed };
    },
    probe: (ctx) => exec('restic', ['cat', 'config'], { env: resticEnv(ctx) }),
    stats(ctx, versions) {
      const r = must(exec('restic', ['stats', '--mode', 'raw-data', '--json'], { env: resticEnv(ctx) }), 'restic stats');
      const s = lastJson(r.stdout) ?? {};
      // restic 0.14 has no total_uncompressed_size; its per-backup data_added is counted before compression
      const unique = s.total_uncompressed_size ?? versions.reduce((a, v) => a + (v.newBytes ?? 0), 0);
      return { uniqueBytes: unique, uniqueStoredBytes: s.total_size, raw: s };
    },
  },
  borg: borgTool('borg', 'lz4'),
  'borg-zstd3': borgTool('borg-zstd3', 'zstd,3'),
  strata: {
    id: 'strata',
    label: 'Strata',
    available() {
      if (!fs.existsSync(STRATA_BIN)) return `Strata CLI not found at ${path.relative(ROOT, STRATA_BIN)} (not written yet?)`;
      return null;
    },
    version() {
      let v = 'strata';
      try {
        v += ' ' + JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
      } catch {
        /* ignore */
      }
      const git = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' });
      if (git.status === 0) v += ` (git ${git.stdout.trim()})`;
      if (STRATA_BIN !== path.join(ROOT, 'bin', 'strata')) v += ` [CLI: ${STRATA_BIN}]`;
      return v;
    },
    init(ctx) {
      // The capacity pool only: restic and Borg keep no native copies, so neither does Strata here
      // (its performance pool trades disk for read speed and is measured by the mount benchmark).
      must(exec(process.execPath, [STRATA_BIN, 'init', '--store', ctx.repo, '--performance-keep', '0']), 'strata init');
    },
    backup(ctx, v) {
      const target = path.resolve(v.dir, v.target);
      const r = must(
        exec(process.execPath, [STRATA_BIN, 'import', target, '--store', ctx.repo, '--name', v.name, '--json']),
        `strata import ${v.name}`,
      );
      const s = lastJson(r.stdout, (o) => 'storedBytes' in o || 'logicalBytes' in o);
      if (!s) throw new ToolError(`strata import ${v.name}: no JSON object on stdout`);
      return {
        r, newBytes: s.storedBytes, readBytes: s.logicalBytes, files: s.files, selfSeconds: s.seconds, id: s.id,
        parent: s.parent, dedup: s.dedup,
      };
    },
    probe: (ctx) => exec(process.execPath, [STRATA_BIN, 'stats', '--store', ctx.repo, '--json']),
    stats(ctx) {
      const r = must(exec(process.execPath, [STRATA_BIN, 'stats', '--store', ctx.repo, '--json']), 'strata stats');
      const s = lastJson(r.stdout) ?? {};
      return { uniqueBytes: s.uniqueDataBytes, uniqueStoredBytes: s.storedBytes, raw: s };
    },
  },
};

// ---------------------------------------------------------------------------------------------

function runOne(tool, dataset, round) {
  const key = `${dataset.id}-${tool.id}`;
  const ctx = { repo: path.join(REPOS, key), home: path.join(HOMES, key), dataset };
  logFile = path.join(LOGS, `${key}.log`);
  (round === 1 ? fs.writeFileSync : fs.appendFileSync)(
    logFile,
    `\n# round ${round}: ${tool.label} on ${dataset.id}, ${new Date().toISOString()}\n`,
  );
  rmrf(ctx.repo);
  rmrf(ctx.home);
  fs.mkdirSync(ctx.home, { recursive: true });
  fs.mkdirSync(REPOS, { recursive: true });

  const logical = dataset.logicalBytes;
  const result = { round, status: 'ok', versions: [] };
  try {
    warm(dataset.versions.map((v) => path.resolve(v.dir, v.target)));
    tool.init(ctx);
    for (const v of dataset.versions) {
      const b = withStaged(dataset, v, (staged) => tool.backup(ctx, staged));
      const { r, ...info } = b;
      result.versions.push({ name: v.name, logicalBytes: v.logicalBytes, seconds: r.seconds, peakRssKiB: r.rssKiB, ...info });
      if (info.readBytes !== undefined && Math.abs(info.readBytes - v.logicalBytes) > 0.01 * v.logicalBytes) {
        say(`warning: ${tool.id} reports ${info.readBytes} bytes read for ${dataset.id}/${v.name}, expected ${v.logicalBytes}`);
      }
      say(`  ${tool.id} ${dataset.id}/${v.name}: ${r.seconds.toFixed(2)} s, new ${((info.newBytes ?? 0) / MB).toFixed(2)} MB, ` +
        `RSS ${(r.rssKiB / 1024).toFixed(0)} MiB`);
    }
    result.ingestSeconds = result.versions.reduce((s, v) => s + v.seconds, 0);
    result.ingestMBps = logical / MB / result.ingestSeconds;
    result.storedBytes = bytesOnDisk(ctx.repo);
    result.dedupRatio = logical / result.storedBytes;
    result.peakRssBytes = Math.max(...result.versions.map((v) => v.peakRssKiB)) * 1024;
    result.toolStats = tool.stats(ctx, result.versions);
    // Fixed cost of one command on this repository (start-up, key derivation, index loading), the median
    // of 3 runs of a trivial command: restic cat config, borg list, strata stats.
    result.startupSeconds = median([1, 2, 3].map(() => must(tool.probe(ctx), `${tool.id} start-up probe`).seconds));
  } catch (e) {
    if (!(e instanceof ToolError)) throw e;
    result.status = 'failed';
    result.error = e.message;
    say(`${tool.id} on ${dataset.id} FAILED: ${e.message}\n        (full log: ${path.relative(ROOT, logFile)})`);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Report

const f1 = (x) => (x === undefined || x === null || Number.isNaN(x) ? 'n/a' : x.toFixed(1));
const f2 = (x) => (x === undefined || x === null || Number.isNaN(x) ? 'n/a' : x.toFixed(2));
const mb = (b) => (b === undefined || b === null ? 'n/a' : (b / MB).toFixed(1));

function markdown(report) {
  const L = [];
  L.push(`### Dedup/ingest benchmark, ${report.date.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}`);
  L.push('');
  L.push(`Command: \`${report.command}\` · host: ${report.host.cpus} CPUs (${report.host.cpuModel}), ` +
    `${(report.host.memBytes / 2 ** 30).toFixed(1)} GiB RAM, ${report.host.os} · ` +
    report.versions.filter(Boolean).join(' · ') +
    ` · median of ${report.rounds} round(s)`);
  L.push('');
  for (const d of report.datasets) {
    L.push(`- **${d.id}**: ${d.title}; ${d.versions.length} versions, ${mb(d.logicalBytes)} MB logical in total ` +
      `(${d.versions.map((v) => `${v.name}=${v.label.replace('generation ', 'gen ')}`).join(', ')})`);
  }
  L.push('');
  L.push('| dataset | tool | ingest s | ingest MB/s | time vs restic | stored MB | dedup ratio | peak RSS MB | start-up s | MB/s net of start-up |');
  L.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const d of report.datasets) {
    for (const r of report.results.filter((x) => x.dataset === d.id)) {
      if (r.status === 'skipped') {
        L.push(`| ${d.id} | ${r.label} | skipped: ${r.reason} | | | | | | | |`);
      } else if (r.status !== 'ok') {
        const why = String(r.error ?? '').split('\n')[0];
        L.push(`| ${d.id} | ${r.label} | **failed**: ${why} (log: benchmarks/work/logs/${d.id}-${r.tool}.log) | | | | | | | |`);
      } else {
        L.push(`| ${d.id} | ${r.label} | ${f1(r.ingestSeconds)} | ${f1(r.ingestMBps)} | ` +
          `${r.timeVsRestic !== undefined ? f2(r.timeVsRestic) + '×' : 'n/a'} | ${mb(r.storedBytes)} | ` +
          `${f2(r.dedupRatio)} | ${f1(r.peakRssBytes / MB)} | ${f2(r.startupSeconds)} | ${f1(r.netMBps)} |`);
      }
    }
  }
  L.push('');
  L.push(`MB = 10^6 bytes. Every tool backed up every version into a fresh repository of its own, ${report.rounds} ` +
    'round(s) round-robin; ingest s and stored MB are medians over the rounds. Ingest s = wall time of the backup ' +
    'commands summed over all versions (init and stats excluded, process start-up included); ingest MB/s = logical ' +
    'MB / ingest s; time vs restic < 1 means faster than restic. Stored MB = all files in the repository directory ' +
    'at the end; dedup ratio = logical bytes of all versions / stored bytes (deduplication and compression together). ' +
    'Peak RSS = max over the backup commands (GNU time %M). Start-up s = fixed cost of one command on the final ' +
    'repository (median of 3 runs of restic cat config / borg list / strata stats: process start, key derivation, ' +
    'index loading), paid once per version; MB/s net of start-up = logical MB / (ingest s − versions × start-up s).');
  L.push('');
  L.push('Targets (issue): Strata dedup ratio ≥ restic\'s and borg\'s on both datasets; Strata ingest MB/s ≥ restic\'s.');
  L.push('');
  for (const d of report.datasets) {
    const get = (t) => report.results.find((r) => r.dataset === d.id && r.tool === t);
    const s = get('strata');
    if (!s || s.status !== 'ok') {
      L.push(`- ${d.id}: not evaluated (Strata ${s ? s.status : 'not run'}${s?.reason ? ': ' + s.reason : ''})`);
      continue;
    }
    const peers = ['restic', 'borg', 'borg-zstd3'].map(get).filter((r) => r && r.status === 'ok');
    const dedupOk = peers.every((p) => s.dedupRatio >= p.dedupRatio);
    const restic = get('restic');
    const speedOk = restic?.status === 'ok' ? s.ingestMBps >= restic.ingestMBps : undefined;
    L.push(`- ${d.id}: dedup ${f2(s.dedupRatio)} vs ${peers.map((p) => `${p.tool} ${f2(p.dedupRatio)}`).join(', ')} → ` +
      `${dedupOk ? 'met' : '**not met**'}; ingest ${f1(s.ingestMBps)} MB/s vs restic ` +
      `${restic?.status === 'ok' ? f1(restic.ingestMBps) : 'n/a'} → ${speedOk === undefined ? 'n/a' : speedOk ? 'met' : '**not met**'}` +
      (restic?.status === 'ok' ? ` (net of start-up: ${f1(s.netMBps)} vs ${f1(restic.netMBps)} MB/s)` : ''));
  }
  L.push('');
  L.push('<details><summary>Tool-reported figures and new data per version</summary>');
  L.push('');
  L.push('Last round\'s repository; "new MB per version" is what each backup reported adding (restic: before ' +
    'compression; borg and Strata: compressed). Ingest s and stored MB per round show the spread behind the medians.');
  L.push('');
  L.push('| dataset | tool | unique data, uncompressed MB | unique data, compressed MB | new MB per version | ingest s per round | stored MB per round |');
  L.push('|---|---|--:|--:|---|---|---|');
  for (const r of report.results.filter((x) => x.status === 'ok')) {
    L.push(`| ${r.dataset} | ${r.label} | ${mb(r.toolStats?.uniqueBytes)} | ${mb(r.toolStats?.uniqueStoredBytes)} | ` +
      `${r.versions.map((v) => mb(v.newBytes)).join(', ')} | ${r.ingestSecondsAll.map(f1).join(', ')} | ` +
      `${r.storedBytesAll.map(mb).join(', ')} |`);
  }
  L.push('');
  L.push('</details>');
  return L.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------

const manifestPath = path.join(WORK, 'datasets', 'manifest.json');
if (!fs.existsSync(manifestPath)) {
  say(`no datasets: ${manifestPath} is missing; run node benchmarks/datasets.mjs (or bash benchmarks/run.sh) first`);
  process.exit(1);
}
const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
const wantTools = (process.env.BENCH_TOOLS ?? 'restic,borg,borg-zstd3,strata').split(',').map((s) => s.trim()).filter(Boolean);
const wantData = process.env.BENCH_DATASETS?.split(',').map((s) => s.trim()).filter(Boolean);
for (const t of wantTools) if (!TOOLS[t]) { say(`unknown tool '${t}' in BENCH_TOOLS (known: ${Object.keys(TOOLS).join(', ')})`); process.exit(2); }
const datasets = manifest.datasets.filter((d) => !wantData || wantData.includes(d.id));
if (!datasets.length) { say(`no dataset selected (BENCH_DATASETS=${process.env.BENCH_DATASETS})`); process.exit(2); }
for (const d of datasets) d.logicalBytes = d.versions.reduce((s, v) => s + v.logicalBytes, 0);
recoverStage();
fs.mkdirSync(LOGS, { recursive: true });

const skip = {};
for (const t of wantTools) {
  const why = TOOLS[t].available();
  if (why) {
    skip[t] = why;
    say(`skipping ${TOOLS[t].label}: ${why}`);
  }
}

const runsByKey = new Map(); // `${dataset}/${tool}` -> [run results]
const started = performance.now();
let rounds = 0;
for (let rep = 1; rep <= REPEAT; rep++) {
  if (rep > 1 && (performance.now() - started) / 1000 > BUDGET) {
    say(`time budget of ${BUDGET} s used up after ${rounds} round(s); not repeating further (BENCH_BUDGET)`);
    break;
  }
  for (const d of datasets) {
    for (const t of wantTools) {
      if (skip[t]) continue;
      const tool = TOOLS[t];
      const key = `${d.id}/${t}`;
      if (!runsByKey.has(key)) runsByKey.set(key, []);
      if (runsByKey.get(key).some((r) => r.status !== 'ok')) continue; // failed before: do not retry
      say(`[round ${rep}/${REPEAT}] ${tool.label} on ${d.id} (${d.versions.length} versions, ${mb(d.logicalBytes)} MB)`);
      runsByKey.get(key).push(runOne(tool, d, rep));
    }
  }
  rounds = rep;
}

/** One row per dataset and tool: medians of ingest time and stored bytes over the rounds. */
function aggregate(d, t) {
  const tool = TOOLS[t];
  const base = { dataset: d.id, tool: t, label: tool.label, logicalBytes: d.logicalBytes };
  if (skip[t]) return { ...base, status: 'skipped', reason: skip[t] };
  const runs = runsByKey.get(`${d.id}/${t}`) ?? [];
  const failed = runs.find((r) => r.status !== 'ok');
  if (failed || !runs.length) return { ...base, status: 'failed', error: failed?.error ?? 'not run', runs };
  const last = runs[runs.length - 1];
  const stored = runs.map((r) => r.storedBytes);
  const ingestSeconds = median(runs.map((r) => r.ingestSeconds));
  const storedBytes = median(stored);
  return {
    ...base,
    status: 'ok',
    rounds: runs.length,
    ingestSeconds,
    ingestSecondsAll: runs.map((r) => r.ingestSeconds),
    ingestMBps: d.logicalBytes / MB / ingestSeconds,
    // restic picks a random chunker polynomial per repository, so its stored size varies between rounds
    storedBytes,
    storedBytesAll: stored,
    dedupRatio: d.logicalBytes / storedBytes,
    startupSeconds: median(runs.map((r) => r.startupSeconds)),
    // throughput with the per-command fixed cost taken out (versions x start-up)
    netMBps: ((net) => (net > 0 ? d.logicalBytes / MB / net : NaN))(
      ingestSeconds - d.versions.length * median(runs.map((r) => r.startupSeconds)),
    ),
    peakRssBytes: Math.max(...runs.map((r) => r.peakRssBytes)),
    toolStats: last.toolStats,
    versions: last.versions,
    runs,
  };
}
const results = datasets.flatMap((d) => wantTools.map((t) => aggregate(d, t)));
for (const r of results) {
  const restic = results.find((x) => x.dataset === r.dataset && x.tool === 'restic' && x.status === 'ok');
  if (r.status === 'ok' && restic) r.timeVsRestic = r.ingestSeconds / restic.ingestSeconds;
}

const report = {
  date: new Date().toISOString(),
  command: process.env.BENCH_COMMAND ?? 'bash benchmarks/run.sh',
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
    cache: 'each tool reads the whole dataset once (warm page cache) right before its run; the page cache is not dropped',
    restic: 'restic init --repository-version 2; restic backup --force --compression auto (always encrypted: AES-256-CTR + Poly1305)',
    borg: 'borg init --encryption=none; borg create --files-cache=disabled --compression lz4 | zstd,3 (default chunker buzhash 19,23,21,4095)',
    strata: 'strata init --store DIR; strata import PATH --store DIR --name vN --json; strata stats --store DIR --json',
    storedBytes: 'sum of regular file sizes under the repository directory (caches outside the repository not counted)',
  },
  datasets: datasets.map((d) => ({ id: d.id, title: d.title, changes: d.changes, logicalBytes: d.logicalBytes,
    versions: d.versions.map(({ name, label, logicalBytes, files }) => ({ name, label, logicalBytes, files })) })),
  results,
};

const md = markdown(report);
fs.mkdirSync(RESULTS, { recursive: true });
fs.writeFileSync(path.join(RESULTS, 'latest.md'), md);
fs.writeFileSync(path.join(RESULTS, 'latest.json'), JSON.stringify(report, null, 2) + '\n');
process.stdout.write('\n' + md);
say(`done in ${(report.benchSeconds / 60).toFixed(1)} min; wrote ${path.relative(ROOT, RESULTS) || '.'}/latest.md and latest.json`);
process.exit(results.some((r) => r.status === 'failed') ? 1 : 0);
