import test from 'ava';
import * as http from 'node:http';
import { AddressInfo } from 'node:net';
import { startFleet } from './helpers/fleet';
import { MapMirror } from '../src/wire/map-mirror';
import type { HeartbeatAnswer14 } from '../src/wire/http-bodies';
import { ControlClient } from '../src/agent/control-client';
import { Heartbeats } from '../src/agent/heartbeat';
import { ServerAccess } from '../src/net/server-access';
import { silentLogger } from '../src/util/log';

/** Protocol 1.4 (docs/protocol.md section 14): map deltas, folded receipts and leases, and 1.3 agents beside them. */

async function post(url: string, path: string, body: unknown): Promise<{ status: number; bytes: number; body: Record<string, unknown> }> {
  const res = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, bytes: Buffer.byteLength(text), body: JSON.parse(text) as Record<string, unknown> };
}

test('an answer after no change is small; after a change it carries just that; a stale or foreign version gets the whole map', async (t) => {
  const f = await startFleet(t, { size: 512 * 4096, unitSize: 4096, allocator: { mapLogEntries: 16 } });
  const units = f.manifest.unitCount;
  const a = { release: f.manifest.id, group: 'g', member: 'a' };
  const b = { ...a, member: 'b' };
  const first = await post(f.url, '/v1/join', { ...a, mapVersion: 0 });
  t.is(first.status, 200);
  t.true(first.body.full);
  t.is((first.body.holderSlots as number[]).length, units);
  t.is(typeof first.body.groupKey, 'string');
  await post(f.url, '/v1/join', { ...b, mapVersion: 0 });
  const mirror = new MapMirror();
  const full = await post(f.url, '/v1/heartbeat', { ...a, mapVersion: 0 });
  mirror.apply(full.body);
  const ver = () => ({ mapEpoch: mirror.epoch, mapVersion: mirror.version });

  // Nothing changed: the version, the interval, the flags, and no map.
  const same = await post(f.url, '/v1/heartbeat', { ...a, ...ver() });
  t.false(same.body.full);
  t.deepEqual(same.body.members, []);
  t.is(same.body.holderChanges, undefined);
  t.is(same.body.groupKey, undefined);
  t.true(same.bytes < 200, `${same.bytes} bytes`);
  t.true(same.bytes * 10 < full.bytes, `${same.bytes} vs ${full.bytes} bytes for the whole map`);

  // b leases (folded into its heartbeat): a's next answer names exactly those units, held by b.
  const lb = await post(f.url, '/v1/heartbeat', { ...b, mapVersion: 0, lease: 2 });
  const granted = (lb.body.lease as { units: number[] }).units;
  t.is(granted.length, 2);
  const delta = await post(f.url, '/v1/heartbeat', { ...a, ...ver() });
  t.false(delta.body.full);
  const changes = delta.body.holderChanges as number[];
  const bSlot = (lb.body.members as { id: string; slot: number }[]).find((m) => m.id === 'b')!.slot;
  t.deepEqual(
    changes.filter((_, i) => i % 2 === 0).sort((x, y) => x - y),
    [...granted].sort((x, y) => x - y),
  );
  for (let i = 0; i < changes.length; i += 2) t.is(changes[i + 1], bSlot);
  const view = mirror.apply(delta.body);
  // The mirror now says what a whole map says.
  const whole = new MapMirror().apply((await post(f.url, '/v1/heartbeat', { ...a, mapVersion: 0 })).body);
  t.deepEqual(view.holders, whole.holders);
  t.deepEqual(view.members.map((m) => m.id), whole.members.map((m) => m.id));
  for (const u of granted) t.is(view.members[view.holders[u]].id, 'b');

  // More changes than the log keeps (16): the member gets the whole map again.
  const old = ver();
  let mine = granted;
  for (let i = 0; i < 8; i++) {
    const r = await post(f.url, '/v1/heartbeat', { ...b, mapVersion: 0, receipts: mine, lease: 3 });
    t.is(r.status, 200);
    mine = (r.body.lease as { units: number[] }).units;
  }
  const stale = await post(f.url, '/v1/heartbeat', { ...a, ...old });
  t.true(stale.body.full, 'a version older than the change log gets the whole map');
  // A version from another allocator or server run (its epoch differs) too, and one from the future.
  t.true((await post(f.url, '/v1/heartbeat', { ...a, mapEpoch: (Number(old.mapEpoch) + 1) % 0xffffffff, mapVersion: 1 })).body.full);
  t.true((await post(f.url, '/v1/heartbeat', { ...a, mapEpoch: old.mapEpoch, mapVersion: 1e9 })).body.full);
  t.true(f.server.stats.deltaMaps >= 2 && f.server.stats.fullMaps >= 5);
});

test('receipts and lease requests folded into heartbeats: no unit leased to two members at once, every unit ends held, overheads measured', async (t) => {
  const f = await startFleet(t, { size: 48 * 16384, unitSize: 16384 });
  const units = f.manifest.unitCount;
  const ids = ['a', 'b', 'c'];
  const ref = (m: string) => ({ release: f.manifest.id, group: 'g', member: m });
  for (const m of ids) t.is((await post(f.url, '/v1/join', { ...ref(m), mapVersion: 0 })).status, 200);
  const leasedBy = new Map<number, string>();
  const done = new Set<number>();
  const pending = new Map<string, number[]>(ids.map((m) => [m, []]));
  let requests = 0;
  for (let round = 0; round < 200 && done.size < units; round++) {
    for (const m of ids) {
      const receipts = pending.get(m)!;
      pending.set(m, []);
      for (const u of receipts) {
        const res = await fetch(`${f.url}/v1/releases/${f.manifest.id}/units/${u}?group=g&member=${m}`);
        t.is(res.status, 200, `unit ${u} streams to its lessee ${m}`);
        await res.arrayBuffer();
      }
      const r = await post(f.url, '/v1/heartbeat', { ...ref(m), mapVersion: 0, lease: 64, ...(receipts.length ? { receipts, receiptAgesMs: receipts.map(() => 5) } : {}) });
      requests++;
      t.is(r.status, 200);
      for (const u of receipts) {
        leasedBy.delete(u);
        done.add(u);
      }
      const g = r.body.lease as { units: number[]; exhausted: boolean };
      for (const u of g.units) {
        t.false(leasedBy.has(u), `unit ${u} leased to ${m} while ${leasedBy.get(u)} holds its lease`);
        t.false(done.has(u), `unit ${u} leased again after its receipt`);
        leasedBy.set(u, m);
      }
      pending.get(m)!.push(...g.units);
    }
  }
  t.is(done.size, units, 'every unit was leased once and receipted');
  t.is(f.server.stats.foldedReceipts, units);
  t.true(requests < units, `${requests} requests for ${units} units (a lease and a receipt each would be ${2 * units})`);
  const map = new MapMirror().apply((await post(f.url, '/v1/heartbeat', { ...ref('a'), mapVersion: 0 })).body);
  t.true(map.members.every((m) => m.overheadMsPerMiB !== null), 'every member has an overhead from its folded receipts');
  t.true(map.holders.every((h) => h >= 0));
});

test('a 1.3 agent (no 1.4 fields) still gets the whole 1.3 map, leases and receipts on their own', async (t) => {
  const f = await startFleet(t, { size: 8 * 16384, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'old' };
  t.is((await post(f.url, '/v1/join', { ...ref, member: 'new', mapVersion: 0 })).status, 200);
  const j = await post(f.url, '/v1/join', ref);
  t.is(j.status, 200);
  t.is(j.body.mapVersion, undefined);
  t.is(j.body.heartbeatMs, 200);
  const lease = await post(f.url, '/v1/lease', ref);
  const u = (lease.body.units as number[])[0];
  t.is(typeof u, 'number');
  t.is((await post(f.url, '/v1/receipt', { ...ref, unit: u })).status, 200);
  const hb = await post(f.url, '/v1/heartbeat', ref);
  const members = hb.body.members as { id: string; rank: number }[];
  const holders = hb.body.holders as number[];
  t.is(holders.length, f.manifest.unitCount);
  t.deepEqual(members.map((m) => m.rank), [1, 2]);
  t.is(members[holders[u]].id, 'old', 'holders index the 1.3 member list');
  t.is(hb.body.full, undefined);
});

test('a 1.4 agent speaks 1.3 to a server that refuses the 1.4 fields, and keeps the whole map from 1.4 answers', async (t) => {
  // A 1.3 server: unknown fields are refused (400 BAD_BODY), as docs/protocol.md section 3 says.
  const bodies: Record<string, unknown>[] = [];
  const srv = http.createServer((req, res) => {
    let s = '';
    req.on('data', (d) => (s += d));
    req.on('end', () => {
      const b = JSON.parse(s) as Record<string, unknown>;
      bodies.push(b);
      const unknown = Object.keys(b).find((k) => !['release', 'group', 'member', 'have'].includes(k));
      res.setHeader('content-type', 'application/json');
      if (unknown) {
        res.statusCode = 400;
        return res.end(JSON.stringify({ error: 'BAD_BODY', message: `unknown field "${unknown}"` }));
      }
      res.end(JSON.stringify({ heartbeatMs: 700, members: [{ id: 'x', rank: 1, overheadMsPerMiB: null, verifiedUnits: 0, leases: 0, complete: false, lastSeenMsAgo: 0, address: null }], holders: [0, -1], groupComplete: false, allHeld: false }));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
  const abort = new AbortController();
  t.teardown(() => abort.abort());
  const client = new ControlClient(new ServerAccess({ url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, plainHttp: true }), abort.signal, silentLogger);
  const seen: unknown[] = [];
  const hb = new Heartbeats(client, silentLogger, () => ({ release: 'ab'.repeat(16), group: 'g', member: 'x' }), (m) => seen.push(m));
  t.teardown(() => hb.stop());
  const map = await hb.beat(true);
  t.deepEqual(map?.holders, [0, -1]);
  t.is(hb.ms, 700);
  t.is(bodies.length, 2, 'refused once with the 1.4 fields, then asked in the 1.3 form');
  t.is(bodies[0].mapVersion, 0);
  t.is(bodies[1].mapVersion, undefined);
  t.false(client.fold!.active, 'receipts and leases go on their own requests to a 1.3 server');
  await hb.beat();
  t.is(bodies.length, 3);
  t.is(bodies[2].mapVersion, undefined);
});

test('MapMirror: whole map, then deltas with joins, leaves and holder changes; malformed answers are refused by name', (t) => {
  const rec = (slot: number, id: string, overhead: number | null) => ({ slot, id, group: 'g', address: '10.0.0.1', dataPort: 4000 + slot, role: 'member' as const, overheadMsPerMiB: overhead, verifiedUnits: 0, leases: 0, complete: false, forwarded: 0, lanBytes: 0, gatewayDemotions: 0, undeliveredClaims: 0 });
  const m = new MapMirror();
  const v1 = m.apply({ mapEpoch: 5, mapVersion: 10, full: true, members: [rec(0, 'a', null), rec(1, 'b', 2)], holderSlots: [0, 1, -1], groupComplete: false, allHeld: false } satisfies Partial<HeartbeatAnswer14>);
  t.deepEqual(v1.members.map((x) => x.id), ['b', 'a'], 'ranked by overhead, unmeasured last');
  t.deepEqual(v1.holders, [1, 0, -1]);
  const v2 = m.apply({ mapEpoch: 5, mapVersion: 12, full: false, members: [rec(2, 'c', 1)], gone: [1], holderChanges: [1, 2, 2, 0], groupComplete: false, allHeld: true });
  t.deepEqual(v2.members.map((x) => x.id), ['c', 'a']);
  t.deepEqual(v2.holders, [1, 0, 1]);
  t.true(v2.allHeld);
  t.is(m.version, 12);
  t.throws(() => m.apply({ mapEpoch: 6, mapVersion: 13, full: false, members: [] }), { message: /a delta for a map this agent does not have/ });
  t.throws(() => m.apply({ mapEpoch: 5, mapVersion: 13, full: false, members: [], holderChanges: [1] }), { message: /holderChanges must be pairs/ });
  t.throws(() => m.apply({ mapEpoch: 5, mapVersion: 13, full: false, members: [], holderChanges: [3, 0] }), { message: /names unit 3; the release has 3/ });
  t.throws(() => m.apply({ mapEpoch: 5, mapVersion: -1, full: true, members: [], holderSlots: [] }), { message: /mapVersion must be/ });
});
