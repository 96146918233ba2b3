/**
 * LAN packet codec (docs/protocol.md, "Packets"). Pure: bytes in, objects out.
 *
 * Every parser here takes untrusted bytes: it checks bounds before every read,
 * rejects unknown versions and types, and never allocates from a length field
 * (payloads and bitmaps are views into the datagram).
 *
 * Common header (28 bytes, big-endian):
 *   0  magic 'F''C' (0x46 0x43)
 *   2  version u8 (=1)
 *   3  type u8 (1 DATA, 2 NACK, 3 ANNOUNCE, 4 FEEDBACK)
 *   4  flags u8 (DATA: bit0 = repair, bit1 = forward)
 *   5  reserved u8 (0)
 *   6  reserved u16 (0)
 *   8  sender id u32 (random per agent process; receivers drop their own)
 *   12 release id, 16 bytes
 *
 * NACK, ANNOUNCE and FEEDBACK (control packets: they make members send) end in a 24-byte
 * authentication trailer: a u64 sequence number, per sender and increasing, then the
 * first 16 bytes of HMAC-SHA256 under the group key over everything before the MAC
 * (wire/auth.ts). The codec only frames it; the agent checks it.
 */
import { bitmapBytes } from '../util/bits';

/** The bitmap helpers live in util/bits.ts; re-exported for the packet codec's users. */
export { bitmapBytes, clearBit, countBits, getBit, setBit } from '../util/bits';

export const MAGIC0 = 0x46;
export const MAGIC1 = 0x43;
export const PROTOCOL_VERSION = 1;
export const COMMON_HEADER_BYTES = 28;
export const DATA_HEADER_BYTES = 40;
export const NACK_HEADER_BYTES = 36;
export const ANNOUNCE_HEADER_BYTES = 36;
export const FEEDBACK_BODY_BYTES = 48;
export const FEEDBACK_BYTES = FEEDBACK_BODY_BYTES + 24;
/** Since 1.2, flag AT_ECHO: 8 more body bytes, the counters as of the echoed ANNOUNCE's arrival. */
export const FEEDBACK_AT_ECHO_BYTES = FEEDBACK_BYTES + 8;
export const FEEDBACK_AT_ECHO = 0x01;
export const RELEASE_ID_BYTES = 16;
export const AUTH_SEQ_BYTES = 8;
export const AUTH_MAC_BYTES = 16;
export const AUTH_TRAILER_BYTES = AUTH_SEQ_BYTES + AUTH_MAC_BYTES;
/** Largest UDP payload over IPv4. */
export const MAX_DATAGRAM_BYTES = 65507;
/** Fragment payload may not exceed this (fits a 64 KiB loopback datagram with headers). */
export const MAX_FRAGMENT_BYTES = MAX_DATAGRAM_BYTES - DATA_HEADER_BYTES;
export const MIN_FRAGMENT_BYTES = 64;

export const PacketType = { DATA: 1, NACK: 2, ANNOUNCE: 3, FEEDBACK: 4, BATCH: 5 } as const;
/**
 * DATA flags. FORWARD marks a copy sent by unicast to another LAN group's gateway:
 * "re-multicast this on your LAN" (the gateway sends it on as its own copy, without
 * the flag, so nothing is forwarded twice).
 */
export const DataFlag = { REPAIR: 0x01, FORWARD: 0x02 } as const;

export interface DataPacket {
  type: typeof PacketType.DATA;
  sender: number;
  releaseId: Uint8Array;
  repair: boolean;
  /** A cross-group copy the receiving gateway re-multicasts on its LAN. */
  forward?: boolean;
  /**
   * Since 1.5 (bytes 38-39 of DATA, u16, position + 1; 0 = none): a forward copy that
   * travels down a copy tree, and the ring position of the LAN group it started from.
   * The receiving gateway also sends it on to its children in that origin's tree
   * (wire/copy-tree.ts, docs/protocol.md section 17).
   */
  treeOrigin?: number;
  unit: number;
  fragment: number;
  fragmentCount: number;
  fragmentBytes: number;
  /** View into the datagram: valid only as long as the datagram is. */
  payload: Uint8Array;
}

/** A request for the fragments whose bits are set in `missing` (bit i = fragment i, MSB first). */
export interface NackPacket {
  type: typeof PacketType.NACK;
  sender: number;
  releaseId: Uint8Array;
  unit: number;
  fragmentCount: number;
  fragmentBytes: number;
  missing: Uint8Array;
  /** Set by decodePacket: the authentication trailer (views into the datagram). */
  auth?: ControlAuth;
}

export interface ControlAuth {
  /** The bytes the MAC covers: the whole packet up to the MAC. */
  signed: Uint8Array;
  seq: bigint;
  mac: Uint8Array;
}

/** The sender's verified units, bits [firstUnit, firstUnit + unitCount). */
export interface AnnouncePacket {
  type: typeof PacketType.ANNOUNCE;
  sender: number;
  releaseId: Uint8Array;
  firstUnit: number;
  unitCount: number;
  /** 1 when the sender holds the whole release verified. */
  complete: boolean;
  have: Uint8Array;
  auth?: ControlAuth;
}

/**
 * Receiver feedback on a cross-group path (docs/protocol.md, "FEEDBACK"): a gateway tells
 * a member sending it copies what arrived, so the sender paces to what the path delivers
 * (after TFMCC's receiver reports, RFC 4654 §3, and LEDBAT's delay signal, RFC 6817).
 */
export interface FeedbackPacket {
  type: typeof PacketType.FEEDBACK;
  sender: number;
  releaseId: Uint8Array;
  /** DATA datagrams received from the addressee's unicast socket since the sender started, mod 2^32. */
  receivedDatagrams: number;
  /** Their bytes (whole datagrams), mod 2^32. */
  receivedBytes: number;
  /** Authentication sequence number of the latest ANNOUNCE received from the addressee by unicast (0: none). */
  echoSeq: bigint;
  /** Milliseconds between that ANNOUNCE's arrival and this packet. */
  echoHoldMs: number;
  /**
   * Since 1.2 (flag AT_ECHO): the same two counters as they stood when that ANNOUNCE
   * arrived. The sender compares them with what it had sent when it sent the ANNOUNCE:
   * an exact window, whatever is still in flight or queued at the gateway.
   */
  atEcho?: { datagrams: number; bytes: number };
  auth?: ControlAuth;
}

export type Packet = DataPacket | NackPacket | AnnouncePacket | FeedbackPacket;

export type DecodeResult = { ok: true; packet: Packet } | { ok: false; reason: DropReason };
export type DropReason =
  | 'short'
  | 'magic'
  | 'version'
  | 'type'
  | 'reserved'
  | 'fragment-range'
  | 'fragment-size'
  | 'length'
  | 'bitmap';

export function writeCommon(buf: Uint8Array, view: DataView, type: number, flags: number, sender: number, releaseId: Uint8Array): void {
  if (releaseId.length !== RELEASE_ID_BYTES) throw new RangeError('release id must be 16 bytes');
  buf[0] = MAGIC0;
  buf[1] = MAGIC1;
  buf[2] = PROTOCOL_VERSION;
  buf[3] = type;
  buf[4] = flags;
  buf[5] = 0;
  view.setUint16(6, 0);
  view.setUint32(8, sender >>> 0);
  buf.set(releaseId, 12);
}

/** Number of fragments a unit of `unitBytes` has on a grid of `fragmentBytes`. */
export function fragmentCountFor(unitBytes: number, fragmentBytes: number): number {
  return Math.max(1, Math.ceil(unitBytes / fragmentBytes));
}

/**
 * Writes a DATA header into `out` (at least DATA_HEADER_BYTES) so callers can
 * place the payload right after it without another copy.
 */
export function writeDataHeader(
  out: Uint8Array,
  h: { sender: number; releaseId: Uint8Array; repair: boolean; forward?: boolean; treeOrigin?: number; unit: number; fragment: number; fragmentCount: number; fragmentBytes: number },
): void {
  // Byte by byte, no DataView: this runs once per outgoing fragment.
  if (h.releaseId.length !== RELEASE_ID_BYTES) throw new RangeError('release id must be 16 bytes');
  out[0] = MAGIC0;
  out[1] = MAGIC1;
  out[2] = PROTOCOL_VERSION;
  out[3] = PacketType.DATA;
  out[4] = (h.repair ? DataFlag.REPAIR : 0) | (h.forward ? DataFlag.FORWARD : 0);
  out[5] = out[6] = out[7] = 0;
  put32(out, 8, h.sender);
  out.set(h.releaseId, 12);
  put32(out, 28, h.unit);
  put16(out, 32, h.fragment);
  put16(out, 34, h.fragmentCount);
  put16(out, 36, h.fragmentBytes);
  // 1.5: the copy tree's origin position + 1, only on forward copies; 0 otherwise.
  put16(out, 38, h.forward && h.treeOrigin !== undefined && h.treeOrigin >= 0 && h.treeOrigin < 0xffff ? h.treeOrigin + 1 : 0);
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = (v >>> 16) & 0xff;
  b[at + 2] = (v >>> 8) & 0xff;
  b[at + 3] = v & 0xff;
}
function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}

export function encodeData(p: Omit<DataPacket, 'type'>): Uint8Array {
  const out = new Uint8Array(DATA_HEADER_BYTES + p.payload.length);
  writeDataHeader(out, p);
  out.set(p.payload, DATA_HEADER_BYTES);
  return out;
}

export function encodeNack(p: Omit<NackPacket, 'type'>): Uint8Array {
  const n = bitmapBytes(p.fragmentCount);
  if (p.missing.length < n) throw new RangeError('nack bitmap shorter than fragment count');
  const out = new Uint8Array(NACK_HEADER_BYTES + n + AUTH_TRAILER_BYTES);
  const view = new DataView(out.buffer);
  writeCommon(out, view, PacketType.NACK, 0, p.sender, p.releaseId);
  view.setUint32(28, p.unit >>> 0);
  view.setUint16(32, p.fragmentCount);
  view.setUint16(34, p.fragmentBytes);
  out.set(p.missing.subarray(0, n), NACK_HEADER_BYTES);
  clearTailBits(out.subarray(NACK_HEADER_BYTES, NACK_HEADER_BYTES + n), p.fragmentCount);
  return out;
}

export function encodeAnnounce(p: Omit<AnnouncePacket, 'type'>): Uint8Array {
  const n = bitmapBytes(p.unitCount);
  if (p.have.length < n) throw new RangeError('announce bitmap shorter than unit count');
  const out = new Uint8Array(ANNOUNCE_HEADER_BYTES + n + AUTH_TRAILER_BYTES);
  const view = new DataView(out.buffer);
  writeCommon(out, view, PacketType.ANNOUNCE, p.complete ? 1 : 0, p.sender, p.releaseId);
  view.setUint32(28, p.firstUnit >>> 0);
  view.setUint32(32, p.unitCount >>> 0);
  out.set(p.have.subarray(0, n), ANNOUNCE_HEADER_BYTES);
  clearTailBits(out.subarray(ANNOUNCE_HEADER_BYTES, ANNOUNCE_HEADER_BYTES + n), p.unitCount);
  return out;
}

export function encodeFeedback(p: Omit<FeedbackPacket, 'type' | 'auth'>): Uint8Array {
  const out = new Uint8Array(p.atEcho ? FEEDBACK_AT_ECHO_BYTES : FEEDBACK_BYTES);
  const view = new DataView(out.buffer);
  writeCommon(out, view, PacketType.FEEDBACK, p.atEcho ? FEEDBACK_AT_ECHO : 0, p.sender, p.releaseId);
  view.setUint32(28, p.receivedDatagrams >>> 0);
  view.setUint32(32, p.receivedBytes >>> 0);
  view.setBigUint64(36, BigInt.asUintN(64, p.echoSeq));
  view.setUint32(44, Math.max(0, Math.min(0xffffffff, Math.round(p.echoHoldMs))));
  if (p.atEcho) {
    view.setUint32(48, p.atEcho.datagrams >>> 0);
    view.setUint32(52, p.atEcho.bytes >>> 0);
  }
  return out;
}

function clearTailBits(bits: Uint8Array, count: number): void {
  const rem = count & 7;
  if (rem !== 0 && bits.length > 0) bits[bits.length - 1] &= (0xff << (8 - rem)) & 0xff;
}

function tailBitsClear(bits: Uint8Array, count: number): boolean {
  const rem = count & 7;
  if (rem === 0 || bits.length === 0) return true;
  return (bits[bits.length - 1] & (0xff >>> rem)) === 0;
}

/** The common header's own checks, for every type: length, magic, version, reserved bytes 5-7; null when they pass. */
export function commonHeaderProblem(buf: Uint8Array, view: DataView): 'short' | 'magic' | 'version' | 'reserved' | null {
  if (buf.length < COMMON_HEADER_BYTES) return 'short';
  if (buf[0] !== MAGIC0 || buf[1] !== MAGIC1) return 'magic';
  return buf[2] !== PROTOCOL_VERSION ? 'version' : buf[5] !== 0 || view.getUint16(6) !== 0 ? 'reserved' : null;
}

/** Decode one datagram. Never throws; a bad datagram yields the reason it was dropped. */
export function decodePacket(buf: Uint8Array): DecodeResult {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = commonHeaderProblem(buf, view);
  if (bad) return { ok: false, reason: bad };
  const type = buf[3];
  const flags = buf[4];
  const sender = view.getUint32(8);
  const releaseId = buf.subarray(12, 28);
  switch (type) {
    case PacketType.DATA: {
      if (buf.length < DATA_HEADER_BYTES) return { ok: false, reason: 'short' };
      if ((flags & ~(DataFlag.REPAIR | DataFlag.FORWARD)) !== 0) return { ok: false, reason: 'reserved' };
      // 1.5: bytes 38-39 name a copy tree's origin (+1), and only on a forward copy.
      const tree = view.getUint16(38);
      if (tree !== 0 && ((flags & DataFlag.FORWARD) === 0)) return { ok: false, reason: 'reserved' };
      const unit = view.getUint32(28);
      const fragment = view.getUint16(32);
      const fragmentCount = view.getUint16(34);
      const fragmentBytes = view.getUint16(36);
      if (fragmentBytes < MIN_FRAGMENT_BYTES || fragmentBytes > MAX_FRAGMENT_BYTES) return { ok: false, reason: 'fragment-size' };
      if (fragmentCount === 0 || fragment >= fragmentCount) return { ok: false, reason: 'fragment-range' };
      const payload = buf.subarray(DATA_HEADER_BYTES);
      // Every fragment but the last fills the grid exactly; the last is 1..fragmentBytes.
      if (fragment < fragmentCount - 1 ? payload.length !== fragmentBytes : payload.length < 1 || payload.length > fragmentBytes) {
        return { ok: false, reason: 'length' };
      }
      // One object shape for every DATA packet (treeOrigin present, undefined without a tree): this runs per datagram.
      return {
        ok: true,
        packet: { type: PacketType.DATA, sender, releaseId, repair: (flags & DataFlag.REPAIR) !== 0, forward: (flags & DataFlag.FORWARD) !== 0, treeOrigin: tree ? tree - 1 : undefined, unit, fragment, fragmentCount, fragmentBytes, payload },
      };
    }
    case PacketType.NACK: {
      if (flags !== 0) return { ok: false, reason: 'reserved' };
      if (buf.length < NACK_HEADER_BYTES) return { ok: false, reason: 'short' };
      const unit = view.getUint32(28);
      const fragmentCount = view.getUint16(32);
      const fragmentBytes = view.getUint16(34);
      if (fragmentCount === 0) return { ok: false, reason: 'fragment-range' };
      if (fragmentBytes < MIN_FRAGMENT_BYTES || fragmentBytes > MAX_FRAGMENT_BYTES) return { ok: false, reason: 'fragment-size' };
      if (buf.length !== NACK_HEADER_BYTES + bitmapBytes(fragmentCount) + AUTH_TRAILER_BYTES) return { ok: false, reason: 'length' };
      const missing = buf.subarray(NACK_HEADER_BYTES, buf.length - AUTH_TRAILER_BYTES);
      if (!tailBitsClear(missing, fragmentCount)) return { ok: false, reason: 'bitmap' };
      return { ok: true, packet: { type: PacketType.NACK, sender, releaseId, unit, fragmentCount, fragmentBytes, missing, auth: trailer(buf, view) } };
    }
    case PacketType.ANNOUNCE: {
      if ((flags & ~1) !== 0) return { ok: false, reason: 'reserved' };
      if (buf.length < ANNOUNCE_HEADER_BYTES) return { ok: false, reason: 'short' };
      const firstUnit = view.getUint32(28);
      const unitCount = view.getUint32(32);
      if (buf.length !== ANNOUNCE_HEADER_BYTES + bitmapBytes(unitCount) + AUTH_TRAILER_BYTES) return { ok: false, reason: 'length' };
      const have = buf.subarray(ANNOUNCE_HEADER_BYTES, buf.length - AUTH_TRAILER_BYTES);
      if (firstUnit + unitCount > 0xffffffff) return { ok: false, reason: 'fragment-range' };
      if (!tailBitsClear(have, unitCount)) return { ok: false, reason: 'bitmap' };
      return { ok: true, packet: { type: PacketType.ANNOUNCE, sender, releaseId, firstUnit, unitCount, complete: (flags & 1) !== 0, have, auth: trailer(buf, view) } };
    }
    case PacketType.FEEDBACK: {
      if ((flags & ~FEEDBACK_AT_ECHO) !== 0) return { ok: false, reason: 'reserved' };
      const atEcho = (flags & FEEDBACK_AT_ECHO) !== 0;
      if (buf.length !== (atEcho ? FEEDBACK_AT_ECHO_BYTES : FEEDBACK_BYTES)) return { ok: false, reason: 'length' };
      return {
        ok: true,
        packet: {
          type: PacketType.FEEDBACK,
          sender,
          releaseId,
          receivedDatagrams: view.getUint32(28),
          receivedBytes: view.getUint32(32),
          echoSeq: view.getBigUint64(36),
          echoHoldMs: view.getUint32(44),
          ...(atEcho ? { atEcho: { datagrams: view.getUint32(48), bytes: view.getUint32(52) } } : {}),
          auth: trailer(buf, view),
        },
      };
    }
    default:
      return { ok: false, reason: 'type' };
  }
}

export function trailer(buf: Uint8Array, view: DataView): ControlAuth {
  const macAt = buf.length - AUTH_MAC_BYTES;
  return { signed: buf.subarray(0, macAt), seq: view.getBigUint64(macAt - AUTH_SEQ_BYTES), mac: buf.subarray(macAt) };
}

/**
 * The sender id of a datagram (bytes 8..11), or null when it is too short to have one:
 * a receiver skips its own multicast before decoding it.
 */
export function peekSender(buf: Uint8Array): number | null {
  if (buf.length < COMMON_HEADER_BYTES) return null;
  return ((buf[8] << 24) | (buf[9] << 16) | (buf[10] << 8) | buf[11]) >>> 0;
}

/**
 * Fields of a DATA datagram this process wrote with writeDataHeader (trusted bytes: a
 * sender's bookkeeping of what left), or null when it is not one. Untrusted bytes go
 * through decodePacket.
 */
export function peekOwnData(d: Uint8Array): { repair: boolean; unit: number; fragment: number; fragmentCount: number; payloadBytes: number } | null {
  if (d.length < DATA_HEADER_BYTES || d[3] !== PacketType.DATA) return null;
  return {
    repair: (d[4] & DataFlag.REPAIR) !== 0,
    unit: ((d[28] << 24) | (d[29] << 16) | (d[30] << 8) | d[31]) >>> 0,
    fragment: (d[32] << 8) | d[33],
    fragmentCount: (d[34] << 8) | d[35],
    payloadBytes: d.length - DATA_HEADER_BYTES,
  };
}

/** Whether a datagram this process wrote is a copy (DATA without the repair flag). */
export function isOwnCopy(d: Uint8Array): boolean {
  return d.length >= DATA_HEADER_BYTES && d[3] === PacketType.DATA && (d[4] & DataFlag.REPAIR) === 0;
}

/** Fragment `fragment` of a unit's bytes on a grid of `fragmentBytes` (a view, no copy; the last is short). */
export function fragmentSlice(unit: Uint8Array, fragment: number, fragmentBytes: number): Uint8Array {
  return unit.subarray(fragment * fragmentBytes, Math.min(unit.length, (fragment + 1) * fragmentBytes));
}

/** Payload bytes of fragment `fragment` of a unit of `unitBytes`: fragmentBytes but for the last. */
export function fragmentPayloadBytes(unitBytes: number, fragment: number, fragmentBytes: number): number {
  return Math.min(fragmentBytes, unitBytes - fragment * fragmentBytes);
}
