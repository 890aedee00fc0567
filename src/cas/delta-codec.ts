// Delta compression of a chunk against other chunks ("bases") for replication: zstd with the
// bases' raw bytes, concatenated, as a raw-content dictionary. A chunk that differs from an old
// version in a few bytes then costs a few dozen bytes instead of its whole compressed size.
//
// The dictionary starts with a fixed 8-byte prefix: zstd takes a dictionary that begins with its
// dictionary magic (0xEC30A437) as a structured dictionary, and one shorter than 8 bytes as none,
// so without the prefix a base that happened to start with those 4 bytes could not be used (or
// would be read differently on the two sides). Both sides build the dictionary the same way.
//
// Level 3, not the chunk codec's 1: measured over every incremental step of the replication
// benchmark's stores (all chunks with bases), level 3 made the delta payloads 10% smaller on the
// source tree (4.06 vs 4.52 MB) and 2% on the disk image (13.6 vs 13.9 MB) for 15-30% more
// compression time (~180 vs ~155 ms for 2120 chunks): the wire is what deltas are for, and the
// time is small beside a transfer's.
import binding from 'zstd-napi/binding.js';
import { corrupt, invalid, StrataError } from '../errors.js';

export const DELTA_LEVEL = 3;
const DICT_PREFIX = Buffer.from('STRATADx', 'ascii');

// Own contexts (not codec.ts's): dictionary compression changes a context's state. Safe because
// everything here is synchronous.
const cctx = new binding.CCtx();
const dctx = new binding.DCtx();

function dictionary(bases: readonly Buffer[]): Buffer {
  return Buffer.concat([DICT_PREFIX, ...bases]);
}

/** The delta payload of `raw` against `bases` (in the order given; the decoder needs the same order). */
export function compressDelta(raw: Buffer, bases: readonly Buffer[], level = DELTA_LEVEL): Buffer {
  if (raw.length === 0) throw invalid('an empty chunk has no delta');
  const dst = Buffer.allocUnsafe(binding.compressBound(raw.length));
  const n = cctx.compressUsingDict(dst, raw, dictionary(bases), level);
  return Buffer.from(dst.subarray(0, n));
}

/**
 * The raw chunk a delta payload encodes, which must be exactly `rawLength` bytes, decoded with
 * `bases` (the same chunks, in the same order, as the encoder used). Throws ECORRUPT (naming
 * `what`) when it does not decode or has another length. The caller checks the result's hash.
 */
export function decompressDelta(payload: Buffer, rawLength: number, bases: readonly Buffer[], what = 'delta'): Buffer {
  if (!Number.isSafeInteger(rawLength) || rawLength <= 0) throw corrupt(`${what}: impossible raw length ${rawLength}`);
  const out = Buffer.allocUnsafe(rawLength);
  let n: number;
  try {
    n = dctx.decompressUsingDict(out, payload, dictionary(bases));
  } catch (e) {
    throw new StrataError('ECORRUPT', `${what}: zstd delta does not decode against its bases (${(e as Error).message})`, { cause: e });
  }
  if (n !== rawLength) throw corrupt(`${what}: delta decoded to ${n} bytes, expected ${rawLength}`);
  return out;
}
