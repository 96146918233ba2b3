import { readFileSync } from 'node:fs';
import { Agent as Dispatcher, fetch as undiciFetch, request as undiciRequest } from 'undici';
import { ExitCode, FleetcastError } from '../util/errors';

/**
 * How an agent (or `fleetcast fleet`, `doctor`) reaches the origin: its URL, the bearer
 * token it authenticates with, and the CA its HTTPS certificate must chain to. Plain
 * HTTP only when `plainHttp` says so. Uses the `undici` package's fetch, whose
 * dispatcher takes a CA (Node's global fetch cannot be given one).
 */
export interface ServerAccessOptions {
  url: string;
  token?: string;
  /** PEM of the CA(s) to trust for HTTPS instead of the system's. */
  ca?: string | Buffer;
  plainHttp?: boolean;
}

export type FetchInit = { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal };

export class ServerAccess {
  readonly url: string;
  private readonly dispatcher: Dispatcher | undefined;
  private readonly token: string | undefined;

  constructor(o: ServerAccessOptions) {
    let u: URL;
    try {
      u = new URL(o.url);
    } catch {
      throw new FleetcastError('CONFIG', `server must be a URL like https://HOST:PORT, not ${JSON.stringify(o.url)}`, ExitCode.CONFIG);
    }
    if (u.protocol === 'http:' && !o.plainHttp) {
      throw new FleetcastError('PLAIN_HTTP', `server ${o.url} is plain HTTP: use https://, or set plain_http: true (--plain-http) to send tokens and take releases unencrypted`, ExitCode.CONFIG);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new FleetcastError('CONFIG', `server must be http:// or https://, not ${u.protocol}`, ExitCode.CONFIG);
    this.url = o.url.replace(/\/+$/, '');
    this.token = o.token;
    this.dispatcher = u.protocol === 'https:' && o.ca ? new Dispatcher({ connect: { ca: o.ca } }) : undefined;
  }

  /** Load token and CA files named in a config. */
  static fromFiles(o: { url: string; token?: string; tokenFile?: string; caFile?: string; plainHttp?: boolean }): ServerAccess {
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
    return undiciFetch(this.url + path, { ...init, headers: this.headers(init.headers), dispatcher: this.dispatcher }) as unknown as Promise<Response>;
  }

  /**
   * A GET whose body is a Node stream: for unit downloads, the bulk of the bytes, where
   * fetch()'s web streams cost a promise and several objects per chunk.
   */
  async get(path: string, init: { headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<{ status: number; body: AsyncIterable<Uint8Array> & { json(): Promise<unknown>; dump(): Promise<void> } }> {
    const r = await undiciRequest(this.url + path, { method: 'GET', headers: this.headers(init.headers), signal: init.signal, dispatcher: this.dispatcher });
    return { status: r.statusCode, body: r.body };
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { ...extra };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    return headers;
  }
}
