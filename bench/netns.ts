import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { Host, lan, sites, Topology, uplinks } from '../test/netns/topology';
import { formatLinkTrace, startLinkTrace } from './link-trace';

/**
 * Namespace benchmarks (issue "Real topologies"): fleetcast against what users would
 * pick instead, in the same run, on the testbed of test/netns/topology.ts.
 *   lan      topology (a): 1 source, 4 receivers, 256 MiB, 0% and 2% loss:
 *            fleetcast vs UFTP (best of several -R) vs udpcast
 *   sites    topology (b): 2 sites x 4 agents, 100 Mbit/s WAN, 128 MiB:
 *            fleetcast vs every agent downloading over HTTP (curl) vs ideal
 *   uplinks  topology (c): uplinks of 10/20/40/80 Mbit/s, 128 MiB:
 *            fleetcast vs an equal static split vs ideal
 */
const BIN = path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');
const MIB = 1024 * 1024;
const MCAST = '239.200.0.1';
/** No external tool may hang a benchmark: each runs under timeout(1). */
const TOOL_TIMEOUT_S = '300';
/** FLEETCAST_BENCH_MIB=N scales the release sizes down for a quick look (results say so). */
const scale = (mib: number) => Number(process.env.FLEETCAST_BENCH_MIB ?? mib) * MIB;
const PORT = 7601;
/** FLEETCAST_BENCH_ONLY=fleetcast runs only fleetcast's rows, for a quick look while tuning (nothing is written to bench/results). */
export const fleetcastOnly = process.env.FLEETCAST_BENCH_ONLY === 'fleetcast';
/**
 * While tuning: FLEETCAST_BENCH_ROWS='wide;group' runs only those rows of the policies table
 * (names as in the table, `;` between them), and nothing is written to bench/results.
 */
/** FLEETCAST_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/p': extra node flags for the agents (profiling while tuning). */
const nodeArgs = (process.env.FLEETCAST_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
export const rowsOnly = process.env.FLEETCAST_BENCH_ROWS?.split(';').map((x) => x.trim());

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU seconds of a live process (utime + stime), read just before we stop it. */
async function cpuOfLive(pid: number | undefined): Promise<number> {
  if (!pid) return 0;
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK; // fields 14 and 15 of stat(5)
  } catch {
    return 0;
  }
}

interface Timed {
  child: ChildProcess;
  done: Promise<{ code: number | null; cpu: number; stdout: string; stderr: string; at: number }>;
}

/** Run a command that exits by itself; `times` reports its CPU (user + sys of children). */
function timed(topo: Topology, ns: string, cmd: string[], env?: NodeJS.ProcessEnv, logFile?: string): Timed {
  const child = topo.exec(ns, ['sh', '-c', '"$@"; s=$?; times; exit $s', 'sh', ...cmd], { env });
  let stdout = '';
  let stderr = '';
  const log = logFile ? createWriteStream(logFile) : null;
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
    log?.write(d);
  });
  child.on('close', () => log?.end());
  let exitedAt = 0;
  child.on('exit', () => (exitedAt = Date.now()));
  // 'close', not 'exit': the last stdout lines (the path, `times`) can arrive after 'exit'.
  const done = new Promise<{ code: number | null; cpu: number; stdout: string; stderr: string; at: number }>((resolve) =>
    child.on('close', (code) => {
      const at = exitedAt || Date.now();
      const lines = stdout.trim().split('\n');
      const last = lines[lines.length - 1] ?? '';
      const secs = [...last.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
      resolve({ code, cpu: secs.reduce((a, b) => a + b, 0), stdout: lines.slice(0, -2).join('\n'), stderr, at });
    }),
  );
  return { child, done };
}

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

async function lanTx(topo: Topology, hosts: Host[]): Promise<number> {
  let n = 0;
  for (const h of hosts) n += await topo.txBytes(h);
  return n;
}

async function ifTx(topo: Topology, ns: string, ifname: string): Promise<number> {
  const r = await topo.run(ns, ['cat', `/sys/class/net/${ifname}/statistics/tx_bytes`]);
  return Number(r.stdout.trim());
}

async function ifRx(topo: Topology, ns: string, ifname: string): Promise<number> {
  const r = await topo.run(ns, ['cat', `/sys/class/net/${ifname}/statistics/rx_bytes`]);
  return Number(r.stdout.trim()) || 0;
}

async function ifNames(topo: Topology, ns: string): Promise<string[]> {
  const r = await topo.run(ns, ['ls', '/sys/class/net']);
  return r.stdout.split(/\s+/).filter((x) => x && x !== 'lo');
}

export interface RunResult {
  seconds: number;
  cpu: number;
  lanBytes: number;
  serverBytes: number;
  ok: boolean;
  /** fleetcast: unit bytes the server sent (application level, from /v1/stats). */
  unitBytes?: number;
  /** Bytes on the site WAN links, both directions (the server namespace's interfaces; it also routes between sites). */
  siteLinkBytes?: number;
  /** fleetcast: units the origin sent again, by reason (/v1/stats `resent`). */
  resent?: Record<string, number>;
}

const workdirs = new Set<string>();

/** Remove the benchmarks' work directories (for signal handlers). */
export async function removeWorkdirs(): Promise<void> {
  await Promise.all([...workdirs].map((d) => fs.rm(d, { recursive: true, force: true })));
}

/** A work directory with a random release published for fleetcast. */
async function workdir(size: number) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-bench-'));
  workdirs.add(dir);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const file = path.join(dir, 'release.bin');
  const fh = await fs.open(file, 'w');
  for (let left = size; left > 0; left -= 4 * MIB) await fh.write(randomBytes(Math.min(left, 4 * MIB)));
  await fh.close();
  const m = await publishRelease(file, path.join(dir, 'store'), await loadPrivateKey(keyPath), { name: 'release.bin' });
  return { dir, file, pubPath, manifest: m, sha: m.sha256 };
}

async function startServer(topo: Topology, dir: string, extra: string[] = []): Promise<ChildProcess> {
  const srv = topo.exec(topo.server.ns, [process.execPath, BIN, 'server', '--plain-http', '--store', path.join(dir, 'store'), '--listen', '0.0.0.0:7600', '--heartbeat-ms', '250', '--log-level', 'warn', ...extra]);
  for (let i = 0; i < 200; i++) {
    const r = await topo.run(topo.server.ns, [process.execPath, '-e', 'fetch("http://127.0.0.1:7600/v1/releases").then(r=>process.exit(r.ok?0:1),()=>process.exit(1))']);
    if (r.code === 0) return srv;
    await new Promise((r2) => setTimeout(r2, 50));
  }
  throw new Error('fleetcast server did not start');
}

/** fleetcast: server + agents (groups as the topology's sites); time to the last verified agent. */
async function runFleetcast(
  topo: Topology,
  w: Awaited<ReturnType<typeof workdir>>,
  rateMbit: number,
  measure: Host[],
  serverIfs: string[],
  dist: { policy?: string; wide?: boolean; crossRateMbit?: number; linkMbit?: number; serverArgs?: string[] } = {},
): Promise<RunResult> {
  const srv = await startServer(topo, w.dir, [...(dist.policy ? ['--policy', dist.policy] : []), ...(dist.serverArgs ?? [])]);
  let rxBefore = 0;
  for (const i of serverIfs) rxBefore += await ifRx(topo, topo.server.ns, i);
  const txBefore = await lanTx(topo, measure);
  let srvBefore = 0;
  for (const i of serverIfs) srvBefore += await ifTx(topo, topo.server.ns, i);
  const runId = randomBytes(3).toString('hex');
  const trace = process.env.FLEETCAST_BENCH_TRACE && dist.linkMbit ? startLinkTrace(topo) : null;
  // FLEETCAST_BENCH_AGENT_LOGS=DIR: agents log at info, each to DIR/<member>.log (for reading a run afterwards).
  const logDir = process.env.FLEETCAST_BENCH_AGENT_LOGS;
  if (logDir) await fs.mkdir(logDir, { recursive: true });
  const started = Date.now();
  const agents = topo.sites.flatMap((hosts, k) =>
    hosts.map((h, i) =>
      timed(topo, h.ns, [
        process.execPath, ...nodeArgs, BIN, 'agent', '--server', topo.serverUrl(h), '--plain-http', '--group', `site${k + 1}`, '--interface', h.lanAddress,
        '--multicast', `${MCAST}:${PORT}`, '--status-socket', 'none', '--storage', path.join(w.dir, `fc-${runId}-${k}-${i}`), '--trust', w.pubPath,
        '--release', w.manifest.id, '--once', '--member', `s${k + 1}a${i + 1}`, '--rate', String(rateMbit), '--linger', '30',
        '--report', path.join(w.dir, `fc-${runId}-${k}-${i}.json`),
        '--timeout', TOOL_TIMEOUT_S, '--log-level', logDir ? 'info' : 'warn', ...(dist.wide ? ['--wide-group', 'fleet'] : []),
        ...(dist.crossRateMbit ? ['--cross-rate', String(dist.crossRateMbit)] : []),
      ], undefined, logDir ? path.join(logDir, `${dist.policy ?? 'group'}${dist.wide ? '-wide' : ''}-s${k + 1}a${i + 1}.log`) : undefined),
    ),
  );
  // While tracing: who is each site's gateway, every 2 s (role changes restart paths).
  let roles = '';
  let rolesDone = false;
  const rolesLoop = trace
    ? (async () => {
        let last = '';
        while (!rolesDone) {
          const r = await topo.run(topo.server.ns, [process.execPath, '-e', 'fetch("http://127.0.0.1:7600/v1/fleet").then(r=>r.text()).then(t=>process.stdout.write(t))']);
          try {
            const f = JSON.parse(r.stdout) as { groups?: { members?: { id: string; role: string; gatewayDemotions: number; overheadMsPerMiB: number | null; lastSeenMsAgo: number }[] }[] };
            const gws = (f.groups ?? []).flatMap((g) => g.members ?? []).filter((m) => m.role === 'gateway');
            const now = gws.map((m) => `${m.id}(oh ${Math.round(m.overheadMsPerMiB ?? -1)}, seen ${m.lastSeenMsAgo} ms ago, demoted ${m.gatewayDemotions})`).sort().join(' ');
            const ids = gws.map((m) => m.id).sort().join(' ');
            if (ids !== last) roles += `  ${((Date.now() - started) / 1000).toFixed(1)} s gateways: ${now}\n`;
            last = ids;
          } catch {
            /* not up yet */
          }
          await new Promise((r2) => setTimeout(r2, 2000));
        }
      })()
    : null;
  const res = await Promise.all(agents.map((a) => a.done));
  rolesDone = true;
  await rolesLoop;
  if (trace) log(formatLinkTrace(await trace.stop(), started, dist.linkMbit!) + '\n' + roles);
  const exitSeconds = (Math.max(...res.map((r) => r.at)) - started) / 1000;
  const statsRun = await topo.run(topo.server.ns, [process.execPath, '-e', 'fetch("http://127.0.0.1:7600/v1/stats").then(r=>r.text()).then(t=>process.stdout.write(t))']);
  const srvStats = JSON.parse(statsRun.stdout || '{}') as { unitBytesSent?: number; resent?: Record<string, { units: number }> };
  const unitBytes = Number(srvStats.unitBytesSent ?? 0);
  const resent = Object.fromEntries(Object.entries(srvStats.resent ?? {}).map(([k, v]) => [k, v.units]));
  const srvCpu = await cpuOfLive(srv.pid);
  srv.kill('SIGKILL');
  let srvAfter = 0;
  for (const i of serverIfs) srvAfter += await ifTx(topo, topo.server.ns, i);
  let rxAfter = 0;
  for (const i of serverIfs) rxAfter += await ifRx(topo, topo.server.ns, i);
  const lanBytes = (await lanTx(topo, measure)) - txBefore;
  let ok = res.every((r) => r.code === 0);
  for (const r of res) {
    const p = r.stdout.trim().split('\n').pop() ?? '';
    if (ok) ok = p !== '' && (await sha256(p).catch(() => '')) === w.sha;
  }
  if (!ok) process.stderr.write(`fleetcast run failed: ${res.map((r) => `exit ${r.code}, stdout ${JSON.stringify(r.stdout.slice(-200))}, stderr ${r.stderr}`).join(' | ')}\n`);
  const shares: string[] = [];
  // Seconds until the last agent held its verified file (its report says when; each
  // then lingers to serve repairs until its LAN peers are done, and exits).
  let lastComplete = 0;
  let cross = 0;
  let crossIn = 0;
  let repairs = 0;
  for (const [k, hosts] of topo.sites.entries()) {
    for (let i = 0; i < hosts.length; i++) {
      const rep = JSON.parse(await fs.readFile(path.join(w.dir, `fc-${runId}-${k}-${i}.json`), 'utf8').catch(() => '{}'));
      shares.push(`${(Number(rep.wanBytes ?? 0) / MIB).toFixed(0)}MiB/${Number(rep.seconds ?? 0).toFixed(1)}s`);
      lastComplete = Math.max(lastComplete, Number(rep.completedAtMs ?? 0));
      cross += Number(rep.crossGroupBytesSent ?? 0);
      crossIn += Number(rep.crossGroupBytes ?? 0);
      repairs += Number(rep.repairBytesSent ?? 0);
      if (trace && Array.isArray(rep.crossPaths) && rep.crossPaths.length) {
        const paths = (rep.crossPaths as { to: string; rateBytesPerSec: number; lastLoss: number; lastRttMs: number | null; congestionEvents: number }[])
          .map((p) => `${p.to} ${((p.rateBytesPerSec * 8) / 1e6).toFixed(1)} Mbit/s, loss ${(p.lastLoss * 100).toFixed(0)}%, rtt ${p.lastRttMs ?? '-'} ms, ${p.congestionEvents} congested`)
          .join('; ');
        log(`  s${k + 1}a${i + 1} cross paths at the end: ${paths}`);
      }
    }
  }
  const seconds = lastComplete > 0 ? (lastComplete - started) / 1000 : exitSeconds;
  log(`  fleetcast per agent (WAN MiB / seconds): ${shares.join(' ')}; all verified at ${seconds.toFixed(2)} s, all exited at ${exitSeconds.toFixed(2)} s`);
  if (cross) log(`  cross-group: sent ${(cross / MIB).toFixed(1)} MiB, new bytes received ${(crossIn / MIB).toFixed(1)} MiB; LAN repairs ${(repairs / MIB).toFixed(1)} MiB`);
  for (const d of await fs.readdir(w.dir)) if (d.startsWith(`fc-${runId}`)) await fs.rm(path.join(w.dir, d), { recursive: true, force: true });
  return { seconds, cpu: srvCpu + res.reduce((a, r) => a + r.cpu, 0), lanBytes, serverBytes: srvAfter - srvBefore, ok, unitBytes, siteLinkBytes: srvAfter - srvBefore + (rxAfter - rxBefore), resent };
}

/** UFTP: uftpd on each receiver, uftp on the server host at `kbps`. */
async function runUftp(topo: Topology, w: Awaited<ReturnType<typeof workdir>>, kbps: number): Promise<RunResult> {
  const runId = randomBytes(3).toString('hex');
  const hosts = topo.agents;
  const daemons = await Promise.all(
    hosts.map(async (h, i) => {
      const d = path.join(w.dir, `uftp-${runId}-${i}`);
      await fs.mkdir(d);
      // Not under timeout(1): we stop it ourselves, and SIGKILL to timeout would orphan
      // uftpd (still bound to the UFTP port for the next run) and measure the wrong CPU.
      return { d, p: topo.exec(h.ns, ['uftpd', '-d', '-I', h.lanIf, '-D', d, '-M', MCAST, '-L', path.join(w.dir, `uftpd-${runId}-${i}.log`)]) };
    }),
  );
  await new Promise((r) => setTimeout(r, 300));
  const all = [topo.server, ...hosts];
  const txBefore = await lanTx(topo, all);
  const started = Date.now();
  const s = await timed(topo, topo.server.ns, ['timeout', TOOL_TIMEOUT_S, 'uftp', '-I', topo.server.lanIf, '-M', MCAST, '-R', String(kbps), '-L', path.join(w.dir, `uftp-${runId}.log`), w.file]).done;
  const seconds = (s.at - started) / 1000;
  let cpu = s.cpu;
  for (const d of daemons) {
    cpu += await cpuOfLive(d.p.pid);
    d.p.kill('SIGKILL');
  }
  const lanBytes = (await lanTx(topo, all)) - txBefore;
  let ok = s.code === 0;
  for (const d of daemons) if (ok) ok = (await sha256(path.join(d.d, 'release.bin')).catch(() => '')) === w.sha;
  for (const d of daemons) await fs.rm(d.d, { recursive: true, force: true });
  return { seconds, cpu, lanBytes, serverBytes: 0, ok };
}

/** udpcast: udp-receiver on each receiver, udp-sender on the server host. */
async function runUdpcast(topo: Topology, w: Awaited<ReturnType<typeof workdir>>): Promise<RunResult> {
  const runId = randomBytes(3).toString('hex');
  const hosts = topo.agents;
  const outs = hosts.map((_, i) => path.join(w.dir, `udpcast-${runId}-${i}.bin`));
  const all = [topo.server, ...hosts];
  const txBefore = await lanTx(topo, all);
  const recv = hosts.map((h, i) => timed(topo, h.ns, ['timeout', TOOL_TIMEOUT_S, 'udp-receiver', '--file', outs[i], '--interface', h.lanIf, '--nokbd', '--no-progress']));
  await new Promise((r) => setTimeout(r, 300));
  const started = Date.now();
  const s = timed(topo, topo.server.ns, ['timeout', TOOL_TIMEOUT_S, 'udp-sender', '--file', w.file, '--interface', topo.server.lanIf, '--nokbd', '--no-progress', '--min-receivers', String(hosts.length), '--max-wait', '30', '--mcast-data-address', '239.200.0.9']);
  const res = await Promise.all([s.done, ...recv.map((r) => r.done)]);
  const seconds = (Math.max(...res.map((r) => r.at)) - started) / 1000;
  const lanBytes = (await lanTx(topo, all)) - txBefore;
  let ok = res.every((r) => r.code === 0);
  const why = res.map((r, i) => (r.code !== 0 ? `${i === 0 ? 'udp-sender' : `udp-receiver ${i}`} exit ${r.code}: ${r.stderr.trim().split('\n').slice(-2).join(' / ')}` : '')).filter(Boolean);
  for (const [i, o] of outs.entries()) {
    const digest = await sha256(o).catch(() => 'missing');
    if (digest !== w.sha) why.push(`receiver ${i + 1}: file ${digest === 'missing' ? 'missing' : 'differs'}`);
  }
  ok = ok && why.length === 0;
  if (why.length) log(`  udpcast failed: ${why.join('; ')}`);
  for (const o of outs) await fs.rm(o, { force: true });
  return { seconds, cpu: res.reduce((a, r) => a + r.cpu, 0), lanBytes, serverBytes: 0, ok };
}

/** Every agent downloads the whole file (or its range) over HTTP with curl from bench/static-server. */
async function runCurl(topo: Topology, w: Awaited<ReturnType<typeof workdir>>, serverIfs: string[], ranges?: [number, number][]): Promise<RunResult> {
  const http = topo.exec(topo.server.ns, [process.execPath, path.join(__dirname, 'static-server.js'), w.dir, '7700']);
  for (let i = 0; i < 100; i++) {
    const r = await topo.run(topo.server.ns, ['curl', '-sf', '-r', '0-0', '-o', '/dev/null', 'http://127.0.0.1:7700/release.bin']);
    if (r.code === 0) break;
    await new Promise((r2) => setTimeout(r2, 50));
  }
  let before = 0;
  for (const i of serverIfs) before += await ifTx(topo, topo.server.ns, i);
  const runId = randomBytes(3).toString('hex');
  const started = Date.now();
  const jobs = topo.agents.map((h, i) => {
    const url = topo.serverUrl(h).replace(':7600', ':7700') + '/release.bin';
    const out = path.join(w.dir, `curl-${runId}-${i}.bin`);
    const range = ranges ? ['-r', `${ranges[i][0]}-${ranges[i][1]}`] : [];
    return { out, t: timed(topo, h.ns, ['timeout', TOOL_TIMEOUT_S, 'curl', '-sf', ...range, '-o', out, url]) };
  });
  const res = await Promise.all(jobs.map((j) => j.t.done));
  const seconds = (Math.max(...res.map((r) => r.at)) - started) / 1000;
  const httpCpu = await cpuOfLive(http.pid);
  http.kill('SIGKILL');
  let after = 0;
  for (const i of serverIfs) after += await ifTx(topo, topo.server.ns, i);
  let ok = res.every((r) => r.code === 0);
  if (ok && !ranges) for (const j of jobs) if (ok) ok = (await sha256(j.out)) === w.sha;
  if (ok && ranges) for (const [i, j] of jobs.entries()) if (ok) ok = (await fs.stat(j.out)).size === ranges[i][1] - ranges[i][0] + 1;
  for (const j of jobs) await fs.rm(j.out, { force: true });
  return { seconds, cpu: httpCpu + res.reduce((a, r) => a + r.cpu, 0), lanBytes: 0, serverBytes: after - before, ok };
}

function summarize(rs: RunResult[]) {
  if (!rs.every((r) => r.ok)) throw new Error('a run did not deliver the verified file to every receiver');
  return {
    seconds: median(rs.map((r) => r.seconds)),
    cpu: median(rs.map((r) => r.cpu)),
    lanBytes: median(rs.map((r) => r.lanBytes)),
    serverBytes: median(rs.map((r) => r.serverBytes)),
    unitBytes: median(rs.map((r) => r.unitBytes ?? 0)),
  };
}

const log = (s: string) => process.stderr.write(s + '\n');

export async function benchLan(runs: number): Promise<string[]> {
  const size = scale(256);
  const topo = lan(4);
  const w = await workdir(size);
  const rows: string[] = [];
  try {
    for (const loss of [0, 2]) {
      if (loss) await topo.setLoss(loss);
      const fc: RunResult[] = [];
      const ud: RunResult[] = [];
      const uf: Record<number, RunResult[]> = { 300000: [], 600000: [], 1000000: [] };
      for (let i = 0; i < runs; i++) {
        fc.push(await runFleetcast(topo, w, 1000, [topo.server, ...topo.agents], []));
        log(`lan ${loss}% fleetcast run ${i + 1}: ${fc[i].seconds.toFixed(2)} s`);
        if (fleetcastOnly) continue;
        for (const k of Object.keys(uf).map(Number)) {
          uf[k].push(await runUftp(topo, w, k));
          log(`lan ${loss}% uftp -R ${k} run ${i + 1}: ${uf[k][i].seconds.toFixed(2)} s ${uf[k][i].ok ? '' : 'FAILED'}`);
        }
        ud.push(await runUdpcast(topo, w));
        log(`lan ${loss}% udpcast run ${i + 1}: ${ud[i].seconds.toFixed(2)} s ${ud[i].ok ? '' : 'FAILED'}`);
      }
      const uftpRows = fleetcastOnly ? [] : Object.entries(uf).map(([k, rs]) => ({ k, s: rs.every((r) => r.ok) ? summarize(rs) : null }));
      const best = uftpRows.filter((x) => x.s).sort((a, b) => a.s!.seconds - b.s!.seconds)[0];
      const f = summarize(fc);
      const line = (name: string, s: ReturnType<typeof summarize> | null, note = '') =>
        s
          ? `| ${loss}% | ${name} | ${s.seconds.toFixed(2)} | ${((size * 8) / s.seconds / 1e6).toFixed(0)} | ${s.cpu.toFixed(2)} | ${(s.lanBytes / MIB).toFixed(0)} | ${best ? (s.seconds / best.s!.seconds).toFixed(2) : '-'} |${note}`
          : `| ${loss}% | ${name} | failed | | | | |${note}`;
      rows.push(line('fleetcast (1 Gbit/s per agent)', f));
      for (const u of uftpRows) rows.push(line(`UFTP -R ${u.k}${best && u.k === best.k ? ' (best)' : ''}`, u.s));
      if (!fleetcastOnly) rows.push(line('udpcast', ud.every((r) => r.ok) ? summarize(ud) : null));
    }
  } finally {
    await topo.destroy();
    await fs.rm(w.dir, { recursive: true, force: true });
  }
  return [
    '## lan: one LAN, 1 source, 4 receivers, 256 MiB',
    '',
    'Topology (a): a bridge with the source host and 4 receiver hosts (veths, unshaped). fleetcast: the server on the source host, 4 agents sharing over multicast. UFTP and udpcast: multicast from the source host. Loss: nftables drops that share of all UDP arriving at each receiver (so fleetcast\'s HTTP, which is TCP, is spared, but its NACKs, announces and copies are not). Seconds: from start until every receiver holds the file: for fleetcast from spawning the agents (their start-up counts) to the last agent\'s completion time in its report (each then lingers for its peers and exits); for UFTP from starting `uftp` (its `uftpd` receivers already running) until it exits, which it does once every receiver has confirmed; for udpcast until the last process exits. Every file is checked by SHA-256 after each run. CPU: user+system seconds of all processes. LAN bytes: bytes transmitted on every host\'s LAN interface.',
    '',
    '| loss | tool | seconds | goodput per receiver (Mbit/s) | CPU s | LAN MiB | time vs best UFTP |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
  ];
}

export async function benchSites(runs: number): Promise<string[]> {
  const size = scale(128);
  const wan = 100;
  const topo = sites(2, 4, wan);
  const w = await workdir(size);
  const srvIfs = await ifNames(topo, topo.server.ns);
  const ideal = (size * 8) / (wan * 1e6);
  try {
    const fc: RunResult[] = [];
    const cu: RunResult[] = [];
    for (let i = 0; i < runs; i++) {
      fc.push(await runFleetcast(topo, w, 1000, topo.agents, srvIfs));
      log(`sites fleetcast run ${i + 1}: ${fc[i].seconds.toFixed(2)} s, server sent ${(fc[i].serverBytes / MIB).toFixed(1)} MiB`);
      cu.push(await runCurl(topo, w, srvIfs));
      log(`sites curl run ${i + 1}: ${cu[i].seconds.toFixed(2)} s`);
    }
    const f = summarize(fc);
    const c = summarize(cu);
    const perGroup = (s: ReturnType<typeof summarize>) => (s.serverBytes / 2 / size).toFixed(3);
    return [
      '## sites: 2 sites x 4 agents, site WAN 100 Mbit/s, 128 MiB',
      '',
      'Topology (b): a server namespace; per site a router namespace whose WAN link to the server is shaped with tc tbf (100 Mbit/s each way), and a LAN bridge with 4 agents. Bytes leaving the server: bytes transmitted on the server\'s WAN interfaces, TCP/IP headers included (so even one plain HTTP download of the release is about 1.02x: see curl per download). Unit bytes: what the fleetcast server sent of the release itself (application level, from its /v1/stats). Ideal: size / site WAN rate, the sites in parallel, headers not counted. Seconds for fleetcast: from spawning the agents to the last agent\'s completion time in its report; for curl: until the last download ends.',
      '',
      '| method | seconds | bytes leaving the server (MiB) | per group / release size | unit bytes per group / release size | seconds / ideal |',
      '| --- | ---: | ---: | ---: | ---: | ---: |',
      `| fleetcast | ${f.seconds.toFixed(2)} | ${(f.serverBytes / MIB).toFixed(1)} | ${perGroup(f)} | ${(f.unitBytes / 2 / size).toFixed(3)} | ${(f.seconds / ideal).toFixed(2)} |`,
      `| every agent over HTTP (curl) | ${c.seconds.toFixed(2)} | ${(c.serverBytes / MIB).toFixed(1)} | ${perGroup(c)} (${(c.serverBytes / 8 / size).toFixed(3)} per download) | | ${(c.seconds / ideal).toFixed(2)} |`,
      `| ideal | ${ideal.toFixed(2)} | ${((2 * size) / MIB).toFixed(1)} | 1.000 | 1.000 | 1.00 |`,
      '',
    ];
  } finally {
    await topo.destroy();
    await fs.rm(w.dir, { recursive: true, force: true });
  }
}

/** `bench sites`: the 2-site comparison, then the wide-area policies on 3 sites. */
export async function benchSitesAndPolicies(runs: number): Promise<string[]> {
  const a = await benchSites(runs);
  return [...a, ...(await benchPolicies(runs))];
}

/**
 * One core kept busy by an unrelated CPU-bound process in the root namespace (a shell
 * loop), for the rows that ask how the policies hold on a loaded box. Stopped by PID.
 */
async function withBusyCore<T>(fn: () => Promise<T>): Promise<T> {
  const hog = spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' });
  try {
    return await fn();
  } finally {
    hog.kill('SIGKILL');
    await new Promise((r) => (hog.exitCode !== null || hog.signalCode !== null ? r(null) : hog.once('exit', r)));
  }
}

/**
 * Policies on 3 sites x 4 agents in one wide-area group: seconds, bytes from the server,
 * its re-sends by reason, bytes on site links; then `wide` and `group` again with one core
 * kept busy. Each run goes through every row in turn, so drift hits them alike.
 */
export async function benchPolicies(runs: number): Promise<string[]> {
  const size = scale(64);
  const wan = 100;
  const topo = sites(3, 4, wan, { interSite: true });
  const w = await workdir(size);
  const srvIfs = await ifNames(topo, topo.server.ns);
  // `wide` uses copy trees (protocol 1.5) of the default degree 4, which over 3 sites is the
  // full fan-out; the two rows after it are 1.4's list of every gateway, and a chain (k = 1)
  // where every copy to the third site is passed on by the second site's gateway.
  const rowsSpec: { name: string; policy: string; busy: boolean; serverArgs?: string[] }[] = [
    { name: 'wide', policy: 'wide', busy: false },
    { name: 'wide, no copy tree (1.4)', policy: 'wide', busy: false, serverArgs: ['--copy-tree-degree', '0'] },
    { name: 'wide, copy tree k = 1 (a chain)', policy: 'wide', busy: false, serverArgs: ['--copy-tree-degree', '1'] },
    { name: 'group', policy: 'group', busy: false },
    { name: 'representative', policy: 'representative', busy: false },
    { name: 'wide, one core busy', policy: 'wide', busy: true },
    { name: 'group, one core busy', policy: 'group', busy: true },
  ].filter((r) => !rowsOnly || rowsOnly.includes(r.name));
  try {
    const results = new Map<string, RunResult[]>(rowsSpec.map((r) => [r.name, []]));
    for (let i = 0; i < runs; i++) {
      for (const spec of rowsSpec) {
        const run = () => runFleetcast(topo, w, 1000, topo.agents, srvIfs, { policy: spec.policy, wide: true, linkMbit: wan, serverArgs: spec.serverArgs });
        const r = spec.busy ? await withBusyCore(run) : await run();
        results.get(spec.name)!.push(r);
        log(`policies ${spec.name} run ${i + 1}: ${r.seconds.toFixed(2)} s, CPU ${r.cpu.toFixed(1)} s (server and agents), server sent ${((r.unitBytes ?? 0) / MIB).toFixed(1)} MiB (re-sends ${JSON.stringify(r.resent)}), site links ${((r.siteLinkBytes ?? 0) / MIB).toFixed(1)} MiB`);
      }
    }
    const secondsOf = (name: string) => median((results.get(name) ?? []).map((r) => r.seconds));
    const rows = rowsSpec.map((spec) => {
      const rs = results.get(spec.name)!;
      const okRuns = rs.filter((r) => r.ok);
      const secs = median((okRuns.length ? okRuns : rs).map((r) => r.seconds));
      const unit = median(rs.map((r) => r.unitBytes ?? 0));
      const links = median(rs.map((r) => r.siteLinkBytes ?? 0));
      const perGroup = spec.policy === 'wide' ? unit / size : unit / size / 3;
      const vsGroup = secs / secondsOf(spec.busy ? 'group, one core busy' : 'group');
      const resent = ['hedged', 'relayed', 'stalled'].map((k) => median(rs.map((r) => r.resent?.[k] ?? 0))).join(' / ');
      return `| ${spec.name} | ${secs.toFixed(2)} | ${vsGroup.toFixed(2)} | ${(unit / MIB).toFixed(1)} | ${perGroup.toFixed(3)} | ${resent} | ${(links / MIB).toFixed(1)} | ${okRuns.length}/${rs.length} |`;
    });
    return [
      '## policies: 3 sites x 4 agents in one wide-area group, site WAN 100 Mbit/s, 64 MiB',
      '',
      "Topology (b) with the server's namespace also routing between sites, so cross-site copies use the same shaped links as downloads. Agents run with the default `cross_rate` cap (100 Mbit/s); each path's pace is learned from the receiving gateway's FEEDBACK. Bytes from the server: unit bytes it sent (application level); per group: / release size for `wide` (one wide-area group), / 3 x release size for the others (one per site). Re-sends: units the origin sent again to a group that already held or leased them, by reason (medians). Site links: bytes on all site WAN links, both directions (headers included): downloads, uploads and cross-site copies. `wide`: each unit leaves the server once for the three sites and crosses to the other sites' gateways; `group`: once per site; `representative`: once per site, all to its best member. One core busy: an unrelated `sh -c 'while :; do :; done'` runs beside the testbed for the whole run; its rows compare with `group` under the same load. Each run goes through all rows in turn.",
      '',
      '| policy | seconds | / group (same load) | bytes from the server (MiB) | per group / release size | re-sends hedged / relayed / stalled | bytes on site links (MiB) | runs verified |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...rows,
      '',
    ];
  } finally {
    await topo.destroy();
    await fs.rm(w.dir, { recursive: true, force: true });
  }
}

export async function benchUplinks(runs: number): Promise<string[]> {
  const size = scale(128);
  const rates = [10, 20, 40, 80];
  const topo = uplinks(rates);
  const w = await workdir(size);
  const srvIfs = await ifNames(topo, topo.server.ns);
  const ideal = (size * 8) / (rates.reduce((a, b) => a + b, 0) * 1e6);
  const quarter = Math.ceil(size / rates.length);
  const ranges = rates.map((_, i) => [i * quarter, Math.min(size, (i + 1) * quarter) - 1] as [number, number]);
  try {
    const fc: RunResult[] = [];
    const st: RunResult[] = [];
    for (let i = 0; i < runs; i++) {
      fc.push(await runFleetcast(topo, w, 1000, topo.agents, srvIfs));
      log(`uplinks fleetcast run ${i + 1}: ${fc[i].seconds.toFixed(2)} s`);
      st.push(await runCurl(topo, w, srvIfs, ranges));
      log(`uplinks static split run ${i + 1}: ${st[i].seconds.toFixed(2)} s`);
    }
    const f = summarize(fc);
    const s = summarize(st);
    return [
      '## uplinks: 4 agents with their own uplinks of 10, 20, 40 and 80 Mbit/s, 128 MiB',
      '',
      'Topology (c): every agent has its own link to the server, shaped with tc tbf, and all share one LAN. Equal static split: each agent downloads a quarter over its own uplink with curl (time until the slowest quarter is in; the LAN exchange that would follow is not counted, which favours the split). Ideal: size / sum of uplinks. fleetcast\'s seconds: from spawning the agents to the last agent\'s completion time in its report.',
      '',
      '| method | seconds | seconds / ideal |',
      '| --- | ---: | ---: |',
      `| fleetcast | ${f.seconds.toFixed(2)} | ${(f.seconds / ideal).toFixed(2)} |`,
      `| equal static split | ${s.seconds.toFixed(2)} | ${(s.seconds / ideal).toFixed(2)} |`,
      `| ideal | ${ideal.toFixed(2)} | 1.00 |`,
      '',
    ];
  } finally {
    await topo.destroy();
    await fs.rm(w.dir, { recursive: true, force: true });
  }
}

export function versions(): string {
  const v = (cmd: string, args: string[]) => (spawnSync(cmd, args, { encoding: 'utf8' }).stdout + spawnSync(cmd, args, { encoding: 'utf8' }).stderr).split('\n')[0].trim();
  const deb = (p: string) => spawnSync('dpkg-query', ['-W', '-f=${Version}', p], { encoding: 'utf8' }).stdout.trim() || 'not installed';
  return `fleetcast ${require('../../package.json').version}, Node ${process.version}, uftp ${deb('uftp')}, udpcast ${deb('udpcast')}, curl ${deb('curl')}, ${v('tc', ['-V'])}`;
}
