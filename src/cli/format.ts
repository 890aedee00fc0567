import type { SnapshotInfo, TreeEntry } from '../types.js';

/** 1536 -> "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** Raw path bytes for a terminal: UTF-8 where valid; control characters, backslash and invalid bytes escaped. */
export function displayPath(bytes: Buffer): string {
  const s = bytes.toString('utf8');
  const valid = Buffer.from(s, 'utf8').equals(bytes);
  let out = '';
  if (valid) {
    for (const ch of s) {
      const c = ch.codePointAt(0) as number;
      if (ch === '\\') out += '\\\\';
      else if (ch === '\n') out += '\\n';
      else if (ch === '\t') out += '\\t';
      else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
      else out += ch;
    }
    return out;
  }
  for (const b of bytes) {
    if (b === 0x5c) out += '\\\\';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += '\\x' + b.toString(16).padStart(2, '0');
  }
  return out;
}

/** JSON form of raw bytes: a string when valid UTF-8, else { hex }. */
export const jsonPath = (bytes: Buffer): string | { hex: string } => {
  const s = bytes.toString('utf8');
  return Buffer.from(s, 'utf8').equals(bytes) ? s : { hex: bytes.toString('hex') };
};

const TYPE_CHAR: Record<TreeEntry['type'], string> = {
  file: '-', dir: 'd', symlink: 'l', fifo: 'p', chardev: 'c', blockdev: 'b', socket: 's',
};

export function modeString(e: TreeEntry): string {
  const m = e.mode;
  const rwx = (shift: number, special: number, ch: string) =>
    (m & (4 << shift) ? 'r' : '-') + (m & (2 << shift) ? 'w' : '-') +
    (m & special ? (m & (1 << shift) ? ch : ch.toUpperCase()) : m & (1 << shift) ? 'x' : '-');
  return TYPE_CHAR[e.type] + rwx(6, 0o4000, 's') + rwx(3, 0o2000, 's') + rwx(0, 0o1000, 't');
}

export const isoTime = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export const snapshotLabel = (s: SnapshotInfo) => (s.name ? `${s.id} ${s.name}` : s.id);

/** Progress on a terminal (stderr), at most every 200 ms; silent otherwise. */
export class Progress {
  private last = 0;
  private shown = false;
  private readonly tty = Boolean(process.stderr.isTTY);

  update(text: string): void {
    if (!this.tty) return;
    const now = Date.now();
    if (now - this.last < 200) return;
    this.last = now;
    this.shown = true;
    process.stderr.write(`\r\x1b[K${text}`);
  }

  done(): void {
    if (this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}
