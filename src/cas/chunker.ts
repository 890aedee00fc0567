// Picks the chunker for an object's chunking mode.

import { invalid } from '../errors.js';
import { Chunking, type Chunker, type ChunkerParams } from '../types.js';
import { createFastCdc } from './fastcdc.js';
import { createFixedChunker } from './fixed-chunker.js';

/**
 * FastCDC 4/16/64 KiB and 64 KiB fixed blocks; benchmarks/chunker-params.ts measures the
 * alternatives. Changing any of these changes chunk boundaries, so new data stops deduplicating
 * against data stored with the old values.
 */
export const DEFAULT_CHUNKER_PARAMS: ChunkerParams = Object.freeze({
  min: 4 * 1024,
  avg: 16 * 1024,
  max: 64 * 1024,
  fixedSize: 64 * 1024,
});

/** A fresh chunker for one stream; throws EINVAL on bad parameters or an unknown mode. */
export function createChunker(chunking: Chunking, params: ChunkerParams = DEFAULT_CHUNKER_PARAMS): Chunker {
  switch (chunking) {
    case Chunking.Cdc:
      return createFastCdc(params);
    case Chunking.Fixed:
      return createFixedChunker(params.fixedSize);
    default:
      throw invalid(`unknown chunking mode ${String(chunking)}`);
  }
}
