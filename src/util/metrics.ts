import { readdirSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { EventLoopUtilization, IntervalHistogram, Performance } from 'node:perf_hooks';
import { buildInfo } from './build-info';
import { Logger } from './log';

/** What EventLoopDelay reads of perf_hooks' performance. */
export type LoopClock = Pick<Performance, 'now' | 'eventLoopUtilization'>;

type Sample = [labels: Record<string, string>, value: number];

/** A label value escaped as the text format requires (backslash, quote, newline); most need nothing. */
function escapeLabel(x: string): string {
  return /[\\"\n]/.test(x) ? x.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') : x;
}

/**
 * Prometheus text exposition format 0.0.4: `# HELP`, `# TYPE`, then one
 * `name{label="value"} number` line per sample. Label values are escaped
 * (backslash, quote, newline) as the format requires.
 */
export class MetricsRegistry {
  private readonly lines: string[] = [];
  constructor(private readonly prefix: string) {}

  counter(name: string, help: string, samples: Sample[]): void {
    this.family(name, 'counter', help, samples);
  }
  gauge(name: string, help: string, samples: Sample[]): void {
    this.family(name, 'gauge', help, samples);
  }

  /** A histogram family: per series `_bucket{le}` (cumulative, ending with +Inf), `_sum` and `_count`. */
  histogram(name: string, help: string, series: [labels: Record<string, string>, h: Histogram][]): void {
    const full = this.header(name, 'histogram', help);
    for (const [labels, h] of series) {
      let cum = 0;
      for (let i = 0; i <= h.bounds.length; i++) {
        cum += h.counts[i];
        this.sample(`${full}_bucket`, { ...labels, le: i < h.bounds.length ? String(h.bounds[i]) : '+Inf' }, cum);
      }
      this.sample(`${full}_sum`, labels, h.sum);
      this.sample(`${full}_count`, labels, cum);
    }
  }

  private header(name: string, type: string, help: string): string {
    const full = this.prefix ? `${this.prefix}_${name}` : name;
    this.lines.push(`# HELP ${full} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${full} ${type}`);
    return full;
  }

  private sample(full: string, labels: Record<string, string>, v: number): void {
    // A loop, and the replaces only where a value needs them: at 10,000 LAN groups a scrape formats ~20,000
    // labelled samples, 33 ms with Object.entries/map/join and three replaces each, 20 ms so (medians of 15).
    let l = '';
    for (const k in labels) l += `${l ? ',' : ''}${k}="${escapeLabel(labels[k])}"`;
    this.lines.push(`${full}${l ? `{${l}}` : ''} ${Number.isFinite(v) ? v : 'NaN'}`);
  }

  private family(name: string, type: string, help: string, samples: Sample[]): void {
    const full = this.header(name, type, help);
    for (const [labels, v] of samples) this.sample(full, labels, v);
  }

  text(): string {
    return this.lines.join('\n') + '\n';
  }
}

/**
 * Bucket upper bounds in seconds for durations from a millisecond to 10 s: fine around the
 * 250 ms a control request's p99 must stay under (issue 17), so a quantile read from them
 * (as Prometheus' histogram_quantile does) is good to a few tens of ms there.
 */
export const DURATION_BUCKETS_SECONDS: readonly number[] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10];

/** A histogram with fixed buckets (the Prometheus kind): its memory does not grow with what it counts. */
export class Histogram {
  /** counts[i]: observations in (bounds[i-1], bounds[i]]; the last, above every bound (+Inf). Not cumulative. */
  readonly counts: number[];
  sum = 0;
  constructor(readonly bounds: readonly number[] = DURATION_BUCKETS_SECONDS) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(v: number, times = 1): void {
    let i = 0;
    while (i < this.bounds.length && v > this.bounds[i]) i++;
    this.counts[i] += times;
    this.sum += v * times;
  }

  get count(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }
}

/**
 * The process's event-loop delay (how late a timer ran, past its interval) as a
 * fixed-bucket Histogram in seconds, sampled at two rates, with no timer of its own while
 * the loop is idle (issue 17: a 10 ms timer woke an idle server 100 times a second, ~10 ms of
 * CPU a second on this 2-core box: 1 µs per follower-second at 10,000 idle followers, most of
 * an idle server's cost; a 100 ms JS interval still cost ~2.5 ms a second):
 * - tick(), called by the owner's own periodic timer (the server's, every heartbeat_ms / 2,
 *   at least 100 ms), records that timer's lateness and reads the loop's utilization since
 *   the last tick (performance.eventLoopUtilization);
 * - perf_hooks.monitorEventLoopDelay at `resolutionMs` (Node records the time between two
 *   runs of its timer; the interval is taken off) runs only while the loop is busy: from a
 *   tick that saw utilization at or above BUSY, or ran `resolutionMs` late, until IDLE_TICKS
 *   ticks in a row below it. While it runs, the ticks' own lateness is not recorded (the
 *   fine monitor has it).
 * So a busy loop is sampled every `resolutionMs`, and an idle one at each tick, where a
 * block that spans the tick's due time is recorded as late as it held the tick back.
 * Node keeps the fine samples in an HDR histogram; fold() moves what it has recorded since
 * the last fold into the buckets (from its percentile ticks: a sample is counted in the
 * bucket of the tick at or above it, so a bucket may hold a sample that was a little lower,
 * never higher) and resets it. Node's reset also forgets when its timer last ran, so the
 * interval in which a fold falls is not recorded, a blocked loop included: the server folds
 * only when scraped (and on stop), and when the fine monitor goes idle (on time, quiet), not
 * on its own timer (which folded twice a second and lost a block that began within one
 * resolution after a tick: a rare failure of test/metrics.test.ts on a busy box).
 */
export class EventLoopDelay {
  /** Loop utilization over one tick that turns the fine monitor on. */
  static readonly BUSY = 0.05;
  /** Ticks in a row below BUSY (and on time) that turn it off. */
  static readonly IDLE_TICKS = 4;
  readonly histogram = new Histogram();
  /** Ticks, and those the fine monitor ran through (tests, and what a scrape cannot show). */
  readonly ticks = { all: 0, fine: 0 };
  /** The loop's utilization over the last tick (0 before one): the server's load factor reads it (load-factor.ts). */
  busy = 0;
  private readonly h: IntervalHistogram;
  private readonly perf: LoopClock;
  private fine = false;
  private quiet = 0;
  private last = -1;
  private elu: EventLoopUtilization | null = null;
  /** `clock`: the loop's time and utilization (perf_hooks' performance; tests pass their own). */
  constructor(
    private readonly resolutionMs = 10,
    clock?: LoopClock,
  ) {
    // node:perf_hooks on first use (issue 16): only the server measures its loop; agents do not load it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ph = require('node:perf_hooks') as typeof import('node:perf_hooks');
    this.h = ph.monitorEventLoopDelay({ resolution: resolutionMs });
    this.perf = clock ?? ph.performance;
  }
  /** Ticks are taken from now on; the fine monitor runs until the loop is seen quiet. */
  start(): void {
    this.last = this.perf.now();
    this.elu = this.perf.eventLoopUtilization();
    this.quiet = 0;
    this.setFine(true);
  }
  stop(): void {
    this.last = -1;
    this.setFine(false);
  }
  /** Whether the 10 ms monitor runs now. */
  get sampling(): 'fine' | 'coarse' {
    return this.fine ? 'fine' : 'coarse';
  }
  /** The owner's periodic timer ran; it was due `intervalMs` after its last run. */
  tick(intervalMs: number): void {
    if (this.last < 0) return;
    const now = this.perf.now();
    const late = Math.max(0, now - this.last - intervalMs);
    this.last = now;
    const elu = this.perf.eventLoopUtilization();
    const busy = (this.busy = this.perf.eventLoopUtilization(elu, this.elu ?? undefined).utilization);
    this.elu = elu;
    this.ticks.all++;
    if (this.fine) this.ticks.fine++;
    else this.histogram.observe(late / 1000);
    if (busy >= EventLoopDelay.BUSY || late >= this.resolutionMs) {
      this.quiet = 0;
      this.setFine(true);
    } else if (this.fine && ++this.quiet >= EventLoopDelay.IDLE_TICKS) this.setFine(false);
  }
  private setFine(on: boolean): void {
    if (on === this.fine) return;
    this.fine = on;
    if (on) {
      this.h.reset();
      this.h.enable();
    } else {
      this.fold();
      this.h.disable();
    }
  }
  fold(): void {
    const n = this.h.count;
    if (n > 0) {
      let before = 0;
      // Ascending percentile ticks (0 ... 100) with the value at each, in nanoseconds.
      const ticks = [...this.h.percentiles.entries()].sort((a, b) => a[0] - b[0]);
      for (const [p, ns] of ticks) {
        // A tick (p, v) says at least p% of the samples are at or below v: ceil, so a fold never counts a sample in a
        // higher bucket than it was (rounding counted each fold's highest sample twice, and a p99 read high).
        const upTo = Math.min(n, Math.ceil((p / 100) * n - 1e-9));
        if (upTo > before) this.histogram.observe(this.late(ns), upTo - before);
        before = Math.max(before, upTo);
      }
      if (before < n) this.histogram.observe(this.late(this.h.max), n - before);
    }
    this.h.reset();
  }
  /** Node records the time between two runs of its timer: the delay is what exceeds the timer's interval. */
  private late(ns: number): number {
    return Math.max(0, ns / 1e9 - this.resolutionMs / 1000);
  }
}

/** When this process started, in seconds since the epoch (process.uptime(), not performance.now(): that global loads node:perf_hooks). */
const startTimeSeconds = Date.now() / 1000 - process.uptime();

/**
 * The standard process metrics of Prometheus client libraries' process collector (the
 * Go and Python clients use these names and units), and `PREFIX_build_info`: version and
 * Node.js as labels, value 1.
 */
export function processMetrics(prefix: string): string {
  const r = new MetricsRegistry('');
  const cpu = process.cpuUsage();
  r.counter('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.', [[{}, (cpu.user + cpu.system) / 1e6]]);
  r.gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', [[{}, process.memoryUsage.rss()]]);
  let fds: number | null = null;
  try {
    fds = readdirSync('/proc/self/fd').length;
  } catch {
    /* not Linux: left out */
  }
  if (fds !== null) r.gauge('process_open_fds', 'Number of open file descriptors.', [[{}, fds]]);
  const limit = maxFds();
  if (limit !== null) r.gauge('process_max_fds', 'Maximum number of open file descriptors.', [[{}, limit]]);
  r.gauge('process_start_time_seconds', 'Start time of the process since unix epoch in seconds.', [[{}, Math.round(startTimeSeconds * 1000) / 1000]]);
  const b = buildInfo();
  r.gauge(`${prefix}_build_info`, 'The running version of fleetcast and of Node.js (value 1)', [[{ version: b.version, node: b.node }, 1]]);
  return r.text();
}

function maxFds(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Serve `GET /metrics` on host:port; everything else is 404. Resolves once listening. */
export async function serveMetrics(host: string, port: number, render: () => string, log: Logger): Promise<http.Server> {
  const srv = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('fleetcast: metrics are at GET /metrics\n');
      return;
    }
    let body: string;
    try {
      body = render();
    } catch (err) {
      log.error(`metrics: ${(err as Error).message}`);
      res.writeHead(500);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, host, () => {
      srv.off('error', reject);
      resolve();
    });
  });
  srv.unref();
  return srv;
}
