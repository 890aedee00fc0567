// Data for the mount benchmark (benchmarks/mount-bench.mjs), built once into benchmarks/work/mount/data/
// and reused while its recipe (below) and size stay the same. Delete that directory to rebuild.
//
//   text.bin   SIZE MiB of text-like data that does not deduplicate: the node_modules/**/*.js corpus
//              copied over and over, with a unique comment line every ~2 KB (so no 4-64 KiB chunk
//              occurs twice) -- compressible like source code (zstd-1 keeps about a quarter).
//   image.bin  SIZE MiB laid out like a disk image, in 4 MiB regions: about 45 % text as above (with
//              its own markers, so nothing is shared with text.bin), 35 % pseudo-random bytes
//              (incompressible, AES-256-CTR keystream) and 20 % zeros (free space).
//   tree100k/tree/  DIRS directories of FILES small text files each (200-2000 bytes, every file
//              unique), e.g. 100 x 1000 = 100k files, about 110 MB. (The extra level lets
//              `strata import tree100k` give a snapshot whose root holds `tree/`.)
//
// Everything is deterministic given the same node_modules; `recipe` in each .recipe.json marker
// names what it was built from.

import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const MIB = 1024 * 1024;
const RECIPE = 1; // bump to rebuild everything
const MARK_EVERY = 2048;

function say(msg) {
  process.stderr.write(`[mount-data] ${msg}\n`);
}

/** node_modules/**\/*.js, concatenated in a fixed order. */
let corpusCache = null;
function corpus(root) {
  if (corpusCache) return corpusCache;
  const base = path.join(root, 'node_modules');
  const files = fs.readdirSync(base, { recursive: true })
    .filter((f) => f.endsWith('.js'))
    .map((f) => path.join(base, f))
    .filter((f) => { try { return fs.statSync(f).isFile(); } catch { return false; } })
    .sort();
  corpusCache = Buffer.concat(files.map((f) => fs.readFileSync(f)));
  if (corpusCache.length < 1 * MIB) throw new Error(`node_modules holds only ${corpusCache.length} bytes of .js; run npm ci first`);
  return corpusCache;
}

/**
 * A generator of unique text: the corpus, cut into 2 KB pieces, each followed by a comment naming
 * `tag`, the copy number and the offset, so every piece (and so every chunk) occurs once.
 */
function textStream(root, tag) {
  const c = corpus(root);
  let copy = 0;
  let at = 0;
  return {
    /** Fills buf completely and returns it. */
    fill(buf) {
      let o = 0;
      while (o < buf.length) {
        const piece = c.subarray(at, Math.min(c.length, at + MARK_EVERY));
        o += piece.copy(buf, o);
        if (o < buf.length) o += buf.write(`\n// ${tag} ${copy}.${at}\n`, o);
        at += MARK_EVERY;
        if (at >= c.length) { at = 0; copy++; }
      }
      return buf;
    },
  };
}

function keystream(seed) {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return { fill: (buf) => { cipher.update(buf.fill(0)).copy(buf); return buf; } };
}

function marker(file) {
  return `${file}.recipe.json`;
}

function upToDate(file, recipe) {
  try {
    return fs.readFileSync(marker(file), 'utf8') === JSON.stringify(recipe) && fs.existsSync(file);
  } catch {
    return false;
  }
}

function writeMarker(file, recipe) {
  fs.writeFileSync(marker(file), JSON.stringify(recipe));
}

/** Writes `mib` MiB produced by `next(buf, regionIndex)` in 4 MiB regions. */
function writeRegions(file, mib, next) {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    const buf = Buffer.allocUnsafe(4 * MIB);
    for (let r = 0; r * 4 < mib; r++) {
      const n = Math.min(4, mib - r * 4) * MIB;
      const piece = next(buf.subarray(0, n), r);
      fs.writeSync(fd, piece);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** The unique text file (dd source of the write test). Returns its path. */
export function ensureText(root, dir, mib) {
  const file = path.join(dir, 'text.bin');
  const recipe = { recipe: RECIPE, kind: 'text', mib };
  if (upToDate(file, recipe)) return file;
  fs.mkdirSync(dir, { recursive: true });
  say(`building ${path.relative(root, file)} (${mib} MiB of unique text)`);
  const text = textStream(root, 'text.bin');
  writeRegions(file, mib, (buf) => text.fill(buf));
  writeMarker(file, recipe);
  return file;
}

/** The image-like file (read test). Returns its path. */
export function ensureImage(root, dir, mib) {
  const file = path.join(dir, 'image.bin');
  const recipe = { recipe: RECIPE, kind: 'image', mib, regions: 'text 45 %, random 35 %, zeros 20 % per 4 MiB region (cyclic pattern of 20)' };
  if (upToDate(file, recipe)) return file;
  fs.mkdirSync(dir, { recursive: true });
  say(`building ${path.relative(root, file)} (${mib} MiB image-like: text, random, zeros)`);
  const text = textStream(root, 'image.bin');
  const rnd = keystream('strata mount bench image');
  // A fixed cycle of 20 regions: 9 text, 7 random, 4 zero, interleaved.
  const cycle = 'TRTZTRTRZTTRTZRTRTZR';
  writeRegions(file, mib, (buf, r) => {
    const kind = cycle[r % cycle.length];
    if (kind === 'T') return text.fill(buf);
    if (kind === 'R') return rnd.fill(buf);
    return buf.fill(0);
  });
  writeMarker(file, recipe);
  return file;
}

/**
 * DIRS x FILES small unique text files under dir/tree100k/tree.
 * Returns { dir: .../tree100k/tree, parent: .../tree100k, files, dirs, bytes }.
 */
export function ensureTree(root, dir, dirs, perDir) {
  const parent = path.join(dir, 'tree100k');
  const top = path.join(parent, 'tree');
  const recipe = { recipe: RECIPE, kind: 'tree', dirs, perDir };
  // markers beside tree100k/, so that it holds nothing but tree/
  const info = `${parent}.info.json`;
  if (upToDate(parent, recipe) && fs.existsSync(info) && fs.existsSync(top)) {
    return { ...JSON.parse(fs.readFileSync(info, 'utf8')), dir: top, parent };
  }
  fs.rmSync(parent, { recursive: true, force: true });
  fs.mkdirSync(top, { recursive: true });
  say(`building ${path.relative(root, top)} (${dirs} directories x ${perDir} small files)`);
  const c = corpus(root);
  let at = 0;
  let bytes = 0;
  let seed = 12345;
  const rand = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 4294967296; };
  for (let d = 0; d < dirs; d++) {
    const sub = path.join(top, `d${String(d).padStart(3, '0')}`);
    fs.mkdirSync(sub);
    for (let f = 0; f < perDir; f++) {
      const len = 200 + Math.floor(rand() * 1800);
      if (at + len > c.length) at = 0;
      const head = `// tree d${d}/f${f}\n`;
      const body = Buffer.concat([Buffer.from(head), c.subarray(at, at + len - head.length)]);
      at += len;
      fs.writeFileSync(path.join(sub, `f${String(f).padStart(4, '0')}.js`), body);
      bytes += body.length;
    }
  }
  const out = { dir: top, parent, files: dirs * perDir, dirs, bytes };
  fs.writeFileSync(info, JSON.stringify(out));
  writeMarker(parent, recipe);
  return out;
}
