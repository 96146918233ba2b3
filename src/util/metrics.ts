import { readdirSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import { buildInfo } from './build-info';
import { Logger } from './log';

type Sample = [labels: Record<string, string>, value: number];

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

  private family(name: string, type: string, help: string, samples: Sample[]): void {
    const full = this.prefix ? `${this.prefix}_${name}` : name;
    this.lines.push(`# HELP ${full} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${full} ${type}`);
    for (const [labels, v] of samples) {
      const l = Object.entries(labels)
        .map(([k, x]) => `${k}="${x.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`)
        .join(',');
      this.lines.push(`${full}${l ? `{${l}}` : ''} ${Number.isFinite(v) ? v : 'NaN'}`);
    }
  }

  text(): string {
    return this.lines.join('\n') + '\n';
  }
}

/** When this process started, in seconds since the epoch. */
const startTimeSeconds = (Date.now() - performance.now()) / 1000;

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
