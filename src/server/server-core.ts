import * as path from 'node:path';
import * as http from 'node:http';
import * as https from 'node:https';
import { ReleaseStore } from '../release/store';
import { FOLLOWING_MAX_MS, jsonDepthExceeds, MAX_JSON_DEPTH, maxBodyBytes, MemberRef, parseBody } from '../wire/http-bodies';
import { Allocators } from './allocators';
import { Logger, silentLogger } from '../util/log';
import { Distribution } from '../release/distribution';
import { FleetMemory } from './fleet-memory';
import { ChannelWatch } from './channel-watch';
import { RolloutService } from './rollout-api';
import { ChannelBook, FileChannels, SharedChannels } from './channel-book';
import { SharedRollouts } from './rollout-shared';
import { AuthThrottle, ConnectionCounter, emptyLimitCounters, IdentityBindings, LIMIT_DEFAULTS, LimitName } from './guard';
import type { Socket } from 'node:net';
import { basicPassword, HttpError, tokenDigest, TLS_CIPHERS } from './http-util';
import { EventLoopDelay, Histogram } from '../util/metrics';
import { LoadFactor } from './load-factor';

import type { ServerOptions, ServerStats } from './server-options';
export type { ServerOptions, ServerStats };

/** Heartbeats per second a server aims at, all 1.4 members together (ServerOptions.heartbeatsPerSec). */
export const DEFAULT_HEARTBEATS_PER_SEC = 5000;
/** Heartbeats per second a server aims at from its idle members together (ServerOptions.idleHeartbeatsPerSec). */
export const DEFAULT_IDLE_HEARTBEATS_PER_SEC = 100;
/** The longest heartbeat interval the server asks for (an idle member of a large fleet). */
export const MAX_IDLE_HEARTBEAT_MS = 900_000;
/**
 * The interval an idle member is asked to beat at while it holds a channel poll (docs/protocol.md
 * sections 19 and 20): a day since 1.8 (an hour in 1.7; a 1.7 agent clamps a day to that).
 */
export const FOLLOWER_HEARTBEAT_MS = FOLLOWING_MAX_MS;

/** Every this many timer ticks (half a heartbeat each), overheads go to the fleet memory. */
export const OVERHEAD_NOTE_TICKS = 10;

/**
 * The kinds of request the server's latency histogram is kept by (a fixed set: the
 * metric's series are bounded). `channel_wait` is a long poll (held by design), `unit` a
 * unit's bytes (as long as the transfer takes): neither is a control request's latency.
 */
export const REQUEST_KINDS = ['join', 'heartbeat', 'lease', 'receipt', 'complete', 'leave', 'hook', 'bad_unit', 'manifest', 'channel', 'channel_wait', 'unit', 'stream', 'rollout', 'stats', 'other'] as const;
export type RequestKind = (typeof REQUEST_KINDS)[number];

/** A request's kind from its method and path, without parsing more than the path. */
export function requestKind(method: string | undefined, url: string | undefined): RequestKind {
  const u = url ?? '/';
  const q = u.indexOf('?');
  const p = q < 0 ? u : u.slice(0, q);
  if (method === 'POST') {
    switch (p) {
      case '/v1/join':
        return 'join';
      case '/v1/heartbeat':
        return 'heartbeat';
      case '/v1/lease':
        return 'lease';
      case '/v1/receipt':
        return 'receipt';
      case '/v1/complete':
        return 'complete';
      case '/v1/leave':
        return 'leave';
      case '/v1/hook':
        return 'hook';
      case '/v1/bad-unit':
        return 'bad_unit';
    }
  }
  if (p.startsWith('/v1/releases/')) return p.endsWith('/manifest') ? 'manifest' : p.includes('/units/') ? 'unit' : 'other';
  if (p.startsWith('/v1/channels')) return q >= 0 && /[?&]waitMs=/.test(u) ? 'channel_wait' : 'channel';
  if (p.startsWith('/v1/streams/')) return 'stream';
  if (p.startsWith('/v1/rollouts') || p.startsWith('/ui')) return 'rollout';
  if (p === '/v1/stats' || p === '/v1/fleet') return 'stats';
  return 'other';
}

/** A member that left is not re-created by a plain heartbeat for this long (only by a join). */
export const LEFT_MEMORY_MS = 30_000;
export const MAX_LEFT_REMEMBERED = 100_000;

/** How long the server remembers members across a restart (members.json). */
export const MEMBER_MEMORY_MS = 10 * 60 * 1000;

/** Allocators are keyed "release/group" for a LAN group, "release/*name" for a wide-area group. */
export function allocatorKey(release: string, scope: { group: string } | { wide: string }): string {
  return 'wide' in scope ? `${release}/*${scope.wide}` : `${release}/${scope.group}`;
}

export function parseAllocatorKey(key: string): { release: string; scope: string; group: string; wide: boolean } {
  const [release, scope] = key.split('/');
  const wide = scope.startsWith('*');
  return { release, scope, group: wide ? scope.slice(1) : scope, wide };
}

/**
 * The origin server's state and its HTTP plumbing: connections and their caps, tokens
 * and device identity, request bodies and answers. The server is layered: this core, the
 * member registry (server-members.ts), the routes (server-routes.ts), and
 * FleetcastServer (server.ts: start, stop, the fleet view and metrics).
 */
export abstract class ServerCore {
  readonly store: ReleaseStore;
  /** The allocators, with their live members counted and their expiry deadlines in a heap (allocators.ts). */
  protected readonly groups = new Allocators();
  protected readonly http: http.Server | https.Server;
  protected readonly log: Logger;
  protected readonly now: () => number;
  protected timer: NodeJS.Timeout | null = null;
  /** How often each member was sent each unit, keyed "release/group/member/unit". */
  protected readonly fetches = new Map<string, number>();
  protected readonly memberBytes = new Map<string, number>();
  readonly heartbeatMs: number;
  readonly idleHeartbeatMs: number;
  /** The interval asked of 1.4 agents: heartbeatMs, longer when the fleet is large (updateLoad). */
  protected loadHeartbeatMs: number;
  /** The same for idle members (idleHeartbeatsPerSec), at least idleHeartbeatMs. */
  protected idleLoadHeartbeatMs: number;
  /** Several coordinators: the instances sharing the fleet's heartbeat rate (server-cluster.ts counts them). */
  protected instances = 1;
  /** Live members, all releases, as of the last timer tick. */
  protected liveMembers = 0;
  protected readonly rebuildGraceMs: number;
  /** Held channel requests (long polls), answered when the channel moves. */
  protected readonly channelWatch: ChannelWatch;
  protected startedAt = 0;
  /** "release/group" -> members seen before the restart that have not rejoined yet. */
  protected readonly awaited = new Map<string, Set<string>>();
  /**
   * "allocator key/member" -> when it left (POST /v1/leave). A heartbeat still in flight
   * when a member left must not bring it back: the ghost would be listed as the holder of
   * everything it had, and its LAN peers would wait on repairs from nobody.
   */
  protected readonly leftAt = new Map<string, number>();
  protected membersDirty = false;
  /** "release/member" -> the key of the allocator the member joined. */
  protected readonly memberKeys = new Map<string, string>();
  protected readonly dists = new Map<string, Distribution>();
  /** Derives each (release, group)'s key for MACs on LAN control packets. */
  protected secret: Buffer = Buffer.alloc(0);
  /** "release/group/member" -> what the member's on_complete hook did. */
  /** Hook results and last overheads, kept across restarts for the fleet view. */
  protected readonly memory: FleetMemory;
  protected ticks = 0;
  /** Answers sent, by HTTP status code (the metrics' code label). */
  protected readonly httpStatus = new Map<number, number>();
  /**
   * Seconds from a request's headers being parsed to its answer's last byte handed to the
   * kernel, by kind (fleetcast_server_request_duration_seconds): the server's own share of
   * a request's latency. Time a request waits in the socket before the event loop reads it
   * is in eventLoopDelay, not here.
   */
  protected readonly requestSeconds = new Map<RequestKind, Histogram>();
  /** The event-loop delay, in fixed buckets: start() and the server's tick drive it, a scrape folds it. */
  protected readonly eventLoopDelay = new EventLoopDelay();
  readonly stats: ServerStats = { unitBytesSent: 0, unitBytesSentByGroup: {}, unitRequests: 0, requests: 0, badRequests: 0, badRequestCodes: {}, unauthorized: 0, hedgedBytes: 0, relayedUnits: 0, resent: { hedged: { units: 0, bytes: 0 }, relayed: { units: 0, bytes: 0 }, stalled: { units: 0, bytes: 0 } }, limits: emptyLimitCounters(), badUnitReports: 0, foldedReceipts: 0, foldedLeases: 0, fullMaps: 0, deltaMaps: 0, originGrants: 0, loadFactor: 1 };
  /** How much longer than the member count alone says 1.4 agents beat, from how busy the loop was (load-factor.ts). */
  protected readonly loadFactor = new LoadFactor();
  protected readonly limits: typeof LIMIT_DEFAULTS;
  protected readonly connections: ConnectionCounter;
  protected readonly authThrottle: AuthThrottle;
  protected readonly identities: IdentityBindings;
  /** "release/token" -> allocator keys its members are in. */
  protected readonly tokenGroups = new Map<string, Set<string>>();
  /** "release/group/member" -> units it reported bad from this server, with counts. */
  protected readonly badUnits = new Map<string, Map<number, number>>();
  protected readonly badUnitLogged = new Map<string, number>();
  protected lastMembersWrite = -Infinity;
  /** sha256(token) -> token name. Digests, so lookups do not compare secrets byte by byte. */
  protected tokenNames = new Map<string, string>();
  /** Rollouts and the fleet page (rollout-api.ts). */
  readonly rollouts: RolloutService;
  /** Channel heads: the store's files, and the shared engine with several coordinators. */
  protected readonly channels: ChannelBook;
  /** Several coordinators: the rollouts kept in the engine. */
  protected readonly sharedRollouts?: SharedRollouts;
  /** Bodies read before their route ran (server-cluster.ts reads one to find the key's owner). */
  protected readonly bodiesRead = new WeakMap<http.IncomingMessage, Buffer>();

  constructor(protected readonly opts: ServerOptions) {
    this.store = new ReleaseStore(opts.storeDir);
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.channels = opts.cluster ? new SharedChannels(opts.storeDir, opts.cluster.engine, this.log) : new FileChannels(opts.storeDir);
    this.sharedRollouts = opts.cluster ? new SharedRollouts(opts.cluster.engine, this.log) : undefined;
    this.rollouts = new RolloutService({ storeDir: opts.storeDir, store: this.store, log: this.log, now: this.now, channels: this.channels, shared: this.sharedRollouts });
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.idleHeartbeatMs = Math.max(this.heartbeatMs, opts.idleHeartbeatMs ?? 5 * this.heartbeatMs);
    this.loadHeartbeatMs = this.heartbeatMs;
    this.idleLoadHeartbeatMs = this.idleHeartbeatMs;
    this.memory = new FleetMemory(path.join(opts.storeDir, 'fleet.json'), this.log);
    this.channelWatch = new ChannelWatch((name) => this.channels.read(name), (name) => this.rollouts.token(name));
    // An idle member beats every idleHeartbeatMs: wait for one of its beats too.
    this.rebuildGraceMs = opts.rebuildGraceMs ?? Math.max(3 * this.heartbeatMs, 2000, this.idleHeartbeatMs + this.heartbeatMs);
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
      const t0 = process.hrtime.bigint();
      res.once('finish', () => {
        this.httpStatus.set(res.statusCode, (this.httpStatus.get(res.statusCode) ?? 0) + 1);
        const kind = requestKind(req.method, req.url);
        let h = this.requestSeconds.get(kind);
        if (!h) this.requestSeconds.set(kind, (h = new Histogram()));
        h.observe(Number(process.hrtime.bigint() - t0) / 1e9);
      });
      this.handle(req, res).catch((err: unknown) => this.fail(res, err));
    };
    this.limits = { ...LIMIT_DEFAULTS, ...opts.limits };
    const L = this.limits;
    // Headers and whole requests are timed (slowloris); the check runs every second, not every 30.
    const httpOpts: http.ServerOptions = { headersTimeout: L.headersTimeoutMs, requestTimeout: L.headersTimeoutMs + L.bodyTimeoutMs, connectionsCheckingInterval: 1000, keepAliveTimeout: L.keepAliveTimeoutMs };
    this.http = opts.tls
      ? https.createServer({ ...httpOpts, cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2', ciphers: TLS_CIPHERS, honorCipherOrder: true, handshakeTimeout: L.headersTimeoutMs }, onRequest)
      : http.createServer(httpOpts, onRequest);
    this.setTokens(opts.tokens);
    this.http.keepAliveTimeout = L.keepAliveTimeoutMs;
    this.connections = new ConnectionCounter(L.maxConnections, L.maxConnectionsPerClient);
    this.authThrottle = new AuthThrottle(L.authFailuresPerMinute, L.authLogEveryMs, L.authClientsTracked);
    this.identities = new IdentityBindings(!!opts.sharedTokens, L.maxMembersPerToken);
    this.identities.setTokenNames(Object.keys(opts.tokens ?? {}));
    this.guardConnections();
  }

  /**
   * The interval for 1.4 agents by load: heartbeatMs, or as long as it takes for all live
   * members to beat about heartbeatsPerSec times a second together, stretched by the load
   * factor while the server is busy (load-factor.ts; rounded up to 100 ms, at most 60 s).
   * With several coordinators the rate is the fleet's: each of the `instances` aims at its share. Called from the timer; the count is kept by joins and
   * leaves (Allocators.members), so a tick costs O(1) here, not O(allocators).
   */
  protected updateLoad(): void {
    const n = this.groups.members;
    this.liveMembers = n;
    const rate = Math.max(1, (this.opts.heartbeatsPerSec ?? DEFAULT_HEARTBEATS_PER_SEC) / Math.max(1, this.instances));
    // The loop's busy share over the tick just past, as the event-loop delay's tick (just before this one) measured it.
    const f = (this.stats.loadFactor = this.loadFactor.update(this.eventLoopDelay.busy));
    this.loadHeartbeatMs = Math.min(60_000, Math.max(this.heartbeatMs, Math.ceil((n * 1000 * f) / rate / 100) * 100));
    // Idle members are counted with the others: an upper bound.
    const idleRate = Math.max(1, (this.opts.idleHeartbeatsPerSec ?? DEFAULT_IDLE_HEARTBEATS_PER_SEC) / Math.max(1, this.instances));
    this.idleLoadHeartbeatMs = Math.min(MAX_IDLE_HEARTBEAT_MS, Math.max(this.idleHeartbeatMs, this.loadHeartbeatMs, Math.ceil((n * 1000) / idleRate / 100) * 100));
  }

  /** Every request: the routes (server-routes.ts). */
  protected abstract handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void>;

  protected limitHit(name: LimitName): void {
    this.stats.limits[name]++;
  }

  /** Connections in total and per client address are capped; over a cap, the socket is closed at once. */
  protected guardConnections(): void {
    // TLS servers see the TCP connection before the handshake: count it there.
    this.http.on('connection', (socket: Socket) => {
      const client = socket.remoteAddress ?? '?';
      const r = this.connections.open(client);
      if (r !== 'ok') {
        this.limitHit(r);
        socket.destroy();
        return;
      }
      socket.once('close', () => this.connections.close(client));
    });
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      // Node answers 408 when headers (or the whole request) take too long.
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') this.limitHit('header_timeout');
      if (socket.writable && !socket.destroyed) socket.end(err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n' : 'HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
      else socket.destroy();
    });
  }

  /** Replace the allowed tokens (SIGHUP reload); undefined or empty lets anyone in. */
  setTokens(tokens: Record<string, string> | undefined): void {
    this.tokenNames = new Map(Object.entries(tokens ?? {}).map(([name, tok]) => [tokenDigest(tok), name]));
    this.identities?.setTokenNames(Object.keys(tokens ?? {}));
  }

  /**
   * The request's token name; null when the server has no tokens (anyone may). Sends
   * 401 (or 429 to a client that failed too often this minute) and returns false when
   * the token is missing or unknown. Failures are logged once a minute per client.
   */
  protected authenticate(req: http.IncomingMessage, res: http.ServerResponse): string | null | false {
    if (this.tokenNames.size === 0) return null;
    const client = req.socket.remoteAddress ?? '?';
    const now = this.now();
    if (this.authThrottle.blocked(client, now)) {
      // Every request from a client past its failures is refused, valid token or not:
      // otherwise the answer would still tell a guess right from wrong.
      this.limitHit('auth_throttled');
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '60', connection: 'close' });
      res.end('{"error":"TOO_MANY_AUTH_FAILURES"}');
      req.resume();
      return false;
    }
    // A browser on the fleet page (/ui/) sends the token as the password of HTTP Basic auth.
    const m = /^Bearer ([\x21-\x7e]{1,512})$/.exec(req.headers.authorization ?? '') ?? basicPassword(req.headers.authorization);
    const name = m ? this.tokenNames.get(tokenDigest(m[1])) : undefined;
    if (name !== undefined) return name;
    this.stats.unauthorized++;
    const n = this.authThrottle.fail(client, now);
    if (n > 0) this.log.warn(`${client}: ${n} request(s) with a ${m ? 'wrong' : 'missing'} token (logged at most once a minute per client; ${this.limits.authFailuresPerMinute} a minute are allowed, then 429)`);
    const ui = (req.url ?? '').startsWith('/ui');
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': ui ? 'Basic realm="fleetcast", charset="UTF-8"' : 'Bearer' });
    res.end('{"error":"UNAUTHORIZED"}');
    req.resume();
    return false;
  }

  /** Device identity: a member id is usable only with the token that first used it. */
  protected authorize(ref: MemberRef, token: string | null): void {
    if (token === null) return;
    const r = this.identities.bind(token, ref.member);
    if (!r.ok) {
      this.limitHit(r.limit);
      throw new HttpError(403, 'NOT_YOUR_MEMBER', r.message);
    }
  }

  /** A small body (every route but heartbeats): at most BODY_BASE_BYTES. */
  protected async body<T>(req: http.IncomingMessage, schema: Record<string, unknown>): Promise<T> {
    return (await this.bodyWithSize<T>(req, schema, maxBodyBytes(0))).value;
  }

  /**
   * A body's bytes, at most `maxBytes` (declared or sent), within bodyTimeoutMs of the
   * headers; each refusal counts against its limit. A body already read (to route it to
   * another coordinator) is taken as it was read.
   */
  protected async readBody(req: http.IncomingMessage, maxBytes: number): Promise<Buffer> {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > maxBytes) {
      this.limitHit('body_too_large');
      req.resume();
      throw new HttpError(413, 'TOO_LARGE', `body larger than ${maxBytes} bytes`);
    }
    const early = this.bodiesRead.get(req);
    if (early) {
      if (early.length > maxBytes) {
        this.limitHit('body_too_large');
        throw new HttpError(413, 'TOO_LARGE', `body larger than ${maxBytes} bytes`);
      }
      return early;
    }
    const chunks: Buffer[] = [];
    let n = 0;
    const timer = setTimeout(() => {
      this.limitHit('body_timeout');
      req.destroy(new Error('body timeout'));
    }, this.limits.bodyTimeoutMs);
    try {
      for await (const c of req as AsyncIterable<Buffer>) {
        n += c.length;
        if (n > maxBytes) {
          this.limitHit('body_too_large');
          throw new HttpError(413, 'TOO_LARGE', `body larger than ${maxBytes} bytes`);
        }
        chunks.push(c);
      }
    } finally {
      clearTimeout(timer);
    }
    return Buffer.concat(chunks);
  }

  /**
   * Read and parse a body of at most `maxBytes`, within bodyTimeoutMs of the headers;
   * nesting is checked before JSON.parse runs. Each refusal counts against its limit.
   */
  protected async bodyWithSize<T>(req: http.IncomingMessage, schema: Record<string, unknown>, maxBytes: number): Promise<{ value: T; bytes: number }> {
    const raw = await this.readBody(req, maxBytes);
    if (jsonDepthExceeds(raw, MAX_JSON_DEPTH)) this.limitHit('json_too_deep');
    const p = parseBody<T>(raw, schema as never);
    if (!p.ok) throw new HttpError(400, 'BAD_BODY', p.error);
    return { value: p.value, bytes: raw.length };
  }

  /** `v` as JSON; `raw` (`"name":value` members, already JSON) added to the object when given. */
  protected json(res: http.ServerResponse, status: number, v: unknown, raw?: string): void {
    const s = JSON.stringify(v);
    const body = Buffer.from(raw === undefined ? s : s.length > 2 ? `${s.slice(0, -1)},${raw}}` : `{${raw}}`);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  }

  protected fail(res: http.ServerResponse, err: unknown): void {
    if (err instanceof HttpError) {
      this.stats.badRequests++;
      const k = `${err.status} ${err.code}`;
      this.stats.badRequestCodes[k] = (this.stats.badRequestCodes[k] ?? 0) + 1;
      if (!res.headersSent) return this.json(res, err.status, { error: err.code, message: err.message });
    } else {
      this.log.error(`internal error: ${(err as Error)?.stack ?? String(err)}`);
      if (!res.headersSent) return this.json(res, 500, { error: 'INTERNAL', message: 'internal server error' });
    }
    res.destroy();
  }
}
