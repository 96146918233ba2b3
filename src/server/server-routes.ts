import { createReadStream } from 'node:fs';
import * as http from 'node:http';
import { deriveGroupKey } from '../wire/auth';
import { unitLength } from '../release/manifest';
import { BadUnitBody, CompleteBody, HeartbeatBody, HookBody, LeaseBody, MAX_BODY_BYTES, maxBodyBytes, MemberRef, parseBody, ReceiptBody, SCHEMAS } from '../wire/http-bodies';
import { bitmapBytes } from '../util/bits';
import { GroupAllocator, LeaseGrant, RESEND_REASONS } from './allocator';
import type { Distribution } from '../release/distribution';
import type { StoredRelease } from '../release/store';
import { readContentKey } from '../release/content-crypto';
import { ApiError } from './rollout-bodies';
import { HttpError, parseRange } from './http-util';
import { FOLLOWER_HEARTBEAT_MS, LEFT_MEMORY_MS, MAX_LEFT_REMEMBERED, parseAllocatorKey } from './server-core';
import { ChannelRoutes } from './channel-routes';
import { streamRoutes } from './stream-routes';

/** The HTTP API's routes (docs/protocol.md, section 3): one method per route that needs more than a line. */
export abstract class ServerRoutes extends ChannelRoutes {
  /** GET /v1/fleet's answer (server.ts). */
  abstract fleet(): unknown;

  protected async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.stats.requests++;
    const token = this.authenticate(req, res);
    if (token === false) return;
    const url = new URL(req.url ?? '/', 'http://x');
    try {
      const operator = () => {
        const names = this.opts.operatorTokens ?? ['operator'];
        if (token !== null && !names.includes(token)) throw new HttpError(403, 'NOT_OPERATOR', `token ${token} may not change rollouts: only the operator tokens (${names.join(', ')}; server key operator_tokens) may`);
      };
      if (await this.rollouts.handle(req, res, url, (member) => this.authorize({ release: '', group: '', member }, token), operator, this.bodiesRead.get(req))) return;
    } catch (err) {
      throw err instanceof ApiError ? new HttpError(err.status, err.code, err.message) : err;
    }
    if (await streamRoutes(this.opts.storeDir).handle(req, res, url, (member) => this.authorize({ release: '', group: '', member }, token))) return;
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
      case 'POST /v1/heartbeat':
        return this.heartbeat(req, res, route, token);
      case 'POST /v1/lease':
        return this.leaseRoute(req, res, token);
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
        this.counts.clear();
        const now = this.now();
        if (this.leftAt.size >= MAX_LEFT_REMEMBERED) for (const [k, at] of this.leftAt) if (now - at >= LEFT_MEMORY_MS) this.leftAt.delete(k);
        if (this.leftAt.size < MAX_LEFT_REMEMBERED) this.leftAt.set(`${key}/${b.member}`, now);
        this.membersDirty = true;
        return this.json(res, 200, { ok: true });
      }
      case 'GET /v1/channels':
        return this.json(res, 200, { channels: await this.channels.list() });
      case 'GET /v1/channels/:':
        return this.serveChannel(res, parts[2], url.searchParams, token);
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

  /** POST /v1/join and /v1/heartbeat: a member reports what it holds; the answer is the split map. */
  protected async heartbeat(req: http.IncomingMessage, res: http.ServerResponse, route: string, token: string | null): Promise<void> {
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
    // 1.4: receipt notices folded in, each as POST /v1/receipt would be, at the time it says.
    if (b.receipts?.length) {
      if (b.receiptAgesMs !== undefined && b.receiptAgesMs.length !== b.receipts.length) throw new HttpError(400, 'BAD_BODY', 'receiptAgesMs must have one entry per unit in receipts');
      for (let i = 0; i < b.receipts.length; i++) {
        const u = b.receipts[i];
        if (u >= rel.manifest.unitCount) throw new HttpError(400, 'BAD_UNIT', `receipts: unit ${u} is out of range (release has ${rel.manifest.unitCount})`);
        g.receipt(b.member, u, now - Math.min(b.receiptAgesMs?.[i] ?? 0, 60_000));
      }
      this.stats.foldedReceipts += b.receipts.length;
    }
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
    g.noteCopyTree(b.member, b.copyTree === true); // 1.5: copy trees while every member speaks them
    const scope = parseAllocatorKey(key);
    if (isNew) {
      this.log.info(`${b.release.slice(0, 8)}/${b.group}: member ${b.member} joined${scope.wide ? ` (wide-area group ${scope.group})` : ''}`);
      // Its overhead from before a restart ranks and weights it until it is measured again.
      const before = this.memory.overhead(`${b.release}/${scope.group}/${b.member}`);
      if (before !== undefined) g.rememberOverhead(b.member, before);
    }
    // Fast while there is anything to fetch or copy in the group, slow once all is done;
    // 1.4 agents beat slower when the fleet is large (loadHeartbeatMs), and idle ones by
    // the idle rate (idleLoadHeartbeatMs, at most 900 s; older agents clamp it to 60 s).
    const v14 = b.mapVersion !== undefined || b.mapEpoch !== undefined || b.lease !== undefined || b.receipts !== undefined || b.receiptAgesMs !== undefined;
    const idle = g.idle(b.member) && !b.fetching?.length && !b.copying;
    // 1.7: an idle member holding a channel poll is seen through it, and beats once an hour.
    const heartbeatMs = idle ? (v14 ? (g.holdsPoll(b.member) ? FOLLOWER_HEARTBEAT_MS : this.idleLoadHeartbeatMs) : this.idleHeartbeatMs) : v14 ? this.loadHeartbeatMs : this.heartbeatMs;
    g.setHeartbeatInterval(b.member, heartbeatMs);
    if (v14) return this.heartbeat14(res, b, { g, key, dist, rel, now, heartbeatMs, isNew });
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
      ...this.copyFields(g, b.member, dist.policy === 'wide', now),
      ...map,
    });
  }

  /**
   * A 1.4 heartbeat's answer (docs/protocol.md section 14): what changed in the map since
   * the member's version, copy destinations only when they changed, and the lease it asked
   * for. Work follows what changed, not units x members.
   */
  protected heartbeat14(res: http.ServerResponse, b: HeartbeatBody, c: { g: GroupAllocator; key: string; dist: Distribution; rel: StoredRelease; now: number; heartbeatMs: number; isNew: boolean }): void {
    const { g, key, dist, now } = c;
    let lease: LeaseGrant | undefined;
    if (b.lease !== undefined && b.lease > 0) {
      const wait = this.rebuildWait(key, now);
      if (wait > 0) lease = { units: [], retryAfterMs: wait, exhausted: false };
      else {
        const before = g.resentUnits.hedged;
        lease = g.lease(b.member, now, Math.min(b.lease, 1024));
        this.stats.resent.hedged.units += g.resentUnits.hedged - before;
      }
      this.stats.foldedLeases++;
    }
    // A new member, or one whose map is from another allocator or server run, gets it all.
    const { members: _records, membersJson, ...map } = g.mapSince(now, c.isNew ? undefined : b.mapEpoch, c.isNew ? undefined : b.mapVersion);
    const scope = parseAllocatorKey(key);
    const copy = dist.policy === 'wide' && (map.full || g.copyToChangedSince(b.mapEpoch, b.mapVersion)) ? this.copyFields(g, b.member, true, now, true) : undefined;
    if (map.full) this.stats.fullMaps++;
    else this.stats.deltaMaps++;
    // The member records go in as the JSON text the allocator keeps for them (allocator-records.ts).
    return this.json(res, 200, {
      heartbeatMs: c.heartbeatMs,
      ...(map.full ? { groupKey: deriveGroupKey(this.secret, b.release, scope.scope).toString('base64'), policy: dist.policy, start: dist.start } : {}),
      lanStart: dist.start === 'immediate' || map.allHeld,
      ...copy,
      ...(lease ? { lease: { units: lease.units, ...(lease.hedged ? { hedged: lease.hedged } : {}), retryAfterMs: lease.retryAfterMs, exhausted: lease.exhausted, ...this.originFor(g, b.member, lease.units, dist, now) } } : {}),
      ...map,
    }, `"members":[${membersJson}]`);
  }

  /** POST /v1/lease: units for a member to fetch, or a relay of units its LAN group lacks. */
  protected async leaseRoute(req: http.IncomingMessage, res: http.ServerResponse, token: string | null): Promise<void> {
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
    return this.json(res, 200, { ...grant, ...this.originFor(g, b.member, grant.units, dist, now), ...this.copyFields(g, b.member, dist.policy === 'wide', now) });
  }

  /**
   * Unit bytes from an HTTP range origin (docs/scale-out.md): a grant names one of the
   * release's origins (by member, so members spread over them), and since the server will
   * not see the bytes go, the grant is the send time its overhead measurement starts from.
   * The agent falls back to GET .../units/N here when the origin fails.
   */
  protected originFor(g: GroupAllocator, member: string, units: number[], dist: Distribution, now: number): { origin?: string } {
    const origins = dist.origins ?? [];
    if (origins.length === 0 || units.length === 0) return {};
    for (const u of units) g.originGranted(member, u, now);
    this.stats.originGrants += units.length;
    let h = 0;
    for (let i = 0; i < member.length; i++) h = (h * 31 + member.charCodeAt(i)) >>> 0;
    return { origin: origins[h % origins.length] };
  }

  /**
   * An agent says a unit from us failed verification `failures` times in a row: our
   * store (or something between us) is serving bad bytes. Logged, counted, and shown per
   * member in /v1/fleet. A member keeps at most 64 such units.
   */
  protected recordBadUnit(b: BadUnitBody): void {
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

  protected async serveUnit(req: http.IncomingMessage, res: http.ServerResponse, id: string, unitStr: string, q: URLSearchParams, token: string | null): Promise<void> {
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
}
