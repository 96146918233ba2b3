import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';
import { LanCore } from '../src/agent/core/lan-core';
import type { CoreSplitMap } from '../src/agent/core/types';
import { bitmapBytes, setBit } from '../src/util/bits';
import { decodePacket, PacketType } from '../src/wire/packet';

/**
 * The LAN protocol core on its own (issue 16): no sockets, no timers, a fake clock. Two
 * members over an in-memory LAN with a loss pattern; one holds the release. (test/sim/
 * drives many cores; this file checks the core's contract with its driver.)
 */
const UNIT = 64 * 1024;
const FB = 1200;

function release(units: number) {
  const bytes = randomBytes(units * UNIT - 1000);
  const hashes: string[] = [];
  for (let u = 0; u < units; u++) hashes.push(createHash('sha256').update(bytes.subarray(u * UNIT, Math.min(bytes.length, (u + 1) * UNIT))).digest('hex'));
  return { bytes, manifest: { idBytes: randomBytes(16), size: bytes.length, unitSize: UNIT, unitCount: units, units: hashes } };
}

/** A seeded PRNG (mulberry32). */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('two cores over an in-memory LAN with 10% loss: the missing member completes, and neither ever asks for a timeout in the past', (t) => {
  const r = release(12);
  const all = new Uint8Array(bitmapBytes(12));
  for (let u = 0; u < 12; u++) setBit(all, u);
  const random = prng(42);
  let now = 1_000_000;
  const mk = (member: string, senderId: number, have: Uint8Array) =>
    new LanCore({ manifest: r.manifest, member, group: 'g', senderId, fragmentBytes: FB, have, rateBytesPerSec: 20e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random }, now);
  const a = mk('a', 1, all);
  const b = mk('b', 2, new Uint8Array(bitmapBytes(12)));
  const map: CoreSplitMap = {
    members: [
      { id: 'a', verifiedUnits: 12, complete: true, address: '10.0.0.1' },
      { id: 'b', verifiedUnits: 0, complete: false, address: '10.0.0.2' },
    ],
    holders: Array(12).fill(0),
    groupComplete: false,
    groupKey: randomBytes(32).toString('base64'),
  };
  const stored = new Map<number, Buffer>();
  const events: string[] = [];
  const cores = [a, b];
  let pastTimeouts = 0;
  let datagrams = 0;
  let lost = 0;
  /** Drain one core's outputs as a driver would; its LAN datagrams reach the other core (10% lost). */
  const drain = (c: LanCore, other: LanCore) => {
    for (let tr = c.pollTransmit(now); tr; tr = c.pollTransmit(now)) {
      c.transmitted(tr, tr.datagrams.length, now);
      for (const d of tr.datagrams) {
        datagrams++;
        if (random() < 0.1) lost++;
        else other.handleDatagram(Uint8Array.from(d), now);
      }
    }
    for (let e = c.pollEvent(); e; e = c.pollEvent()) {
      events.push(e.type);
      if (e.type === 'store') {
        stored.set(e.unit, Buffer.from(e.bytes));
        c.unitStored(e.unit, now);
      } else if (e.type === 'read') {
        c.unitRead(e.unit, Buffer.from(r.bytes.subarray(e.unit * UNIT, Math.min(r.bytes.length, (e.unit + 1) * UNIT))), now);
      } else if (e.type === 'complete') c.fileComplete(now);
    }
    const at = c.pollTimeout();
    if (at !== null && at <= now) pastTimeouts++;
  };
  for (const c of cores) c.setSplitMap(map, now);
  // a held everything at start: its 'complete' event says so (the driver finishes the file).
  const deadline = now + 60_000;
  while (!b.holdsAll && now < deadline) {
    drain(a, b);
    drain(b, a);
    const next = Math.min(...cores.map((c) => c.pollTimeout() ?? Infinity));
    now = Math.max(now + 0, Math.min(deadline, Number.isFinite(next) ? next : now + 100));
    for (const c of cores) if ((c.pollTimeout() ?? Infinity) <= now) c.handleTimeout(now);
  }
  t.true(b.holdsAll, `b holds ${[...stored.keys()].length} of 12 units`);
  for (let u = 0; u < 12; u++) t.true(stored.get(u)!.equals(r.bytes.subarray(u * UNIT, Math.min(r.bytes.length, (u + 1) * UNIT))), `unit ${u}`);
  t.true(lost > 0, 'the loss model dropped datagrams');
  t.true(b.stats.nacksSent > 0 && a.stats.repairPacketsSent > 0, 'gaps were repaired through NACKs');
  t.is(pastTimeouts, 0, 'pollTimeout() never names a time already passed after a drain');
  t.true(events.includes('complete'));
  t.log(`${datagrams} datagrams, ${lost} lost, b sent ${b.stats.nacksSent} NACKs, a sent ${a.stats.repairPacketsSent} repairs, ${(now - 1_000_000) / 1000} s simulated`);

  // Idle: both complete, queues empty. Wake-ups are the idle announce timer's, not a busy loop.
  drain(b, a);
  b.fileComplete(now);
  let wakeups = 0;
  const idleEnd = now + 20_000;
  while (now < idleEnd) {
    drain(a, b);
    drain(b, a);
    const next = Math.min(...cores.map((c) => c.pollTimeout() ?? Infinity));
    if (!Number.isFinite(next)) break;
    now = Math.max(now, next);
    for (const c of cores) if ((c.pollTimeout() ?? Infinity) <= now) {
      wakeups++;
      c.handleTimeout(now);
    }
  }
  // Two members, each one wake-up per idleAnnounceMs (2 s) after the fast pace winds down.
  t.true(wakeups <= (2 * 20_000) / AGENT_DEFAULTS.idleAnnounceMs + 10, `${wakeups} wake-ups in 20 s idle`);
});

test('the core does no I/O: its files use no clock, timers, sockets or files', (t) => {
  const dir = path.join(__dirname, '..', '..', 'src', 'agent', 'core');
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));
  t.true(files.length >= 5);
  for (const f of files) {
    const src = readFileSync(path.join(dir, f), 'utf8');
    for (const banned of ['Date.now', 'setTimeout', 'setInterval', 'setImmediate', 'queueMicrotask', 'node:dgram', 'node:fs', 'Math.random', 'process.']) {
      t.false(src.includes(banned), `${f} uses ${banned}`);
    }
    t.true(src.split('\n').length <= 400, `${f} is over 400 lines`);
  }
});

test("a gateway whose map names no holder NACKs the copies' source only at an endpoint a member registered", (t) => {
  // Another site's member h (registered at 10.0.1.1:5000) copies unit 0 to this site's gateway g, whose map does not
  // name unit 0's holder yet; fragment 5 of the copy is lost. g NACKs by unicast to where the copies came from, but
  // only to a registered endpoint: copies arriving from any other source address get no NACK sent there.
  const r = release(1);
  const key = randomBytes(32).toString('base64');
  const hEnd = { address: '10.0.1.1', port: 5000 };
  const map: CoreSplitMap = {
    members: [
      { id: 'g', verifiedUnits: 0, complete: false, address: '10.0.0.1', dataPort: 4000, group: 'g0', role: 'gateway' },
      { id: 'h', verifiedUnits: 1, complete: false, address: hEnd.address, dataPort: hEnd.port, group: 'g1', role: 'gateway' },
    ],
    holders: [-1],
    groupComplete: false,
    groupKey: key,
  };
  for (const [source, nacked] of [[hEnd, true], [{ address: '10.9.9.9', port: 1 }, false]] as const) {
    let now = 1_000_000;
    const mk = (member: string, group: string, senderId: number) =>
      new LanCore({ manifest: r.manifest, member, group, wideGroup: 'w', senderId, fragmentBytes: FB, have: new Uint8Array(1), rateBytesPerSec: 20e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random: prng(7) }, now);
    const g = mk('g', 'g0', 1);
    const h = mk('h', 'g1', 2);
    g.setSplitMap(map, now);
    h.setSplitMap(map, now);
    h.leaseGranted({ units: [0], copyTo: [{ member: 'g', address: '10.0.0.1', port: 4000 }] }, now);
    const buf = h.takeBuffer(r.bytes.length);
    buf.set(r.bytes);
    h.fetchStarted(0, now);
    h.fetchProgress(0, buf, r.bytes.length, now);
    h.fetchEnded(0, now);
    h.unitFetched(0, buf, now);
    const nacksTo: string[] = [];
    for (let step = 0; step < 200 && !g.holdsAll; step++) {
      for (let tr = h.pollTransmit(now); tr; tr = h.pollTransmit(now)) {
        h.transmitted(tr, tr.datagrams.length, now);
        if (tr.to === null) continue; // h's own LAN
        for (const d of tr.datagrams) {
          const p = decodePacket(d);
          if (p.ok && p.packet.type === PacketType.DATA && p.packet.fragment === 5 && !p.packet.repair) continue;
          g.handleDatagram(Uint8Array.from(d), now, { ...source });
        }
      }
      for (let tr = g.pollTransmit(now); tr; tr = g.pollTransmit(now)) {
        g.transmitted(tr, tr.datagrams.length, now);
        for (const d of tr.datagrams) {
          const p = decodePacket(d);
          if (tr.to && p.ok && p.packet.type === PacketType.NACK) {
            nacksTo.push(`${tr.to.address}:${tr.to.port}`);
            h.handleDatagram(Uint8Array.from(d), now, { address: '10.0.0.1', port: 4000 });
          }
        }
      }
      for (const c of [g, h]) {
        for (let e = c.pollEvent(); e; e = c.pollEvent()) {
          if (e.type === 'read') c.unitRead(e.unit, Buffer.from(r.bytes), now);
          else if (e.type === 'store') c.unitStored(e.unit, now);
        }
      }
      now += 5;
      for (const c of [g, h]) if ((c.pollTimeout() ?? Infinity) <= now) c.handleTimeout(now);
    }
    t.log(`copies from ${source.address}:${source.port}: g's unicast NACKs went to ${[...new Set(nacksTo)].join(', ') || 'nowhere'}`);
    if (nacked) {
      t.true(nacksTo.length > 0 && nacksTo.every((x) => x === `${hEnd.address}:${hEnd.port}`), 'NACKed at the registered endpoint the copies came from');
      t.true(g.holdsAll, 'and repaired');
    } else t.deepEqual(nacksTo, [], 'no NACK to an unregistered source');
  }
});
