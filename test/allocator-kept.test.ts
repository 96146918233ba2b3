import test from 'ava';
import { GroupAllocator } from '../src/server/allocator';
import { Member } from '../src/server/allocator-state';
import { bitmapBytes, setBit } from '../src/wire/packet';

// What the allocator keeps instead of working it out per request (issue 17), against working it out.

/** forwardsNothing's question alone: does LAN group `g` lack a unit some live member holds? And the kept median. */
class Probe extends GroupAllocator {
  median(): number | null {
    return this.medianOverhead();
  }
  medianNow(): number | null {
    const xs = [...this.members.values()].map((m) => m.overhead).filter((x): x is number => x !== null).sort((a, b) => a - b);
    return xs.length ? xs[Math.floor(xs.length / 2)] : null;
  }

  lacks(g: string): boolean {
    const mine = [...this.members.values()].filter((m: Member) => m.lanGroup === g);
    const gw = mine[0];
    if (!gw) return false;
    return this.forwardsNothing(gw, -Infinity, 1e12, mine);
  }
}

test('a LAN group\'s kept union of bitmaps follows units added, members moving between groups and leaving: random steps against a unit-by-unit oracle', (t) => {
  // The server keeps each LAN group's union of bitmaps (allocator-gateways.ts lanHeld) and adds to it as units are
  // marked held; a member that leaves or moves makes it be worked out again. After every step the answer must be the
  // plain definition's.
  let seed = 11;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
  const units = 11; // a few units, so that groups often hold all there is
  const groups = ['x', 'y', 'z'];
  const a = new Probe({ unitCount: units, unitBytes: () => 1, gatewayIdleMs: 1000, memberTimeoutMs: 1e12 });
  const truth = new Map<string, { group: string; have: Uint8Array }>();
  const counts = { add: 0, move: 0, leave: 0, lacks: 0, full: 0 };
  for (let step = 0; step < 3000; step++) {
    const r = rnd();
    const id = `m${Math.floor(rnd() * 9)}`;
    let m = truth.get(id);
    if (r < 0.06 && m) {
      a.leave(id);
      truth.delete(id);
      counts.leave++;
    } else if (r < 0.12 && m) {
      m.group = groups[Math.floor(rnd() * groups.length)];
      a.heartbeat(id, step, { lanGroup: m.group });
      counts.move++;
    } else {
      if (!m) truth.set(id, (m = { group: groups[Math.floor(rnd() * groups.length)], have: new Uint8Array(bitmapBytes(units)) }));
      // A unit more, mostly low ones (so groups often hold what others hold), sometimes none.
      if (rnd() < 0.8) setBit(m.have, Math.floor(rnd() ** 2 * units));
      a.heartbeat(id, step, { lanGroup: m.group, have: m.have.slice() });
      counts.add++;
    }
    for (const g of groups) {
      const inG = [...truth.values()].filter((v) => v.group === g);
      let lacks = false;
      for (let u = 0; u < units && inG.length > 0; u++) {
        const bit = (h: Uint8Array) => (h[u >> 3] & (0x80 >> (u & 7))) !== 0;
        if ([...truth.values()].some((v) => bit(v.have)) && !inG.some((v) => bit(v.have))) lacks = true;
      }
      if (inG.length > 0 && inG.length === truth.size) lacks = false; // one LAN group: no other holds anything
      if (a.lacks(g) !== lacks) return t.fail(`step ${step}, group ${g}: kept union says ${!lacks}, the units say ${lacks}`);
      if (lacks) counts.lacks++;
      else if (inG.length > 0) counts.full++;
    }
  }
  t.log(JSON.stringify(counts));
  t.true(counts.move > 50 && counts.leave > 50 && counts.lacks > 200 && counts.full > 200, JSON.stringify(counts));
});

test('a gateway asked to beat every 20 s forwards nothing only after two of its intervals without its count growing; at 1 s, after 8 s', (t) => {
  // Its `forwarded` arrives only with its heartbeats: at 100,000 agents they come every 20 s, and an 8 s window
  // demoted gateways that were forwarding (issue 17).
  for (const [interval, window] of [
    [1000, 8000],
    [20_000, 40_000],
  ] as const) {
    const a = new GroupAllocator({ unitCount: 8, unitBytes: () => 1, gatewayIdleMs: 8000, gatewayDemoteMs: 1e9, memberTimeoutMs: 1e12 });
    const have = new Uint8Array(1);
    setBit(have, 0); // y holds unit 0, x lacks it
    a.heartbeat('gx', 0, { lanGroup: 'x', address: '10.0.0.1', dataPort: 4000 });
    a.heartbeat('gy', 0, { lanGroup: 'y', address: '10.0.0.2', dataPort: 4000, have });
    a.setHeartbeatInterval('gx', interval);
    t.is(a.gatewayFor('x', 0), 'gx');
    const grew = window - 1000;
    t.is(a.gatewayFor('x', grew), 'gx', `every ${interval} ms: kept ${grew} ms after it took the role`);
    a.heartbeat('gx', grew, { forwarded: 5 }); // its count grew: the window starts again
    t.is(a.gatewayFor('x', grew + window - 1000), 'gx', `every ${interval} ms: kept ${window - 1000} ms after it grew`);
    t.is(a.gatewayFor('x', grew + window + 1000), null, `every ${interval} ms: demoted ${window + 1000} ms after (no one else in x)`);
    t.is(a.memberViews(grew + window + 1000).find((m) => m.id === 'gx')!.gatewayDemotions, 1);
  }
});

test('the kept median overhead follows receipts, remembered overheads, joins and leaves: random steps against a fresh sort', (t) => {
  let seed = 5;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
  const a = new Probe({ unitCount: 4000, unitBytes: () => 1 << 20, memberTimeoutMs: 1e12 });
  let now = 0;
  const counts = { receipt: 0, remembered: 0, leave: 0, join: 0 };
  for (let step = 0; step < 2000; step++) {
    const id = `m${Math.floor(rnd() * 12)}`;
    const r = rnd();
    now += 10;
    if (r < 0.1) {
      a.leave(id);
      counts.leave++;
    } else if (r < 0.2) {
      a.heartbeat(id, now);
      a.rememberOverhead(id, 1 + rnd() * 50);
      counts.remembered++;
    } else if (r < 0.3) {
      a.heartbeat(id, now);
      counts.join++;
    } else {
      a.heartbeat(id, now);
      const [u] = a.lease(id, now).units;
      if (u === undefined) continue;
      a.sending(id, u, now);
      a.receipt(id, u, now + Math.floor(1 + rnd() * 200));
      counts.receipt++;
    }
    const kept = a.median();
    if (kept !== a.medianNow()) return t.fail(`step ${step}: kept median ${kept}, sorted ${a.medianNow()}`);
  }
  t.true(counts.receipt > 300 && counts.leave > 100 && counts.remembered > 100, JSON.stringify(counts));
});
