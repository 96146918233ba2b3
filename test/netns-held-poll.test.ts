import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { inNetns, namespaceTest, netns } from './helpers/netns';
import { BIN, runCli } from './helpers/fleet';
import { systemTool } from './netns/topology';

// Issue 17, protocol 1.7/1.8 (docs/protocol.md sections 19 and 20, "Keepalive"): a follower's
// channel poll is held up to a day, and it counts as a live follower while held. One that
// vanishes without closing its connection (power lost: no FIN, no RST) must not stay held to
// the end of the day: the server's keepalive probes find it gone, the kernel closes the
// connection, and the hold ends as a closed one does. Both ends live in one namespace on two
// loopback addresses; the follower's address is then cut off with an nftables drop rule.

const SERVER = '10.77.0.1';
const FOLLOWER = '10.77.0.2';

namespaceTest('a follower that vanishes without closing its held poll: keepalive probes end the hold, one that answers them stays held', async (t) => {
  t.timeout(180_000);
  const ns = await netns(t, [
    'ip link set lo up',
    `ip addr add ${SERVER}/32 dev lo`,
    `ip addr add ${FOLLOWER}/32 dev lo`,
    // Per namespace: a probe a second, two unanswered ones end the connection (Linux: 75 s x 9).
    'sysctl -qw net.ipv4.tcp_keepalive_intvl=1',
    'sysctl -qw net.ipv4.tcp_keepalive_probes=2',
  ]);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-held-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const cli = async (args: string[]) => {
    const r = await runCli(args);
    if (r.code !== 0) throw new Error(`fleetcast ${args.join(' ')}: ${r.stderr}`);
    return r.stdout.trim().split('\n').pop()!.trim();
  };
  await cli(['keygen', '--out', path.join(dir, 'keys')]);
  await fs.writeFile(path.join(dir, 'fw.img'), Buffer.alloc(65536, 1));
  const store = path.join(dir, 'store');
  const release = await cli(['publish', path.join(dir, 'fw.img'), '--store', store, '--key', path.join(dir, 'keys', 'server.key'), '--channel', 'stable']);

  const srv = spawn('ip', ['netns', 'exec', ns, process.execPath, BIN, 'server', '--plain-http', '--store', store, '--listen', `${SERVER}:7600`, '--metrics', `${SERVER}:9601`, '--held-keepalive-ms', '1000'], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (srv.exitCode === null) srv.kill('SIGKILL');
  });
  let err = '';
  srv.stderr.on('data', (d) => (err += d));
  for (let i = 0; i < 600 && !/listening/.test(err); i++) await new Promise((r) => setTimeout(r, 50));
  t.regex(err, /listening/, err);

  const metrics = async () => {
    const r = await inNetns(ns, process.execPath, ['-e', `fetch('http://${SERVER}:9601/metrics').then((r) => r.text()).then((s) => process.stdout.write(s))`]);
    if (r.code !== 0) throw new Error(`reading metrics: ${r.stderr}`);
    const value = (series: string) => Number(new RegExp(`^fleetcast_server_${series} (\\d+)$`, 'm').exec(r.stdout)?.[1] ?? NaN);
    return { held: value('channel_polls_held\\{kind="following"\\}'), gone: value('channel_polls_gone_total') };
  };
  // A 1.8 follower's poll (member and group named, the rollout token of no rollout), from its own address.
  const poll = `/v1/channels/stable?release=${release}&waitMs=86400000&rollout=-&member=p1&group=site-a`;
  const follower = () =>
    spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', `
      const req = require('node:http').request({ host: '${SERVER}', port: 7600, localAddress: '${FOLLOWER}', path: process.argv[1] }, (res) => console.log('answered', res.statusCode));
      req.on('error', (e) => console.log('error', e.code));
      req.end();
      setInterval(() => {}, 1000);`, poll], { stdio: 'ignore' });
  const until = async (what: string, ok: (m: { held: number; gone: number }) => boolean) => {
    // Bounded well inside the test's timeout (so teardown runs), far past what the probes take (~3 s).
    const deadline = Date.now() + 60_000;
    let m = await metrics();
    while (!ok(m) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      m = await metrics();
    }
    t.true(ok(m), `${what}: ${JSON.stringify(m)}`);
    t.log(`${what}: ${JSON.stringify(m)}`);
    return m;
  };

  const first = follower();
  t.teardown(() => first.kill('SIGKILL'));
  await until('p1 held', (m) => m.held === 1);
  // It answers the probes (its kernel does): still held after many keepalive periods (1 s idle, 1 s apart).
  await new Promise((r) => setTimeout(r, 6000));
  const still = await metrics();
  t.deepEqual(still, { held: 1, gone: 0 }, 'a follower that answers the probes stays held');

  // Power lost: nothing reaches it or comes from it any more, and it sends no FIN.
  // (nft by its path: under npm, node_modules/.bin has an unrelated `nft`.)
  const rules = `table inet cut { chain filt { type filter hook input priority 0; policy accept; ip saddr ${FOLLOWER} drop; ip daddr ${FOLLOWER} drop; }; }`;
  const cut = await inNetns(ns, systemTool('nft'), [rules]);
  t.is(cut.code, 0, cut.stderr);
  const after = await until('the hold ended by the probes', (m) => m.held === 0);
  t.is(after.gone, 1, 'ended as a closed connection: no answer was written');
  t.is(first.exitCode, null, 'the follower process itself never closed its request');
});
