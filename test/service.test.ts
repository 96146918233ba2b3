import test from 'ava';
import { spawn } from 'node:child_process';
import { spawnSync } from './helpers/sync';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { setChannel } from '../src/release/channels';
import { sha256File } from '../src/storage/partial-store';
import { BIN, runCli, startFleet, tmpdir } from './helpers/fleet';
import { fakeSystemd } from './helpers/notify';

const root = path.join(__dirname, '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, ms: number, probe: () => Promise<T | null | undefined | false>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

function spawnBin(t: import('ava').ExecutionContext, args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  child.stdout!.resume();
  const exit = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, exit, stderr: () => stderr };
}

const lines = async (file: string) => (await fs.readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);

test('agents follow a channel to each new release; the hook runs once per release and is reported; old releases are pruned', async (t) => {
  const f = await startFleet(t, { size: 2 * 1024 * 1024 + 77, unitSize: 256 * 1024 });
  const store = path.join(f.dir, 'store');
  await setChannel(store, { channel: 'stable', release: f.manifest.id, name: f.manifest.name, publishedAt: Date.now() });
  const hookLog = (id: string) => path.join(f.dir, `${id}.hooks`);
  const args = (id: string) => [
    'agent', '--server', f.url, '--plain-http', '--group', 'g1', '--interface', '127.0.0.1', '--multicast', f.multicast,
    '--storage', path.join(f.dir, id), '--trust', f.pubPath, '--channel', 'stable', '--channel-poll', '0.2',
    '--member', id, '--keep', '1', '--status-socket', path.join(f.dir, `${id}.sock`), '--log-level', 'warn',
    '--on-complete', `printf '%s %s %s %s\\n' "$FLEETCAST_RELEASE_ID" "$FLEETCAST_SHA256" "$FLEETCAST_CHANNEL" "$FLEETCAST_FILE" >> ${hookLog(id)}`,
  ];
  const ids = ['a', 'b'];
  let procs = ids.map((id) => spawnBin(t, args(id)));
  for (const id of ids) await until(`${id}'s first hook`, 60_000, async () => (await lines(hookLog(id))).length >= 1);
  for (const id of ids) {
    const [rel, sha, channel, file] = (await lines(hookLog(id)))[0].split(' ');
    t.is(rel, f.manifest.id);
    t.is(sha, f.manifest.sha256);
    t.is(channel, 'stable');
    t.is(await sha256File(file), f.manifest.sha256, `${id} hook saw the verified file`);
  }

  // A new release on the channel, published with the CLI.
  const src2 = path.join(f.dir, 'second.bin');
  const bytes2 = randomBytes(3 * 1024 * 1024 + 5);
  await fs.writeFile(src2, bytes2);
  const pub = await runCli(['publish', src2, '--store', store, '--key', f.keyPath, '--unit-size', '262144', '--channel', 'stable']);
  t.is(pub.code, 0, pub.stderr);
  const id2 = pub.stdout.trim().split('\n').at(-1)!;
  t.regex(pub.stdout, /channel stable now points at/);
  for (const id of ids) await until(`${id}'s second hook`, 60_000, async () => (await lines(hookLog(id))).length >= 2);
  for (const id of ids) {
    const l = await lines(hookLog(id));
    t.is(l.length, 2, `${id}: one hook run per release`);
    t.is(l[1].split(' ')[0], id2);
    t.is(await sha256File(l[1].split(' ')[3]), createHash('sha256').update(bytes2).digest('hex'));
    // keep: 1, so the first release is removed once the second is complete.
    await until(`${id} to prune the old release`, 10_000, async () => !existsSync(path.join(f.dir, id, f.manifest.id)));
  }

  // The server knows each member's hook result; `fleetcast fleet` shows it.
  const fleet = await runCli(['fleet', '--server', f.url, '--plain-http', '--json']);
  t.is(fleet.code, 0, fleet.stderr);
  const g = (JSON.parse(fleet.stdout) as { groups: { release: string; members: { id: string; hook: { exitCode: number } | null }[] }[] }).groups.find((x) => x.release === id2)!;
  t.deepEqual(g.members.map((m) => [m.id, m.hook?.exitCode]).sort(), [
    ['a', 0],
    ['b', 0],
  ]);
  const table = await runCli(['fleet', '--server', f.url, '--plain-http']);
  t.regex(table.stdout, /second\.bin .*group g1: 2 member\(s\), complete/);
  t.regex(table.stdout, /\ba\s+#\d\s+13\/13 done\s+.*exit 0/);

  // `fleetcast status` on the unix socket.
  const st = await runCli(['status', '--socket', path.join(f.dir, 'a.sock'), '--json']);
  t.is(st.code, 0, st.stderr);
  const s = JSON.parse(st.stdout) as { release: { id: string; complete: boolean }; channel: string; transport: { kind: string }; role: string; state: string };
  t.is(s.release.id, id2);
  t.true(s.release.complete);
  t.is(s.channel, 'stable');
  t.is(s.state, 'complete');
  t.truthy(s.transport.kind);
  const human = await runCli(['status', '--socket', path.join(f.dir, 'a.sock')]);
  t.regex(human.stdout, /progress 13\/13 units \(100\.0%\), complete: /);

  // Restarted agents do not run the hook again for a release they already handled.
  for (const p of procs) p.child.kill('SIGTERM');
  t.deepEqual(await Promise.all(procs.map((p) => p.exit)), [0, 0]);
  procs = ids.map((id) => spawnBin(t, args(id)));
  await until('a restarted agent to report complete', 30_000, async () => {
    const r = await runCli(['status', '--socket', path.join(f.dir, 'a.sock'), '--json']);
    return r.code === 0 && (JSON.parse(r.stdout) as { state: string }).state === 'complete';
  });
  await sleep(500);
  for (const id of ids) t.is((await lines(hookLog(id))).length, 2, `${id}: the hook did not run again after a restart`);
  for (const p of procs) p.child.kill('SIGTERM');
  await Promise.all(procs.map((p) => p.exit));
});

test('under systemd: READY, STATUS with progress, WATCHDOG, reload on SIGHUP (a bad file keeps the old config), metrics, STOPPING', async (t) => {
  if (spawnSync('python3', ['--version']).status !== 0) return t.fail('python3 is needed to stand in for systemd');
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 256 * 1024 });
  const sd = await fakeSystemd(t, path.join(f.dir, 'notify.sock'));
  const metricsPort = randomInt(20000, 32000); // below the ephemeral range (32768+), where a client socket may hold the port
  const cfg = path.join(f.dir, 'agent.yaml');
  const yaml = (rate: number, group = 'g1') =>
    [
      `server: ${f.url}`,
      'plain_http: true',
      `group: ${group}`,
      'interface: 127.0.0.1',
      `multicast: ${f.multicast}`,
      `storage: ${path.join(f.dir, 'a')}`,
      `trust: [${f.pubPath}]`,
      `release: ${f.manifest.id}`,
      `rate: ${rate}`,
      `status_socket: ${path.join(f.dir, 'a.sock')}`,
      `metrics: 127.0.0.1:${metricsPort}`,
      'log_level: info',
    ].join('\n');
  await fs.writeFile(cfg, yaml(200));
  const p = spawnBin(t, ['agent', '--config', cfg], { NOTIFY_SOCKET: sd.socket, WATCHDOG_USEC: '400000' });
  await sd.waitFor(/^READY=1$/, 60_000).catch((err: Error) => {
    throw new Error(`${err.message}; agent exit ${p.child.exitCode}, stderr: ${p.stderr()}`);
  });
  await sd.waitFor(/^STATUS=release\.bin: \d+\/16 units verified/);
  await sd.waitFor(/^STATUS=release\.bin complete; serving repairs/);
  await until('two watchdog pings', 5000, async () => sd.messages().filter((m) => m === 'WATCHDOG=1').length >= 2);

  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.regex(metrics, /# TYPE fleetcast_agent_received_bytes_total counter/);
  t.regex(metrics, new RegExp(`fleetcast_agent_received_bytes_total\\{source="wan"\\} ${f.manifest.size}\\b`));
  t.regex(metrics, /fleetcast_agent_units_verified_total\{source="wan"\} 16\b/);
  t.regex(metrics, /fleetcast_agent_progress_ratio 1\b/);
  t.regex(metrics, /fleetcast_agent_drops_total/);
  t.is((await fetch(`http://127.0.0.1:${metricsPort}/other`)).status, 404);

  const limit = async () => {
    const r = await runCli(['status', '--socket', path.join(f.dir, 'a.sock'), '--json']);
    return (JSON.parse(r.stdout) as { rates: { limitBytesPerSec: number } }).rates.limitBytesPerSec;
  };
  t.is(await limit(), 200e6 / 8);
  await fs.writeFile(cfg, yaml(50, 'g2'));
  p.child.kill('SIGHUP');
  await until('the reload', 10_000, async () => /reloaded .*agent\.yaml: changed rate/.test(p.stderr()));
  t.regex(p.stderr(), /group changed but only take effect after a restart/);
  t.is(await limit(), 50e6 / 8);
  await sd.waitFor(/^RELOADING=1$/);

  await fs.writeFile(cfg, yaml(10).replace('rate: 10', 'rate: [10'));
  p.child.kill('SIGHUP');
  await until('the refused reload', 10_000, async () => /SIGHUP: .*agent\.yaml:\d+:\d+: YAML syntax: .*keeping the running config/.test(p.stderr()));
  t.is(await limit(), 50e6 / 8, 'the bad file changed nothing');
  t.is(p.child.exitCode, null, 'still running');

  p.child.kill('SIGTERM');
  t.is(await p.exit, 0);
  await sd.waitFor(/^STOPPING=1$/);
});

test('the server under systemd: READY with what it serves, STOPPING on SIGTERM; metrics', async (t) => {
  if (spawnSync('python3', ['--version']).status !== 0) return t.fail('python3 is needed to stand in for systemd');
  const dir = await tmpdir(t);
  const sd = await fakeSystemd(t, path.join(dir, 'notify.sock'));
  const port = randomInt(20000, 32000);
  const metricsPort = port + 1;
  const cfg = path.join(dir, 'server.yaml');
  await fs.writeFile(cfg, `plain_http: true\ncreate: true\nstore: ${path.join(dir, 'store')}\nlisten: 127.0.0.1:${port}\nmetrics: 127.0.0.1:${metricsPort}\n`);
  const p = spawnBin(t, ['server', '--config', cfg], { NOTIFY_SOCKET: sd.socket });
  t.regex(await sd.waitFor(/READY=1/), /STATUS=serving 0 release\(s\) on http:\/\/127\.0\.0\.1:\d+/);
  const m = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.regex(m, /fleetcast_server_releases 0/);
  p.child.kill('SIGTERM');
  t.is(await p.exit, 0);
  await sd.waitFor(/^STOPPING=1$/);
});

const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;
(hasAnalyze ? test : test.skip)('systemd-analyze security scores the agent unit at 2.0 or lower (and the server unit too)', (t) => {
  for (const unit of ['fleetcast-agent.service', 'fleetcast-server.service']) {
    const r = spawnSync('systemd-analyze', ['security', '--offline=true', path.join(root, 'systemd', unit)], { encoding: 'utf8' });
    const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(r.stdout + r.stderr);
    t.truthy(m, `no score in: ${r.stdout}${r.stderr}`);
    t.true(Number(m![1]) <= 2.0, `${unit} scores ${m![1]}`);
  }
});

test('install-service puts the package, units and example configs in place and never overwrites a config', async (t) => {
  const dest = await tmpdir(t);
  const script = path.join(root, 'scripts', 'install-service.sh');
  let r = spawnSync('sh', [script, '--destdir', dest], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  for (const f of ['etc/systemd/system/fleetcast-agent.service', 'etc/systemd/system/fleetcast-server.service', 'etc/fleetcast/agent.yaml', 'etc/fleetcast/server.yaml', 'opt/fleetcast/dist/src/cli/main.js']) {
    t.true(existsSync(path.join(dest, f)), f);
  }
  const installed = path.join(dest, 'opt', 'fleetcast', 'bin', 'fleetcast.js');
  // The unedited example parses, but names files that are not there yet: config check says which.
  const check = spawnSync(process.execPath, [installed, 'config', 'check', path.join(dest, 'etc/fleetcast/agent.yaml')], { encoding: 'utf8' });
  t.is(check.status, 78, check.stderr);
  t.regex(check.stderr, /agent\.yaml:\d+:\d+: trust: \/etc\/fleetcast\/server\.pub does not exist/);
  await fs.writeFile(path.join(dest, 'etc/fleetcast/agent.yaml'), 'mine: true\n');
  r = spawnSync('sh', [script, '--destdir', dest, '--igmp-querier'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(await fs.readFile(path.join(dest, 'etc/fleetcast/agent.yaml'), 'utf8'), 'mine: true\n');
  t.regex(r.stdout, /kept your .*agent\.yaml/);
  t.true(existsSync(path.join(dest, 'etc/systemd/system/fleetcast-agent.service.d/igmp-querier.conf')));
  r = spawnSync('sh', [script, '--bogus'], { encoding: 'utf8' });
  t.is(r.status, 64);
});

test('doctor on loopback: the probe comes back, a running agent is heard, the server answers; an unreachable server fails with a fix', async (t) => {
  const f = await startFleet(t, { size: 8 * 1024 * 1024, unitSize: 256 * 1024 });
  const a = f.spawnAgent('a', ['--rate', '10', '--linger', '30']);
  await until('the agent to join', 20_000, async () => f.server.fleet() && (f.server.fleet() as { groups: unknown[] }).groups.length > 0);
  const r = await runCli(['doctor', '--interface', '127.0.0.1', '--multicast', f.multicast, '--server', f.url, '--wait', '1.5', '--json']);
  t.is(r.code, 0, r.stdout + r.stderr);
  const j = JSON.parse(r.stdout) as { findings: { check: string; verdict: string; detail: string }[] };
  const v = Object.fromEntries(j.findings.map((x) => [x.check, x]));
  t.is(v.interface.verdict, 'ok');
  t.is(v['join group'].verdict, 'ok');
  t.is(v.loopback.verdict, 'ok');
  t.is(v.peers.verdict, 'ok', v.peers.detail);
  t.regex(v.peers.detail, /^1 fleetcast agent\(s\) heard .* on 1 release/);
  t.regex(v.server.detail, /answers; round trip \d+\.\d ms/);
  a.child.kill('SIGKILL');

  const bad = await runCli(['doctor', '--interface', '127.0.0.1', '--multicast', f.multicast, '--server', 'http://127.0.0.1:1', '--wait', '0.3']);
  t.is(bad.code, 1);
  t.regex(bad.stdout, /FAIL\s+server\s+http:\/\/127\.0\.0\.1:1 does not answer/);
  t.regex(bad.stdout, /fix: check the URL/);
  const none = await runCli(['doctor', '--interface', 'nosuch0', '--multicast', f.multicast, '--wait', '0.3']);
  t.is(none.code, 1);
  t.regex(none.stdout, /FAIL\s+interface\s+--interface nosuch0: no interface has that name/);
});
