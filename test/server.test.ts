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
