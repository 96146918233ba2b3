import test from 'ava';
import { randomBytes } from 'node:crypto';
import { deriveGroupKey, sealControl, verifyControl } from '../src/wire/auth';
import { AUTH_TRAILER_BYTES, decodePacket, encodeAnnounce, encodeData, encodeFeedback, encodeNack, FEEDBACK_BYTES, fragmentPayloadBytes, fragmentSlice, isOwnCopy, PacketType, DATA_HEADER_BYTES, peekOwnData, peekSender, setBit } from '../src/wire/packet';

const rid = new Uint8Array(16).map((_, i) => i + 1);

test('DATA round-trips and the payload is a view, not a copy', (t) => {
  const payload = new Uint8Array(100).fill(7);
  const buf = encodeData({ sender: 0xdeadbeef, releaseId: rid, repair: true, unit: 70000, fragment: 3, fragmentCount: 4, fragmentBytes: 128, payload });
  const r = decodePacket(buf);
  t.true(r.ok);
  if (!r.ok || r.packet.type !== PacketType.DATA) return t.fail();
  t.is(r.packet.sender, 0xdeadbeef);
  t.is(r.packet.unit, 70000);
  t.is(r.packet.fragment, 3);
  t.true(r.packet.repair);
  t.deepEqual([...r.packet.releaseId], [...rid]);
  t.is(r.packet.payload.length, 100);
  t.is(r.packet.payload.buffer, buf.buffer);
});

test('DATA: a middle fragment must fill the grid; the last may be short', (t) => {
  const mk = (fragment: number, len: number) =>
    decodePacket(encodeData({ sender: 1, releaseId: rid, repair: false, unit: 0, fragment, fragmentCount: 4, fragmentBytes: 128, payload: new Uint8Array(len) }));
  t.true(mk(0, 128).ok);
  t.deepEqual(mk(0, 127), { ok: false, reason: 'length' });
  t.true(mk(3, 1).ok);
  t.deepEqual(mk(3, 129), { ok: false, reason: 'length' });
  t.deepEqual(mk(3, 0), { ok: false, reason: 'length' });
});

test('DATA: fragment index beyond the count is rejected', (t) => {
  const buf = encodeData({ sender: 1, releaseId: rid, repair: false, unit: 0, fragment: 0, fragmentCount: 4, fragmentBytes: 128, payload: new Uint8Array(128) });
  new DataView(buf.buffer).setUint16(32, 4);
  t.deepEqual(decodePacket(buf), { ok: false, reason: 'fragment-range' });
});

test('NACK round-trips; stray bits past the count are rejected', (t) => {
  const missing = new Uint8Array(2);
  setBit(missing, 0);
  setBit(missing, 9);
  const buf = encodeNack({ sender: 5, releaseId: rid, unit: 9, fragmentCount: 10, fragmentBytes: 1000, missing });
  const r = decodePacket(buf);
  if (!r.ok || r.packet.type !== PacketType.NACK) return t.fail();
  t.is(r.packet.unit, 9);
  t.deepEqual([...r.packet.missing], [0x80, 0x40]);
  buf[buf.length - 1 - AUTH_TRAILER_BYTES] |= 0x01; // bit 15: past fragment 9
  t.deepEqual(decodePacket(buf), { ok: false, reason: 'bitmap' });
});

test('ANNOUNCE round-trips with the complete flag', (t) => {
  const have = new Uint8Array([0xff, 0x80]);
  const r = decodePacket(encodeAnnounce({ sender: 2, releaseId: rid, firstUnit: 8, unitCount: 9, complete: true, have }));
  if (!r.ok || r.packet.type !== PacketType.ANNOUNCE) return t.fail();
  t.is(r.packet.firstUnit, 8);
  t.is(r.packet.unitCount, 9);
  t.true(r.packet.complete);
});

test('FEEDBACK round-trips its counters and echo, and refuses any other length or flags', (t) => {
  const f = encodeFeedback({ sender: 5, releaseId: rid, receivedDatagrams: 0xffffffff, receivedBytes: 7, echoSeq: 1_700_000_000_000_000n, echoHoldMs: 42 });
  t.is(f.length, FEEDBACK_BYTES);
  const r = decodePacket(f);
  if (!r.ok || r.packet.type !== PacketType.FEEDBACK) return t.fail(JSON.stringify(r));
  t.is(r.packet.receivedDatagrams, 0xffffffff);
  t.is(r.packet.receivedBytes, 7);
  t.is(r.packet.echoSeq, 1_700_000_000_000_000n);
  t.is(r.packet.echoHoldMs, 42);
  t.truthy(r.packet.auth, 'a control packet: it carries the authentication trailer');
  t.deepEqual(decodePacket(f.subarray(0, f.length - 1)), { ok: false, reason: 'length' });
  const flagged = f.slice();
  flagged[4] = 2;
  t.deepEqual(decodePacket(flagged), { ok: false, reason: 'reserved' });
  // Flag AT_ECHO (1.2) says 8 more bytes: a 72-byte packet with it is refused.
  flagged[4] = 1;
  t.deepEqual(decodePacket(flagged), { ok: false, reason: 'length' });
});

test('FEEDBACK at the echo (1.2): flag 1, 80 bytes, the counters as of the echoed ANNOUNCE round-trip', (t) => {
  const f = encodeFeedback({ sender: 5, releaseId: rid, receivedDatagrams: 900, receivedBytes: 9000, echoSeq: 77n, echoHoldMs: 3, atEcho: { datagrams: 0xfffffffe, bytes: 8000 } });
  t.is(f.length, FEEDBACK_BYTES + 8);
  t.is(f[4], 1);
  const r = decodePacket(f);
  if (!r.ok || r.packet.type !== PacketType.FEEDBACK) return t.fail(JSON.stringify(r));
  t.is(r.packet.receivedDatagrams, 900);
  t.deepEqual(r.packet.atEcho, { datagrams: 0xfffffffe, bytes: 8000 });
  t.is(r.packet.echoSeq, 77n);
  t.deepEqual(decodePacket(f.subarray(0, FEEDBACK_BYTES)), { ok: false, reason: 'length' });
  const plain = f.slice();
  plain[4] = 0;
  t.deepEqual(decodePacket(plain), { ok: false, reason: 'length' });
});

test('rejects short, bad magic, unknown version and unknown type', (t) => {
  const good = encodeData({ sender: 1, releaseId: rid, repair: false, unit: 0, fragment: 0, fragmentCount: 1, fragmentBytes: 64, payload: new Uint8Array(10) });
  t.deepEqual(decodePacket(good.subarray(0, 20)), { ok: false, reason: 'short' });
  t.deepEqual(decodePacket(good.subarray(0, DATA_HEADER_BYTES - 1)), { ok: false, reason: 'short' });
  const m = good.slice();
  m[0] = 0;
  t.deepEqual(decodePacket(m), { ok: false, reason: 'magic' });
  const v = good.slice();
  v[2] = 2;
  t.deepEqual(decodePacket(v), { ok: false, reason: 'version' });
  const ty = good.slice();
  ty[3] = 9;
  t.deepEqual(decodePacket(ty), { ok: false, reason: 'type' });
});

test('control packets carry a MAC under the group key: it verifies, and fails on any change, another key or another release', (t) => {
  const key = randomBytes(32);
  const buf = sealControl(encodeNack({ sender: 5, releaseId: rid, unit: 9, fragmentCount: 10, fragmentBytes: 1000, missing: new Uint8Array([0x80, 0x40]) }), key, 42n);
  const r = decodePacket(buf);
  if (!r.ok || r.packet.type !== PacketType.NACK) return t.fail();
  t.is(r.packet.auth!.seq, 42n);
  t.true(verifyControl(r.packet.auth!, key));
  t.false(verifyControl(r.packet.auth!, randomBytes(32)), 'another key');
  for (let at = 0; at < buf.length; at++) {
    const bad = buf.slice();
    bad[at] ^= 0x10;
    const d = decodePacket(bad);
    const accepted = d.ok && d.packet.type !== PacketType.DATA && verifyControl(d.packet.auth!, key);
    t.false(accepted, `byte ${at} changed and still accepted`);
  }
  const k1 = deriveGroupKey(Buffer.alloc(32, 1), 'a'.repeat(32), 'g');
  t.notDeepEqual(k1, deriveGroupKey(Buffer.alloc(32, 1), 'b'.repeat(32), 'g'), 'a new release rotates the key');
  t.notDeepEqual(k1, deriveGroupKey(Buffer.alloc(32, 1), 'a'.repeat(32), 'h'), 'each group has its own');
  t.deepEqual(k1, deriveGroupKey(Buffer.alloc(32, 1), 'a'.repeat(32), 'g'), 'stable across server restarts');
});

test('peekSender and peekOwnData read back what writeDataHeader wrote; other bytes give null', (t) => {
  const rel = new Uint8Array(16).fill(7);
  const d = encodeData({ sender: 0xdeadbeef, releaseId: rel, repair: true, unit: 70000, fragment: 513, fragmentCount: 600, fragmentBytes: 100, payload: new Uint8Array(100) });
  t.is(peekSender(d), 0xdeadbeef);
  t.deepEqual(peekOwnData(d), { repair: true, unit: 70000, fragment: 513, fragmentCount: 600, payloadBytes: 100 });
  t.false(isOwnCopy(d));
  const copy = encodeData({ sender: 1, releaseId: rel, repair: false, forward: true, unit: 3, fragment: 0, fragmentCount: 1, fragmentBytes: 64, payload: new Uint8Array(5) });
  t.true(isOwnCopy(copy));
  t.is(peekSender(new Uint8Array(11)), null);
  t.is(peekOwnData(encodeNack({ sender: 1, releaseId: rel, unit: 0, fragmentCount: 8, fragmentBytes: 64, missing: new Uint8Array(1) })), null);
});

test('fragmentSlice cuts the grid: full fragments, then a short last one, as views', (t) => {
  const unit = new Uint8Array(250).map((_, i) => i);
  t.deepEqual([0, 1, 2].map((f) => fragmentSlice(unit, f, 100).length), [100, 100, 50]);
  t.deepEqual([0, 1, 2].map((f) => fragmentPayloadBytes(250, f, 100)), [100, 100, 50]);
  t.is(fragmentSlice(unit, 2, 100)[0], 200);
  t.is(fragmentSlice(unit, 1, 100).buffer, unit.buffer);
});

test('1.5: a forward copy carries its copy tree origin in bytes 38-39 (position + 1); elsewhere those bytes must be 0', (t) => {
  const payload = new Uint8Array(64).fill(3);
  const h = { sender: 9, releaseId: rid, repair: false, forward: true, unit: 5, fragment: 0, fragmentCount: 1, fragmentBytes: 64, payload };
  for (const origin of [0, 1, 4095, 0xfffe]) {
    const buf = encodeData({ ...h, treeOrigin: origin });
    t.is((buf[38] << 8) | buf[39], origin + 1);
    const r = decodePacket(buf);
    if (!r.ok || r.packet.type !== PacketType.DATA) return t.fail();
    t.is(r.packet.treeOrigin, origin);
    t.true(r.packet.forward);
  }
  // no tree: 0, and the packet decodes without treeOrigin (1.4 bytes exactly)
  const plain = encodeData(h);
  t.is(plain[38] | plain[39], 0);
  const r = decodePacket(plain);
  t.true(r.ok && r.packet.type === PacketType.DATA && r.packet.treeOrigin === undefined);
  // a tree origin on a copy that is not a forward copy is refused, and never written
  const bad = encodeData({ ...h, treeOrigin: 2 });
  bad[4] = 0;
  t.deepEqual(decodePacket(bad), { ok: false, reason: 'reserved' });
  t.is(encodeData({ ...h, forward: false, treeOrigin: 2 })[39], 0);
});
