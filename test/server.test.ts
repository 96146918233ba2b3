import test from 'ava';
import { createHash } from 'node:crypto';
import { startFleet } from './helpers/fleet';

async function post(url: string, path: string, body: unknown, raw = false) {
  const res = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: raw ? (body as string) : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

test('bad request bodies get 400 with a message naming the field', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  let r = await post(f.url, '/v1/heartbeat', '{not json', true);
  t.is(r.status, 400);
  t.regex(String(r.body.message), /not JSON/);
  r = await post(f.url, '/v1/heartbeat', { ...ref, member: 'bad member!' });
  t.is(r.status, 400);
  t.regex(String(r.body.message), /member must be/);
  r = await post(f.url, '/v1/heartbeat', { ...ref, colour: 'red' });
  t.regex(String(r.body.message), /unknown field "colour"/);
  r = await post(f.url, '/v1/receipt', { ...ref });
  t.regex(String(r.body.message), /missing field "unit"/);
  r = await post(f.url, '/v1/heartbeat', { ...ref, have: 'AAAAAAAA' });
  t.is(r.status, 400);
  t.regex(String(r.body.message), /have must be 1 bytes/);
  r = await post(f.url, '/v1/heartbeat', { ...ref, release: 'ab'.repeat(16) });
  t.is(r.status, 404);
  t.is(r.body.error, 'NO_RELEASE');
  t.true(f.server.stats.badRequests >= 6);
  // Counted by status and code too, so a test that sees a refusal can say which.
  t.true(f.server.stats.badRequestCodes['400 BAD_BODY'] >= 5, JSON.stringify(f.server.stats.badRequestCodes));
  t.is(f.server.stats.badRequestCodes['404 NO_RELEASE'], 1);
});

test('unit bytes go only to the lease holder, stream whole or by range, and are counted as egress', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  const unitUrl = (u: number, member = 'm1') => `${f.url}/v1/releases/${f.manifest.id}/units/${u}?group=g&member=${member}`;
  t.is((await fetch(unitUrl(0))).status, 409); // not joined
  t.is((await post(f.url, '/v1/join', ref)).status, 200);
  t.is((await post(f.url, '/v1/join', { ...ref, member: 'm2' })).status, 200);
  t.is((await fetch(unitUrl(0))).status, 409); // joined, no lease
  const lease = await post(f.url, '/v1/lease', ref);
  const units = lease.body.units as number[];
  t.true(units.length > 0);
  const u = units[0];
  t.is((await fetch(unitUrl(u, 'm2'))).status, 409, 'another member may not take a leased unit');
  const res = await fetch(unitUrl(u));
  t.is(res.status, 200);
  const bytes = Buffer.from(await res.arrayBuffer());
  t.is(createHash('sha256').update(bytes).digest('hex'), f.manifest.units[u]);
  t.is(res.headers.get('x-fleetcast-sha256'), f.manifest.units[u]);
  const part = await fetch(unitUrl(u), { headers: { range: 'bytes=100-199' } });
  t.is(part.status, 206);
  t.deepEqual(Buffer.from(await part.arrayBuffer()), bytes.subarray(100, 200));
  t.is((await fetch(unitUrl(u), { headers: { range: 'bytes=99999-' } })).status, 416);
  t.is(f.server.stats.unitBytesSent, 16384 + 100);
  t.is((await fetch(`${f.url}/v1/releases/${f.manifest.id}/units/x?group=g&member=m1`)).status, 400);
  t.is((await fetch(`${f.url}/v1/releases/${f.manifest.id}/units/99?group=g&member=m1`)).status, 404);
});

test('manifest, release list, fleet view; unknown endpoints and methods', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  const m = await fetch(`${f.url}/v1/releases/${f.manifest.id}/manifest`);
  t.deepEqual(Buffer.from(await m.arrayBuffer()), f.manifest.raw);
  const list = (await (await fetch(`${f.url}/v1/releases`)).json()) as { releases: { id: string }[] };
  t.deepEqual(list.releases.map((r) => r.id), [f.manifest.id]);
  await post(f.url, '/v1/join', { release: f.manifest.id, group: 'g', member: 'm1' });
  const fleet = (await (await fetch(`${f.url}/v1/fleet`)).json()) as { groups: { group: string; members: { id: string }[] }[] };
  t.is(fleet.groups[0].group, 'g');
  t.is(fleet.groups[0].members[0].id, 'm1');
  t.is((await fetch(`${f.url}/v2/nothing`)).status, 404);
  t.is((await fetch(`${f.url}/v1/releases`, { method: 'DELETE' })).status, 405);
});

test('a heartbeat carries the split map: who leases or holds each unit, and the ranking', async (t) => {
  const f = await startFleet(t, { size: 64 * 1024, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  await post(f.url, '/v1/join', ref);
  const units = (await post(f.url, '/v1/lease', ref)).body.units as number[];
  const hb = await post(f.url, '/v1/heartbeat', { ...ref, member: 'm2' });
  const members = hb.body.members as { id: string; rank: number }[];
  const holders = hb.body.holders as number[];
  t.is(holders.length, 4);
  for (const u of units) t.is(members[holders[u]].id, 'm1');
  t.deepEqual(members.map((m) => m.rank), [1, 2]);
  t.is(hb.body.groupComplete, false);
});

test('a fresh server leases at once; after a restart it waits for the members it saw, until they rejoin', async (t) => {
  const f = await startFleet(t, { size: 64 * 1024, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  await post(f.url, '/v1/join', ref);
  await post(f.url, '/v1/join', { ...ref, member: 'm2' });
  const first = await post(f.url, '/v1/lease', ref);
  t.true((first.body.units as number[]).length > 0, 'fresh store: no rebuild wait');
  await f.server.stop(); // saves members.json
  const { FleetcastServer } = await import('../src/server/server');
  const again = new FleetcastServer({ storeDir: `${f.dir}/store`, host: '127.0.0.1', port: 0, heartbeatMs: 200, rebuildGraceMs: 30_000 });
  const { url } = await again.start();
  t.teardown(() => again.stop());
  await post(url, '/v1/join', ref);
  const waiting = await post(url, '/v1/lease', ref);
  t.deepEqual(waiting.body.units, [], 'm2 has not rejoined: nothing leased yet');
  t.true((waiting.body.retryAfterMs as number) > 0);
  await post(url, '/v1/join', { ...ref, member: 'm2' });
  const after = await post(url, '/v1/lease', ref);
  t.true((after.body.units as number[]).length > 0, 'everyone is back: leasing resumes before the grace ends');
});

test('a heartbeat that arrives after its member left does not bring it back (only a join does), and re-sends are refused an unknown reason', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  const all = Buffer.from([0xf0]).toString('base64'); // every one of the 4 units
  t.is((await post(f.url, '/v1/join', { ...ref, have: all })).status, 200);
  t.is((await post(f.url, '/v1/leave', ref)).status, 200);
  const late = await post(f.url, '/v1/heartbeat', { ...ref, have: all });
  t.is(late.status, 409, 'the heartbeat that was in flight when m1 left');
  t.is(late.body.error, 'NOT_JOINED');
  const view = f.server.fleet() as { groups: { members: { id: string }[] }[] };
  t.false(view.groups.some((g) => g.members.some((m) => m.id === 'm1')), 'no ghost holder in the split map');
  t.is((await post(f.url, '/v1/join', ref)).status, 200, 'a join comes back at once');
  t.is((await post(f.url, '/v1/heartbeat', ref)).status, 200);
  const bad = await post(f.url, '/v1/lease', { ...ref, want: [0], reason: 'whim' });
  t.is(bad.status, 400);
  t.regex(String(bad.body.message), /reason must be/);
});

// Issue 14: an idle agent's heartbeat dominated its cost. The server now answers a slow
// interval once a member and its whole group hold the release, and times each member out
// after three of its own intervals, so a slow one is not dropped between its beats.
test('the heartbeat interval follows the phase, and a member beating slowly is not timed out', async (t) => {
  let clock = 1_000_000;
  const f = await startFleet(t, { size: 64 * 1024, unitSize: 16384, heartbeatMs: 200, memberTimeoutMs: 2000, server: { idleHeartbeatMs: 1000, now: () => clock } });
  const all = Buffer.from([0xf0]).toString('base64'); // 4 units
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  const beat = async (member: string, extra: Record<string, unknown> = {}, group = 'g') => {
    const r = await post(f.url, '/v1/heartbeat', { ...ref, member, group, ...extra });
    t.is(r.status, 200, JSON.stringify(r.body));
    return r.body.heartbeatMs;
  };
  t.is(await beat('m1'), 200, 'nothing held yet: fast');
  t.is(await beat('m1', { have: all, fetching: [1] }), 200, 'still receiving a unit: fast');
  t.is(await beat('m1', { have: all }), 1000, 'alone and complete: slow');
  t.is(await beat('m2'), 200, 'a member with units to fetch: fast');
  t.is(await beat('m1', { have: all }), 200, 'its group transfers again: fast');
  t.is(await beat('m2', { have: all, copying: true }), 200, 'copying to other groups: fast');
  t.is(await beat('m2', { have: all }), 1000);
  t.is(await beat('m1', { have: all }), 1000, 'the whole group holds the release: slow');
  // A control member in another group beats fast (nothing held) and then goes silent.
  t.is(await beat('c', {}, 'h'), 200);

  const members = async () => {
    const v = (await (await fetch(`${f.url}/v1/fleet`)).json()) as { groups: { group: string; members: { id: string }[] }[] };
    return v.groups.flatMap((g) => g.members.map((m) => m.id)).sort();
  };
  const untilMembers = async (want: string[], what: string) => {
    for (let i = 0; i < 3000 && JSON.stringify(await members()) !== JSON.stringify(want); i++) await new Promise((r) => setTimeout(r, 20));
    t.deepEqual(await members(), want, what);
  };
  // 3.5 s of silence: past the 2 s floor (the control goes), short of 3 x 1 s + 1 s.
  clock += 3500;
  await untilMembers(['m1', 'm2'], 'the fast member is dropped, the slow ones are not');
  clock += 1000; // 4.5 s: past three of their intervals and the slack
  await untilMembers([], 'slow members that stay silent go too');
});

test('a channel request with release and waitMs is held until the channel moves (long poll)', async (t) => {
  const f = await startFleet(t, { size: 20_000, unitSize: 16384 });
  const { setChannel } = await import('../src/release/channels');
  const { publishRelease } = await import('../src/release/publish');
  const { loadPrivateKey } = await import('../src/release/keys');
  const { promises: fs } = await import('node:fs');
  const store = `${f.dir}/store`;
  await setChannel(store, { channel: 'stable', release: f.manifest.id, name: 'release.bin', publishedAt: 1 });
  const url = (q: string) => `${f.url}/v1/channels/stable${q}`;
  // Without the query: at once, as in 1.1.
  const plain = await fetch(url(''));
  t.is(plain.status, 200);
  t.is(plain.headers.get('x-fleetcast-long-poll'), null);
  // A release the channel does not name: at once, with the header.
  const other = await fetch(url(`?release=${'ab'.repeat(16)}&waitMs=60000`));
  t.is(((await other.json()) as { release: string }).release, f.manifest.id);
  t.is(other.headers.get('x-fleetcast-long-poll'), '300000');
  for (const q of ['?waitMs=100', `?release=${f.manifest.id}`, `?release=x&waitMs=100`, `?release=${f.manifest.id}&waitMs=-1`]) {
    const r = await fetch(url(q));
    t.is(r.status, 400, q);
    t.is(((await r.json()) as { error: string }).error, 'BAD_QUERY');
  }
  // Held: the answer can name the new release only if the move ended the hold (the wait is 60 s).
  const held = fetch(url(`?release=${f.manifest.id}&waitMs=60000`));
  await fs.writeFile(`${f.dir}/v2.bin`, Buffer.alloc(1000, 7));
  const v2 = await publishRelease(`${f.dir}/v2.bin`, store, await loadPrivateKey(f.keyPath), { name: 'v2.bin' });
  await setChannel(store, { channel: 'stable', release: v2.id, name: 'v2.bin', publishedAt: 2 });
  const res = await held;
  t.is(res.status, 200);
  t.is(((await res.json()) as { release: string }).release, v2.id);
  // A hold that ends without a move answers the same release.
  const quiet = await fetch(url(`?release=${v2.id}&waitMs=50`));
  t.is(((await quiet.json()) as { release: string }).release, v2.id);
});

// Issue 14: "hook results and overheads survive a server restart": the allocator uses them too.
test('overheads measured before a server restart rank the members again when they rejoin', async (t) => {
  let clock = 1_000_000;
  const f = await startFleet(t, { size: 4 * 16384, unitSize: 16384, server: { now: () => clock } });
  const ref = { release: f.manifest.id, group: 'g', member: 'slow' };
  const fetchAndReceipt = async (member: string, ms: number) => {
    const units = (await post(f.url, '/v1/lease', { ...ref, member })).body.units as number[];
    const u = units[0];
    const r = await fetch(`${f.url}/v1/releases/${f.manifest.id}/units/${u}?group=g&member=${member}`);
    await r.arrayBuffer();
    clock += ms;
    t.is((await post(f.url, '/v1/receipt', { ...ref, member, unit: u })).status, 200);
  };
  await post(f.url, '/v1/join', ref);
  await post(f.url, '/v1/join', { ...ref, member: 'fast' });
  await fetchAndReceipt('slow', 800);
  await fetchAndReceipt('fast', 100);
  await f.server.stop(); // notes the overheads in fleet.json
  const { FleetcastServer } = await import('../src/server/server');
  const again = new FleetcastServer({ storeDir: `${f.dir}/store`, host: '127.0.0.1', port: 0, heartbeatMs: 200, now: () => clock });
  const { url } = await again.start();
  t.teardown(() => again.stop());
  // The slow member rejoins first: unmeasured members would rank by join order.
  await post(url, '/v1/join', ref);
  const hb = await post(url, '/v1/join', { ...ref, member: 'fast' });
  const members = hb.body.members as { id: string; rank: number; overheadMsPerMiB: number }[];
  t.deepEqual(members.map((m) => m.id), ['fast', 'slow'], 'ranked by the overheads from before the restart');
  t.true(members[1].overheadMsPerMiB > 4 * members[0].overheadMsPerMiB, JSON.stringify(members));
  const view = (await (await fetch(`${url}/v1/fleet`)).json()) as { groups: { members: { id: string; overheadBeforeRestart?: boolean }[] }[] };
  t.true(view.groups[0].members.every((m) => m.overheadBeforeRestart === true), 'marked as remembered until measured again');
});
