import * as http from 'node:http';
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
    const full = `${this.prefix}_${name}`;
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
