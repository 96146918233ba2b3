import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';
import { decodePacket, PacketType } from '../src/wire/packet';
import { AHEAD_MAX_BYTES, AHEAD_MAX_MS, AHEAD_UNITS, AheadBuffer } from '../src/agent/stream-ahead';
import { StreamCore, StreamWindow } from '../src/agent/stream-core';
import type { StreamBatchBody } from '../src/release/stream-manifest';

/*
 * LAN copies of a stream unit that arrive before the batch naming it (stream-ahead.ts):
 * the lessee fetched and copied the unit before this member verified the batch (its
 * BATCH packet lost or late). They are held, bounded in units, bytes and time, and handled
 * once the batch comes; before, they were dropped and the unit NACKed whole.
 */

test('the holding buffer keeps copies of units just past the known ones, within its byte cap and age, and hands them back in order', (t) => {
  const a = new AheadBuffer();
  const d = (n: number, len = 1000) => Buffer.alloc(len, n);
  t.true(a.hold(d(1), 10, 10, undefined, 0));
  t.true(a.hold(d(2), 11, 10, undefined, 1));
  t.false(a.hold(d(3), 10 + AHEAD_UNITS, 10, undefined, 2), 'too far ahead: not held');
  t.is(a.counts.tooFar, 1);
  a.announce([10, 12, 10 + AHEAD_UNITS + 5], 10, 3);
  // The batch of unit 10 comes: unit 10's copy and announce are released, unit 11's stays.
  const r = a.release(11, 5);
  t.deepEqual(r.datagrams.map((x) => x.buf[0]), [1]);
  t.deepEqual(r.announced, [10]);
  t.is(a.heldBytes, 1000);
  // Past the age limit a held copy is dropped, not handed back.
  const late = a.release(12, 1 + AHEAD_MAX_MS + 1);
  t.deepEqual(late.datagrams, []);
  t.deepEqual(late.announced, [], 'unit 12 announced too long ago');
  t.is(a.counts.expired, 1);
  t.is(a.heldBytes, 0);
  // The byte cap: the oldest go.
  const n = Math.ceil(AHEAD_MAX_BYTES / 60_000) + 5;
  for (let i = 0; i < n; i++) a.hold(d(i % 250, 60_000), 20, 20, undefined, 10);
  t.true(a.heldBytes <= AHEAD_MAX_BYTES, `${a.heldBytes} bytes held`);
  t.true(a.counts.full >= 5);
  t.is(a.release(21, 11).datagrams.length, n - a.counts.full);
  t.is(a.heldBytes, 0);
});

/** Two stream cores over an in-memory LAN; `b` learns the batch of unit 1 only after `a` copied it. */
function pair() {
  const UNIT = 64 * 1024;
  const id = randomBytes(16).toString('hex');
  const bytes = [randomBytes(UNIT), randomBytes(UNIT - 100)];
  const hash = (x: Buffer) => createHash('sha256').update(x).digest('hex');
  const batch = (i: number): StreamBatchBody => ({ v: 1, stream: 's', id, batch: i, first: i, offset: i * UNIT, count: 1, unitSize: UNIT, units: [hash(bytes[i])], lastLength: bytes[i].length, prev: (i + 1).toString(16).padStart(64, '0'), time: '2026-12-03T00:00:00.000Z' });
  let now = 1_000_000;
  const mk = (member: string, senderId: number) => new StreamCore({ member, group: 'g', senderId, fragmentBytes: 1200, rateBytesPerSec: 50e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random: Math.random }, new StreamWindow(id, UNIT), now);
  const a = mk('a', 1);
  const b = mk('b', 2);
  const groupKey = randomBytes(32).toString('base64');
  const map = { members: [{ id: 'a', verifiedUnits: 0, complete: false, address: '10.0.0.1' }, { id: 'b', verifiedUnits: 0, complete: false, address: '10.0.0.2' }], holders: [0, 0], groupComplete: false, groupKey, lanStart: true };
  const stored = new Map<number, Buffer>();
  /** Deliver what `from` sends to `to`; `keep` says which datagrams arrive. */
  const drain = (from: StreamCore, to: StreamCore, keep: (d: Uint8Array) => boolean = () => true) => {
    for (let tr = from.pollTransmit(now); tr; tr = from.pollTransmit(now)) {
      from.transmitted(tr, tr.datagrams.length, now);
      for (const d of tr.datagrams) if (keep(d)) to.handleDatagram(Uint8Array.from(d), now);
    }
    for (const c of [a, b]) {
      for (let e = c.pollEvent(); e; e = c.pollEvent()) {
        if (e.type === 'read') c.unitRead(e.unit, Buffer.from(bytes[e.unit]), now); // a repairer reads the unit back
        if (e.type === 'store' && c === b) {
          stored.set(e.unit, Buffer.from(e.bytes));
          c.unitStored(e.unit, now);
        }
      }
    }
  };
  /** `keepBA`: which of b's datagrams reach a. */
  const tick = (ms: number, keepBA?: (d: Uint8Array) => boolean) => {
    now += ms;
    for (const c of [a, b]) {
      const at = c.pollTimeout();
      if (at !== null && at <= now) c.handleTimeout(now);
    }
    drain(a, b);
    drain(b, a, keepBA);
  };
  for (const c of [a, b]) {
    c.batchVerified(batch(0), now);
    c.setSplitMap(map, now);
  }
  drain(a, b);
  drain(b, a); // each heard the other's announce: copies are taken from a known sender
  a.batchVerified(batch(1), now);
  // a fetched unit 1 and copies it; b has not verified the batch of unit 1 yet.
  const buf = a.takeBuffer(bytes[1].length);
  buf.set(bytes[1]);
  a.fetchStarted(1, now);
  a.fetchProgress(1, buf, bytes[1].length, now);
  a.fetchEnded(1, now);
  a.unitFetched(1, buf, now);
  return { a, b, now: () => now, tick, drain, stored, bytes, batch };
}

test("a member that verifies a unit's batch after its copies came still takes the unit from them, with no NACK", (t) => {
  const p = pair();
  p.drain(p.a, p.b);
  t.is(p.stored.size, 0, 'nothing taken before the batch');
  t.true(p.b.aheadBuf.counts.held > 40, `${p.b.aheadBuf.counts.held} copies held`);
  const nacks = p.b.stats.nacksSent;
  p.b.batchVerified(p.batch(1), p.now());
  p.drain(p.a, p.b);
  t.true(p.stored.get(1)?.equals(p.bytes[1]), 'unit 1 assembled from the held copies');
  t.is(p.b.stats.nacksSent, nacks, 'no NACK');
  t.is(p.b.aheadBuf.heldBytes, 0);
  t.is(p.b.aheadBuf.counts.replayed, p.b.aheadBuf.counts.held);
});

test('copies of a unit ahead of its batch, some lost: the announce that came with them makes the gap NACKable as soon as the batch comes', (t) => {
  const p = pair();
  let i = 0;
  p.drain(p.a, p.b, () => i++ % 7 !== 3); // every seventh datagram lost: copies, and maybe the announce after them
  for (let k = 0; k < 40; k++) p.tick(5); // a announces again while b still lacks the batch
  t.is(p.stored.size, 0);
  p.b.batchVerified(p.batch(1), p.now());
  t.true((p.b as unknown as { availableMissing: Set<number> }).availableMissing.has(1), "a's announce of unit 1, held: NACKable at once, not at a's next announce");
  for (let k = 0; k < 200 && !p.stored.has(1); k++) p.tick(5);
  t.true(p.stored.get(1)?.equals(p.bytes[1]), 'unit 1 complete after a repair');
  t.true(p.b.stats.nacksSent >= 1, 'NACKed for what was lost');
});

test('a stream member echoes a NACK that brought nothing, 15 ms on, and has the unit long before its holdoff would have asked again', (t) => {
  // Streams only (releases do not echo). Here b's first NACK is lost: before, b asked again
  // only once its holdoff ended (80 ms until a repair round trip is timed, 20 ms at least)
  // and a new backoff.
  const p = pair();
  p.b.batchVerified(p.batch(1), p.now());
  p.drain(p.a, p.b, (d) => {
    const q = decodePacket(d);
    return !(q.ok && q.packet.type === PacketType.DATA && q.packet.unit === 1 && q.packet.fragment === 5);
  }); // fragment 5 of the copy lost
  let lost = 0;
  const firstNackLost = (d: Uint8Array) => {
    const q = decodePacket(d);
    if (!(q.ok && q.packet.type === PacketType.NACK) || lost > 0) return true;
    lost++;
    return false;
  };
  let nackAt: number | null = null;
  for (let k = 0; k < 300 && !p.stored.has(1); k++) {
    p.tick(1, firstNackLost);
    if (nackAt === null && p.b.stats.nacksSent > 0) nackAt = p.now();
  }
  t.true(p.stored.get(1)?.equals(p.bytes[1]), 'unit 1 complete');
  t.is(lost, 1, 'the first NACK was lost');
  t.is(p.b.nackEchoes, 1, 'one echo');
  t.is(p.b.stats.nacksSent, 2, 'the NACK and its echo');
  const took = p.now() - nackAt!;
  t.log(`unit 1 held ${took} ms after the NACK (echo ${AGENT_DEFAULTS.streamNackEchoMs} ms, holdoff ${AGENT_DEFAULTS.nackHoldoffMs} ms until a round trip is timed)`);
  t.true(took < AGENT_DEFAULTS.nackHoldoffMs / 2, `${took} ms`);
});
