import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (this file runs from dist/test/helpers/). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const STRATA = path.join(REPO, 'bin/strata');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBuf: Buffer;
}

/** Runs the real strata command in a child process. */
export function strata(store: string, ...args: string[]): CliResult {
  const r = spawnSync(process.execPath, [STRATA, ...args, '--store', store], { maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  return { code: r.status ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString(), stdoutBuf: r.stdout };
}

/** Runs strata and parses its --json output; throws with stderr if it failed. */
export function strataJson<T = any>(store: string, ...args: string[]): T {
  const r = strata(store, ...args, '--json');
  if (r.code !== 0) throw new Error(`strata ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Starts strata without waiting (for kill tests). */
export function strataSpawn(store: string, ...args: string[]): ChildProcess {
  return spawn(process.execPath, [STRATA, ...args, '--store', store], { stdio: ['ignore', 'pipe', 'pipe'] });
}
