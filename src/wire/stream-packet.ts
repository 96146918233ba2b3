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
 *   0     28  common header (type 5, flags 0 or 1, release id = the stream's id)
 *   28     4  batch index, u32 (the batch body's `batch`; cheap to compare before parsing)
 *   32     4  flags 1 only: the origin, the sender id of the member in another LAN group
 *              (site) that fetched the batch and sent it to this group's gateway
 *   32|36  …  the batch file: one UTF-8 JSON line, section 15's "Batch file", 1 … 65,451 bytes
 *   end-24 8  sequence number, u64
 *   end-16 16 MAC: the first 16 bytes of HMAC-SHA256 under the group key over every byte before it
 *
 * Flags 1 (agents from 2026-12-03, "Batches across sites"): a gateway multicasts on its LAN
 * a batch another site's member sent it by unicast. Agents from before drop such a packet
 * (`reserved`), and so keep polling.
 */
export const BATCH_HEADER_BYTES = COMMON_HEADER_BYTES + 4;
/** A BATCH packet's bytes besides its batch file. */
export const BATCH_OVERHEAD_BYTES = BATCH_HEADER_BYTES + AUTH_TRAILER_BYTES;
export const MAX_BATCH_PACKET_FILE_BYTES = MAX_DATAGRAM_BYTES - BATCH_OVERHEAD_BYTES;
/** Flags bit 0: the packet carries an origin (a batch from another site, forwarded by this group's gateway). */
export const BATCH_FLAG_ORIGIN = 1;
/** What an origin adds to a BATCH packet. */
export const BATCH_ORIGIN_BYTES = 4;

export interface BatchPacket {
  sender: number;
  releaseId: Uint8Array;
  batch: number;
  /** Flags 1: the sender id, in another LAN group, of the member that fetched the batch; the sender is this group's gateway. */
  origin?: number;
  /** The batch file's bytes, unverified. */
  file: Uint8Array;
  /** Set by decodeBatchPacket: the trailer (views into the datagram), not yet checked. */
  auth?: ControlAuth;
}

export type BatchDecodeResult = { ok: true; packet: BatchPacket } | { ok: false; reason: 'short' | 'magic' | 'version' | 'type' | 'reserved' | 'length' };

/** The packet with a zero trailer: seal it (wire/auth.ts sealControl) before it is sent. */
export function encodeBatchPacket(p: Omit<BatchPacket, 'auth'>): Uint8Array {
  const extra = p.origin === undefined ? 0 : BATCH_ORIGIN_BYTES;
  if (p.file.length < 1 || p.file.length > MAX_BATCH_PACKET_FILE_BYTES - extra) throw new RangeError(`a batch file of ${p.file.length} bytes does not fit one BATCH packet`);
  if (!Number.isInteger(p.batch) || p.batch < 0 || p.batch > 0xffffffff) throw new RangeError(`batch index ${p.batch} does not fit 32 bits`);
  if (p.origin !== undefined && (!Number.isInteger(p.origin) || p.origin < 0 || p.origin > 0xffffffff)) throw new RangeError(`origin ${p.origin} does not fit 32 bits`);
  const buf = new Uint8Array(BATCH_OVERHEAD_BYTES + extra + p.file.length);
  const view = new DataView(buf.buffer);
  writeCommon(buf, view, PacketType.BATCH, extra ? BATCH_FLAG_ORIGIN : 0, p.sender, p.releaseId);
  view.setUint32(COMMON_HEADER_BYTES, p.batch);
  if (p.origin !== undefined) view.setUint32(BATCH_HEADER_BYTES, p.origin);
  buf.set(p.file, BATCH_HEADER_BYTES + extra);
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
  if (buf[4] !== 0 && buf[4] !== BATCH_FLAG_ORIGIN) return { ok: false, reason: 'reserved' };
  const extra = buf[4] === BATCH_FLAG_ORIGIN ? BATCH_ORIGIN_BYTES : 0;
  if (buf.length < BATCH_OVERHEAD_BYTES + extra + 1) return { ok: false, reason: 'short' };
  return {
    ok: true,
    packet: {
      sender: view.getUint32(8),
      releaseId: buf.subarray(12, 12 + RELEASE_ID_BYTES),
      batch: view.getUint32(COMMON_HEADER_BYTES),
      ...(extra ? { origin: view.getUint32(BATCH_HEADER_BYTES) } : {}),
      file: buf.subarray(BATCH_HEADER_BYTES + extra, buf.length - AUTH_TRAILER_BYTES),
      auth: trailer(buf, view),
    },
  };
}
