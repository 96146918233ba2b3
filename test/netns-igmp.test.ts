import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseIgmpPacket } from '../src/net/igmp';
import { namespaceTest } from './helpers/netns';
import { BIN } from './netns/fleet';
import { lan, systemTool } from './netns/topology';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Prints every IGMP packet the host receives as "epoch-seconds hex" (python3 raw socket). */
const CAPTURE = `
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
print("ready", flush=True)
while True:
    b = s.recv(65535)
    print("%.3f %s" % (time.time(), b.hex()), flush=True)
`;

/** Another querier: an IGMPv3 general query from this host every 0.3 s, until killed. */
const OTHER_QUERIER = `
import socket, struct, sys, time
addr = sys.argv[1]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
q = bytearray([0x11, 10, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0])
struct.pack_into("!H", q, 2, csum(bytes(q)))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(addr))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
print("ready", flush=True)
while True:
    s.sendto(bytes(q), ("224.0.0.1", 0))
    time.sleep(0.3)
`;

namespaceTest('igmp_querier: well-formed general queries on schedule, silent while a lower address queries, back when it stops', async (t) => {
  const topo = lan(2);
  t.teardown(() => topo.destroy());
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-igmp-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const [querierHost, listenerHost] = topo.agents;
  const other = topo.server; // 10.200.0.1: lower than every agent

  // The listener on another host of the LAN.
  const cap = topo.exec(listenerHost.ns, ['python3', '-c', CAPTURE]);
  const seen: { at: number; src: string; m: ReturnType<typeof parseIgmpPacket> }[] = [];
  let buf = '';
  await new Promise<void>((resolve) =>
    cap.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        if (l === 'ready') resolve();
        const [ts, hex] = l.split(' ');
        if (!hex) continue;
        const m = parseIgmpPacket(Buffer.from(hex, 'hex'));
        if (m && m.type === 0x11) seen.push({ at: Number(ts) * 1000, src: m.source, m });
      }
    }),
  );

  // An agent with the querier on, 1 s interval. It needs no server for this: it keeps
  // retrying to reach one while the querier runs.
  const sock = path.join(dir, 'a.sock');
  const { generateKeyPair } = await import('../src/release/keys');
  const { pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const agent = topo.exec(querierHost.ns, [
    process.execPath, BIN, 'agent', '--server', topo.serverUrl(querierHost), '--plain-http', '--group', 'g', '--interface', querierHost.lanIf,
    '--multicast', '239.200.0.1:7601', '--storage', path.join(dir, 's'), '--trust', pubPath, '--release', randomBytes(16).toString('hex'),
    '--igmp-querier', '--igmp-interval', '1', '--status-socket', sock, '--log-level', 'info',
  ]);
  let agentErr = '';
  agent.stderr!.on('data', (d) => (agentErr += d));
  const started = Date.now();
  await sleep(4500);
  const ours = () => seen.filter((s) => s.src === querierHost.lanAddress);
  const first = ours();
  t.true(first.length >= 4, `queries from the agent in 4.5 s: ${first.length}\n${agentErr}`);
  for (const { m } of first) {
    t.like(m, { version: 3, group: '0.0.0.0', destination: '224.0.0.1', ttl: 1, routerAlert: true, checksumOk: true, intervalS: 1, robustness: 2 });
  }
  // Startup: 2 queries a quarter interval apart, then one a second.
  const gaps = first.slice(1).map((s, i) => s.at - first[i].at);
  t.true(gaps[0] < 600, `startup gap ${gaps[0]} ms`);
  for (const g of gaps.slice(2)) t.true(g > 700 && g < 1500, `steady gaps ${gaps.map((x) => x.toFixed(0)).join(', ')}`);
  t.true(first[0].at - started < 2500, 'the first query goes out right after start');

  // fleetcast doctor on the other host hears the querier.
  const doc = await topo.run(listenerHost.ns, [process.execPath, BIN, 'doctor', '--interface', listenerHost.lanIf, '--multicast', '239.200.0.1:7601', '--wait', '0.5', '--igmp-wait', '2.5', '--json']);
  const igmpFinding = (JSON.parse(doc.stdout) as { findings: { check: string; verdict: string; detail: string }[] }).findings.find((x) => x.check === 'igmp querier')!;
  t.is(igmpFinding.verdict, 'ok', igmpFinding.detail);
  t.true(igmpFinding.detail.startsWith(`querier ${querierHost.lanAddress} (IGMPv3, every 1 s)`), igmpFinding.detail);

  // A lower-addressed querier appears: the agent stops.
  const rival = topo.exec(other.ns, ['python3', '-c', OTHER_QUERIER, other.lanAddress]);
  await new Promise<void>((resolve) => rival.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve()));
  const rivalAt = Date.now();
  await sleep(3500);
  const during = ours().filter((s) => s.at > rivalAt + 1200);
  t.is(during.length, 0, `the agent kept querying after ${other.lanAddress} appeared: ${during.length}`);
  t.true(seen.some((s) => s.src === other.lanAddress), 'the rival was heard on the LAN');
  const status = await topo.run(querierHost.ns, [process.execPath, BIN, 'status', '--socket', sock, '--json']);
  const q = (JSON.parse(status.stdout) as { igmpQuerier: { querying: boolean; otherQuerier: string } }).igmpQuerier;
  t.like(q, { querying: false, otherQuerier: other.lanAddress });

  // The rival goes away: after the Other Querier Present Interval (2 x 1 s + 0.45 s) the agent resumes.
  rival.kill('SIGKILL');
  const goneAt = Date.now();
  await sleep(5000);
  const after = ours().filter((s) => s.at > goneAt);
  t.true(after.length >= 1, 'the agent queries again once the other querier is gone');
  t.true(after[0].at - goneAt > 2000, `resumed ${after[0]?.at - goneAt} ms after the rival stopped, before its presence timed out`);
  agent.kill('SIGTERM');
  cap.kill('SIGKILL');
});

namespaceTest('doctor names a firewall that drops the port and strict rp_filter, and says how to fix them', async (t) => {
  const topo = lan(1);
  t.teardown(() => topo.destroy());
  const h = topo.agents[0];
  const nft = systemTool('nft');
  const rules = 'table inet fcdoctor { chain input { type filter hook input priority 0; policy accept; udp dport 7601 drop; }; }';
  const setup = await topo.run(h.ns, ['sh', '-ec', `${nft} '${rules}'; sysctl -qw net.ipv4.conf.all.rp_filter=1`]);
  t.is(setup.code, 0, setup.stderr);
  const r = await topo.run(h.ns, [process.execPath, BIN, 'doctor', '--interface', h.lanIf, '--multicast', '239.200.0.1:7601', '--wait', '0.5', '--igmp-wait', '0.5', '--json']);
  t.is(r.code, 1, r.stderr);
  const v = Object.fromEntries((JSON.parse(r.stdout) as { findings: { check: string; verdict: string; detail: string; fix?: string }[] }).findings.map((x) => [x.check, x]));
  t.is(v.firewall.verdict, 'fail');
  t.regex(v.firewall.detail, /nftables drops UDP port 7601: udp dport 7601 drop/);
  t.regex(v.firewall.fix!, /udp dport 7601 accept/);
  t.is(v.loopback.verdict, 'fail', 'the dropped probe never comes back');
  t.is(v.rp_filter.verdict, 'warn');
  t.regex(v.rp_filter.fix!, /rp_filter=2/);
  t.is(v['igmp querier'].verdict, 'warn', 'nobody queries on this LAN');
});
