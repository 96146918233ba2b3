import * as http from 'node:http';
import { originUrlProblem } from '../release/distribution';

/* eslint-disable @typescript-eslint/no-require-imports */
/** Loaded on first https:// use (issue 16): an agent on plain http saves ~1 MiB of tls/https. */
const https = (): typeof import('node:https') => require('node:https') as typeof import('node:https');
const rootCertificates = (): readonly string[] => (require('node:tls') as typeof import('node:tls')).rootCertificates;
/* eslint-enable @typescript-eslint/no-require-imports */

/**
 * Unit bytes from an HTTP range origin (docs/scale-out.md): nginx or any static web server
 * holding a copy of the store, an S3-compatible bucket or a CDN. The coordinator names the
 * origin in each lease; the agent asks it for the unit's byte range of
 * `<origin>/releases/<id>/data` and verifies what arrives against the signed manifest, so
 * the origin is not trusted with anything but availability. In the spirit of Dragonfly's
 * "back to source" and Kraken's origin cluster: peers share, the origin only serves bytes.
 *
 * - No credentials go to an origin: the coordinator's bearer token is not sent.
 * - `http://` origins only when the agent itself runs over plain HTTP on purpose.
 * - An answer must be 206 with exactly the asked range (or 200 with exactly that many
 *   bytes, when the range is the whole file); a server that ignores Range would send the
 *   whole release, so more bytes than asked end the request.
 * - A request that makes no progress for `stallMs` is aborted (progress, not elapsed time).
 */
export class OriginError extends Error {
  constructor(readonly origin: string, message: string) {
    super(`origin ${origin}: ${message}`);
  }
}

export interface OriginOptions {
  /** Agent runs over plain HTTP on purpose: http:// origins may be used too. */
  plainHttp: boolean;
  /** Extra CA certificates (PEM) trusted beside the system's, e.g. the fleet's own. */
  ca?: string | Buffer;
  /** No byte for this long: the request is aborted. */
  stallMs?: number;
}

/** Checks an origin URL as the coordinator names it: the error says why it is not usable, or null. */
export function originProblem(url: string, plainHttp: boolean): string | null {
  const bad = originUrlProblem(url);
  if (bad) return bad;
  if (url.startsWith('http:') && !plainHttp) return 'is plain HTTP, and this agent does not run over plain HTTP (plain_http)';
  return null;
}

export class RangeOrigins {
  private readonly agents = new Map<string, http.Agent>();
  private readonly stallMs: number;

  constructor(private readonly o: OriginOptions) {
    this.stallMs = o.stallMs ?? 10_000;
  }

  private agentFor(url: URL): http.Agent {
    const key = url.origin;
    let a = this.agents.get(key);
    if (!a) {
      a = url.protocol === 'https:' ? new (https().Agent)({ keepAlive: true, maxSockets: 8, ...(this.o.ca ? { ca: [...rootCertificates(), String(this.o.ca)] } : {}) }) : new http.Agent({ keepAlive: true, maxSockets: 8 });
      this.agents.set(key, a);
    }
    return a;
  }

  /**
   * Bytes [start, end] (inclusive) of `<origin>/<path>`, chunk by chunk to `onChunk` (which may
   * return a promise: backpressure). `query` names who asks (group, member), for the
   * origin's access log. Resolves with the byte count; rejects with an OriginError.
   */
  streamRange(origin: string, path: string, query: Record<string, string>, start: number, end: number, onChunk: (chunk: Uint8Array) => void | Promise<void>, signal: AbortSignal): Promise<number> {
    const problem = originProblem(origin, this.o.plainHttp);
    if (problem) return Promise.reject(new OriginError(origin, problem));
    const url = new URL(origin.replace(/\/+$/, '') + '/' + path.replace(/^\/+/, ''));
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const mod = url.protocol === 'https:' ? https() : http;
    const want = end - start + 1;
    return new Promise<number>((resolve, reject) => {
      let settled = false;
      let stall: NodeJS.Timeout | undefined;
      const fail = (msg: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(stall);
        req.destroy();
        reject(new OriginError(origin, msg));
      };
      const armStall = () => {
        clearTimeout(stall);
        stall = setTimeout(() => fail(`no byte for ${this.stallMs} ms`), this.stallMs);
      };
      const req = mod.request(url, { method: 'GET', agent: this.agentFor(url), headers: { range: `bytes=${start}-${end}` }, signal }, (res) => {
        const status = res.statusCode ?? 0;
        const whole = status === 200 && start === 0 && Number(res.headers['content-length']) === want;
        if (status !== 206 && !whole) {
          res.resume();
          return fail(`asked for bytes ${start}-${end} of ${url.pathname}, got status ${status}`);
        }
        if (status === 206) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
          if (!m || Number(m[1]) !== start || Number(m[2]) !== end) {
            res.resume();
            return fail(`asked for bytes ${start}-${end}, got Content-Range ${JSON.stringify(res.headers['content-range'] ?? null)}`);
          }
        }
        let n = 0;
        (async () => {
          armStall();
          for await (const c of res) {
            const chunk = c as Buffer;
            n += chunk.length;
            if (n > want) return fail(`sent more than the ${want} bytes asked for`);
            armStall();
            const wait = onChunk(chunk);
            if (wait) await wait;
            armStall(); // waiting on our own backpressure is not the origin stalling
          }
          if (n !== want) return fail(`ended after ${n} of ${want} bytes`);
          settled = true;
          clearTimeout(stall);
          resolve(n);
        })().catch((err: Error) => fail(err.message));
      });
      req.on('error', (err) => fail(err.message));
      req.end();
      armStall();
    });
  }

  close(): void {
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
  }
}
