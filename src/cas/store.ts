import fs from 'node:fs';
import path from 'node:path';
import { invalid, notFound, StrataError } from '../errors.js';
import type { ChunkerParams } from '../types.js';
import { DEFAULT_CHUNKER_PARAMS } from './chunker.js';
import { ChunkStore, DEFAULT_CHUNK_STORE_OPTIONS } from './chunk-store.js';
import { CompressorPool } from './compressor-pool.js';
import { IndexDb } from './index-db.js';
import { LocalBlobStore } from './local-blob-store.js';
import { ObjectStore } from './object-store.js';

// A store directory: store.json (fixed at init), index.db (SQLite, WAL), containers/, lock.

export interface StoreConfig {
  format: 1;
  chunker: ChunkerParams;
  containerSize: number;
  /**
   * Performance pool: files of at least thresholdBytes, for the latest keepPerBranch snapshots per
   * branch (0: off); directReads false reads them through the page cache instead of with O_DIRECT.
   */
  performance: { thresholdBytes: number; keepPerBranch: number; directReads: boolean };
}

export const DEFAULT_PERFORMANCE = { thresholdBytes: 32 * 1024 * 1024, keepPerBranch: 2, directReads: true };

export interface OpenOptions {
  /** Take the writer lock (import, rm, gc, rebuild). Readers need no lock. */
  write?: boolean;
  /** Commits are fsynced only through index.durable() (the mount; see IndexDb). */
  relaxed?: boolean;
  /** Compression worker threads (0: compress inline); default DEFAULT_CHUNK_STORE_OPTIONS.compressWorkers. */
  compressWorkers?: number;
}

const CONFIG = 'store.json';
const INDEX = 'index.db';
const LOCK = 'lock';

export class CasStore {
  readonly index: IndexDb;
  readonly blobs: LocalBlobStore;
  readonly chunks: ChunkStore;
  readonly objects: ObjectStore;
  private lockFd: number | null = null;
  private readonly compressor: CompressorPool | null = null;

  private constructor(readonly dir: string, readonly config: StoreConfig, readonly writable: boolean, relaxed: boolean, compressWorkers: number) {
    if (writable) this.lockFd = takeLock(path.join(dir, LOCK));
    try {
      this.index = new IndexDb(path.join(dir, INDEX), { relaxed });
      this.blobs = new LocalBlobStore(path.join(dir, 'containers'));
      // Workers start only when a first chunk is compressed, so readers never pay for them.
      if (writable && compressWorkers > 0) this.compressor = new CompressorPool({ workers: compressWorkers });
      this.chunks = new ChunkStore(
        this.index, this.blobs,
        { ...DEFAULT_CHUNK_STORE_OPTIONS, containerSize: config.containerSize, compressWorkers },
        this.compressor,
      );
      this.objects = new ObjectStore(this.chunks, config.chunker);
    } catch (e) {
      this.releaseLock();
      throw e;
    }
  }

  /** Creates a new, empty store in `dir` (created if missing; must be empty). */
  static init(dir: string, overrides: Partial<StoreConfig> = {}): void {
    fs.mkdirSync(dir, { recursive: true });
    if (fs.existsSync(path.join(dir, CONFIG))) throw new StrataError('EEXIST', `a store already exists at ${dir}`);
    if (fs.readdirSync(dir).length > 0) throw invalid(`${dir} is not empty; choose an empty or new directory`);
    const config: StoreConfig = {
      format: 1,
      chunker: overrides.chunker ?? DEFAULT_CHUNKER_PARAMS,
      containerSize: overrides.containerSize ?? DEFAULT_CHUNK_STORE_OPTIONS.containerSize,
      performance: { ...DEFAULT_PERFORMANCE, ...overrides.performance },
    };
    fs.mkdirSync(path.join(dir, 'containers'));
    new IndexDb(path.join(dir, INDEX)).close();
    const tmp = path.join(dir, CONFIG + '.tmp');
    fs.writeFileSync(tmp, JSON.stringify(config, null, 2) + '\n');
    fs.renameSync(tmp, path.join(dir, CONFIG));
  }

  static open(dir: string, opts: OpenOptions = {}): CasStore {
    let config: StoreConfig;
    try {
      config = JSON.parse(fs.readFileSync(path.join(dir, CONFIG), 'utf8')) as StoreConfig;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`store at ${dir} (run 'strata init --store ${dir}')`);
      throw invalid(`cannot read ${path.join(dir, CONFIG)}: ${(e as Error).message}`);
    }
    if (config.format !== 1) throw invalid(`unsupported store format ${String(config.format)}`);
    config.performance = { ...DEFAULT_PERFORMANCE, ...config.performance };
    return new CasStore(dir, config, opts.write ?? false, opts.relaxed ?? false,
      opts.compressWorkers ?? DEFAULT_CHUNK_STORE_OPTIONS.compressWorkers);
  }

  /** Commits and seals what is pending, stops the compression workers, then releases the lock. */
  close(): void {
    try {
      if (this.writable) this.chunks.close();
      this.index.close();
    } finally {
      this.compressor?.close();
      this.releaseLock();
    }
  }

  private releaseLock(): void {
    if (this.lockFd === null) return;
    fs.closeSync(this.lockFd);
    fs.rmSync(path.join(this.dir, LOCK), { force: true });
    this.lockFd = null;
  }
}

/** Exclusive writer lock: a file holding the owner's pid; a lock whose owner is gone is taken over. */
function takeLock(file: string): number {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o600);
      fs.writeSync(fd, `${process.pid}\n`);
      return fd;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number.parseInt(fs.readFileSync(file, 'utf8'), 10);
      if (Number.isFinite(pid) && pid > 0 && pid !== process.pid && processRunning(pid)) {
        throw new StrataError('ELOCKED', `store is in use by process ${pid} (lock ${file})`);
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new StrataError('ELOCKED', `cannot take the store lock ${file}`);
}

/** Whether a process is alive: it exists and is not a zombie (an unreaped dead daemon holds no lock). */
export function processRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // The state follows the command name in parentheses, which may itself contain ') '.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no /proc: kill(0) is all we know
  }
}
