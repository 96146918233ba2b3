import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeAtomic } from '../storage/files';
import * as http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import * as https from 'node:https';
import { deriveGroupKey } from '../wire/auth';
import { AddressInfo } from 'node:net';
import { ReleaseStore, StoredRelease } from '../release/store';
import { unitLength } from '../release/manifest';
import { BadUnitBody, CompleteBody, HeartbeatBody, HookBody, jsonDepthExceeds, LeaseBody, MAX_BODY_BYTES, MAX_JSON_DEPTH, maxBodyBytes, MemberRef, parseBody, ReceiptBody, SCHEMAS } from '../wire/http-bodies';
import { bitmapBytes } from '../util/bits';
import { AllocatorOptions, GroupAllocator, RESEND_REASONS, ResendReason } from './allocator';
import { Logger, silentLogger } from '../util/log';
import { listChannels, readChannel } from '../release/channels';
import { readContentKey } from '../release/content-crypto';
import { Distribution, Policy, readDistribution, StartPolicy } from '../release/distribution';
import { MetricsRegistry, processMetrics } from '../util/metrics';
import { FleetMemory } from './fleet-memory';
import { ChannelWatch, MAX_CHANNEL_WAIT_MS } from './channel-watch';
import { ApiError, RolloutService } from './rollout-api';
import { AuthThrottle, ConnectionCounter, emptyLimitCounters, IdentityBindings, LIMIT_DEFAULTS, LimitName } from './guard';
import { isReleaseId, MAX_UNITS } from '../release/manifest';
import type { Socket } from 'node:net';

/**
 * TLS 1.2 suites with forward secrecy (ECDHE) and AEAD (GCM, ChaCha20-Poly1305) only:
 * no RSA key exchange, CBC, SHA-1, CCM8 or ARIA (issue 13, sslscan). TLS 1.3 suites are
 * all forward-secret AEAD. After Mozilla's "intermediate" server configuration.
 */
export const TLS_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * The origin server's HTTP API (docs/protocol.md, "HTTP API"). Allocation state
 * lives in one GroupAllocator per (release, group) and is soft: it is rebuilt from
 * the agents' heartbeats after a restart.
 */
export interface ServerOptions {
  storeDir: string;
  host: string;
  port: number;
  heartbeatMs?: number;
  /**
   * The heartbeat interval asked of a member with nothing left to do: it holds the whole
   * release and so does every member of its group (allocator.idle()). Default 5 x heartbeatMs.
   */
  idleHeartbeatMs?: number;
  /**
   * After a restart, a group's leases wait until every member seen shortly before
   * it has rejoined and reported what it holds (soft state), but at most this long.
   * Default max(3 heartbeats, 2 s, an idle heartbeat + a heartbeat). A fresh store has
   * nobody to wait for.
   */
  rebuildGraceMs?: number;
  allocator?: Partial<Omit<AllocatorOptions, 'unitCount' | 'unitBytes'>>;
  logger?: Logger;
  /** Injected clock, for tests. */
  now?: () => number;
  /** Serve HTTPS with this certificate chain and key (PEM); plain HTTP without. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Bearer tokens allowed in, by name (per fleet or per device). None: anyone may. */
  tokens?: Record<string, string>;
  /**
   * Let one token serve many member ids (a per-fleet token). Off by default: a token
   * names one device, and the first member id it uses is the only one it may use.
   */
  sharedTokens?: boolean;
  /** Override the limits of LIMIT_DEFAULTS (tests, unusual fleets). */
  limits?: Partial<typeof LIMIT_DEFAULTS>;
  /** Units a release may have to be served (at most MAX_UNITS). */
  maxUnitsPerRelease?: number;
  /** Where `publish --encrypt` put the content keys; released only to token holders. */
  contentKeysDir?: string;
  /** Defaults for releases without their own distribution.json. */
  policy?: Policy;
  start?: StartPolicy;
}

export interface ServerStats {
  /** Unit bytes written to agents, all releases and groups. */
  unitBytesSent: number;
  unitBytesSentByGroup: Record<string, number>;
  unitRequests: number;
  requests: number;
  badRequests: number;
  /** Requests refused for a missing or unknown token. */
  unauthorized: number;
  /** Unit bytes sent under hedge leases (a second member fetching a straggler's unit). */
  hedgedBytes: number;
  /** Units leased again because a LAN group could not get them from its wide-area group. */
  relayedUnits: number;
  /**
   * Every re-send from the origin, by reason: units sent again to a group that already
   * held or leased them, and their bytes (docs/wide-area.md, "Re-sends").
   */
  resent: Record<ResendReason, { units: number; bytes: number }>;
  /** Times each limit refused or cut something (docs/security.md, "Exhaustion"). */
  limits: Record<LimitName, number>;
  /** Units agents reported as failing verification again and again from this server. */
  badUnitReports: number;
}

/** Every this many timer ticks (half a heartbeat each), overheads go to the fleet memory. */
const OVERHEAD_NOTE_TICKS = 10;

/** A member that left is not re-created by a plain heartbeat for this long (only by a join). */
const LEFT_MEMORY_MS = 30_000;
const MAX_LEFT_REMEMBERED = 100_000;

/** How long the server remembers members across a restart (members.json). */
const MEMBER_MEMORY_MS = 10 * 60 * 1000;

/** Allocators are keyed "release/group" for a LAN group, "release/*name" for a wide-area group. */
function allocatorKey(release: string, scope: { group: string } | { wide: string }): string {
  return 'wide' in scope ? `${release}/*${scope.wide}` : `${release}/${scope.group}`;
}

function parseAllocatorKey(key: string): { release: string; scope: string; group: string; wide: boolean } {
  const [release, scope] = key.split('/');
  const wide = scope.startsWith('*');
  return { release, scope, group: wide ? scope.slice(1) : scope, wide };
}

/** The password of an HTTP Basic `authorization` header (the user name is ignored), as a match-like [_, token]. */
function basicPassword(h: string | undefined): [string, string] | null {
  const m = /^Basic ([A-Za-z0-9+/]{1,1400}={0,2})$/.exec(h ?? '');
  if (!m) return null;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const pw = text.slice(text.indexOf(':') + 1);
  return text.includes(':') && /^[\x21-\x7e]{1,512}$/.test(pw) ? [h!, pw] : null;
}

function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('base64');
}

/** 32 random bytes kept in `<store>/secret` (mode 0600), made on first start. */
async function loadOrCreateSecret(file: string): Promise<Buffer> {
  try {
    const b = await fs.readFile(file);
    if (b.length === 32) return b;
  } catch {
    /* first start */
  }
  const s = randomBytes(32);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file + '.tmp', s, { mode: 0o600 });
  await fs.rename(file + '.tmp', file);
  return s;
}

/**
 * One byte range of a `len`-byte representation (RFC 9110 §14.1.2): `a-b`, `a-`, or a
 * suffix `-n` (the last n bytes). Null when it is malformed or unsatisfiable (416).
 */
export function parseRange(header: string, len: number): { start: number; end: number } | null {
  const r = /^bytes=(\d{0,15})-(\d{0,15})$/.exec(header);
  if (!r || (r[1] === '' && r[2] === '')) return null;
  if (r[1] === '') {
    const n = Number(r[2]);
    if (n === 0 || len === 0) return null;
    return { start: Math.max(0, len - n), end: len - 1 };
  }
  const start = Number(r[1]);
  if (start >= len) return null;
  if (r[2] === '') return { start, end: len - 1 };
  const end = Number(r[2]);
  if (end < start) return null;
  return { start, end: Math.min(len - 1, end) };
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export class FleetcastServer {
  readonly store: ReleaseStore;
  private readonly groups = new Map<string, GroupAllocator>();
  private readonly http: http.Server | https.Server;
  private readonly log: Logger;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | null = null;
  /** How often each member was sent each unit, keyed "release/group/member/unit". */
  private readonly fetches = new Map<string, number>();
  private readonly memberBytes = new Map<string, number>();
  readonly heartbeatMs: number;
  readonly idleHeartbeatMs: number;
  private readonly rebuildGraceMs: number;
  /** Held channel requests (long polls), answered when the channel moves. */
  private readonly channelWatch: ChannelWatch;
  private startedAt = 0;
  /** "release/group" -> members seen before the restart that have not rejoined yet. */
  private readonly awaited = new Map<string, Set<string>>();
  /**
   * "allocator key/member" -> when it left (POST /v1/leave). A heartbeat still in flight
   * when a member left must not bring it back: the ghost would be listed as the holder of
   * everything it had, and its LAN peers would wait on repairs from nobody.
   */
  private readonly leftAt = new Map<string, number>();
  private membersDirty = false;
  /** "release/member" -> the key of the allocator the member joined. */
  private readonly memberKeys = new Map<string, string>();
  private readonly dists = new Map<string, Distribution>();
  /** Derives each (release, group)'s key for MACs on LAN control packets. */
  private secret: Buffer = Buffer.alloc(0);
  /** "release/group/member" -> what the member's on_complete hook did. */
  /** Hook results and last overheads, kept across restarts for the fleet view. */
  private readonly memory: FleetMemory;
  private ticks = 0;
  /** Answers sent, by HTTP status code (the metrics' code label). */
  private readonly httpStatus = new Map<number, number>();
  readonly stats: ServerStats = { unitBytesSent: 0, unitBytesSentByGroup: {}, unitRequests: 0, requests: 0, badRequests: 0, unauthorized: 0, hedgedBytes: 0, relayedUnits: 0, resent: { hedged: { units: 0, bytes: 0 }, relayed: { units: 0, bytes: 0 }, stalled: { units: 0, bytes: 0 } }, limits: emptyLimitCounters(), badUnitReports: 0 };
  private readonly limits: typeof LIMIT_DEFAULTS;
  private readonly connections: ConnectionCounter;
  private readonly authThrottle: AuthThrottle;
  private readonly identities: IdentityBindings;
  /** "release/token" -> allocator keys its members are in. */
  private readonly tokenGroups = new Map<string, Set<string>>();
  /** "release/group/member" -> units it reported bad from this server, with counts. */
  private readonly badUnits = new Map<string, Map<number, number>>();
  private readonly badUnitLogged = new Map<string, number>();
  private lastMembersWrite = -Infinity;
  /** sha256(token) -> token name. Digests, so lookups do not compare secrets byte by byte. */
  private tokenNames = new Map<string, string>();
  /** Rollouts and the fleet page (rollout-api.ts). */
  readonly rollouts: RolloutService;

  constructor(private readonly opts: ServerOptions) {
    this.store = new ReleaseStore(opts.storeDir);
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.rollouts = new RolloutService({ storeDir: opts.storeDir, store: this.store, log: this.log, now: this.now });
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.idleHeartbeatMs = Math.max(this.heartbeatMs, opts.idleHeartbeatMs ?? 5 * this.heartbeatMs);
    this.memory = new FleetMemory(path.join(opts.storeDir, 'fleet.json'), this.log);
    this.channelWatch = new ChannelWatch(opts.storeDir);
    // An idle member beats every idleHeartbeatMs: wait for one of its beats too.
    this.rebuildGraceMs = opts.rebuildGraceMs ?? Math.max(3 * this.heartbeatMs, 2000, this.idleHeartbeatMs + this.heartbeatMs);
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
      res.once('finish', () => this.httpStatus.set(res.statusCode, (this.httpStatus.get(res.statusCode) ?? 0) + 1));
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

  private limitHit(name: LimitName): void {
    this.stats.limits[name]++;
  }

  /** Connections in total and per client address are capped; over a cap, the socket is closed at once. */
  private guardConnections(): void {
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

  async start(): Promise<{ host: string; port: number; url: string }> {
    this.secret = await loadOrCreateSecret(path.join(this.opts.storeDir, 'secret'));
    await this.store.load();
    for (const p of this.store.problems) this.log.warn(`store: ${p}`);
    await this.loadMembers();
    await this.memory.load((id) => this.store.peek(id) !== undefined);
    await this.loadIdentities();
    await this.rollouts.load();
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(this.opts.port, this.opts.host, () => {
        this.http.off('error', reject);
        resolve();
      });
    });
    this.startedAt = this.now();
    this.timer = setInterval(() => {
      this.expire();
      void this.saveState();
      if (++this.ticks % OVERHEAD_NOTE_TICKS === 0) this.noteOverheads();
      void this.memory.save();
    }, Math.max(100, Math.floor(this.heartbeatMs / 2)));
    this.timer.unref();
    const a = this.http.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return { host: a.address, port: a.port, url: `${this.opts.tls ? 'https' : 'http'}://${host}:${a.port}` };
  }

  /** Members seen in the last MEMBER_MEMORY_MS before the file was written are awaited after a restart. */
  private get membersFile(): string {
    return path.join(this.opts.storeDir, 'members.json');
  }

  private get identitiesFile(): string {
    return path.join(this.opts.storeDir, 'identities.json');
  }

  /** Member id -> token bindings survive a restart, so a restart opens no window to claim ids. */
  private async loadIdentities(): Promise<void> {
    let raw: string;
    try {
      raw = await fs.readFile(this.identitiesFile, 'utf8');
    } catch {
      return;
    }
    try {
      this.identities.load(JSON.parse(raw), this.limits.maxMembersPerRelease * 16);
    } catch (err) {
      this.log.warn(`ignoring ${this.identitiesFile}: ${(err as Error).message}`);
    }
  }

  /**
   * members.json and identities.json, at most once per membersWriteMinMs (a storm of
   * joins must not turn into a storm of rewrites); `force` on stop.
   */
  private async saveState(force = false): Promise<void> {
    if (!this.membersDirty && !this.identities.dirty) return;
    const now = this.now();
    if (!force && now - this.lastMembersWrite < this.limits.membersWriteMinMs) {
      this.limitHit('members_file_writes_deferred');
      return;
    }
    this.lastMembersWrite = now;
    if (this.identities.dirty) {
      this.identities.dirty = false;
      await writeAtomic(this.identitiesFile, Buffer.from(JSON.stringify(this.identities.toJSON()))).catch((err: Error) => this.log.warn(`cannot save ${this.identitiesFile}: ${err.message}`));
    }
    await this.saveMembers();
  }

  private async loadMembers(): Promise<void> {
    let raw: string;
    try {
      raw = await fs.readFile(this.membersFile, 'utf8');
    } catch {
      return; // fresh store
    }
    try {
      const j = JSON.parse(raw) as { savedAt?: unknown; groups?: unknown };
      if (typeof j.savedAt !== 'number' || typeof j.groups !== 'object' || j.groups === null) throw new Error('bad shape');
      if (this.now() - j.savedAt > MEMBER_MEMORY_MS) return; // too old: those agents gave up or moved on
      for (const [key, ids] of Object.entries(j.groups as Record<string, unknown>)) {
        if (!Array.isArray(ids)) continue;
        const set = new Set(ids.filter((x): x is string => typeof x === 'string').slice(0, 100_000));
        if (set.size) this.awaited.set(key, set);
      }
      if (this.awaited.size) this.log.info(`rebuilding allocation: waiting for ${[...this.awaited.values()].reduce((a, s) => a + s.size, 0)} member(s) seen before the restart`);
    } catch (err) {
      this.log.warn(`ignoring ${this.membersFile}: ${(err as Error).message}`);
    }
  }

  private async saveMembers(): Promise<void> {
    if (!this.membersDirty) return;
    this.membersDirty = false;
    const groups: Record<string, string[]> = {};
    const now = this.now();
    for (const [key, g] of this.groups) groups[key] = g.memberViews(now).map((m) => m.id);
    try {
      await writeAtomic(this.membersFile, Buffer.from(JSON.stringify({ savedAt: now, groups })));
    } catch (err) {
      this.log.warn(`cannot save ${this.membersFile}: ${(err as Error).message}`);
    }
  }

  /** ms a lease request in `key` must still wait for the rebuild, or 0. */
  private rebuildWait(key: string, now: number): number {
    const waiting = this.awaited.get(key);
    if (!waiting || waiting.size === 0) return 0;
    const left = this.startedAt + this.rebuildGraceMs - now;
    if (left <= 0) {
      this.awaited.delete(key);
      return 0;
    }
    return Math.min(left, this.heartbeatMs);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.channelWatch.close();
    await this.saveState(true);
    this.noteOverheads();
    await this.memory.save();
    await this.rollouts.stop();
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
  }

  private expire(): void {
    const now = this.now();
    for (const [key, g] of this.groups) {
      for (const id of g.expire(now)) {
        this.membersDirty = true;
        this.log.info(`${key}: member ${id} stopped heartbeating; its leases go to others`);
      }
    }
  }

  /**
   * The allocator a member belongs to. Policy `wide`: one per (release, wide-area
   * group), keyed "release/*wide"; `group` and `representative`: one per (release, LAN
   * group). A heartbeat names the wide-area group; other requests find the member's
   * allocator from its last heartbeat.
   */
  private async group(ref: MemberRef, heartbeat?: { wideGroup?: string }, token: string | null = null): Promise<{ rel: StoredRelease; g: GroupAllocator; key: string; dist: Distribution }> {
    const rel = await this.store.get(ref.release);
    if (!rel) throw new HttpError(404, 'NO_RELEASE', `release ${ref.release} is not on this server`);
    const maxUnits = Math.min(MAX_UNITS, this.opts.maxUnitsPerRelease ?? MAX_UNITS);
    if (rel.manifest.unitCount > maxUnits) {
      this.limitHit('units_per_release');
      throw new HttpError(413, 'TOO_MANY_UNITS', `release ${ref.release} has ${rel.manifest.unitCount} units; this server serves at most ${maxUnits} (republish with a larger --unit-size)`);
    }
    const dist = await this.distribution(rel);
    const mk = `${ref.release}/${ref.member}`;
    let key: string;
    if (heartbeat) {
      key = allocatorKey(ref.release, dist.policy === 'wide' && heartbeat.wideGroup ? { wide: heartbeat.wideGroup } : { group: ref.group });
      this.admit(ref, key, token);
      const prev = this.memberKeys.get(mk);
      // A member is in one group per release: moving leaves the old one (and its key).
      if (prev !== undefined && prev !== key) this.groups.get(prev)?.leave(ref.member);
      this.memberKeys.set(mk, key);
    } else key = this.memberKeys.get(mk) ?? allocatorKey(ref.release, { group: ref.group });
    let g = this.groups.get(key);
    if (!g) {
      if (!heartbeat) throw new HttpError(409, 'NOT_JOINED', `member ${ref.member} has not joined group ${ref.group} (or timed out): send a heartbeat first`);
      const m = rel.manifest;
      g = new GroupAllocator({
        ...this.opts.allocator,
        unitCount: m.unitCount,
        unitBytes: (u) => unitLength(m, u),
        representativeOnly: dist.policy === 'representative',
        deferredStart: dist.start === 'all-fetched',
      });
      this.groups.set(key, g);
    }
    return { rel, g, key, dist };
  }

  /**
   * Caps on what heartbeats can make the server hold: groups per release, live members
   * per release, and groups per token. Throws 429 naming the limit.
   */
  private admit(ref: MemberRef, key: string, token: string | null): void {
    const L = this.limits;
    const g = this.groups.get(key);
    if (g?.hasMember(ref.member)) return;
    let groups = 0;
    let members = 0;
    for (const [k, a] of this.groups) {
      if (!k.startsWith(ref.release + '/')) continue;
      groups++;
      members += a.memberCount();
    }
    if (!g && groups >= L.maxGroupsPerRelease) groups -= this.reclaimEmptyGroups(ref.release);
    if (!g && groups >= L.maxGroupsPerRelease) {
      this.limitHit('groups_per_release');
      throw new HttpError(429, 'TOO_MANY_GROUPS', `release ${ref.release} has ${groups} groups, the most this server keeps for one release`);
    }
    const prev = this.memberKeys.get(`${ref.release}/${ref.member}`);
    const moving = prev !== undefined && !!this.groups.get(prev)?.hasMember(ref.member);
    if (members >= L.maxMembersPerRelease && !moving) {
      this.limitHit('members_per_release');
      throw new HttpError(429, 'TOO_MANY_MEMBERS', `release ${ref.release} has ${members} live members, the most this server keeps for one release`);
    }
    if (token === null) return;
    const tk = `${ref.release}/${token}`;
    let mine = this.tokenGroups.get(tk);
    if (!mine) this.tokenGroups.set(tk, (mine = new Set()));
    if (mine.has(key)) return;
    if (mine.size >= L.maxGroupsPerToken) {
      for (const k of mine) if (!this.groups.get(k)?.memberCount()) mine.delete(k);
      if (mine.size >= L.maxGroupsPerToken) {
        this.limitHit('groups_per_token');
        throw new HttpError(429, 'TOO_MANY_GROUPS', `token ${token} has members in ${mine.size} groups of release ${ref.release}, the most one token may`);
      }
    }
    mine.add(key);
  }

  /**
   * At the group cap, groups with no live member go (their soft state with them): a
   * member moving through new groups, or groups whose agents have all left, must not
   * use up the release's groups. Groups still awaited after a restart stay.
   */
  private reclaimEmptyGroups(release: string): number {
    let n = 0;
    for (const [k, a] of this.groups) {
      if (!k.startsWith(release + '/') || a.memberCount() > 0 || this.awaited.get(k)?.size) continue;
      this.groups.delete(k);
      n++;
    }
    this.stats.limits.empty_groups_reclaimed += n;
    return n;
  }

  /** The release's distribution policy: `<store>/releases/<id>/distribution.json`, else the server's defaults. */
  private async distribution(rel: StoredRelease): Promise<Distribution> {
    const cached = this.dists.get(rel.manifest.id);
    if (cached) return cached;
    const d = await readDistribution(path.dirname(rel.dataPath)).catch(() => null);
    const dist: Distribution = { policy: d?.policy ?? this.opts.policy ?? 'wide', start: d?.start ?? this.opts.start ?? 'immediate' };
    this.dists.set(rel.manifest.id, dist);
    return dist;
  }

  private member(g: GroupAllocator, ref: MemberRef): void {
    if (!g.hasMember(ref.member)) throw new HttpError(409, 'NOT_JOINED', `member ${ref.member} has not joined group ${ref.group} (or timed out): send a heartbeat first`);
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
  private authenticate(req: http.IncomingMessage, res: http.ServerResponse): string | null | false {
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
  private authorize(ref: MemberRef, token: string | null): void {
    if (token === null) return;
    const r = this.identities.bind(token, ref.member);
    if (!r.ok) {
      this.limitHit(r.limit);
      throw new HttpError(403, 'NOT_YOUR_MEMBER', r.message);
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.stats.requests++;
    const token = this.authenticate(req, res);
    if (token === false) return;
    const url = new URL(req.url ?? '/', 'http://x');
    try {
      if (await this.rollouts.handle(req, res, url, (member) => this.authorize({ release: '', group: '', member }, token))) return;
    } catch (err) {
      throw err instanceof ApiError ? new HttpError(err.status, err.code, err.message) : err;
    }
    const parts = url.pathname.split('/').filter(Boolean);
    const route = `${req.method} /${parts.map((p, i) => ((i === 2 && (parts[1] === 'releases' || parts[1] === 'channels')) || (i === 4 && parts[1] === 'releases') ? ':' : p)).join('/')}`;
    switch (route) {
      case 'GET /v1/releases':
        return this.json(res, 200, { releases: this.store.list().map((r) => ({ id: r.manifest.id, name: r.manifest.name, size: r.manifest.size, units: r.manifest.unitCount })) });
      case 'GET /v1/releases/:/manifest': {
        const rel = await this.store.get(parts[2]);
        if (!rel) throw new HttpError(404, 'NO_RELEASE', `release ${parts[2]} is not on this server`);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': rel.manifest.raw.length });
        res.end(rel.manifest.raw);
        return;
      }
      case 'GET /v1/releases/:/key': {
        const rel = await this.store.get(parts[2]);
        if (!rel) throw new HttpError(404, 'NO_RELEASE', `release ${parts[2]} is not on this server`);
        if (!rel.manifest.enc) throw new HttpError(404, 'NOT_ENCRYPTED', 'this release is not encrypted');
        if (this.tokenNames.size === 0) throw new HttpError(403, 'NO_AUTH', 'content keys go only to agents with a token, and this server has no tokens configured');
        const key = this.opts.contentKeysDir ? await readContentKey(this.opts.contentKeysDir, rel.manifest.id) : null;
        if (!key) throw new HttpError(503, 'NO_KEY', 'this server does not hold the key of that release (content_keys)');
        return this.json(res, 200, { key: key.toString('hex') });
      }
      case 'GET /v1/releases/:/units/:':
        return this.serveUnit(req, res, parts[2], parts[4], url.searchParams, token);
      case 'POST /v1/join':
      case 'POST /v1/heartbeat': {
        const { value: b, bytes } = await this.bodyWithSize<HeartbeatBody>(req, SCHEMAS.heartbeat, MAX_BODY_BYTES);
        this.authorize(b, token);
        const { rel, g, key, dist } = await this.group(b, { wideGroup: b.wideGroup }, token);
        if (bytes > maxBodyBytes(rel.manifest.unitCount)) {
          this.limitHit('body_too_large');
          throw new HttpError(413, 'TOO_LARGE', `body larger than ${maxBodyBytes(rel.manifest.unitCount)} bytes, the most a heartbeat for this release needs`);
        }
        let have: Uint8Array | null = null;
        if (b.have !== undefined) {
          have = Buffer.from(b.have, 'base64');
          if (have.length !== bitmapBytes(rel.manifest.unitCount)) throw new HttpError(400, 'BAD_BODY', `have must be ${bitmapBytes(rel.manifest.unitCount)} bytes for this release`);
        }
        const now = this.now();
        const isNew = !g.hasMember(b.member);
        const left = this.leftAt.get(`${key}/${b.member}`);
        if (left !== undefined && now - left < LEFT_MEMORY_MS) {
          if (route === 'POST /v1/heartbeat') throw new HttpError(409, 'NOT_JOINED', `member ${b.member} left this group; send join to come back`);
          this.leftAt.delete(`${key}/${b.member}`);
        }
        if (route === 'POST /v1/join') g.restart(b.member);
        if (isNew) this.membersDirty = true;
        this.awaited.get(key)?.delete(b.member);
        g.heartbeat(b.member, now, {
          have,
          address: b.address ?? req.socket.remoteAddress ?? null,
          fetching: b.fetching,
          fetchingBytes: b.fetchingBytes,
          copying: b.copying,
          lanGroup: b.group,
          dataPort: b.dataPort ?? null,
          forwarded: b.forwarded,
          lanBytes: b.lanBytes,
        });
        const scope = parseAllocatorKey(key);
        if (isNew) {
          this.log.info(`${b.release.slice(0, 8)}/${b.group}: member ${b.member} joined${scope.wide ? ` (wide-area group ${scope.group})` : ''}`);
          // Its overhead from before a restart ranks and weights it until it is measured again.
          const before = this.memory.overhead(`${b.release}/${scope.group}/${b.member}`);
          if (before !== undefined) g.rememberOverhead(b.member, before);
        }
        // Fast while there is anything to fetch or copy in the group, slow once all is done.
        const heartbeatMs = g.idle(b.member) && !b.fetching?.length && !b.copying ? this.idleHeartbeatMs : this.heartbeatMs;
        g.setHeartbeatInterval(b.member, heartbeatMs);
        const map = g.map(now);
        return this.json(res, 200, {
          heartbeatMs,
          // One key per allocator: every member of a wide-area group shares it.
          groupKey: deriveGroupKey(this.secret, b.release, scope.scope).toString('base64'),
          policy: dist.policy,
          start: dist.start,
          // all-fetched: LAN exchange waits until every unit is held by some member.
          lanStart: dist.start === 'immediate' || map.allHeld,
          // Gateways move: members learn the new copy destinations within a heartbeat.
          copyTo: dist.policy === 'wide' ? this.copyDestinations(g, b.member, now) : [],
          ...map,
        });
      }
      case 'POST /v1/lease': {
        const b = await this.body<LeaseBody>(req, SCHEMAS.lease);
        this.authorize(b, token);
        const { g, key, dist } = await this.group(b);
        this.member(g, b);
        const now = this.now();
        const wait = this.rebuildWait(key, now);
        if (wait > 0) return this.json(res, 200, { units: [], retryAfterMs: wait, exhausted: false, copyTo: [] });
        if (b.reason !== undefined && b.reason !== 'relayed' && b.reason !== 'stalled') throw new HttpError(400, 'BAD_BODY', `reason must be "relayed" or "stalled", not "${b.reason}"`);
        const before = { ...g.resentUnits };
        const grant = b.want?.length ? g.relay(b.member, b.want, now, b.reason ?? 'relayed') : g.lease(b.member, now);
        if (grant.relayed?.length) this.stats.relayedUnits += grant.relayed.length;
        for (const r of RESEND_REASONS) this.stats.resent[r].units += g.resentUnits[r] - before[r];
        return this.json(res, 200, { ...grant, copyTo: dist.policy === 'wide' ? this.copyDestinations(g, b.member, now) : [] });
      }
      case 'POST /v1/receipt': {
        const b = await this.body<ReceiptBody>(req, SCHEMAS.receipt);
        this.authorize(b, token);
        const { rel, g } = await this.group(b);
        this.member(g, b);
        if (b.unit >= rel.manifest.unitCount) throw new HttpError(400, 'BAD_UNIT', `unit ${b.unit} is out of range (release has ${rel.manifest.unitCount})`);
        g.receipt(b.member, b.unit, this.now());
        return this.json(res, 200, { ok: true });
      }
      case 'POST /v1/complete': {
        const b = await this.body<CompleteBody>(req, SCHEMAS.complete);
        this.authorize(b, token);
        const { rel, g } = await this.group(b);
        this.member(g, b);
        if (b.sha256 !== rel.manifest.sha256) throw new HttpError(409, 'WRONG_HASH', 'sha256 does not match the release');
        g.markComplete(b.member);
        this.log.info(`${b.release.slice(0, 8)}/${b.group}: member ${b.member} completed`);
        return this.json(res, 200, { ok: true });
      }
      case 'POST /v1/leave': {
        const b = await this.body<MemberRef>(req, SCHEMAS.leave);
        this.authorize(b, token);
        const { g, key } = await this.group(b);
        g.leave(b.member);
        const now = this.now();
        if (this.leftAt.size >= MAX_LEFT_REMEMBERED) for (const [k, at] of this.leftAt) if (now - at >= LEFT_MEMORY_MS) this.leftAt.delete(k);
        if (this.leftAt.size < MAX_LEFT_REMEMBERED) this.leftAt.set(`${key}/${b.member}`, now);
        this.membersDirty = true;
        return this.json(res, 200, { ok: true });
      }
      case 'GET /v1/channels':
        return this.json(res, 200, { channels: await listChannels(this.opts.storeDir) });
      case 'GET /v1/channels/:':
        return this.serveChannel(res, parts[2], url.searchParams);
      case 'POST /v1/hook': {
        const b = await this.body<HookBody>(req, SCHEMAS.hook);
        this.authorize(b, token);
        const { g } = await this.group(b);
        this.member(g, b);
        this.memory.setHook(`${b.release}/${b.group}/${b.member}`, { ...b, at: this.now() });
        const how = b.exitCode !== undefined ? `exit ${b.exitCode}` : b.signal ? `signal ${b.signal}` : `failed: ${b.error ?? 'unknown'}`;
        (b.exitCode === 0 ? this.log.info : this.log.warn)(`${b.release.slice(0, 8)}/${b.group}: member ${b.member} hook ${how} after ${b.durationMs} ms`);
        return this.json(res, 200, { ok: true });
      }
      case 'POST /v1/bad-unit': {
        const b = await this.body<BadUnitBody>(req, SCHEMAS.badUnit);
        this.authorize(b, token);
        const { rel, g } = await this.group(b);
        this.member(g, b);
        if (b.unit >= rel.manifest.unitCount) throw new HttpError(400, 'BAD_UNIT', `unit ${b.unit} is out of range (release has ${rel.manifest.unitCount})`);
        this.recordBadUnit(b);
        return this.json(res, 200, { ok: true });
      }
      case 'GET /v1/fleet':
        return this.json(res, 200, this.fleet());
      case 'GET /v1/stats':
        return this.json(res, 200, this.stats);
      default:
        if (['GET', 'POST'].includes(req.method ?? '')) throw new HttpError(404, 'NOT_FOUND', `no such endpoint: ${req.method} ${url.pathname}`);
        throw new HttpError(405, 'METHOD', `method ${req.method} is not allowed`);
    }
  }

  /**
   * An agent says a unit from us failed verification `failures` times in a row: our
   * store (or something between us) is serving bad bytes. Logged, counted, and shown per
   * member in /v1/fleet. A member keeps at most 64 such units.
   */
  private recordBadUnit(b: BadUnitBody): void {
    this.stats.badUnitReports++;
    const k = `${b.release}/${b.group}/${b.member}`;
    let units = this.badUnits.get(k);
    if (!units && this.badUnits.size < this.limits.maxMembersPerRelease) this.badUnits.set(k, (units = new Map()));
    if (units && (units.has(b.unit) || units.size < 64)) units.set(b.unit, Math.max(units.get(b.unit) ?? 0, b.failures));
    // Logged at most once a minute per member: a member cannot flood the log with reports.
    const now = this.now();
    if (now - (this.badUnitLogged.get(k) ?? -Infinity) < 60_000) return;
    if (this.badUnitLogged.size >= this.limits.maxMembersPerRelease) this.badUnitLogged.clear();
    this.badUnitLogged.set(k, now);
    this.log.error(`${b.release.slice(0, 8)}/${b.group}: member ${b.member} got unit ${b.unit} from this server ${b.failures} times and it failed verification every time: check ${this.store.peek(b.release)?.dataPath ?? 'the store'}`);
  }


  /**
   * A channel's head. With `release` (the one the agent knows) and `waitMs`, a long poll:
   * held while the channel still names that release, at most waitMs (section 13).
   */
  private async serveChannel(res: http.ServerResponse, name: string, q: URLSearchParams): Promise<void> {
    let head = await readChannel(this.opts.storeDir, name);
    if (!head) throw new HttpError(404, 'NO_CHANNEL', `channel ${name} does not exist on this server`);
    const known = q.get('release');
    const wait = q.get('waitMs');
    if (known !== null || wait !== null) {
      if (known === null || !isReleaseId(known)) throw new HttpError(400, 'BAD_QUERY', 'release must be a release id (32 hex characters) when waitMs is given');
      if (wait === null || !/^\d{1,9}$/.test(wait)) throw new HttpError(400, 'BAD_QUERY', `waitMs must be a number of milliseconds (at most ${MAX_CHANNEL_WAIT_MS} are held)`);
      if (head.release === known && Number(wait) > 0) {
        const gone = new AbortController();
        res.once('close', () => gone.abort());
        await this.channelWatch.wait(name, known, Number(wait), gone.signal);
        if (gone.signal.aborted) return;
        head = await readChannel(this.opts.storeDir, name);
        if (!head) throw new HttpError(404, 'NO_CHANNEL', `channel ${name} does not exist on this server`);
      }
      // Tells the agent its wait was honoured, so it need not sleep between polls.
      res.setHeader('x-fleetcast-long-poll', String(MAX_CHANNEL_WAIT_MS));
    }
    if (!(await this.store.get(head.release))) throw new HttpError(503, 'NO_RELEASE', `channel ${name} points at release ${head.release}, which this server cannot load`);
    return this.json(res, 200, head);
  }

  /** Where a member of a wide-area group sends copies besides its LAN: the other LAN groups' gateways. */
  private copyDestinations(g: GroupAllocator, member: string, now: number): { group: string; member: string; address: string; port: number }[] {
    const mine = g.lanGroupOf(member);
    const out: { group: string; member: string; address: string; port: number }[] = [];
    for (const [group, gw] of g.gateways(now)) {
      if (group === mine) continue;
      const ep = g.endpointOf(gw);
      if (ep) out.push({ group, member: gw, address: ep.address, port: ep.port });
    }
    return out;
  }

  /** Times `member` of `group` was sent `unit` of `release` (000 claim 8's send registrations). */
  fetchCount(release: string, group: string, member: string, unit: number): number {
    return this.fetches.get(`${release}/${group}/${member}/${unit}`) ?? 0;
  }

  /** Unit bytes written to `member`'s sockets for `release` (whole fetches and resumed ranges). */
  bytesSentTo(release: string, group: string, member: string): number {
    return this.memberBytes.get(`${release}/${group}/${member}`) ?? 0;
  }

  /** Members' measured overheads into the fleet memory (the fleet view after a restart). */
  private noteOverheads(): void {
    const now = this.now();
    for (const [key, g] of this.groups) {
      if (g.memberCount() === 0) continue;
      const { release, group } = parseAllocatorKey(key);
      for (const m of g.memberViews(now)) if (m.overheadMsPerMiB !== null) this.memory.noteOverhead(`${release}/${group}/${m.id}`, m.overheadMsPerMiB);
    }
  }

  fleet(): unknown {
    const now = this.now();
    return {
      rollouts: this.rollouts.brief(),
      // Groups nobody is in any more (moved to a newer release, or left) are not shown.
      groups: [...this.groups.entries()].filter(([, g]) => g.memberCount() > 0).map(([key, g]) => {
        const { release, group, wide } = parseAllocatorKey(key);
        const rel = this.store.peek(release);
        const members = g.memberViews(now).map((m) => {
          const k = `${release}/${group}/${m.id}`;
          const h = this.memory.hook(k);
          const bad = this.badUnits.get(`${release}/${m.group ?? group}/${m.id}`);
          // Until the allocator measures a member again, it uses the overhead from before a restart.
          const before = g.overheadRemembered(m.id);
          return {
            ...m,
            originBytes: this.bytesSentTo(release, m.group || group, m.id),
            ...(before ? { overheadBeforeRestart: true } : {}),
            badUnits: bad ? [...bad].map(([unit, failures]) => ({ unit, failures })) : [],
            hook: h ? { exitCode: h.exitCode ?? null, signal: h.signal ?? null, error: h.error ?? null, durationMs: h.durationMs, msAgo: now - h.at } : null,
          };
        });
        return {
          release,
          name: rel?.manifest.name ?? null,
          units: rel?.manifest.unitCount ?? null,
          group,
          wide,
          missingUnits: g.missingInGroup(),
          resentUnits: { ...g.resentUnits },
          members,
          groupComplete: members.length > 0 && members.every((m) => m.complete),
        };
      }),
    };
  }

  /** Prometheus text format (version 0.0.4) for GET /metrics on the metrics address. */
  metrics(): string {
    const r = new MetricsRegistry('fleetcast_server');
    // One family per quantity: the total is sum() over the group label (a separate
    // unlabelled total counted the same bytes twice), refusals are codes 4xx (401: no token).
    r.counter('unit_bytes_sent_total', 'Unit bytes written to agents, by LAN group', Object.entries(this.stats.unitBytesSentByGroup).map(([group, v]) => [{ group }, v]));
    r.counter('unit_requests_total', 'Unit requests served', [[{}, this.stats.unitRequests]]);
    r.counter('http_requests_total', 'HTTP API answers, by status code', [...this.httpStatus].sort((a, b) => a[0] - b[0]).map(([code, n]) => [{ code: String(code) }, n]));
    r.gauge('releases', 'Releases in the store', [[{}, this.store.list().length]]);
    r.counter('hedged_bytes_total', 'Unit bytes sent under hedge leases (a second member fetching a straggler\'s unit)', [[{}, this.stats.hedgedBytes]]);
    r.counter('limit_hits_total', 'Requests, connections or writes a limit refused or cut (docs/security.md)', Object.entries(this.stats.limits).map(([limit, v]) => [{ limit }, v]));
    r.counter('bad_unit_reports_total', 'Agents\' reports of a unit from this server failing verification again and again', [[{}, this.stats.badUnitReports]]);
    r.gauge('connections', 'Open HTTP connections', [[{}, this.connections.open_]]);
    r.counter('relayed_units_total', 'Units leased again for a LAN group its wide-area group could not serve', [[{}, this.stats.relayedUnits]]);
    r.counter('claims_expired_total', "Units a member claimed to hold that its LAN group kept asking for: the claim expired and the unit was leased again", [[{}, [...this.groups.values()].reduce((n, g) => n + g.claimsExpired, 0)]]);
    r.counter('resent_units_total', 'Units the origin sent again to a group that already held or leased them, by reason', RESEND_REASONS.map((reason) => [{ reason }, this.stats.resent[reason].units]));
    r.counter('resent_bytes_total', 'Unit bytes the origin sent again to a group that already held or leased them, by reason', RESEND_REASONS.map((reason) => [{ reason }, this.stats.resent[reason].bytes]));
    const members: [Record<string, string>, number][] = [];
    const missing: [Record<string, string>, number][] = [];
    for (const [key, g] of this.groups) {
      // A group nobody is in any more (its members moved to a newer release, or left)
      // has no series: an alert on missing units clears when the release is superseded.
      if (g.memberCount() === 0) continue;
      const { release, group } = parseAllocatorKey(key);
      members.push([{ release, group }, g.memberCount()]);
      missing.push([{ release, group }, g.missingInGroup()]);
    }
    r.gauge('group_members', 'Live members per release and group (groups with members only)', members);
    r.gauge('group_missing_units', 'Units no live member of the group holds (groups with members only)', missing);
    this.rollouts.metrics(r);
    return r.text() + processMetrics('fleetcast');
  }

  private async serveUnit(req: http.IncomingMessage, res: http.ServerResponse, id: string, unitStr: string, q: URLSearchParams, token: string | null): Promise<void> {
    const ref = { release: id, group: q.get('group') ?? '', member: q.get('member') ?? '' };
    const check = parseBody<MemberRef>(Buffer.from(JSON.stringify(ref)), SCHEMAS.lease);
    if (!check.ok) throw new HttpError(400, 'BAD_QUERY', `query: ${check.error}`);
    this.authorize(ref, token);
    if (!/^\d{1,10}$/.test(unitStr)) throw new HttpError(400, 'BAD_UNIT', `unit "${unitStr}" is not a number`);
    const unit = Number(unitStr);
    const { rel, g } = await this.group(ref);
    const m = rel.manifest;
    if (unit >= m.unitCount) throw new HttpError(404, 'BAD_UNIT', `unit ${unit} is out of range (release has ${m.unitCount})`);
    this.member(g, ref);
    // No overlap: only the member holding the lease (or its hedge) gets the bytes.
    const how = g.sending(ref.member, unit, this.now());
    if (!how) {
      throw new HttpError(409, 'NOT_LEASED', `unit ${unit} is not leased to ${ref.member}; take a lease first`);
    }
    const len = unitLength(m, unit);
    let start = 0;
    let end = len - 1;
    const range = req.headers.range;
    let status = 200;
    if (range) {
      const r = parseRange(range, len);
      if (!r) {
        res.writeHead(416, { 'content-range': `bytes */${len}` });
        res.end();
        return;
      }
      ({ start, end } = r);
      status = 206;
    }
    this.stats.unitRequests++;
    const fk = `${ref.release}/${ref.group}/${ref.member}/${unit}`;
    // A fetch is a request from the unit's first byte; a Range resuming it is not another one.
    if (start === 0) this.fetches.set(fk, (this.fetches.get(fk) ?? 0) + 1);
    const mk = `${ref.release}/${ref.group}/${ref.member}`;
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/octet-stream',
      'content-length': end - start + 1,
      'x-fleetcast-unit': String(unit),
      'x-fleetcast-sha256': m.units[unit],
    };
    if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${len}`;
    res.writeHead(status, headers);
    const base = unit * m.unitSize;
    const stream = createReadStream(rel.dataPath, { start: base + start, end: base + end, highWaterMark: 64 * 1024 });
    const key = ref.group;
    stream.on('data', (chunk) => {
      if (how === 'hedged') this.stats.hedgedBytes += chunk.length;
      if (how !== 'lease') this.stats.resent[how].bytes += chunk.length;
      this.memberBytes.set(mk, (this.memberBytes.get(mk) ?? 0) + chunk.length);
      this.stats.unitBytesSent += chunk.length;
      this.stats.unitBytesSentByGroup[key] = (this.stats.unitBytesSentByGroup[key] ?? 0) + chunk.length;
    });
    await new Promise<void>((resolve) => {
      stream.on('error', (err) => {
        this.log.error(`reading ${rel.dataPath}: ${err.message}`);
        res.destroy(err);
        resolve();
      });
      res.on('close', () => {
        stream.destroy();
        resolve();
      });
      stream.pipe(res);
    });
  }

  /** A small body (every route but heartbeats): at most BODY_BASE_BYTES. */
  private async body<T>(req: http.IncomingMessage, schema: Record<string, unknown>): Promise<T> {
    return (await this.bodyWithSize<T>(req, schema, maxBodyBytes(0))).value;
  }

  /**
   * Read and parse a body of at most `maxBytes`, within bodyTimeoutMs of the headers;
   * nesting is checked before JSON.parse runs. Each refusal counts against its limit.
   */
  private async bodyWithSize<T>(req: http.IncomingMessage, schema: Record<string, unknown>, maxBytes: number): Promise<{ value: T; bytes: number }> {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > maxBytes) {
      this.limitHit('body_too_large');
      req.resume();
      throw new HttpError(413, 'TOO_LARGE', `body larger than ${maxBytes} bytes`);
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
    const raw = Buffer.concat(chunks);
    if (jsonDepthExceeds(raw, MAX_JSON_DEPTH)) this.limitHit('json_too_deep');
    const p = parseBody<T>(raw, schema as never);
    if (!p.ok) throw new HttpError(400, 'BAD_BODY', p.error);
    return { value: p.value, bytes: raw.length };
  }

  private json(res: http.ServerResponse, status: number, v: unknown): void {
    const body = Buffer.from(JSON.stringify(v));
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  }

  private fail(res: http.ServerResponse, err: unknown): void {
    if (err instanceof HttpError) {
      this.stats.badRequests++;
      if (!res.headersSent) return this.json(res, err.status, { error: err.code, message: err.message });
    } else {
      this.log.error(`internal error: ${(err as Error)?.stack ?? String(err)}`);
      if (!res.headersSent) return this.json(res, 500, { error: 'INTERNAL', message: 'internal server error' });
    }
    res.destroy();
  }
}
