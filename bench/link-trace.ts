import { spawn, spawnSync } from 'node:child_process';
import { systemTool, Topology } from '../test/netns/topology';

/**
 * FLEETCAST_BENCH_TRACE=1: while a sites/policies run goes, sample every site link's byte
 * counters each `everyMs` (the server namespace's side of each link: tx = into the site,
 * rx = out of it; an nftables forward counter per link splits what enters a site into
 * downloads from the server and copies routed from other sites). Printed after the run,
 * so one can see whether links idle at the start, in the middle or at the tail.
 */
export interface LinkSample {
  atMs: number;
  /** Per site (1-based index - 1): cumulative bytes into the site, of them forwarded from other sites, and out of it. */
  sites: { inBytes: number; crossInBytes: number; outBytes: number }[];
}

const nft = () => systemTool('nft');

/** Interfaces of the server namespace by site number (their address is 10.200.(100+k).1). */
function siteInterfaces(topo: Topology): string[] {
  const r = spawnSync('ip', ['-n', topo.server.ns, '-j', 'addr', 'show'], { encoding: 'utf8' });
  const out: string[] = [];
  for (const l of JSON.parse(r.stdout) as { ifname: string; addr_info: { local: string }[] }[]) {
    for (const a of l.addr_info) {
      const m = /^10\.200\.(\d+)\.1$/.exec(a.local);
      if (m && Number(m[1]) > 100) out[Number(m[1]) - 101] = l.ifname;
    }
  }
  return out;
}

async function read(topo: Topology, ifs: string[]): Promise<LinkSample> {
  const run = (cmd: string, args: string[]) =>
    new Promise<string>((resolve) => {
      const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
      let s = '';
      c.stdout.on('data', (d) => (s += d));
      c.on('close', () => resolve(s));
    });
  const atMs = Date.now();
  const [links, table] = await Promise.all([
    run('ip', ['-n', topo.server.ns, '-j', '-s', 'link', 'show']),
    run('ip', ['netns', 'exec', topo.server.ns, nft(), 'list', 'table', 'inet', 'fctrace']),
  ]);
  const stats = new Map<string, { rx: number; tx: number }>();
  for (const l of JSON.parse(links || '[]') as { ifname: string; stats64: { rx: { bytes: number }; tx: { bytes: number } } }[]) {
    stats.set(l.ifname, { rx: l.stats64.rx.bytes, tx: l.stats64.tx.bytes });
  }
  const fwd = new Map<string, number>();
  for (const m of table.matchAll(/oifname "([^"]+)" counter packets \d+ bytes (\d+)/g)) fwd.set(m[1], Number(m[2]));
  return {
    atMs,
    sites: ifs.map((i) => ({ inBytes: stats.get(i)?.tx ?? 0, crossInBytes: fwd.get(i) ?? 0, outBytes: stats.get(i)?.rx ?? 0 })),
  };
}

export function startLinkTrace(topo: Topology, everyMs = 250): { stop: () => Promise<LinkSample[]> } {
  const ifs = siteInterfaces(topo);
  spawnSync('ip', ['netns', 'exec', topo.server.ns, nft(), 'delete', 'table', 'inet', 'fctrace']);
  const rules = ifs.map((i) => `    oifname "${i}" counter`).join('\n');
  const r = spawnSync('ip', ['netns', 'exec', topo.server.ns, nft(), '-f', '-'], {
    input: `table inet fctrace {\n  chain through {\n    type filter hook forward priority 0;\n${rules}\n  }\n}\n`,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`link trace: nft: ${r.stderr}`);
  const samples: LinkSample[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      samples.push(await read(topo, ifs));
      await new Promise((res) => setTimeout(res, everyMs));
    }
    samples.push(await read(topo, ifs));
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      spawnSync('ip', ['netns', 'exec', topo.server.ns, nft(), 'delete', 'table', 'inet', 'fctrace']);
      return samples;
    },
  };
}

/**
 * The samples as rates (Mbit/s) per `stepMs`, from `startMs`: per site "in (of it cross) / out",
 * then the share of the time each site's inbound link ran under half its `linkMbit`.
 */
export function formatLinkTrace(samples: LinkSample[], startMs: number, linkMbit: number, stepMs = 500): string {
  if (samples.length < 2) return '  (no link samples)';
  const lines: string[] = [];
  const n = samples[0].sites.length;
  lines.push(`  t(s)  ${Array.from({ length: n }, (_, k) => `site${k + 1} in(cross)/out Mbit/s`.padEnd(30)).join('')}`);
  const mbit = (b: number, ms: number) => (b * 8) / 1000 / ms;
  let prev = samples[0];
  const idle = new Array(n).fill(0);
  let total = 0;
  for (const s of samples.slice(1)) {
    if (s.atMs - prev.atMs < stepMs && s !== samples[samples.length - 1]) continue;
    const ms = s.atMs - prev.atMs;
    const cols = s.sites.map((x, k) => {
      const p = prev.sites[k];
      const inM = mbit(x.inBytes - p.inBytes, ms);
      if (inM < linkMbit / 2) idle[k] += ms;
      return `${inM.toFixed(0).padStart(4)} (${mbit(x.crossInBytes - p.crossInBytes, ms).toFixed(0).padStart(3)}) / ${mbit(x.outBytes - p.outBytes, ms).toFixed(0).padStart(3)}`.padEnd(30);
    });
    total += ms;
    lines.push(`  ${((s.atMs - startMs) / 1000).toFixed(2).padStart(5)} ${cols.join('')}`);
    prev = s;
  }
  lines.push(`  inbound under ${linkMbit / 2} Mbit/s: ${idle.map((ms, k) => `site${k + 1} ${(ms / 1000).toFixed(1)} s`).join(', ')} of ${(total / 1000).toFixed(1)} s`);
  return lines.join('\n');
}
