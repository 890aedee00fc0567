// A host directory tree with every kind of node and metadata an importer must keep; shared by
// the host import/restore tests and the end-to-end CLI tests.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as xattr from 'fs-xattr';
import { utimeArg } from '../../src/host/restore-tree.js';
import { pseudoRandomBytes } from './tmp.js';

export const isRoot = process.geteuid?.() === 0;
export const MiB = 1024 * 1024;
export const NON_UTF8 = Buffer.from([0x66, 0xff, 0xfe]);
export const S = 1_000_000_000n;

/** Joins raw path pieces with '/'. */
export const P = (...parts: Array<string | Buffer>) =>
  Buffer.concat(parts.flatMap((p, i) => (i === 0 ? [Buffer.from(p)] : [Buffer.from('/'), Buffer.from(p)])));

export const setTimes = (p: Buffer, atimeNs: bigint, mtimeNs: bigint) => fs.lutimesSync(p, utimeArg(atimeNs), utimeArg(mtimeNs));

export function canMknod(dir: string): boolean {
  if (!isRoot) return false;
  try {
    execFileSync('mknod', [path.join(dir, '.probe'), 'c', '1', '3'], { stdio: 'ignore' });
    fs.rmSync(path.join(dir, '.probe'));
    return true;
  } catch {
    return false;
  }
}

export interface HostTreeOptions {
  /** Also a character device (needs root and a filesystem that allows mknod). */
  withDevice?: boolean;
  /**
   * Only what a FUSE mount can hold, for copying into a live tree: no non-UTF-8 names or link
   * targets (unreachable through fuse-native), no fifo, times after 1970 to the millisecond, a
   * smaller sparse file; and a few more files (larger random, compressible text, a UTF-8 name, a
   * link to a directory) for replication to move.
   */
  mountable?: boolean;
}

/** Builds a tree with every kind of node and metadata the importer must keep. */
export function buildHostTree(root: string, opts: HostTreeOptions = {}): void {
  const mountable = opts.mountable ?? false;
  const r = Buffer.from(root);
  fs.mkdirSync(root, { mode: 0o755 });
  fs.mkdirSync(P(r, 'a/b/c'), { recursive: true });
  fs.writeFileSync(P(r, 'a/b/c/deep.txt'), 'deep content\n');
  fs.writeFileSync(P(r, 'a/random.bin'), pseudoRandomBytes(300 * 1024, 7));
  fs.mkdirSync(P(r, 'empty-dir'));
  fs.writeFileSync(P(r, 'with space.txt'), 'spaces in the name\n');
  fs.writeFileSync(P(r, 'new\nline'), 'newline in the name\n');
  fs.symlinkSync('with space.txt', P(r, 'link'));
  fs.symlinkSync('nowhere/at/all', P(r, 'dangling'));
  if (mountable) {
    fs.writeFileSync(P(r, 'a/big-random.bin'), pseudoRandomBytes(3 * MiB + 12345, 11));
    fs.writeFileSync(P(r, 'a/text.txt'), Array.from({ length: 20000 }, (_, i) => `line ${i} of a compressible text file\n`).join(''));
    fs.writeFileSync(P(r, 'ünïcødé-名前.txt'), 'a UTF-8 name\n');
    fs.symlinkSync('../a/b/c', P(r, 'empty-dir-link'));
  } else {
    fs.writeFileSync(P(r, NON_UTF8), 'name is not UTF-8\n');
    fs.mkdirSync(P(r, Buffer.from([0xc3, 0x28])));
    fs.writeFileSync(P(r, Buffer.from([0xc3, 0x28]), Buffer.from([0x80, 0x81])), 'inside a non-UTF-8 directory\n');
    fs.symlinkSync(Buffer.from([0x2e, 0x2f, 0xff]), P(r, 'odd-target'));
    execFileSync('mkfifo', [path.join(root, 'fifo')]);
  }
  fs.writeFileSync(P(r, 'hard-a'), 'two names, one inode\n');
  fs.linkSync(P(r, 'hard-a'), P(r, 'a/hard-b'));
  const sparseSize = mountable ? 8 * MiB : 64 * MiB;
  const sfd = fs.openSync(P(r, 'sparse.img'), 'w');
  fs.ftruncateSync(sfd, sparseSize);
  fs.writeSync(sfd, Buffer.from('a few bytes in the middle'), 0, 25, sparseSize / 2 + 123);
  fs.closeSync(sfd);
  fs.writeFileSync(P(r, 'empty.txt'), '');
  fs.writeFileSync(P(r, 'xattr-file'), 'has xattrs\n');
  xattr.setAttributeSync(path.join(root, 'xattr-file'), 'user.comment', 'hello');
  xattr.setAttributeSync(path.join(root, 'xattr-file'), 'user.binary', Buffer.from([0, 1, 2, 0xff]));
  fs.mkdirSync(P(r, 'xattr-dir'));
  xattr.setAttributeSync(path.join(root, 'xattr-dir'), 'user.dirattr', 'on a directory');
  fs.writeFileSync(P(r, 'setuid'), '#!/bin/sh\n');
  fs.chmodSync(P(r, 'setuid'), 0o4755);
  fs.mkdirSync(P(r, 'private'));
  fs.writeFileSync(P(r, 'private/secret'), 'secret\n');
  fs.chmodSync(P(r, 'private/secret'), 0o600);
  fs.chmodSync(P(r, 'private'), 0o700);
  fs.writeFileSync(P(r, 'owned'), 'owned by 1234\n');
  if (isRoot) fs.chownSync(P(r, 'owned'), 1234, 1234);
  if (opts.withDevice) execFileSync('mknod', [path.join(root, 'null-dev'), 'c', '1', '3']);

  // Varied times ('with space.txt' keeps its kernel time); for the importer also nanoseconds and
  // one before 1970, which the mount (milliseconds, unsigned) cannot carry.
  setTimes(P(r, 'a/b/c/deep.txt'), 1_000_000_000n * S + 111n, 1_000_000_000n * S + 123_456_789n);
  setTimes(P(r, 'owned'), 1_600_000_000n * S, mountable ? 1_200_000_000n * S + 250_000_000n : -86_400n * 365n * S - 250_000_000n);
  setTimes(P(r, 'sparse.img'), 2_000_000_000n * S, 1_700_000_000n * S + (mountable ? 999_999_000n : 999_999_999n));
  setTimes(P(r, 'link'), 1_500_000_000n * S, 1_500_000_001n * S + 5000n);
  if (!mountable) setTimes(P(r, 'fifo'), 1_400_000_000n * S, 1_400_000_000n * S + 7_000n);
  // Directories last and deepest first: creating their children moved their times.
  let t = 1_650_000_000n;
  for (const d of ['a/b/c', 'a/b', 'a', 'empty-dir', 'private', 'xattr-dir', '.']) {
    setTimes(P(r, d), (t + 1n) * S, t * S + 42_000n);
    t += 1000n;
  }
}

