import test from 'ava';
import { GroupAllocator } from '../src/server/allocator';
import { bitmapBytes, setBit } from '../src/wire/packet';

const MIB = 1024 * 1024;
const mk = (unitCount: number, extra: Partial<ConstructorParameters<typeof GroupAllocator>[0]> = {}) =>
  new GroupAllocator({ unitCount, unitBytes: () => MIB, memberTimeoutMs: 3000, leaseMinMs: 10_000, ...extra });

/** Fetch and receipt everything a member holds, `msPerUnit` after the send. */
function finish(g: GroupAllocator, id: string, units: number[], now: number, msPerUnit: number): number {
  let t = now;
  for (const u of units) {
    g.sending(id, u, t);
    t += msPerUnit;
    g.receipt(id, u, t);
  }
  return t;
}

test('leases never overlap and every unit is leased exactly once', (t) => {
  const g = mk(100);
  for (const id of ['a', 'b', 'c']) g.heartbeat(id, 0);
  const owner = new Map<number, string>();
  let now = 0;
  for (let round = 0; round < 200 && owner.size < 100; round++) {
    for (const id of ['a', 'b', 'c']) {
      const { units } = g.lease(id, now);
      for (const u of units) {
        t.false(owner.has(u), `unit ${u} leased twice`);
        owner.set(u, id);
      }
      now = finish(g, id, units, now, 10);
    }
  }
  t.is(owner.size, 100);
  t.is(g.missingInGroup(), 0);
  t.true(g.lease('a', now).exhausted);
});

test('overhead is (receipt - send) per byte and faster members get more units', (t) => {
  const g = mk(400, { baseDepth: 2, maxDepth: 8 });
  g.heartbeat('fast', 0);
  g.heartbeat('slow', 0);
  const got = { fast: 0, slow: 0 };
  const speed = { fast: 10, slow: 40 }; // ms per unit
  const busyUntil = { fast: 0, slow: 0 };
  // Simulated time: each member fetches its queue sequentially at its own speed.
  for (let now = 0; now < 4000; now += 5) {
    for (const id of ['fast', 'slow'] as const) {
      if (busyUntil[id] > now) continue;
      const { units } = g.lease(id, now);
      got[id] += units.length;
      busyUntil[id] = finish(g, id, units, now, speed[id]);
    }
  }
  const m = g.map(4000).members;
  t.is(m[0].id, 'fast'); // ranked first
  t.true(Math.abs(m[0].overheadMsPerMiB! - 10) < 0.5, `fast overhead ${m[0].overheadMsPerMiB}`);
  t.true(Math.abs(m[1].overheadMsPerMiB! - 40) < 2, `slow overhead ${m[1].overheadMsPerMiB}`);
  t.true(got.fast > 3 * got.slow, `fast ${got.fast} vs slow ${got.slow}`);
});

test('a member that stops heartbeating loses its leases to others', (t) => {
  const g = mk(10, { baseDepth: 4 });
  g.heartbeat('a', 0);
  g.heartbeat('b', 0);
  const a = g.lease('a', 0).units;
  t.is(a.length, 4);
  g.heartbeat('b', 2000);
  t.deepEqual(g.expire(2000), []);
  g.heartbeat('b', 3500);
  t.deepEqual(g.expire(3500), ['a']);
  t.false(g.hasMember('a'));
  const b = g.lease('b', 3500).units;
  t.deepEqual(b, a); // a's units went back to the pool, lowest first
  t.true(g.reclaimed >= 4);
});

test('a lease past its deadline is reclaimed even if its member still heartbeats', (t) => {
  const g = mk(4, { baseDepth: 1, leaseMinMs: 1000 });
  g.heartbeat('a', 0);
  const [u] = g.lease('a', 0).units;
  g.heartbeat('a', 900);
  g.expire(900);
  t.is(g.leaseHolder(u), 'a');
  g.heartbeat('a', 1100);
  g.expire(1100);
  t.is(g.leaseHolder(u), null);
});

test('a late joiner is leased only what nobody holds or leases', (t) => {
  const g = mk(8, { baseDepth: 4 });
  g.heartbeat('a', 0);
  const a = g.lease('a', 0).units; // 0..3
  finish(g, 'a', a.slice(0, 2), 0, 5);
  g.heartbeat('late', 20);
  const late = g.lease('late', 20).units;
  t.true(late.length > 0);
  for (const u of late) {
    t.false(a.includes(u));
  }
});

test('soft state: a fresh allocator rebuilt from heartbeats does not lease held units again', (t) => {
  const g = mk(16);
  const have = new Uint8Array(bitmapBytes(16));
  for (const u of [0, 1, 2, 5, 9]) setBit(have, u);
  g.heartbeat('a', 0, { have });
  g.heartbeat('b', 0);
  const leased = new Set<number>();
  let now = 0;
  for (let i = 0; i < 20; i++) {
    for (const id of ['a', 'b']) {
      const { units } = g.lease(id, now);
      for (const u of units) leased.add(u);
      now = finish(g, id, units, now, 5);
    }
  }
  for (const u of [0, 1, 2, 5, 9]) t.false(leased.has(u));
  t.is(leased.size, 11);
  t.is(g.missingInGroup(), 0);
});

test('the split map names the lease holder of each unit', (t) => {
  const g = mk(4, { baseDepth: 2 });
  g.heartbeat('a', 0);
  g.heartbeat('b', 0);
  const ua = g.lease('a', 0).units;
  const ub = g.lease('b', 0).units;
  const map = g.map(0);
  for (const u of ua) t.is(map.members[map.holders[u]].id, 'a');
  for (const u of ub) t.is(map.members[map.holders[u]].id, 'b');
});

test('named holders (1.4, and stream answers): a unit stays with its lessee while it holds it, however the ranks move', (t) => {
  const g = mk(4, { baseDepth: 1 });
  g.heartbeat('a', 0);
  g.heartbeat('b', 0);
  const [u] = g.lease('a', 0).units;
  finish(g, 'a', [u], 0, 50); // a: slow
  const [v] = g.lease('b', 100).units;
  finish(g, 'b', [v], 100, 5); // b: fast, first-ranked now
  const have = new Uint8Array(bitmapBytes(4));
  setBit(have, u);
  setBit(have, v);
  g.heartbeat('a', 200, { have });
  g.heartbeat('b', 200, { have });
  const map = g.map(200);
  t.deepEqual(map.members.map((m) => m.id), ['b', 'a'], 'b ranks first');
  t.is(map.members[map.holders[u]].id, 'b', 'the 1.3 map names the first-ranked holder of u');
  const named = g.namedHolders(0, 4, map.members);
  t.is(map.members[named[u]].id, 'a', 'the named holder of u is still its lessee, a');
  t.is(map.members[named[v]].id, 'b');
  t.deepEqual(g.namedHolders(u, u + 1, map.members), [named[u]], 'a window of units');
  t.deepEqual(g.namedHolders(3, 9, map.members).length, 1, 'clipped to the units there are');
});

test('a stream\'s allocator grows a unit at a time past its arrays\' doublings: every unit is leased once, held bits and holders stay right', (t) => {
  const g = mk(0, { baseDepth: 4 });
  g.heartbeat('a', 0);
  g.heartbeat('b', 0);
  const leased = new Map<number, string>();
  let now = 0;
  for (let n = 1; n <= 300; n++) {
    g.growUnits(n, 0);
    for (const id of ['a', 'b']) {
      for (const u of g.lease(id, now).units) {
        t.false(leased.has(u), `unit ${u} leased twice`);
        leased.set(u, id);
        now = finish(g, id, [u], now, 1);
      }
    }
  }
  t.is(leased.size, 300, 'every unit leased once');
  t.is(g.missingInGroup(), 0);
  const map = g.mapSince(now, undefined, undefined);
  t.is(map.holderSlots?.length, 300, 'the whole map names exactly the units there are');
  const ids = new Map(map.members.map((m) => [m.slot, m.id]));
  t.true([...leased].every(([u, id]) => ids.get(map.holderSlots![u]) === id), 'each unit named to its lessee');
  t.deepEqual(g.namedHolders(295, 310, map.members).length, 5);
  // A bitmap of the units from haveFrom on (what a stream heartbeat hands over): its bit 0 is unit haveFrom.
  g.growUnits(340, 0);
  const tail = new Uint8Array(bitmapBytes(340 - 320));
  setBit(tail, 3); // unit 323
  g.heartbeat('c', now, { have: tail, haveFrom: 320 });
  const held = g.mapSince(now, undefined, undefined);
  const c = held.members.find((m) => m.id === 'c')!;
  t.is(c.verifiedUnits, 1, 'c holds one unit');
  t.is(held.holderSlots?.[323], c.slot, 'unit 323, named to c');
  t.is(held.holderSlots?.[3], map.holderSlots![3], 'unit 3 named as before');
});

test('a lessee\'s receipt still scores its overhead when a peer reported the unit first (it took the lessee\'s copies)', (t) => {
  const g = mk(4, { baseDepth: 1 });
  g.heartbeat('a', 0);
  g.heartbeat('b', 0);
  const [u] = g.lease('a', 0).units;
  g.sending('a', u, 0);
  const have = new Uint8Array(bitmapBytes(4));
  setBit(have, u);
  g.heartbeat('b', 40, { have }); // the lease ends here: the unit is held
  g.receipt('a', u, 50);
  const a = g.memberViews(50).find((m) => m.id === 'a')!;
  t.not(a.overheadMsPerMiB, null, 'a measured from its own send and receipt');
  t.true(Math.abs((a.overheadMsPerMiB ?? 0) - 50) < 1e-6, `50 ms for the 1 MiB unit: ${a.overheadMsPerMiB}`);
  // Only the lessee's own receipt scores it, once.
  g.receipt('a', u, 5000);
  t.true(Math.abs((g.memberViews(5000).find((m) => m.id === 'a')!.overheadMsPerMiB ?? 0) - 50) < 1e-6, 'a second receipt of the unit is no sample');
});

test('near the end a much slower member is told to wait so fast members take the tail', (t) => {
  const g = mk(6, { baseDepth: 1, maxDepth: 1, tailSlackFactor: 2 });
  g.heartbeat('fast', 0);
  g.heartbeat('slow', 0);
  let now = finish(g, 'fast', g.lease('fast', 0).units, 0, 10);
  now = finish(g, 'slow', g.lease('slow', now).units, now, 100);
  const r = g.lease('slow', now);
  t.deepEqual(r.units, []);
  t.true(r.retryAfterMs > 0);
  t.is(g.lease('fast', now).units.length, 1);
});

test('the tail rule never defers the last units to members it defers too: among equals, whoever asks gets one', (t) => {
  // Nine equally fast members (as test/wide's), every one measured, none with a lease, two
  // units left: the others together are 8x one member's rate, but a unit is not split, so
  // none of them can finish one sooner than the asker. (It once told every asker to wait,
  // each for the others, until the agents' 15 s stall relay.)
  const ids = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'];
  const g = mk(11, { baseDepth: 1, maxDepth: 1, tailSlackFactor: 2 });
  for (const id of ids) g.heartbeat(id, 0);
  let now = 0;
  for (const id of ids) {
    const { units } = g.lease(id, now);
    t.is(units.length, 1, `${id} gets one of the first nine`);
    now = finish(g, id, units, now, 10);
  }
  const got = ids.map((id) => g.lease(id, now));
  t.is(got.filter((r) => r.units.length === 1).length, 2, `the last two units go to the first two askers: ${JSON.stringify(got)}`);
  t.true(got.slice(2).every((r) => r.units.length === 0 && r.exhausted), 'then nothing is left');
  // A member much slower than the fastest other is still told to wait (the rule's purpose).
  const s = mk(4, { baseDepth: 1, maxDepth: 1, tailSlackFactor: 2 });
  for (const id of ['fast1', 'fast2', 'slow']) s.heartbeat(id, 0);
  now = finish(s, 'fast1', s.lease('fast1', 0).units, 0, 10);
  now = finish(s, 'fast2', s.lease('fast2', now).units, now, 10);
  now = finish(s, 'slow', s.lease('slow', now).units, now, 100);
  const r = s.lease('slow', now);
  t.deepEqual(r.units, [], 'the slow member waits for the last unit');
  t.true(r.retryAfterMs > 0);
  t.is(s.lease('fast1', now).units.length, 1);
});

test('a restarted member gets its unfinished leases back in the pool at once', (t) => {
  const g = mk(8, { baseDepth: 3 });
  g.heartbeat('a', 0);
  const first = g.lease('a', 0).units;
  t.is(first.length, 3);
  t.deepEqual(g.lease('a', 10).units, []); // depth reached
  t.is(g.restart('a'), 3);
  t.deepEqual(g.lease('a', 20).units, first);
});

test('relay leases: granted for units nobody in the LAN group holds or leases, never to a non-representative', (t) => {
  const a = new GroupAllocator({ unitCount: 4, unitBytes: () => 1000 });
  a.heartbeat('x1', 0, { lanGroup: 'x', dataPort: 1, address: '10.0.0.1' });
  a.heartbeat('x2', 0, { lanGroup: 'x', dataPort: 2, address: '10.0.0.2' });
  a.heartbeat('y1', 0, { lanGroup: 'y', dataPort: 3, address: '10.0.1.1' });
  a.receipt('y1', 0, 10); // unit 0 held only in group y
  a.receipt('x2', 1, 10); // unit 1 held in x
  const g = a.relay('x1', [0, 1], 20);
  t.deepEqual(g.units, [0], 'unit 1 is in the group already');
  t.deepEqual(g.relayed, [0]);
  const r = new GroupAllocator({ unitCount: 4, unitBytes: () => 1000, representativeOnly: true });
  r.heartbeat('x1', 0, { lanGroup: 'x' });
  r.heartbeat('x2', 0, { lanGroup: 'x' });
  const gw = r.gatewayFor('x', 0);
  const other = gw === 'x1' ? 'x2' : 'x1';
  t.deepEqual(r.relay(other, [0, 1], 5).units, [], 'only the representative fetches');
  t.deepEqual(r.lease(other, 5).units, []);
  t.true(r.lease(gw!, 5).units.length > 0);
});

test('gateways: the lowest overhead per LAN group, kept until it leaves or gets 1.5x slower than the best', (t) => {
  const a = new GroupAllocator({ unitCount: 100, unitBytes: () => 1_000_000 });
  for (const [i, id] of ['a', 'b'].entries()) a.heartbeat(id, 0, { lanGroup: 'x', address: `10.0.0.${i + 1}`, dataPort: 7000 });
  t.is(a.gatewayFor('x', 0), 'a', 'before any measurement: the earliest member with an endpoint, provisionally');
  const first = 'a';
  const other = 'b';
  // Both get an overhead sample: `other` slightly faster, within the hysteresis.
  const sample = (id: string, ms: number) => {
    const u = a.lease(id, 0).units[0];
    t.truthy(a.sending(id, u, 0));
    a.receipt(id, u, ms);
  };
  sample(first, 100);
  t.is(a.gatewayFor('x', 100), first, 'the first measured member is the gateway');
  sample(other, 90);
  t.is(a.gatewayFor('x', 200), first, 'a slightly faster member does not take the role');
  sample(other, 10);
  sample(other, 10);
  sample(other, 10);
  t.is(a.gatewayFor('x', 300), other, 'a member much faster than the gateway (beyond 1.5x) takes the role');
  const now = a.gatewayFor('x', 300);
  a.leave(now!);
  t.is(a.gatewayFor('x', 400), first, 'the role moves when the gateway leaves');
});

test('a gateway that is forwarding keeps the role up to 4x slower than the best (1.5x otherwise): moving it restarts every path to it', (t) => {
  const a = new GroupAllocator({ unitCount: 100, unitBytes: () => 1_000_000 });
  for (const [i, id] of ['a', 'b'].entries()) a.heartbeat(id, 0, { lanGroup: 'x', address: `10.0.0.${i + 1}`, dataPort: 7000 });
  const sample = (id: string, at: number, ms: number) => {
    const u = a.lease(id, at).units[0];
    t.truthy(a.sending(id, u, at));
    a.receipt(id, u, at + ms);
  };
  sample('a', 0, 100);
  sample('b', 0, 100);
  t.is(a.gatewayFor('x', 100), 'a');
  a.heartbeat('a', 200, { forwarded: 50 });
  for (let i = 0; i < 6; i++) sample('b', 300, 40); // b's overhead falls to ~2.5x better
  t.is(a.gatewayFor('x', 1000), 'a', 'forwarding within the idle time: kept at 2.5x');
  for (let i = 0; i < 10; i++) sample('b', 1000, 10); // ~10x better
  t.is(a.gatewayFor('x', 2000), 'b', 'far slower than the best: the role moves even while forwarding');
  // Without forwarding, 2.5x is enough to move it (the 1.5x hysteresis).
  const c = new GroupAllocator({ unitCount: 100, unitBytes: () => 1_000_000 });
  for (const [i, id] of ['a', 'b'].entries()) c.heartbeat(id, 0, { lanGroup: 'x', address: `10.0.0.${i + 1}`, dataPort: 7000 });
  const sampleC = (id: string, at: number, ms: number) => {
    const u = c.lease(id, at).units[0];
    c.sending(id, u, at);
    c.receipt(id, u, at + ms);
  };
  sampleC('a', 0, 100);
  sampleC('b', 0, 100);
  t.is(c.gatewayFor('x', 100), 'a');
  for (let i = 0; i < 6; i++) sampleC('b', 300, 40);
  t.is(c.gatewayFor('x', 1000), 'b', 'not forwarding: the 1.5x hysteresis');
});

test('gateway eligibility: a unicast endpoint always, a measured overhead over none; a member that never leases gives way at once', (t) => {
  const a = new GroupAllocator({ unitCount: 8, unitBytes: () => 1000 });
  a.heartbeat('idle', 0, { lanGroup: 'x', address: '10.0.0.1', dataPort: 7000 }); // joined first, never leases
  a.heartbeat('noport', 0, { lanGroup: 'x', address: '10.0.0.2' });
  a.heartbeat('ok', 0, { lanGroup: 'x', address: '10.0.0.3', dataPort: 7001 });
  t.is(a.gatewayFor('x', 0), 'idle', 'nobody measured yet: the earliest member with an endpoint, provisionally');
  for (const id of ['noport', 'ok']) {
    const u = a.lease(id, 1).units[0];
    a.sending(id, u, 1);
    a.receipt(id, u, id === 'noport' ? 5 : 50); // noport is faster but unreachable
  }
  t.is(a.gatewayFor('x', 100), 'ok', 'the first measured member with an endpoint takes over, no hysteresis for an unmeasured gateway');
  t.is(a.memberViews(100).find((m) => m.id === 'idle')!.role, 'member');
  const lone = new GroupAllocator({ unitCount: 8, unitBytes: () => 1000 });
  lone.heartbeat('noport', 0, { lanGroup: 'x', address: '10.0.0.2' });
  t.is(lone.gatewayFor('x', 0), null, 'a member without a unicast endpoint is never gateway');
});

test('a gateway that forwards nothing while its group lacks units held elsewhere loses the role for a while', (t) => {
  const a = new GroupAllocator({ unitCount: 8, unitBytes: () => 1000, gatewayIdleMs: 1000, gatewayDemoteMs: 5000 });
  const join = (id: string, lan: string, i: number) => a.heartbeat(id, 0, { lanGroup: lan, address: `10.0.0.${i}`, dataPort: 7000 + i });
  join('x1', 'x', 1);
  join('x2', 'x', 2);
  join('y1', 'y', 3);
  const measure = (id: string, ms: number, now: number) => {
    const u = a.lease(id, now).units[0];
    a.sending(id, u, now);
    a.receipt(id, u, now + ms);
    return u;
  };
  measure('x1', 10, 0); // x1 fastest: gateway of x
  measure('x2', 40, 0);
  measure('y1', 20, 0); // y holds a unit x lacks
  t.is(a.gatewayFor('x', 100), 'x1');
  // x1 forwards: it keeps the role past the idle time.
  a.heartbeat('x1', 900, { forwarded: 10 });
  t.is(a.gatewayFor('x', 1500), 'x1', 'it forwarded within the idle time');
  // Then nothing more while y's unit is still missing in x.
  t.is(a.gatewayFor('x', 2000), 'x2', 'the silent gateway is replaced');
  t.is(a.memberViews(2000).find((m) => m.id === 'x1')!.gatewayDemotions, 1);
  t.is(a.gatewayFor('x', 2500), 'x2', 'the new gateway keeps the role: its idle clock started when it took it');
  // Once x holds everything y has, a quiet gateway is fine: nothing is left to forward.
  const y = a.map(2600);
  for (let u = 0; u < 8; u++) if (y.holders[u] >= 0 && y.members[y.holders[u]].group === 'y') a.receipt('x2', u, 2600);
  t.is(a.gatewayFor('x', 4000), 'x2');
  t.is(a.gatewayFor('x', 20_000), 'x1', 'the demotion ends; the fastest member is gateway again');
  t.deepEqual(a.memberViews(20_000).filter((m) => m.group === 'x').map((m) => [m.id, m.gatewayDemotions]).sort(), [['x1', 1], ['x2', 0]]);
});

test('hedging looks at progress: a holder still receiving at a fair pace is left alone, a stalled one is hedged', (t) => {
  const mk = () => {
    const a = new GroupAllocator({ unitCount: 4, unitBytes: () => 1_000_000, hedgeMinMs: 1000, hedgeFactor: 2 });
    for (const id of ['slow', 'fast']) a.heartbeat(id, 0, { lanGroup: 'x' });
    // fast gets a measured overhead of 1 ms per 1000 bytes (1 s a unit), then takes nothing else.
    const f = a.lease('fast', 0).units;
    for (const u of f) {
      a.sending('fast', u, 0);
      a.receipt('fast', u, 1000);
    }
    const s = a.lease('slow', 1000).units;
    for (const u of s) a.sending('slow', u, 1000);
    return { a, s };
  };
  // Busy box: after 4 s `slow` has half of each unit and its heartbeats say so: 4 s more to go,
  // a hedge would take 2 x 1 s. Overdue by time, but progressing: not hedged.
  {
    const { a, s } = mk();
    a.heartbeat('slow', 4900, { fetching: s, fetchingBytes: s.map(() => 900_000) });
    const g = a.lease('fast', 5000);
    t.deepEqual(g.hedged ?? [], [], 'progressing fast enough: no hedge');
    t.is(a.resentUnits.hedged, 0);
  }
  // Stalled: its heartbeats show no byte of the units for longer than hedgeMinMs.
  {
    const { a, s } = mk();
    a.heartbeat('slow', 1500, { fetching: s, fetchingBytes: s.map(() => 10_000) });
    a.heartbeat('slow', 4900, { fetching: s, fetchingBytes: s.map(() => 10_000) });
    const g = a.lease('fast', 5000);
    t.is(g.hedged?.length, 1, 'a stalled download is hedged');
    t.is(a.resentUnits.hedged, 1);
    t.is(a.sending('fast', g.hedged![0], 5000), 'hedged', 'the send is counted as a hedge');
  }
});

test('re-sends are counted by reason: relayed and stalled only for units another group already holds', (t) => {
  const a = new GroupAllocator({ unitCount: 4, unitBytes: () => 1000 });
  a.heartbeat('x1', 0, { lanGroup: 'x' });
  a.heartbeat('y1', 0, { lanGroup: 'y' });
  a.receipt('y1', 0, 1);
  a.receipt('y1', 1, 1);
  t.deepEqual(a.relay('x1', [0], 2, 'relayed').units, [0]);
  t.deepEqual(a.relay('x1', [1, 2], 3, 'stalled').units, [1, 2]);
  t.deepEqual(a.resentUnits, { hedged: 0, relayed: 1, stalled: 1 }, 'unit 2 was nobody\'s yet: a first send, not a re-send');
  t.is(a.sending('x1', 1, 4), 'stalled');
  t.is(a.sending('x1', 2, 4), 'lease');
});

test('all-fetched: a gateway idle while members fetch their shares is not demoted the moment copies may start', (t) => {
  const a = new GroupAllocator({ unitCount: 2, unitBytes: () => 1000, gatewayIdleMs: 1000, deferredStart: true });
  a.heartbeat('x1', 0, { lanGroup: 'x', address: '10.0.0.1', dataPort: 7001 });
  a.heartbeat('y1', 0, { lanGroup: 'y', address: '10.0.0.2', dataPort: 7002 });
  for (const id of ['x1', 'y1']) {
    const u = a.lease(id, 0).units[0];
    a.sending(id, u, 0);
    a.receipt(id, u, 10);
  }
  t.is(a.gatewayFor('x', 100), 'x1');
  // Every unit is held now, 5 s after x1 took the role without forwarding (nothing could cross).
  t.is(a.gatewayFor('x', 5000), 'x1', 'the idle clock starts when copies may cross');
  t.is(a.gatewayFor('x', 7000), null, 'still nothing forwarded 2 s after that: demoted');
});

test('a claim is not proof: a member claiming units its group keeps asking for loses those claims, cannot renew them by heartbeat, and is counted', (t) => {
  const a = new GroupAllocator({ unitCount: 8, unitBytes: () => 1000, claimExpireMs: 1000, claimReports: 2 });
  a.heartbeat('liar', 0, { lanGroup: 'x', have: new Uint8Array([0xff]) }); // claims all 8
  a.heartbeat('x1', 0, { lanGroup: 'x' });
  t.deepEqual(a.lease('x1', 0).units, [], 'everything looks held');
  t.deepEqual(a.relay('x1', [0, 1], 100, 'stalled').units, [], 'one ask is not enough');
  t.deepEqual(a.relay('x1', [0, 1], 600, 'stalled').units, [], 'nor two within claimExpireMs');
  const g = a.relay('x1', [0, 1], 1200, 'stalled');
  t.deepEqual(g.units, [0, 1], 'asked again after claimExpireMs: the claims expire and the units are leased');
  a.heartbeat('liar', 1300, { have: new Uint8Array([0xff]) }); // the liar repeats itself
  t.true(a.lease('x1', 1400).units.length > 0, 'the rest is free to lease: its heartbeats no longer renew the claims');
  const v = a.memberViews(1400).find((m) => m.id === 'liar')!;
  t.is(v.undeliveredClaims, 8);
  t.is(v.verifiedUnits, 0);
  t.is(a.claimsExpired, 8);
  // An honest holder is never asked for twice: a unit another member of the group holds and delivers is not re-leased.
  const b = new GroupAllocator({ unitCount: 2, unitBytes: () => 1000, claimExpireMs: 1000 });
  b.heartbeat('h', 0, { lanGroup: 'x', have: new Uint8Array([0x80]) });
  b.heartbeat('y', 0, { lanGroup: 'x' });
  t.deepEqual(b.relay('y', [0], 10, 'stalled').units, []);
  b.receipt('y', 0, 20); // the LAN delivered it
  t.is(b.memberViews(30).find((m) => m.id === 'h')!.undeliveredClaims, 0);
});

// Issue 14: the server slows an idle member's heartbeat; its timeout must follow its own
// interval, or it would be dropped between two of its beats.
test('a member is idle only when the whole group is complete, and is timed out after three of its own intervals', (t) => {
  const g = mk(4, { memberTimeoutMs: 3000 });
  const all = new Uint8Array(bitmapBytes(4));
  for (let u = 0; u < 4; u++) setBit(all, u);
  g.heartbeat('a', 0, { have: all });
  t.true(g.idle('a'), 'alone and complete: idle');
  g.heartbeat('b', 0);
  t.false(g.idle('a'), 'a member of its group still fetches: not idle');
  t.false(g.idle('b'));
  g.heartbeat('b', 0, { have: all });
  t.true(g.idle('a') && g.idle('b'), 'all complete: both idle');
  t.false(g.idle('nobody'));

  // a beats every 5 s (idle), b every 200 ms: b's timeout is the floor, a's 3 x 5 s + 1 s.
  g.setHeartbeatInterval('a', 5000);
  g.setHeartbeatInterval('b', 200);
  t.is(g.timeoutOf('a'), 16_000);
  t.is(g.timeoutOf('b'), 3000);
  t.deepEqual(g.expire(3001), ['b'], 'the fast member is dropped after the floor');
  t.deepEqual(g.expire(15_999), [], 'the slow member survives 3 of its intervals');
  t.true(g.hasMember('a'));
  t.deepEqual(g.expire(16_001), ['a']);
});

// Issue 14: overheads measured before a server restart (fleet.json) weight allocation again.
test('a remembered overhead ranks and weights a member until its first new sample', (t) => {
  const g = mk(40);
  for (const id of ['fast', 'slow', 'new']) g.heartbeat(id, 0);
  g.rememberOverhead('fast', 10); // ms per MiB
  g.rememberOverhead('slow', 40);
  const views = g.memberViews(0);
  t.deepEqual(views.map((v) => v.id), ['fast', 'slow', 'new'], 'ranked by the remembered overheads, unmeasured last');
  t.is(views[0].overheadMsPerMiB, 10);
  t.true(g.overheadRemembered('fast'));
  t.false(g.overheadRemembered('new'));
  // Depth grows as overhead shrinks against the median (here 40 ms/MiB): the fast member takes more.
  const fast = g.lease('fast', 0).units.length;
  const slow = g.lease('slow', 0).units.length;
  t.true(fast > slow, `fast leased ${fast}, slow ${slow}`);
  // A measurement replaces "remembered" and is smoothed from the remembered value.
  const mine = [...Array(40).keys()].find((x) => g.leaseHolder(x) === 'fast')!;
  g.sending('fast', mine, 0);
  g.receipt('fast', mine, 20);
  t.false(g.overheadRemembered('fast'));
  const after = g.memberViews(20).find((v) => v.id === 'fast')!.overheadMsPerMiB!;
  t.true(after > 10 && after < 20, `EWMA from the remembered 10 ms/MiB toward a 20 ms/MiB sample: ${after}`);
  // Remembering never overwrites a measurement.
  g.rememberOverhead('fast', 1000);
  t.is(g.memberViews(20).find((v) => v.id === 'fast')!.overheadMsPerMiB, after);
});

test('start gate (min members, max wait): nothing is leased until 3 members joined, or until the first joined max-wait ago', (t) => {
  const g = mk(30, { minMembers: 3, maxWaitMs: 5000 });
  g.heartbeat('a', 0);
  g.heartbeat('b', 100);
  const held = g.lease('a', 200);
  t.deepEqual(held.units, [], 'two of three members: held');
  t.false(held.exhausted, 'held, not exhausted: the member asks again');
  t.true(held.retryAfterMs > 0);
  g.heartbeat('c', 300);
  t.true(g.lease('a', 400).units.length > 0, 'the third member opens the gate');
  t.true(g.lease('c', 400).units.length > 0);

  const late = mk(30, { minMembers: 3, maxWaitMs: 5000 });
  late.heartbeat('a', 1000);
  t.deepEqual(late.lease('a', 5999).units, [], 'alone, before max-wait');
  t.true(late.lease('a', 6000).units.length > 0, 'alone, at max-wait from its join: the gate opens anyway');
  late.heartbeat('b', 6100);
  t.true(late.lease('b', 6100).units.length > 0, 'and stays open');

  const ungated = mk(30);
  ungated.heartbeat('x', 0);
  t.true(ungated.lease('x', 0).units.length > 0, 'off by default: one member leases at once');
});

test('origin leases (bytes from an HTTP range origin): one still queued at its member is not hedged however old its grant; the hedge clock starts when a heartbeat lists it', (t) => {
  const mkO = () => {
    const a = new GroupAllocator({ unitCount: 4, unitBytes: () => 1_000_000, hedgeMinMs: 1000, hedgeFactor: 2 });
    for (const id of ['slow', 'fast']) a.heartbeat(id, 0, { lanGroup: 'x' });
    const f = a.lease('fast', 0).units;
    for (const u of f) {
      a.originGranted('fast', u, 0);
      a.receipt('fast', u, 1000); // overhead from the grant: 1 s a unit
    }
    const s = a.lease('slow', 1000).units;
    for (const u of s) a.originGranted('slow', u, 1000);
    return { a, s };
  };
  {
    const { a } = mkO();
    // 60 s after the grant, nothing listed in `fetching`: queued behind slow's other downloads.
    a.heartbeat('slow', 60_000, {});
    t.deepEqual(a.lease('fast', 60_000).hedged ?? [], [], 'not started: not hedged');
  }
  {
    const { a, s } = mkO();
    a.heartbeat('slow', 60_000, { fetching: [s[0]], fetchingBytes: [0] });
    t.deepEqual(a.lease('fast', 60_500).hedged ?? [], [], 'just started: its clock runs from the heartbeat that listed it');
    a.heartbeat('slow', 64_000, { fetching: [s[0]], fetchingBytes: [0] });
    const g = a.lease('fast', 64_000);
    t.deepEqual(g.hedged, [s[0]], 'started 4 s ago and no byte since: hedged');
  }
});

/** The walk missingInGroup() used to do, as the oracle for the count it now keeps. */
class Walked extends GroupAllocator {
  walk(): number {
    let n = 0;
    for (let u = 0; u < this.opts.unitCount; u++) if (this.holderCount[u] === 0) n++;
    return n;
  }
}

test('the missing-unit count kept as holders come and go equals a walk over the units, through heartbeats, receipts, leaves, expiry and growth', (t) => {
  let seed = 17;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >>> 16) % n;
  const g = new Walked({ unitCount: 40, unitBytes: () => MIB, memberTimeoutMs: 3000, leaseMinMs: 10_000 });
  let now = 0;
  let units = 40;
  for (let step = 0; step < 3000; step++) {
    now += 10;
    const id = `m${rand(8)}`;
    switch (rand(6)) {
      case 0:
      case 1: {
        const have = new Uint8Array(bitmapBytes(units));
        for (let u = 0; u < units; u++) if (rand(3) === 0) setBit(have, u);
        g.heartbeat(id, now, { have });
        break;
      }
      case 2: {
        const { units: got } = g.lease(id, now, 2);
        finish(g, id, got, now, 5);
        break;
      }
      case 3:
        g.leave(id);
        break;
      case 4:
        now += rand(5000);
        g.expire(now);
        break;
      default:
        if (rand(40) === 0) g.growUnits((units += 8), units - 8);
    }
    if (g.missingInGroup() !== g.walk()) return t.fail(`step ${step}: kept ${g.missingInGroup()}, walked ${g.walk()}`);
  }
  t.is(g.missingInGroup(), g.walk());
  t.true(units > 40, 'the release grew');
});

test('a gateway is demoted exactly when its LAN group lacks a unit some other member holds: random groups and bitmaps against a unit-by-unit oracle', (t) => {
  // forwardsNothing looks at eight units a time (the union of the group's bitmaps); this checks it against the plain
  // definition over unit counts that end inside a byte, and groups that lack one unit, several, or none.
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
  let demoted = 0;
  let kept = 0;
  for (let round = 0; round < 300; round++) {
    const units = 1 + Math.floor(rnd() * 70);
    const a = new GroupAllocator({ unitCount: units, unitBytes: () => 1, gatewayIdleMs: 1000, gatewayDemoteMs: 1_000_000 });
    const groups = 1 + Math.floor(rnd() * 3);
    const haves = new Map<string, Uint8Array>();
    for (let k = 0; k < 2 + Math.floor(rnd() * 6); k++) {
      const id = `m${k}`;
      const have = new Uint8Array(bitmapBytes(units));
      const density = rnd();
      for (let u = 0; u < units; u++) if (rnd() < density) setBit(have, u);
      haves.set(id, have);
      a.heartbeat(id, 0, { lanGroup: k === 0 ? 'x' : `g${Math.floor(rnd() * groups)}`, address: `10.0.0.${k + 1}`, dataPort: 4000, have });
    }
    const gw = a.gatewayFor('x', 0);
    if (gw === null) continue;
    const inX = [...haves.keys()].filter((id) => a.memberViews(0).find((m) => m.id === id)!.group === 'x');
    let lacks = false;
    for (let u = 0; u < units; u++) {
      const anyone = [...haves.values()].some((h) => (h[u >> 3] & (0x80 >> (u & 7))) !== 0);
      const x = inX.some((id) => (haves.get(id)![u >> 3] & (0x80 >> (u & 7))) !== 0);
      if (anyone && !x) lacks = true;
    }
    const others = inX.length < haves.size;
    const after = a.gatewayFor('x', 10_000);
    const wasDemoted = a.memberViews(10_000).find((m) => m.id === gw)!.gatewayDemotions === 1;
    t.is(wasDemoted, lacks && others, `round ${round}: ${units} units, group x ${inX.join(',')}, gateway ${gw} -> ${after}`);
    if (wasDemoted) demoted++;
    else kept++;
  }
  t.true(demoted > 20 && kept > 20, `both outcomes covered (${demoted} demoted, ${kept} kept)`);
});
