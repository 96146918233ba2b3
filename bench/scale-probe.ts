import { ChildProcess, spawn } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { Client, joinWithBackoff, late, pct } from './scale-client';

/**
 * The scale bench's probe (issue 17): a few members of their own, in a Node process of
 * their own, heartbeating as 1.4 agents at a fixed rate while the simulator loads the
 * server. A real agent is a small process; the simulator is one process of 100,000 agents
 * with ~500 MB of heap, whose GC pauses and event-loop delay are in every latency it
 * measures. The probe's p99 is what an agent would see from the server at that load: its
 * socket wait, its handling and the kernel, with a small heap's pauses.
 *
 * Run as a child (startProbe): it joins its members, writes `joined`, measures between a
 * `measure` and a `report` line on stdin, and writes its figures as one JSON line.
 */

export interface ProbeArgs {
  port: number;
  release: string;
  units: number;
  /** Members, each its own site (LAN group) on its own loopback address 127.254.0.k. */
  members: number;
  /** Heartbeats a second, all members together. */
  perSecond: number;
  /** Policy wide: the wide-area group the probe's sites join. */
  wideGroup?: string;
}

export interface ProbeResult {
  count: number;
  failed: number;
  p50: number;
  p99: number;
  max: number;
  /** The probe's own event-loop delay p99 (ms late past a 10 ms timer). */
  loopP99: number;
}

async function probe(a: ProbeArgs): Promise<void> {
  const c = new Client([a.port]);
  const have = Buffer.alloc(Math.ceil(a.units / 8)).toString('base64');
  const maps: { epoch?: number; version: number }[] = [];
  const body = (k: number) => ({
    release: a.release,
    group: `probe${k}`,
    member: `probe${k}`,
    ...(a.wideGroup ? { wideGroup: a.wideGroup } : {}),
    have,
    address: `127.254.0.${k + 1}`,
    fetching: [],
    dataPort: 40000,
    ...(maps[k].epoch !== undefined ? { mapEpoch: maps[k].epoch } : {}),
    mapVersion: maps[k].version,
  });
  type A = { mapEpoch: number; mapVersion: number };
  for (let k = 0; k < a.members; k++) {
    maps.push({ version: 0 });
    const j = await joinWithBackoff(() => c.post<A>(`127.254.0.${k + 1}`, 'join', '/v1/join', body(k)), () => false);
    maps[k] = { epoch: j.mapEpoch, version: j.mapVersion };
  }
  process.stdout.write('joined\n');
  const loop = monitorEventLoopDelay({ resolution: 10 });
  let next = 0;
  // FLEETCAST_SCALE_PROBE_SLOW=MS: every measured request slower than MS goes to stderr with when it was sent (to line up with GC traces).
  const slow = Number(process.env.FLEETCAST_SCALE_PROBE_SLOW ?? 0);
  const beat = setInterval(() => {
    const k = next++ % a.members;
    const sent = Date.now();
    c.post<A>(`127.254.0.${k + 1}`, 'heartbeat', '/v1/heartbeat', body(k))
      .then((r) => void (maps[k] = { epoch: r.mapEpoch, version: r.mapVersion }))
      .finally(() => {
        const ms = Date.now() - sent;
        if (slow > 0 && c.measuring && ms > slow) process.stderr.write(`scale probe: slow ${ms} ms, sent ${new Date(sent).toISOString()}\n`);
      })
      .catch(() => undefined); // counted
  }, 1000 / a.perSecond);
  for await (const line of createInterface({ input: process.stdin })) {
    if (line === 'measure') {
      c.measuring = true;
      loop.enable();
    } else if (line === 'report') {
      c.measuring = false;
      loop.disable();
      clearInterval(beat);
      const ks = Object.values(c.kinds);
      const lat = ks.flatMap((k) => k.latencies);
      const r: ProbeResult = { count: lat.length, failed: ks.reduce((n, k) => n + k.failed, 0), p50: pct(lat, 50), p99: pct(lat, 99), max: pct(lat, 100), loopP99: late(loop.percentile(99)) };
      process.stdout.write(JSON.stringify(r) + '\n');
      c.close();
      return;
    }
  }
  c.close();
}

/** A started probe: measure() opens its window, report() closes it and ends the process, stop() kills it (by PID; safe after report). */
export interface Probe {
  measure(): void;
  report(): Promise<ProbeResult>;
  stop(): void;
}

/** Start the probe process and wait (at most `timeoutMs`) until its members joined. */
export async function startProbe(a: ProbeArgs, timeoutMs: number): Promise<Probe> {
  const p: ChildProcess = spawn(process.execPath, [__filename, JSON.stringify(a)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: p.stdout! })[Symbol.asyncIterator]();
  const stop = () => {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  };
  const line = async (what: string, ms: number): Promise<string> => {
    let t: NodeJS.Timeout | undefined;
    try {
      const r = await Promise.race([lines.next(), new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`scale probe: no ${what} in ${ms / 1000} s`)), ms)))]);
      if (r.done) throw new Error(`scale probe: exited before ${what}`);
      return r.value;
    } finally {
      clearTimeout(t);
    }
  };
  try {
    if ((await line('join', timeoutMs)) !== 'joined') throw new Error('scale probe: unexpected output');
  } catch (err) {
    stop();
    throw err;
  }
  return {
    measure: () => void p.stdin!.write('measure\n'),
    report: async () => {
      p.stdin!.write('report\n');
      try {
        return JSON.parse(await line('report', 60_000)) as ProbeResult;
      } finally {
        stop();
      }
    },
    stop,
  };
}

if (require.main === module) {
  probe(JSON.parse(process.argv[2]) as ProbeArgs).catch((err: Error) => {
    process.stderr.write(`scale probe: ${err.message}\n`);
    process.exit(1);
  });
}
