import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';
import { LanCore } from '../src/agent/core/lan-core';
import type { CoreSplitMap } from '../src/agent/core/types';
import { RepairScheduler } from '../src/agent/repair-scheduler';
import { bitmapBytes, decodePacket, encodeData, fragmentCountFor, fragmentSlice, getBit, PacketType, setBit } from '../src/wire/packet';

/**
 * When a receiver's gap is ripe for a NACK, and when a repairer answers a re-ask (issue 19,
 * bench/results/stream.md "Where the tail went"): a unit whose last fragment arrived is ripe
 * gapAfterLastFragmentMs after its last data, one whose last fragment is lost only after
 * gapQuietMs; a repair lost on the way is sent again when the receiver asks again after its
 * shortest holdoff. Fake clock, no sockets.
 */
const UNIT = 16 * 1024;
const FB = 1200;

/** A holder `a` and a receiver `b` of a one-unit release; b takes the copy of it without `drop`. Returns when b first NACKed and for which fragments. */
function firstNack(drop: number[]): { afterMs: number; fragments: number[] } {
  const bytes = randomBytes(UNIT);
  const manifest = { idBytes: randomBytes(16), size: UNIT, unitSize: UNIT, unitCount: 1, units: [createHash('sha256').update(bytes).digest('hex')] };
  const start = 1_000_000;
  let now = start;
  // random 0: b's NACK backoff is 0, so the NACK goes at the first tick after the unit is ripe.
  const mk = (member: string, senderId: number, have: Uint8Array) =>
    new LanCore({ manifest, member, group: 'g', senderId, fragmentBytes: FB, have, rateBytesPerSec: 20e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random: () => 0 }, now);
  const all = new Uint8Array(1);
  setBit(all, 0);
  const a = mk('a', 1, all);
  const b = mk('b', 2, new Uint8Array(1));
  const map: CoreSplitMap = {
    members: [
      { id: 'a', verifiedUnits: 1, complete: true, address: '10.0.0.1' },
      { id: 'b', verifiedUnits: 0, complete: false, address: '10.0.0.2' },
    ],
    holders: [0],
    groupComplete: false,
    groupKey: randomBytes(32).toString('base64'),
  };
  a.setSplitMap(map, now);
  b.setSplitMap(map, now);
  // a's announce: b learns that a holds the unit (and admits a's DATA).
  for (let tr = a.pollTransmit(now); tr; tr = a.pollTransmit(now)) {
    a.transmitted(tr, tr.datagrams.length, now);
    for (const d of tr.datagrams) b.handleDatagram(Uint8Array.from(d), now);
  }
  const fc = fragmentCountFor(UNIT, FB);
  for (let f = 0; f < fc; f++) {
    if (drop.includes(f)) continue;
    b.handleDatagram(encodeData({ sender: 1, releaseId: manifest.idBytes, repair: false, unit: 0, fragment: f, fragmentCount: fc, fragmentBytes: FB, payload: fragmentSlice(bytes, f, FB) }), now);
  }
  const dataAt = now;
  for (; now < start + 1000; now++) {
    const at = b.pollTimeout();
    if (at !== null && at <= now) b.handleTimeout(now);
    for (let tr = b.pollTransmit(now); tr; tr = b.pollTransmit(now)) {
      b.transmitted(tr, tr.datagrams.length, now);
      for (const d of tr.datagrams) {
        const r = decodePacket(d);
        if (!r.ok || r.packet.type !== PacketType.NACK) continue;
        const fragments: number[] = [];
        for (let f = 0; f < fc; f++) if (getBit(r.packet.missing, f)) fragments.push(f);
        return { afterMs: now - dataAt, fragments };
      }
    }
  }
  throw new Error('no NACK in 1 s');
}

test('a unit whose last fragment arrived is NACKed gapAfterLastFragmentMs after its last data, before gapQuietMs', (t) => {
  const fc = fragmentCountFor(UNIT, FB);
  const n = firstNack([3]);
  t.deepEqual(n.fragments, [3]);
  t.true(n.afterMs >= AGENT_DEFAULTS.gapAfterLastFragmentMs, `NACK ${n.afterMs} ms after the last data`);
  t.true(n.afterMs < AGENT_DEFAULTS.gapQuietMs, `NACK ${n.afterMs} ms after the last data, not before gapQuietMs`);
  t.true(fc > 4);
});

test('a unit whose last fragment is lost waits gapQuietMs: its sender may still be sending', (t) => {
  const fc = fragmentCountFor(UNIT, FB);
  const n = firstNack([3, fc - 1]);
  t.deepEqual(n.fragments, [3, fc - 1]);
  t.true(n.afterMs >= AGENT_DEFAULTS.gapQuietMs, `NACK ${n.afterMs} ms after the last data`);
});

test('a repair lost on the way is sent again when its receiver asks again after its shortest holdoff; a NACK that crossed it is not answered twice', (t) => {
  const { repairAggregateMs: aggregateMs, repairDedupMs: dedupMs, nackHoldoffMinMs } = AGENT_DEFAULTS;
  const r = new RepairScheduler({ aggregateMs, backoffMs: AGENT_DEFAULTS.repairBackoffMs, dedupMs, random: () => 0 });
  const missing = new Uint8Array(bitmapBytes(8));
  setBit(missing, 5);
  // The receiver's NACK at 0; the repair is due after the aggregation and leaves then.
  r.onNack(0, 8, missing, true, 0);
  const job = r.due(aggregateMs);
  t.deepEqual(job, [{ unit: 0, fragments: [5] }]);
  r.sawFragment(0, 5, 8, aggregateMs);
  // Another receiver's NACK, sent before the repair reached it, arrives just after: dropped.
  r.onNack(0, 8, missing, true, aggregateMs + 1);
  t.deepEqual(r.due(2 * aggregateMs + 1), []);
  // The first receiver lost the repair; it asks again after its holdoff floor at the soonest.
  r.onNack(0, 8, missing, true, nackHoldoffMinMs);
  t.deepEqual(r.due(nackHoldoffMinMs + aggregateMs), [{ unit: 0, fragments: [5] }]);
});
