import { AUTH_TRAILER_BYTES, commonHeaderProblem, COMMON_HEADER_BYTES, ControlAuth, MAX_DATAGRAM_BYTES, PacketType, RELEASE_ID_BYTES, trailer, writeCommon } from './packet';

/**
 * BATCH (LAN packet type 5, stream control v1, agents from 2026-12-02; docs/protocol.md
 * section 15, "Batches on the LAN"): one signed stream batch file, multicast by the member
 * of a LAN group that fetched it from the server, so that the group's other members need
 * not each long-poll the server for it. The batch is signed by the publisher, and a
 * receiver verifies it (and its chain) as one from the server; the packet also ends in the
 * control packets' trailer (a sequence number and a MAC under the group key, section 4),
 * because hearing it makes members stop polling: only a member of the group may say so.
 *
 *   0     28  common header (type 5, flags 0, release id = the stream's id)
 *   28     4  batch index, u32 (the batch body's `batch`; cheap to compare before parsing)
 *   32     …  the batch file: one UTF-8 JSON line, section 15's "Batch file", 1 … 65,451 bytes
 *   end-24 8  sequence number, u64
 *   end-16 16 MAC: the first 16 bytes of HMAC-SHA256 under the group key over every byte before it
 */
export const BATCH_HEADER_BYTES = COMMON_HEADER_BYTES + 4;
/** A BATCH packet's bytes besides its batch file. */
export const BATCH_OVERHEAD_BYTES = BATCH_HEADER_BYTES + AUTH_TRAILER_BYTES;
export const MAX_BATCH_PACKET_FILE_BYTES = MAX_DATAGRAM_BYTES - BATCH_OVERHEAD_BYTES;

export interface BatchPacket {
  sender: number;
  releaseId: Uint8Array;
  batch: number;
  /** The batch file's bytes, unverified. */
  file: Uint8Array;
  /** Set by decodeBatchPacket: the trailer (views into the datagram), not yet checked. */
  auth?: ControlAuth;
}

export type BatchDecodeResult = { ok: true; packet: BatchPacket } | { ok: false; reason: 'short' | 'magic' | 'version' | 'type' | 'reserved' | 'length' };

/** The packet with a zero trailer: seal it (wire/auth.ts sealControl) before it is sent. */
export function encodeBatchPacket(p: Omit<BatchPacket, 'auth'>): Uint8Array {
  if (p.file.length < 1 || p.file.length > MAX_BATCH_PACKET_FILE_BYTES) throw new RangeError(`a batch file of ${p.file.length} bytes does not fit one BATCH packet`);
  if (!Number.isInteger(p.batch) || p.batch < 0 || p.batch > 0xffffffff) throw new RangeError(`batch index ${p.batch} does not fit 32 bits`);
  const buf = new Uint8Array(BATCH_OVERHEAD_BYTES + p.file.length);
  const view = new DataView(buf.buffer);
  writeCommon(buf, view, PacketType.BATCH, 0, p.sender, p.releaseId);
  view.setUint32(COMMON_HEADER_BYTES, p.batch);
  buf.set(p.file, BATCH_HEADER_BYTES);
  return buf;
}

/** Decode one datagram as a BATCH packet. Never throws; neither the MAC nor the file is checked here. */
export function decodeBatchPacket(buf: Uint8Array): BatchDecodeResult {
  if (buf.length < BATCH_OVERHEAD_BYTES + 1) return { ok: false, reason: 'short' };
  if (buf.length > MAX_DATAGRAM_BYTES) return { ok: false, reason: 'length' };
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = commonHeaderProblem(buf, view);
  if (bad) return { ok: false, reason: bad };
  if (buf[3] !== PacketType.BATCH) return { ok: false, reason: 'type' };
  if (buf[4] !== 0) return { ok: false, reason: 'reserved' };
  return {
    ok: true,
    packet: {
      sender: view.getUint32(8),
      releaseId: buf.subarray(12, 12 + RELEASE_ID_BYTES),
      batch: view.getUint32(COMMON_HEADER_BYTES),
      file: buf.subarray(BATCH_HEADER_BYTES, buf.length - AUTH_TRAILER_BYTES),
      auth: trailer(buf, view),
    },
  };
}
