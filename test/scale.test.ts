import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import test, { ExecutionContext } from 'ava';
import { benchScale, latencySides, scaleReport, servedInWindow, serverControl, SIM_NICE } from '../bench/scale';
import { mergeSimReports, SimReport, SIM_SEMI_SPACE_MIB } from '../bench/scale-sim';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { bucketQuantile } from '../bench/scale-cluster';
import { Client, Route } from '../bench/scale-client';
import { rootTest } from './helpers/netns';
import { postgresUnsupported } from './helpers/postgres';
import { freePort } from './helpers/ports';

/**
 * The scale bench's code paths (bench/scale.ts, issue 18's row with 2 coordinators): the
 * simulator's client moves to the next instance as an agent does, and a tiny 2-instance
 * run on a real PostgreSQL has every agent's allocation owned by the instance its
 * agents list first, requests answered by both, and no failure.
 */

/** A loopback server answering every POST with `status` and `body`; closed in t.teardown. */
async function answering(t: ExecutionContext, status: number, body: unknown): Promise<{ port: number; hits: () => number }> {
  let hits = 0;
  const s = http.createServer((req, res) => {
    hits++;
    req.resume();
    req.on('end', () => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => s.close(() => r())));
  return { port: (s.address() as AddressInfo).port, hits: () => hits };
}

// Serial: the "dead" port below is only free until something else takes it, and the 2-instance run starts 3 services.
test.serial('scale client: a refused connection and an ENGINE_UNAVAILABLE 503 move the agent to the next instance, and it stays there; another 503 does not move it', async (t) => {
  const dead = await freePort();
  const live = await answering(t, 200, { heartbeatMs: 1000 });
  const engineDown = await answering(t, 503, { error: 'ENGINE_UNAVAILABLE', message: 'engine down', retryAfterMs: 1000 });
  const moving = await answering(t, 503, { error: 'OWNER_UNREACHABLE', message: 'owner gone', retryAfterMs: 1000 });
  const c = new Client([dead, live.port, engineDown.port, moving.port]);
  t.teardown(() => c.close());
  c.measuring = true;

  const refused: Route = { order: [0, 1], at: 0 };
  t.deepEqual(await c.post('127.0.0.1', 'heartbeat', '/v1/heartbeat', {}, refused), { heartbeatMs: 1000 });
  t.is(refused.at, 1, 'after a refused connection the agent uses the next instance');
  await c.post('127.0.0.1', 'heartbeat', '/v1/heartbeat', {}, refused);
  t.is(live.hits(), 2, 'and keeps using it');

  const engine: Route = { order: [2, 1], at: 0 };
  await c.post('127.0.0.1', 'heartbeat', '/v1/heartbeat', {}, engine);
  t.is(engine.at, 1);
  t.is(engineDown.hits(), 1);

  const owner: Route = { order: [3, 1], at: 0 };
  await t.throwsAsync(c.post('127.0.0.1', 'heartbeat', '/v1/heartbeat', {}, owner), { message: /503.*OWNER_UNREACHABLE/ });
  t.is(owner.at, 0, 'a 503 other than ENGINE_UNAVAILABLE keeps the agent where it is, as an agent retries that server');
  t.is(live.hits(), 3);

  const all: Route = { order: [0, 2], at: 0 };
  await t.throwsAsync(c.post('127.0.0.1', 'heartbeat', '/v1/heartbeat', {}, all), { message: /503/ }, 'one round at most');

  // Every attempt is counted where it went; the agents saw 2 failures of 5 requests.
  t.deepEqual(c.instances.map((i) => [i.count, i.failed, i.failovers]), [[2, 2, 2], [3, 0, 0], [2, 2, 1], [1, 1, 0]]);
  t.is(c.kinds.heartbeat.count, 5);
  t.is(c.kinds.heartbeat.failed, 2);
});

rootTest(
  'scale bench with 2 instances: 200 agents in 20 LAN groups split across 2 coordinators on PostgreSQL, each group owned by the instance its agents list first',
  async (t) => {
    t.timeout(300_000);
    const r = await benchScale({ agents: 200, perGroup: 10, policy: 'group', sitesPerWide: 20, seconds: 3, wanBytesPerSec: 5e6, originBytesPerSec: 10e9 / 8, lanDelayMs: 200, form: '1.4', instances: 2, teardown: (f) => t.teardown(f) });
    t.is(r.joined, 200);
    t.is(r.instances.length, 2);
    for (const [k, i] of r.instances.entries()) {
      t.is(i.joined, 100, `instance ${k}: half the agents list it first`);
      t.is(i.owned, 10, `instance ${k}: owns the 10 groups whose agents list it first`);
      t.true(i.count > 100, `instance ${k} answered requests (${i.count})`);
      t.is(i.failed, 0);
      t.true(i.proxied <= i.count * 0.05, `instance ${k}: few requests proxied to the other (${i.proxied} of ${i.count}): agents reach their group's owner first`);
      t.true(i.cpu > 0 && i.hwmMiB > 10);
    }
    t.is(Object.values(r.kinds).reduce((s, k) => s + k.failed, 0), 0);
    t.is(r.instances[0].count + r.instances[1].count, Object.values(r.kinds).reduce((s, k) => s + k.count, 0), 'without failures, each request went to one instance');
    // Read from /proc (clock ticks of 10 ms: 3 s of 200 agents' leases and registry writes may stay under one).
    t.true(r.postgresCpu !== null && r.postgresCpu >= 0, 'PostgreSQL\'s CPU is measured');
  },
  postgresUnsupported(),
);

test('bucket quantiles interpolate inside their bucket as histogram_quantile does, and say when they fall above the last bound', (t) => {
  const b = { bounds: [0.1, 0.2, 0.5], counts: [50, 40, 9, 1] };
  t.is(bucketQuantile(b, 0.5), 0.1);
  t.true(Math.abs(bucketQuantile(b, 0.7) - 0.15) < 1e-9);
  t.true(Math.abs(bucketQuantile(b, 0.99) - 0.5) < 1e-9);
  t.is(bucketQuantile(b, 0.995), Infinity);
  t.true(Number.isNaN(bucketQuantile({ bounds: [0.1], counts: [0, 0] }, 0.5)));
});

test.serial('scale bench, one server, agents in 2 simulator processes: the server\'s own latency by kind and its event-loop delay come from its /metrics over the window, beside the simulator\'s', async (t) => {
  t.timeout(120_000);
  const r = await benchScale({ agents: 100, perGroup: 10, policy: 'group', sitesPerWide: 20, seconds: 3, wanBytesPerSec: 5e6, originBytesPerSec: 10e9 / 8, lanDelayMs: 200, form: '1.4', simProcesses: 2, teardown: (f) => t.teardown(f) });
  t.is(r.joined, 100, 'both processes\' agents joined');
  t.is(r.simProcesses, 2);
  t.is(r.simSemiSpaceMiB, SIM_SEMI_SPACE_MIB, 'the simulator processes were started with the larger young generation');
  t.is(r.instances[0].joined, 100);
  const served = serverControl(r, ['heartbeat']);
  const servedCount = served ? served.counts.reduce((a, b) => a + b, 0) : 0;
  const sent = r.kinds.heartbeat.count;
  // The probe, a process of its own, heartbeat beside the simulator over the same window (50 a second).
  const p = r.probe;
  if (!p) return t.fail('no probe result');
  t.true(p.count >= 50 && p.count <= 300, `the probe timed ${p.count} heartbeats in 3 s`);
  t.is(p.failed, 0);
  t.true(p.p50 > 0 && p.p50 <= p.p99 && p.p99 <= p.max, JSON.stringify(p));
  // The counts cover nearly the same seconds (the server's is read just outside the window).
  t.true(sent > 50 && servedCount >= (sent + p.count) * 0.8 && servedCount <= (sent + p.count) * 1.5, `server counted ${servedCount} heartbeats, the simulator ${sent}, the probe ${p.count}`);
  t.is(r.simNice, Number(process.env.FLEETCAST_SCALE_SIM_NICE ?? SIM_NICE), 'the simulator processes ran the window niced');
  t.is(r.instances[0].count, Object.values(r.kinds).reduce((s, k) => s + k.count, 0), 'the processes\' counts are added the same way by kind and by instance');
  // The table's requests are the server's count less the probe's: a simulator that falls behind undercounts (issue 17).
  const maps = r.instances[0].maps;
  t.true(maps.delta > 0 && maps.full >= 0 && maps.loadFactor >= 1, `whole and delta maps over the window from /v1/stats: ${JSON.stringify(maps)}`);
  const byServer = servedInWindow(r);
  t.is(byServer.get('heartbeat'), servedCount - p.count);
  t.true(scaleReport([r], 'test', 'test').join('\n').includes(`heartbeat ${(byServer.get('heartbeat')! / r.window).toFixed(0)}/s`), 'the table\'s heartbeat rate is the server\'s');
  t.regex(scaleReport([r], 'test', 'test').join('\n'), new RegExp(`\\| ${p.p50.toFixed(1)} / ${p.p99.toFixed(1)} / ${p.max.toFixed(1)} \\(${p.count}; its loop ${p.loopP99.toFixed(1)}\\) \\|`), 'the row has the probe\'s cell');
  const loop = r.instances[0].serverLoop.counts.reduce((a, b) => a + b, 0);
  t.true(loop > 0, 'the server\'s loop delay was sampled in the window');
  t.true(Number.isFinite(r.simLoopMs.p99) && r.simLoopMs.max >= r.simLoopMs.p50, JSON.stringify(r.simLoopMs));
  const sides = latencySides(r);
  t.regex(sides.server, /^\d+\.\d \/ \d+\.\d$/);
});

test.serial('scale bench, policy wide: a unit one site fetched reaches the other sites of its wide-area group, so every simulated agent completes', async (t) => {
  t.timeout(120_000);
  // 4 sites of 10 in one wide-area group; units "fetch" at once. Each unit is leased to one site of the group: without
  // the copy between sites no site would hold the whole release and no agent would complete. Completion is counted until
  // the window closes: 3 s after every agent joined, plus 8 s of window, for a busy machine.
  const r = await benchScale({ agents: 40, perGroup: 10, policy: 'wide', sitesPerWide: 20, seconds: 8, wanBytesPerSec: 1e12, originBytesPerSec: 1e12, lanDelayMs: 20, form: '1.5', probe: { members: 0, perSecond: 0 }, teardown: (f) => t.teardown(f) });
  t.is(r.joined, 40);
  t.is(r.completed, 40, 'every agent completed');
  t.is(Object.values(r.kinds).reduce((s, k) => s + k.failed, 0), 0);
});

test('the simulator lowers every thread of its process to a niceness, and back as root', (t) => {
  const code = `const { niceThreads } = require(${JSON.stringify(path.join(__dirname, '..', 'bench', 'scale-sim.js'))});
    const fs = require('fs');
    const nices = () => fs.readdirSync('/proc/self/task').map((tid) => Number(fs.readFileSync('/proc/self/task/' + tid + '/stat', 'utf8').split(') ')[1].split(' ')[16]));
    const before = nices();
    const ok = niceThreads(Math.max(before[0], 7));
    const during = nices();
    const back = niceThreads(before[0]);
    console.log(JSON.stringify({ before, ok, during, back, after: nices() }));`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { before: number[]; ok: boolean; during: number[]; back: boolean; after: number[] };
  t.true(j.ok);
  t.true(j.during.length > 1, 'Node has threads beside the main one');
  t.deepEqual(j.during, j.during.map(() => Math.max(j.before[0], 7)), 'every thread, not only the main one');
  if (process.getuid?.() === 0) t.deepEqual(j.after, j.before, 'root restores them');
});

test('bench scale refuses a bad argument with its usage and exit code 64', (t) => {
  const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'bench', 'run.js'), 'scale', '5'], { encoding: 'utf8' });
  t.is(r.status, 64);
  t.regex(r.stderr, /usage: npm run bench -- scale/);
});

test('the simulator processes\' reports add up: counts and bytes summed, latencies together, by kind and by instance; the worst loop delay', (t) => {
  const rep = (hb: number[], lease: number[] | null, loopP99: number): SimReport => ({
    kinds: { heartbeat: { count: hb.length, failed: 1, bytes: 100 * hb.length, latencies: hb, copyAnswers: 1, copyBytes: 40 }, ...(lease ? { lease: { count: lease.length, failed: 0, bytes: 10, latencies: lease } } : {}) },
    instances: [{ count: hb.length + (lease?.length ?? 0), failed: 1, latencies: [...hb, ...(lease ?? [])], failovers: 0 }],
    completed: 2,
    answeredMs: 1000,
    loopMs: { p50: 1, p99: loopP99, max: loopP99 * 2, mean: 2 },
    nice: 10,
    semiSpaceMiB: 64,
  });
  const m = mergeSimReports([rep([1, 2, 3], [9], 30), rep([4, 5], null, 70)]);
  t.deepEqual(m.kinds.heartbeat, { count: 5, failed: 2, bytes: 500, latencies: [1, 2, 3, 4, 5], copyAnswers: 2, copyBytes: 80 });
  t.deepEqual(m.kinds.lease, { count: 1, failed: 0, bytes: 10, latencies: [9] });
  t.deepEqual(m.instances, [{ count: 6, failed: 2, latencies: [1, 2, 3, 9, 4, 5], failovers: 0 }]);
  t.is(m.completed, 4);
  t.deepEqual(m.loopMs, { p50: 1, p99: 70, max: 140, mean: 2 });
});
