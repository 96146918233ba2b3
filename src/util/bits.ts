/**
 * Bitmaps of units or fragments, most significant bit first: bit i is
 * `bits[i >> 3] & (0x80 >> (i & 7))`. Every bitmap on the wire and on disk uses this order
 * (docs/protocol.md: NACK and ANNOUNCE bitmaps, heartbeat `have`, data.bitmap).
 */

export function bitmapBytes(bits: number): number {
  return (bits + 7) >>> 3;
}

export function getBit(bits: Uint8Array, i: number): boolean {
  return (bits[i >>> 3] & (0x80 >>> (i & 7))) !== 0;
}

export function setBit(bits: Uint8Array, i: number): void {
  bits[i >>> 3] |= 0x80 >>> (i & 7);
}

export function clearBit(bits: Uint8Array, i: number): void {
  bits[i >>> 3] &= ~(0x80 >>> (i & 7));
}

/** How many of the first `n` bits are set. */
export function countBits(bits: Uint8Array, n: number): number {
  let c = 0;
  for (let i = 0; i < n; i++) if (getBit(bits, i)) c++;
  return c;
}

/** Whether two byte arrays hold the same bytes. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
