import { createHmac, timingSafeEqual } from 'node:crypto';
import { AUTH_MAC_BYTES, AUTH_SEQ_BYTES, ControlAuth } from './packet';

/**
 * MACs on LAN control packets (NACK, ANNOUNCE): HMAC-SHA256 under the group key,
 * truncated to 16 bytes, over the packet up to the MAC (the sequence number
 * included). The server derives one key per release and group and hands it to
 * members in the join and heartbeat answers, over the authenticated channel.
 */
export const GROUP_KEY_BYTES = 32;

/** Fill in the sequence number and MAC of an encoded control packet, in place. */
export function sealControl(packet: Uint8Array, key: Uint8Array, seq: bigint): Uint8Array {
  const macAt = packet.length - AUTH_MAC_BYTES;
  new DataView(packet.buffer, packet.byteOffset, packet.byteLength).setBigUint64(macAt - AUTH_SEQ_BYTES, seq);
  const mac = createHmac('sha256', key).update(packet.subarray(0, macAt)).digest();
  packet.set(mac.subarray(0, AUTH_MAC_BYTES), macAt);
  return packet;
}

export function verifyControl(auth: ControlAuth, key: Uint8Array): boolean {
  const mac = createHmac('sha256', key).update(auth.signed).digest().subarray(0, AUTH_MAC_BYTES);
  return timingSafeEqual(mac, auth.mac);
}

/** The group key of (release, group) under the server's secret. */
export function deriveGroupKey(serverSecret: Uint8Array, releaseId: string, group: string): Buffer {
  return createHmac('sha256', serverSecret).update(`fleetcast group key v1\0${releaseId}\0${group}`).digest();
}
