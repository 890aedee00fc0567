#!/usr/bin/env node
// Builds the datasets of the dedup/ingest benchmark into benchmarks/work/datasets/ and writes
// benchmarks/work/datasets/manifest.json, which benchmarks/dedup-bench.mjs reads.
// Everything is cached: a dataset is rebuilt only when its recipe below changes or its
// directory is missing. Delete benchmarks/work/ to start from scratch.
//
//   src    8 consecutive releases of the npm package typescript (`npm pack`), each extracted
//          into its own directory v1..v8 (about 32 MB and 110-120 files each).
//   image  an ext4 image of 256 MiB (4 KiB blocks) in 3 generations g1..g3, each one file
//          named disk.img in its own directory. g1 is made with `mkfs.ext4 -d`; g2 and g3 copy
//          the previous generation and change it without mounting: debugfs rm/write/mkdir/ln/unlink
//          for added, replaced, deleted and renamed files, and pages of a database-like file
//          overwritten in place (physical blocks found with debugfs `blocks`).
//
// Usage: node benchmarks/datasets.mjs        (prints what it builds or reuses)
// Needs: npm (registry access on first run), tar, mkfs.ext4, debugfs, e2fsck.

import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.resolve(process.env.BENCH_WORK ?? path.join(ROOT, 'benchmarks', 'work'));
const TARBALLS = path.join(WORK, 'tarballs');
const DATASETS = path.join(WORK, 'datasets');
const MIB = 1024 * 1024;

// Recipes: change anything here and bump `recipe` to force a rebuild of that dataset.
const SRC = {
  id: 'src',
  recipe: 1,
  title: 'typescript npm releases 5.4.2 … 5.6.2 (8 consecutive versions, one directory each)',
  pkg: 'typescript',
  versions: ['5.4.2', '5.4.3', '5.4.4', '5.4.5', '5.5.2', '5.5.3', '5.5.4', '5.6.2'],
};
const IMAGE = {
  id: 'image',
  recipe: 1,
  title: 'ext4 image, 256 MiB, 3 generations changed in place (one file each)',
  sizeMiB: 256,
  blockSize: 4096,
  // typescript release installed under /opt/typescript in each generation (an "upgrade" per generation)
  ts: ['5.3.2', '5.3.3', '5.4.2'],
};

function log(msg) {
  process.stderr.write(`[datasets] ${msg}\n`);
}

function die(msg) {
  process.stderr.write(`[datasets] ERROR: ${msg}\n`);
  process.exit(1);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MIB, ...opts });
  if (r.error) die(`${cmd} could not be started: ${r.error.message}`);
  if (r.status !== 0 && !opts.allowFail) {
    die(`${cmd} ${args.join(' ')} exited with ${r.status}\n${r.stdout ?? ''}${r.stderr ?? ''}`);
  }
  return r;
}

function rmrf(p) {
  fs.rmSync(p, { recursive: true, force: true });
}

/** Regular files under dir (relative paths, sorted) and their total size. */
function walk(dir) {
  const files = [];
  let bytes = 0;
  const visit = (rel) => {
    for (const ent of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${ent.name}` : ent.name;
      if (ent.isDirectory()) visit(r);
      else if (ent.isFile()) {
        files.push(r);
        bytes += fs.statSync(path.join(dir, r)).size;
      }
    }
  };
  visit('');
  files.sort();
  return { files, bytes };
}

/** Deterministic incompressible bytes: AES-256-CTR keystream keyed by the seed string. */
function randomBytes(seed, n) {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

/** Small deterministic PRNG (mulberry32) for text and page choices. */
function prng(seed) {
  let a = createHash('sha256').update(seed).digest().readUInt32LE(0);
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Deterministic application log text (compressible, like real logs). */
function logText(seed, bytes, startSecond) {
  const rnd = prng(seed);
  const paths = ['/api/items', '/api/users', '/api/orders', '/health', '/static/app.js', '/api/search'];
  const levels = ['INFO', 'INFO', 'INFO', 'INFO', 'WARN', 'DEBUG'];
  const lines = [];
  let size = 0;
  let t = Date.UTC(2024, 4, 1) + startSecond * 1000;
  while (size < bytes) {
    t += Math.floor(rnd() * 900);
    const id = Math.floor(rnd() * 0xffffffff).toString(16).padStart(8, '0');
    const line =
      `${new Date(t).toISOString()} ${levels[Math.floor(rnd() * levels.length)]} worker-${Math.floor(rnd() * 8)} ` +
      `req=${id} ${paths[Math.floor(rnd() * paths.length)]} status=${rnd() < 0.97 ? 200 : 500} ` +
      `dur=${Math.floor(rnd() * 250)}ms\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

/** `npm pack pkg@version` into the tarball cache; returns the tarball path. */
function fetchTarball(pkg, version) {
  fs.mkdirSync(TARBALLS, { recursive: true });
  const file = path.join(TARBALLS, `${pkg}-${version}.tgz`);
  if (fs.existsSync(file)) return file;
  log(`npm pack ${pkg}@${version}`);
  const tmp = fs.mkdtempSync(path.join(TARBALLS, '.pack-'));
  const r = run('npm', ['pack', `${pkg}@${version}`, '--pack-destination', tmp, '--silent'], {
    cwd: tmp,
    allowFail: true,
  });
  const got = path.join(tmp, `${pkg}-${version}.tgz`);
  if (r.status !== 0 || !fs.existsSync(got)) {
    rmrf(tmp);
    die(`npm pack ${pkg}@${version} failed (is the npm registry reachable?)\n${r.stderr}`);
  }
  fs.renameSync(got, file);
  rmrf(tmp);
  return file;
}

function extract(tarball, dir) {
  rmrf(dir);
  fs.mkdirSync(dir, { recursive: true });
  run('tar', ['-xzf', tarball, '-C', dir, '--strip-components=1', '--no-same-owner']);
}

function stampOk(dir, recipe) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, '.recipe.json'), 'utf8')).recipe === JSON.stringify(recipe);
  } catch {
    return false;
  }
}

function writeStamp(dir, recipe, info) {
  fs.writeFileSync(
    path.join(dir, '.recipe.json'),
    JSON.stringify({ recipe: JSON.stringify(recipe), ...info }, null, 2) + '\n',
  );
}

// ---------------------------------------------------------------------------------------------
// Dataset 1: versioned source tree

function buildSrc() {
  const dir = path.join(DATASETS, SRC.id);
  if (!stampOk(dir, SRC)) {
    log(`building ${SRC.id}: ${SRC.title}`);
    const tmp = `${dir}.tmp`;
    rmrf(tmp);
    fs.mkdirSync(tmp, { recursive: true });
    SRC.versions.forEach((v, i) => extract(fetchTarball(SRC.pkg, v), path.join(tmp, `v${i + 1}`)));
    writeStamp(tmp, SRC, { builtAt: new Date().toISOString() });
    rmrf(dir);
    fs.renameSync(tmp, dir);
  } else {
    log(`reusing ${SRC.id} (${dir})`);
  }
  return {
    id: SRC.id,
    title: SRC.title,
    kind: 'tree',
    versions: SRC.versions.map((v, i) => {
      const vdir = path.join(dir, `v${i + 1}`);
      const w = walk(vdir);
      return { name: `v${i + 1}`, label: `${SRC.pkg}@${v}`, dir: vdir, target: '.', logicalBytes: w.bytes, files: w.files.length };
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// Dataset 2: ext4 disk image, 3 generations

function debugfs(img, commands) {
  const cmdFile = `${img}.debugfs-cmds`;
  fs.writeFileSync(cmdFile, commands.join('\n') + '\n');
  const r = run('debugfs', ['-w', '-f', cmdFile, img], { allowFail: true });
  fs.rmSync(cmdFile);
  // debugfs exits 0 even when a command fails; anything on stderr besides its banner is an error.
  const errors = (r.stderr ?? '')
    .split('\n')
    .filter((l) => l.trim() && !/^debugfs \d/.test(l));
  if (r.status !== 0 || errors.length) die(`debugfs on ${img} failed:\n${errors.join('\n')}`);
  return r.stdout;
}

function fsck(img) {
  const r = run('e2fsck', ['-fn', img], { allowFail: true });
  if (r.status !== 0) die(`e2fsck -fn ${img} reports problems (exit ${r.status}):\n${r.stdout}${r.stderr}`);
}

/** Physical block numbers of a file, in logical order (debugfs `blocks`). */
function fileBlocks(img, file) {
  const out = run('debugfs', ['-R', `blocks ${file}`, img]).stdout.trim();
  const blocks = out.split(/\s+/).filter(Boolean).map(Number);
  if (!blocks.length || blocks.some((b) => !Number.isInteger(b) || b <= 0)) die(`cannot read block map of ${file}: ${out}`);
  return blocks;
}

/** Overwrite whole blocks of a file inside the image without changing its size (an in-place update). */
function overwriteInPlace(img, file, logicalBlocks, seed) {
  const phys = fileBlocks(img, file);
  const fd = fs.openSync(img, 'r+');
  try {
    for (const lb of logicalBlocks) {
      if (lb >= phys.length) die(`block ${lb} beyond end of ${file}`);
      fs.writeSync(fd, randomBytes(`${seed}/${lb}`, IMAGE.blockSize), 0, IMAGE.blockSize, phys[lb] * IMAGE.blockSize);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** debugfs commands that turn the tree `oldDir` (mounted at `at`) into `newDir`. */
function upgradeCommands(oldDir, newDir, at) {
  const oldW = new Set(walk(oldDir).files);
  const newW = walk(newDir).files;
  const cmds = [];
  const dirsNeeded = new Set();
  for (const rel of newW) {
    if (/\s|"/.test(rel)) die(`path with whitespace not supported by this recipe: ${rel}`);
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) dirsNeeded.add(parts.slice(0, i).join('/'));
  }
  const oldDirs = new Set();
  for (const rel of oldW) {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) oldDirs.add(parts.slice(0, i).join('/'));
  }
  let changed = 0, added = 0, removed = 0;
  for (const rel of oldW) {
    if (!newW.includes(rel)) {
      cmds.push(`rm ${at}/${rel}`);
      removed++;
    }
  }
  for (const d of [...oldDirs].sort().reverse()) if (!dirsNeeded.has(d)) cmds.push(`rmdir ${at}/${d}`);
  for (const d of [...dirsNeeded].sort()) if (!oldDirs.has(d)) cmds.push(`mkdir ${at}/${d}`);
  for (const rel of newW) {
    const src = path.join(newDir, rel);
    if (oldW.has(rel)) {
      if (fs.readFileSync(src).equals(fs.readFileSync(path.join(oldDir, rel)))) continue;
      cmds.push(`rm ${at}/${rel}`);
      changed++;
    } else {
      added++;
    }
    cmds.push(`write ${src} ${at}/${rel}`);
  }
  return { cmds, summary: `${changed} changed, ${added} added, ${removed} removed` };
}

function buildImage() {
  const dir = path.join(DATASETS, IMAGE.id);
  if (!stampOk(dir, IMAGE)) {
    log(`building ${IMAGE.id}: ${IMAGE.title}`);
    const tmp = `${dir}.tmp`;
    rmrf(tmp);
    const stage = path.join(tmp, 'stage');
    fs.mkdirSync(stage, { recursive: true });
    const tsDirs = IMAGE.ts.map((v) => {
      const d = path.join(stage, `typescript-${v}`);
      extract(fetchTarball('typescript', v), d);
      return d;
    });
    const changes = [];

    // Generation 1: mkfs.ext4 -d from a staged root directory.
    const root = path.join(stage, 'root');
    fs.mkdirSync(path.join(root, 'opt'), { recursive: true });
    fs.cpSync(tsDirs[0], path.join(root, 'opt', 'typescript'), { recursive: true, preserveTimestamps: true });
    fs.mkdirSync(path.join(root, 'var', 'lib', 'app'), { recursive: true });
    fs.writeFileSync(path.join(root, 'var', 'lib', 'app', 'db.bin'), randomBytes('db.bin', 16 * MIB));
    fs.mkdirSync(path.join(root, 'srv', 'media'), { recursive: true });
    for (let i = 1; i <= 4; i++) {
      fs.writeFileSync(path.join(root, 'srv', 'media', `photo-00${i}.bin`), randomBytes(`photo-${i}`, 3 * MIB));
    }
    fs.mkdirSync(path.join(root, 'var', 'log'), { recursive: true });
    fs.writeFileSync(path.join(root, 'var', 'log', 'app.log'), logText('log-1', 4 * MIB, 0));
    const g1 = path.join(tmp, 'g1');
    fs.mkdirSync(g1);
    const img1 = path.join(g1, 'disk.img');
    fs.closeSync(fs.openSync(img1, 'w'));
    fs.truncateSync(img1, IMAGE.sizeMiB * MIB);
    run('mkfs.ext4', ['-q', '-F', '-b', String(IMAGE.blockSize), '-L', 'bench', '-U', '5d3a7c1e-0b6f-4d0e-9a51-7f2f9c0b1e42',
      '-E', 'root_owner=0:0,hash_seed=3b1f0c2a-8e4d-4c55-b6a7-1d2e3f405162', '-d', root, img1],
    { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1714521600' } });
    fsck(img1);
    changes.push('g1: mkfs.ext4 -d with /opt/typescript (5.3.2), /var/lib/app/db.bin (16 MiB random), ' +
      '/srv/media/photo-001..004.bin (3 MiB random each), /var/log/app.log (4 MiB text)');

    const nextGen = (prev, n) => {
      const d = path.join(tmp, `g${n}`);
      fs.mkdirSync(d);
      const img = path.join(d, 'disk.img');
      run('cp', ['--sparse=always', prev, img]);
      return img;
    };

    // Generation 2: package upgrade, db pages rewritten in place, media deleted/added, log grown.
    const img2 = nextGen(img1, 2);
    const up2 = upgradeCommands(tsDirs[0], tsDirs[1], '/opt/typescript');
    const f = (name, data) => {
      const p = path.join(stage, name);
      fs.writeFileSync(p, data);
      return p;
    };
    debugfs(img2, [
      ...up2.cmds,
      'rm /srv/media/photo-002.bin',
      `write ${f('photo-005.bin', randomBytes('photo-5', 3 * MIB))} /srv/media/photo-005.bin`,
      `write ${f('photo-006.bin', randomBytes('photo-6', 3 * MIB))} /srv/media/photo-006.bin`,
      'rm /var/log/app.log',
      `write ${f('app.log.2', Buffer.concat([logText('log-1', 4 * MIB, 0), logText('log-2', 1 * MIB, 400000)]))} /var/log/app.log`,
    ]);
    const rnd2 = prng('db-g2');
    const dbBlocks = (16 * MIB) / IMAGE.blockSize;
    overwriteInPlace(img2, '/var/lib/app/db.bin', Array.from({ length: 256 }, () => Math.floor(rnd2() * dbBlocks)), 'db-g2');
    fsck(img2);
    changes.push(`g2: typescript 5.3.2 -> 5.3.3 (${up2.summary}); 256 random 4 KiB pages of db.bin overwritten in place; ` +
      'photo-002 deleted, photo-005/006 added; app.log rewritten 1 MiB longer');

    // Generation 3: minor upgrade, more in-place db writes, log rotation (rename), media churn.
    const img3 = nextGen(img2, 3);
    const up3 = upgradeCommands(tsDirs[1], tsDirs[2], '/opt/typescript');
    debugfs(img3, [
      ...up3.cmds,
      'rm /srv/media/photo-003.bin',
      `write ${f('photo-007.bin', randomBytes('photo-7', 3 * MIB))} /srv/media/photo-007.bin`,
      // rename app.log -> app.log.1 (ln + unlink keep the link count right), then a fresh app.log
      'ln /var/log/app.log /var/log/app.log.1',
      'unlink /var/log/app.log',
      `write ${f('app.log.3', logText('log-3', 512 * 1024, 800000))} /var/log/app.log`,
    ]);
    const rnd3 = prng('db-g3');
    const pages3 = Array.from({ length: 256 }, () => Math.floor(rnd3() * dbBlocks));
    for (let b = 1024; b < 1024 + 512; b++) pages3.push(b); // plus a contiguous 2 MiB region
    overwriteInPlace(img3, '/var/lib/app/db.bin', pages3, 'db-g3');
    fsck(img3);
    changes.push(`g3: typescript 5.3.3 -> 5.4.2 (${up3.summary}); 256 random pages + a contiguous 2 MiB region of db.bin ` +
      'overwritten in place; photo-003 deleted, photo-007 added; app.log renamed to app.log.1, new app.log');

    rmrf(stage);
    writeStamp(tmp, IMAGE, { builtAt: new Date().toISOString(), changes });
    rmrf(dir);
    fs.renameSync(tmp, dir);
  } else {
    log(`reusing ${IMAGE.id} (${dir})`);
  }
  const stamp = JSON.parse(fs.readFileSync(path.join(dir, '.recipe.json'), 'utf8'));
  return {
    id: IMAGE.id,
    title: IMAGE.title,
    kind: 'image',
    changes: stamp.changes,
    versions: [1, 2, 3].map((n) => {
      const gdir = path.join(dir, `g${n}`);
      return {
        name: `g${n}`,
        label: `generation ${n}`,
        dir: gdir,
        target: 'disk.img',
        logicalBytes: fs.statSync(path.join(gdir, 'disk.img')).size,
        files: 1,
      };
    }),
  };
}

// ---------------------------------------------------------------------------------------------

// dedup-bench.mjs renames a version directory to benchmarks/work/stage/<dataset> while a tool backs it
// up; if a run was killed there, put it back before looking at the datasets.
const STAGE = path.join(WORK, 'stage');
if (fs.existsSync(STAGE)) {
  for (const n of fs.readdirSync(STAGE)) {
    if (!n.endsWith('.origin')) continue;
    const origin = fs.readFileSync(path.join(STAGE, n), 'utf8').trim();
    const staged = path.join(STAGE, n.slice(0, -'.origin'.length));
    if (fs.existsSync(staged) && !fs.existsSync(origin)) {
      log(`putting ${staged} back to ${origin} (left over from an interrupted run)`);
      fs.renameSync(staged, origin);
    }
    fs.rmSync(path.join(STAGE, n));
  }
}

fs.mkdirSync(DATASETS, { recursive: true });
const manifest = { builtBy: 'benchmarks/datasets.mjs', datasets: [buildSrc(), buildImage()] };
fs.writeFileSync(path.join(DATASETS, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
for (const d of manifest.datasets) {
  const total = d.versions.reduce((s, v) => s + v.logicalBytes, 0);
  log(`${d.id}: ${d.versions.length} versions, ${(total / 1e6).toFixed(1)} MB logical in total`);
}
