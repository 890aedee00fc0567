import { blake3 } from '@napi-rs/blake-hash';
import type { Handle } from '../types.js';

/** BLAKE3-256 of the bytes. */
export function hashBytes(data: Uint8Array): Handle {
  return blake3(data);
}

export const handleHex = (h: Handle) => h.toString('hex');
/** Short printable prefix for messages. */
export const shortHex = (h: Handle) => h.toString('hex').slice(0, 12);
/** Cheap map key for a handle. */
export const handleKey = (h: Handle) => h.toString('latin1');
export const handleFromHex = (s: string): Handle => Buffer.from(s, 'hex');
