import { ExitCode, FleetcastError } from '../util/errors';
import { Logger, silentLogger } from '../util/log';
import { ServerAccess } from '../net/server-access';
import type { CopyDestination, HeartbeatAnswer } from '../wire/http-bodies';
import type { HeartbeatFold } from './heartbeat';

/** An answer from the server that is final (4xx): retrying the same request will not help. */
export class ControlError extends FleetcastError {
  constructor(readonly status: number, code: string, message: string) {
    // 401 is the one answer every command maps the same way: not permitted (77).
    super(code, message, status === 401 ? ExitCode.NOPERM : ExitCode.UNAVAILABLE);
  }
}

/**
 * A 5xx answer: the server is up but cannot answer now (restarting, or one of several
 * coordinators whose group's owner is moving). Retried on the same server, after the
 * `retryAfterMs` it gave, if any.
 */
export class ServerBusy extends Error {
  constructor(message: string, readonly retryAfterMs: number | null, readonly code: string = '') {
    super(message);
  }
}

/**
 * 5xx codes after which the next server of the list may do better: this coordinator
 * cannot reach the shared engine, so it cannot find (or take) the group's owner, while
 * another instance may know it (docs/scale-out.md).
 */
const TRY_NEXT = new Set(['ENGINE_UNAVAILABLE']);

/** The join and heartbeat answer (declared once, in the wire layer). */
export type SplitMapResponse = HeartbeatAnswer;
export interface LeaseResponse {
  units: number[];
  retryAfterMs: number;
  exhausted: boolean;
  hedged?: number[];
  relayed?: number[];
  /** Policy `wide`: the other LAN groups' gateways, where copies go besides the LAN. */
  copyTo?: CopyDestination[];
  /** An HTTP range origin to fetch these units' bytes from instead of the server (docs/scale-out.md). */
  origin?: string;
}

const MIN_RETRY_MS = 100;
const MAX_RETRY_MS = 5000;
const REQUEST_TIMEOUT_MS = 15000;

/**
 * HTTP client for the control plane. Network errors and 5xx are retried with
 * exponential backoff (the server may be restarting) until `signal` aborts;
 * 4xx answers throw ControlError at once.
 */
export class ControlClient {
  private failing = false;
  /** Set by Heartbeats: receipts and lease requests that ride on heartbeats (protocol 1.4). */
  fold: HeartbeatFold | null = null;
  constructor(private readonly server: ServerAccess, private readonly signal: AbortSignal, private readonly log: Logger = silentLogger) {}

  /** How HTTP range origins may be reached (no token goes to them). */
  get originAccess(): { plainHttp: boolean; ca?: string | Buffer } {
    return this.server.originAccess;
  }

  /**
   * Retry until it works. A connection that fails moves to the next server of the list at
   * once (several coordinators, docs/scale-out.md; after Dragonfly's daemons, which take a
   * list of schedulers and move on when one fails); the backoff grows only when a whole
   * round failed, or when a server answered 5xx (it is up: we stay with it, after its
   * retryAfterMs, unless it says it cannot reach the shared engine: then the next may).
   */
  private async retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let delay = MIN_RETRY_MS;
    let moves = 0;
    for (;;) {
      try {
        const v = await fn();
        if (this.failing) this.log.info(`server ${this.server.url} reachable again (${what})`);
        this.failing = false;
        return v;
      } catch (err) {
        if (err instanceof ControlError || this.signal.aborted) throw err;
        const untrusted = tlsTrustProblem(err, this.server.url);
        if (untrusted) throw untrusted;
        const from = this.server.url;
        const busy = err instanceof ServerBusy;
        const next = busy && !TRY_NEXT.has(err.code) ? null : this.server.failover();
        if (!this.failing || next) this.log.warn(`server ${from} ${busy ? 'cannot answer' : 'unreachable'} (${what}): ${describeFetchError(err)}; ${next ? `moving to ${next}` : 'retrying with backoff'}`);
        this.failing = true;
        if (next && !busy && ++moves % this.server.urls.length !== 0) {
          await sleep(MIN_RETRY_MS, this.signal);
          continue;
        }
        const wait = busy && err.retryAfterMs !== null ? Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, err.retryAfterMs)) : delay;
        await sleep(wait, this.signal);
        delay = Math.min(MAX_RETRY_MS, delay * 2);
      }
    }
  }

  private async checkStatus(res: { status: number; statusText?: string; json(): Promise<unknown> }): Promise<void> {
    if (res.status >= 200 && res.status < 300) return;
    let code = `HTTP_${res.status}`;
    let message = res.statusText || `status ${res.status}`;
    let retryAfterMs: number | null = null;
    try {
      const b = (await res.json()) as { error?: string; message?: string; retryAfterMs?: unknown };
      code = b.error ?? code;
      message = b.message ?? message;
      if (typeof b.retryAfterMs === 'number' && Number.isFinite(b.retryAfterMs)) retryAfterMs = b.retryAfterMs;
    } catch {
      /* not JSON */
    }
    if (res.status >= 500) throw new ServerBusy(`server error ${res.status}: ${message}`, retryAfterMs, code);
    if (res.status === 401) throw new ControlError(401, 'UNAUTHORIZED', 'the server refused our token (401): check token or token_file');
    throw new ControlError(res.status, code, message);
  }

  post<T>(path: string, body: unknown): Promise<T> {
    return this.retrying(path, async () => {
      const res = await this.server.request('POST', path, {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.any([this.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
      });
      await this.checkStatus(res);
      return (await res.json()) as T;
    });
  }

  getManifest(id: string): Promise<Buffer> {
    return this.retrying('manifest', async () => {
      const res = await this.server.request('GET', `/v1/releases/${id}/manifest`, { signal: AbortSignal.any([this.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]) });
      await this.checkStatus(res);
      return await res.bytes();
    });
  }

  /** The content key of an encrypted release (only for authenticated agents). */
  getContentKey(id: string): Promise<Buffer> {
    return this.retrying('content key', async () => {
      const res = await this.server.request('GET', `/v1/releases/${id}/key`, { signal: AbortSignal.any([this.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]) });
      await this.checkStatus(res);
      const j = (await res.json()) as { key?: unknown };
      if (typeof j.key !== 'string' || !/^[0-9a-f]{64}$/.test(j.key)) throw new ControlError(200, 'BAD_KEY', 'the server sent a malformed content key');
      return Buffer.from(j.key, 'hex');
    });
  }

  /**
   * Stream one unit's bytes; `onChunk` sees them as they arrive (cut-through).
   * `onChunk` may return a promise to pause the download (backpressure).
   * Not retried here: the caller decides whether the lease still holds.
   */
  async streamUnit(id: string, unit: number, group: string, member: string, onChunk: (chunk: Uint8Array) => void | Promise<void>, from = 0): Promise<number> {
    const q = new URLSearchParams({ group, member });
    const res = await this.server.request('GET', `/v1/releases/${id}/units/${unit}?${q}`, { signal: this.signal, headers: from > 0 ? { range: `bytes=${from}-` } : {} });
    await this.checkStatus(res);
    if (from > 0 && res.status !== 206) {
      res.dump();
      throw new Error(`asked for bytes ${from}- of unit ${unit}, got status ${res.status}`);
    }
    let n = 0;
    for await (const chunk of res.body) {
      n += chunk.length;
      const wait = onChunk(chunk);
      if (wait) await wait; // backpressure: the LAN is slower than the WAN
    }
    return n;
  }
}

/** fetch() says only "fetch failed"; the reason (refused, certificate, DNS) is in its cause. */
export function describeFetchError(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  const c = e?.cause;
  if (!c) return e?.message ?? String(err);
  return `${e.message}: ${c.message ?? ''}${c.code && !String(c.message).includes(c.code) ? ` (${c.code})` : ''}`;
}

/** Certificate checks that fail the same way on every retry: only a config change (ca:) helps. */
const UNTRUSTED = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/**
 * The server's certificate is not trusted (or not for this name): a FleetcastError that
 * says what to set (exit 78), or null for anything else. An expired or not-yet-valid
 * certificate is left to the retries: on a box without a battery clock, time is often
 * wrong until NTP has run.
 */
export function tlsTrustProblem(err: unknown, url: string): FleetcastError | null {
  const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
  const code = [e?.code, e?.cause?.code].find((c) => c !== undefined && UNTRUSTED.has(c));
  if (!code) return null;
  const why = (e.cause?.code === code ? e.cause.message : e.message) ?? code;
  const hint =
    code === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? `use the host name the certificate is for in server:, or reissue it with this name in its subjectAltName`
      : `set ca: (--ca) to the CA certificate that signed it (fleetcast init writes ca.pem), or use one the system trusts`;
  return new FleetcastError('TLS_UNTRUSTED', `the server's certificate at ${url} is not trusted: ${why} (${code}); ${hint}`, ExitCode.CONFIG);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
