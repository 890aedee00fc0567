import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { unmountQuietly } from '../src/fuse/mount-options.js';
import { mountStore, type MountedStore } from './helpers/mounted-store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

// Writes through a real mount while the daemon flushes in the background: other processes read
// and stat the file meanwhile, and a killed daemon keeps what was fsynced and leaves a sound store.

const MIB = 1024 * 1024;

/** Starts a process that copies `src` into `dst` in 1 MiB writes, then fsyncs unless told not to. */
function writer(src: string, dst: string, fsync: boolean): { exited: Promise<number | null> } {
  const script = `
    const fs = require('fs'); const [src, dst, fsync] = process.argv.slice(1);
    const data = fs.readFileSync(src); const fd = fs.openSync(dst, 'w');
    for (let at = 0; at < data.length; at += 1 << 20) fs.writeSync(fd, data, at, Math.min(1 << 20, data.length - at), at);
    if (fsync === 'yes') fs.fsyncSync(fd);
    fs.closeSync(fd);`;
  const child = spawn(process.execPath, ['-e', script, src, dst, fsync ? 'yes' : 'no'], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.resume();
  return { exited: new Promise((r) => child.on('exit', (code) => r(code))) };
}

/** Kills the daemon with SIGKILL, clears its dead mount and mounts the store again. */
async function killAndRemount(m: MountedStore): Promise<void> {
  const pid = m.daemonPid();
  if (!pid) throw new Error('no daemon pid');
  process.kill(pid, 'SIGKILL');
  await unmountQuietly(m.mnt);
}

test.serial('a 64 MiB file read and stat-ed by another process while it is written and flushed; fsync, kill -9, remount keeps it', async (t) => {
  const m = mountStore(t);
  const data = pseudoRandomBytes(64 * MIB, 21);
  const src = path.join(m.base, 'src.bin');
  fs.writeFileSync(src, data);
  const file = path.join(m.live, 'big');
  const w = writer(src, file, true);
  let finished = false;
  const exited = w.exited.then((code) => { finished = true; return code; });
  let reads = 0;
  let lastSize = 0;
  while (!finished) {
    let st: fs.Stats;
    let got: Buffer;
    try {
      st = await fs.promises.stat(file);
      got = await fs.promises.readFile(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // not created yet
      throw e;
    }
    t.true(st.size >= lastSize && st.size <= data.length, `size ${st.size} after ${lastSize}`);
    lastSize = st.size;
    // Sequential writes: whatever a reader sees is a prefix of the data, whole bytes as written.
    if (!got.equals(data.subarray(0, got.length))) { t.fail(`read ${reads} of ${got.length} bytes differs from what was written`); break; }
    reads++;
  }
  t.is(await exited, 0, 'the writer fsynced and closed without error');
  t.true(reads > 0);
  t.log(`${reads} reads while writing`);
  t.true(fs.readFileSync(file).equals(data));
  await killAndRemount(m);
  m.remount();
  t.is(fs.statSync(file).size, data.length);
  t.true(fs.readFileSync(file).equals(data), 'fsynced content survived kill -9');
  t.is(m.cli('verify').code, 0);
});

test.serial('a daemon killed in the middle of a write, without fsync, leaves a store verify accepts', async (t) => {
  const m = mountStore(t);
  const data = pseudoRandomBytes(160 * MIB, 22);
  const src = path.join(m.base, 'src.bin');
  fs.writeFileSync(src, data);
  const file = path.join(m.live, 'partial');
  const w = writer(src, file, false);
  // Kill once flushes have committed part of it: writes wait for the flusher once 32 MiB are
  // buffered besides the (at most 32 MiB) flush running, so at 112 MiB some must have.
  for (let i = 0; i < 600; i++) {
    const size = fs.existsSync(file) ? fs.statSync(file).size : 0;
    if (size >= 112 * MIB) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  await killAndRemount(m);
  await w.exited;
  const verify = m.cli('verify');
  t.is(verify.code, 0, verify.stderr + verify.stdout);
  m.remount();
  // What survived is the content of the last committed flush: a prefix of what was written.
  const got = fs.existsSync(file) ? fs.readFileSync(file) : Buffer.alloc(0);
  t.true(got.length > 0 && got.length < data.length, `${got.length} bytes survived`);
  t.true(got.equals(data.subarray(0, got.length)), `the surviving ${got.length} bytes are what was written`);
  t.log(`${got.length} of ${data.length} bytes survived`);
});
