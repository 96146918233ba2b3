import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import test, { ExecutionContext } from 'ava';
import * as http from 'node:http';
import { ControlClient } from '../src/agent/control-client';
import { ServerAccess } from '../src/net/server-access';
import { silentLogger } from '../src/util/log';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { Manifest } from '../src/release/manifest';
import { publishRelease } from '../src/release/publish';
import { writeDistribution } from '../src/release/distribution';
import { sha256File } from '../src/storage/partial-store';
import { BIN, runCli, tmpdir } from './helpers/fleet';
import { rootTest } from './helpers/netns';
import { nginxBinary, Nginx, startNginx } from './helpers/nginx';
import { Postgres, postgresUnsupported, startPostgres } from './helpers/postgres';
import { Coordinator, hangGuard, startCoordinator } from './helpers/coordinators';
import { freePort } from './helpers/ports';

/**
 * Several coordinators on a shared engine (docs/scale-out.md, issue 18): two `fleetcast
 * server` processes share a real PostgreSQL, unit bytes come from a real nginx, and two
 * LAN groups of 3 agents each list both coordinators. Bytes and counts are bounded; the
 * time limits below are hang guards, not assertions.
 */
const why = postgresUnsupported() ?? (nginxBinary() ? null : 'needs nginx (apt-get install nginx; .ci/run does)');

const SIZE = 32 * 1024 * 1024;

/**
 * One test at a time (ava runs a file's tests concurrently): each starts PostgreSQL,
 * nginx, 2 coordinators and 6 agents, and three such at once starve a 2-core box.
 */
let queue: Promise<void> = Promise.resolve();
function oneAtATime(fn: (t: ExecutionContext) => Promise<void>): (t: ExecutionContext) => Promise<void> {
  return async (t) => {
    const prev = queue;
    let done!: () => void;
    queue = new Promise<void>((r) => (done = r));
    await prev;
    t.timeout(240_000);
    try {
      await fn(t);
    } finally {
      done();
    }
  };
}

interface Cluster {
  dir: string;
  manifest: Manifest;
  pubPath: string;
  pg: Postgres;
  ngx: Nginx;
  a: Coordinator;
  b: Coordinator;
}

async function startCluster(t: ExecutionContext): Promise<Cluster> {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const file = path.join(dir, 'release.bin');
  await fs.writeFile(file, randomBytes(SIZE));
  const store = path.join(dir, 'store');
  const manifest = await publishRelease(file, store, await loadPrivateKey(keyPath), { name: 'release.bin', unitSize: 1024 * 1024 });
  const ngx = await startNginx(t, store);
  await writeDistribution(path.join(store, 'releases', manifest.id), { policy: 'group', origins: [ngx.url] });
  // Each coordinator has its own copy of the store, as on two machines.
  for (const s of ['store-a', 'store-b']) await fs.cp(store, path.join(dir, s), { recursive: true });
  const pg = await startPostgres(t);
  const a = await startCoordinator(t, path.join(dir, 'store-a'), pg.url);
  const b = await startCoordinator(t, path.join(dir, 'store-b'), pg.url);
  return { dir, manifest, pubPath, pg, ngx, a, b };
}

interface AgentProc {
  id: string;
  group: string;
  child: ChildProcess;
  stderr(): string;
  exit: Promise<number | null>;
}

/** 2 LAN groups x 3 agents; `servers(group, i)` is each agent's list of coordinator URLs, in order. */
function spawnAgents(t: ExecutionContext, c: Cluster, servers: (group: string, i: number) => string[], wanMbit: number, extra: string[] = []): AgentProc[] {
  const base = randomInt(20000, 50000);
  const out: AgentProc[] = [];
  for (const [gi, group] of ['east', 'west'].entries()) {
    const mc = `239.252.${randomInt(0, 256)}.${gi + 1}:${base + gi}`;
    for (let i = 1; i <= 3; i++) {
      const id = `${group}${i}`;
      const args = ['agent', ...servers(group, i).flatMap((u) => ['--server', u]), '--plain-http', '--group', group, '--interface', '127.0.0.1', '--multicast', mc, '--status-socket', 'none',
        '--storage', path.join(c.dir, id), '--trust', c.pubPath, '--release', c.manifest.id, '--once', '--member', id, '--linger', '20', '--timeout', '150',
        '--rate', '200', '--wan-rate', String(wanMbit), '--log-level', 'info', '--report', path.join(c.dir, `${id}.json`), ...extra];
      const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d) => (err = (err + d).slice(-20_000)));
      const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      t.teardown(async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGKILL');
          await exit;
        }
      });
      out.push({ id, group, child, stderr: () => err, exit });
    }
  }
  return out;
}

async function allVerify(t: ExecutionContext, c: Cluster, agents: AgentProc[]): Promise<void> {
  const codes = await Promise.all(agents.map((x) => x.exit));
  t.deepEqual(codes, agents.map(() => 0), agents.map((x) => `${x.id}: ${x.stderr().slice(-600)}`).join('\n'));
  for (const x of agents) {
    const r = JSON.parse(await fs.readFile(path.join(c.dir, `${x.id}.json`), 'utf8')) as { path: string };
    t.is(await sha256File(r.path), c.manifest.sha256, `${x.id} verified`);
  }
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url);
  return (await res.json()) as T;
}

type FleetView = { groups: { group: string; members: { id: string; hook: { exitCode: number | null } | null }[] }[] };
const membersIn = (f: FleetView) => f.groups.flatMap((g) => g.members.map((m) => m.id)).sort();
const ALL = ['east1', 'east2', 'east3', 'west1', 'west2', 'west3'];

/** Bytes nginx served to each LAN group (agents name their group in the query string). */
async function originBytes(ngx: Nginx, id: string): Promise<Record<string, number>> {
  const out: Record<string, number> = { east: 0, west: 0 };
  for (const r of await ngx.requests()) if (r.uri === `/releases/${id}/data`) out[r.args.get('group') ?? '?'] = (out[r.args.get('group') ?? '?'] ?? 0) + r.bytes;
  return out;
}

type Stats = { unitBytesSent: number; cluster: { proxied: number; owned: number; gained: number; refused: number } };

rootTest('two coordinators on PostgreSQL, nginx origin, 2 LAN groups x 3 agents, 32 MiB: all verify, the coordinators send no unit byte, nginx at most 1.02x per group', oneAtATime(async (t) => {
  const c = await startCluster(t);
  // Each group has one agent whose first coordinator is not its group's owner: its requests are proxied.
  const agents = spawnAgents(t, c, (group, i) => ((group === 'east') === (i !== 1) ? [c.a.url, c.b.url] : [c.b.url, c.a.url]), 400, ['--on-complete', 'exit 3']);
  await allVerify(t, c, agents);
  const stats = await Promise.all([c.a, c.b].map((s) => getJson<Stats>(`${s.url}/v1/stats`)));
  t.deepEqual(stats.map((s) => s.unitBytesSent), [0, 0], 'the coordinators sent no unit byte');
  t.is(stats[0].cluster.owned + stats[1].cluster.owned, 2, `each group has one owner: ${JSON.stringify(stats.map((s) => s.cluster))}`);
  t.true(stats[0].cluster.proxied + stats[1].cluster.proxied > 0, 'requests reached a non-owner and were proxied');
  const served = await originBytes(c.ngx, c.manifest.id);
  for (const g of ['east', 'west']) {
    t.log(`${g}: nginx served ${(served[g] / c.manifest.size).toFixed(3)}x the release`);
    t.true(served[g] >= c.manifest.size && served[g] <= 1.02 * c.manifest.size, `${g}: ${(served[g] / c.manifest.size).toFixed(3)}x from nginx`);
  }
  // Either instance's fleet view shows every member, and the hook result each reported: its own
  // groups from memory, the other's from the registry and the hook table.
  for (const s of [c.a, c.b]) {
    let seen: string[] = [];
    await hangGuard(async () => (seen = membersIn(await getJson<FleetView>(`${s.url}/v1/fleet`))).join() === ALL.join(), `${s.url}/v1/fleet shows all 6 members`, 30_000);
    t.deepEqual(seen, ALL);
    const hooks = (await getJson<FleetView>(`${s.url}/v1/fleet`)).groups.flatMap((g) => g.members.map((m) => `${m.id}:${m.hook?.exitCode ?? 'none'}`)).sort();
    t.deepEqual(hooks, ALL.map((id) => `${id}:3`), `${s.url}: every member's hook result`);
  }
}), why);

rootTest('kill -9 the owner of a group mid-transfer: its group moves to the other coordinator, every agent completes, nginx at most 1.10x per group, the survivor shows every member', oneAtATime(async (t) => {
  const c = await startCluster(t);
  // east is A's (its agents try A first), west is B's.
  const agents = spawnAgents(t, c, (group) => (group === 'east' ? [c.a.url, c.b.url] : [c.b.url, c.a.url]), 16);
  // Mid-transfer: after the owner wrote its members to the registry, with a quarter of east's bytes taken.
  await hangGuard(async () => membersIn(await getJson<FleetView>(`${c.b.url}/v1/fleet`)).join() === ALL.join(), 'B sees every member (east from the registry)');
  await hangGuard(async () => (await originBytes(c.ngx, c.manifest.id)).east >= c.manifest.size / 4, 'east took a quarter of the release');
  const before = (await originBytes(c.ngx, c.manifest.id)).east;
  c.a.child.kill('SIGKILL');
  await c.a.exit;
  t.true(before < c.manifest.size * 0.9, `killed mid-transfer (east had ${(before / c.manifest.size).toFixed(2)}x)`);
  await allVerify(t, c, agents);
  const served = await originBytes(c.ngx, c.manifest.id);
  for (const g of ['east', 'west']) {
    t.log(`${g}: nginx served ${(served[g] / c.manifest.size).toFixed(3)}x the release`);
    t.true(served[g] >= c.manifest.size && served[g] <= 1.1 * c.manifest.size, `${g}: ${(served[g] / c.manifest.size).toFixed(3)}x from nginx`);
  }
  const stats = await getJson<Stats>(`${c.b.url}/v1/stats`);
  t.is(stats.cluster.owned, 2, 'the survivor owns both groups');
  t.regex(c.b.log(), /rebuilding its allocation: waiting for 3 member/, 'it rebuilt east from the members the registry named');
  t.deepEqual(membersIn(await getJson<FleetView>(`${c.b.url}/v1/fleet`)), ALL);
}), why);

rootTest('engine stopped: owners keep serving their groups from memory, new ownership is refused with a clear error, and taken again once the engine returns', oneAtATime(async (t) => {
  const c = await startCluster(t);
  // east3 talks to B, which proxies to east's owner A from what it last knew.
  const agents = spawnAgents(t, c, (group, i) => ((group === 'east') === (i !== 3) ? [c.a.url, c.b.url] : [c.b.url, c.a.url]), 16);
  // Every member joined through its first coordinator, each non-owner proxied to the owner it learnt from the engine.
  for (const s of [c.a, c.b]) await hangGuard(async () => membersIn(await getJson<FleetView>(`${s.url}/v1/fleet`)).join() === ALL.join(), `${s.url} sees every member`);
  const s0 = await Promise.all([c.a, c.b].map((x) => getJson<Stats>(`${x.url}/v1/stats`)));
  t.is(s0[0].cluster.owned + s0[1].cluster.owned, 2, 'both groups have an owner');
  t.true(s0[0].cluster.proxied + s0[1].cluster.proxied > 0, 'a non-owner proxies');
  await c.pg.stop();
  const atStop = await originBytes(c.ngx, c.manifest.id);
  t.true(atStop.east < 0.9 * c.manifest.size && atStop.west < 0.9 * c.manifest.size, `the engine stopped mid-transfer (${JSON.stringify(atStop)})`);
  const north = { release: c.manifest.id, group: 'north', member: 'n1' };
  const ask = () => fetch(`${c.a.url}/v1/join`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(north) });
  const refused = await ask();
  const body = (await refused.json()) as { error: string; message: string; retryAfterMs: number };
  t.is(refused.status, 503);
  t.is(body.error, 'ENGINE_UNAVAILABLE');
  t.regex(body.message, /cannot take ownership of .*\/north: the shared engine is unreachable/);
  t.true(body.retryAfterMs > 0);
  await allVerify(t, c, agents);
  t.regex(c.a.log(), /shared engine unreachable: .*refusing new ones until it returns/);
  const served = await originBytes(c.ngx, c.manifest.id);
  for (const g of ['east', 'west']) t.true(served[g] <= 1.02 * c.manifest.size, `${g}: ${(served[g] / c.manifest.size).toFixed(3)}x from nginx with the engine down`);
  await c.pg.start();
  let status = 0;
  await hangGuard(async () => (status = (await ask()).status) === 200, 'north is taken once the engine is back', 30_000);
  t.is(status, 200);
  t.regex(c.a.log(), /shared engine .* reachable again/);
  // Another instance took one of A's keys (as after an expiry in a partition): A's next renewal drops it.
  const { Client } = require('pg') as typeof import('pg');
  const db = new Client({ connectionString: c.pg.url });
  await db.connect();
  t.teardown(() => db.end());
  const held = await db.query<{ key: string }>('SELECT key FROM fleetcast_leases WHERE url = $1 ORDER BY key', [c.a.url]);
  t.true(held.rows.length >= 1, 'A owns north, at least');
  const ownedBefore = (await getJson<Stats>(`${c.a.url}/v1/stats`)).cluster.owned;
  await db.query(`UPDATE fleetcast_leases SET owner = 'elsewhere#1', url = $2, expires_at = now() + interval '1 hour' WHERE key = $1`, [held.rows[0].key, c.b.url]);
  await hangGuard(() => c.a.log().includes(`${held.rows[0].key}: another instance took it`), 'A drops the key it lost', 30_000);
  t.is((await getJson<Stats>(`${c.a.url}/v1/stats`)).cluster.owned, ownedBefore - 1, 'A no longer answers for it');
}), why);

test('an agent with several server URLs moves to the next when one refuses connections, and stays with one that answers 503 (after its retryAfterMs)', async (t) => {
  const dead = await freePort();
  let calls = 0;
  const srv = http.createServer((req, res) => {
    calls++;
    req.resume();
    if (calls === 1) return void res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'OWNER_UNREACHABLE', message: 'moving', retryAfterMs: 150 }));
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  const live = `http://127.0.0.1:${(srv.address() as net.AddressInfo).port}`;
  const access = new ServerAccess({ url: [`http://127.0.0.1:${dead}`, live], plainHttp: true });
  const ac = new AbortController();
  t.teardown(() => ac.abort());
  const lines: string[] = [];
  const log = { ...silentLogger, warn: (m: string) => void lines.push(m), info: (m: string) => void lines.push(m) };
  const client = new ControlClient(access, ac.signal, log);
  t.deepEqual(await client.post('/v1/heartbeat', {}), { ok: true });
  t.is(access.url, live, 'moved to the live server');
  t.is(calls, 2, 'the 503 was retried on the same server');
  t.true(lines.some((l) => l.includes(`moving to ${live}`)), lines.join('\n'));
  t.throws(() => new ServerAccess({ url: ['http://a.example:1', 'https://b.example:2'], plainHttp: true }), { message: /mix http:\/\/ and https:\/\// });
  // A coordinator that cannot reach the shared engine: the next one may know the group's owner.
  const cut = http.createServer((req, res) => {
    req.resume();
    res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'ENGINE_UNAVAILABLE', message: 'no engine', retryAfterMs: 100 }));
  });
  await new Promise<void>((r) => cut.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => { cut.closeAllConnections(); cut.close(() => r()); }));
  const both = new ServerAccess({ url: [`http://127.0.0.1:${(cut.address() as net.AddressInfo).port}`, live], plainHttp: true });
  t.deepEqual(await new ControlClient(both, ac.signal, log).post('/v1/heartbeat', {}), { ok: true });
  t.is(both.url, live);
});

test('server --engine: a bad engine URL or a missing --instance-url is a usage error (64), an engine that does not answer is 69, each with a clear message', async (t) => {
  const dir = await tmpdir(t);
  const store = path.join(dir, 'store');
  const port = await freePort();
  const base = ['server', '--store', store, '--create', '--plain-http', '--listen', `127.0.0.1:${port}`];
  const bad = await runCli([...base, '--engine', 'redis://127.0.0.1:6379', '--instance-url', `http://127.0.0.1:${port}`]);
  t.is(bad.code, 64, bad.stderr);
  t.regex(bad.stderr, /engine must be embedded or a PostgreSQL URL/);
  const noUrl = await runCli([...base, '--engine', 'postgres://u@127.0.0.1:5432/db']);
  t.is(noUrl.code, 64, noUrl.stderr);
  t.regex(noUrl.stderr, /instance.url is required with a shared engine/);
  const closed = await freePort();
  const down = await runCli([...base, '--engine', `postgres://fleetcast:secret@127.0.0.1:${closed}/fleet`, '--instance-url', `http://127.0.0.1:${port}`]);
  t.is(down.code, 69, down.stderr);
  t.regex(down.stderr, new RegExp(`cannot reach the shared engine: postgres://127\\.0\\.0\\.1:${closed}/fleet: .*ECONNREFUSED`));
  t.notRegex(down.stderr, /secret/, 'the password is not printed');
  t.notRegex(down.stderr, /\n\s+at /, 'no stack trace');
});

rootTest('a member that joins and leaves between two registry writes is in the other instance\'s fleet view all the same', oneAtATime(async (t) => {
  const c = await startCluster(t);
  const post = (url: string, p: string, body: unknown) => fetch(url + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const ref = { release: c.manifest.id, group: 'east', member: 'brief1' };
  // Straight to A, which takes east; the member leaves at once, well within the 2 s between A's periodic writes.
  t.is((await post(c.a.url, '/v1/join', { ...ref, mapVersion: 0 })).status, 200);
  t.is((await post(c.a.url, '/v1/leave', ref)).status, 200);
  // B does not own east, so its view of east comes from the registry only.
  await hangGuard(async () => membersIn(await getJson<FleetView>(`${c.b.url}/v1/fleet`)).includes('brief1'), `${c.b.url}/v1/fleet shows brief1`, 30_000);
  t.deepEqual(membersIn(await getJson<FleetView>(`${c.b.url}/v1/fleet`)), ['brief1']);
}));
