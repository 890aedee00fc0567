import type { SnapshotInfo } from '../types.js';
import { formatBytes, isoTime } from './format.js';

/**
 * Draws the temporal tree, oldest first. A line of single children stays in one column; where a
 * snapshot has several children, each child starts a branch drawn with box characters.
 */
export function drawTemporalTree(snaps: SnapshotInfo[]): string[] {
  const ids = new Set(snaps.map((s) => s.id));
  const kids = new Map<string | null, SnapshotInfo[]>();
  for (const s of snaps) {
    const p = s.parent && ids.has(s.parent) ? s.parent : null;
    if (!kids.has(p)) kids.set(p, []);
    kids.get(p)!.push(s);
  }
  const lines: string[] = [];
  const label = (s: SnapshotInfo) =>
    `* ${s.id}  ${(s.name ?? '').padEnd(16)} ${isoTime(s.createdMs)}  ${formatBytes(s.logicalBytes).padStart(10)}  ${s.source ?? ''}`;
  const draw = (s: SnapshotInfo, first: string, rest: string) => {
    lines.push(first + label(s));
    let cur = s;
    let children = kids.get(cur.id) ?? [];
    // Follow single-child chains in the same column.
    while (children.length === 1) {
      cur = children[0];
      lines.push(rest + label(cur));
      children = kids.get(cur.id) ?? [];
    }
    children.forEach((c, i) => {
      const last = i === children.length - 1;
      draw(c, rest + (last ? '└─' : '├─'), rest + (last ? '  ' : '│ '));
    });
  };
  for (const root of kids.get(null) ?? []) draw(root, '', '');
  return lines;
}
