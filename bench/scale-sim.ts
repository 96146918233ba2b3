import { ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, readdirSync } from 'node:fs';
import * as os from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { Client, InstanceCount, joinWithBackoff, Kind, late, Route } from './scale-client';

/**
 * The scale bench's simulated agents (bench/scale.ts, issue 17), in processes of their
 * own: each simulator process runs a contiguous share of the LAN groups (sites), so a
 * group's shared state stays in one process. One process of 100,000 agents held ~500 MB
 * of heap; its full GCs stopped it for 550-870 ms, after which it sent the heartbeats of
 * those 0.75 s at once, and the server's queue behind that burst set the p99 an agent saw
 * (bench/results/scale.md). Several smaller processes pause for less, burst less, and use
 * both cores when the server leaves room.
 *
 * A process is started with its SimArgs as JSON (startSims). It writes `{"joined":N,...}`
 * lines to its file descriptor 3 (stdout stays free for node's own output, --trace-gc's) as its agents join; on stdin, `nice N` lowers its threads by N, `measure` opens
 * the window, `report` closes it (and restores the niceness where allowed) and writes its
 * counts as one JSON line, `stop` ends its agents and the process.
 */

export interface SimArgs {
  ports: number[];
  release: string;
  units: number;
  sha256: string;
  /** ms a leased unit takes to "fetch" at the simulated WAN rate. */
  unitMs: number;
  /**
   * Policy wide: ms from a site holding a unit it fetched to every other site of its wide-area group holding it (its
   * gateway's copy over the WAN and the receiving gateway's re-multicast), and the fragments each gateway then reports
   * as `forwarded`.
   */
  copyMs: number;
  fragmentsPerUnit: number;
  lanDelayMs: number;
  perGroup: number;
  policy: 'group' | 'wide';
  sitesPerWide: number;
  form: '1.3' | '1.4' | '1.5';
  /** This process's sites, [from, to) of the fleet's, and the fleet's agents (the last site may hold fewer). */
  siteFrom: number;
  siteTo: number;
  agents: number;
  /** Agents this process starts before each 50 ms pause (the fleet's boxes waking up over a few seconds). */
  startBatch: number;
  /** Stop starting agents this long after the process started. */
  joinDeadlineMs: number;
}

/** What a simulator process counted over the window. */
export interface SimReport {
  kinds: Record<string, Kind>;
  instances: InstanceCount[];
  completed: number;
  /** The interval the server answered last: what the agents meant to keep. */
  answeredMs: number;
  /** Its event-loop delay over the window (ms late past a 10 ms timer). */
  loopMs: { p50: number; p99: number; max: number; mean: number };
  /** The niceness its threads ran the window at (0: not lowered). */
  nice: number;
  /** The semi-space size V8 was started with here, MiB (0: its default). */
  semiSpaceMiB: number;
}

/** Set every thread of this process (Linux: /proc/self/task) to niceness `n`; false where that is refused. */
export function niceThreads(n: number): boolean {
  try {
    for (const tid of readdirSync('/proc/self/task')) os.setPriority(Number(tid), n);
    return true;
  } catch {
    return false;
  }
}

/**
 * The simulator's young generation, MiB a semi-space. With V8's default (16) the simulator of
 * 100,000 agents (about 500 MB of live heap) promoted much of each request's garbage: a full GC
 * every 4-6 s with 150-240 ms pauses, and scavenges 8% of the window; its own loop ran up to
 * 0.8-1.1 s late and that set the p99 it saw (bench/results/scale.md, "The simulator's pauses").
 * V8 reads it at start: the simulator processes are started with it.
 */
export const SIM_SEMI_SPACE_MIB = 64;

/** The --max-semi-space-size in node arguments, MiB (0: none). */
function semiSpace(execArgv: string[]): number {
  const a = execArgv.find((x) => x.startsWith('--max-semi-space-size='));
  return a ? Number(a.split('=')[1]) : 0;
}

/** A LAN group's shared state: which units its members hold (a unit fetched by one reaches the rest after the LAN delay). */
class Site {
  readonly held: Uint8Array;
  heldCount = 0;
  /** Policy wide: the sites of its wide-area group (itself included). */
  wideSites: Site[] = [];
  /** The member the server last named this site's gateway (from the member's own record in an answer), and what each member re-multicast. */
  gateway: string | null = null;
  readonly forwarded = new Map<string, number>();
  /** The server instances its agents try, in order (indexes into the servers started): the same for every agent of the site. */
  order: number[] = [0];
  constructor(readonly name: string, readonly address: string, readonly wide: string | undefined, units: number) {
    this.held = new Uint8Array(Math.ceil(units / 8));
  }
  /** Whether it was new. */
  hold(u: number): boolean {
    if (this.held[u >> 3] & (0x80 >> (u & 7))) return false;
    this.held[u >> 3] |= 0x80 >> (u & 7);
    this.heldCount++;
    return true;
  }
  /** Its gateway re-multicast (or sent on) `fragments`. */
  forward(fragments: number): void {
    if (this.gateway !== null) this.forwarded.set(this.gateway, (this.forwarded.get(this.gateway) ?? 0) + fragments);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Site s's loopback address, 127.x.y.z: one box per simulated site, as the server's per-client limits see a fleet. */
export function siteAddress(s: number): string {
  return `127.${1 + ((s >> 16) & 0xff)}.${(s >> 8) & 0xff}.${1 + (s & 0xff) === 256 ? 255 : 1 + (s & 0xff)}`;
}

/** Run one simulator process's agents until `stop`; `out` takes its JSON lines. */
async function simulate(o: SimArgs, out: (line: unknown) => void): Promise<void> {
  const n = o.ports.length;
  const { release, units, sha256, unitMs } = o;
  const c = new Client(o.ports);
  const sites = new Map<number, Site>();
  for (let s = o.siteFrom; s < o.siteTo; s++) {
    const site = new Site(`site${s}`, siteAddress(s), o.policy === 'wide' ? `wide${Math.floor(s / o.sitesPerWide)}` : undefined, units);
    // Every agent of an allocation (a LAN group; under policy wide, its wide-area group) lists the instances in the
    // same order, alternating between allocations, so it mostly reaches its allocation's owner first (docs/scale-out.md).
    const home = (o.policy === 'wide' ? Math.floor(s / o.sitesPerWide) : s) % n;
    site.order = o.ports.map((_, k) => (home + k) % n);
    sites.set(s, site);
  }
  // A wide-area group's sites are all in this process (startSims cuts at wide-area group boundaries).
  if (o.policy === 'wide')
    for (const [s, site] of sites) {
      const w = Math.floor(s / o.sitesPerWide);
      for (let t = w * o.sitesPerWide; t < (w + 1) * o.sitesPerWide; t++) {
        const other = sites.get(t);
        if (other) site.wideSites.push(other);
      }
    }

  /**
   * A unit a member fetched reaches its LAN group after the LAN delay; under policy wide its gateway then sends it on,
   * and every other site of the wide-area group holds it after the copy delay, its gateway re-multicasting it there.
   * Without this a simulated wide-area group's gateways forward nothing while their groups lack units other groups
   * hold, and the server rightly demotes them every gatewayIdleMs: answers fill with gateway changes no real fleet has.
   */
  const landed = (site: Site, u: number) =>
    setTimeout(() => {
      if (!site.hold(u) || site.wideSites.length < 2) return;
      site.forward(o.fragmentsPerUnit);
      setTimeout(() => {
        for (const other of site.wideSites) if (other !== site && other.hold(u)) other.forward(o.fragmentsPerUnit);
      }, o.copyMs);
    }, o.lanDelayMs);
  /** Joined agents per first-listed instance. */
  const joinedBy = o.ports.map(() => 0);
  let completed = 0;
  let joined = 0;
  let answeredMs = 1000;
  let stop = false;

  /** What every simulated heartbeat says, 1.3 or 1.4: who, where, what its LAN group holds, what it fetches. */
  const beatBody = (site: Site, ref: Record<string, string>, extra: { wideGroup?: string; copyTree?: boolean }, fetching: Set<number>, i: number) => ({
    ...ref,
    ...extra,
    have: Buffer.from(site.held).toString('base64'),
    address: site.address,
    fetching: [...fetching],
    dataPort: 40000 + (i % o.perGroup),
    ...(site.wideSites.length > 1 ? { forwarded: site.forwarded.get(ref.member) ?? 0 } : {}),
  });

  /** An agent's end: its fetch workers done, it waits until its LAN group holds every unit, says complete, and stops beating. */
  const finish = async (site: Site, ref: { release: string; group: string; member: string }, route: Route, workers: Promise<void>[], beat: Promise<void>) => {
    await Promise.all(workers);
    while (!stop && site.heldCount < units) await sleep(500);
    if (!stop) {
      await c.post(site.address, 'complete', '/v1/complete', { ...ref, sha256 }, route).catch(() => undefined);
      completed++;
    }
    await beat;
  };

  const joinedOne = (site: Site) => {
    joined++;
    joinedBy[site.order[0]]++;
  };

  /** A 1.3 agent: the whole map in every heartbeat answer, POST /v1/lease and /v1/receipt. */
  const agent = async (i: number) => {
    const site = sites.get(Math.floor(i / o.perGroup))!;
    const route: Route = { order: site.order, at: 0 };
    const ref = { release, group: site.name, member: `m${i}` };
    const extra = site.wide ? { wideGroup: site.wide } : {};
    const fetching = new Set<number>();
    let heartbeatMs = 1000;
    const hb = (join: boolean) => c.post<{ heartbeatMs: number }>(site.address, join ? 'join' : 'heartbeat', join ? '/v1/join' : '/v1/heartbeat', beatBody(site, ref, extra, fetching, i), route);
    heartbeatMs = (await joinWithBackoff(() => hb(true), () => stop)).heartbeatMs;
    joinedOne(site);
    const beat = (async () => {
      // Spread the first beats over one interval, as agents started at different times would be.
      await sleep(Math.random() * heartbeatMs);
      while (!stop) {
        try {
          heartbeatMs = (await hb(false)).heartbeatMs || heartbeatMs;
          answeredMs = heartbeatMs;
        } catch {
          /* counted */
        }
        await sleep(heartbeatMs);
      }
    })();
    const worker = async () => {
      while (!stop && site.heldCount < units) {
        let g: { units: number[]; retryAfterMs: number; exhausted: boolean };
        try {
          g = await c.post(site.address, 'lease', '/v1/lease', ref, route); // a member reference, as an agent sends (wideGroup goes on heartbeats only)
        } catch {
          await sleep(1000);
          continue;
        }
        if (g.units.length === 0) {
          if (g.exhausted) break;
          await sleep(Math.max(100, g.retryAfterMs));
          continue;
        }
        for (const u of g.units) {
          if (stop) return;
          fetching.add(u);
          await sleep(unitMs);
          fetching.delete(u);
          await c.post(site.address, 'receipt', '/v1/receipt', { ...ref, unit: u }, route).catch(() => undefined);
          landed(site, u);
        }
      }
    };
    await finish(site, ref, route, [worker(), worker()], beat);
  };

  /**
   * A 1.4 agent: one heartbeat per interval carrying its receipts and, when its queue
   * runs dry, a request for more units (sent at once then: a "kick"); the answers are
   * map deltas since the version it last saw.
   */
  const agent14 = async (i: number) => {
    const site = sites.get(Math.floor(i / o.perGroup))!;
    const route: Route = { order: site.order, at: 0 };
    const ref = { release, group: site.name, member: `m${i}` };
    const extra = site.wide ? { wideGroup: site.wide, ...(o.form === '1.5' ? { copyTree: true } : {}) } : {};
    const fetching = new Set<number>();
    const queue: number[] = [];
    const receipts: { u: number; at: number }[] = [];
    let epoch: number | undefined;
    let version: number | undefined;
    let heartbeatMs = 1000;
    let exhausted = false;
    let retryAt = 0;
    let wakeBeat: (() => void) | null = null;
    const wakers: (() => void)[] = [];
    let asking = false;
    const hb = async (join: boolean) => {
      const want = !exhausted && Date.now() >= retryAt && queue.length + fetching.size < 2 ? 4 : 0;
      const rs = receipts.splice(0);
      const now = Date.now();
      asking = want > 0;
      type A = { heartbeatMs: number; mapEpoch: number; mapVersion: number; members?: { id: string; role: string }[]; lease?: { units: number[]; retryAfterMs: number; exhausted: boolean } };
      let a: A;
      try {
        a = await c.post<A>(site.address, join ? 'join' : 'heartbeat', join ? '/v1/join' : '/v1/heartbeat', {
          ...beatBody(site, ref, extra, fetching, i),
          ...(epoch !== undefined ? { mapEpoch: epoch, mapVersion: version } : { mapVersion: 0 }),
          ...(rs.length ? { receipts: rs.map((r) => r.u), receiptAgesMs: rs.map((r) => now - r.at) } : {}),
          ...(want ? { lease: want } : {}),
        }, route);
      } catch (err) {
        receipts.unshift(...rs); // sent again with the next beat
        throw err;
      } finally {
        asking = false;
      }
      epoch = a.mapEpoch;
      version = a.mapVersion;
      // Its own record says whether it is its site's gateway now (what an agent learns from the map).
      const own = a.members?.find((m) => m.id === ref.member);
      if (own) {
        if (own.role === 'gateway') site.gateway = ref.member;
        else if (site.gateway === ref.member) site.gateway = null;
      }
      heartbeatMs = a.heartbeatMs || heartbeatMs;
      answeredMs = heartbeatMs;
      if (a.lease) {
        queue.push(...a.lease.units);
        exhausted = a.lease.exhausted;
        retryAt = a.lease.units.length ? 0 : Date.now() + Math.max(100, a.lease.retryAfterMs);
      }
      for (const w of wakers.splice(0)) w();
    };
    await joinWithBackoff(() => hb(true), () => stop);
    joinedOne(site);
    const beat = (async () => {
      await sleep(Math.random() * heartbeatMs);
      while (!stop) {
        await hb(false).catch(() => undefined);
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, heartbeatMs);
          function done() {
            clearTimeout(t);
            wakeBeat = null;
            resolve();
          }
          wakeBeat = done;
        });
      }
    })();
    const worker = async () => {
      while (!stop && site.heldCount < units) {
        const u = queue.shift();
        if (u === undefined) {
          if (exhausted) break;
          // Out of units: beat now with a lease request (unless one is on its way).
          if (!asking && Date.now() >= retryAt) wakeBeat?.();
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, Math.max(100, retryAt - Date.now()));
            wakers.push(() => {
              clearTimeout(t);
              resolve();
            });
          });
          continue;
        }
        if (site.held[u >> 3] & (0x80 >> (u & 7))) continue;
        fetching.add(u);
        await sleep(unitMs);
        fetching.delete(u);
        receipts.push({ u, at: Date.now() });
        landed(site, u);
      }
    };
    await finish(site, ref, route, [worker(), worker()], beat);
  };

  // Joins are told to the parent at most every 200 ms, and once more when they stop changing.
  let told = -1;
  const tell = () => {
    if (joined === told) return;
    told = joined;
    out({ joined, joinedBy });
  };
  const telling = setInterval(tell, 200);

  const t0 = Date.now();
  const all: Promise<void>[] = [];
  const first = o.siteFrom * o.perGroup;
  const last = Math.min(o.agents, o.siteTo * o.perGroup);
  // Agents not started within the join deadline are left out (a saturated simulator starts them slowly): the rows count those that joined.
  for (let i = first; i < last && Date.now() - t0 < o.joinDeadlineMs; i++) {
    all.push((o.form === '1.3' ? agent : agent14)(i).catch((err) => void process.stderr.write(`scale: agent ${i}: ${(err as Error).message}\n`)));
    if ((i - first) % o.startBatch === o.startBatch - 1) await sleep(50);
  }

  const loop = monitorEventLoopDelay({ resolution: 10 });
  const baseNice = os.getPriority();
  let nice = 0;
  for await (const line of createInterface({ input: process.stdin })) {
    const [cmd, arg] = line.split(' ');
    if (cmd === 'nice') {
      const want = Number(arg ?? 0);
      nice = want > 0 && niceThreads(Math.min(19, baseNice + want)) ? want : 0;
    } else if (cmd === 'measure') {
      loop.enable();
      c.measuring = true;
    } else if (cmd === 'report') {
      c.measuring = false;
      loop.disable();
      if (nice) niceThreads(baseNice); // as root; elsewhere the rest runs niced
      // Latencies to 0.01 ms: 100,000 agents' heartbeats over a window are millions of them on one line.
      for (const k of Object.values(c.kinds)) k.latencies = k.latencies.map((x) => Math.round(x * 100) / 100);
      for (const k of c.instances) k.latencies = k.latencies.map((x) => Math.round(x * 100) / 100);
      const r: SimReport = { kinds: c.kinds, instances: c.instances, completed, answeredMs, loopMs: { p50: late(loop.percentile(50)), p99: late(loop.percentile(99)), max: late(loop.max), mean: late(loop.mean) }, nice, semiSpaceMiB: semiSpace(process.execArgv) };
      out(r);
    } else if (cmd === 'stop') {
      break;
    }
  }
  stop = true;
  clearInterval(telling);
  await Promise.race([Promise.all(all), sleep(15_000)]);
  c.close();
}

/**
 * Simulator processes for `agents` by default (FLEETCAST_SCALE_SIM_PROCS overrides): one per 25,000 agents, so 100,000
 * are 4 of ~125 MB of heap each; 10,000 and fewer stay one process, as the rows measured before 2026-12-04 were.
 */
export function simProcesses(agents: number): number {
  const env = Number(process.env.FLEETCAST_SCALE_SIM_PROCS);
  return Number.isInteger(env) && env > 0 ? env : Math.max(1, Math.ceil(agents / 25_000));
}

/** The processes' reports as one: counts added, latencies together, the worst process's loop delay. */
export function mergeSimReports(rs: SimReport[]): SimReport {
  const kinds: Record<string, Kind> = {};
  for (const r of rs)
    for (const [name, k] of Object.entries(r.kinds)) {
      const m = (kinds[name] ??= { count: 0, failed: 0, bytes: 0, latencies: [] });
      m.count += k.count;
      m.failed += k.failed;
      m.bytes += k.bytes;
      for (const x of k.latencies) m.latencies.push(x);
      if (k.copyAnswers !== undefined) {
        m.copyAnswers = (m.copyAnswers ?? 0) + k.copyAnswers;
        m.copyBytes = (m.copyBytes ?? 0) + (k.copyBytes ?? 0);
      }
    }
  const instances = rs[0].instances.map((_, i) => {
    const m: InstanceCount = { count: 0, failed: 0, latencies: [], failovers: 0 };
    for (const r of rs) {
      const x = r.instances[i];
      m.count += x.count;
      m.failed += x.failed;
      m.failovers += x.failovers;
      for (const l of x.latencies) m.latencies.push(l);
    }
    return m;
  });
  const worst = (f: (r: SimReport) => number) => Math.max(...rs.map(f));
  return {
    kinds,
    instances,
    completed: rs.reduce((s, r) => s + r.completed, 0),
    answeredMs: rs[0].answeredMs,
    loopMs: { p50: worst((r) => r.loopMs.p50), p99: worst((r) => r.loopMs.p99), max: worst((r) => r.loopMs.max), mean: rs.reduce((s, r) => s + r.loopMs.mean, 0) / rs.length },
    nice: Math.min(...rs.map((r) => r.nice)),
    semiSpaceMiB: Math.min(...rs.map((r) => r.semiSpaceMiB)),
  };
}

/** Simulator processes started by startSims: their joins so far, and the window's commands to all of them. */
export interface Sims {
  /** How many processes share the fleet's sites. */
  readonly processes: number;
  /** Agents joined, all processes together, and per first-listed instance. */
  joined(): number;
  joinedBy(): number[];
  /** Lower every process's threads by `n` in niceness (0: not). */
  nice(n: number): void;
  /** Open the window in every process. */
  measure(): void;
  /** Why a process ended before its report (null while all run). */
  gone(): string | null;
  /** Close the window: every process's counts. */
  report(): Promise<SimReport[]>;
  /** End every process: asked to stop, then killed (by PID) if still up after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Start `procs` simulator processes, each a contiguous share of the fleet's sites (SimArgs
 * without the site range and start batch). A process that exits before it reported fails
 * the run (report() rejects with its exit).
 */
export function startSims(a: Omit<SimArgs, 'siteFrom' | 'siteTo' | 'startBatch'>, procs: number, startBatch: number): Sims {
  const nSites = Math.ceil(a.agents / a.perGroup);
  // Cut at allocation boundaries: a wide-area group's sites copy units to each other, so they share a process.
  const block = a.policy === 'wide' ? a.sitesPerWide : 1;
  const blocks = Math.ceil(nSites / block);
  const k = Math.max(1, Math.min(procs, blocks));
  // FLEETCAST_SCALE_SIM_NODE_ARGS: more node flags for the simulator processes (--trace-gc, say: their stderr is the bench's).
  const simNodeArgs = (process.env.FLEETCAST_SCALE_SIM_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const children: { p: ChildProcess; joined: number; joinedBy: number[]; report: SimReport | null; lines: AsyncIterator<string>; exited: Promise<void> }[] = [];
  for (let j = 0; j < k; j++) {
    const args: SimArgs = { ...a, siteFrom: Math.min(nSites, Math.floor((blocks * j) / k) * block), siteTo: Math.min(nSites, Math.floor((blocks * (j + 1)) / k) * block), startBatch: Math.max(1, Math.ceil(startBatch / k)) };
    const p = spawn(process.execPath, [`--max-semi-space-size=${SIM_SEMI_SPACE_MIB}`, ...simNodeArgs, __filename, JSON.stringify(args)], { stdio: ['pipe', 'inherit', 'inherit', 'pipe'] });
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    const ch = { p, joined: 0, joinedBy: a.ports.map(() => 0), report: null as SimReport | null, lines: createInterface({ input: p.stdio[3] as Readable })[Symbol.asyncIterator](), exited };
    children.push(ch);
    p.stdin!.on('error', () => undefined); // a process gone is reported by report()
  }
  // Join counts arrive until the window opens; the report is the line after `report`.
  const reading = children.map(async (ch) => {
    // Its end without a report is reported by report(): nothing here may reject unheard.
    for (;;) {
      const r = await ch.lines.next().catch(() => ({ done: true as const, value: undefined }));
      if (r.done) return;
      let m: { joined?: number; joinedBy?: number[] } & Partial<SimReport>;
      try {
        m = JSON.parse(r.value) as typeof m;
      } catch {
        process.stderr.write(`scale: simulator process ${ch.p.pid} wrote a line that is not JSON, ignored: ${r.value.slice(0, 100)}\n`);
        continue;
      }
      if (m.kinds) {
        ch.report = m as SimReport;
        return;
      }
      ch.joined = m.joined ?? ch.joined;
      ch.joinedBy = m.joinedBy ?? ch.joinedBy;
    }
  });
  const ended = (j: number) => `simulator process ${j + 1} of ${k} (pid ${children[j].p.pid}) ended before its report (exit ${children[j].p.exitCode ?? children[j].p.signalCode})`;
  const send = (line: string) => {
    for (const ch of children) if (ch.p.exitCode === null) ch.p.stdin!.write(line + '\n');
  };
  return {
    processes: k,
    joined: () => children.reduce((s, ch) => s + ch.joined, 0),
    joinedBy: () => a.ports.map((_, i) => children.reduce((s, ch) => s + ch.joinedBy[i], 0)),
    nice: (n) => send(`nice ${n}`),
    measure: () => send('measure'),
    gone: () => {
      const j = children.findIndex((ch) => !ch.report && (ch.p.exitCode !== null || ch.p.signalCode !== null));
      return j < 0 ? null : ended(j);
    },
    report: async () => {
      send('report');
      await Promise.all(reading);
      return children.map((ch, j) => {
        if (!ch.report) throw new Error(ended(j));
        return ch.report;
      });
    },
    stop: async (graceMs = 20_000) => {
      send('stop');
      let t: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(children.map((ch) => ch.exited)), new Promise((r) => (t = setTimeout(r, graceMs)))]);
      clearTimeout(t);
      for (const ch of children) if (ch.p.exitCode === null && ch.p.signalCode === null) ch.p.kill('SIGKILL');
      await Promise.all(children.map((ch) => ch.exited));
    },
  };
}

if (require.main === module) {
  // With extra node flags (--trace-gc: times since this process started), when it started, to line its output up with others'.
  if (process.execArgv.length > 1) process.stderr.write(`scale simulator: pid ${process.pid}, started ${new Date(performance.timeOrigin).toISOString()}\n`);
  const out = createWriteStream('', { fd: 3 });
  out.on('error', () => process.exit(1)); // the bench is gone
  simulate(JSON.parse(process.argv[2]) as SimArgs, (line) => out.write(JSON.stringify(line) + '\n'))
    .then(() => out.end(() => process.exit(0))) // its agents are told to stop; a late timer of theirs need not hold the process
    .catch((err: Error) => {
      process.stderr.write(`scale simulator: ${err.message}\n`);
      process.exit(1);
    });
}
