import test from 'ava';
import { AGENT_DEFAULTS } from '../../src/agent/core/defaults';
import { decodePacket, getBit, PacketType } from '../../src/wire/packet';
import { makeLanCore } from './core-api';
import type { MemberOptions } from './member';
import { World } from './world';
import { watchUnit } from './watch-unit';

/**
 * Issue 19 (sites testbed, 3% loss): a LAN receiver NACKs a unit only once it knows some
 * peer has it, which it learned from an ANNOUNCE, one datagram. When that was lost, a copy
 * that had lost a fragment waited for the next ANNOUNCE, or for a peer's NACK that then
 * sat in a backoff until one came: 50 to 90 ms, most of the stream's p99 tail. Now the
 * copy's last fragment (copies leave in fragment order) and a heard NACK each make the
 * unit NACKable, as the last fragment of a copy from another group already did
 * (docs/protocol.md section 5). Simulated time; every ANNOUNCE listing LOST is lost here,
 * so without either rule the receiver waits for the stall relay.
 */
const LOST = 5; // unit u is leased to the (u mod members)-th member in join order: g0-m2 of 3

function lists(d: Uint8Array, unit: number): boolean {
  const p = decodePacket(d);
  if (!p.ok || p.packet.type !== PacketType.ANNOUNCE) return false;
  const q = p.packet;
  return unit >= q.firstUnit && unit < q.firstUnit + q.unitCount && getBit(q.have, unit - q.firstUnit);
}

function lanCopyOf(d: Uint8Array, unit: number, fragment: number | 'last'): boolean {
  const p = decodePacket(d);
  if (!p.ok || p.packet.type !== PacketType.DATA) return false;
  const q = p.packet;
  return !q.repair && !q.forward && q.unit === unit && q.fragment === (fragment === 'last' ? q.fragmentCount - 1 : fragment);
}

/** When each member held LOST, and the world: one LAN group of 3, the given members' options. */
function run(overrides: (i: number) => Partial<MemberOptions>) {
  const w = new World({
    seed: 19,
    makeCore: makeLanCore,
    unitCount: 12,
    unitSize: 32 * 1024,
    fragmentBytes: 1024,
    groups: [{ name: 'g0', members: 3 }],
    member: { wanRateBytesPerSec: 400_000 },
    memberOverrides: (_g, i) => overrides(i),
  });
  const gotAt = watchUnit(w, LOST);
  const done = w.runUntilComplete(60_000);
  return { w, done, gotAt };
}

test('a LAN peer NACKs a copy that lost a fragment at its last fragment, without the ANNOUNCE that would say it is all sent', (t) => {
  // The holder's ANNOUNCEs listing LOST never arrive, and fragment 5 of its copy is lost.
  const holder = (i: number): Partial<MemberOptions> => (i === 2 ? { mangle: (d) => (lists(d, LOST) || lanCopyOf(d, LOST, 5) ? null : d) } : { inbound: (d) => !lists(d, LOST) });
  const { w, done, gotAt } = run(holder);
  t.true(done, 'every member completes');
  for (const m of w.members) t.true(m.storeEqualsRelease());
  const at = gotAt.get('g0-m2')!;
  const waits = ['g0-m0', 'g0-m1'].map((id) => gotAt.get(id)! - at);
  t.log(`unit ${LOST}: its LAN peers had it ${waits.map((x) => x.toFixed(1)).join(' and ')} ms after the holder (announceMs ${AGENT_DEFAULTS.announceMs})`);
  for (const x of waits) t.true(x < AGENT_DEFAULTS.announceMs / 4, `a LAN peer waited ${x.toFixed(1)} ms for unit ${LOST}`);
  t.true(w.member('g0-m0').stats.nacksSent + w.member('g0-m1').stats.nacksSent > 0, 'it came by NACK and repair');
});

test("a LAN peer that lost a copy's last fragment NACKs once it hears another peer's NACK, without an ANNOUNCE", (t) => {
  // No ANNOUNCE listing LOST reaches anyone. g0-m0 also loses the copy's last fragment, so
  // only g0-m1 can tell from the copy that it is all sent; g0-m0 hears g0-m1's NACK.
  const { w, done, gotAt } = run((i) =>
    i === 2
      ? { mangle: (d) => (lists(d, LOST) || lanCopyOf(d, LOST, 5) ? null : d) }
      : i === 0
        ? { inbound: (d) => !lists(d, LOST) && !lanCopyOf(d, LOST, 'last') }
        : { inbound: (d) => !lists(d, LOST) },
  );
  t.true(done, 'every member completes');
  for (const m of w.members) t.true(m.storeEqualsRelease());
  const wait = gotAt.get('g0-m0')! - gotAt.get('g0-m2')!;
  t.log(`unit ${LOST}: g0-m0 had it ${wait.toFixed(1)} ms after the holder`);
  t.true(wait < AGENT_DEFAULTS.announceMs / 4, `g0-m0 waited ${wait.toFixed(1)} ms for unit ${LOST}`);
  t.true(w.member('g0-m0').stats.nacksSent > 0, 'g0-m0 NACKed what the heard NACK did not ask for');
});
