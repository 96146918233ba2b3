import { spawnSync } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseManifest } from '../src/release/manifest';
import { MAX_FRAGMENT_BYTES } from '../src/wire/packet';
import { clockTicks, cpuSeconds, memKiB } from './idle';
import { InstanceCount, Kind, pct } from './scale-client';
import { mergeSimReports, Sims, SIM_SEMI_SPACE_MIB, simProcesses, startSims } from './scale-sim';
import { Probe, ProbeResult, startProbe } from './scale-probe';
import { addBuckets, bucketQuantile, Buckets, bucketsSince, bucketTotal, instanceCounters, postgresCpuSeconds, ScaleServers, serverHistograms, startScaleServers } from './scale-cluster';

/**
 * `npm run bench -- scale [AGENTS[,AGENTS...]] [SECONDS]`: what coordination costs the
 * server (issue 17). A real `fleetcast server` process and N simulated agents in this
 * process. The simulated agents do what an agent does on the control plane, at the
 * protocol's rates, and nothing else: join, heartbeat every `heartbeatMs` the server
 * answers (with their bitmap and the units they are fetching), lease, "fetch" a leased
 * unit for as long as it takes at a simulated WAN rate (no unit bytes move), send its
 * receipt, learn their LAN group's units after a LAN delay, and complete. Each LAN
 * group has 10 members on its own loopback address (127.x.y.z), so the server's
 * per-client limits see one box per simulated site, as in a real fleet.
 *
 * Measured over a window once every agent has joined: the server's CPU seconds
 * (utime + stime from /proc/PID/stat; on 2 cores the simulator shares the machine, so
 * only /proc says what the server itself spent), requests per second by kind, p50/p99
 * of each kind (from the request's socket assignment to the last byte of the answer:
 * the client's own queue is not counted), answer bytes, failures, and the server's
 * peak RSS (VmHWM). The simulator may not reach the protocol's full rate; the table
 * says what fraction of the intended heartbeats it sent.
 */

const BIN = path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The window opens once every agent has joined, or this long after the first was started. */
const JOIN_DEADLINE_MS = 180_000;


export interface ScaleOptions {
  agents: number;
  perGroup: number;
  policy: 'group' | 'wide';
  /** Policy wide: LAN groups (sites) per wide-area group. */
  sitesPerWide: number;
  /** Measurement window, seconds. */
  seconds: number;
  /** Simulated WAN rate per agent, bytes per second (how long a leased unit takes). */
  wanBytesPerSec: number;
  /**
   * The origin's egress, bytes per second, shared by every fetching agent: what sets the
   * fleet's unit rate (and so the rate of leases and receipts) at scale. 10k agents at
   * 40 Mbit/s each would be 400 Gbit/s from one origin; no origin has that.
   */
  originBytesPerSec: number;
  /** Simulated LAN delay before a group's members hold a unit one of them fetched. */
  lanDelayMs: number;
  /**
   * Protocol form: '1.3' (whole map in every answer, POST /v1/lease and /v1/receipt) or
   * '1.4' (map deltas, receipts and lease requests folded into heartbeats), or '1.5'
   * (1.4 asking for copy trees: under policy wide, answers say `copyTree` instead of
   * listing every other site's gateway in `copyTo`).
   */
  form: '1.3' | '1.4' | '1.5';
  /**
   * `fleetcast server` processes (default 1). With more, they share a PostgreSQL the bench starts
   * (`--engine`, issue 18), and agents list them in their allocation's order (bench/scale-cluster.ts).
   */
  instances?: number;
  /** A test's t.teardown: the servers and PostgreSQL are stopped there too, should the test time out mid-run. */
  teardown?: (f: () => Promise<void>) => void;
  /** Server limits for large fleets (the defaults keep 16,384 members and 2,048 connections). */
  serverArgs?: string[];
  /** Simulator processes (default simProcesses(agents)). */
  simProcesses?: number;
  /** The probe beside the simulator (bench/scale-probe.ts): its members and heartbeats a second; 0 members, none. Default PROBE. */
  probe?: { members: number; perSecond: number };
}

/**
 * How much the simulator lowers its priority over the window, in niceness (FLEETCAST_SCALE_SIM_NICE overrides; 0 leaves it).
 * The simulator stands for 100,000 other machines but shares the server's 2 cores: at nice 0
 * its GC threads and its main thread take CPU the server and the probe then wait for.
 */
export const SIM_NICE = 10;

/** The probe's default: 10 members of their own heartbeating 50 times a second together, about 1,000 requests in a 20 s window. */
export const PROBE = { members: 10, perSecond: 50 };

export interface ScaleResult {
  opts: ScaleOptions;
  units: number;
  window: number;
  serverCpu: number;
  /** Of serverCpu, the kernel's (stime): on loopback, much of it is the TCP stack. */
  serverSystemCpu: number;
  serverHwmMiB: number;
  kinds: Record<string, Kind>;
  intendedHeartbeats: number;
  completed: number;
  joinSeconds: number;
  /** Agents that had joined when the window opened. */
  joined: number;
  /** Each server instance's share (one with a single server): what it answered, cost and forwarded. */
  instances: InstanceResult[];
  /** PostgreSQL's CPU seconds over the window (several instances), else null. */
  postgresCpu: number | null;
  /** The simulator's own event-loop delay over the window (ms): how late its timers and answers ran. */
  simLoopMs: { p50: number; p99: number; max: number; mean: number };
  /** What the probe, a process of its own, saw over the window (null without one). */
  probe: ProbeResult | null;
  /** The simulator's niceness over the window (0: not lowered). */
  simNice: number;
  /** The simulator processes the agents were shared among (bench/scale-sim.ts), and their semi-space size (MiB; 0: V8's default). */
  simProcesses: number;
  simSemiSpaceMiB: number;
}

/** Request kinds that are control requests (what issue 17's p99 is about): not long polls, unit bytes or the bench's reads. */
export const CONTROL_KINDS = ['join', 'heartbeat', 'lease', 'receipt', 'complete', 'leave', 'hook', 'bad_unit', 'manifest', 'channel'];

/** One instance over the window: the client's attempts there, its CPU and peak RSS (/proc), requests it proxied (/v1/stats). */
export interface InstanceResult extends InstanceCount {
  cpu: number;
  systemCpu: number;
  hwmMiB: number;
  /** Agents that list it first and had joined when the window opened. */
  joined: number;
  /** Requests it forwarded to another instance, the owner of their allocation. */
  proxied: number;
  /** Allocations it owned at the window's end. */
  owned: number;
  /** 1.4 answers with the whole map and with a delta over the window, and its load factor at the end (/v1/stats). */
  maps: { full: number; delta: number; loadFactor: number };
  /** Its own request latency over the window, by kind (its /metrics histogram's buckets), and its event-loop delay. */
  serverKinds: Map<string, Buckets>;
  serverLoop: Buckets;
}


export async function benchScale(o: ScaleOptions): Promise<ScaleResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-scale-'));
  let started: ScaleServers | null = null;
  let probe: Probe | null = null;
  let sims: Sims | null = null;
  try {
    const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
    let r = run(['keygen', '--out', path.join(dir, 'keys')]);
    if (r.status !== 0) throw new Error(`keygen: ${r.stderr}`);
    // 2 GiB, sparse: only hashing reads it; no unit byte is ever served here.
    const img = path.join(dir, 'fw.img');
    await fs.writeFile(img, '');
    await fs.truncate(img, 2 * 1024 ** 3);
    r = run(['publish', img, '--store', path.join(dir, 'store'), '--key', path.join(dir, 'keys', 'server.key'), '--policy', o.policy]);
    if (r.status !== 0) throw new Error(`publish: ${r.stderr}`);
    const release = r.stdout.trim().split('\n').pop()!.trim();
    const raw = await fs.readFile(path.join(dir, 'store', 'releases', release, 'manifest'));
    const manifest = parseManifest(raw, [createPublicKey(await fs.readFile(path.join(dir, 'keys', 'server.pub')))]);
    const units = manifest.unitCount;
    const unitSize = manifest.unitSize;
    const sha256 = manifest.sha256;

    // FLEETCAST_SCALE_PROF=DIR: the server writes a CPU profile there (node --cpu-prof) on exit.
    // FLEETCAST_SCALE_NODE_ARGS: more node flags for the server (--trace-gc, say; its output: FLEETCAST_SCALE_SERVER_LOG).
    const prof = [...(process.env.FLEETCAST_SCALE_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.FLEETCAST_SCALE_PROF] : []), ...(process.env.FLEETCAST_SCALE_NODE_ARGS ?? '').split(' ').filter(Boolean)];
    const n = o.instances ?? 1;
    started = await startScaleServers(n, path.join(dir, 'store'), ['--max-members-per-release', String(o.agents * 2), '--max-groups-per-release', String(Math.ceil(o.agents / o.perGroup) * 2), '--max-connections', String(Math.min(19_000, Math.ceil(o.agents / o.perGroup) + 1000)), ...(o.serverArgs ?? [])], prof);
    o.teardown?.(started.stop);
    const servers = started.servers;

    // Each agent's share of the origin's egress, at most its own WAN rate (2 fetch workers each).
    const rate = Math.min(o.wanBytesPerSec, o.originBytesPerSec / (o.agents * 2));
    const procs = o.simProcesses ?? simProcesses(o.agents);
    // Joins ramp over a few seconds, like a fleet's boxes waking up: 200 agents every 50 ms, all processes together.
    const sim = (sims = startSims({ ports: servers.map((x) => x.port), release, units, sha256, unitMs: (unitSize / rate) * 1000, copyMs: o.lanDelayMs + (unitSize / o.wanBytesPerSec) * 1000, fragmentsPerUnit: Math.ceil(unitSize / MAX_FRAGMENT_BYTES), lanDelayMs: o.lanDelayMs, perGroup: o.perGroup, policy: o.policy, sitesPerWide: o.sitesPerWide, form: o.form, agents: o.agents, joinDeadlineMs: JOIN_DEADLINE_MS }, procs, 200));
    const t0 = Date.now();
    // The window opens once every agent has joined (at most 3 minutes), and a few beats later.
    while (sim.joined() < o.agents && Date.now() - t0 < JOIN_DEADLINE_MS && !sim.gone()) await sleep(200);
    if (sim.gone()) throw new Error(`scale: ${sim.gone()}`);
    const joinSeconds = (Date.now() - t0) / 1000;
    const joinedAtWindow = sim.joined();
    // With several instances the probe's groups would be one instance's more to own (its tests count them): none by default.
    const pr = o.probe ?? (n === 1 ? PROBE : { members: 0, perSecond: 0 });
    // A server still swamped by joins may not let the probe in: the row then has no probe figures, the rest stands.
    if (pr.members > 0) {
      probe = await startProbe({ port: servers[0].port, release, units, members: pr.members, perSecond: pr.perSecond, wideGroup: o.policy === 'wide' ? 'wide0' : undefined }, 120_000).catch((err: Error) => {
        process.stderr.write(`scale: ${err.message}; the row has no probe figures\n`);
        return null;
      });
    }
    sim.nice(Number(process.env.FLEETCAST_SCALE_SIM_NICE ?? SIM_NICE));
    await sleep(3000);
    const joinedByAtWindow = sim.joinedBy();
    const hz = clockTicks();
    const cpuOf = async () => Promise.all(servers.map((x) => cpuSeconds(x.pid, hz)));
    const pgPid = started.postgresPid;
    // The instances' counters are asked over HTTP (slow when they are busy) just outside the window; the CPU readings
    // (/proc, fast) are taken at its edges, so the CPU and the client's counts cover the same seconds.
    const counters = () => Promise.all(servers.map((x) => instanceCounters(x.url)));
    const k0 = await counters();
    // The servers' own latency and loop delay (their /metrics histograms) are read at the window's edges, outside the CPU readings.
    const hists = () => Promise.all(servers.map((x) => serverHistograms(x.metricsUrl)));
    const h0 = await hists();
    const [c0, pg0] = await Promise.all([cpuOf(), pgPid ? postgresCpuSeconds(pgPid, hz) : 0]);
    const w0 = process.hrtime.bigint();
    sim.measure();
    probe?.measure();
    await sleep(o.seconds * 1000);
    const reporting = sim.report();
    reporting.catch(() => undefined); // awaited below, after the probe's
    const probed = probe
      ? await probe.report().catch((err: Error) => {
          process.stderr.write(`scale: ${err.message}; the row has no probe figures\n`);
          return null;
        })
      : null;
    const [c1, pg1] = await Promise.all([cpuOf(), pgPid ? postgresCpuSeconds(pgPid, hz) : 0]);
    const window = Number(process.hrtime.bigint() - w0) / 1e9;
    const h1 = await hists();
    const k1 = await counters();
    const simmed = mergeSimReports(await reporting);
    const instances: InstanceResult[] = [];
    for (let k = 0; k < n; k++) {
      instances.push({
        ...simmed.instances[k],
        cpu: c1[k].user + c1[k].system - (c0[k].user + c0[k].system),
        systemCpu: c1[k].system - c0[k].system,
        hwmMiB: (await memKiB(servers[k].pid)).hwm / 1024,
        joined: joinedByAtWindow[k],
        proxied: k1[k].proxied - k0[k].proxied,
        maps: { full: k1[k].fullMaps - k0[k].fullMaps, delta: k1[k].deltaMaps - k0[k].deltaMaps, loadFactor: k1[k].loadFactor },
        owned: k1[k].owned,
        serverKinds: new Map([...h1[k].kinds].map(([kind, b]) => [kind, bucketsSince(b, h0[k].kinds.get(kind))])),
        serverLoop: bucketsSince(h1[k].loop, h0[k].loop),
      });
    }
    const serverCpu = instances.reduce((x, i) => x + i.cpu, 0);
    const serverSystemCpu = instances.reduce((x, i) => x + i.systemCpu, 0);
    const serverHwmMiB = Math.max(...instances.map((i) => i.hwmMiB));
    await sim.stop();
    return { opts: o, units, window, serverCpu, serverSystemCpu, serverHwmMiB, kinds: simmed.kinds, intendedHeartbeats: (joinedAtWindow * window * 1000) / simmed.answeredMs, completed: simmed.completed, joinSeconds, joined: joinedAtWindow, instances, postgresCpu: pgPid ? pg1 - pg0 : null, simLoopMs: simmed.loopMs, probe: probed, simNice: simmed.nice, simProcesses: sim.processes, simSemiSpaceMiB: simmed.semiSpaceMiB };
  } finally {
    probe?.stop();
    await sims?.stop(0);
    await started?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** The probe's p50 / p99 / max (count, failures) cell. */
function probeCell(p: ProbeResult | null): string {
  if (!p) return '-';
  return `${p.p50.toFixed(1)} / ${p.p99.toFixed(1)} / ${p.max.toFixed(1)} (${p.count}${p.failed ? `, ${p.failed} failed` : ''}; its loop ${p.loopP99.toFixed(1)})`;
}

/** Milliseconds from bucketed seconds: '-' without observations, '>' the last bound above it. */
function bucketMs(b: Buckets | null, q: number): string {
  const v = bucketQuantile(b, q);
  if (Number.isNaN(v)) return '-';
  if (v === Infinity) return `>${((b?.bounds.at(-1) ?? 0) * 1000).toFixed(0)}`;
  return (v * 1000).toFixed(1);
}

/** Every instance's control requests (CONTROL_KINDS) together, from the servers' own histograms; and one kind's. */
export function serverControl(r: ScaleResult, kinds: string[] = CONTROL_KINDS): Buckets | null {
  return addBuckets(r.instances.flatMap((i) => kinds.map((k) => i.serverKinds.get(k)).filter((b): b is Buckets => b !== undefined)));
}

/**
 * Control requests the servers answered over the window, by kind (their own histograms'
 * counts), the probe's heartbeats taken out: what the simulated agents made.
 */
export function servedInWindow(r: ScaleResult): Map<string, number> {
  const out = new Map<string, number>();
  for (const k of CONTROL_KINDS) {
    const n = bucketTotal(serverControl(r, [k])) - (k === 'heartbeat' ? (r.probe?.count ?? 0) : 0);
    if (n > 0) out.set(k, n);
  }
  return out;
}

/** The server's side and the simulator's side of a row's latency: server p50/p99, server loop delay p50/p99, simulator loop delay p50/p99/max (ms). */
export function latencySides(r: ScaleResult): { server: string; serverLoop: string; simLoop: string } {
  const c = serverControl(r);
  const loop = addBuckets(r.instances.map((i) => i.serverLoop));
  const f = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
  return { server: `${bucketMs(c, 0.5)} / ${bucketMs(c, 0.99)}`, serverLoop: `${bucketMs(loop, 0.5)} / ${bucketMs(loop, 0.99)}`, simLoop: `${f(r.simLoopMs.p50)} / ${f(r.simLoopMs.p99)} / ${f(r.simLoopMs.max)}` };
}

export function scaleReport(rs: ScaleResult[], machine: string, command: string): string[] {
  const rows = rs.map((r) => {
    const all = Object.values(r.kinds);
    const failed = all.reduce((s, k) => s + k.failed, 0);
    const hb = r.kinds.heartbeat ?? { count: 0, bytes: 0, latencies: [], failed: 0 };
    const lat = all.flatMap((k) => k.latencies);
    // Requests by the server's own count (its histograms, less the probe's heartbeats): a simulator that falls behind
    // counts only what it sent and got answered inside the window, and under policy wide at 100,000 that was far fewer.
    const served = servedInWindow(r);
    const reqs = [...served.values()].reduce((x, n) => x + n, 0);
    const heartbeats = served.get('heartbeat') ?? 0;
    // Agents that had joined when the window opened: the rest were not yet active (a fleet still joining).
    const agentSeconds = r.joined * r.window;
    const reached = r.intendedHeartbeats ? heartbeats / r.intendedHeartbeats : 1;
    const cpuPerRequest = reqs ? (r.serverCpu / reqs) * 1e6 : NaN;
    // At the full rate: every request kind scaled up by the share of heartbeats the simulator missed.
    const fullRate = reached < 0.95 ? ((cpuPerRequest * reqs) / r.window / Math.max(reached, 0.01) / Math.max(1, r.joined)).toFixed(1) : '-';
    const sides = latencySides(r);
    const perKind = [...served]
      .map(([n, k]) => `${n} ${(k / r.window).toFixed(0)}/s`)
      .join(', ');
    return (
      `| ${r.opts.agents.toLocaleString('en')} | ${r.opts.form}${r.instances.length > 1 ? ` (${r.instances.length} instances: below)` : ''} | ${r.opts.policy}${r.opts.policy === 'wide' ? ` (${r.opts.sitesPerWide} sites)` : ''} | ${r.units} | ` +
      `${((r.serverCpu / agentSeconds) * 1e6).toFixed(1)} | ${fullRate} | ${cpuPerRequest.toFixed(0)} | ${((r.serverCpu / r.window) * 100).toFixed(0)}% (${r.serverCpu > 0 ? ((r.serverSystemCpu / r.serverCpu) * 100).toFixed(0) : '-'}% kernel) | ` +
      `${(reqs / r.window).toFixed(0)} (${perKind}) | ${r.intendedHeartbeats ? ((heartbeats / r.intendedHeartbeats) * 100).toFixed(0) : '-'}% | ` +
      `${hb.count ? (hb.bytes / hb.count / 1024).toFixed(1) : '-'} | ${pct(lat, 50).toFixed(1)} / ${pct(lat, 99).toFixed(1)} | ${probeCell(r.probe)} | ${sides.server} | ${sides.serverLoop} | ${sides.simLoop} (${r.simProcesses}) | ${failed} | ${r.serverHwmMiB.toFixed(0)} |`
    );
  });
  return [
    '# Control-plane scale',
    '',
    `Machine: ${machine}.`,
    `Command: \`${command}\`. A real \`fleetcast server\` process (plain HTTP on loopback) and simulated agents in Node processes of their own`,
    '(bench/scale-sim.ts; one per 25,000 agents, `FLEETCAST_SCALE_SIM_PROCS` overrides; each runs a contiguous share of the LAN groups):',
    'they join, heartbeat at the heartbeatMs the server answers, lease, hold a leased unit for as long as it takes at the simulated',
    `WAN rate (no unit bytes move; ${(rs[0].opts.wanBytesPerSec * 8 / 1e6).toFixed(0)} Mbit/s per agent, at most an equal share of an origin egress of ${(rs[0].opts.originBytesPerSec * 8 / 1e9).toFixed(0)} Gbit/s), send its receipt, learn their LAN group's units after a LAN delay, and complete. 10 agents per LAN`,
    'group, each group on its own loopback address. Release: 2 GiB in 1 MiB units. Server CPU is utime + stime from /proc over the',
    'window, so the simulator\'s own CPU (it shares the 2 cores) is not counted. Requests (requests/s, CPU per request, "heartbeats sent")',
    'are the server\'s own count over the window (its request histogram, the probe\'s heartbeats taken out). "Heartbeats sent": those',
    'heartbeats over the ones the agents meant to send at the interval the server answered last (below 100%, either the simulator set',
    'the pace, or the agents still slept the longer intervals the server\'s load factor asked for earlier, the line on whole and delta',
    'answers gives the factor; the server\'s figures are then for a lighter load). "Heartbeat answer": the average the simulator read.',
    'Latency, four ways: "seen by the simulator", from the request\'s socket assignment in the simulator to the last byte',
    'of the answer there, every request kind together (it includes the simulator\'s own event-loop delay); "server\'s own", the',
    'server\'s `fleetcast_server_request_duration_seconds` histogram over the window (from the request\'s headers parsed to its answer\'s',
    'last byte handed to the kernel; control requests: join, heartbeat, lease, receipt, complete and the like), quantiles interpolated',
    'in its fixed buckets as Prometheus\' histogram_quantile does; "server event-loop delay", its',
    '`fleetcast_server_event_loop_delay_seconds` over the window (how late its 10 ms timer ran: what a request waits in the socket',
    'before the server reads it); "simulator event-loop delay", perf_hooks.monitorEventLoopDelay in each simulator process over the',
    'window, the worst process\'s (how many processes in brackets).',
    `"Seen by the probe": ${PROBE.members} more members, each a LAN group of its own, in a Node process of their own (bench/scale-probe.ts),`,
    `heartbeating as 1.4 agents ${PROBE.perSecond} times a second together while the simulator loads the server, timed as the simulator times its`,
    'requests (in brackets: the count, and the probe\'s own event-loop delay p99): an agent is a small process, and the probe\'s latency has',
    'no 100,000-agent heap\'s pauses in it.',
    `Over the window the simulator's threads run at nice ${rs[0].simNice} (\`FLEETCAST_SCALE_SIM_NICE\`; 0: not lowered): it stands for other machines, and at`,
    'nice 0 its GC threads take CPU the server and the probe would otherwise have.',
    `The simulator processes run with ${rs[0].simSemiSpaceMiB ? `${rs[0].simSemiSpaceMiB} MiB` : 'V8\'s default'} semi-spaces (\`node --max-semi-space-size=${SIM_SEMI_SPACE_MIB}\`; the server keeps Node's default): with the default, the simulator's own GC pauses set the p99 it saw at 100,000 agents.`,
    '',
    '| agents | protocol | policy | units | server CPU per agent-second (µs) | same at the full rate, extrapolated (µs) | server CPU per request (µs) | server CPU (of one core) | requests/s | heartbeats sent | heartbeat answer (KiB) | p50 / p99 seen by the simulator (ms) | p50 / p99 / max seen by the probe (ms) | server\'s own p50 / p99 (ms) | server event-loop delay p50 / p99 (ms) | simulator event-loop delay p50 / p99 / max (ms) | failed | server peak RSS (MiB) |',
    '| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    'Where the simulator sent fewer than 95% of the heartbeats its agents meant to, "at the full rate" extrapolates: the server CPU',
    'per request measured here times the requests per agent-second the agents meant to send (the measured rate divided by the share',
    'of heartbeats sent). The p50/p99 of such a row include the simulator\'s own event-loop delay (it was saturated), not only the server\'s.',
    'Agent-seconds and intended heartbeats count the agents that had joined when the window opened (the line below).',
    `Heartbeat answers that carried copy destinations (\`copyTo\`, 1.5 also \`copyTree\`), of all heartbeat answers, and those fields' average bytes: ${rs
      .filter((r) => r.opts.policy === 'wide')
      .map((r) => {
        const hb = r.kinds.heartbeat;
        return `${r.opts.agents.toLocaleString('en')} ${r.opts.form} wide: ${hb?.copyAnswers ?? 0} of ${hb?.count ?? 0}, ${hb?.copyAnswers ? ((hb.copyBytes ?? 0) / hb.copyAnswers).toFixed(0) : '-'} B`;
      })
      .join('; ') || 'no wide rows'}.`,
    `Server's own p50 / p99 by request kind (ms, count in the window): ${rs
      .map((r) => `${r.opts.agents.toLocaleString('en')} ${r.opts.form} ${r.opts.policy}: ${[...new Set(r.instances.flatMap((i) => [...i.serverKinds.keys()]))].map((k) => {
        const b = serverControl(r, [k]);
        return `${k} ${bucketMs(b, 0.5)} / ${bucketMs(b, 0.99)} (${bucketTotal(b)})`;
      }).join(', ')}`)
      .join('; ')}.`,
    `1.4 answers with the whole map and with a delta in the window, and the load factor at its end (the servers' /v1/stats): ${rs
      .map((r) => `${r.opts.agents.toLocaleString('en')} ${r.opts.form} ${r.opts.policy}: ${r.instances.map((i) => `${i.maps.full} whole, ${i.maps.delta} delta, ${i.maps.loadFactor.toFixed(2)}x`).join(' / ')}`)
      .join('; ')}.`,
    `Joins before the window opened (joined of agents, in how long): ${rs.map((r) => `${r.opts.agents.toLocaleString('en')} ${r.opts.form} ${r.opts.policy}: ${r.joined.toLocaleString('en')} in ${r.joinSeconds.toFixed(0)} s`).join('; ')}.`,
    '',
    'Goal (issue 17): at most 20 µs of server CPU per active agent-second, p99 at most 250 ms, no failure, server RSS at most 2 GiB, at',
    '100,000 agents.',
    '',
    `Generated ${new Date().toISOString()}.`,
    '',
  ];
}
