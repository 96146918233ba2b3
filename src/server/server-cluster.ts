import * as http from 'node:http';
import * as https from 'node:https';
import { MAX_BODY_BYTES } from '../wire/http-bodies';
import type { FleetMemberRecord } from '../wire/http-bodies';
import { HookRow, MemberRow } from './engine';
import { Ownership, OWNER_RENEW_MS } from './ownership';
import { RegistryWriter } from './registry-writer';
import { allocatorKey, MEMBER_MEMORY_MS, parseAllocatorKey } from './server-core';
import { ServerRoutes } from './server-routes';
import { channelKey, channelOfKey, KEYED, KeyedRef, keyedRef, bodyChannel } from './cluster-keys';

/** Set on requests one instance forwards to another: the owner answers them itself or refuses (no second hop). */
export const PROXIED_HEADER = 'x-fleetcast-proxied-by';
/** Set on a 503 from an instance that does not own the key it was forwarded. */
export const NOT_OWNER_HEADER = 'x-fleetcast-not-owner';

/**
 * A new owner waits for the members its key had (the registry says who) to report what
 * they hold, like a restarted server does, but longer: those agents were failing over,
 * with backoffs up to the control client's 5 s.
 */
export const TAKEOVER_EXTRA_GRACE_MS = 5000;

/** A key owned without a live member (nor one awaited) this long is given up: its allocation is over, or it was taken by a stray request. */
export const IDLE_KEY_RELEASE_MS = 60_000;

/** Joins kept for the registry's next write (a bound: past it the periodic write of live members covers them). */
const JOIN_ROWS_MAX = 50_000;

/** Proxied requests whose owner sends nothing for this long are cut (a 503 if nothing was answered yet). */
const PROXY_IDLE_MS = 15_000;

/** Answer headers passed back from the owner. */
const PASSED = ['content-type', 'content-length', 'content-range', 'x-fleetcast-unit', 'x-fleetcast-sha256', 'retry-after'];

/**
 * Several coordinators on a shared engine (docs/scale-out.md). Each request that acts on
 * one allocation (release + LAN or wide-area group) is answered by the instance that owns
 * that key: here if we own it or can take it, otherwise proxied to its owner over HTTP, so
 * agents need no protocol change and may talk to any instance. Without `cluster` in the
 * options every request goes straight to the routes, as with one server.
 */
export abstract class ClusterRoutes extends ServerRoutes {
  protected ownership: Ownership | null = null;
  /** When this instance took each key it owns (its rebuild wait runs from there). */
  private readonly gainedAt = new Map<string, number>();
  /** "release/member" -> the key its last heartbeat routed to (for its other requests). */
  private readonly routedKeys = new Map<string, string>();
  private peerAgents: { http: http.Agent; https: https.Agent } | null = null;
  private lastMembersPut = -Infinity;
  /** Members that joined since the last tick, for the registry (at most JOIN_ROWS_MAX; the periodic write has the rest). */
  private joinRows: Omit<MemberRow, 'msAgo'>[] = [];
  /** Which members' rows are due at the registry's next write. */
  private readonly registry = new RegistryWriter();
  /** Keys we own without a live member, and since when. */
  private readonly idleSince = new Map<string, number>();
  readonly clusterStats = { proxied: 0, proxyFailures: 0, refused: 0, gained: 0, lost: 0, released: 0 };

  protected startCluster(): void {
    const c = this.opts.cluster;
    if (!c) return;
    this.ownership = new Ownership(c.engine, this.log, this.now, { gained: (k) => this.gained(k), lost: (k) => this.lost(k) });
    // Hook results go to the engine too: the fleet view of any instance, and a later owner, show them.
    this.memory.onHook = (r) => void c.engine.putHook({ release: r.release, group: r.group, member: r.member, durationMs: r.durationMs, exitCode: r.exitCode, signal: r.signal, error: r.error }).catch((err: Error) => this.log.warn(`${r.release.slice(0, 8)}/${r.group}: cannot keep member ${r.member}'s hook result in the engine: ${err.message}`));
    // Few sockets per owner, kept alive: the owner's per-client connection cap (64) sees one client.
    this.peerAgents = { http: new http.Agent({ keepAlive: true, maxSockets: 32 }), https: new https.Agent({ keepAlive: true, maxSockets: 32, ca: c.peerCa }) };
  }

  /** The timer's part: renew leases, write the members of the keys we own to the registry. */
  protected async clusterTick(): Promise<void> {
    if (!this.ownership) return;
    await this.ownership.renew();
    const now = this.now();
    await this.releaseIdle(now);
    const joined = this.joinRows.splice(0);
    if (joined.length) await this.opts.cluster!.engine.putMembers(joined).catch((err: Error) => this.log.warn(`member registry: cannot write ${joined.length} member(s) that joined: ${err.message}`));
    if (now - this.lastMembersPut < 2 * OWNER_RENEW_MS || this.ownership.unavailable) return;
    this.lastMembersPut = now;
    // heartbeats_per_sec is the fleet's: each instance serving members aims at its share (updateLoad).
    this.instances = await this.opts.cluster!.engine.liveInstances().then((n) => Math.max(1, n), () => this.instances);
    // Channel heads published on this store go to the engine; the others' rollouts are listed from it.
    await this.channels.sync?.();
    await this.sharedRollouts?.refresh().catch((err: Error) => this.log.warn(`rollouts: cannot read the other instances' rollouts: ${err.message}`));
    const rows: Omit<MemberRow, 'msAgo'>[] = [];
    for (const key of this.ownership.keys()) {
      const g = this.groups.get(key);
      if (!g) continue;
      const { release, group } = parseAllocatorKey(key);
      for (const m of g.memberViews(now)) rows.push({ release, member: m.id, group: m.group || group, key, instance: this.opts.cluster!.instanceUrl, complete: m.complete, verifiedUnits: m.verifiedUnits, address: m.address });
    }
    const due = this.registry.pick(rows, now);
    await this.opts.cluster!.engine.putMembers(due).catch((err: Error) => {
      this.registry.failed(due);
      this.log.warn(`member registry: cannot write ${due.length} member(s): ${err.message}`);
    });
  }

  private async releaseIdle(now: number): Promise<void> {
    // Without the engine a key given up could not be taken back: keep them all until it returns.
    if (this.ownership!.unavailable) return;
    const idle: string[] = [];
    for (const key of this.ownership!.keys()) {
      const channel = channelOfKey(key);
      if (channel !== null ? this.rollouts.runsOn(channel) : this.groups.get(key)?.memberCount() || this.awaited.get(key)?.size) {
        this.idleSince.delete(key);
        continue;
      }
      const since = this.idleSince.get(key);
      if (since === undefined) this.idleSince.set(key, now);
      else if (now - since >= IDLE_KEY_RELEASE_MS) idle.push(key);
    }
    if (!idle.length) return;
    this.clusterStats.released += idle.length;
    for (const key of idle) this.drop(key);
    await this.ownership!.release(idle);
  }

  protected async stopCluster(): Promise<void> {
    if (!this.ownership) return;
    await this.clusterTick().catch(() => {});
    await this.ownership.releaseAll();
    await this.opts.cluster!.engine.close();
    this.peerAgents?.http.destroy();
    this.peerAgents?.https.destroy();
  }

  /** A key became ours: start its allocation afresh, awaiting the members the registry knows. */
  private async gained(key: string): Promise<void> {
    this.clusterStats.gained++;
    const channel = channelOfKey(key);
    // The channel's rollouts as their last owner left them in the engine (its polls and commands come here now).
    if (channel !== null) return this.rollouts.adopt(channel, await this.sharedRollouts!.load(channel).catch(() => []));
    this.groups.delete(key);
    this.counts.clear();
    const engine = this.opts.cluster!.engine;
    const { release, group, wide } = parseAllocatorKey(key);
    // The hook results its members reported to earlier owners.
    for (const h of await engine.hooks(release, wide ? null : [group], this.limits.maxMembersPerRelease).catch(() => [])) {
      const { at, ...rest } = h;
      if (!this.memory.hook(`${release}/${h.group}/${h.member}`)) this.memory.setHook(`${release}/${h.group}/${h.member}`, { ...rest, at }, false);
    }
    const ids = await engine.membersOf(key, MEMBER_MEMORY_MS).catch(() => [] as string[]);
    if (!ids.length) return;
    this.awaited.set(key, new Set(ids));
    this.gainedAt.set(key, this.now());
    this.log.info(`${key}: rebuilding its allocation: waiting for ${ids.length} member(s) to report what they hold`);
  }

  private lost(key: string): void {
    this.clusterStats.lost++;
    this.drop(key);
  }

  /** Forget a key's allocation: this instance no longer answers for it. */
  private drop(key: string): void {
    this.idleSince.delete(key);
    const channel = channelOfKey(key);
    if (channel !== null) this.rollouts.forgetChannel(channel);
    this.groups.delete(key);
    this.awaited.delete(key);
    this.gainedAt.delete(key);
    this.counts.clear();
  }

  protected override rebuildWait(key: string, now: number): number {
    const since = this.gainedAt.get(key);
    if (since === undefined) return super.rebuildWait(key, now);
    const left = since + this.rebuildGraceMs + TAKEOVER_EXTRA_GRACE_MS - now;
    if (!this.awaited.get(key)?.size || left <= 0) {
      this.awaited.delete(key);
      this.gainedAt.delete(key);
      return 0;
    }
    return Math.min(left, this.heartbeatMs);
  }

  /** A channel's followers are kept by the instance that owns its key (its rollout polls go there), not by whichever one a channel poll reaches. */
  protected override notesFollowers(): boolean {
    return !this.ownership;
  }

  protected override async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const own = this.ownership;
    if (!own) return super.handle(req, res);
    const url = new URL(req.url ?? '/', 'http://x');
    const parts = url.pathname.split('/').filter(Boolean);
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /v1/fleet' || route === 'GET /v1/stats') {
      if (this.authenticate(req, res) === false) return;
      return this.json(res, 200, route === 'GET /v1/fleet' ? await this.clusterFleet() : { ...this.stats, cluster: { ...this.clusterStats, owned: own.keys().length, engineUnavailable: own.unavailable, instances: this.instances } });
    }
    const unitGet = req.method === 'GET' && parts.length === 5 && parts[0] === 'v1' && parts[1] === 'releases' && parts[3] === 'units';
    if (parts[0] === 'v1' && parts[1] === 'rollouts' && (parts.length >= 3 || req.method === 'POST')) return this.handleRollout(req, res, parts);
    if (!KEYED.has(route) && !unitGet) return super.handle(req, res);
    if (this.authenticate(req, res) === false) return;
    let body: Buffer | null = null;
    let ref: KeyedRef | null;
    if (unitGet) ref = keyedRef(Buffer.from(JSON.stringify({ release: parts[2], group: url.searchParams.get('group'), member: url.searchParams.get('member') })));
    else {
      body = await this.readBody(req, MAX_BODY_BYTES); // at most MAX_BODY_BYTES: each route checks its own, smaller limit
      this.bodiesRead.set(req, body);
      ref = keyedRef(body);
    }
    const key = ref ? await this.keyOf(ref, route) : null;
    if (key === null) return super.handle(req, res); // the route says what is wrong
    const r = await own.route(key);
    if ('unavailable' in r) return this.refuse(res, 'ENGINE_UNAVAILABLE', r.unavailable, r.retryAfterMs);
    if (r.mine) {
      await super.handle(req, res);
      // A member is in the registry from its join, not from the next periodic write: one that
      // joins and leaves within a write's interval (a small release on a fast LAN) is otherwise
      // never in any other instance's fleet view. The periodic write brings its state up to date.
      if (route === 'POST /v1/join' && res.statusCode === 200 && ref) {
        // Written with the others that joined this second (clusterTick): a query per join was 100,000 of them for a fleet's start.
        // A member the periodic write has already written (it joined again) keeps its full row.
        if (this.joinRows.length < JOIN_ROWS_MAX && !this.registry.knows(ref.release, ref.member)) this.joinRows.push({ release: ref.release, member: ref.member, group: ref.group, key, instance: this.opts.cluster!.instanceUrl, complete: false, verifiedUnits: 0, address: null });
      }
      return;
    }
    // The owner learns the agent's address from the body, as it would from the socket.
    if (body && (route === 'POST /v1/heartbeat' || route === 'POST /v1/join') && !ref!.hasAddress) body = Buffer.from(JSON.stringify({ ...(JSON.parse(body.toString('utf8')) as object), address: req.socket.remoteAddress ?? null }));
    return this.toOwner(req, res, key, r, body);
  }

  /** A request for a key another instance owns: proxied to it, unless it was proxied here already or the owner is an earlier run of this instance. */
  private toOwner(req: http.IncomingMessage, res: http.ServerResponse, key: string, r: { url: string; msLeft: number }, body: Buffer | null): Promise<void> | void {
    if (req.headers[PROXIED_HEADER] !== undefined) return this.refuse(res, 'NOT_OWNER', `${key} is owned by ${r.url}, not this instance`, 100, true);
    if (r.url === this.opts.cluster!.instanceUrl) return this.refuse(res, 'OWNER_RESTARTING', `${key} is still leased to an earlier run of this instance; it is taken again once that lease expires`, Math.max(100, r.msLeft));
    return this.proxy(req, res, r.url, key, body);
  }

  /** A request about one channel's rollouts (start, poll, one rollout, its commands), answered by the owner of the channel's key; the list (GET /v1/rollouts) by any instance. */
  private async handleRollout(req: http.IncomingMessage, res: http.ServerResponse, parts: string[]): Promise<void> {
    if (this.authenticate(req, res) === false) return;
    let body: Buffer | null = null;
    let channel: string | null;
    if (parts.length <= 3 && req.method === 'POST') {
      // POST /v1/rollouts (start) and POST /v1/rollouts/poll name the channel in their body.
      body = await this.readBody(req, MAX_BODY_BYTES);
      this.bodiesRead.set(req, body);
      channel = bodyChannel(body);
    } else {
      channel = this.rollouts.channelOf(parts[2]);
      if (channel === null) {
        await this.sharedRollouts?.refresh(1000).catch(() => undefined); // started on another instance since the last read? (one read a second at most)
        channel = this.rollouts.channelOf(parts[2]);
      }
      if (req.method === 'POST') {
        body = await this.readBody(req, MAX_BODY_BYTES);
        this.bodiesRead.set(req, body);
      }
    }
    if (channel === null) return super.handle(req, res); // the routes say what is wrong (bad body, no such rollout)
    const key = channelKey(channel);
    const r = await this.ownership!.route(key);
    if ('unavailable' in r) return this.refuse(res, 'ENGINE_UNAVAILABLE', r.unavailable, r.retryAfterMs);
    if (r.mine) {
      this.idleSince.delete(key);
      return super.handle(req, res);
    }
    return this.toOwner(req, res, key, r, body);
  }

  /** The allocation key a request acts on, or null when the routes should answer it (bad fields, unknown release). */
  private async keyOf(ref: KeyedRef, route: string): Promise<string | null> {
    const { release, group, member, wideGroup } = ref;
    const rel = await this.store.get(release).catch(() => undefined);
    if (!rel) return null;
    const mk = `${release}/${member}`;
    if (route === 'POST /v1/heartbeat' || route === 'POST /v1/join') {
      const dist = await this.distribution(rel);
      const key = allocatorKey(release, dist.policy === 'wide' && wideGroup ? { wide: wideGroup } : { group });
      if (this.routedKeys.size >= this.limits.maxMembersPerRelease * 4) this.routedKeys.clear();
      this.routedKeys.set(mk, key);
      return key;
    }
    return this.memberKeys.get(mk) ?? this.routedKeys.get(mk) ?? allocatorKey(release, { group });
  }

  private refuse(res: http.ServerResponse, code: string, message: string, retryAfterMs: number, notOwner = false): void {
    this.clusterStats.refused++;
    if (notOwner) res.setHeader(NOT_OWNER_HEADER, '1');
    res.setHeader('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))));
    this.json(res, 503, { error: code, message, retryAfterMs });
  }

  /** Forward the request to the key's owner and stream its answer back. */
  private proxy(req: http.IncomingMessage, res: http.ServerResponse, owner: string, key: string, body: Buffer | null): Promise<void> {
    this.clusterStats.proxied++;
    const target = new URL(owner + (req.url ?? '/'));
    const headers: http.OutgoingHttpHeaders = { [PROXIED_HEADER]: this.opts.cluster!.instanceUrl };
    for (const h of ['authorization', 'content-type', 'range']) if (req.headers[h] !== undefined) headers[h] = req.headers[h];
    if (body) headers['content-length'] = body.length;
    const https_ = target.protocol === 'https:';
    return new Promise<void>((resolve) => {
      const preq = (https_ ? https : http).request(target, { method: req.method, headers, agent: https_ ? this.peerAgents!.https : this.peerAgents!.http }, (pres) => {
        if (pres.statusCode === 503 && pres.headers[NOT_OWNER_HEADER]) this.ownership!.forget(key);
        else this.ownership!.confirmed(key, owner);
        const out: http.OutgoingHttpHeaders = {};
        for (const h of PASSED) if (pres.headers[h] !== undefined) out[h] = pres.headers[h];
        res.writeHead(pres.statusCode ?? 502, out);
        pres.pipe(res);
        pres.on('error', () => res.destroy());
        pres.on('close', () => resolve());
      });
      preq.setTimeout(PROXY_IDLE_MS, () => preq.destroy(new Error(`no answer for ${PROXY_IDLE_MS} ms`)));
      preq.on('error', (err) => {
        this.clusterStats.proxyFailures++;
        this.ownership!.forget(key);
        if (!res.headersSent) this.refuse(res, 'OWNER_UNREACHABLE', `the owner of ${key} at ${owner} did not answer (${err.message}); another instance takes the group once the owner's lease expires`, OWNER_RENEW_MS);
        else res.destroy();
        resolve();
      });
      res.on('close', () => {
        if (!res.writableFinished) preq.destroy();
      });
      preq.end(body ?? undefined);
    });
  }

  /** GET /v1/fleet on any instance: our groups in full, the others' members from the registry. */
  private async clusterFleet(): Promise<unknown> {
    const base = this.fleet() as { groups: { release: string; group: string; wide: boolean }[] };
    const here = new Set(base.groups.map((g) => allocatorKey(g.release, g.wide ? { wide: g.group } : { group: g.group })));
    let rows: MemberRow[];
    try {
      rows = await this.opts.cluster!.engine.members(MEMBER_MEMORY_MS, this.limits.maxMembersPerRelease);
    } catch (err) {
      return { ...base, registryError: (err as Error).message };
    }
    const byKey = new Map<string, MemberRow[]>();
    for (const r of rows) {
      if (here.has(r.key)) continue;
      let l = byKey.get(r.key);
      if (!l) byKey.set(r.key, (l = []));
      l.push(r);
    }
    const hooks = new Map<string, HookRow>();
    const now = Date.now();
    for (const release of new Set([...byKey.keys()].map((k) => parseAllocatorKey(k).release))) {
      for (const h of await this.opts.cluster!.engine.hooks(release, null, this.limits.maxMembersPerRelease).catch(() => [])) hooks.set(`${release}/${h.group}/${h.member}`, h);
    }
    const more = [...byKey].map(([key, ms]) => {
      const { release, group, wide } = parseAllocatorKey(key);
      const rel = this.store.peek(release);
      const members = ms.map((m): FleetMemberRecord => {
        const h = hooks.get(`${release}/${m.group}/${m.member}`);
        const hook = h ? { exitCode: h.exitCode ?? null, signal: h.signal ?? null, error: h.error ?? null, durationMs: h.durationMs, msAgo: Math.max(0, now - h.at) } : null;
        return { id: m.member, group: m.group, rank: 0, overheadMsPerMiB: null, verifiedUnits: m.verifiedUnits, leases: 0, complete: m.complete, lastSeenMsAgo: m.msAgo, address: m.address, dataPort: null, role: 'member', forwarded: 0, lanBytes: 0, gatewayDemotions: 0, undeliveredClaims: 0, originBytes: 0, badUnits: [], hook };
      });
      return { release, name: rel?.manifest.name ?? null, units: rel?.manifest.unitCount ?? null, group, wide, owner: ms[0].instance, missingUnits: null, resentUnits: {}, members, groupComplete: members.every((m) => m.complete) };
    });
    return { ...base, groups: [...base.groups, ...more] };
  }
}
