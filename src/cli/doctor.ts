import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import { fragmentBytesForMtu, resolveInterface } from '../net/interface';
import { loadConfigFile } from '../config/config';
import { listenForQueries } from '../net/igmp';
import { createTransport } from '../transport/binding';
import { ExitCode, FleetcastError } from '../util/errors';
import { decodePacket } from '../wire/packet';
import { checks, resolveFlags, splitHostPort } from './args';
import { ServerAccess } from '../net/server-access';
import { describeFetchError } from '../agent/control-client';
import { agent } from './agent-command';
import { Command } from './command';

/**
 * `fleetcast doctor`: what breaks multicast in the field, each finding with how to fix
 * it. Read-only: it joins the group and sends one probe datagram to it (which agents
 * drop as malformed), opens no other sockets but a raw IGMP listener when permitted,
 * and changes no setting.
 */
export type Verdict = 'ok' | 'warn' | 'fail' | 'skip';
export interface Finding {
  check: string;
  verdict: Verdict;
  detail: string;
  fix?: string;
}

const IFF_UP = 0x1;
const IFF_MULTICAST = 0x1000;

async function readSys(file: string): Promise<string | null> {
  return fs.readFile(file, 'utf8').then(
    (s) => s.trim(),
    () => null,
  );
}

/** The interface of the default route, else the first up non-loopback one with IPv4. */
function guessInterface(): string {
  const r = spawnSync('ip', ['-j', 'route', 'show', 'default'], { encoding: 'utf8' });
  try {
    const routes = JSON.parse(r.stdout) as { dev?: string }[];
    if (routes[0]?.dev) return routes[0].dev;
  } catch {
    /* below */
  }
  for (const [name, addrs] of Object.entries(os.networkInterfaces())) {
    if (name !== 'lo' && addrs?.some((a) => a.family === 'IPv4' && !a.internal)) return name;
  }
  return 'lo';
}

export interface DoctorOptions {
  interface: string;
  multicast: { address: string; port: number };
  server?: ServerAccess;
  /** Why the server cannot be asked at all (an unreadable token or CA file). */
  serverProblem?: { detail: string; fix: string };
  waitMs: number;
  igmpWaitMs: number;
  fragmentBytes?: number;
}

export async function diagnose(o: DoctorOptions): Promise<Finding[]> {
  const out: Finding[] = [];
  const add = (f: Finding) => out.push(f);
  const mc = o.multicast;

  // 1. The interface: exists, up, multicast-capable, has an IPv4 address.
  let ifName: string | null = null;
  let ifAddr = '';
  try {
    const i = resolveInterface(o.interface, 4);
    ifName = i.name;
    ifAddr = i.address;
  } catch (err) {
    add({ check: 'interface', verdict: 'fail', detail: (err as Error).message, fix: 'give --interface the LAN interface name (ip -br addr lists them)' });
    return out;
  }
  const flags = Number(await readSys(`/sys/class/net/${ifName}/flags`));
  if (!(flags & IFF_UP)) add({ check: 'interface', verdict: 'fail', detail: `${ifName} is down`, fix: `ip link set ${ifName} up` });
  else if (!(flags & IFF_MULTICAST) && ifName !== 'lo') add({ check: 'interface', verdict: 'fail', detail: `${ifName} has no MULTICAST flag`, fix: `ip link set ${ifName} multicast on` });
  else add({ check: 'interface', verdict: 'ok', detail: `${ifName} is up with ${ifAddr}${ifName === 'lo' ? ' (loopback: multicast stays on this host)' : ''}` });

  // 2. A route for the group (the agent pins the interface itself; other tools may not).
  const rg = spawnSync('ip', ['-j', 'route', 'get', mc.address], { encoding: 'utf8' });
  if (ifName === 'lo') add({ check: 'multicast route', verdict: 'skip', detail: 'loopback: the agent pins the interface, so no route is needed' });
  else if (rg.status === 0) {
    let dev = '';
    try {
      dev = (JSON.parse(rg.stdout) as { dev?: string }[])[0]?.dev ?? '';
    } catch {
      /* below */
    }
    if (dev === ifName) add({ check: 'multicast route', verdict: 'ok', detail: `${mc.address} routes via ${dev}` });
    else add({ check: 'multicast route', verdict: 'warn', detail: `${mc.address} routes via ${dev || 'nothing'}, not ${ifName}; fleetcast pins the interface, other tools (and the IGMP querier) may not`, fix: `ip route add 224.0.0.0/4 dev ${ifName}` });
  } else add({ check: 'multicast route', verdict: 'warn', detail: `no route for ${mc.address}: ${rg.stderr.trim() || 'ip route get failed'}`, fix: `ip route add 224.0.0.0/4 dev ${ifName}` });

  // 3. rp_filter: strict mode drops multicast whose source is not routed back via this interface.
  const rp = Math.max(Number((await readSys('/proc/sys/net/ipv4/conf/all/rp_filter')) ?? 0), Number((await readSys(`/proc/sys/net/ipv4/conf/${ifName}/rp_filter`)) ?? 0));
  if (rp === 1) add({ check: 'rp_filter', verdict: 'warn', detail: `strict reverse-path filtering (rp_filter=1) on ${ifName}: multicast from peers whose address routes via another interface is dropped`, fix: `sysctl -w net.ipv4.conf.${ifName}.rp_filter=2 net.ipv4.conf.all.rp_filter=2` });
  else add({ check: 'rp_filter', verdict: 'ok', detail: `rp_filter=${rp}${rp === 2 ? ' (loose)' : ' (off)'}` });

  // 4. MTU and the fragment size it implies.
  const mtu = Number((await readSys(`/sys/class/net/${ifName}/mtu`)) ?? 1500);
  const fb = fragmentBytesForMtu(mtu, false);
  if (o.fragmentBytes && o.fragmentBytes > fb) {
    add({ check: 'mtu', verdict: 'warn', detail: `MTU ${mtu} fits ${fb}-byte fragments, but fragment_bytes is ${o.fragmentBytes}: every datagram is IP-fragmented, and one lost fragment loses it`, fix: `leave fragment_bytes out (it follows the MTU) or set it to ${fb}` });
  } else if (mtu < 1280) add({ check: 'mtu', verdict: 'warn', detail: `MTU ${mtu} is small: ${fb}-byte fragments mean many datagrams per unit`, fix: 'check the link (PPPoE, VPN) for a larger MTU' });
  else add({ check: 'mtu', verdict: 'ok', detail: `MTU ${mtu}: ${fb}-byte fragments` });

  // 5. Firewall: an nftables rule that drops the port, or an input policy of drop.
  const nft = ['/usr/sbin/nft', '/sbin/nft'].find((p) => existsSync(p));
  if (nft && process.getuid?.() === 0) {
    const r = spawnSync(nft, ['list', 'ruleset'], { encoding: 'utf8' });
    const text = r.stdout ?? '';
    const portRule = text.split('\n').find((l) => new RegExp(`dport\\s+(\\{[^}]*\\b${mc.port}\\b[^}]*\\}|${mc.port})\\b.*\\b(drop|reject)\\b`).test(l));
    const dropPolicy = /hook input[^\n]*policy drop/.test(text);
    const accepts = new RegExp(`dport\\s+(\\{[^}]*\\b${mc.port}\\b[^}]*\\}|${mc.port})\\b.*\\baccept\\b`).test(text);
    if (portRule) add({ check: 'firewall', verdict: 'fail', detail: `nftables drops UDP port ${mc.port}: ${portRule.trim()}`, fix: `nft insert rule inet filter input udp dport ${mc.port} accept (and the same for IGMP: ip protocol igmp accept)` });
    else if (dropPolicy && !accepts) add({ check: 'firewall', verdict: 'warn', detail: `an nftables input chain has policy drop and no rule accepting UDP port ${mc.port}`, fix: `nft add rule inet filter input udp dport ${mc.port} accept` });
    else add({ check: 'firewall', verdict: 'ok', detail: text.trim() ? `no nftables rule drops UDP port ${mc.port}` : 'no nftables ruleset' });
  } else add({ check: 'firewall', verdict: 'skip', detail: nft ? 'reading the nftables ruleset needs root' : 'nft is not installed; the loopback check below still catches a firewall that drops the group' });

  // 6. Join the group, send a probe, see it come back; meanwhile listen for peers.
  let transport;
  try {
    transport = createTransport({ group: mc.address, port: mc.port, interfaceAddress: ifAddr, loopback: true }, process.env, () => undefined);
    await transport.open();
  } catch (err) {
    add({ check: 'join group', verdict: 'fail', detail: `cannot join ${mc.address}:${mc.port} on ${ifAddr}: ${(err as Error).message}`, fix: 'check the address is multicast and the interface is up; EADDRINUSE is fine only when an agent runs here' });
    transport = null;
  }
  if (transport) {
    add({ check: 'join group', verdict: 'ok', detail: `joined ${mc.address}:${mc.port} on ${ifName} (${transport.info.kind} transport)` });
    const probe = Buffer.concat([Buffer.from('fleetcast-doctor '), randomBytes(8)]);
    let looped = false;
    const senders = new Map<number, Set<string>>();
    transport.onBatch((b) => {
      for (let i = 0; i < b.count; i++) {
        const d = b.data(i);
        if (d.length === probe.length && Buffer.from(d).equals(probe)) {
          looped = true;
          continue;
        }
        const r = decodePacket(d);
        if (!r.ok) continue;
        const set = senders.get(r.packet.sender) ?? new Set<string>();
        set.add(Buffer.from(r.packet.releaseId).toString('hex'));
        senders.set(r.packet.sender, set);
      }
    });
    transport.sendBatch([probe], transport.groupEndpoint);
    await new Promise((r) => setTimeout(r, o.waitMs));
    await transport.close();
    if (looped) add({ check: 'loopback', verdict: 'ok', detail: 'our own probe came back through the group (the kernel and local firewall pass it)' });
    else add({ check: 'loopback', verdict: 'fail', detail: `our own probe to ${mc.address}:${mc.port} never came back`, fix: `a firewall drops UDP ${mc.port} (allow it), or the interface cannot loop multicast back` });
    if (senders.size > 0) {
      const rel = new Set([...senders.values()].flatMap((s) => [...s]));
      add({ check: 'peers', verdict: 'ok', detail: `${senders.size} fleetcast agent(s) heard on the group in ${o.waitMs / 1000} s, on ${rel.size} release(s)` });
    } else add({ check: 'peers', verdict: 'warn', detail: `no fleetcast agent heard on ${mc.address}:${mc.port} in ${o.waitMs / 1000} s (fine if none is transferring now)`, fix: 'run doctor on two boxes while an agent runs; if they never hear each other, the switch does not forward the group (IGMP snooping without a querier: see below)' });
  }

  // 7. The server: reachable, and its round-trip time.
  if (o.server) {
    const rtts: number[] = [];
    let error = '';
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      try {
        const res = await o.server.fetch('/v1/releases', { signal: AbortSignal.timeout(5000) });
        await res.arrayBuffer();
        if (res.status === 401) throw new Error('answered 401: the token is missing or not among the server\'s tokens');
        if (!res.ok) throw new Error(`answered ${res.status}`);
        rtts.push(performance.now() - t0);
      } catch (err) {
        error = describeFetchError(err);
      }
    }
    if (rtts.length) add({ check: 'server', verdict: 'ok', detail: `${o.server.url} answers; round trip ${rtts.sort((a, b) => a - b)[Math.floor(rtts.length / 2)].toFixed(1)} ms (median of ${rtts.length})` });
    else add({ check: 'server', verdict: 'fail', detail: `${o.server.url} does not answer: ${error}`, fix: /401/.test(error) ? 'check token or token_file against the server\'s tokens' : /certificate|self.signed|CERT/i.test(error) ? "the server's certificate does not chain to the CA: check ca" : 'check the URL, the route to the origin, and that fleetcast-server runs there' });
  } else if (o.serverProblem) add({ check: 'server', verdict: 'fail', ...o.serverProblem });
  else add({ check: 'server', verdict: 'skip', detail: 'no --server given' });

  // 8. An IGMP querier on the LAN (raw socket: CAP_NET_RAW).
  if (ifName === 'lo') add({ check: 'igmp querier', verdict: 'skip', detail: 'loopback has no switch to snoop' });
  else {
    try {
      const qs = await listenForQueries(ifName!, ifAddr, o.igmpWaitMs);
      const others = qs.filter((q) => q.source !== ifAddr);
      if (others.length) {
        const q = others[0];
        add({ check: 'igmp querier', verdict: 'ok', detail: `querier ${q.source} (IGMPv${q.version}${q.intervalS ? `, every ${q.intervalS} s` : ''}) heard within ${o.igmpWaitMs / 1000} s` });
      } else {
        add({ check: 'igmp querier', verdict: 'warn', detail: `no IGMP query heard on ${ifName} in ${o.igmpWaitMs / 1000} s (queriers usually send every 125 s: --igmp-wait 130 to be sure)`, fix: 'IGMP-snooping switches stop forwarding the group without a querier: enable one on the switch or router, or set igmp_querier: true on one agent per LAN' });
      }
    } catch (err) {
      add({ check: 'igmp querier', verdict: 'skip', detail: (err as Error).message });
    }
  }
  return out;
}

export const doctor: Command = {
  spec: {
    name: 'doctor',
    summary: 'Check what breaks multicast on this box and its LAN (interface, route, rp_filter, firewall, MTU, loopback, peers, server, IGMP querier) and say how to fix each finding.',
    usage: 'doctor [--config AGENT.yaml] [--interface NAME] [--multicast ADDR:PORT] [--server URL] [--ca PEMFILE] [--token-file FILE] [--json]',
    configOf: 'agent',
    flags: {
      config: { type: 'string', arg: 'FILE', help: "take interface, multicast, server, ca and token from the agent's config file (any valid one)", cliOnly: true },
      interface: { type: 'string', arg: 'NAME|ADDR', help: 'the LAN interface (default: from --config, else the default route\'s)' },
      multicast: { type: 'string', arg: 'ADDR:PORT', help: 'the group to check (default: from --config, else 239.192.0.1:7601)', check: checks.multicast },
      server: { type: 'string', arg: 'URL', help: 'the origin server to reach (default: from --config)', check: checks.httpUrl },
      ca: { type: 'string', arg: 'PEMFILE', help: "CA the server's HTTPS certificate must chain to (default: from --config, else the system's)" },
      'token-file': { type: 'string', arg: 'FILE', help: 'file holding the bearer token for the server (default: from --config)' },
      wait: { type: 'number', arg: 'SECONDS', help: 'how long to listen for the probe and for peers', default: 3, min: 0.2, max: 600 },
      'igmp-wait': { type: 'number', arg: 'SECONDS', help: 'how long to listen for an IGMP querier', default: 3, min: 0.2, max: 600 },
      json: { type: 'boolean', help: 'print the findings as JSON' },
    },
  },
  async run(a) {
    const f = a.flags;
    let fromFile: Record<string, unknown> = {};
    if (f.config !== undefined) {
      // The agent's own checks: a file the agent accepts is accepted here, and a bad one
      // fails the same way (file:line:column, exit 78).
      fromFile = resolveFlags(agent.spec, {}, await loadConfigFile(String(f.config), agent.spec));
    }
    // A --token-file or --ca given here wins over the file's token/token_file/ca.
    const tokenFile = (f['token-file'] as string | undefined) ?? (fromFile['token-file'] as string | undefined);
    const token = f['token-file'] !== undefined ? undefined : (fromFile.token as string | undefined);
    const caFile = (f.ca as string | undefined) ?? (fromFile.ca as string | undefined);
    const iface = (f.interface as string | undefined) ?? (fromFile.interface as string | undefined) ?? guessInterface();
    const mcStr = (f.multicast as string | undefined) ?? (fromFile.multicast as string | undefined) ?? '239.192.0.1:7601';
    const mcProblem = checks.multicast(mcStr);
    if (mcProblem) throw new FleetcastError('CONFIG', `multicast ${mcProblem}`, ExitCode.CONFIG);
    const hp = splitHostPort(mcStr) as { host: string; port: number };
    const fileServer = fromFile.server as string | string[] | undefined;
    // The agent's config may list several coordinators: the doctor asks the first.
    const serverUrl = (f.server as string | undefined) ?? (Array.isArray(fileServer) ? fileServer[0] : fileServer);
    let access: ServerAccess | undefined;
    let serverProblem: DoctorOptions['serverProblem'];
    try {
      // A diagnosis may look at a plain-HTTP server; the agent itself would need plain_http.
      access = serverUrl ? ServerAccess.fromFiles({ url: serverUrl, token, tokenFile: token === undefined ? tokenFile : undefined, caFile, plainHttp: true }) : undefined;
    } catch (err) {
      serverProblem = { detail: `cannot ask ${serverUrl}: ${(err as Error).message}`, fix: 'check token_file and ca (or --token-file and --ca): the agent reads them as its service user' };
    }
    const findings = await diagnose({
      interface: iface,
      multicast: { address: hp.host, port: hp.port },
      server: access,
      serverProblem,
      waitMs: (f.wait as number) * 1000,
      igmpWaitMs: (f['igmp-wait'] as number) * 1000,
      fragmentBytes: fromFile['fragment-bytes'] as number | undefined,
    });
    if (f.json) process.stdout.write(JSON.stringify({ interface: iface, multicast: mcStr, findings }, null, 2) + '\n');
    else {
      const w = Math.max(...findings.map((x) => x.check.length));
      for (const x of findings) {
        process.stdout.write(`${x.verdict.toUpperCase().padEnd(4)}  ${x.check.padEnd(w)}  ${x.detail}\n`);
        if (x.fix && x.verdict !== 'ok') process.stdout.write(`${' '.repeat(w + 8)}fix: ${x.fix}\n`);
      }
    }
    return findings.some((x) => x.verdict === 'fail') ? ExitCode.FAILURE : ExitCode.OK;
  },
};
