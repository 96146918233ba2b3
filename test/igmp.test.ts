import test from 'ava';
import { buildGeneralQuery, decodeCode, encodeCode, inetChecksum, ipv4Less, parseIgmpPacket } from '../src/net/igmp';

/** An IPv4 header (with the Router Alert option) around `payload`, as a raw socket delivers it. */
function ipPacket(payload: Buffer, src = '10.0.0.5', dst = '224.0.0.1', ttl = 1): Buffer {
  const h = Buffer.alloc(24);
  h[0] = 0x46;
  h.writeUInt16BE(24 + payload.length, 2);
  h[8] = ttl;
  h[9] = 2;
  Buffer.from(src.split('.').map(Number)).copy(h, 12);
  Buffer.from(dst.split('.').map(Number)).copy(h, 16);
  Buffer.from([0x94, 0x04, 0, 0]).copy(h, 20);
  return Buffer.concat([h, payload]);
}

test('query codes: small values as they are, large ones in the RFC 3376 float form, decoded back', (t) => {
  t.is(encodeCode(100), 100);
  t.is(encodeCode(125), 125);
  for (const v of [128, 200, 1000, 3000, 31744]) {
    const d = decodeCode(encodeCode(v));
    t.true(d <= v && d > v * 0.9, `${v} -> ${d}`);
  }
  t.is(decodeCode(0x80), 128);
});

test('a general query is 12 bytes with a valid checksum, group 0.0.0.0, and the timers it announces', (t) => {
  const q = buildGeneralQuery({ maxRespMs: 10_000, robustness: 2, intervalS: 125 });
  t.is(q.length, 12);
  t.is(q[0], 0x11);
  t.is(inetChecksum(q), 0, 'checksum over the message sums to zero');
  const m = parseIgmpPacket(ipPacket(q))!;
  t.like(m, { type: 0x11, version: 3, group: '0.0.0.0', maxRespMs: 10_000, robustness: 2, intervalS: 125, checksumOk: true, routerAlert: true, ttl: 1, source: '10.0.0.5', destination: '224.0.0.1' });
  const bad = Buffer.from(q);
  bad[5] ^= 1;
  t.false(parseIgmpPacket(ipPacket(bad))!.checksumOk);
});

test('an IGMPv2 query (8 bytes) parses as version 2; non-IGMP and short packets are refused', (t) => {
  const v2 = Buffer.from([0x11, 100, 0, 0, 0, 0, 0, 0]);
  v2.writeUInt16BE(inetChecksum(v2), 2);
  t.like(parseIgmpPacket(ipPacket(v2)), { version: 2, maxRespMs: 10_000, checksumOk: true });
  const udp = ipPacket(v2);
  udp[9] = 17;
  t.is(parseIgmpPacket(udp), null);
  t.is(parseIgmpPacket(Buffer.alloc(10)), null);
});

test('the election compares addresses as numbers, not strings', (t) => {
  t.true(ipv4Less('10.200.0.9', '10.200.0.10'));
  t.false(ipv4Less('10.200.0.10', '10.200.0.9'));
});
