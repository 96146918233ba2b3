import test from 'ava';
import { spawnSync } from './helpers/sync';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { newAgentStats } from '../src/agent/agent-types';
import { AgentDaemon } from '../src/agent/daemon';
import type { StreamAgent } from '../src/agent/stream-agent';
import { StreamCore, StreamWindow } from '../src/agent/stream-core';
import { streamMetrics, streamStatus } from '../src/agent/stream-status';
import { splitHostPort } from '../src/cli/args';
import { ServerAccess } from '../src/net/server-access';
import { setChannel } from '../src/release/channels';
import { loadPrivateKey, loadPublicKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { silentLogger } from '../src/util/log';
import { MetricsRegistry } from '../src/util/metrics';
import { startFleet, until } from './helpers/fleet';

/** Debian's python3 with python3-prometheus-client (in .ci/run's apt-get line). */
const PYTHON = '/usr/bin/python3';
const TOKEN = 'metrics-test-token-0123456789';

interface Family {
  name: string;
  type: string;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

/** Parse with the Prometheus Python client's own parser; it raises on anything malformed. */
function parse(text: string): Family[] {
  const py = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
`;
  const r = spawnSync(PYTHON, ['-c', py], { input: text, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`the Prometheus parser refused the output: ${r.stderr}\n${text}`);
  return JSON.parse(r.stdout) as Family[];
}

test('agent and server metrics parse with the Prometheus client: build info, process metrics, seconds, status codes, no duplicates, nothing left of a superseded release', async (t) => {
  if (spawnSync(PYTHON, ['-c', 'import prometheus_client']).status !== 0) return t.fail('needs python3-prometheus-client (apt-get install python3-prometheus-client)');
  const f = await startFleet(t, { size: 200_000, unitSize: 65536, server: { tokens: { box1: TOKEN } } });
  await setChannel(path.join(f.dir, 'store'), { channel: 'stable', release: f.manifest.id, name: f.manifest.name, publishedAt: Date.now() });
  const mc = splitHostPort(f.multicast) as { host: string; port: number };
  const daemon = new AgentDaemon({
    agent: {
      server: new ServerAccess({ url: f.url, plainHttp: true, token: TOKEN }),
      group: 'g1',
      member: 'box1',
      interface: '127.0.0.1',
      multicast: { address: mc.host, port: mc.port },
      storageDir: path.join(f.dir, 'box1'),
      trustedKeys: [await loadPublicKey(f.pubPath)],
      lingerMs: 0,
    },
    channel: 'stable',
    keep: 2,
    hookTimeoutMs: 1000,
    channelPollMs: 50,
    logger: silentLogger,
  });
  t.teardown(() => daemon.stop());
  void daemon.runForever();
  await until(() => daemon.state === 'complete' && daemon.currentRelease === f.manifest.id, 'the first release completes');
  // One refused request, for a 401 in the status-code label.
  t.is((await fetch(`${f.url}/v1/releases`)).status, 401);

  const now = Date.now() / 1000;
  const pkg = JSON.parse(await fs.readFile(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
  for (const [who, text] of [['agent', daemon.metrics()], ['server', f.server.metrics()]] as const) {
    const fams = parse(text);
    const names = fams.map((x) => x.name);
    t.deepEqual(names.filter((n, i) => names.indexOf(n) !== i), [], `${who}: each family once`);
    const one = (n: string) => fams.find((x) => x.name === n)?.samples[0];
    t.is(one('fleetcast_build_info')?.value, 1, who);
    t.is(one('fleetcast_build_info')?.labels.version, pkg.version, who);
    t.true((one('process_cpu_seconds')?.value ?? 0) > 0, `${who}: process_cpu_seconds_total`);
    t.true((one('process_resident_memory_bytes')?.value ?? 0) > 1e6, who);
    t.true((one('process_open_fds')?.value ?? 0) > 2, who);
    const start = one('process_start_time_seconds')?.value ?? 0;
    t.true(start > now - 3600 && start <= now + 1, `${who}: start time ${start}`);
  }

  const agent = parse(daemon.metrics());
  const ag = (n: string) => agent.find((x) => x.name === n)?.samples[0]?.value;
  const done = ag('fleetcast_agent_last_completion_timestamp_seconds') ?? 0;
  t.true(done > now - 120 && done <= now + 1, `completed at ${done}`);
  t.true((ag('fleetcast_agent_last_completion_duration_seconds') ?? -1) > 0);

  const server = parse(f.server.metrics());
  const http = server.find((x) => x.name === 'fleetcast_server_http_requests')!;
  const codes = new Set(http.samples.map((s) => s.labels.code));
  t.true(codes.has('200') && codes.has('401'), [...codes].join(','));
  t.falsy(server.find((x) => x.name.endsWith('unit_bytes_sent_by_group')), 'the by-group duplicate is gone');
  // The stream holders' window cap (issue 19) is counted, 0 with no stream.
  t.deepEqual(server.find((x) => x.name === 'fleetcast_server_stream_holders_cut')?.samples.map((s) => s.value), [0]);
  // So are the asks a stream's share rule held back (test/stream-alloc counts them through a stream).
  t.deepEqual(server.find((x) => x.name === 'fleetcast_server_stream_share_deferrals')?.samples.map((s) => s.value), [0]);
  const bytes = server.find((x) => x.name === 'fleetcast_server_unit_bytes_sent')!.samples;
  t.deepEqual(bytes.map((s) => s.labels.group), ['g1']);
  t.true(bytes[0].value >= f.manifest.size);
  const missingFor = (fams: Family[], id: string) => fams.find((x) => x.name === 'fleetcast_server_group_missing_units')?.samples.filter((s) => s.labels.release === id) ?? [];
  t.is(missingFor(server, f.manifest.id).length, 1);

  // A new release on the channel: the agent moves, and the old release's group series go.
  await fs.writeFile(path.join(f.dir, 'v2.bin'), randomBytes(100_000));
  const m2 = await publishRelease(path.join(f.dir, 'v2.bin'), path.join(f.dir, 'store'), await loadPrivateKey(f.keyPath), { unitSize: 65536 });
  await setChannel(path.join(f.dir, 'store'), { channel: 'stable', release: m2.id, name: m2.name, publishedAt: Date.now() });
  await until(() => daemon.state === 'complete' && daemon.currentRelease === m2.id, 'the second release completes');
  const after = parse(f.server.metrics());
  t.deepEqual(missingFor(after, f.manifest.id), [], 'nothing left for the superseded release');
  t.is(missingFor(after, m2.id).length, 1);
  const rel = parse(daemon.metrics()).find((x) => x.name === 'fleetcast_agent_release_units')!.samples;
  t.deepEqual(rel.map((s) => s.labels.release), [m2.id]);
});

test('server request latency by kind and event-loop delay are Prometheus histograms with fixed buckets: counts match the requests, a held long poll and a blocked loop land above 250 ms', async (t) => {
  if (spawnSync(PYTHON, ['-c', 'import prometheus_client']).status !== 0) return t.fail('needs python3-prometheus-client (apt-get install python3-prometheus-client)');
  const f = await startFleet(t, { size: 100_000, unitSize: 65536 });
  await setChannel(path.join(f.dir, 'store'), { channel: 'stable', release: f.manifest.id, name: f.manifest.name, publishedAt: Date.now() });
  const post = async (p: string, body: unknown) => {
    const r = await fetch(`${f.url}${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    t.is(r.status, 200, `${p}: ${await r.text()}`);
  };
  for (let i = 0; i < 3; i++) await post('/v1/join', { release: f.manifest.id, group: 'g1', member: `m${i}` });
  for (let i = 0; i < 7; i++) await post('/v1/heartbeat', { release: f.manifest.id, group: 'g1', member: `m${i % 3}` });
  // A long poll the server holds for 300 ms: its own kind, above the 250 ms bucket.
  t.is((await fetch(`${f.url}/v1/channels/stable?release=${f.manifest.id}&waitMs=300`)).status, 200);
  // The event loop (the server's too: it runs in this process) blocked for 300 ms.
  const until = Date.now() + 300;
  while (Date.now() < until) {
    /* busy */
  }
  await new Promise((r) => setTimeout(r, 50));

  const fams = parse(f.server.metrics());
  const family = (n: string) => fams.find((x) => x.name === n);
  const req = family('fleetcast_server_request_duration_seconds');
  t.is(req?.type, 'histogram');
  const of = (kind: string, suffix: string, le?: string) => req!.samples.find((s) => s.name === `fleetcast_server_request_duration_seconds${suffix}` && s.labels.kind === kind && (le === undefined || s.labels.le === le))?.value;
  t.is(of('join', '_count'), 3);
  t.is(of('heartbeat', '_count'), 7);
  t.is(of('heartbeat', '_bucket', '+Inf'), 7);
  t.is(of('channel_wait', '_count'), 1);
  t.is(of('channel_wait', '_bucket', '0.25'), 0, 'the held long poll took more than 250 ms');
  t.true((of('channel_wait', '_sum') ?? 0) >= 0.29);
  const kinds = new Set(req!.samples.map((s) => s.labels.kind));
  t.deepEqual([...kinds].sort(), ['channel_wait', 'heartbeat', 'join'], 'a series per kind seen, none for the others');
  // Buckets are cumulative and fixed: the same bounds for every kind.
  const bounds = (kind: string) => req!.samples.filter((s) => s.labels.kind === kind && s.name.endsWith('_bucket'));
  t.deepEqual(bounds('join').map((s) => s.labels.le), bounds('heartbeat').map((s) => s.labels.le));
  const hb = bounds('heartbeat').map((s) => s.value);
  t.deepEqual(hb, [...hb].sort((a, b) => a - b));

  const loop = family('fleetcast_server_event_loop_delay_seconds');
  t.is(loop?.type, 'histogram');
  const lv = (suffix: string, le?: string) => loop!.samples.find((s) => s.name === `fleetcast_server_event_loop_delay_seconds${suffix}` && (le === undefined || s.labels.le === le))?.value ?? NaN;
  t.true(lv('_count') > 0, 'the loop delay was sampled');
  t.true(lv('_bucket', '0.1') < lv('_count'), `a sample above 100 ms: the loop was blocked for 300 ms (${lv('_bucket', '0.1')} of ${lv('_count')} at or below)`);
});

test("a stream agent's metrics parse with the Prometheus client, and carry its NACK and echo counts", (t) => {
  if (spawnSync(PYTHON, ['-c', 'import prometheus_client']).status !== 0) return t.fail('needs python3-prometheus-client (apt-get install python3-prometheus-client)');
  const window = new StreamWindow('ab'.repeat(16), 65536);
  const core = new StreamCore({ member: 'm1', group: 'g', senderId: 7, fragmentBytes: 1200, rateBytesPerSec: 50e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random: Math.random }, window, Date.now());
  // The echo count is the core's NACK scheduler's (test/stream-ahead drives a real echo).
  (core as unknown as { nacks: { echoed: number } }).nacks.echoed = 3;
  const stats = { ...newAgentStats(), nacksSent: 11, transport: 'dgram' };
  // Copies held from a sender not heard yet (held-datagrams.ts; test/lan-core drives real ones), and drops.
  (core as unknown as { held: { counts: { held: number; replayed: number } } }).held.counts.held = 5;
  stats.drops['unknown-sender'] = 4;
  const agent = {
    delivery: { latenciesMs: [12, 30, 95], next: 42, sink: { kind: 'file', bytes: 42 * 65536 }, pendingBytes: () => 65536, bufferMax: 1 << 26, gaps: 1, gapUnits: 2 },
    lastAnswer: { nextUnit: 44, firstUnit: 0, ended: false, members: [] },
    member: 'm1',
    group: 'g',
    core,
    serverUrl: 'http://127.0.0.1:1',
    stats,
    streamName: 'live',
    follower: null,
  } as unknown as StreamAgent;
  const families = parse(streamMetrics(agent));
  const value = (name: string) => families.flatMap((f) => f.samples).find((s) => s.name === name && s.labels.stream === 'live')?.value;
  t.is(families.find((f) => f.name === 'fleetcast_stream_nack_echoes')?.type, 'counter');
  t.is(value('fleetcast_stream_nack_echoes_total'), 3);
  t.is(value('fleetcast_stream_nacks_sent_total'), 11);
  t.is(value('fleetcast_stream_next_unit'), 42);
  t.is(value('fleetcast_stream_gap_units_total'), 2);
  t.is(streamStatus(agent).stream?.nackEchoes, 3, 'and the status JSON has it');
  const sample = (name: string, labels: Record<string, string>) => families.flatMap((f) => f.samples).find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
  t.is(sample('fleetcast_stream_held_datagrams_total', { outcome: 'held' }), 5);
  t.is(sample('fleetcast_stream_held_datagrams_total', { outcome: 'handled' }), 0);
  t.is(sample('fleetcast_stream_drops_total', { reason: 'unknown-sender' }), 4);
  t.is(families.find((f) => f.name === 'fleetcast_stream_drops')?.type, 'counter');
});

test('label values are escaped as the text format requires, and the Prometheus client reads them back unchanged', (t) => {
  if (spawnSync(PYTHON, ['-c', 'import prometheus_client']).status !== 0) return t.fail('needs python3-prometheus-client (apt-get install python3-prometheus-client)');
  const r = new MetricsRegistry('fleetcast');
  const odd = ['plain', 'back\\slash', 'a "quoted" group', 'two\nlines', '\\"\n\\', ''];
  r.gauge('group_members', 'Members', odd.map((group, i) => [{ release: 'r1', group }, i]));
  r.counter('plain_total', 'No labels', [[{}, 3]]);
  const text = r.text();
  t.true(text.includes('fleetcast_group_members{release="r1",group="back\\\\slash"} 1'), text);
  t.true(text.includes('group="a \\"quoted\\" group"'), text);
  t.true(text.includes('group="two\\nlines"'), text);
  t.true(text.includes('fleetcast_plain_total 3\n'), text);
  const fams = parse(text);
  const members = fams.find((f) => f.name === 'fleetcast_group_members');
  t.deepEqual(members?.samples.map((s) => [s.labels.group, s.labels.release, s.value]), odd.map((g, i) => [g, 'r1', i]));
});
