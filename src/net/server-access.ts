import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { Agent as Dispatcher } from 'undici';
import { ExitCode, FleetcastError } from '../util/errors';

/* eslint-disable @typescript-eslint/no-require-imports */
/** Loaded on first https:// use (issue 16): an agent on plain http saves ~1 MiB of tls/https. */
const https = (): typeof import('node:https') => require('node:https') as typeof import('node:https');
/* eslint-enable @typescript-eslint/no-require-imports */

/**
 * The idle time after which a request's connection sends TCP keepalive probes: below the
 * idle timeouts of common NATs and load balancers (AWS NAT gateway 350 s, Azure's 4
 * minutes), so a held channel poll (up to an hour) is not dropped silently, which would
 * leave the agent waiting out the hold before it learns of a new release.
 */
export const TCP_KEEPALIVE_MS = 60_000;

/**
 * How an agent (or `fleetcast fleet`, `doctor`) reaches the origin: its URL, the bearer
 * token it authenticates with, and the CA its HTTPS certificate must chain to. Plain
 * HTTP only when `plainHttp` says so. Control requests use Node's global fetch, or the
 * `undici` package's when a CA is given (its dispatcher takes one; the global fetch
 * cannot), loaded only then: it is ~100 modules an agent would parse at every start.
 * The agent's own frequent calls (unit downloads, receipts, leases) use node:http(s)
 * with keep-alive instead (see request()).
 */
export interface ServerAccessOptions {
  /** One server, or several coordinators of one fleet (tried in order, the next on failure; docs/scale-out.md). */
  url: string | string[];
  token?: string;
  /** PEM of the CA(s) to trust for HTTPS instead of the system's. */
  ca?: string | Buffer;
  plainHttp?: boolean;
}

export interface HttpAnswer {
  status: number;
  statusText: string;
  headers: http.IncomingHttpHeaders;
  body: AsyncIterable<Uint8Array>;
  bytes(): Promise<Buffer>;
  json(): Promise<unknown>;
  /** Discard the body. */
  dump(): void;
}

export type FetchInit = { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal };

export class ServerAccess {
  /** Every server URL given, in order; `url` is the one in use. */
  readonly urls: string[];
  private current = 0;
  private readonly ca: string | Buffer | undefined;
  private dispatcher: Dispatcher | undefined;
  private readonly token: string | undefined;
  /** Keep-alive connections for unit downloads. */
  private readonly agent: http.Agent;

  constructor(o: ServerAccessOptions) {
    const list = Array.isArray(o.url) ? o.url : [o.url];
    if (list.length === 0) throw new FleetcastError('CONFIG', 'server needs at least one URL', ExitCode.CONFIG);
    const protocols = new Set<string>();
    for (const url of list) {
      let u: URL;
      try {
        u = new URL(url);
      } catch {
        throw new FleetcastError('CONFIG', `server must be a URL like https://HOST:PORT, not ${JSON.stringify(url)}`, ExitCode.CONFIG);
      }
      if (u.protocol === 'http:' && !o.plainHttp) {
        throw new FleetcastError('PLAIN_HTTP', `server ${url} is plain HTTP: use https://, or set plain_http: true (--plain-http) to send tokens and take releases unencrypted`, ExitCode.CONFIG);
      }
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new FleetcastError('CONFIG', `server must be http:// or https://, not ${u.protocol}`, ExitCode.CONFIG);
      protocols.add(u.protocol);
    }
    if (protocols.size > 1) throw new FleetcastError('CONFIG', `server: the URLs ${list.join(', ')} mix http:// and https://; give the fleet's coordinators one scheme`, ExitCode.CONFIG);
    this.urls = list.map((x) => x.replace(/\/+$/, ''));
    this.token = o.token;
    const tls = protocols.has('https:');
    this.ca = tls ? o.ca : undefined;
    // keepAliveMsecs is the TCP keepalive idle time of the agent's sockets, from connect and again whenever one goes
    // back to the pool (Node's default, 1000, probed every second of a held poll).
    const keep = { keepAlive: true, keepAliveMsecs: TCP_KEEPALIVE_MS };
    this.agent = tls ? new (https().Agent)({ ...keep, ca: this.ca }) : new http.Agent(keep);
  }

  /** The server URL requests go to now. */
  get url(): string {
    return this.urls[this.current];
  }

  /**
   * Move to the next URL of the list (after a connection failure): the URL now in use, or
   * null when there is only one. A full round ends where it began.
   */
  failover(): string | null {
    if (this.urls.length < 2) return null;
    this.current = (this.current + 1) % this.urls.length;
    return this.url;
  }

  /** What an HTTP range origin may be reached with: plain HTTP only if the server is, and the CA given for it (never the token). */
  get originAccess(): { plainHttp: boolean; ca?: string | Buffer } {
    return { plainHttp: this.url.startsWith('http:'), ...(this.ca ? { ca: this.ca } : {}) };
  }

  /** Load token and CA files named in a config. */
  static fromFiles(o: { url: string | string[]; token?: string; tokenFile?: string; caFile?: string; plainHttp?: boolean }): ServerAccess {
    const read = (file: string, what: string) => {
      try {
        return readFileSync(file, 'utf8');
      } catch (err) {
        throw new FleetcastError('CONFIG', `cannot read the ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, ExitCode.CONFIG);
      }
    };
    const token = o.token ?? (o.tokenFile ? read(o.tokenFile, 'token file').trim() : undefined);
    if (token !== undefined && !/^[\x21-\x7e]{16,512}$/.test(token)) throw new FleetcastError('CONFIG', 'the token must be 16-512 printable characters without spaces', ExitCode.CONFIG);
    return new ServerAccess({ url: o.url, token, ca: o.caFile ? read(o.caFile, 'CA file') : undefined, plainHttp: o.plainHttp });
  }

  fetch(path: string, init: FetchInit = {}): Promise<Response> {
    const req = { ...init, headers: this.headers(init.headers) };
    if (!this.ca) return fetch(this.url + path, req);
    const undici = require('undici') as typeof import('undici');
    this.dispatcher ??= new undici.Agent({ connect: { ca: this.ca } });
    return undici.fetch(this.url + path, { ...req, dispatcher: this.dispatcher }) as unknown as Promise<Response>;
  }

  /**
   * A request whose answer body is a Node stream, on node:http(s) with keep-alive: unit
   * downloads (the bulk of the bytes, where fetch()'s web streams cost a promise and
   * several objects per chunk) and the agent's frequent control calls (a receipt per
   * unit, leases), where fetch() costs ~2 ms each on a busy small box.
   */
  request(method: 'GET' | 'POST', path: string, init: FetchInit = {}): Promise<HttpAnswer> {
    const mod = this.url.startsWith('https:') ? https() : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(this.url + path, { method, headers: this.headers(init.headers), agent: this.agent, signal: init.signal }, (res) => {
        const bytes = async () => {
          const parts: Buffer[] = [];
          for await (const c of res) parts.push(c as Buffer);
          return Buffer.concat(parts);
        };
        resolve({
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? '',
          headers: res.headers,
          body: res,
          bytes,
          json: async () => JSON.parse((await bytes()).toString('utf8')) as unknown,
          dump: () => void res.resume(),
        });
      });
      req.on('error', reject);
      req.end(init.body);
    });
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { ...extra };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    return headers;
  }
}
