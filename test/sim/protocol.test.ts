import test, { ExecutionContext } from 'ava';
import { sealControl } from '../../src/wire/auth';
import { AnnouncePacket, PacketType, bitmapBytes, decodePacket, encodeAnnounce } from '../../src/wire/packet';
import { makeLanCore } from './core-api';
import { bernoulli, burstyLoss } from './loss';
import { TraceDigest } from './trace';
import { World, WorldOptions, groupKeyOf } from './world';

// Issue 16's simulations: N protocol cores (src/agent/core) over the in-memory LAN,
// each with an in-memory store, a static split map, and its own share "arriving from
// the WAN" at a rate. Every bound is on counts, bytes or simulated time.

function world(o: Partial<WorldOptions> & Pick<WorldOptions, 'groups'>): World {
  return new World({ seed: 1, makeCore: makeLanCore, unitCount: 32, unitSize: 16 * 1024, fragmentBytes: 1024, ...o });
}

const releaseBytes = (w: World) => w.release.manifest.size;
/**
 * Simulated time the LAN runs are given: a few times what they take (under 2 s), and
 * under the core's fallbacks (a unit leased again after 10 s without an answer), so
 * that completing means the LAN repaired the losses.
 */
const LAN_LIMIT_MS = 5_000;
const totalWan = (w: World) => w.members.reduce((s, m) => s + m.wanBytes, 0);

function summary(w: World): string {
  const p = w.wire.packets;
  return (
    `t=${w.sim.now.toFixed(0)} ms, WAN ${totalWan(w)} B for a ${releaseBytes(w)} B release, ` +
    `packets data ${p.data} repair ${p.repair} forward ${p.forward} nack ${p.nack} announce ${p.announce} feedback ${p.feedback}, ` +
    `relays ${w.server.relayRequests} (${w.server.relayedUnits} units)`
  );
}

function assertComplete(t: ExecutionContext, w: World, done: boolean): void {
  t.log(summary(w));
  const late = w.members.filter((m) => m.alive && m.completedAt === null).map((m) => `${m.opts.id} (${m.store.size}/${w.release.manifest.unitCount})`);
  t.true(done, `not complete by ${w.sim.now} ms: ${late.join(', ')}`);
  for (const m of w.members) if (m.alive) t.true(m.storeEqualsRelease(), `${m.opts.id}'s store differs from the release`);
}

test(`4 members at 10% independent loss complete, taking each byte from the WAN about once`, (t) => {
  const w = world({ groups: [{ name: 'g0', members: 4 }], lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: bernoulli(0.1) } } });
  assertComplete(t, w, w.runUntilComplete(LAN_LIMIT_MS));
  t.true(w.wire.packets.nack > 0, 'losses were repaired through NACKs');
  t.true(w.wire.packets.repair > 0);
  // The WAN carries each unit about once: relays of units the LAN could not repair stay few.
  t.true(totalWan(w) <= releaseBytes(w) * 1.25, `WAN ${totalWan(w)} B`);
});

test(`4 members at 10% bursty loss (Gilbert-Elliott, bursts of 4) complete`, (t) => {
  const w = world({ seed: 2, groups: [{ name: 'g0', members: 4 }], lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: burstyLoss(0.1, 4) } } });
  assertComplete(t, w, w.runUntilComplete(LAN_LIMIT_MS));
  t.true(totalWan(w) <= releaseBytes(w) * 1.25, `WAN ${totalWan(w)} B`);
});

test(`the same seed gives the same run, packet for packet`, (t) => {
  const run = (seed: number) => {
    const w = world({ seed, unitCount: 8, groups: [{ name: 'g0', members: 4 }], lan: { down: { loss: bernoulli(0.1) } } });
    const d = new TraceDigest(w.net);
    w.runUntilComplete(30_000);
    return { digest: d.digest(), events: d.events, done: w.members.map((m) => m.completedAt) };
  };
  const a = run(5);
  const b = run(5);
  t.true(a.events > 1000);
  t.deepEqual(a, b);
  t.not(run(6).digest, a.digest);
});

test(`a gateway dies mid-transfer: its group still completes (two LAN groups, one wide-area download)`, (t) => {
  const w = world({
    seed: 3,
    groups: [
      { name: 'g0', members: 4 },
      { name: 'g1', members: 4 },
    ],
    lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: bernoulli(0.02) } },
    // a slow WAN, so the transfer lasts and the gateway dies in the middle of it
    member: { wanRateBytesPerSec: 200_000 },
  });
  const gw = w.server.gatewayOf('g1')!;
  const victim = w.member(gw.id);
  w.sim.run({ stopWhen: () => totalWan(w) >= releaseBytes(w) / 2, until: 60_000 });
  t.true(w.members.every((m) => m.completedAt === null), 'nobody was complete when the gateway died');
  t.true(victim.stats.fragmentsForwarded > 0, 'the gateway was forwarding the other group\'s copies when it died');
  victim.kill();
  const diedAt = w.sim.now;
  const g1 = w.members.filter((m) => m.opts.group === 'g1' && m.alive);
  const heldAtDeath = g1.map((m) => m.store.size);
  // the server drops the dead gateway after 3 s of silence
  assertComplete(t, w, w.runUntilComplete(diedAt + 3_000 + 2 * LAN_LIMIT_MS));
  const next = w.server.gatewayOf('g1')!;
  t.not(next.id, gw.id, 'the group got a new gateway');
  t.true(w.member(next.id).stats.fragmentsForwarded > 0, 'the new gateway forwarded copies from the other group');
  t.is(g1.length, 3);
  t.true(g1.every((m) => m.completedAt !== null && m.completedAt > diedAt));
  t.log(`gateway ${gw.id} died at ${diedAt.toFixed(0)} ms (its group held ${heldAtDeath.join(', ')} of ${w.release.manifest.unitCount} units); new gateway ${next.id}; units leased again: ${w.server.releasedUnits}`);
});

test(`a late joiner takes the release from its LAN peers`, (t) => {
  const w = world({ seed: 4, groups: [{ name: 'g0', members: 4 }], lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: bernoulli(0.05) } } });
  // One joins mid-transfer, one after everyone else is done.
  w.sim.run({ stopWhen: () => totalWan(w) >= releaseBytes(w) / 2, until: 60_000 });
  const mid = w.addMember('g0');
  t.true(w.runUntilComplete(LAN_LIMIT_MS));
  const after = w.addMember('g0');
  assertComplete(t, w, w.runUntilComplete(w.sim.now + LAN_LIMIT_MS));
  for (const m of [mid, after]) {
    t.true(m.storeEqualsRelease());
    t.true(m.wanBytes <= releaseBytes(w) / 4, `${m.opts.id} took ${m.wanBytes} B from the WAN`);
  }
  t.is(after.wanBytes, 0, 'after the others completed, everything came from the LAN');
});

/** Rewrites a member's announces to claim every unit (and completion), sealed with the group key as a real member can. */
function lyingAnnounces(key: Buffer) {
  let lies = 0;
  const mangle = (d: Uint8Array): Uint8Array => {
    const r = decodePacket(d);
    if (!r.ok || r.packet.type !== PacketType.ANNOUNCE) return d;
    const p = r.packet as AnnouncePacket;
    lies++;
    const out = encodeAnnounce({ sender: p.sender, releaseId: p.releaseId, firstUnit: p.firstUnit, unitCount: p.unitCount, complete: true, have: new Uint8Array(bitmapBytes(p.unitCount)).fill(0xff) });
    return sealControl(out, key, p.auth!.seq);
  };
  return { mangle, count: () => lies };
}

/**
 * The liar claims every unit before anyone has most of them (a slow WAN), so the
 * others NACK units it does not have. What that may cost: NACKs, not data, and
 * at most half a packet per fragment of the release over the whole run.
 */
test(`a member that lies in its announces (claims every unit) does not stop the others, and costs a bounded number of packets`, (t) => {
  const run = (seed: number, lie: boolean) => {
    const liar = lyingAnnounces(groupKeyOf(seed)); // the liar is a member: it has the group key
    const w = world({
      seed,
      groups: [{ name: 'g0', members: 4 }],
      lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: bernoulli(0.1) } },
      member: { wanRateBytesPerSec: 100_000 },
      // g0-m3 lies; it owns a share like the others
      memberOverrides: (_g, i) => (lie && i === 3 ? { mangle: liar.mangle } : {}),
    });
    // the 100 kB/s WAN alone takes 1.3 s
    const done = w.runUntilComplete(2 * LAN_LIMIT_MS);
    const sent = w.net.total((l) => l.name.endsWith('.up')).sentPackets;
    return { w, done, sent, lies: liar.count() };
  };
  for (const seed of [7, 8, 9]) {
    const honest = run(seed, false);
    const lying = run(seed, true);
    t.true(honest.done);
    t.true(lying.lies > 0, 'the liar announced');
    const others = lying.w.members.slice(0, 3);
    t.true(others.every((m) => m.completedAt !== null && m.storeEqualsRelease()), `seed ${seed}: the honest members completed`);
    const m = lying.w.release.manifest;
    const fragments = m.unitCount * Math.ceil(m.unitSize / 1024);
    const extra = lying.sent - honest.sent;
    const dataOf = (r: typeof honest) => r.w.wire.packets.data + r.w.wire.packets.repair;
    t.log(`seed ${seed}: ${honest.sent} packets honest, ${lying.sent} with ${lying.lies} lying announces (${extra} extra, NACKs ${honest.w.wire.packets.nack} -> ${lying.w.wire.packets.nack}; the release is ${fragments} fragments)`);
    t.true(extra <= fragments / 2, `seed ${seed}: the lies cost ${extra} extra packets`);
    t.true(dataOf(lying) <= dataOf(honest) * 1.1, `seed ${seed}: lies cost no data: ${dataOf(honest)} -> ${dataOf(lying)} data and repair packets`);
  }
});
