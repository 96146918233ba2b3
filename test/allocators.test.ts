import test from 'ava';
import { GroupAllocator } from '../src/server/allocator';
import { Allocators } from '../src/server/allocators';
import { setChannel } from '../src/release/channels';
import { startFleet } from './helpers/fleet';
import { EXPIRE_SLICE } from '../src/server/server-members';

// Issue 17: the server's timer walked every allocator and member twice a second, so idle
// members cost the server CPU with no request at all. Expiry now visits only the allocators
// whose earliest deadline passed (a heap by GroupAllocator.nextDue). These tests count the
// members walked, never time them.

const HAVE = new Uint8Array([0x80]); // the one unit: idle

function book(allocators: number, perAllocator: number) {
  const b = new Allocators();
  const ends = new Map<string, (at: number) => void>();
  for (let a = 0; a < allocators; a++) {
    const g = new GroupAllocator({ unitCount: 1, unitBytes: () => 1, memberTimeoutMs: 1000 });
    b.set(`r/a${a}`, g);
    for (let m = 0; m < perAllocator; m++) {
      g.heartbeat(`m${m}`, 0, { have: HAVE, lanGroup: `a${a}` });
      g.setHeartbeatInterval(`m${m}`, 60_000);
      // Every member holds a 1.7 poll naming it, but m0 of a0.
      if (a !== 0 || m !== 0) ends.set(`a${a}/m${m}`, g.holdPoll(`m${m}`, 0, 60_000)!);
    }
  }
  /** One timer tick at `now`, as the server's: expire in each allocator due; the members walked. */
  const tick = (now: number) => {
    let walked = 0;
    const gone: string[] = [];
    for (const [key, g] of b.due(now)) {
      const before = g.membersWalked;
      for (const id of g.expire(now)) gone.push(`${key}/${id}`);
      walked += g.membersWalked - before;
    }
    return { walked, gone };
  };
  return { b, ends, tick };
}

/** Live members in the server's fleet view (GET /v1/fleet), all groups. */
async function fleetMembers(url: string): Promise<number> {
  const v = (await (await fetch(`${url}/v1/fleet`)).json()) as { groups: { members: { id: string }[] }[] };
  return v.groups.flatMap((g) => g.members.map((m) => m.id)).length;
}

test('expiry visits only allocators whose earliest deadline passed: idle members holding polls cost no walk per tick, however many', (t) => {
  for (const n of [10, 200]) {
    const { b, tick } = book(n, 10);
    t.is(b.members, n * 10, 'live members counted by joins');
    t.is(tick(500).walked, 0, 'before any deadline');
    // The first bound is the join's (memberTimeoutMs): each allocator is walked once.
    t.is(tick(1001).walked, n * 10);
    let walked = 0;
    for (let now = 1500; now <= 181_000; now += 500) walked += tick(now).walked;
    t.is(walked, 0, `${n * 10} idle members: nothing walked in 360 ticks`);
    t.is(b.get('r/a0')!.nextDue, 181_000, 'a0 is due when m0 (no poll, beating every 60 s) times out');
    t.is(b.get('r/a1')!.nextDue, Infinity, 'every member of a1 holds a poll: nothing can expire');
    // m0 holds no poll: it times out at its deadline (3 of its intervals and a second), the others stay.
    const last = tick(181_001);
    t.deepEqual(last.gone, ['r/a0/m0']);
    t.is(last.walked, 10, 'only a0 is walked');
    t.is(b.members, n * 10 - 1);
  }
});

test('a member whose poll ends times out three fallback intervals after, in the one allocator walked; a lease is reclaimed at its deadline', (t) => {
  const { b, ends, tick } = book(20, 10);
  tick(1001);
  ends.get('a5/m3')!(200_000);
  t.is(b.get('r/a5')!.nextDue, 200_000 + 3 * 60_000 + 1000);
  let walked = 0;
  for (let now = 1500; now <= 381_000; now += 500) walked += tick(now).walked;
  t.is(walked, 10, 'a0 alone (m0 times out at 181,000), no other walk');
  const r = tick(381_001);
  t.deepEqual(r.gone, ['r/a5/m3']);
  t.is(r.walked, 10);
  // A lease taken now is due at its deadline, though every member of its allocator holds a poll.
  const g = new GroupAllocator({ unitCount: 2, unitBytes: () => 1, memberTimeoutMs: 1000, leaseMinMs: 5000 });
  b.set('r2/x', g);
  g.heartbeat('w', 400_000, { lanGroup: 'x' });
  g.holdPoll('w', 400_000, 60_000);
  tick(401_001);
  t.is(g.nextDue, Infinity);
  const lease = g.lease('w', 402_000);
  t.true(lease.units.length > 0, JSON.stringify(lease));
  t.is(g.nextDue, 402_000 + 5000, "due at the lease's deadline (leaseMinMs), not never");
  t.is(tick(g.nextDue).walked, 0, 'not before its deadline');
  t.is(tick(g.nextDue + 1).walked, 1);
  t.is(g.leaseHolder(lease.units[0]), null, 'the overdue lease is back in the pool');
});

test('a server over idle members: ticks walk no member once their deadlines are known, and one holding no poll still times out at its deadline', async (t) => {
  let clock = 1_000_000;
  const f = await startFleet(t, { size: 16384, unitSize: 16384, heartbeatMs: 200, memberTimeoutMs: 2000, server: { idleHeartbeatMs: 1000, now: () => clock } });
  await setChannel(f.server.store.dir, { channel: 'stable', release: f.manifest.id, name: 'release.bin', publishedAt: 1 });
  const have = Buffer.from([0x80]).toString('base64');
  const post = async (p: string, body: unknown) => {
    const res = await fetch(f.url + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const ref = (i: number) => ({ release: f.manifest.id, group: `site${i % 4}`, member: `m${i}` });
  for (let i = 0; i < 40; i++) t.is((await post('/v1/join', { ...ref(i), have, mapVersion: 0 })).status, 200);
  // m0-m19 hold a 1.7 poll naming them; m20-m39 hold none.
  const gone = new AbortController();
  t.teardown(() => gone.abort());
  for (let i = 0; i < 20; i++) {
    const q = new URLSearchParams({ release: f.manifest.id, waitMs: '300000', member: `m${i}`, group: `site${i % 4}` });
    void fetch(`${f.url}/v1/channels/stable?${q}`, { signal: gone.signal }).catch(() => undefined);
  }
  for (let i = 0; i < 40; i++) {
    const want = i < 20 ? 86_400_000 : 1000;
    let ms = 0;
    for (let k = 0; k < 200 && ms !== want; k++) {
      ms = (await post('/v1/heartbeat', { ...ref(i), have, mapVersion: 0 })).body.heartbeatMs as number;
      if (ms !== want) await new Promise((r) => setTimeout(r, 20));
    }
    t.is(ms, want, `m${i}: ${i < 20 ? 'its poll is held' : 'idle, no poll'}`);
  }
  const ticks = async (n: number) => {
    const t0 = f.server.expiryWork().ticks;
    while (f.server.expiryWork().ticks < t0 + n) await new Promise((r) => setTimeout(r, 50));
  };
  const members = () => fleetMembers(f.url);
  await ticks(3);
  const w0 = f.server.expiryWork();
  await ticks(5);
  t.is(f.server.expiryWork().members, w0.members, 'no deadline passed: no member walked');
  // Past the join's bound (memberTimeoutMs): each of the 4 allocators is walked once.
  clock += 2500;
  await ticks(3);
  const w1 = f.server.expiryWork();
  t.is(w1.members - w0.members, 40);
  t.is(w1.allocators - w0.allocators, 4);
  await ticks(5);
  t.is(f.server.expiryWork().members, w1.members, 'then nothing is walked tick after tick');
  t.is(await members(), 40);
  // Past 3 idle intervals and a second since their last beat: m20-m39 time out, m0-m19 stay.
  clock += 2000;
  for (let k = 0; k < 200 && (await members()) !== 20; k++) await new Promise((r) => setTimeout(r, 20));
  t.is(await members(), 20, 'the members without a poll timed out at their deadline');
  await ticks(3);
  const w2 = f.server.expiryWork();
  t.is(w2.members - w1.members, 40, 'each allocator walked once more');
  await ticks(5);
  t.is(f.server.expiryWork().members, w2.members, 'and the poll holders cost no walk after');
});

test('a tick with more due allocators than one slice expires them over several turns of the loop, none lost', async (t) => {
  let clock = 1_000_000;
  const groups = 2 * EXPIRE_SLICE + 1;
  const f = await startFleet(t, { size: 16384, unitSize: 16384, heartbeatMs: 200, memberTimeoutMs: 2000, server: { now: () => clock, limits: { maxGroupsPerRelease: groups + 8 } } });
  const have = Buffer.from([0x80]).toString('base64');
  for (let i = 0; i < groups; i++) {
    const res = await fetch(`${f.url}/v1/join`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ release: f.manifest.id, group: `site${i}`, member: `m${i}`, have, mapVersion: 0 }) });
    t.is(res.status, 200);
    await res.arrayBuffer();
  }
  const members = () => fleetMembers(f.url);
  t.is(await members(), groups);
  const w0 = f.server.expiryWork();
  clock += 60_000; // past every member's deadline: every allocator is due on the next tick
  for (let k = 0; k < 500 && (await members()) !== 0; k++) await new Promise((r) => setTimeout(r, 20));
  t.is(await members(), 0, 'every member timed out');
  const w1 = f.server.expiryWork();
  t.true(w1.allocators - w0.allocators >= groups, `${w1.allocators - w0.allocators} allocators visited`);
  t.is(w1.largestSlice, EXPIRE_SLICE, 'no turn of the loop visited more than one slice');
  t.true(w1.slices - w0.slices >= 3, `${w1.slices - w0.slices} turns`);
});
