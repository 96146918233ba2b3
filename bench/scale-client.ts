import * as http from 'node:http';

/**
 * The scale bench's HTTP client (bench/scale.ts): one keep-alive connection per simulated
 * site and server, counters per request kind and per server instance. With several
 * coordinators (issue 18) each agent holds its servers in an order (a `Route`) and moves
 * to the next the way an agent's control client does (src/agent/control-client.ts): at
 * once when the connection fails, and on a 503 that says the instance cannot reach the
 * shared engine (`ENGINE_UNAVAILABLE`). Other 503s (an owner moving) are failures the
 * caller retries on its own schedule, as an agent stays with a server that answers. Unlike
 * an agent it makes one round of the list per request and no backoff: the simulated
 * agents' next heartbeat is their retry.
 */

export interface Kind {
  count: number;
  failed: number;
  bytes: number;
  latencies: number[];
  /** Answers that carried copy destinations (`copyTo`, and 1.5's `copyTree`), and those fields' bytes. */
  copyAnswers?: number;
  copyBytes?: number;
}

/** What one server instance answered while measuring: every attempt, including those the agent moved on from. */
export interface InstanceCount {
  count: number;
  failed: number;
  latencies: number[];
  /** Attempts after which the agent moved to the next instance. */
  failovers: number;
}

/** An agent's servers, as indexes into the client's ports, and the one it uses now (moves on failover, as ServerAccess.failover()). */
export interface Route {
  order: number[];
  at: number;
}

/** 503 codes after which an agent tries the next server (src/agent/control-client.ts, TRY_NEXT). */
const TRY_NEXT = new Set(['ENGINE_UNAVAILABLE']);

const ONE: Route = { order: [0], at: 0 };

class Answer extends Error {
  constructor(readonly status: number, readonly body: Buffer, p: string) {
    super(`${p}: ${status} ${body.toString().slice(0, 200)}`);
  }
}

export class Client {
  /**
   * One keep-alive pool per simulated site address and server, one connection each: the server sees each site as one box, and
   * 10,000 sites stay under the server's connection cap and open-files limit (with 2 each, 100,000 agents were refused).
   */
  private readonly pools = new Map<string, http.Agent>();
  measuring = false;
  readonly kinds: Record<string, Kind> = {};
  readonly instances: InstanceCount[];
  constructor(private readonly ports: number[]) {
    this.instances = ports.map(() => ({ count: 0, failed: 0, latencies: [], failovers: 0 }));
  }

  private pool(local: string, port: number): http.Agent {
    const key = `${local} ${port}`;
    let a = this.pools.get(key);
    if (!a) this.pools.set(key, (a = new http.Agent({ keepAlive: true, maxSockets: 1 })));
    return a;
  }

  /** POST to the route's current server; on a refused connection or an engine 503, to the next one (one round at most). */
  async post<T>(local: string, kind: string, p: string, body: unknown, route: Route = ONE): Promise<T> {
    const data = Buffer.from(JSON.stringify(body));
    const k = (this.kinds[kind] ??= { count: 0, failed: 0, bytes: 0, latencies: [] });
    for (let tries = 1; ; tries++) {
      const inst = route.order[route.at];
      const measuring = this.measuring;
      const c = this.instances[inst];
      const t0 = process.hrtime.bigint();
      let ms = 0;
      let buf: Buffer;
      try {
        buf = await this.once(local, this.ports[inst], p, data, (t) => (ms = t));
      } catch (err) {
        const next = route.order.length > 1 && tries < route.order.length && (err instanceof Answer ? err.status === 503 && TRY_NEXT.has(errorCode(err.body)) : true);
        if (measuring) {
          c.count++;
          c.failed++;
          c.latencies.push(ms || Number(process.hrtime.bigint() - t0) / 1e6);
          if (next) c.failovers++;
        }
        if (next) {
          route.at = (route.at + 1) % route.order.length;
          continue;
        }
        if (measuring) {
          k.count++;
          k.failed++;
          if (err instanceof Answer) k.bytes += err.body.length;
          k.latencies.push(ms || Number(process.hrtime.bigint() - t0) / 1e6);
        }
        throw err;
      }
      if (measuring) {
        c.count++;
        c.latencies.push(ms);
        k.count++;
        k.bytes += buf.length;
        k.latencies.push(ms);
      }
      const parsed = JSON.parse(buf.toString()) as T & { copyTo?: unknown; copyTree?: number };
      if (measuring && parsed.copyTo !== undefined) {
        k.copyAnswers = (k.copyAnswers ?? 0) + 1;
        k.copyBytes = (k.copyBytes ?? 0) + JSON.stringify({ copyTo: parsed.copyTo, copyTree: parsed.copyTree }).length;
      }
      return parsed;
    }
  }

  /** One request; its latency (from the socket assignment to the answer's last byte) goes to `took`. Rejects on a non-200 (Answer) or a socket error. */
  private once(local: string, port: number, p: string, data: Buffer, took: (ms: number) => void): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      let t0 = 0n;
      const req = http.request(
        { host: '127.0.0.1', port, path: p, method: 'POST', localAddress: local, agent: this.pool(local, port), headers: { 'content-type': 'application/json', 'content-length': data.length } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const buf = Buffer.concat(chunks);
            took(Number(process.hrtime.bigint() - t0) / 1e6);
            if (res.statusCode !== 200) reject(new Answer(res.statusCode ?? 0, buf, p));
            else resolve(buf);
          });
        },
      );
      req.on('socket', () => (t0 = process.hrtime.bigint()));
      req.on('error', reject);
      req.end(data);
    });
  }

  close(): void {
    for (const a of this.pools.values()) a.destroy();
  }
}

function errorCode(body: Buffer): string {
  try {
    return String((JSON.parse(body.toString()) as { error?: unknown }).error ?? '');
  } catch {
    return '';
  }
}
