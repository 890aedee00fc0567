import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { FUSE_READ_AHEAD_KB, isMounted, unmountQuietly } from '../src/fuse/mount-options.js';
import { mountStore, sh } from './helpers/mounted-store.js';
import { pseudoRandomBytes } from './helpers/tmp.js';

// Snapshots, branches, persistence, crash safety, LUN images and concurrency through real mounts.

test.serial('a snapshot never changes when the live tree does; it appears in the pools and at/', (t) => {
  const m = mountStore(t);
  fs.mkdirSync(path.join(m.live, 'd'));
  fs.writeFileSync(path.join(m.live, 'd/file'), 'version one');
  const snap = JSON.parse(m.cli('snapshot', '--name', 'one', '--json').stdout);
  t.is(snap.name, 'one');
  const view = path.join(m.mnt, 'pools/capacity/one');
  t.is(fs.readFileSync(path.join(view, 'd/file'), 'utf8'), 'version one');
  fs.writeFileSync(path.join(m.live, 'd/file'), 'version two, longer');
  fs.writeFileSync(path.join(m.live, 'd/new'), 'new');
  fs.rmSync(path.join(m.live, 'd/file'));
  t.is(fs.readFileSync(path.join(view, 'd/file'), 'utf8'), 'version one');
  t.deepEqual(fs.readdirSync(path.join(view, 'd')), ['file']);
  const at = fs.readdirSync(path.join(m.mnt, 'at'));
  t.is(at.length, 1);
  t.is(fs.readFileSync(path.join(m.mnt, 'at', at[0], 'd/file'), 'utf8'), 'version one');
  const later = new Date(Date.now() + 60_000).toISOString();
  t.is(fs.readFileSync(path.join(m.mnt, 'at', later, 'd/file'), 'utf8'), 'version one');
  const stats = JSON.parse(fs.readFileSync(path.join(m.mnt, 'stats.json'), 'utf8'));
  t.is(stats.snapshots, 1);
  t.true(stats.dedupRatio > 0);
  m.cli('snapshot', '--name', 'two');
  t.is(fs.readlinkSync(path.join(m.mnt, 'tree/two/parent')), '../one');
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'tree/one/children')), ['two']);
  t.is(fs.readFileSync(path.join(m.mnt, 'tree/two/data/d/new'), 'utf8'), 'new');
});

test.serial('after a listing of a view, stat is answered by the binding with the same attributes; live entries never are', (t) => {
  const m = mountStore(t);
  fs.mkdirSync(path.join(m.live, 'd'));
  const names = ['a', 'b', 'c', 'link', 'sub'];
  ['a', 'b', 'c'].forEach((n, i) => fs.writeFileSync(path.join(m.live, 'd', n), 'x'.repeat(1000 * (i + 1))));
  fs.symlinkSync('a', path.join(m.live, 'd/link'));
  fs.mkdirSync(path.join(m.live, 'd/sub'));
  fs.chmodSync(path.join(m.live, 'd/b'), 0o600);
  m.cli('snapshot', '--name', 's');
  const view = path.join(m.mnt, 'pools/capacity/s/d');
  const attrs = (p: string) => {
    const s = fs.lstatSync(p);
    return { ino: s.ino, mode: s.mode, size: s.size, nlink: s.nlink, uid: s.uid, gid: s.gid, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs, blocks: s.blocks };
  };
  // The same snapshot through at/, never listed: every stat is a getattr answered by the daemon's
  // JavaScript (the kernel keeps view entries for long, so a name looked up once is not asked again).
  const before = names.map((n) => attrs(path.join(m.mnt, 'at', new Date(Date.now() + 60_000).toISOString(), 'd', n)));
  // A listing fills the binding's cache and the kernel's lookups of those names are answered from it.
  t.deepEqual(fs.readdirSync(view).sort(), [...names].sort());
  t.deepEqual(names.map((n) => attrs(path.join(view, n))), before);
  // The live tree's listings are never kept: a change shows at once.
  sh('sleep 1.2');
  fs.readdirSync(path.join(m.live, 'd'));
  fs.appendFileSync(path.join(m.live, 'd/a'), 'more');
  fs.chmodSync(path.join(m.live, 'd/c'), 0o640);
  t.is(fs.statSync(path.join(m.live, 'd/a')).size, 1004); // a write makes the kernel ask for a's attributes again
  t.is(fs.statSync(path.join(m.live, 'd/c')).mode & 0o777, 0o640);
  t.is(fs.statSync(path.join(view, 'a')).size, 1000);
  m.unmount();
  const log = fs.readFileSync(path.join(m.store, 'daemon.log'), 'utf8');
  const hits = Number(/stat cache: (\d+) getattr answered/.exec(log)?.[1] ?? -1);
  t.true(hits >= names.length, `the binding answered ${hits} getattr from listings:\n${log}`);
});

/**
 * A shell working in `cwd` (inside the mount): its relative lookups start there, not at the
 * mount's root. (bash stats "." before each command it runs.)
 */
function shellIn(cwd: string) {
  const child = spawn('bash', ['--norc', '--noprofile'], { cwd, stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  return {
    /** Runs `cmd` and resolves with what it printed and its exit status (-1: still running after `ms`). */
    run(cmd: string, ms = 10_000): Promise<{ out: string; code: number }> {
      const from = out.length;
      const deadline = Date.now() + ms;
      child.stdin.write(`${cmd}; echo "<rc=$?>"\n`);
      return new Promise((resolve) => {
        const poll = setInterval(() => {
          const m = /<rc=(\d+)>\n/.exec(out.slice(from));
          if (!m && Date.now() < deadline) return;
          clearInterval(poll);
          resolve(m ? { out: out.slice(from, from + m.index), code: Number(m[1]) } : { out: out.slice(from), code: -1 });
        }, 20);
      });
    },
    close: () => { child.stdin.end(); child.kill('SIGKILL'); },
  };
}

test.serial('the kernel keeps view entries and attributes for long (a stopped daemon is not asked), live ones for a second; a folder showing another snapshot is looked up anew', async (t) => {
  const m = mountStore(t);
  fs.mkdirSync(path.join(m.live, 'd/listed'), { recursive: true });
  fs.mkdirSync(path.join(m.live, 'd/unlisted'));
  fs.writeFileSync(path.join(m.live, 'd/listed/a'), 'aaaa');
  fs.writeFileSync(path.join(m.live, 'd/unlisted/b'), 'bb');
  fs.writeFileSync(path.join(m.live, 'c'), 'c');
  m.cli('snapshot', '--name', 's');
  const view = path.join(m.mnt, 'pools/capacity/s');
  const inView = shellIn(path.join(view, 'd'));
  t.teardown(() => inView.close());
  // listed/a is looked up after a listing (the binding's stat cache answers), unlisted/b without
  // one (JavaScript answers); both with the views' lifetime. c, in the live tree, with the mount's.
  t.is((await inView.run('ls listed >/dev/null && stat -c %s listed/a unlisted/b')).out, '4\n2\n');
  t.is(fs.statSync(path.join(m.live, 'c')).size, 1);
  sh('sleep 1.5');
  const pid = m.daemonPid()!;
  process.kill(pid, 'SIGSTOP');
  let inView2: { out: string; code: number };
  let inLive2: ReturnType<typeof spawnSync>;
  try {
    inView2 = await inView.run('timeout --foreground -s KILL 5 stat -c %s listed/a unlisted/b');
    inLive2 = spawnSync('stat', ['-c', '%s', path.join(m.live, 'c')], { timeout: 2000, killSignal: 'SIGKILL' });
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  t.deepEqual(inView2, { out: '4\n2\n', code: 0 }, 'answered by the kernel while the daemon is stopped');
  t.is(inLive2.signal, 'SIGKILL', 'the live entry had expired: its lookup waited for the stopped daemon until killed');

  // at/ a time to come shows the latest snapshot; once another is taken, what the kernel kept
  // below that folder is dropped (its generation changed) and read anew.
  const later = path.join(m.mnt, 'at', new Date(Date.now() + 3_600_000).toISOString());
  t.deepEqual(fs.readdirSync(path.join(later, 'd/listed')), ['a']);
  t.is(fs.statSync(path.join(later, 'd/listed/a')).size, 4);
  t.is(fs.statSync(path.join(later, 'd/unlisted/b')).size, 2);
  fs.writeFileSync(path.join(m.live, 'd/listed/a'), 'a much longer content');
  fs.writeFileSync(path.join(m.live, 'd/unlisted/b'), 'b, longer too');
  m.cli('snapshot', '--name', 's2');
  sh('sleep 1.2'); // the folder's own lifetime is the mount's
  t.is(fs.statSync(path.join(later, 'd/listed/a')).size, 21);
  t.is(fs.readFileSync(path.join(later, 'd/listed/a'), 'utf8'), 'a much longer content');
  t.is(fs.statSync(path.join(later, 'd/unlisted/b')).size, 13);
  t.is(fs.readFileSync(path.join(later, 'd/unlisted/b'), 'utf8'), 'b, longer too');
  t.is(fs.statSync(path.join(view, 'd/listed/a')).size, 4, 'the first snapshot is unchanged');
  m.unmount();
  const log = fs.readFileSync(path.join(m.store, 'daemon.log'), 'utf8');
  const own = Number(/cache timeouts: (\d+) lookup and getattr replies/.exec(log)?.[1] ?? -1);
  t.true(own >= 4, `replies given views' lifetimes: ${own}\n${log}`);
});

test.serial('the daemon raises the mount\'s read-ahead to FUSE_READ_AHEAD_KB', (t) => {
  const m = mountStore(t);
  // The mount's device as the kernel numbers it, then its backing device info in sysfs.
  const device = sh(`mountpoint -d '${m.mnt}'`).trim();
  t.regex(device, /^\d+:\d+$/);
  t.is(Number(fs.readFileSync(`/sys/class/bdi/${device}/read_ahead_kb`, 'utf8').trim()), FUSE_READ_AHEAD_KB);
  t.notRegex(fs.readFileSync(path.join(m.store, 'daemon.log'), 'utf8'), /read-ahead left at/);
});

test.serial('the polling loop serves the mount (a non-blocking /dev/fuse), hands requests for JavaScript to other threads, and STRATA_FUSE_POLL_US=0 restores fuse_loop_mt', (t) => {
  const m = mountStore(t);
  const files = Array.from({ length: 48 }, (_, i) => pseudoRandomBytes(200_000 + i * 1000, 100 + i));
  fs.mkdirSync(path.join(m.live, 'many'));
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(m.live, 'many', `f${i}`), `file ${i}`);
  files.forEach((f, i) => fs.writeFileSync(path.join(m.live, `big${i}`), f));
  t.is(m.cli('snapshot', '--name', 's').code, 0);
  // The device's file status flags in the daemon (fdinfo's flags are octal; O_NONBLOCK is 04000).
  const nonBlocking = () => {
    const pid = fs.readFileSync(path.join(m.store, 'daemon.pid'), 'utf8').trim();
    const fd = fs.readdirSync(`/proc/${pid}/fd`).find((n) => { try { return fs.readlinkSync(`/proc/${pid}/fd/${n}`) === '/dev/fuse'; } catch { return false; } });
    t.truthy(fd, 'the daemon holds /dev/fuse');
    const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))?.[1];
    return (parseInt(flags ?? '0', 8) & 0o4000) !== 0;
  };
  const exercise = () => {
    // 48 readers at once of live files (each read goes to JavaScript, so each blocks a FUSE
    // thread), beside a stat of every file of a view (answered on the FUSE thread).
    const out = path.join(m.base, 'out');
    fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(out);
    sh(`for i in $(seq 0 47); do cat '${m.live}/big'$i > '${out}/'$i & done; find '${m.mnt}/pools/capacity/s/many' -type f -exec stat -c %s {} + > '${out}/stat'; wait`, { timeout: 120_000 });
    files.forEach((f, i) => t.true(fs.readFileSync(path.join(out, String(i))).equals(f), `big${i}`));
    t.is(fs.readFileSync(path.join(out, 'stat'), 'utf8').trim().split('\n').length, 200);
  };
  t.true(nonBlocking(), 'polled by default');
  exercise();
  m.unmount();
  process.env.STRATA_FUSE_POLL_US = '0';
  try {
    m.remount();
  } finally {
    delete process.env.STRATA_FUSE_POLL_US;
  }
  t.false(nonBlocking(), 'fuse_loop_mt reads blocking');
  exercise();
});

test.serial('branch restarts the live tree from an older snapshot; the next snapshot is its child', (t) => {
  const m = mountStore(t);
  fs.writeFileSync(path.join(m.live, 'f'), 'one');
  m.cli('snapshot', '--name', 's1');
  fs.writeFileSync(path.join(m.live, 'f'), 'two');
  m.cli('snapshot', '--name', 's2');
  t.is(m.cli('branch', 's1').code, 0);
  t.is(fs.readFileSync(path.join(m.live, 'f'), 'utf8'), 'one');
  fs.writeFileSync(path.join(m.live, 'g'), 'branch');
  const s3 = JSON.parse(m.cli('snapshot', '--name', 's3', '--json').stdout);
  const log = JSON.parse(m.cli('log', '--json').stdout) as { id: string; name: string; parent: string | null }[];
  const id = (n: string) => log.find((s) => s.name === n)!.id;
  t.is(s3.parent, id('s1'));
  t.is(log.find((s) => s.name === 's2')!.parent, id('s1'));
  t.is(fs.readFileSync(path.join(m.mnt, 'pools/capacity/s2/f'), 'utf8'), 'two');
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'tree/s1/children')).sort(), ['s2', 's3']);
});

test.serial('the live tree survives a remount; kill -9 of the daemon loses nothing that was fsynced', (t) => {
  const m = mountStore(t);
  const data = pseudoRandomBytes(3 << 20, 8);
  fs.writeFileSync(path.join(m.live, 'kept'), data);
  m.unmount();
  t.false(isMounted(m.mnt));
  m.remount();
  t.true(fs.readFileSync(path.join(m.live, 'kept')).equals(data));

  const fd = fs.openSync(path.join(m.live, 'synced'), 'w');
  fs.writeSync(fd, Buffer.from('acknowledged'));
  fs.fsyncSync(fd);
  fs.mkdirSync(path.join(m.live, 'dir-made-before-kill'));
  const pid = m.daemonPid();
  t.truthy(pid);
  process.kill(pid!, 'SIGKILL');
  try { fs.closeSync(fd); } catch { /* the mount is dead: ENOTCONN */ }
  return unmountQuietly(m.mnt).then(() => {
    m.remount();
    t.is(fs.readFileSync(path.join(m.live, 'synced'), 'utf8'), 'acknowledged');
    t.true(fs.readFileSync(path.join(m.live, 'kept')).equals(data));
    t.true(fs.existsSync(path.join(m.live, 'dir-made-before-kill')));
    t.is(m.cli('verify').code, 0);
  });
});

test.serial('an ext4 image stored in Strata is loop-mounted read-only from a snapshot view', (t) => {
  const m = mountStore(t);
  const src = path.join(m.base, 'imgsrc');
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'sub/data.bin'), pseudoRandomBytes(5 << 20, 3));
  fs.writeFileSync(path.join(src, 'hello.txt'), 'inside the image\n');
  const img = path.join(m.base, 'disk.img');
  sh(`mkfs.ext4 -q -F -d ${src} ${img} 64M`);
  sh(`cp --sparse=always ${img} ${m.live}/disk.img`);
  m.cli('snapshot', '--name', 'lun');
  const loopMnt = path.join(m.base, 'loop');
  fs.mkdirSync(loopMnt);
  for (const pool of ['capacity', 'performance']) {
    const file = path.join(m.mnt, `pools/${pool}/lun/disk.img`);
    if (pool === 'performance') {
      // The performance pool fills in the background after the snapshot.
      for (let i = 0; i < 100 && !fs.existsSync(file); i++) spawnSync('sleep', ['0.1']);
    }
    sh(`mount -o loop,ro ${file} ${loopMnt}`);
    try {
      t.is(fs.readFileSync(path.join(loopMnt, 'hello.txt'), 'utf8'), 'inside the image\n');
      t.true(fs.readFileSync(path.join(loopMnt, 'sub/data.bin')).equals(fs.readFileSync(path.join(src, 'sub/data.bin'))));
    } finally {
      sh(`umount ${loopMnt} || umount -l ${loopMnt}`);
    }
  }
});

test.serial('concurrent readers with a writer see only whole writes and the final content', async (t) => {
  const m = mountStore(t);
  const file = path.join(m.live, 'shared');
  const BLOCKS = 64;
  const BLOCK = 64 * 1024;
  const GENS = 8;
  fs.writeFileSync(file, Buffer.alloc(BLOCKS * BLOCK, 0));
  // A writer process overwrites every block in place, generation after generation, each block
  // filled with its generation's byte, and fsyncs after each generation (so flushes run while the
  // readers read). The readers check that every block they read is uniform (a write is atomic to
  // a read) and never older than what they saw before.
  //
  // Readers use O_DIRECT and read one block per read(2): that is one FUSE READ, answered by the
  // daemon at one instant. Buffered reads cannot be held to this: the kernel copies a buffered
  // write into the page cache while a buffered reader may be copying the same page out (ext4
  // shows torn 4 KiB pages in this very test), and an O_DIRECT read larger than a request is
  // split into several READs at the caller's page boundaries. The last buffered read checks
  // the final content.
  const script = `
    const fs = require('fs'); const [file, blocks, size, gens] = process.argv.slice(1).map((x, i) => i ? Number(x) : x);
    const fd = fs.openSync(file, 'r+');
    for (let g = 1; g <= gens; g++) {
      for (let b = 0; b < blocks; b++) fs.writeSync(fd, Buffer.alloc(size, g), 0, size, b * size);
      fs.fsyncSync(fd);
    }
    fs.closeSync(fd);`;
  const writer = spawn(process.execPath, ['-e', script, file, String(BLOCKS), String(BLOCK), String(GENS)], { stdio: 'inherit' });
  let finished = false;
  const done = new Promise<void>((r) => writer.on('exit', () => { finished = true; r(); }));
  let reads = 0;
  const reader = async () => {
    const last = new Array(BLOCKS).fill(0);
    const block = Buffer.alloc(BLOCK);
    while (!finished) {
      const fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      try {
        for (let b = 0; b < BLOCKS; b++) {
          const { bytesRead } = await fh.read(block, 0, BLOCK, b * BLOCK);
          t.is(bytesRead, BLOCK);
          const v = block[0];
          if (!block.equals(Buffer.alloc(BLOCK, v))) { t.fail(`block ${b} is torn (starts with ${v})`); return; }
          if (v < last[b]) { t.fail(`block ${b} went back from ${last[b]} to ${v}`); return; }
          last[b] = v;
        }
      } finally {
        await fh.close();
      }
      reads++;
    }
  };
  await Promise.all([reader(), reader(), done]);
  t.is(writer.exitCode, 0);
  t.true(reads > 0);
  t.log(`${reads} whole-file reads during ${GENS} generations`);
  t.true(fs.readFileSync(file).equals(Buffer.alloc(BLOCKS * BLOCK, GENS)));
});
