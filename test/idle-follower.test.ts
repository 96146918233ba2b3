import test from 'ava';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { ControlClient } from '../src/agent/control-client';
import { Heartbeats } from '../src/agent/heartbeat';
import { ServerAccess, TCP_KEEPALIVE_MS } from '../src/net/server-access';
import { silentLogger } from '../src/util/log';
import { startFleet } from './helpers/fleet';
import { startRolloutFleet } from './helpers/rollout-fleet';

// Issue 17: an idle agent that follows a channel costs at most 1 µs of server CPU a second
// and learns of a new release within 5 s. Protocol 1.6 (docs/protocol.md section 18): the
// channel poll is held up to 5 minutes while no rollout runs, a rollout that starts or moves
// ends the hold (the rollout token), and idle members beat at a rate the server chooses.

async function post(url: string, p: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

test('idle members beat at the idle rate the server aims at; 1.3 members and busy ones keep their intervals', async (t) => {
  const f = await startFleet(t, { size: 64 * 1024, unitSize: 16384, heartbeatMs: 200, server: { idleHeartbeatMs: 1000, idleHeartbeatsPerSec: 1 } });
  const all = Buffer.from([0xf0]).toString('base64'); // the 4 units
  const ref = (member: string) => ({ release: f.manifest.id, group: 'g', member });
  for (const m of ['m1', 'm2', 'm3']) t.is((await post(f.url, '/v1/join', { ...ref(m), have: all })).status, 200);
  // 3 live members at 1 idle heartbeat a second: every 3 s (counted on the server's timer).
  let ms = 0;
  for (let i = 0; i < 500 && ms !== 3000; i++) {
    const r = await post(f.url, '/v1/heartbeat', { ...ref('m1'), have: all, mapVersion: 0 });
    t.is(r.status, 200, JSON.stringify(r.body));
    ms = r.body.heartbeatMs as number;
    if (ms !== 3000) await new Promise((res) => setTimeout(res, 20));
  }
  t.is(ms, 3000, 'idle, 1.4 fields: members x 1000 / idle_heartbeats_per_sec');
  t.is((await post(f.url, '/v1/heartbeat', { ...ref('m2'), have: all })).body.heartbeatMs, 1000, 'a 1.3 heartbeat gets idle_heartbeat_ms');
  t.is((await post(f.url, '/v1/heartbeat', { ...ref('m3'), have: all, fetching: [1], mapVersion: 0 })).body.heartbeatMs, 200, 'receiving a unit: fast');
});

test('a held channel poll ends when the channel rollout token moves, not only when the channel does', async (t) => {
  const f = await startRolloutFleet(t);
  const url = (q: string) => `${f.url}/v1/channels/stable${q}`;
  const first = await fetch(url(`?release=${f.b.id}&waitMs=1`));
  t.is(first.headers.get('x-fleetcast-long-poll'), '300000', 'the longest hold the server grants');
  t.is(first.headers.get('x-fleetcast-rollout'), '-', 'no rollout on the channel');
  t.is((await fetch(url(`?release=${f.a.id}&waitMs=100&rollout=a%20b`))).status, 400, 'a malformed token');
  t.is((await post(f.url, '/v1/rollouts/poll', { channel: 'stable', member: 'p0', group: 'site-a' })).status, 200, 'a member follows the channel');
  // Held with the token: a rollout start ends it (the test would wait 5 minutes otherwise).
  const held = fetch(url(`?release=${f.a.id}&waitMs=300000&rollout=-`));
  await new Promise((r) => setTimeout(r, 300));
  const started = await post(f.url, '/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '100%', maxFailures: '1' });
  t.is(started.status, 201, JSON.stringify(started.body));
  const res = await held;
  t.is(res.status, 200);
  t.is(((await res.json()) as { release: string }).release, f.a.id, 'the channel still names A');
  const token = res.headers.get('x-fleetcast-rollout')!;
  t.regex(token, new RegExp(`^${started.body.id as string}\\.running\\.`), 'the new token names the running rollout');
  // A stale token is answered at once; without one (1.5 agents) the hold ignores rollouts.
  const stale = await fetch(url(`?release=${f.a.id}&waitMs=300000&rollout=-`));
  t.is(stale.headers.get('x-fleetcast-rollout'), token);
  const t0 = Date.now();
  const old = fetch(url(`?release=${f.a.id}&waitMs=1500`));
  t.is((await post(f.url, `/v1/rollouts/${started.body.id as string}/pause`, {})).status, 200);
  await old;
  t.true(Date.now() - t0 >= 1400, 'held its whole wait: a pause does not end a poll without a token');
});

test('an idle agent holds its channel poll as long as the server grants, and still learns of a rollout at once', async (t) => {
  const f = await startRolloutFleet(t);
  // Record every hold the server starts (the agent's waitMs and token).
  const watch = (f.server as unknown as { channelWatch: { wait: (...a: unknown[]) => Promise<void> } }).channelWatch;
  const holds: { waitMs: number; rollout: unknown }[] = [];
  const orig = watch.wait.bind(watch);
  watch.wait = (name: unknown, known: unknown, waitMs: unknown, signal: unknown, rollout: unknown) => {
    holds.push({ waitMs: waitMs as number, rollout });
    return orig(name, known, waitMs, signal, rollout);
  };
  f.spawnAgent('k0', 'site-a');
  await f.until('k0 installed A', async () => (await f.lines('installs.log')).some((l) => l.startsWith(f.a.id)));
  await f.until('a hold of 5 minutes', async () => holds.some((h) => h.waitMs === 300_000 && h.rollout === '-'));
  t.true(holds.every((h) => h.waitMs === 200 || h.waitMs === 300_000), `channel_poll (0.2 s) before the token is known, then the server's longest: ${JSON.stringify(holds.slice(0, 10))}`);
  const n = holds.length;
  await fs.writeFile(path.join(f.dir, `go-${f.b.id}`), '');
  const started = await post(f.url, '/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '100%', maxFailures: '1' });
  t.is(started.status, 201, JSON.stringify(started.body));
  // Learned from the ended hold, not 5 minutes later: the agent stages, installs and reports.
  await f.until('k0 installed B', async () => (await f.lines('installs.log')).some((l) => l.startsWith(f.b.id)), 60_000);
  t.true(holds.slice(n).some((h) => h.waitMs === 200), 'while the rollout runs it polls every channel_poll again');
});

// Protocol 1.7 (docs/protocol.md section 19): a held channel poll that names its member
// stands for the member's rollout poll and keeps it alive, so an idle follower's only
// request is that poll (and a heartbeat an hour).
type Groups = Map<string, { hasMember: (id: string) => boolean }>;
const member = (f: { server: unknown }, key: string, id: string) => !!(f.server as unknown as { groups: Groups }).groups.get(key)?.hasMember(id);

test('a held channel poll naming its member keeps it alive and following; the member is asked to beat once a day meanwhile', async (t) => {
  const f = await startRolloutFleet(t);
  const all = Buffer.from([0xe0]).toString('base64'); // A's 3 units
  const ref = (m: string) => ({ release: f.a.id, group: 'site-a', member: m });
  for (const m of ['p1', 'p2']) t.is((await post(f.url, '/v1/join', { ...ref(m), have: all, mapVersion: 0 })).status, 200);
  const url = (q: string) => `${f.url}/v1/channels/stable${q}`;
  t.is((await fetch(url(`?release=${f.a.id}&waitMs=100&member=p1`))).status, 400, 'member without group');
  t.is((await fetch(url(`?release=${f.a.id}&waitMs=100&member=p%2F1&group=site-a`))).status, 400, 'a member id with a slash');
  const held = fetch(url(`?release=${f.a.id}&waitMs=300000&rollout=-&member=p1&group=site-a`));
  await new Promise((r) => setTimeout(r, 300));
  const beat = await post(f.url, '/v1/heartbeat', { ...ref('p1'), have: all, mapVersion: 0 });
  t.is(beat.body.heartbeatMs, 86_400_000, 'idle and seen through its held poll: once a day (1.8; a 1.7 agent clamps it to an hour)');
  t.not((await post(f.url, '/v1/heartbeat', { ...ref('p2'), have: all, mapVersion: 0 })).body.heartbeatMs, 86_400_000, 'p2 holds no poll');
  // p2 stops beating and times out (3 of its intervals); p1, silent too, lives through its poll.
  const key = `${f.a.id}/site-a`;
  for (let i = 0; i < 300 && member(f, key, 'p2'); i++) await new Promise((r) => setTimeout(r, 100));
  t.false(member(f, key, 'p2'), 'a silent member without a poll times out');
  t.true(member(f, key, 'p1'), 'a silent member holding a poll does not');
  // The fleet view (fleetcast status) shows it seen now, not at its last beat (a day apart with 1.8).
  const fleet = (await (await fetch(`${f.url}/v1/fleet`)).json()) as { groups: { group: string; members: { id: string; lastSeenMsAgo: number }[] }[] };
  const p1 = fleet.groups.flatMap((g) => g.members).find((m) => m.id === 'p1');
  t.is(p1?.lastSeenMsAgo, 0, JSON.stringify(fleet));
  // p1 never polled the rollout: its channel poll made it a follower the rollout counts.
  const started = await post(f.url, '/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '100%', maxFailures: '1' });
  t.is(started.status, 201, JSON.stringify(started.body));
  t.is(started.body.members, 1, 'p1 alone follows the channel');
  const res = await held;
  t.is(res.status, 200);
  t.is(res.headers.get('x-fleetcast-following'), 'rollout,member', 'what the poll stood for');
  // With no poll held it times out as if it beat at the 1.6 idle rate, not once a day.
  for (let i = 0; i < 300 && member(f, key, 'p1'); i++) await new Promise((r) => setTimeout(r, 100));
  t.false(member(f, key, 'p1'), 'times out once its poll ended');
  const other = await fetch(url(`?release=${f.a.id}&waitMs=1&member=p9&group=site-a`));
  t.is(other.headers.get('x-fleetcast-following'), 'rollout', 'not a member of A here: following only');
});

test('an idle 1.8 agent leaves out the rollout poll after a held poll that stood for it, and polls it when the token moves', async (t) => {
  const f = await startRolloutFleet(t);
  const srv = f.server as unknown as { channelWatch: { wait: (...a: unknown[]) => Promise<void>; close: () => void }; rollouts: { handle: (...a: unknown[]) => Promise<boolean> } };
  const holds: { waitMs: number }[] = [];
  const orig = srv.channelWatch.wait.bind(srv.channelWatch);
  srv.channelWatch.wait = (name: unknown, known: unknown, waitMs: unknown, signal: unknown, rollout: unknown) => {
    holds.push({ waitMs: waitMs as number });
    return orig(name, known, waitMs, signal, rollout);
  };
  let rolloutPolls = 0;
  const handle = srv.rollouts.handle.bind(srv.rollouts);
  srv.rollouts.handle = (req: unknown, ...rest: unknown[]) => {
    if ((req as { url?: string }).url === '/v1/rollouts/poll') rolloutPolls++;
    return handle(req, ...rest);
  };
  f.spawnAgent('k0', 'site-a');
  await f.until('k0 installed A', async () => (await f.lines('installs.log')).some((l) => l.startsWith(f.a.id)));
  // The first long hold asks what a poll naming no member was granted (5 minutes); once
  // its polls name it and this server notes it as following, the longest hold is a day.
  const long = () => holds.filter((h) => h.waitMs >= 300_000);
  const longHolds = () => long().length;
  await f.until('a long hold', async () => longHolds() >= 1);
  // Answer the hold as its time running out would (same head, same token); the agent polls again.
  for (let round = 0; round < 3; round++) {
    const before = { polls: rolloutPolls, holds: longHolds() };
    srv.channelWatch.close();
    await f.until(`hold ${before.holds + 1}`, async () => longHolds() > before.holds);
    // The first long hold's answer may be the first with the following header: one poll then at most.
    if (round > 0) t.is(rolloutPolls, before.polls, `round ${round}: no rollout poll between two held polls`);
  }
  t.deepEqual(long().slice(1).map((h) => h.waitMs), [86_400_000, 86_400_000, 86_400_000], 'after an answer that granted a day, it asks for it');
  // A rollout start moves the token: the agent asks about it at once and installs B.
  await fs.writeFile(path.join(f.dir, `go-${f.b.id}`), '');
  const started = await post(f.url, '/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '100%', maxFailures: '1' });
  t.is(started.status, 201, JSON.stringify(started.body));
  await f.until('k0 installed B', async () => (await f.lines('installs.log')).some((l) => l.startsWith(f.b.id)), 60_000);
});

test('a 1.7 or later follower is held up to a day, with TCP keepalive on its connection, and counts as seen while held; one seen only by a rollout poll is forgotten after 10', async (t) => {
  let skew = 0;
  const f = await startRolloutFleet(t, { now: () => Date.now() + skew });
  const srv = f.server as unknown as { channelWatch: { held: () => number } };
  const url = (q: string) => `${f.url}/v1/channels/stable${q}`;
  const plain = await fetch(url(`?release=${f.a.id}&waitMs=1&rollout=-`));
  t.is(plain.headers.get('x-fleetcast-long-poll'), '300000', 'a poll that names no member: 5 minutes, within the memory of its rollout polls');
  t.is((await post(f.url, '/v1/rollouts/poll', { channel: 'stable', member: 'p0', group: 'site-a' })).status, 200, 'p0 follows by rollout polls');
  const held = fetch(url(`?release=${f.a.id}&waitMs=86400000&rollout=-&member=p1&group=site-b`));
  await f.until('p1\'s poll held', async () => srv.channelWatch.held() === 1);
  // The server's end of the held poll probes after 60 s idle (Linux: ss shows its keepalive timer).
  const server = new URL(f.url);
  const timers = execFileSync('ss', ['-tnoH', 'state', 'established', 'src', `${server.hostname}:${server.port}`], { timeout: 60_000 }).toString();
  t.regex(timers, /timer:\(keepalive,/, `the held poll's connection has keepalive on:\n${timers}`);
  skew = 11 * 60_000; // 11 minutes on: p0 has not polled since, p1's poll is still held
  const started = await post(f.url, '/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '100%', maxFailures: '1' });
  t.is(started.status, 201, JSON.stringify(started.body));
  const res = await held; // the rollout start ended the hold
  t.is(res.headers.get('x-fleetcast-long-poll'), '86400000', 'the longest hold of a follower this server notes (1.8: a day)');
  t.is(res.headers.get('x-fleetcast-following'), 'rollout');
  const file = path.join(f.dir, 'store', 'rollouts', `${started.body.id as string}.json`);
  const r = await f.until('the rollout written', async () => JSON.parse(await fs.readFile(file, 'utf8').catch(() => 'null')) as { members: Record<string, unknown> } | null);
  t.deepEqual(Object.keys(r.members), ['p1'], 'the held follower is in the waves, the one last seen 11 minutes ago is not');
  // Once answered, p1 is seen at the answer: 11 minutes after that it is forgotten too.
  t.is((await post(f.url, `/v1/rollouts/${started.body.id as string}/abort`, {})).status, 200);
  skew += 11 * 60_000;
  const again = await post(f.url, '/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '100%', maxFailures: '1' });
  t.is(again.status, 409, JSON.stringify(again.body));
  t.regex(JSON.stringify(again.body), /NO_MEMBERS/, 'no follower seen in the last 10 minutes');
});

test('an agent\'s request to the server has TCP keepalive after 60 s idle on its connection, so a NAT keeps a poll held for a day', async (t) => {
  const srv = http.createServer((_req, res) => setTimeout(() => res.end('{}'), 300));
  const held = new Promise<void>((resolve) => srv.once('request', () => resolve()));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => srv.close());
  const port = (srv.address() as AddressInfo).port;
  const access = new ServerAccess({ url: `http://127.0.0.1:${port}`, plainHttp: true });
  const answer = access.request('GET', '/v1/channels/stable');
  await held;
  // While the request is held (Node's keep-alive agent would probe after 1 s: its keepAliveMsecs default).
  const line = execFileSync('ss', ['-tnoH', 'state', 'established', 'dst', `127.0.0.1:${port}`], { timeout: 60_000 }).toString();
  const m = /timer:\(keepalive,(\d+)sec/.exec(line);
  t.truthy(m, `a keepalive timer on the agent's end:\n${line}`);
  t.true(Number(m![1]) <= TCP_KEEPALIVE_MS / 1000 && Number(m![1]) >= TCP_KEEPALIVE_MS / 1000 - 5, line);
  t.is((await answer).status, 200);
});

test('a 1.8 agent beats once a day when asked, and clamps a longer interval to a day, a shorter one to 50 ms', async (t) => {
  const asked = [86_400_000, 1_000_000_000, 20];
  let beats = 0;
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      // A whole 1.4 map of no member (docs/protocol.md section 14), at the interval under test.
      res.end(JSON.stringify({ heartbeatMs: asked[beats++], mapEpoch: 1, mapVersion: beats, full: true, members: [], holderSlots: [], groupComplete: true, allHeld: true }));
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => srv.close());
  const abort = new AbortController();
  t.teardown(() => abort.abort());
  const client = new ControlClient(new ServerAccess({ url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, plainHttp: true }), abort.signal, silentLogger);
  const hb = new Heartbeats(client, silentLogger, () => ({ release: 'ab'.repeat(16), group: 'g', member: 'x' }), () => undefined);
  t.teardown(() => hb.stop());
  const took: number[] = [];
  for (let i = 0; i < asked.length; i++) {
    t.truthy(await hb.beat(i === 0), `answer ${i} taken`);
    took.push(hb.ms);
  }
  t.deepEqual(took, [86_400_000, 86_400_000, 50], 'section 20: 50 … 86,400,000 ms');
});
