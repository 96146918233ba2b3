/**
 * CRC-32 as zlib computes it (ISO-HDLC: reflected polynomial 0xEDB88320, initial and final
 * XOR 0xFFFFFFFF), byte by byte from one 1 KiB table. The agent checksums only its bitmap
 * file and 20-byte journal records (docs/protocol.md), so this replaces node:zlib's crc32,
 * whose module the agent would otherwise load for nothing else (issue 16: ~0.3 MiB).
 */
let table: Uint32Array | null = null;

function makeTable(): Uint32Array {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
}

/** The CRC-32 of `data`, continuing from `crc` (the value over the bytes before it; 0 to start), as an unsigned 32-bit number. */
export function crc32(data: Uint8Array, crc = 0): number {
  const t = (table ??= makeTable());
  let c = ~crc;
  for (let i = 0; i < data.length; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
