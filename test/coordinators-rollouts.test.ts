import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ExecutionContext } from 'ava';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { runCli, tmpdir } from './helpers/fleet';
import { hangGuard, startCoordinator } from './helpers/coordinators';
import { rootTest } from './helpers/netns';
import { postgresUnsupported, startPostgres } from './helpers/postgres';

/**
 * Rollouts, channels and the heartbeat rate with several coordinators (docs/scale-out.md, issue 18): two
 * `fleetcast server` processes on a real PostgreSQL, each with its own copy of the store.
 * The members are plain HTTP requests (the agent's rollout poll, docs/protocol.md), sent
 * to either instance. Time limits are hang guards, not assertions.
 */
const why = postgresUnsupported();

interface Summary {
  id: string;
  channel: string;
  release: string;
  state: string;
  members: number;
  memberStates: Record<string, { state: string }>;
}

async function call<T>(url: string, method = 'GET', body?: unknown): Promise<{ status: number; body: T }> {
  const r = await fetch(url, { method, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) });
  return { status: r.status, body: (await r.json()) as T };
}

async function setup(t: ExecutionContext, serverArgs: string[] = []) {
  t.timeout(180_000);
  const dir = await tmpdir(t);
  const { keyPath } = await generateKeyPair(path.join(dir, 'keys'));
  const store = path.join(dir, 'store');
  const rel = async (name: string) => {
    await fs.writeFile(path.join(dir, name), randomBytes(256 * 1024));
    return publishRelease(path.join(dir, name), store, await loadPrivateKey(keyPath), { name, unitSize: 64 * 1024 });
  };
  const v2 = await rel('fw-2.img');
  // The channel starts on another release, as `fleetcast publish --channel stable` leaves it.
  await fs.writeFile(path.join(dir, 'fw-1.img'), randomBytes(256 * 1024));
  const pub = await runCli(['publish', path.join(dir, 'fw-1.img'), '--store', store, '--key', keyPath, '--unit-size', '65536', '--channel', 'stable']);
  t.is(pub.code, 0, pub.stderr);
  for (const s of ['store-a', 'store-b']) await fs.cp(store, path.join(dir, s), { recursive: true });
  const pg = await startPostgres(t);
  const a = await startCoordinator(t, path.join(dir, 'store-a'), pg.url, serverArgs);
  const b = await startCoordinator(t, path.join(dir, 'store-b'), pg.url, serverArgs);
  return { dir, keyPath, v2, pg, a, b };
}

/** `fleetcast publish FILE --channel NAME` into one instance's store, its release copied to the other's (a shared or synced store); the new release's id. */
async function publishOn(t: ExecutionContext, dir: string, keyPath: string, on: string, other: string, channel: string): Promise<string> {
  await fs.writeFile(path.join(dir, `${channel}.img`), randomBytes(128 * 1024));
  const p = await runCli(['publish', path.join(dir, `${channel}.img`), '--store', path.join(dir, on), '--key', keyPath, '--unit-size', '65536', '--channel', channel]);
  t.is(p.code, 0, p.stderr);
  const id = (JSON.parse(await fs.readFile(path.join(dir, on, 'channels', `${channel}.json`), 'utf8')) as { release: string }).release;
  await fs.cp(path.join(dir, on, 'releases', id), path.join(dir, other, 'releases', id), { recursive: true });
  return id;
}

rootTest('two coordinators: a channel\'s rollout is run by one instance whatever instance its members and operator reach, and survives kill -9 of that instance', async (t) => {
  const { v2, pg, a, b } = await setup(t);
  const poll = (url: string, member: string, report?: { release: string; state: string }) =>
    call<{ rollout: { release: string } | null }>(`${url}/v1/rollouts/poll`, 'POST', { channel: 'stable', group: 'g', member, ...report });
  // m1 reaches A first: A takes the channel. m2 and m3 reach B, which passes them on to A.
  t.is((await poll(a.url, 'm1')).status, 200);
  for (const m of ['m2', 'm3']) t.is((await poll(b.url, m)).status, 200);
  // The operator starts the rollout on B: it is A's channel, so A starts it, knowing all three members.
  const started = await call<Summary>(`${b.url}/v1/rollouts`, 'POST', { channel: 'stable', release: v2.id, waves: '100%', maxFailures: '0' });
  t.is(started.status, 201, JSON.stringify(started.body));
  t.is(started.body.members, 3, 'the polls through both instances reached one owner');
  const id = started.body.id;
  t.regex(a.log(), new RegExp(`rollout ${id} of ${v2.id} on stable started`));
  t.notRegex(b.log(), /rollout .* started/);
  // B answers for it (through A) at once, though it learnt of it only now.
  const seenByB = await call<Summary>(`${b.url}/v1/rollouts/${id}`);
  t.is(seenByB.status, 200);
  t.is(seenByB.body.state, 'running');
  t.is((await poll(b.url, 'm1')).body.rollout?.release, v2.id, 'a member asking B is told to install the new release');
  // m1 commits (through B); the engine has it once A has written the change.
  t.is((await poll(b.url, 'm1', { release: v2.id, state: 'committed' })).status, 200);
  const { Client } = require('pg') as typeof import('pg');
  const db = new Client({ connectionString: pg.url });
  await db.connect();
  t.teardown(() => db.end());
  await hangGuard(async () => {
    const r = await db.query<{ doc: string }>('SELECT doc FROM fleetcast_rollouts WHERE id = $1', [id]);
    return r.rows.length === 1 && (JSON.parse(r.rows[0].doc) as { members: Record<string, { state: string }> }).members.m1?.state === 'committed';
  }, 'A wrote m1\'s commit to the engine', 30_000);
  // The owner dies. B takes the channel once A's lease expires and runs the rollout from the engine's copy.
  a.child.kill('SIGKILL');
  await a.exit;
  let last = 0;
  await hangGuard(async () => (last = (await poll(b.url, 'm2', { release: v2.id, state: 'committed' })).status) === 200, 'B takes the channel', 30_000);
  t.is(last, 200);
  t.regex(b.log(), /channel:stable: this instance owns it now/);
  t.is((await poll(b.url, 'm3', { release: v2.id, state: 'committed' })).status, 200);
  const done = await call<Summary>(`${b.url}/v1/rollouts/${id}`);
  t.is(done.body.state, 'completed');
  t.deepEqual(Object.fromEntries(Object.entries(done.body.memberStates).map(([m, s]) => [m, s.state])), { m1: 'committed', m2: 'committed', m3: 'committed' }, 'm1\'s commit, made on A, was kept');
  // Completion moved the channel: in B's store, and in the engine for every instance.
  t.is((await call<{ release: string }>(`${b.url}/v1/channels/stable`)).body.release, v2.id);
  const head = await db.query<{ head: string }>(`SELECT head FROM fleetcast_channels WHERE channel = 'stable'`);
  t.is((JSON.parse(head.rows[0].head) as { release: string }).release, v2.id);
  const listed = await call<{ rollouts: Summary[] }>(`${b.url}/v1/rollouts`);
  t.deepEqual(listed.body.rollouts.map((r) => [r.id, r.state]), [[id, 'completed']]);
}, why);

rootTest('two coordinators: a channel published on one instance\'s store reaches the other through the engine, and the later publish wins', async (t) => {
  const { dir, keyPath, a, b } = await setup(t);
  t.is((await call(`${b.url}/v1/channels/beta`)).status, 404);
  // `fleetcast publish --channel beta` against A's store only (as on A's machine), and nobody asks A about it.
  const beta = await publishOn(t, dir, keyPath, 'store-a', 'store-b', 'beta');
  let got: { status: number; body: { release?: string } } = { status: 0, body: {} };
  await hangGuard(async () => (got = await call<{ release?: string }>(`${b.url}/v1/channels/beta`)).status === 200, 'B serves beta', 30_000);
  t.is(got.body.release, beta);
  // A's store has stable on the first release; a later publish to stable on B's store is what A answers too.
  const stable = await publishOn(t, dir, keyPath, 'store-b', 'store-a', 'stable');
  await hangGuard(async () => (await call<{ release?: string }>(`${a.url}/v1/channels/stable`)).body.release === stable, 'A serves the later stable', 30_000);
  const list = await call<{ channels: { channel: string; release: string }[] }>(`${a.url}/v1/channels`);
  t.deepEqual(list.body.channels.map((c) => [c.channel, c.release]), [['beta', beta], ['stable', stable]]);
}, why);

rootTest('two coordinators share heartbeats_per_sec: each asks its members to beat at the fleet\'s rate over the live instances, not its own', async (t) => {
  const { v2, a, b } = await setup(t, ['--heartbeats-per-sec', '2']);
  const join = (url: string, group: string, member: string) => call<{ heartbeatMs: number }>(`${url}/v1/join`, 'POST', { release: v2.id, group, member, mapVersion: 0 });
  // Each instance takes one group of 2 members: 4 in the fleet, at 2 heartbeats a second in all, is one beat each every 2 s.
  for (const m of ['e1', 'e2']) t.is((await join(a.url, 'east', m)).status, 200);
  for (const m of ['w1', 'w2']) t.is((await join(b.url, 'west', m)).status, 200);
  for (const s of [a, b]) await hangGuard(async () => (await call<{ cluster: { instances: number } }>(`${s.url}/v1/stats`)).body.cluster.instances === 2, `${s.url} counts 2 instances`, 30_000);
  await new Promise((r) => setTimeout(r, 600)); // the interval follows within a few 100 ms timer turns
  // Alone, each would ask 2 members for 2 beats a second: every 1,000 ms.
  t.is((await join(a.url, 'east', 'e1')).body.heartbeatMs, 2000);
  t.is((await join(b.url, 'west', 'w1')).body.heartbeatMs, 2000);
}, why);
