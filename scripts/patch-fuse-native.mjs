#!/usr/bin/env node
// Patches fuse-native 2.2.6's C source and builds the addon from it (its headers and libfuse come
// with the fuse-shared-library package; node-gyp-build then prefers build/Release over the
// prebuilds). Run by npm as our postinstall; safe to run again: the patches are applied to a
// pristine copy (fuse-native.c.orig, saved the first time), and the addon is rebuilt only when
// the result differs from what is there or nothing is built yet.
//
// 1. utimens: fuse-native passes the access time in both slots (the FUSE_METHOD_VOID(utimens)
//    block: the second FUSE_UINT64_TO_INTS_ARGV uses l->atime), so every `touch -d`, `cp -p`,
//    `rsync -t` and `tar x` would store the wrong modification time in the live tree.
// 2. stat cache (scripts/fuse-native/stat-cache.c): readdir may be signalled with a lifetime in
//    milliseconds after the names and stats; getattr on those entries is then answered on the
//    FUSE thread from a table, without a round trip through JavaScript, for that long. Exposes
//    stat_cache_info(). See src/fuse/fuse-ops.ts for who opts in.
// 3. read window (scripts/fuse-native/read-window.c): JavaScript may offer verified bytes ahead
//    of a reader of an open file (window_put, window_mark, window_drop), copied or lent (shared
//    memory returned by window_reclaim); reads they cover are answered on the FUSE thread, and
//    window_listen's callback hears when a reader passes a mark. Exposes window_info(). See
//    src/fuse/fuse-ops.ts (readWindowOf()).
// 4. polling loop (scripts/fuse-native/poll-loop.c): replaces fuse_loop_mt; the receiving thread
//    keeps reading /dev/fuse without blocking for STRATA_FUSE_POLL_US (default 50) after each
//    request, so that requests answered on the FUSE thread (2 and 3) do not each pay a thread
//    wake-up; a request that goes to JavaScript hands the receiving to another thread first.
// 5. per-path cache timeouts (scripts/fuse-native/reply-timeouts.c): getattr may be signalled
//    with a lifetime in milliseconds and a generation after the stat (and a stat cache answer
//    carries what is left of its listing's lifetime); the polling loop's request channel writes
//    them into that LOOKUP or GETATTR reply (entry_valid, attr_valid, generation), so the kernel
//    keeps snapshot views' entries longer than the mount's timeouts, and drops what it kept below
//    a snapshot folder whose generation changed. Exposes reply_info(); stat_forget(thread) empties
//    a mount's stat cache.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const dir = path.dirname(require.resolve('fuse-native/package.json'));
const src = path.join(dir, 'fuse-native.c');
const orig = `${src}.orig`;
const statCache = fs.readFileSync(path.join(here, 'fuse-native', 'stat-cache.c'), 'utf8');
const readWindow = fs.readFileSync(path.join(here, 'fuse-native', 'read-window.c'), 'utf8');
const replyTimeouts = fs.readFileSync(path.join(here, 'fuse-native', 'reply-timeouts.c'), 'utf8');
const pollLoop = fs.readFileSync(path.join(here, 'fuse-native', 'poll-loop.c'), 'utf8');

const UTIMENS_BUG = 'FUSE_UINT64_TO_INTS_ARGV(l->atime, 5)';
const UTIMENS_FIX = 'FUSE_UINT64_TO_INTS_ARGV(l->mtime, 5) /* patched by strata: was l->atime */';
// getattr, whole: its answer from the stat cache or from JavaScript, each with its lifetime (and
// JavaScript's with a generation).
const GETATTR = `FUSE_METHOD(getattr, 1, 1, (const char *path, struct stat *stat), {
  l->path = path;
  l->stat = stat;
}, {
  napi_create_string_utf8(env, l->path, NAPI_AUTO_LENGTH, &(argv[2]));
}, {
  NAPI_ARGV_BUFFER_CAST(uint32_t*, ints, 2)
  populate_stat(ints, l->stat);
})
`;
const GETATTR_PATCHED = `/* patched by strata: stat cache, and a lifetime signalled after the stat (per-path cache timeouts) */
FUSE_METHOD(getattr, 1, 3, (const char *path, struct stat *stat), {
  l->strata_keep_ms = 0;
  l->strata_generation = -1;
  strata_reply_keep(&l->strata_keep_ms, &l->strata_generation);
  if (strata_stat_get(l->fuse, path, stat, &l->strata_keep_ms)) return 0;
  l->path = path;
  l->stat = stat;
}, {
  napi_create_string_utf8(env, l->path, NAPI_AUTO_LENGTH, &(argv[2]));
}, {
  NAPI_ARGV_BUFFER_CAST(uint32_t*, ints, 2)
  populate_stat(ints, l->stat);
  double strata_keep_ms = 0; /* (no commas outside parentheses: this is a macro argument) */
  double strata_generation = -1;
  if (napi_get_value_double(env, argv[3], &strata_keep_ms) != napi_ok || !(strata_keep_ms > 0)) strata_keep_ms = 0;
  if (napi_get_value_double(env, argv[4], &strata_generation) != napi_ok || !(strata_generation >= 0 && strata_generation <= 4294967295.0)) strata_generation = -1;
  l->strata_keep_ms = strata_keep_ms;
  l->strata_generation = strata_generation;
})
`;
const PATCHES = [
  ['utimens mtime', UTIMENS_BUG, () => UTIMENS_FIX],
  ['stat cache, read window, reply timeouts and polling loop code', '// Methods\n', (m) => `${statCache}\n${readWindow}\n${replyTimeouts}\n${pollLoop}\n${m}`],
  ['a request for JavaScript hands the receiving on first', '  uv_async_send(&(l->async));\\\n  uv_sem_wait(&(l->sem));\\\n',
    (m) => `  strata_loop_will_block(); /* patched by strata: polling loop */\\\n${m}`],
  ['the polling loop serves the mount', '  fuse_loop_mt(ft->fuse);\n', () => '  strata_loop_mt(ft->fuse); /* patched by strata: polling loop */\n'],
  ['a thread\'s locals carry its getattr\'s lifetime', '  int32_t res;\n', (m) => `${m}  double strata_keep_ms; /* patched by strata: per-path cache timeouts */\n  double strata_generation;\n`],
  ['getattr from the stat cache, with a lifetime', GETATTR, () => GETATTR_PATCHED],
  ['read from the read window', 'FUSE_METHOD(read, 6, 2, (const char *path, char *buf, size_t len, off_t offset, struct fuse_file_info *info), {\n',
    (m) => `${m}  { int strata_n = strata_window_read(l->fuse, (uint32_t) info->fh, buf, len, offset); if (strata_n >= 0) return strata_n; } /* patched by strata: read window */\n`],
  ['readdir signal with a lifetime', 'FUSE_METHOD(readdir, 1, 2,', () => 'FUSE_METHOD(readdir, 1, 3, /* patched by strata: stat cache lifetime */'],
  ['readdir fills the stat cache', '  napi_value raw_stats = argv[3];\n', (m) => `${m}  if (names_length == stats_length) { /* patched by strata: stat cache */
    double strata_ttl_ms = 0;
    if (napi_get_value_double(env, argv[4], &strata_ttl_ms) == napi_ok) strata_stat_put_listing(env, l->fuse, l->path, raw_names, raw_stats, names_length, strata_ttl_ms);
  }
`],
  ['a new mount starts with no cached stats', '  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 2);\n', (m) => `${m}  strata_stat_forget(ft); strata_window_forget(ft); /* patched by strata: stat cache, read window */\n`],
  ['unmount forgets cached stats', '  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 1);\n', (m) => `${m}  strata_stat_forget(ft); strata_window_forget(ft); /* patched by strata: stat cache, read window */\n`],
  ['stat cache exports', '  NAPI_EXPORT_FUNCTION(fuse_native_unmount)\n', (m) => `${m}  NAPI_EXPORT_FUNCTION(fuse_native_stat_cache_info) /* patched by strata */
  NAPI_EXPORT_FUNCTION(fuse_native_window_put)
  NAPI_EXPORT_FUNCTION(fuse_native_window_mark)
  NAPI_EXPORT_FUNCTION(fuse_native_window_drop)
  NAPI_EXPORT_FUNCTION(fuse_native_window_info)
  NAPI_EXPORT_FUNCTION(fuse_native_window_listen)
  NAPI_EXPORT_FUNCTION(fuse_native_window_owner)
  NAPI_EXPORT_FUNCTION(fuse_native_window_reclaim)
  NAPI_EXPORT_FUNCTION(fuse_native_reply_info)
  NAPI_EXPORT_FUNCTION(fuse_native_stat_forget)
`],
];

if (!fs.existsSync(orig)) {
  let code = fs.readFileSync(src, 'utf8');
  // Installs patched by an earlier version of this script carry the utimens fix alone.
  if (code.split('patched by strata').length === 2 && code.includes(UTIMENS_FIX)) code = code.replace(UTIMENS_FIX, UTIMENS_BUG);
  if (code.includes('patched by strata')) {
    console.error(`patch-fuse-native: ${src} is patched but ${orig} is missing; reinstall fuse-native (rm -rf ${dir} && npm install)`);
    process.exit(1);
  }
  fs.writeFileSync(orig, code);
}
let code = fs.readFileSync(orig, 'utf8');
for (const [what, find, replace] of PATCHES) {
  const n = code.split(find).length - 1;
  if (n !== 1) {
    console.error(`patch-fuse-native: "${what}": expected one ${JSON.stringify(find)} in fuse-native.c, found ${n}; fuse-native changed?`);
    process.exit(1);
  }
  code = code.replace(find, () => replace(find));
}
const built = fs.existsSync(path.join(dir, 'build/Release/fuse.node'));
if (built && fs.readFileSync(src, 'utf8') === code) process.exit(0);
fs.writeFileSync(src, code);
// npm puts its bundled node-gyp on PATH for lifecycle scripts; fall back to npx outside them.
const gyp = (() => {
  try { execFileSync('node-gyp', ['--version'], { stdio: 'ignore' }); return ['node-gyp', []]; } catch { return ['npx', ['--yes', 'node-gyp']]; }
})();
execFileSync(gyp[0], [...gyp[1], 'rebuild'], { cwd: dir, stdio: 'inherit' });
console.log('patch-fuse-native: fuse-native rebuilt with the utimens fix, the stat cache, the read window, per-path cache timeouts and the polling loop');
