import type { HttpAnswer, ServerAccess } from '../net/server-access';
import { ExitCode, FleetcastError } from '../util/errors';
import type { Logger } from '../util/log';
import { sleep } from './control-client';

const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5000;
/** A control request (heartbeat) that takes longer than this is abandoned and sent again. */
const REQUEST_TIMEOUT_MS = 10_000;

/**
 * The stream agent's HTTP calls to `/v1/streams/{name}` (docs/protocol.md section 15):
 * reads retried on network errors and 5xx (100 ms doubling to 5 s), a 4xx final
 * (exit 69; 401 exit 77). Heartbeats and unit downloads are not retried here: their
 * callers send the next one.
 */
export class StreamHttp {
  private failing = false;
  /** The last batches answer said the stream has ended. */
  lastEnded = false;
  private readonly base: string;

  constructor(
    private readonly server: ServerAccess,
    private readonly name: string,
    private readonly signal: AbortSignal,
    private readonly log: Logger,
  ) {
    this.base = `/v1/streams/${encodeURIComponent(name)}`;
  }

  /** `cancel`: ends this one request (and its retries) early, as closing the agent ends them all. */
  async get(suffix: string, cancel?: AbortSignal): Promise<Buffer> {
    const signal = cancel ? AbortSignal.any([this.signal, cancel]) : this.signal;
    let delay = RETRY_FIRST_MS;
    for (;;) {
      let res: HttpAnswer;
      try {
        res = await this.server.request('GET', this.base + suffix, { signal });
      } catch (err) {
        if (signal.aborted) throw err;
        this.warnOnce(`server unreachable (${(err as Error).message}); retrying`);
        await sleep(delay, signal);
        delay = Math.min(RETRY_MAX_MS, delay * 2);
        continue;
      }
      if (res.status === 200) {
        this.failing = false;
        return res.bytes();
      }
      const msg = await errorOf(res);
      if (res.status < 500) throw refused(this.name, `GET ${this.base}${suffix.split('?')[0]}`, res.status, msg);
      this.warnOnce(`the server answered ${msg}; retrying`);
      await sleep(delay, signal);
      delay = Math.min(RETRY_MAX_MS, delay * 2);
    }
  }

  async batches(query: string, cancel?: AbortSignal): Promise<unknown[]> {
    let body: { batches?: unknown; ended?: unknown };
    try {
      body = JSON.parse((await this.get(`/batches?${query}`, cancel)).toString('utf8')) as typeof body;
    } catch (err) {
      if (err instanceof SyntaxError) throw new FleetcastError('BAD_ANSWER', 'the server answered batches that are not JSON', ExitCode.UNAVAILABLE);
      throw err;
    }
    if (!Array.isArray(body.batches)) throw new FleetcastError('BAD_ANSWER', 'the server answered batches without a batches list', ExitCode.UNAVAILABLE);
    this.lastEnded = body.ended === true;
    return body.batches;
  }

  /** POST; a network error or 5xx throws a plain Error (the caller sends the next one), a 4xx a FleetcastError. */
  async post(suffix: string, body: unknown): Promise<Buffer> {
    const res = await this.server.request('POST', this.base + suffix, {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.any([this.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    });
    if (res.status === 200) return res.bytes();
    const msg = await errorOf(res);
    if (res.status >= 500) throw new Error(`server error ${res.status}: ${msg}`);
    throw refused(this.name, `POST ${this.base}${suffix}`, res.status, msg);
  }

  /** A unit's bytes to `onChunk` as they arrive; 200, or 410 when retention dropped it. */
  async unit(n: number, member: string, onChunk: (chunk: Buffer) => void): Promise<number> {
    const res = await this.server.request('GET', `${this.base}/units/${n}?member=${encodeURIComponent(member)}`, { signal: this.signal });
    if (res.status === 410) {
      res.dump();
      return 410;
    }
    if (res.status !== 200) {
      const msg = await errorOf(res);
      if (res.status >= 500) throw new Error(`server error ${res.status}: ${msg}`);
      throw refused(this.name, `GET unit ${n}`, res.status, msg);
    }
    for await (const c of res.body) onChunk(c as Buffer);
    return 200;
  }

  private warnOnce(msg: string): void {
    if (!this.failing) this.log.warn(`stream ${this.name}: ${msg}`);
    this.failing = true;
  }
}

async function errorOf(res: HttpAnswer): Promise<string> {
  try {
    const e = (await res.json()) as { error?: string; message?: string };
    return `${e.error ?? res.status}: ${e.message ?? ''}`;
  } catch {
    return `status ${res.status}`;
  }
}

function refused(name: string, what: string, status: number, msg: string): FleetcastError {
  if (status === 401) return new FleetcastError('UNAUTHORIZED', 'the server refused our token (401): check the token', ExitCode.NOPERM);
  return new FleetcastError('SERVER_REFUSED', `stream ${name}: ${what}: ${msg}`, ExitCode.UNAVAILABLE);
}
