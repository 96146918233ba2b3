import test from 'ava';
import { decodePacket, PacketType } from '../../src/wire/packet';
import { makeLanCore } from './core-api';
import { epName } from './member';
import { bernoulli, NO_LOSS } from './loss';
import { World } from './world';

/**
 * 1.5 copy trees (docs/protocol.md section 17) against the 1.4 mesh, six LAN groups of 2
 * in one wide-area download, k = 2: every group receives each fragment's copy once (1.00x
 * the release per group), and a member sends each unit's copies to at most k gateways.
 */
function run(copyTree: number | undefined, loss = NO_LOSS) {
  const groups = ['g0', 'g1', 'g2', 'g3', 'g4', 'g5'].map((name) => ({ name, members: 2 }));
  const w = new World({
    seed: 7,
    makeCore: makeLanCore,
    unitCount: 24,
    unitSize: 32 * 1024,
    fragmentBytes: 1024,
    groups,
    lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss } },
    route: { rateBytesPerSec: 2_500_000, delayMs: 15 },
    member: { wanRateBytesPerSec: 400_000 },
    ...(copyTree ? { copyTree } : {}),
  });
  const groupOf = new Map(w.members.map((m) => [epName(m.address), m.opts.group]));
  /** Copy bytes (forward, not repair) that arrived per group, and "unit/fragment" copies per group. */
  const copyBytes = new Map<string, number>();
  const copies = new Map<string, Map<string, number>>();
  /** sender -> unit -> distinct destinations of its copies; sender -> all destinations. */
  const perUnit = new Map<string, Map<number, Set<string>>>();
  const dests = new Map<string, Set<string>>();
  const tap = w.net.tap!;
  w.net.tap = (from, data, to) => {
    tap(from, data, to);
    if (to === null) return;
    const d = decodePacket(data);
    if (!d.ok || d.packet.type !== PacketType.DATA || !d.packet.forward || d.packet.repair) return;
    const g = groupOf.get(to)!;
    copyBytes.set(g, (copyBytes.get(g) ?? 0) + d.packet.payload.length);
    const c = copies.get(g) ?? new Map<string, number>();
    copies.set(g, c);
    const k = `${d.packet.unit}/${d.packet.fragment}`;
    c.set(k, (c.get(k) ?? 0) + 1);
    const u = perUnit.get(from.name) ?? new Map<number, Set<string>>();
    perUnit.set(from.name, u);
    const s = u.get(d.packet.unit) ?? new Set<string>();
    u.set(d.packet.unit, s);
    s.add(to);
    const all = dests.get(from.name) ?? new Set<string>();
    dests.set(from.name, all);
    all.add(to);
  };
  const done = w.runUntilComplete(120_000);
  return { w, done, copyBytes, copies, perUnit, dests, groupOf };
}

test('copy tree of degree 2 over 6 sites: each site gets the release once, no sender copies a unit to more than 2', (t) => {
  const r = run(2);
  t.true(r.done, 'every member completes');
  for (const m of r.w.members) t.true(m.storeEqualsRelease());
  const size = r.w.release.manifest.size;
  const lines: string[] = [];
  for (const g of ['g0', 'g1', 'g2', 'g3', 'g4', 'g5']) {
    const ratio = (r.copyBytes.get(g) ?? 0) / size;
    lines.push(`${g} ${ratio.toFixed(3)}x`);
    // each site's own members fetch 1/6 of the release; the other 5/6 arrive as copies, each once
    t.is(ratio, 5 / 6, `${g}: copies received ${ratio.toFixed(3)}x the release`);
    for (const [k, n] of r.copies.get(g)!) if (n !== 1) t.fail(`${g}: fragment ${k} arrived ${n} times`);
  }
  let maxPerUnit = 0;
  for (const units of r.perUnit.values()) for (const s of units.values()) maxPerUnit = Math.max(maxPerUnit, s.size);
  t.true(maxPerUnit <= 2, `a sender copied one unit to ${maxPerUnit} gateways`);
  // members that are not gateways send only their own units: to their k children
  const gateways = new Set(r.w.members.filter((m) => r.w.server.gatewayOf(m.opts.group)?.id === m.opts.id).map((m) => epName(m.address)));
  for (const [from, all] of r.dests) if (!gateways.has(from)) t.true(all.size <= 2, `member ${from} copied to ${all.size} gateways`);
  t.true(r.w.members.some((m) => m.stats.fragmentsForwarded > 0));
  t.log(`copies received per site (of the release): ${lines.join(', ')}; at most ${maxPerUnit} destinations per unit`);
});

test('the same fleet without a tree (1.4): every member copies each unit to all 5 other gateways, still once per site', (t) => {
  const r = run(undefined);
  t.true(r.done);
  const size = r.w.release.manifest.size;
  for (const g of ['g0', 'g1', 'g2', 'g3', 'g4', 'g5']) t.is((r.copyBytes.get(g) ?? 0) / size, 5 / 6);
  let maxPerUnit = 0;
  for (const units of r.perUnit.values()) for (const s of units.values()) maxPerUnit = Math.max(maxPerUnit, s.size);
  t.is(maxPerUnit, 5);
});

test('copy tree under 2% LAN loss: everyone completes, copies still reach each site once', (t) => {
  const r = run(2, bernoulli(0.02));
  t.true(r.done, 'every member completes');
  for (const m of r.w.members) t.true(m.storeEqualsRelease());
  const size = r.w.release.manifest.size;
  for (const g of ['g0', 'g1', 'g2', 'g3', 'g4', 'g5']) {
    const ratio = (r.copyBytes.get(g) ?? 0) / size;
    // a gateway that lost a fragment of its parent's copy on its LAN link does not pass it on (its children NACK the holder)
    t.true(ratio <= 5 / 6 + 1e-9 && ratio > 0.7, `${g}: ${ratio.toFixed(3)}x`);
  }
});

test('an interior gateway of the copy trees dies mid-transfer: every live member still completes', (t) => {
  const groups = ['g0', 'g1', 'g2', 'g3', 'g4', 'g5'].map((name) => ({ name, members: 3 }));
  const w = new World({
    seed: 11,
    makeCore: makeLanCore,
    unitCount: 36,
    unitSize: 32 * 1024,
    fragmentBytes: 1024,
    groups,
    route: { rateBytesPerSec: 2_500_000, delayMs: 15 },
    member: { wanRateBytesPerSec: 100_000 },
    copyTree: 2,
  });
  // g1 is ring position 1: in g0's tree it forwards to g3 and g4
  const gw = w.server.gatewayOf('g1')!;
  const victim = w.member(gw.id);
  const wan = () => w.members.reduce((s, m) => s + m.stats.unitsFromWan, 0);
  w.sim.run({ stopWhen: () => wan() >= 12 && victim.stats.fragmentsForwarded > 0, until: 60_000 });
  t.true(victim.stats.fragmentsForwarded > 0, 'the gateway was forwarding when it died');
  victim.kill();
  const diedAt = w.sim.now;
  t.true(w.runUntilComplete(diedAt + 120_000), 'every live member completes');
  for (const m of w.members) if (m.alive) t.true(m.storeEqualsRelease());
  // The sites below it in some trees get what it would have passed on from the units'
  // holders (NACK, repair), not from the server again: the holder announces itself to a
  // requester it never copied to, which otherwise drops its repairs (unknown sender).
  t.is(w.server.relayedUnits, 0, 'no unit relayed from the server');
  t.true(wan() <= 36 + w.server.releasedUnits, `${wan()} units from the server for 36 (${w.server.releasedUnits} leased again: the dead one's)`);
  t.log(`gateway ${gw.id} died at ${diedAt.toFixed(0)} ms; units leased again: ${w.server.releasedUnits}, relayed: ${w.server.relayedUnits}; done at ${w.sim.now.toFixed(0)} ms`);
});
