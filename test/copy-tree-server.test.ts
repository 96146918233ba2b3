import test from 'ava';
import * as http from 'node:http';
import { AddressInfo } from 'node:net';
import { startFleet } from './helpers/fleet';
import { ControlClient } from '../src/agent/control-client';
import { Heartbeats } from '../src/agent/heartbeat';
import { ServerAccess } from '../src/net/server-access';
import { silentLogger } from '../src/util/log';

/** Protocol 1.5 copy trees (docs/protocol.md section 17), the server's side and the agent's negotiation. */

async function post(url: string, path: string, body: unknown): Promise<{ status: number; bytes: number; body: Record<string, unknown> }> {
  const res = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, bytes: Buffer.byteLength(text), body: JSON.parse(text) as Record<string, unknown> };
}

const SITES = 12;

async function fleetOfSites(t: Parameters<typeof startFleet>[0], copyTree: boolean, degree?: number) {
  // The members join once and (but one) never beat: they must not time out while a busy
  // machine takes its seconds over the 24 joins and the test's requests (the fleet's
  // default is 2 s, and a CI run saw two sites drop out of copyTo so).
  const allocator = { memberTimeoutMs: 600_000, ...(degree !== undefined ? { copyTreeDegree: degree } : {}) };
  const f = await startFleet(t, { size: 64 * 4096, unitSize: 4096, server: { policy: 'wide' }, allocator });
  const ref = (site: number, i: number) => ({ release: f.manifest.id, group: `site${String(site).padStart(2, '0')}`, member: `s${site}m${i}`, wideGroup: 'w', address: `10.0.${site}.${i + 1}`, dataPort: 40000 + i });
  for (let s = 0; s < SITES; s++) for (let i = 0; i < 2; i++) t.is((await post(f.url, '/v1/join', { ...ref(s, i), mapVersion: 0, ...(copyTree ? { copyTree: true } : {}) })).status, 200);
  return { f, ref };
}

test('every member asks for copy trees: answers carry copyTree (the degree) and no list of gateways; a 1.4 member joining brings the list back to all', async (t) => {
  const { f, ref } = await fleetOfSites(t, true);
  const a = ref(3, 1);
  // Roles are worked out at most every 250 ms (rolesCached): a site that just joined gets its gateway in a later answer.
  const gatewaySites = (r: { body: Record<string, unknown> }) => new Set((r.body.members as { role: string; group: string }[]).filter((m) => m.role === 'gateway').map((m) => m.group)).size;
  let first = await post(f.url, '/v1/heartbeat', { ...a, mapVersion: 0, copyTree: true });
  for (let i = 0; i < 100 && gatewaySites(first) < SITES; i++) {
    await new Promise((r) => setTimeout(r, 50));
    first = await post(f.url, '/v1/heartbeat', { ...a, mapVersion: 0, copyTree: true });
  }
  t.is(first.body.copyTree, 4, 'the default degree');
  t.deepEqual(first.body.copyTo, []);
  t.is(gatewaySites(first), SITES, 'the map names a gateway per site: agents derive the ring from it');
  let ver = { mapEpoch: first.body.mapEpoch, mapVersion: first.body.mapVersion };

  // A 1.4 agent (no copyTree) joins: every member's copy destinations change to the full list.
  const old = { ...ref(0, 2) };
  const joined = await post(f.url, '/v1/join', { ...old, mapVersion: 0 });
  t.is(joined.body.copyTree, undefined);
  t.is((joined.body.copyTo as unknown[]).length, SITES - 1);
  const mixed = await post(f.url, '/v1/heartbeat', { ...a, ...ver, copyTree: true });
  t.false(mixed.body.full);
  t.is(mixed.body.copyTree, undefined, 'no tree while a 1.4 member is in the wide-area group');
  t.is((mixed.body.copyTo as { group: string }[]).length, SITES - 1);
  t.false((mixed.body.copyTo as { group: string }[]).some((d) => d.group === a.group));
  ver = { mapEpoch: mixed.body.mapEpoch, mapVersion: mixed.body.mapVersion };

  // It leaves: trees again, announced in the next delta.
  t.is((await post(f.url, '/v1/leave', { release: old.release, group: old.group, member: old.member })).status, 200);
  const back = await post(f.url, '/v1/heartbeat', { ...a, ...ver, copyTree: true });
  t.is(back.body.copyTree, 4);
  t.deepEqual(back.body.copyTo, []);
  ver = { mapEpoch: back.body.mapEpoch, mapVersion: back.body.mapVersion };
  // Nothing changed since: neither field is sent again.
  const quiet = await post(f.url, '/v1/heartbeat', { ...a, ...ver, copyTree: true });
  t.is(quiet.body.copyTo, undefined);
  t.is(quiet.body.copyTree, undefined);
  // The 1.3 lease request's answer says the same.
  const lease = await post(f.url, '/v1/lease', { release: a.release, group: a.group, member: a.member });
  t.is(lease.body.copyTree, 4);
  t.deepEqual(lease.body.copyTo, []);
  t.log(`whole answer with trees ${first.bytes} B, with the 1.4 list of ${SITES - 1} gateways ${joined.bytes} B`);
});

test('copy_tree_degree 0 keeps the 1.4 list even when every member asks for trees', async (t) => {
  const { f, ref } = await fleetOfSites(t, true, 0);
  let r = await post(f.url, '/v1/heartbeat', { ...ref(5, 0), mapVersion: 0, copyTree: true });
  // Roles are worked out at most every 250 ms: the sites that joined last get their gateways in a later answer.
  for (let i = 0; i < 100 && (r.body.copyTo as unknown[]).length < SITES - 1; i++) {
    await new Promise((res) => setTimeout(res, 50));
    r = await post(f.url, '/v1/heartbeat', { ...ref(5, 0), mapVersion: 0, copyTree: true });
  }
  t.is(r.body.copyTree, undefined);
  t.is((r.body.copyTo as unknown[]).length, SITES - 1);
});

test('copyTree must be a boolean: anything else is a clear 400', async (t) => {
  const { f, ref } = await fleetOfSites(t, true);
  const r = await post(f.url, '/v1/heartbeat', { ...ref(1, 0), mapVersion: 0, copyTree: 'yes' });
  t.is(r.status, 400);
  t.regex(String(r.body.message), /copyTree/);
});

test('a 1.5 agent whose server refuses copyTree (a 1.4 server) drops the field and keeps 1.4', async (t) => {
  const bodies: Record<string, unknown>[] = [];
  const srv = http.createServer((req, res) => {
    let s = '';
    req.on('data', (d) => (s += d));
    req.on('end', () => {
      const b = JSON.parse(s) as Record<string, unknown>;
      bodies.push(b);
      res.setHeader('content-type', 'application/json');
      if ('copyTree' in b) {
        res.statusCode = 400;
        return res.end(JSON.stringify({ error: 'BAD_BODY', message: 'unknown field "copyTree"' }));
      }
      res.end(JSON.stringify({ heartbeatMs: 700, lanStart: true, mapEpoch: 5, mapVersion: 1, full: true, members: [], holderSlots: [-1, -1], groupComplete: false, allHeld: false, copyTo: [] }));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
  const abort = new AbortController();
  t.teardown(() => abort.abort());
  const client = new ControlClient(new ServerAccess({ url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, plainHttp: true }), abort.signal, silentLogger);
  const hb = new Heartbeats(client, silentLogger, () => ({ release: 'ab'.repeat(16), group: 'g', member: 'x', wideGroup: 'w', copyTree: true }), () => undefined);
  t.teardown(() => hb.stop());
  const map = await hb.beat(true);
  t.deepEqual(map?.holders, [-1, -1]);
  t.is(bodies.length, 2, 'refused once with copyTree, then asked without it');
  t.is(bodies[1].copyTree, undefined);
  t.is(bodies[1].mapVersion, 0, 'still 1.4');
  t.true(client.fold!.active);
  await hb.beat();
  t.is(bodies.length, 3);
  t.is(bodies[2].copyTree, undefined);
});

test("the fleet view shows a wide-area member's hook result (kept by its LAN group, not the wide-area group)", async (t) => {
  const { f, ref } = await fleetOfSites(t, false);
  const a = ref(2, 0);
  t.is((await post(f.url, '/v1/hook', { release: a.release, group: a.group, member: a.member, exitCode: 3, durationMs: 12 })).status, 200);
  t.is((f.server.fleet() as { groups: unknown[] }).groups.length, 1, 'the hook made no group of its own');
  const view = f.server.fleet() as { groups: { members: { id: string; hook: { exitCode: number } | null }[] }[] };
  const members = view.groups.flatMap((g) => g.members);
  t.is(members.find((m) => m.id === a.member)?.hook?.exitCode, 3);
  t.is(members.find((m) => m.id === ref(2, 1).member)?.hook, null, 'a member that reported nothing has none');
});
