import { ChildProcess, spawn } from 'node:child_process';
import { spawnSync } from '../helpers/sync';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';

/**
 * Edge sites modelled with network namespaces on one machine (DESIGN.md, "Test
 * topology"). Used by test/netns-*.test.ts and bench/.
 *
 *   lan(n)      one bridge: a server host and n agent hosts            (topology a)
 *   sites(s,a)  a server namespace; per site a router namespace whose   (topology b)
 *               WAN link to the server is shaped with tc tbf, and a LAN
 *               bridge in the router with a agent hosts
 *   uplinks(r)  every agent has its own shaped link to the server and   (topology c)
 *               all share one LAN bridge
 *
 * Addresses are 10.200.0.0/16 and exist only inside these namespaces. `destroy()`
 * kills every process started in them and deletes every namespace; tests call it
 * from t.teardown, benchmarks from finally and on SIGINT/SIGTERM.
 */
export interface Host {
  ns: string;
  /** Address other hosts (and agents' --server URLs) reach this host at. */
  address: string;
  /** The LAN-side interface name and address (agents' --interface). */
  lanIf: string;
  lanAddress: string;
}

export interface Topology {
  prefix: string;
  server: Host;
  /** Agents, grouped by site (one group for lan and uplinks). */
  sites: Host[][];
  agents: Host[];
  /** Server URL as seen from an agent. */
  serverUrl(agent: Host): string;
  exec(ns: string, cmd: string[], opts?: { env?: NodeJS.ProcessEnv }): ChildProcess;
  run(ns: string, cmd: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** Drop `pct`% of UDP datagrams arriving at `port` (all UDP without one) in each agent (nftables numgen). */
  setLoss(pct: number, port?: number): Promise<void>;
  txBytes(host: Host): Promise<number>;
  destroy(): Promise<void>;
}

/**
 * System tools by absolute path: under npm, PATH starts with node_modules/.bin, where
 * a package's own `nft` (@vercel/nft, via ava) shadows nftables' and quietly does
 * nothing.
 */
export function systemTool(name: string): string {
  for (const dir of ['/usr/sbin', '/sbin', '/usr/bin', '/bin']) {
    if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  throw new Error(`testbed: ${name} is not installed (Debian package ${name === 'nft' ? 'nftables' : name})`);
}

function sh(cmd: string): void {
  const r = spawnSync('sh', ['-ec', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`testbed: ${cmd.split('\n')[0]}…: ${r.stderr.trim()}`);
}

/** Testbeds not yet destroyed, so a signal handler can remove them all. */
const live = new Set<Bed>();

/** Destroy every testbed of this process (for SIGINT/SIGTERM in benchmarks). */
export async function destroyAll(): Promise<void> {
  await Promise.all([...live].map((b) => b.destroy()));
}

class Bed {
  readonly prefix = `fc${randomBytes(2).toString('hex')}`;
  readonly namespaces: string[] = [];
  readonly children = new Set<ChildProcess>();
  private n = 0;

  constructor() {
    live.add(this);
  }

  ns(role: string): string {
    const name = `${this.prefix}-${role}`;
    sh(`ip netns add ${name}\nip -n ${name} link set lo up`);
    this.namespaces.push(name);
    return name;
  }

  /** A veth between two namespaces; returns the interface names (short: 15-char limit). */
  link(a: string, b: string): [string, string] {
    const i = this.n++;
    const ia = `v${i}a`;
    const ib = `v${i}b`;
    sh(`ip link add ${this.prefix}${ia} type veth peer name ${this.prefix}${ib}
ip link set ${this.prefix}${ia} netns ${a}
ip link set ${this.prefix}${ib} netns ${b}
ip -n ${a} link set ${this.prefix}${ia} name ${ia}
ip -n ${b} link set ${this.prefix}${ib} name ${ib}
ip -n ${a} link set ${ia} up
ip -n ${b} link set ${ib} up`);
    return [ia, ib];
  }

  bridge(ns: string): string {
    sh(`ip -n ${ns} link add br0 type bridge\nip -n ${ns} link set br0 up`);
    return 'br0';
  }

  exec(ns: string, cmd: string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcess {
    const c = spawn('ip', ['netns', 'exec', ns, ...cmd], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    this.children.add(c);
    c.on('exit', () => this.children.delete(c));
    return c;
  }

  run(ns: string, cmd: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const c = this.exec(ns, cmd);
      let stdout = '';
      let stderr = '';
      c.stdout!.on('data', (d) => (stdout += d));
      c.stderr!.on('data', (d) => (stderr += d));
      c.on('exit', (code) => resolve({ code, stdout, stderr }));
    });
  }

  async destroy(): Promise<void> {
    live.delete(this);
    for (const c of this.children) c.kill('SIGKILL');
    for (const ns of this.namespaces) {
      const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
      for (const p of pids) {
        try {
          process.kill(Number(p), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    await new Promise((r) => setTimeout(r, 50));
    for (const ns of this.namespaces.splice(0)) spawnSync('ip', ['netns', 'del', ns]);
  }
}

function finish(bed: Bed, server: Host, sites: Host[][], urlFor: (agent: Host) => string): Topology {
  const agents = sites.flat();
  return {
    prefix: bed.prefix,
    server,
    sites,
    agents,
    serverUrl: urlFor,
    exec: (ns, cmd, opts) => bed.exec(ns, cmd, opts),
    run: (ns, cmd) => bed.run(ns, cmd),
    async setLoss(pct, port) {
      const nft = systemTool('nft');
      const match = port === undefined ? 'meta l4proto udp' : `udp dport ${port}`;
      for (const a of agents) {
        spawnSync('ip', ['netns', 'exec', a.ns, nft, 'delete', 'table', 'inet', 'fcloss']);
        sh(`ip netns exec ${a.ns} ${nft} -f - <<'EOF'
table inet fcloss {
  chain input {
    type filter hook input priority 0;
    ${match} counter numgen random mod 10000 < ${Math.round(pct * 100)} counter drop
  }
}
EOF`);
        // Read it back: a loss injector that silently does nothing would pass every test.
        const check = spawnSync('ip', ['netns', 'exec', a.ns, nft, 'list', 'table', 'inet', 'fcloss'], { encoding: 'utf8' });
        if (check.status !== 0 || !check.stdout.includes(match)) throw new Error(`testbed: loss rule not installed in ${a.ns}: ${check.stderr}`);
      }
    },
    async txBytes(h) {
      const r = await bed.run(h.ns, ['cat', `/sys/class/net/${h.lanIf}/statistics/tx_bytes`]);
      return Number(r.stdout.trim());
    },
    destroy: () => bed.destroy(),
  };
}

/** Make `ns` route multicast out of `ifname` and accept it (rp_filter off). */
function multicastVia(ns: string, ifname: string): void {
  sh(`ip -n ${ns} route add 224.0.0.0/4 dev ${ifname}
ip netns exec ${ns} sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.${ifname}.rp_filter=0`);
}

function tbf(ns: string, ifname: string, mbit: number): void {
  // burst: at least one 1 ms worth of bytes and 32 KiB; latency bounds the queue.
  const burst = Math.max(32 * 1024, Math.ceil((mbit * 1e6) / 8 / 1000));
  sh(`ip netns exec ${ns} tc qdisc add dev ${ifname} root tbf rate ${mbit}mbit burst ${burst} latency 100ms`);
}

/** Topology (a): one LAN, a server host and n agent hosts on a bridge. */
export function lan(n: number): Topology {
  const bed = new Bed();
  try {
    const sw = bed.ns('sw');
    bed.bridge(sw);
    const host = (role: string, i: number): Host => {
      const ns = bed.ns(role);
      const [inner, outer] = bed.link(ns, sw);
      const addr = `10.200.0.${i}`;
      sh(`ip -n ${ns} addr add ${addr}/24 brd + dev ${inner}\nip -n ${sw} link set ${outer} master br0`);
      multicastVia(ns, inner);
      return { ns, address: addr, lanIf: inner, lanAddress: addr };
    };
    const server = host('srv', 1);
    const agents = Array.from({ length: n }, (_, i) => host(`a${i + 1}`, 10 + i));
    return finish(bed, server, [agents], () => `http://${server.address}:7600`);
  } catch (err) {
    void bed.destroy();
    throw err;
  }
}

/** Topology (b): s sites of a agents, each site's WAN link shaped to `wanMbit` both ways. */
export function sites(s: number, a: number, wanMbit: number, opts: { interSite?: boolean } = {}): Topology {
  const bed = new Bed();
  try {
    const srvNs = bed.ns('srv');
    // interSite: the server's namespace is also the WAN core that routes between sites
    // (wide-area groups send copies site to site over the shaped links).
    sh(`ip netns exec ${srvNs} sysctl -qw net.ipv4.ip_forward=${opts.interSite ? 1 : 0}`);
    const groups: Host[][] = [];
    for (let k = 1; k <= s; k++) {
      const r = bed.ns(`r${k}`);
      const [srvIf, rWan] = bed.link(srvNs, r);
      sh(`ip -n ${srvNs} addr add 10.200.${100 + k}.1/30 dev ${srvIf}
ip -n ${r} addr add 10.200.${100 + k}.2/30 dev ${rWan}
ip -n ${srvNs} route add 10.200.${k}.0/24 via 10.200.${100 + k}.2
ip -n ${r} route add default via 10.200.${100 + k}.1
ip netns exec ${r} sysctl -qw net.ipv4.ip_forward=1`);
      // Downloads leave the server on srvIf; uploads leave the router on rWan.
      tbf(srvNs, srvIf, wanMbit);
      tbf(r, rWan, wanMbit);
      bed.bridge(r);
      sh(`ip -n ${r} addr add 10.200.${k}.1/24 brd + dev br0`);
      const agents: Host[] = [];
      for (let i = 1; i <= a; i++) {
        const ns = bed.ns(`s${k}a${i}`);
        const [inner, outer] = bed.link(ns, r);
        const addr = `10.200.${k}.${10 + i}`;
        sh(`ip -n ${ns} addr add ${addr}/24 brd + dev ${inner}
ip -n ${r} link set ${outer} master br0
ip -n ${ns} route add default via 10.200.${k}.1`);
        multicastVia(ns, inner);
        agents.push({ ns, address: addr, lanIf: inner, lanAddress: addr });
      }
      groups.push(agents);
    }
    const server: Host = { ns: srvNs, address: '10.200.101.1', lanIf: 'lo', lanAddress: '127.0.0.1' };
    const siteOf = (h: Host) => Number(h.address.split('.')[2]);
    return finish(bed, server, groups, (h) => `http://10.200.${100 + siteOf(h)}.1:7600`);
  } catch (err) {
    void bed.destroy();
    throw err;
  }
}

/** Topology (c): one LAN; agent i also has its own link to the server shaped to uplinkMbit[i]. */
export function uplinks(uplinkMbit: number[]): Topology {
  const bed = new Bed();
  try {
    const srvNs = bed.ns('srv');
    const sw = bed.ns('sw');
    bed.bridge(sw);
    const agents: Host[] = uplinkMbit.map((mbit, idx) => {
      const i = idx + 1;
      const ns = bed.ns(`a${i}`);
      const [lanIf, swIf] = bed.link(ns, sw);
      const [wanIf, srvIf] = bed.link(ns, srvNs);
      sh(`ip -n ${ns} addr add 10.200.0.${10 + i}/24 brd + dev ${lanIf}
ip -n ${sw} link set ${swIf} master br0
ip -n ${ns} addr add 10.200.${100 + i}.2/30 dev ${wanIf}
ip -n ${srvNs} addr add 10.200.${100 + i}.1/30 dev ${srvIf}`);
      tbf(srvNs, srvIf, mbit); // download direction
      tbf(ns, wanIf, mbit);
      multicastVia(ns, lanIf);
      return { ns, address: `10.200.${100 + i}.2`, lanIf, lanAddress: `10.200.0.${10 + i}` };
    });
    const server: Host = { ns: srvNs, address: '10.200.101.1', lanIf: 'lo', lanAddress: '127.0.0.1' };
    return finish(bed, server, [agents], (h) => `http://10.200.${h.address.split('.')[2]}.1:7600`);
  } catch (err) {
    void bed.destroy();
    throw err;
  }
}
