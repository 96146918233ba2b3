import type { RepairEvent, UnitStages } from '../src/agent/stream-stages';
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { StreamPublisher } from '../src/release/stream-publish';
import { FleetcastServer } from '../src/server/server';
import { streamRoutes } from '../src/server/stream-routes';

/*
 * `npm run bench -- stream`: a stream published at a fixed rate on loopback (the publisher
 * and the server in this process), taken by N `fleetcast agent --stream` processes of one
 * LAN group with file sinks, at a given LAN loss. Reports each agent's publish-to-delivery
 * latency (p50, p99: the unit's batch signing time to its write to the sink, from the
 * agent's end line) and the server's unit bytes for the group over the stream's bytes.
 */

const BIN = path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');

export interface StreamBenchOptions {
  agents: number;
  mbit: number;
  seconds: number;
  lossPct: number;
  unitBytes: number;
  flushMs: number;
}

export interface StreamBenchResult extends StreamBenchOptions {
  streamBytes: number;
  wanBytes: number;
  lanBytes: number;
  nacks: number;
  p50Ms: number[];
  p99Ms: number[];
  gaps: number;
  allEqual: boolean;
  /** The machine's 1-minute load average at the end (it is shared with other work). */
  load: number;
  /** Per stage, p50 and p99 (ms) over every unit of every agent (streamStages). */
  stages: StageRow[];
  /** Per wait of a LAN unit's repair rounds (repairRounds). */
  rounds: StageRow[];
  /** The raw records (not in the report). */
  units?: UnitStages[];
  /** What the agents did as repairers, per unit (their repair lines). */
  repairer?: Map<number, RepairerLine[]>;
}

/** A repairer's line in the stages file (stream-stages.ts). */
export interface RepairerLine {
  repairer: number;
  ev: RepairEvent;
  t: number;
  n: number;
}

export interface StageRow {
  stage: string;
  n: number;
  p50: number;
  p99: number;
  /** The stage's median over the units whose publish-to-delivery time is at or past its p99. */
  tail: number;
}


/** The p-th percentile of xs (nearest rank); NaN for none. */
export const pct = (xs: number[], p: number) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};

/** The stages of publish-to-delivery, from the publisher's store times and the agents' unit records. */
export function streamStages(storeMs: number[], units: UnitStages[]): StageRow[] {
  const total = (u: UnitStages) => (u.delivered ?? NaN) - u.signed;
  const cut = pct(units.map(total).filter(Number.isFinite), 99);
  const d = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? NaN : Math.max(0, b - a));
  const defs: [string, (u: UnitStages) => number][] = [
    ['batch known to the agent (signed -> long poll answered, verified)', (u) => d(u.signed, u.known)],
    ['lease granted (batch known -> lease; own units)', (u) => (u.from === 'wan' ? d(u.known, u.leased) : NaN)],
    ['WAN fetch (lease -> downloaded, verified; own units)', (u) => (u.from === 'wan' ? d(u.leased, u.fetched) : NaN)],
    ['stored (downloaded -> on disk; own units)', (u) => (u.from === 'wan' ? d(u.fetched, u.held) : NaN)],
    ['LAN copies (batch known -> received, verified, on disk; peers\' units)', (u) => (u.from === 'lan' ? d(u.known, u.held) : NaN)],
    ['sink (on disk -> written to the sink, in order)', (u) => d(u.held, u.delivered)],
    ['total: publish to delivery', total],
  ];
  const rows: StageRow[] = [{ stage: 'publisher stores the batch (signed -> units, batch file, head synced)', n: storeMs.length, p50: pct(storeMs, 50), p99: pct(storeMs, 99), tail: NaN }];
  for (const [stage, f] of defs) {
    const xs = units.map(f).filter(Number.isFinite);
    const tail = units.filter((u) => total(u) >= cut).map(f).filter(Number.isFinite);
    rows.push({ stage, n: xs.length, p50: pct(xs, 50), p99: pct(xs, 99), tail: pct(tail, 50) });
  }
  return rows;
}

/**
 * The waits of a unit taken from the LAN, from its repair events (stream-stages.ts): each
 * span between two of its events (from the batch known to the unit held) is put under the
 * state the earlier event began. Returns, per wait, the ms a unit spent in it (0 if none).
 */
export function repairWaits(u: UnitStages): Record<string, number> | null {
  if (u.from !== 'lan' || u.known === undefined || u.held === undefined) return null;
  const w: Record<string, number> = {};
  for (const k of WAITS) w[k] = 0;
  const ev = [...(u.lan ?? [])].sort((a, b) => a[1] - b[1]);
  let state = WAITS[0];
  let at = u.known;
  const to = (next: string, t: number) => {
    w[state] += Math.max(0, Math.min(t, u.held!) - Math.max(at, u.known!));
    at = Math.max(at, t);
    state = next;
  };
  let asked = false;
  for (const [e, t] of ev) {
    if (e === 'copy') to(WAITS[1], t);
    else if (e === 'copyEnd' || e === 'last') to(asked ? WAITS[5] : WAITS[2], t);
    else if (e === 'ripe' || e === 'again') to(WAITS[3], t);
    else if (e === 'heard' && !asked && state !== WAITS[3]) to(WAITS[3], t);
    else if (e === 'nack' || e === 'suppressed') {
      asked = true;
      to(WAITS[4], t);
    } else if (e === 'repair') to(WAITS[5], t);
  }
  to(WAITS[0], u.held);
  return w;
}

const WAITS = [
  'batch known -> first copy',
  'copies arriving',
  'quiet wait (last data -> gap noticed)',
  'NACK backoff (gap noticed or holdoff over -> NACK sent or suppressed)',
  'NACK -> first repair (or the holdoff running out)',
  'repairs arriving, holdoff, verify, store (first repair -> held or next round)',
];

/** Per wait of repairWaits: p50 and p99 over the LAN units that were NACKed, and the median over the tail units. */
export function repairRounds(units: UnitStages[]): StageRow[] {
  const total = (u: UnitStages) => (u.delivered ?? NaN) - u.signed;
  const cut = pct(units.map(total).filter(Number.isFinite), 99);
  const nacked = units.filter((u) => u.lan?.some((e) => e[0] === 'ripe' || e[0] === 'heard'));
  const waits = new Map(nacked.map((u) => [u, repairWaits(u)!] as const).filter(([, w]) => w));
  const tail = [...waits.keys()].filter((u) => total(u) >= cut);
  const rounds = (u: UnitStages) => (u.lan ?? []).filter((e) => e[0] === 'nack' || e[0] === 'suppressed').length;
  const rows: StageRow[] = WAITS.map((stage) => {
    const xs = [...waits.values()].map((w) => w[stage]);
    return { stage, n: xs.length, p50: pct(xs, 50), p99: pct(xs, 99), tail: pct(tail.map((u) => waits.get(u)![stage]), 50) };
  });
  const r = [...waits.keys()].map(rounds);
  rows.push({ stage: 'NACK rounds (our NACKs sent or suppressed)', n: r.length, p50: pct(r, 50), p99: pct(r, 99), tail: pct(tail.map(rounds), 50) });
  return rows;
}

/** One unit's repair timeline, ms from its batch known: its events, then what the repairers did for it. */
export function repairTimeline(u: UnitStages, repairer: Map<number, RepairerLine[]>): string {
  const k = u.known ?? u.signed;
  const ev = [...(u.lan ?? [])].sort((a, b) => a[1] - b[1]).map(([e, t, n]) => `${e}${n ? `(${n})` : ''} ${Math.round(t - k)}`);
  const rep = (repairer.get(u.unit) ?? []).map((l) => `${l.ev}(${l.n}) ${Math.round(l.t - k)}`);
  return `unit ${u.unit}: total ${Math.round((u.delivered ?? NaN) - u.signed)}, held ${Math.round((u.held ?? NaN) - k)}: ${ev.join(', ')} | repairers: ${rep.join(', ')}`;
}

/**
 * A stage or wait table over runs: its header, then per row the units of the first run and
 * the medians over the runs of p50, p99 and the tail (`first` names the first column).
 */
export function stageTable(runs: StageRow[][], first: string): string[] {
  const med = (xs: number[]) => {
    const s = [...xs].filter(Number.isFinite).sort((a, b) => a - b);
    return s.length ? s[Math.floor(s.length / 2)] : NaN;
  };
  const f = (x: number) => (Number.isFinite(x) ? String(Math.round(x)) : '-');
  return [
    `| ${first} | units (run 1) | p50 (ms) | p99 (ms) | in the tail (ms) |`,
    '| --- | ---: | ---: | ---: | ---: |',
    ...runs[0].map((st, i) => `| ${st.stage} | ${st.n} | ${f(med(runs.map((x) => x[i].p50)))} | ${f(med(runs.map((x) => x[i].p99)))} | ${f(med(runs.map((x) => x[i].tail)))} |`),
  ];
}

/** The stream's feed tick: the publisher is given the bytes due every this many ms. */
export const FEED_TICK_MS = 20;

/**
 * Feeds `source` from byte `from` to the publisher at `mbit`, on a clock rather than after
 * each push: a slow store would otherwise slow the stream down. Does not end the stream.
 */
export async function feedStream(pub: StreamPublisher, source: Buffer, mbit: number, from: number): Promise<void> {
  const start = Date.now();
  let off = from;
  while (off < source.length) {
    const due = Math.min(source.length, Math.round(((Date.now() - start + FEED_TICK_MS) / 1000) * ((mbit * 1e6) / 8)) + from);
    if (due > off) {
      await pub.push(source.subarray(off, due));
      off = due;
    }
    await new Promise((r) => setTimeout(r, FEED_TICK_MS));
  }
}

/** What a `fleetcast agent --stream` run says in its end lines (stderr, log level info). */
export interface AgentEnd {
  /** Batches in the server's answers, and times a member that took them from the LAN polled again (NaN: an agent from before). */
  batchesFromServer: number;
  batchFallbacks: number;
  /** Batches a gateway took from another site's member and multicast on its LAN (NaN: an agent from before 2026-12-03). */
  batchesForwarded: number;
  wanBytes: number;
  lanBytes: number;
  nacks: number;
  p50Ms: number;
  p99Ms: number;
  gaps: number;
  /** Datagrams the agent dropped, by reason (its end line; empty from an agent before 2026-12-03). */
  drops: Record<string, number>;
}

export function agentEnd(stderr: string): AgentEnd {
  const num = (re: RegExp) => Number(re.exec(stderr)?.[1] ?? NaN);
  return { wanBytes: num(/WAN (\d+) bytes/), lanBytes: num(/LAN (\d+) bytes/), nacks: num(/(\d+) NACKs sent/), p50Ms: num(/latency p50 (\d+) ms/), p99Ms: num(/p99 (\d+) ms/), gaps: num(/gaps (\d+)/), batchesFromServer: num(/batches (\d+) from the server/), batchFallbacks: num(/(\d+) fallbacks/), batchesForwarded: num(/(\d+) forwarded from other sites/), drops: dropsOf(stderr) };
}

/** `datagrams dropped: REASON N, ...` from an agent's end line. */
function dropsOf(stderr: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of /datagrams dropped: ([^\n]*)/.exec(stderr)?.[1].split(', ') ?? []) {
    const m = /^(\S+) (\d+)$/.exec(part.trim());
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

/**
 * What the agents wrote to their FLEETCAST_STREAM_STAGES files (a missing file: none): the unit
 * records, and the repairer lines by unit.
 */
export async function readStages(files: string[]): Promise<{ units: UnitStages[]; repairer: Map<number, RepairerLine[]> }> {
  const units: UnitStages[] = [];
  const repairer = new Map<number, RepairerLine[]>();
  for (const f of files) {
    const text = await fs.readFile(f, 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      if (!line) continue;
      const x = JSON.parse(line) as UnitStages | RepairerLine;
      if ('repairer' in x) {
        const l = repairer.get(x.repairer) ?? [];
        l.push(x);
        repairer.set(x.repairer, l);
      } else units.push(x);
    }
  }
  return { units, repairer };
}

export async function benchStream(o: StreamBenchOptions): Promise<StreamBenchResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-bench-stream-'));
  const children: ChildProcess[] = [];
  const server = new FleetcastServer({ storeDir: path.join(dir, 'store'), host: '127.0.0.1', port: 0 });
  try {
    await fs.mkdir(path.join(dir, 'store'));
    const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
    const { url } = await server.start();
    const source = randomBytes(Math.round((o.mbit * 1e6 * o.seconds) / 8));
    const pub = await StreamPublisher.open(path.join(dir, 'store'), 'bench', await loadPrivateKey(keyPath), { unitSize: o.unitBytes, flushMs: o.flushMs });
    const perTick = Math.round((o.mbit * 1e6 * FEED_TICK_MS) / 8 / 1000);
    await pub.push(source.subarray(0, perTick));
    await pub.flush();
    const multicast = `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}:${randomInt(20000, 60000)}`;
    const runs = Array.from({ length: o.agents }, (_, i) => {
      const args = ['agent', '--server', url, '--plain-http', '--group', 'g1', '--interface', '127.0.0.1', '--multicast', multicast, '--trust', pubPath, '--stream', 'bench', '--start', 'beginning', '--member', `m${i}`, '--storage', path.join(dir, `a${i}`), '--sink', path.join(dir, `sink${i}`), '--status-socket', 'none', '--loss', String(o.lossPct)];
      const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, FLEETCAST_STREAM_STAGES: path.join(dir, `stages${i}.jsonl`) } });
      children.push(child);
      let err = '';
      child.stderr!.on('data', (d) => (err += d));
      return new Promise<string>((resolve, reject) => child.on('close', (c) => (c === 0 ? resolve(err) : reject(new Error(`agent m${i} exited ${c}: ${err.slice(-2000)}`)))));
    });
    // The stream runs once every agent has joined: a unit published before an agent's
    // process was up (node's start took 0.6-0.8 s at load 8) measured that start, not the
    // protocol, and made the whole p99 (bench/results/stream.md, "Where the tail went").
    const alloc = streamRoutes(path.join(dir, 'store')).alloc;
    // Given up only when no agent joined for 30 s (progress, not the time they all took: on a
    // loaded box the processes start one after another); an agent that exits fails the race.
    for (let joined = 0, quiet = 0; joined < o.agents; quiet++) {
      const n = alloc.memberCount('bench');
      if (n > joined) [joined, quiet] = [n, 0];
      else if (quiet >= 3000) throw new Error(`only ${joined} of ${o.agents} agents joined, none in the last 30 s`);
      if (joined < o.agents) await Promise.race([...runs, new Promise((r) => setTimeout(r, 10))]);
    }
    await feedStream(pub, source, o.mbit, perTick);
    await pub.end();
    await pub.close();
    const ends = (await Promise.all(runs)).map(agentEnd);
    let allEqual = true;
    for (let i = 0; i < o.agents; i++) if (!(await fs.readFile(path.join(dir, `sink${i}`))).equals(source)) allEqual = false;
    const { units, repairer } = await readStages(Array.from({ length: o.agents }, (_, i) => path.join(dir, `stages${i}.jsonl`)));
    return {
      ...o,
      streamBytes: source.length,
      wanBytes: ends.reduce((n, e) => n + e.wanBytes, 0),
      lanBytes: ends.reduce((n, e) => n + e.lanBytes, 0),
      nacks: ends.reduce((n, e) => n + e.nacks, 0),
      p50Ms: ends.map((e) => e.p50Ms),
      p99Ms: ends.map((e) => e.p99Ms),
      gaps: ends.reduce((n, e) => n + e.gaps, 0),
      allEqual,
      load: os.loadavg()[0],
      stages: streamStages(pub.storeMs, units),
      rounds: repairRounds(units),
      units,
      repairer,
    };
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await server.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/**
 * The report: one row per loss, the medians of its runs (each run's own numbers follow),
 * then per loss the stage table (medians over the runs of each stage's p50 and p99).
 */
export function streamReport(runs: StreamBenchResult[][], machine: string, command: string, before: string[] = []): string[] {
  const med = (xs: number[]) => {
    const s = [...xs].filter(Number.isFinite).sort((a, b) => a - b);
    return s.length ? s[Math.floor(s.length / 2)] : NaN;
  };
  const fillMs = (r: StreamBenchResult) => (r.unitBytes * 8 * 1000) / (r.mbit * 1e6);
  const target = (r: StreamBenchResult) => 2 * fillMs(r) + 1 + 100;
  const rows = runs.map((rs) => {
    const r = rs[0];
    return {
      r,
      p50: med(rs.map((x) => med(x.p50Ms))),
      p50w: med(rs.map((x) => Math.max(...x.p50Ms))),
      p99: med(rs.map((x) => med(x.p99Ms))),
      p99w: med(rs.map((x) => Math.max(...x.p99Ms))),
      each: rs.map((x) => `${med(x.p99Ms)}/${Math.max(...x.p99Ms)}`).join(', '),
      wan: med(rs.map((x) => x.wanBytes / x.streamBytes)),
      lan: med(rs.map((x) => x.lanBytes / x.agents / x.streamBytes)),
      nacks: med(rs.map((x) => x.nacks)),
      gaps: rs.reduce((n, x) => n + x.gaps, 0),
      equal: rs.every((x) => x.allEqual),
      loads: rs.map((x) => x.load.toFixed(1)).join(', '),
      rs,
    };
  });
  const out = [
    '# Live stream on the LAN (issue 19)',
    '',
    `Machine: ${machine}.`,
    `Command: \`${command}\` (arguments: agents, Mbit/s, seconds, losses, unit KiB, runs). One process publishes the stream (StreamPublisher, fed every 20 ms at the rate, from the moment every agent has joined) and runs the server; each agent is a \`fleetcast agent --stream\` process of one LAN group on loopback multicast, with a file sink and \`--loss\` dropping that share of its received datagrams. All on this machine's ${os.cpus().length} cores.`,
    'Latency is publish to delivery: from the signing time of the batch naming a unit (the publisher signs it when the unit closes: full, or --flush-ms after its first byte) to the agent\'s write of the unit to its sink, over every unit; per agent, then the median and worst agent; each cell is the median over the runs (each run\'s median/worst agent p99 in the next column). Target (issue 19): p99 at most 2x the unit fill time + 1 RTT + 100 ms (loopback RTT is under 1 ms).',
    '"Server bytes per group" is the unit bytes the agents downloaded from the server over the stream\'s bytes (1.00: each byte crossed the WAN once for the group). Target: at most 1.02.',
    '',
    '| agents | rate (Mbit/s) | seconds | loss | unit | fill time (ms) | runs | p50 (ms): median agent, worst | p99 (ms): median agent, worst | p99 of each run (median/worst agent) | p99 target (ms) | met | server bytes per group | LAN bytes per agent | NACKs | gaps | every sink equals the source | load average (1 min) at each run\'s end |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |',
    ...rows.map(({ r, ...x }) => `| ${r.agents} | ${r.mbit} | ${r.seconds} | ${r.lossPct}% | ${r.unitBytes / 1024} KiB | ${fillMs(r).toFixed(0)} | ${x.rs.length} | ${x.p50}, ${x.p50w} | ${x.p99}, ${x.p99w} | ${x.each} | ${target(r).toFixed(0)} | ${x.p99w <= target(r) ? 'yes' : x.p99 <= target(r) ? 'median agent only' : 'NO'} | ${x.wan.toFixed(3)} | ${x.lan.toFixed(2)}x | ${x.nacks} | ${x.gaps} | ${x.equal ? 'yes' : 'NO'} | ${x.loads} |`),
    '',
    '## Where the time goes',
    '',
    'Per unit and agent, from `FLEETCAST_STREAM_STAGES` (src/agent/stream-stages.ts): each stage\'s p50 and p99 over every unit of every agent, and its median over the units whose total is at or past the total\'s p99 ("in the tail"); each cell is the median over the runs. "Own units" are those the agent was leased and downloaded; "peers\' units" came from the LAN (multicast copies and NACK repairs). Stages overlap: a unit\'s total is not their sum (a unit on disk waits in the sink stage for the units before it).',
    '',
  ];
  for (const { r, rs } of rows) {
    out.push(`${r.lossPct}% loss:`, '', ...stageTable(rs.map((x) => x.stages), 'stage'), '');
    if (!rs[0].rounds[0]?.n) continue;
    out.push(
      `${r.lossPct}% loss, the repair rounds of the peers' units that were NACKed (by this agent or another), per wait: ms a unit spent in it (0 if none), its p50 and p99 over those units and its median over the ones in the total's tail (repairWaits in bench/stream.ts):`,
      '',
      ...stageTable(rs.map((x) => x.rounds), 'wait'),
      '',
    );
  }
  return [...out, ...before, `Generated ${new Date().toISOString()}.`, ''];
}
