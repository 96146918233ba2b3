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
  for (const id of ['a', 'b']) a.heartbeat(id, 0, { lanGroup: 'x' });
  const first = a.gatewayFor('x', 0)!;
  const other = first === 'a' ? 'b' : 'a';
  // Both get an overhead sample: `other` slightly faster, within the hysteresis.
  const sample = (id: string, ms: number) => {
    const u = a.lease(id, 0).units[0];
    t.truthy(a.sending(id, u, 0));
    a.receipt(id, u, ms);
  };
  sample(first, 100);
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
