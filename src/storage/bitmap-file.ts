import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { crc32 } from '../util/crc32';
import { bitmapBytes, setBit } from '../util/bits';

/**
 * The persisted bitmap of verified units (docs/protocol.md, "Bitmap file").
 *   0  magic 'FCBM'
 *   4  version u8 (=1), 3 reserved bytes (0)
 *   8  unit count u32 BE
 *   12 release id (16 bytes)
 *   28 bitmap, ceil(unitCount/8) bytes, bit i (MSB first) = unit i verified
 *   .. CRC-32 (zlib) u32 BE of every byte before it
 * Written to a temporary file, fsynced, then renamed over the old one, so a crash
 * leaves either the old or the new bitmap, never a torn one. Units verified since it
 * was written are in the journal below; the two together are the persisted state.
 */
export const BITMAP_MAGIC = Buffer.from('FCBM', 'ascii');
export const BITMAP_HEADER_BYTES = 28;

export function encodeBitmapFile(releaseId: Uint8Array, unitCount: number, bits: Uint8Array): Buffer {
  const n = bitmapBytes(unitCount);
  const out = Buffer.alloc(BITMAP_HEADER_BYTES + n + 4);
  BITMAP_MAGIC.copy(out, 0);
  out[4] = 1;
  out.writeUInt32BE(unitCount, 8);
  out.set(releaseId.subarray(0, 16), 12);
  out.set(bits.subarray(0, n), BITMAP_HEADER_BYTES);
  out.writeUInt32BE(crc32(out.subarray(0, BITMAP_HEADER_BYTES + n)) >>> 0, BITMAP_HEADER_BYTES + n);
  return out;
}

export type BitmapDecode = { ok: true; bits: Uint8Array } | { ok: false; reason: string };

/** Parse untrusted bytes; the caller says which release and unit count it expects. */
export function decodeBitmapFile(buf: Uint8Array, releaseId: Uint8Array, unitCount: number): BitmapDecode {
  const n = bitmapBytes(unitCount);
  if (buf.length !== BITMAP_HEADER_BYTES + n + 4) return { ok: false, reason: `size ${buf.length}, expected ${BITMAP_HEADER_BYTES + n + 4}` };
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (!b.subarray(0, 4).equals(BITMAP_MAGIC)) return { ok: false, reason: 'bad magic' };
  if (b[4] !== 1) return { ok: false, reason: `unsupported version ${b[4]}` };
  if (b[5] !== 0 || b[6] !== 0 || b[7] !== 0) return { ok: false, reason: 'reserved bytes set' };
  if (b.readUInt32BE(8) !== unitCount) return { ok: false, reason: 'unit count differs from the manifest' };
  if (!b.subarray(12, 28).equals(Buffer.from(releaseId))) return { ok: false, reason: 'belongs to another release' };
  const crc = b.readUInt32BE(BITMAP_HEADER_BYTES + n);
  if ((crc32(b.subarray(0, BITMAP_HEADER_BYTES + n)) >>> 0) !== crc) return { ok: false, reason: 'checksum mismatch' };
  const bits = new Uint8Array(n);
  bits.set(b.subarray(BITMAP_HEADER_BYTES, BITMAP_HEADER_BYTES + n));
  const rem = unitCount & 7;
  if (rem !== 0 && n > 0 && (bits[n - 1] & (0xff >>> rem)) !== 0) return { ok: false, reason: 'bits set past the last unit' };
  return { ok: true, bits };
}

/**
 * The bitmap journal (docs/protocol.md, "Bitmap journal"): each commit appends one
 * 8-byte record per newly verified unit, instead of rewriting the whole bitmap (issue
 * 13: a 125 KB bitmap rewritten and fsynced per commit held a 1M-unit release to 58
 * units/s). The bitmap file is the base; the journal is folded into it when it grows
 * past journalCompactBytes and when the store opens.
 *   0  magic 'FCBJ'
 *   4  version u8 (=1), 3 reserved bytes (0)
 *   8  release id (16 bytes)
 *   24 records: unit u32 BE, CRC-32 (zlib) u32 BE of the release id then the unit (BE)
 * A record whose CRC fails, or a partial one, ends the journal: it was torn by a crash
 * mid-append, and it (and anything after it) is ignored. A unit's data is fsynced
 * before its record is appended, so every record names a unit on disk.
 */
export const JOURNAL_MAGIC = Buffer.from('FCBJ', 'ascii');
export const JOURNAL_HEADER_BYTES = 24;
export const JOURNAL_RECORD_BYTES = 8;

export function encodeJournalHeader(releaseId: Uint8Array): Buffer {
  const out = Buffer.alloc(JOURNAL_HEADER_BYTES);
  JOURNAL_MAGIC.copy(out, 0);
  out[4] = 1;
  out.set(releaseId.subarray(0, 16), 8);
  return out;
}

function recordCrc(releaseId: Uint8Array, unit: number): number {
  const b = Buffer.alloc(20);
  b.set(releaseId.subarray(0, 16), 0);
  b.writeUInt32BE(unit, 16);
  return crc32(b) >>> 0;
}

export function encodeJournalRecords(releaseId: Uint8Array, units: Iterable<number>): Buffer {
  const list = [...units];
  const out = Buffer.alloc(list.length * JOURNAL_RECORD_BYTES);
  list.forEach((u, i) => {
    out.writeUInt32BE(u, i * JOURNAL_RECORD_BYTES);
    out.writeUInt32BE(recordCrc(releaseId, u), i * JOURNAL_RECORD_BYTES + 4);
  });
  return out;
}

export type JournalDecode = { ok: true; units: number[]; torn: boolean } | { ok: false; reason: string };

/** Parse untrusted bytes: the units the journal's intact records name (each < unitCount). */
export function decodeJournal(buf: Uint8Array, releaseId: Uint8Array, unitCount: number): JournalDecode {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < JOURNAL_HEADER_BYTES) return { ok: false, reason: 'shorter than its header' };
  if (!b.subarray(0, 4).equals(JOURNAL_MAGIC)) return { ok: false, reason: 'bad magic' };
  if (b[4] !== 1) return { ok: false, reason: `unsupported version ${b[4]}` };
  if (b[5] !== 0 || b[6] !== 0 || b[7] !== 0) return { ok: false, reason: 'reserved bytes set' };
  if (!b.subarray(8, 24).equals(Buffer.from(releaseId.subarray(0, 16)))) return { ok: false, reason: 'belongs to another release' };
  const units: number[] = [];
  let off = JOURNAL_HEADER_BYTES;
  for (; off + JOURNAL_RECORD_BYTES <= b.length; off += JOURNAL_RECORD_BYTES) {
    const u = b.readUInt32BE(off);
    if (u >= unitCount || b.readUInt32BE(off + 4) !== recordCrc(releaseId, u)) break;
    units.push(u);
  }
  return { ok: true, units, torn: off !== b.length };
}

/** The verified-units bitmap as a restart would see it (bitmap file plus journal), or null when there is none. */
export async function readPersistedBitmap(releaseDir: string, releaseId: Uint8Array, unitCount: number): Promise<Uint8Array | null> {
  const raw = await readFile(path.join(releaseDir, 'data.bitmap')).catch(() => null);
  const d = raw && decodeBitmapFile(raw, releaseId, unitCount);
  if (!d || !d.ok) return null;
  const journal = await readFile(path.join(releaseDir, 'data.journal')).catch(() => null);
  const j = journal && decodeJournal(journal, releaseId, unitCount);
  if (j && j.ok) for (const u of j.units) setBit(d.bits, u);
  return d.bits;
}
