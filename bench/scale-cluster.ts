import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { Postgres, postgresUnsupported, startPostgres } from '../test/helpers/postgres';
import { freePort } from '../test/helpers/ports';
import type { ScaleResult } from './scale';
import { pct } from './scale-client';

/**
 * The scale bench's `fleetcast server` processes (bench/scale.ts): one, as before, or N
 * coordinators on a shared PostgreSQL (issue 18, docs/scale-out.md), each on its own
 * loopback port with its own copy of the store (hard links: the release files are only
 * read). What they cost is read from /proc: each server's utime + stime and peak RSS, and
 * PostgreSQL's CPU (the postmaster's own and its reaped children's, plus its live
 * backends'), and from each instance's /v1/stats (requests it proxied to the owner).
 */

const BIN = path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface ScaleServer {
  port: number;
  url: string;
  /** Its Prometheus endpoint (`--metrics`), on a port of its own. */
  metricsUrl: string;
  pid: number;
  proc: ChildProcess;
}

export interface ScaleServers {
  servers: ScaleServer[];
  /** The shared engine's postmaster PID, with several instances. */
  postgresPid: number | null;
  /** Stop every server (SIGTERM, then SIGKILL after 1 s) and PostgreSQL, by PID; safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Start `instances` servers on `store` (copies of it beyond the first), each with `args`.
 * Everything started is stopped by stop(), also when this throws half-way (it stops what
 * it started before throwing).
 */
export async function startScaleServers(instances: number, store: string, args: string[], prof: string[]): Promise<ScaleServers> {
  const teardowns: (() => Promise<void> | void)[] = [];
  let stopping = false;
  // A signal (Ctrl-C, `kill`) would end the bench before its finally: stop the servers and the engine first.
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`scale: ${sig}: stopping the servers\n`);
    void stop().finally(() => process.exit(130));
  };
  const stop = async () => {
    stopping = true;
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.off(sig, onSignal);
    for (const f of teardowns.splice(0).reverse()) await f();
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, onSignal);
  try {
    let pg: Postgres | null = null;
    if (instances > 1) {
      const why = postgresUnsupported();
      if (why) throw new Error(`--instances ${instances} runs a PostgreSQL and cannot here: ${why}`);
      // startPostgres stops it in t.teardown: here that is our own list.
      const t = { teardown: (f: () => Promise<void> | void) => void teardowns.push(f) } as unknown as ExecutionContext;
      pg = await startPostgres(t);
    }
    const servers: ScaleServer[] = [];
    for (let i = 0; i < instances; i++) {
      let dir = store;
      if (i > 0) {
        dir = `${store}-${i}`;
        const cp = spawnSync('cp', ['-al', store, dir], { encoding: 'utf8' });
        if (cp.status !== 0) throw new Error(`cannot copy the store for instance ${i + 1}: ${cp.stderr}`);
      }
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const metricsPort = await freePort();
      const engine = pg ? ['--engine', pg.url, '--instance-url', url] : [];
      // FLEETCAST_SCALE_SERVER_LOG=FILE: the server prints there (with --trace-gc in FLEETCAST_SCALE_NODE_ARGS, its GCs), straight
      // to the file: through a pipe the simulator reads, a busy simulator would block the server's writes (pipes are synchronous).
      const logFile = process.env.FLEETCAST_SCALE_SERVER_LOG ? openSync(`${process.env.FLEETCAST_SCALE_SERVER_LOG}${i ? `.${i}` : ''}`, 'w') : null;
      const proc = spawn(process.execPath, [...prof, BIN, 'server', '--store', dir, '--listen', `127.0.0.1:${port}`, '--metrics', `127.0.0.1:${metricsPort}`, '--plain-http', '--log-level', 'warn', ...engine, ...args], { stdio: logFile === null ? ['ignore', 'pipe', 'pipe'] : ['ignore', logFile, logFile] });
      if (logFile !== null) {
        closeSync(logFile);
        // --trace-gc times are ms since the server started: its start, to line them up with the probe's and the simulator's.
        process.stderr.write(`scale: server ${i + 1} pid ${proc.pid}, started ${new Date().toISOString()}\n`);
      }
      const exited = new Promise<void>((resolve) => proc.on('exit', () => resolve()));
      teardowns.push(async () => {
        if (proc.exitCode !== null || proc.signalCode !== null) return;
        proc.kill('SIGTERM');
        // A profiled server writes its profile as it exits: a busy one needs more than a second to get there.
        await Promise.race([exited, sleep(prof.includes('--cpu-prof') ? 60_000 : 1000)]);
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill('SIGKILL');
          await exited;
        }
      });
      let out = '';
      proc.stdout?.on('data', (d) => (out = (out + d).slice(-20_000)));
      proc.stderr?.on('data', (d) => (out = (out + d).slice(-20_000)));
      proc.on('exit', (code, sig) => {
        if (!stopping) process.stderr.write(`scale: server ${i + 1} exited early (${code ?? sig}):\n${out}\n`);
      });
      for (let tries = 0; !(await fetch(`${url}/v1/stats`).then((r) => r.ok, () => false)); tries++) {
        if (proc.exitCode !== null || tries > 300) throw new Error(`server ${i + 1} did not start: ${out}`);
        await sleep(100);
      }
      servers.push({ port, url, metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`, pid: proc.pid!, proc });
    }
    return { servers, postgresPid: pg?.pid() ?? null, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function statFields(stat: string): string[] {
  // Fields after the ")" that ends the command name (proc(5)): [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * CPU seconds PostgreSQL has used: the postmaster's utime + stime, its reaped children's
 * (cutime + cstime: backends that ended), and its live children's (backends, the
 * checkpointer, the WAL writer...). A difference of two readings is what it spent between.
 */
export async function postgresCpuSeconds(postmaster: number, hz: number): Promise<number> {
  let ticks = 0;
  const own = statFields(await fs.readFile(`/proc/${postmaster}/stat`, 'utf8'));
  ticks += Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
  for (const e of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const s = await fs.readFile(`/proc/${e}/stat`, 'utf8').catch(() => null);
    if (!s) continue;
    const f = statFields(s);
    if (Number(f[1]) === postmaster) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / hz;
}

/** An instance's request and proxy counters (GET /v1/stats: `requests` it answered itself, `cluster.proxied` it forwarded to an owner). */
export async function instanceCounters(url: string): Promise<{ requests: number; proxied: number; owned: number; fullMaps: number; deltaMaps: number; loadFactor: number }> {
  const s = (await (await fetch(`${url}/v1/stats`)).json()) as { requests: number; cluster?: { proxied: number; owned: number }; fullMaps?: number; deltaMaps?: number; loadFactor?: number };
  return { requests: s.requests, proxied: s.cluster?.proxied ?? 0, owned: s.cluster?.owned ?? 0, fullMaps: s.fullMaps ?? 0, deltaMaps: s.deltaMaps ?? 0, loadFactor: s.loadFactor ?? 1 };
}

/** Bucket counts (not cumulative, the last above every bound) of one histogram series, as read from /metrics. */
export interface Buckets {
  bounds: number[];
  counts: number[];
}

/**
 * An instance's latency histograms from its /metrics (Prometheus text): request seconds by
 * kind (fleetcast_server_request_duration_seconds) and its event-loop delay. Two readings'
 * difference (bucketsSince) is what happened between them.
 */
export async function serverHistograms(metricsUrl: string): Promise<{ kinds: Map<string, Buckets>; loop: Buckets }> {
  const text = await (await fetch(metricsUrl)).text();
  const cum = new Map<string, [number, number][]>();
  const line = /^fleetcast_server_(request_duration|event_loop_delay)_seconds_bucket\{(?:kind="([^"]*)",)?le="([^"]+)"\} (\S+)$/;
  for (const l of text.split('\n')) {
    const m = line.exec(l);
    if (!m) continue;
    const key = m[1] === 'event_loop_delay' ? '' : m[2];
    if (!cum.has(key)) cum.set(key, []);
    cum.get(key)!.push([m[3] === '+Inf' ? Infinity : Number(m[3]), Number(m[4])]);
  }
  const toBuckets = (c: [number, number][] | undefined): Buckets => {
    const s = (c ?? []).sort((a, b) => a[0] - b[0]);
    return { bounds: s.filter(([le]) => le !== Infinity).map(([le]) => le), counts: s.map(([, v], i) => v - (i ? s[i - 1][1] : 0)) };
  };
  const kinds = new Map<string, Buckets>();
  for (const [k, c] of cum) if (k !== '') kinds.set(k, toBuckets(c));
  return { kinds, loop: toBuckets(cum.get('')) };
}

/** b1 - b0, bucket by bucket (b0 may be empty: a series that appeared in between). */
export function bucketsSince(b1: Buckets, b0: Buckets | undefined): Buckets {
  return { bounds: b1.bounds, counts: b1.counts.map((n, i) => n - (b0?.counts[i] ?? 0)) };
}

/** How many observations, every bucket together (0 for none). */
export function bucketTotal(b: Buckets | null): number {
  return b ? b.counts.reduce((x, y) => x + y, 0) : 0;
}

/** Buckets added up (same bounds). */
export function addBuckets(all: Buckets[]): Buckets | null {
  if (all.length === 0) return null;
  return { bounds: all[0].bounds, counts: all[0].counts.map((_, i) => all.reduce((s, b) => s + (b.counts[i] ?? 0), 0)) };
}

/**
 * The q-quantile of bucketed observations, interpolated linearly inside its bucket, as
 * Prometheus' histogram_quantile: NaN without observations, Infinity when it falls above
 * the last bound.
 */
export function bucketQuantile(b: Buckets | null, q: number): number {
  if (!b) return NaN;
  const total = bucketTotal(b);
  if (total === 0) return NaN;
  const rank = q * total;
  let cum = 0;
  for (let i = 0; i < b.counts.length; i++) {
    if (cum + b.counts[i] >= rank && b.counts[i] > 0) {
      if (i >= b.bounds.length) return Infinity;
      const lo = i ? b.bounds[i - 1] : 0;
      return lo + (b.bounds[i] - lo) * ((rank - cum) / b.counts[i]);
    }
    cum += b.counts[i];
  }
  return Infinity;
}


/**
 * The section of bench/results/scale.md for several coordinators: per instance and in
 * total, next to the single-instance rows of the same run. The extrapolation to the
 * full rate is the main table's (bench/scale.ts): CPU per agent-second divided by the
 * share of heartbeats the simulator sent, when below 95%; PostgreSQL's CPU is not
 * extrapolated (its work follows members and allocations more than requests).
 */
export function clusterReport(rs: ScaleResult[], command: string): string[] {
  const rows: string[] = [];
  for (const r of rs) {
    const hb = r.kinds.heartbeat;
    const reached = r.intendedHeartbeats && hb ? hb.count / r.intendedHeartbeats : 1;
    const full = (cpu: number, agents: number) => (reached < 0.95 ? ((cpu / r.window / Math.max(reached, 0.01) / Math.max(1, agents)) * 1e6).toFixed(1) : '-');
    const n = r.instances.length;
    const head = `| ${r.opts.agents.toLocaleString('en')} | ${r.opts.policy}${r.opts.policy === 'wide' ? ` (${r.opts.sitesPerWide} sites)` : ''} | ${n} |`;
    const pg = r.postgresCpu === null ? '-' : `${((r.postgresCpu / r.window) * 100).toFixed(1)}% (${((r.postgresCpu / (r.joined * r.window)) * 1e6).toFixed(1)} µs per agent-second)`;
    const line = (name: string, i: { cpu: number; systemCpu: number; joined: number; count: number; failed: number; failovers: number; latencies: number[]; proxied: number; hwmMiB: number }, last: string) =>
      `${head} ${name} | ${((i.cpu / (Math.max(1, i.joined) * r.window)) * 1e6).toFixed(1)} | ${full(i.cpu, i.joined)} | ${i.count ? ((i.cpu / i.count) * 1e6).toFixed(0) : '-'} | ${((i.cpu / r.window) * 100).toFixed(0)}% (${i.cpu > 0 ? ((i.systemCpu / i.cpu) * 100).toFixed(0) : '-'}% kernel) | ` +
      `${(i.count / r.window).toFixed(0)} | ${n > 1 ? `${i.count ? ((i.proxied / i.count) * 100).toFixed(1) : '-'}%` : '-'} | ${r.intendedHeartbeats && hb ? ((hb.count / r.intendedHeartbeats) * 100).toFixed(0) : '-'}% | ` +
      `${pct(i.latencies, 50).toFixed(1)} / ${pct(i.latencies, 99).toFixed(1)} | ${i.failed}${i.failovers ? ` (${i.failovers} moved on)` : ''} | ${i.hwmMiB.toFixed(0)} | ${last} |`;
    if (n === 1) {
      rows.push(line('one server', r.instances[0], '-'));
      continue;
    }
    r.instances.forEach((i, k) => rows.push(line(`instance ${String.fromCharCode(65 + k)} (${i.joined.toLocaleString('en')} agents list it first, owns ${i.owned.toLocaleString('en')})`, i, '-')));
    const all = Object.values(r.kinds);
    const total = {
      cpu: r.serverCpu,
      systemCpu: r.serverSystemCpu,
      joined: r.joined,
      count: r.instances.reduce((s, i) => s + i.count, 0),
      // What the agents saw: requests that failed on every instance they tried.
      failed: all.reduce((s, k) => s + k.failed, 0),
      failovers: r.instances.reduce((s, i) => s + i.failovers, 0),
      latencies: r.instances.flatMap((i) => i.latencies),
      proxied: r.instances.reduce((s, i) => s + i.proxied, 0),
      hwmMiB: r.instances.reduce((s, i) => s + i.hwmMiB, 0),
    };
    rows.push(line('**total**', total, pg));
  }
  return [
    '## Two coordinator instances (issue 18)',
    '',
    `Command: \`${command}\` (as root: it runs PostgreSQL as the postgres user). The same simulator and release as above; with`,
    '2 instances, two `fleetcast server` processes on loopback share a PostgreSQL the bench starts (`--engine`, `--instance-url`,',
    'docs/scale-out.md), each with its own copy of the store. Every agent lists both instances, in the order its allocation\'s',
    'agents share (its LAN group; under policy wide its wide-area group), alternating between allocations, so half start with A',
    'and half with B; it moves to the next on a refused connection or an `ENGINE_UNAVAILABLE` 503, as an agent does. Each row',
    'with one server was measured in the same run. Per instance: its CPU (utime + stime from /proc) per agent-second of the',
    'agents that list it first, the requests the simulator sent it (all attempts), the share of those it proxied to the other',
    'instance (its `/v1/stats` `cluster.proxied`), latency as above, failed attempts (and those after which the agent moved on),',
    'its peak RSS. Total: both instances\' CPU over all agents, requests that failed on every instance tried, the sum of the peak',
    'RSSs, and PostgreSQL\'s CPU (the postmaster\'s processes from /proc, not extrapolated).',
    '',
    '| agents | policy | instances | server | server CPU per agent-second (µs) | same at the full rate, extrapolated (µs) | server CPU per request (µs) | server CPU (of one core) | requests/s | proxied to the other instance | heartbeats sent | p50 / p99 (ms) | failed | peak RSS (MiB) | PostgreSQL CPU (of one core) |',
    '| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...rows,
    '',
    `Joins before the window opened: ${rs.map((r) => `${r.opts.agents.toLocaleString('en')} ${r.opts.policy}, ${r.instances.length} instance(s): ${r.joined.toLocaleString('en')} in ${r.joinSeconds.toFixed(0)} s`).join('; ')}.`,
    '',
  ];
}
