#!/usr/bin/env node
// fuse-native 2.2.6 passes the access time in both slots of utimens (fuse-native.c, the
// FUSE_METHOD_VOID(utimens) block: the second FUSE_UINT64_TO_INTS_ARGV uses l->atime), so every
// `touch -d`, `cp -p`, `rsync -t` and `tar x` would store the wrong modification time in the live
// tree. We correct that one line and build the addon from source (its headers and libfuse come with
// the fuse-shared-library package; node-gyp-build then prefers build/Release over the prebuilds).
// Run by npm as our postinstall; safe to run again; exits 0 without changes once patched.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const dir = path.dirname(require.resolve('fuse-native/package.json'));
const src = path.join(dir, 'fuse-native.c');
const BUG = 'FUSE_UINT64_TO_INTS_ARGV(l->atime, 5)';
const FIX = 'FUSE_UINT64_TO_INTS_ARGV(l->mtime, 5) /* patched by strata: was l->atime */';
const code = fs.readFileSync(src, 'utf8');
const built = fs.existsSync(path.join(dir, 'build/Release/fuse.node'));
if (code.includes(FIX) && built) process.exit(0);
if (!code.includes(FIX)) {
  if (!code.includes(BUG)) {
    console.error('patch-fuse-native: the utimens line was not found; fuse-native changed? Check the mtime test.');
    process.exit(1);
  }
  fs.writeFileSync(src, code.replace(BUG, FIX));
}
// npm puts its bundled node-gyp on PATH for lifecycle scripts; fall back to npx outside them.
const gyp = (() => {
  try { execFileSync('node-gyp', ['--version'], { stdio: 'ignore' }); return ['node-gyp', []]; } catch { return ['npx', ['--yes', 'node-gyp']]; }
})();
execFileSync(gyp[0], [...gyp[1], 'rebuild'], { cwd: dir, stdio: 'inherit' });
console.log('patch-fuse-native: fuse-native rebuilt with the utimens fix');
