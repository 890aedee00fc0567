// libfuse mount options that fuse-native has no field for, and the unmount that goes with a mount.
//
// How the options reach libfuse. fuse-native builds exactly one argument for libfuse in its method
// `Fuse.prototype._fuseOptions()`: it maps its camel-case fields (allowOther, debug, fsname...) to
// one string '-oa,b,c' (or '' when none), which `_open()` reads once, at mount time, and hands to
// the C binding. The binding passes it unchanged as argv[1] to libfuse2's fuse_mount() (kernel
// mount options) and then fuse_new() (library options such as big_writes and max_write), each
// taking the options it knows. There is no field and no pass-through for big_writes or max_write.
//
// applyMountOptions() therefore wraps `_fuseOptions` on one Fuse instance: an own property that
// calls the prototype's method and appends our options to its result. Why this is the clean way:
// - no fork and no patch of node_modules, so `npm ci` stays the whole install;
// - fuse-native keeps building every option it knows (debug, fsname, allowOther...), we only add
//   to its result, and only on the instances we choose;
// - the hook is one small method, read once per mount, and we check it exists, so a fuse-native
//   release that renames it fails loudly here instead of silently mounting with 4 KiB writes
//   (test/fuse-options.test.ts also asserts the 128 KiB writes end to end).
// The rejected alternatives: smuggling ',big_writes' inside a string field such as `modules` or
// `fsname` (works only because fuse-native does not escape them, and breaks if it starts to);
// patching index.js at install time (patch-package is on npm, but a patch is one more moving part
// and is lost when the package is reinstalled without it).
//
// The string is copied into a 1024-byte buffer by the binding and truncated silently beyond that,
// and libfuse splits it on commas, so both are checked here. Option names are not: only libfuse
// knows them, and it finds out late. fuse_mount() passes names it does not know on to fuse_new(),
// which rejects them ("fuse: unknown option") after the kernel mount already exists, and
// fuse-native then reports "fuse failed" without unmounting: whoever mounts must unmount on a
// mount error (test/fixtures/memfs-server.ts does).

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { invalid } from '../errors.js';

/**
 * Extra libfuse2 `-o` options Strata mounts with, and why:
 * - big_writes: lets the kernel send writes larger than one page (without it every write request
 *   is 4 KiB, roughly an eighth of the throughput);
 * - max_write=131072: the largest write the kernel will send to a libfuse2 daemon (32 pages); stated
 *   rather than left to libfuse's buffer-size arithmetic, so the chunker can rely on it;
 * - default_permissions: the kernel checks the mode, uid and gid the filesystem reports, as on a
 *   local disk. A backup filesystem reports the owners and modes of what it stores; without this
 *   option the kernel grants every access to whoever may reach the mount, which becomes a hole the
 *   day someone mounts with allow_other. (allow_other itself is deliberately not a default.)
 */
export const FUSE_MOUNT_DEFAULTS: readonly string[] = Object.freeze(['big_writes', 'max_write=131072', 'default_permissions']);

/** The part of a fuse-native instance this module relies on. */
export interface FuseOptionsHost {
  _fuseOptions(): string;
}

const OPTION = /^[A-Za-z0-9_]+(=[^,\\\s]+)?$/;
/** Bytes of the binding's buffer, its terminating NUL included. */
const MAX_OPTION_STRING = 1024;

/**
 * Makes `fuse` mount with `extra` added to the options fuse-native builds itself. Call before
 * `fuse.mount()`. An option that names one fuse-native already set replaces it (libfuse would let
 * the later one win anyway, but one copy keeps the mount table readable). Returns `fuse`.
 * Throws EINVAL for a malformed option or an option string too long for the binding.
 */
export function applyMountOptions<T extends FuseOptionsHost>(fuse: T, extra: readonly string[] = FUSE_MOUNT_DEFAULTS): T {
  const base = fuse._fuseOptions;
  if (typeof base !== 'function') {
    throw invalid('fuse-native no longer has _fuseOptions(); src/fuse/mount-options.ts needs updating for this version');
  }
  for (const option of extra) {
    if (!OPTION.test(option)) throw invalid(`malformed libfuse option ${JSON.stringify(option)}`);
  }
  const wrapped = function (this: T): string {
    return mergeOptionString(base.call(this), extra);
  };
  // The final string is built now as well, so a too-long set fails here rather than inside mount().
  mergeOptionString(base.call(fuse), extra);
  Object.defineProperty(fuse, '_fuseOptions', { value: wrapped, configurable: true, writable: true });
  return fuse;
}

/** The option argument `fuse` will hand to libfuse ('-oa,b' or ''), for logs and tests. */
export function mountOptionString(fuse: FuseOptionsHost): string {
  return fuse._fuseOptions();
}

/** Appends `extra` to a '-o...' string as fuse-native builds it. */
function mergeOptionString(built: string, extra: readonly string[]): string {
  const own = built.startsWith('-o') ? built.slice(2).split(',').filter(Boolean) : [];
  const keyOf = (option: string) => option.split('=', 1)[0];
  const overridden = new Set(extra.map(keyOf));
  const options = [...own.filter((o) => !overridden.has(keyOf(o))), ...new Set(extra)];
  const result = options.length ? '-o' + options.join(',') : '';
  if (Buffer.byteLength(result) >= MAX_OPTION_STRING) {
    throw invalid(`libfuse option string is ${Buffer.byteLength(result)} bytes; fuse-native truncates it at ${MAX_OPTION_STRING - 1}`);
  }
  return result;
}

/** True when `mountpoint` (resolved) is a mount point in /proc/mounts, live or dead. */
export function isMounted(mountpoint: string): boolean {
  const target = path.resolve(mountpoint);
  let table: string;
  try {
    table = fs.readFileSync('/proc/mounts', 'utf8');
  } catch {
    return false;
  }
  for (const line of table.split('\n')) {
    const field = line.split(' ')[1];
    if (field !== undefined && unescapeMountField(field) === target) return true;
  }
  return false;
}

/** /proc/mounts writes space, tab, newline and backslash as octal escapes. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/**
 * Unmounts `mountpoint` if it is mounted: `fusermount -u` first (a clean unmount, which also
 * clears a dead mount whose server has gone), then `umount -l` (lazy: detaches it even while files
 * on it are open). "Not mounted" is not an error. Rejects only if the mount is still there at the
 * end, with what both tools said.
 */
export async function unmountQuietly(mountpoint: string): Promise<void> {
  const target = path.resolve(mountpoint);
  if (!isMounted(target)) return;
  const said: string[] = [];
  for (const [cmd, args] of [['fusermount', ['-u', target]], ['umount', ['-l', target]]] as const) {
    const error = await run(cmd, args);
    if (!isMounted(target)) return;
    if (error) said.push(`${cmd}: ${error}`);
  }
  throw new Error(`could not unmount ${target}: ${said.join('; ') || 'still mounted'}`);
}

/** Runs a command with a deadline; resolves to its error text, or '' on success. */
function run(cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      resolve(err ? (String(stderr).trim() || err.message) : '');
    });
  });
}

/**
 * Read-ahead of a FUSE mount, in KiB: how far past a sequential read the kernel asks the daemon
 * for more (as up to 128 KiB requests, several at once). The kernel starts every FUSE mount at
 * 128 KiB and the INIT reply may only lower it, so a reader has one or two requests in flight and
 * waits for each round trip. Raised after mounting through the mount's backing device info in
 * sysfs, which only root may write.
 */
export const FUSE_READ_AHEAD_KB = 1024;

/**
 * setReadAhead() once the mount's INIT has been answered: the kernel lowers the read-ahead to the
 * INIT reply's max_readahead when it processes that reply, and fuse-native reports the mount
 * (its init operation) just before the reply is sent, so a value set at once can be undone.
 * A stat(1) of the mountpoint, in a child process (the serving process must not wait on its own
 * mount), returns only after INIT completed.
 */
export async function raiseReadAhead(mountpoint: string, kb: number = FUSE_READ_AHEAD_KB): Promise<number | Error> {
  await run('stat', ['-c', '%i', mountpoint]); // its outcome does not matter, only that it returned
  return setReadAhead(mountpoint, kb);
}

/**
 * Sets the read-ahead of the FUSE mount at `mountpoint` (see FUSE_READ_AHEAD_KB). Returns the
 * value now in force, or an Error saying why it could not be set (the mount works as before).
 */
export function setReadAhead(mountpoint: string, kb: number = FUSE_READ_AHEAD_KB): number | Error {
  try {
    // The device from the mount table, never from stat(2) on the mountpoint: called by the process
    // that serves the mount, whose event loop would then be blocked while the kernel asks it.
    const target = path.resolve(mountpoint);
    let device: string | undefined;
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f.length > 4 && unescapeMountField(f[4]) === target) device = f[2]; // the last one mounted there wins
    }
    if (!device || !/^\d+:\d+$/.test(device)) return new Error(`${target} is not in /proc/self/mountinfo`);
    const file = `/sys/class/bdi/${device}/read_ahead_kb`;
    fs.writeFileSync(file, `${kb}\n`);
    return Number(fs.readFileSync(file, 'utf8').trim());
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}
