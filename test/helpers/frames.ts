import binding from 'zstd-napi/binding.js';

/** A zstd frame of `raw` without a content checksum, as Strata wrote chunks before checksummed frames. */
export function zstdFrameWithoutChecksum(raw: Buffer): Buffer {
  const dst = Buffer.alloc(binding.compressBound(raw.length));
  return dst.subarray(0, new binding.CCtx().compress(dst, raw, 1));
}
