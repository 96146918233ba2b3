import * as net from 'node:net';

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

/** The p-th percentile of `a` (nearest rank below; NaN when empty): the scale bench's, its probe's and its cluster report's. */
export function pct(a: number[], p: number): number {
  if (a.length === 0) return NaN;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** ms late from monitorEventLoopDelay's nanoseconds (resolution 10 ms): Node records the time between two runs of its timer. */
export const late = (ns: number) => Math.max(0, ns / 1e6 - 10);

/** A join that fails (the server busy with the whole fleet joining) is tried again with backoff, as an agent would, until `stopped`. */
export async function joinWithBackoff<T>(join: () => Promise<T>, stopped: () => boolean): Promise<T> {
  for (let delay = 100; ; delay = Math.min(5000, delay * 2)) {
    try {
      return await join();
    } catch (err) {
      if (stopped()) throw err;
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
    }
  }
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
   * One keep-alive connection per simulated site address and server: the server sees each site as one box, and
   * 10,000 sites stay under the server's connection cap and open-files limit (with 2 each, 100,000 agents were refused).
   */
  private readonly conns = new Map<string, Conn>();
  measuring = false;
  readonly kinds: Record<string, Kind> = {};
  readonly instances: InstanceCount[];
  constructor(private readonly ports: number[]) {
    this.instances = ports.map(() => ({ count: 0, failed: 0, latencies: [], failovers: 0 }));
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

  /** One request; its latency (from when it is written to its connection to the answer's last byte) goes to `took`. Rejects on a non-200 (Answer) or a socket error. */
  private once(local: string, port: number, p: string, data: Buffer, took: (ms: number) => void): Promise<Buffer> {
    const key = `${local} ${port}`;
    let c = this.conns.get(key);
    if (!c) this.conns.set(key, (c = new Conn(local, port)));
    return c.request(p, data, took);
  }

  close(): void {
    for (const c of this.conns.values()) c.close();
  }
}

function errorCode(body: Buffer): string {
  try {
    return String((JSON.parse(body.toString()) as { error?: unknown }).error ?? '');
  } catch {
    return '';
  }
}

interface Pending {
  path: string;
  data: Buffer;
  took: (ms: number) => void;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

/**
 * One keep-alive HTTP/1.1 connection from a simulated site's address, one request at a
 * time in order (what http.Agent with maxSockets 1 did), written and parsed by hand: at
 * 100,000 agents the simulator, not the server, was the bottleneck, and node:http's
 * client cost most of its CPU. It reads what `fleetcast server` sends: a status line,
 * headers with content-length (or none: the body runs to the close). A connection the
 * server closed is opened again for the next request; the request in flight fails.
 */
class Conn {
  private sock: net.Socket | null = null;
  private readonly queue: Pending[] = [];
  private current: Pending | null = null;
  private t0 = 0n;
  private buf: Buffer = Buffer.alloc(0);
  private closed = false;
  constructor(private readonly local: string, private readonly port: number) {}

  request(path: string, data: Buffer, took: (ms: number) => void): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      if (this.closed) return reject(new Error('client closed'));
      this.queue.push({ path, data, took, resolve, reject });
      if (!this.current) this.next();
    });
  }

  close(): void {
    this.closed = true;
    this.sock?.destroy();
    this.sock = null;
  }

  private open(): net.Socket {
    const s = net.connect({ host: '127.0.0.1', port: this.port, localAddress: this.local });
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => this.onData(d));
    const gone = (err?: Error) => {
      if (this.sock !== s) return;
      this.sock = null;
      this.buf = Buffer.alloc(0);
      const cur = this.current;
      this.current = null;
      if (cur) {
        cur.took(Number(process.hrtime.bigint() - this.t0) / 1e6);
        // An answer without content-length ends with the connection.
        if (!err && this.noLength) this.finish(cur, this.noLength.status, this.noLength.body);
        else cur.reject(err ?? new Error('socket hang up'));
      }
      this.noLength = null;
      if (this.closed) for (const q of this.queue.splice(0)) q.reject(new Error('client closed'));
      else if (err && (err as NodeJS.ErrnoException).code === 'ECONNREFUSED') for (const q of this.queue.splice(0)) q.reject(err);
      else this.next();
    };
    s.on('error', (err) => gone(err));
    s.on('close', () => gone());
    return s;
  }

  private noLength: { status: number; body: Buffer } | null = null;

  private next(): void {
    if (this.current || this.queue.length === 0) return;
    const q = this.queue.shift()!;
    this.current = q;
    if (!this.sock || this.sock.destroyed) this.sock = this.open();
    this.t0 = process.hrtime.bigint();
    this.sock.write(`POST ${q.path} HTTP/1.1\r\nhost: 127.0.0.1:${this.port}\r\ncontent-type: application/json\r\ncontent-length: ${q.data.length}\r\n\r\n`);
    this.sock.write(q.data);
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    const cur = this.current;
    if (!cur) return;
    if (this.noLength) {
      this.noLength.body = Buffer.concat([this.noLength.body, d]);
      this.buf = Buffer.alloc(0);
      return;
    }
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const status = Number(head.slice(9, 12));
    const m = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (!m && /\r\ntransfer-encoding: *chunked/i.test(head)) {
      // Chunked (not what the server sends; a plain node:http answer without content-length): whole once the last chunk is in.
      const chunks: Buffer[] = [];
      let at = end + 4;
      for (;;) {
        const eol = this.buf.indexOf('\r\n', at);
        if (eol < 0) return;
        const size = parseInt(this.buf.subarray(at, eol).toString('latin1'), 16);
        if (this.buf.length < eol + 2 + size + 2) return;
        if (size === 0) {
          at = eol + 4;
          break;
        }
        chunks.push(this.buf.subarray(eol + 2, eol + 2 + size));
        at = eol + 2 + size + 2;
      }
      this.buf = this.buf.subarray(at);
      this.current = null;
      cur.took(Number(process.hrtime.bigint() - this.t0) / 1e6);
      this.finish(cur, status, Buffer.concat(chunks));
      this.next();
      return;
    }
    if (!m) {
      this.noLength = { status, body: this.buf.subarray(end + 4) };
      this.buf = Buffer.alloc(0);
      return;
    }
    const len = Number(m[1]);
    if (this.buf.length < end + 4 + len) return;
    const body = this.buf.subarray(end + 4, end + 4 + len);
    this.buf = this.buf.subarray(end + 4 + len);
    this.current = null;
    cur.took(Number(process.hrtime.bigint() - this.t0) / 1e6);
    this.finish(cur, status, body);
    if (/\r\nconnection: *close/i.test(head)) {
      this.sock?.destroy();
      this.sock = null;
    }
    this.next();
  }

  private finish(q: Pending, status: number, body: Buffer): void {
    if (status !== 200) q.reject(new Answer(status, body, q.path));
    else q.resolve(body);
  }
}
