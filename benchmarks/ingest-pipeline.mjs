#!/usr/bin/env node
// Ingest throughput of CasStore.objects.writeObject with chunk compression inline (on the calling
// thread) versus on compression worker threads, in one run, on the same data:
//   text    ~512 MiB built from node_modules/**/*.js, copied over and over with a unique comment
//           every ~2 KB so that no 16 KiB chunk deduplicates (compressible, like source trees)
//   random  pseudo-random bytes (incompressible: stored raw)
// Each figure is the median of BENCH_ROUNDS rounds (default 3), modes alternating within a round so
// noise on the shared machine hits both alike. Timing covers writeObject + commit (fsync included).
// Needs a build: `npx tsc -p . && node benchmarks/ingest-pipeline.mjs`. Environment:
//   BENCH_MIB      size of each dataset in MiB (default 512)
//   BENCH_ROUNDS   rounds (default 3)
//   BENCH_WORKERS  comma list of worker counts to compare, 0 = inline (default 0,1)

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { CasStore } = await import(path.join(ROOT, 'dist/src/cas/store.js'));

const MIB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_MIB ?? 512) * MIB;
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));
const MODES = (process.env.BENCH_WORKERS ?? '0,1').split(',').map(Number);

function textData(size) {
  const files = fs.readdirSync(path.join(ROOT, 'node_modules'), { recursive: true })
    .filter((f) => f.endsWith('.js'))
    .map((f) => path.join(ROOT, 'node_modules', f))
    .filter((f) => fs.statSync(f).isFile())
    .sort();
  const corpus = Buffer.concat(files.map((f) => fs.readFileSync(f)));
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (let copy = 0; at < size; copy++) {
    for (let i = 0; i < corpus.length && at < size; i += 2048) {
      at += corpus.copy(out, at, i, Math.min(corpus.length, i + 2048));
      at += out.write(`\n// ${copy}.${i}\n`, at);
    }
  }
  return { corpusBytes: corpus.length, files: files.length, data: out };
}

function run(data, workers) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-ingest-'));
  try {
    CasStore.init(dir);
    const cas = CasStore.open(dir, { write: true, compressWorkers: workers });
    try {
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const { root } = cas.objects.writeObject(data);
      cas.chunks.commit();
      const secs = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      return {
        root: root.toString('hex'),
        secs,
        mbps: data.length / 1e6 / secs,
        cpuSecs: (cpu.user + cpu.system) / 1e6,
        stored: cas.chunks.stats.storedBytes,
        newChunks: cas.chunks.stats.newChunks,
      };
    } finally {
      cas.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const label = (w) => (w === 0 ? 'inline' : `${w} worker${w > 1 ? 's' : ''}`);

const text = textData(SIZE);
process.stderr.write(`text: ${text.files} .js files, ${(text.corpusBytes / MIB).toFixed(1)} MiB corpus, ${SIZE / MIB} MiB built\n`);
const datasets = [
  { id: 'text', data: text.data },
  { id: 'random', data: crypto.randomBytes(SIZE) },
];

const rows = [];
for (const ds of datasets) {
  const results = new Map(MODES.map((m) => [m, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const m of r % 2 ? [...MODES].reverse() : MODES) {
      const res = run(ds.data, m);
      results.get(m).push(res);
      process.stderr.write(`${ds.id} round ${r + 1} ${label(m)}: ${res.mbps.toFixed(0)} MB/s (${res.secs.toFixed(2)} s, cpu ${res.cpuSecs.toFixed(2)} s)\n`);
    }
  }
  const roots = new Set([...results.values()].flat().map((x) => x.root));
  const stored = new Set([...results.values()].flat().map((x) => x.stored));
  if (roots.size !== 1 || stored.size !== 1) throw new Error(`${ds.id}: modes disagree (roots ${roots.size}, stored sizes ${stored.size})`);
  const base = median(results.get(MODES[0]).map((x) => x.mbps));
  for (const m of MODES) {
    const xs = results.get(m);
    const mbps = median(xs.map((x) => x.mbps));
    rows.push({
      dataset: ds.id, mode: label(m), mbps, ratio: mbps / base,
      cpu: median(xs.map((x) => x.cpuSecs)), secs: median(xs.map((x) => x.secs)),
      storedPct: (100 * xs[0].stored) / ds.data.length, chunks: xs[0].newChunks,
    });
  }
}

const lines = [
  `Ingest (writeObject + commit), ${SIZE / MIB} MiB per dataset, median of ${ROUNDS}, ${os.availableParallelism()} cores, node ${process.version}`,
  '',
  '| dataset | mode | MB/s | vs inline | wall s | CPU s | stored % of raw | new chunks |',
  '|---|---|--:|--:|--:|--:|--:|--:|',
  ...rows.map((r) => `| ${r.dataset} | ${r.mode} | ${r.mbps.toFixed(0)} | ${r.ratio.toFixed(2)}x | ${r.secs.toFixed(2)} | ${r.cpu.toFixed(2)} | ${r.storedPct.toFixed(1)} | ${r.chunks} |`),
];
console.log(lines.join('\n'));
