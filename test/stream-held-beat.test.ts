import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { feed, oldServer, streamSetup } from './helpers/stream-server';
import { HeldBeats } from '../src/agent/stream-beat';
import { ServerAccess } from '../src/net/server-access';
import { StreamPublisher } from '../src/release/stream-publish';
import { streamRoutes } from '../src/server/stream-routes';
import { silentLogger } from '../src/util/log';
import type { StreamBeatAnswer } from '../src/wire/stream-control';

/*
 * Held heartbeats (docs/protocol.md, "Held heartbeats"): a stream heartbeat that asks a
 * lease and carries `waitMs` is held by the server until a unit can be leased to the member,
 * so members do not each beat at every new batch. Bounds are on counts, never on time.
 */

const UNIT = 64 * 1024;

async function beat(url: string, member: string, extra: Record<string, unknown>): Promise<{ status: number; body: StreamBeatAnswer & { error?: string; message?: string } }> {
  const res = await fetch(`${url}/v1/streams/cam/heartbeat`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ v: 1, group: 'g1', member, haveFrom: 0, have: '', lease: 1, ...extra }),
  });
  return { status: res.status, body: (await res.json()) as StreamBeatAnswer };
}

test('a held beat is answered with the unit of the next batch, leased to one of two held members only; the other is answered empty at its hold end', async (t) => {
  const s = await streamSetup(t);
  const pub = await StreamPublisher.open(s.store, 'cam', s.key, { unitSize: UNIT });
  t.teardown(() => pub.close());
  await pub.push(randomBytes(UNIT));
  await pub.flush();
  const alloc = streamRoutes(s.store).alloc;
  // m1 takes unit 0; then nothing is left to lease.
  const first = await beat(s.url, 'm1', { join: true });
  t.deepEqual(first.body.lease.units, [0]);
  const bad = await beat(s.url, 'm1', { waitMs: 60_001 });
  t.is(bad.status, 400, 'waitMs past its bound is refused');
  t.regex(bad.body.message ?? '', /waitMs/);
  // Both members held (m1 still lacks nothing it could lease; m2 joins and asks).
  const h1 = beat(s.url, 'm1', { waitMs: 1000 });
  const h2 = beat(s.url, 'm2', { waitMs: 1000, join: true });
  while (alloc.held.held < 2) await new Promise((r) => setTimeout(r, 5));
  t.is(alloc.held.leased + alloc.held.timedOut, 0, 'neither is answered before a unit appears');
  await pub.push(randomBytes(UNIT));
  await pub.flush(); // batch 1: unit 1
  const [a1, a2] = await Promise.all([h1, h2]);
  const leased = [...a1.body.lease.units, ...a2.body.lease.units];
  t.deepEqual(leased, [1], 'unit 1 went to exactly one of the held members');
  t.is(a1.body.nextUnit, 2);
  t.is(a2.body.nextUnit, 2);
  t.deepEqual(alloc.held, { held: 2, leased: 1, timedOut: 1 });
  const m = s.server.metrics();
  for (const [outcome, n] of [['held', 2], ['leased', 1], ['timed_out', 1]] as const) t.regex(m, new RegExp(`^fleetcast_server_stream_heartbeats_held_total\\{outcome="${outcome}"\\} ${n}$`, 'm'));
  // A beat that wants nothing, or has no waitMs, is answered at once (not counted as held).
  await beat(s.url, 'm1', { lease: 0, waitMs: 1000 });
  await beat(s.url, 'm2', {});
  t.is(alloc.held.held, 2);
});

test('a held beat whose member hangs up ends the hold without an answer', async (t) => {
  const s = await streamSetup(t);
  const pub = await StreamPublisher.open(s.store, 'cam', s.key, { unitSize: UNIT });
  t.teardown(() => pub.close());
  await pub.push(randomBytes(UNIT));
  await pub.flush();
  const alloc = streamRoutes(s.store).alloc;
  await beat(s.url, 'm1', { join: true });
  const ctrl = new AbortController();
  const res = fetch(`${s.url}/v1/streams/cam/heartbeat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ v: 1, group: 'g1', member: 'm1', haveFrom: 0, have: '', lease: 1, waitMs: 1000 }), signal: ctrl.signal });
  res.catch(() => undefined);
  while (alloc.held.held < 1) await new Promise((r) => setTimeout(r, 5));
  ctrl.abort();
  await pub.push(randomBytes(UNIT));
  await pub.flush();
  // The next member's beat takes unit 1: the hung-up hold leased nothing.
  const other = await beat(s.url, 'm2', { join: true });
  t.deepEqual(other.body.lease.units, [1]);
  t.is(alloc.held.leased, 0);
});

test('HeldBeats: waitMs only while a lease is wanted; off for good when the server refuses the field', (t) => {
  const h = new HeldBeats();
  t.deepEqual(h.field(0), {});
  t.deepEqual(h.field(2), { waitMs: 1000 });
  t.false(h.refused(new Error('BAD_BODY: unknown field "mapToken"'), silentLogger));
  t.true(h.refused(new Error('stream cam: POST /v1/streams/cam/heartbeat: BAD_BODY: unknown field "waitMs"'), silentLogger));
  t.deepEqual(h.field(2), {});
});

test('on the LAN: members that hold their beats send fewer heartbeats than one per batch each, and a member of a server that refuses waitMs gets every byte beating per batch', async (t) => {
  const s = await streamSetup(t);
  const old = await oldServer(s.url, 'waitMs');
  t.teardown(() => old.close());
  const source = randomBytes(2_000_000);
  const pub = await StreamPublisher.open(s.store, 'cam', s.key, { unitSize: UNIT, flushMs: 100 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush();
  const ids = ['a', 'b', 'c'];
  const agents = ids.map((id) => s.agent('cam', id, id === 'c' ? { server: new ServerAccess({ url: old.url, plainHttp: true }) } : {}));
  const runs = agents.map((a) => a.run());
  const alloc = streamRoutes(s.store).alloc;
  await feed(pub, source.subarray(10_000), 10_000);
  await Promise.all(runs);
  for (const id of ids) t.true((await fs.readFile(path.join(s.dir, `${id}.bin`))).equals(source), `agent ${id}: sink equals the source`);
  const batches = agents[0].delivery.lastBatch.batch + 1;
  const beats = alloc.heartbeats.get('cam') ?? 0;
  const viaOld = old.beats() - old.refused();
  t.log(`${batches} batches, ${beats} heartbeats (${viaOld} of them c's, through the old server); held ${alloc.held.held}, answered with a lease ${alloc.held.leased}, at the hold's end ${alloc.held.timedOut}; the old server refused waitMs ${old.refused()} time(s)`);
  t.is(old.refused(), 1, 'the member of the old server sent waitMs once, then beat without it');
  t.false(agents[2]['held'].on);
  t.true(alloc.held.leased > 0, 'held beats were answered with leases');
  // c beats per batch, as all three did; a and b together about once per unit leased to them
  // (one unit per batch here) and once a second besides: not twice per batch.
  t.true(viaOld >= 0.7 * batches, `c (no held beats) beat about once per batch (beats coalesce while one is in flight): ${viaOld} >= 0.7 x ${batches}`);
  t.true(beats - viaOld <= 1.3 * batches + 15, `a and b: ${beats - viaOld} heartbeats <= 1.3 x ${batches} batches + 15 (about 2 x ${batches} beating per batch)`);
});
