import * as path from 'node:path';
import { AddressInfo } from 'node:net';
import { RESEND_REASONS } from './allocator';
import { MetricsRegistry, processMetrics } from '../util/metrics';
import { loadOrCreateSecret } from './http-util';
import { OVERHEAD_NOTE_TICKS, parseAllocatorKey, REQUEST_KINDS } from './server-core';
import { ClusterRoutes } from './server-cluster';
import { OWNER_RENEW_MS } from './ownership';
import { ExitCode, FleetcastError } from '../util/errors';
import type { FleetMemberRecord } from '../wire/http-bodies';
import { streamRoutes } from './stream-routes';

export { parseRange, TLS_CIPHERS } from './http-util';

/** Connections the kernel queues before the server accepts them (capped by net.core.somaxconn). */
export const LISTEN_BACKLOG = 4096;
export type { ServerOptions, ServerStats } from './server-core';

/**
 * The origin server (`fleetcast server`): the HTTP API of docs/protocol.md over the
 * layers in server-core.ts, server-members.ts and server-routes.ts. Allocation state
 * lives in one GroupAllocator per (release, group) and is soft: it is rebuilt from the
 * agents' heartbeats after a restart.
 */
export class FleetcastServer extends ClusterRoutes {
  private clusterTimer: NodeJS.Timeout | null = null;

  async start(): Promise<{ host: string; port: number; url: string }> {
    this.secret = await loadOrCreateSecret(path.join(this.opts.storeDir, 'secret'));
    const c = this.opts.cluster;
    if (c) {
      // Every instance derives the same LAN group keys: a group keeps its key when its owner changes.
      this.secret = await c.engine.open(this.secret).catch((err: Error) => Promise.reject(new FleetcastError('ENGINE', `cannot reach the shared engine: ${err.message}`, ExitCode.UNAVAILABLE)));
      this.startCluster();
    }
    await this.store.load();
    for (const p of this.store.problems) this.log.warn(`store: ${p}`);
    await this.loadMembers();
    await this.memory.load((id) => this.store.peek(id) !== undefined);
    await this.loadIdentities();
    await this.rollouts.load();
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      // A fleet reconnecting at once (a server restart under 100,000 agents) overflowed
      // Node's default backlog of 511: connections were reset before the server saw them.
      this.http.listen({ port: this.opts.port, host: this.opts.host, backlog: LISTEN_BACKLOG }, () => {
        this.http.off('error', reject);
        resolve();
      });
    });
    this.startedAt = this.now();
    this.eventLoopDelay.start();
    const tickMs = Math.max(100, Math.floor(this.heartbeatMs / 2));
    this.timer = setInterval(() => {
      this.eventLoopDelay.tick(tickMs);
      this.expire();
      this.updateLoad();
      void this.saveState();
      if (++this.ticks % OVERHEAD_NOTE_TICKS === 0) this.noteOverheads();
      void this.memory.save();
    }, tickMs);
    this.timer.unref();
    if (c) {
      this.clusterTimer = setInterval(() => void this.clusterTick().catch((err: Error) => this.log.error(`shared engine: ${err.stack ?? err.message}`)), OWNER_RENEW_MS);
      this.clusterTimer.unref();
      this.log.info(`one of several coordinators: ${c.instanceUrl}, sharing ${c.engine.name}`);
    }
    const a = this.http.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return { host: a.address, port: a.port, url: `${this.opts.tls ? 'https' : 'http'}://${host}:${a.port}` };
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.expiring) clearImmediate(this.expiring);
    this.expiring = null;
    this.eventLoopDelay.stop();
    if (this.clusterTimer) clearInterval(this.clusterTimer);
    this.clusterTimer = null;
    this.channelWatch.close();
    await this.saveState(true);
    this.noteOverheads();
    await this.memory.save();
    await this.rollouts.stop();
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
    // After the last answer: another instance may take our keys at once.
    await this.stopCluster();
  }

  /** The expiry's work so far, counted (issue 17), never timed: timer ticks, allocators visited, members walked, turns and the largest. */
  expiryWork(): { ticks: number; allocators: number; members: number; slices: number; largestSlice: number } {
    let members = 0;
    for (const g of this.groups.values()) members += g.membersWalked;
    return { ticks: this.ticks, allocators: this.groups.visited, members, slices: this.expirySlices, largestSlice: this.largestExpirySlice };
  }

  /** Times `member` of `group` was sent `unit` of `release` (000 claim 8's send registrations). */
  fetchCount(release: string, group: string, member: string, unit: number): number {
    return this.fetches.get(`${release}/${group}/${member}/${unit}`) ?? 0;
  }

  /** Unit bytes written to `member`'s sockets for `release` (whole fetches and resumed ranges). */
  bytesSentTo(release: string, group: string, member: string): number {
    return this.memberBytes.get(`${release}/${group}/${member}`) ?? 0;
  }

  fleet(): unknown {
    const now = this.now();
    return {
      rollouts: this.rollouts.brief(),
      // Groups nobody is in any more (moved to a newer release, or left) are not shown.
      groups: [...this.groups.entries()].filter(([, g]) => g.memberCount() > 0).map(([key, g]) => {
        const { release, group, wide } = parseAllocatorKey(key);
        const rel = this.store.peek(release);
        const members = g.memberViews(now).map((m): FleetMemberRecord => {
          // Hooks are kept by the member's LAN group (a wide-area group's key names the wide one).
          const h = this.memory.hook(`${release}/${m.group || group}/${m.id}`);
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
    r.counter('origin_granted_units_total', 'Units leased with an HTTP range origin to fetch their bytes from (docs/scale-out.md)', [[{}, this.stats.originGrants]]);
    r.counter('http_requests_total', 'HTTP API answers, by status code', [...this.httpStatus].sort((a, b) => a[0] - b[0]).map(([code, n]) => [{ code: String(code) }, n]));
    r.gauge('releases', 'Releases in the store', [[{}, this.store.list().length]]);
    r.counter('hedged_bytes_total', 'Unit bytes sent under hedge leases (a second member fetching a straggler\'s unit)', [[{}, this.stats.hedgedBytes]]);
    r.counter('limit_hits_total', 'Requests, connections or writes a limit refused or cut (docs/security.md)', Object.entries(this.stats.limits).map(([limit, v]) => [{ limit }, v]));
    r.counter('bad_unit_reports_total', 'Agents\' reports of a unit from this server failing verification again and again', [[{}, this.stats.badUnitReports]]);
    r.gauge('connections', 'Open HTTP connections', [[{}, this.connections.open_]]);
    r.gauge('channel_polls_held', "Channel long polls held now: a follower's (held up to a day, docs/protocol.md sections 19 and 20) and others", [[{ kind: 'following' }, this.polls.following], [{ kind: 'plain' }, this.polls.plain]]);
    r.counter('channel_polls_gone_total', 'Held channel polls whose connection closed before their answer (the agent left, or keepalive probes found it gone)', [[{}, this.polls.gone]]);
    const streams = streamRoutes(this.opts.storeDir).alloc;
    r.counter('stream_holders_cut_total', 'Stream units left out of heartbeat answers\' holders because the window passed its cap (65,536 units; docs/protocol.md, streams)', [[{}, streams.holdersCut]]);
    r.counter('stream_share_deferrals_total', "Stream lease asks answered with nothing so that a member behind its share of the stream could take the unit (docs/protocol.md section 15, Shares)", [[{}, streams.shareDeferrals]]);
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
    r.histogram('request_duration_seconds', "Seconds from a request's headers being parsed to the last byte of its answer, by kind (kinds seen so far; channel_wait is a long poll, unit a unit's bytes)", REQUEST_KINDS.filter((k) => this.requestSeconds.has(k)).map((kind) => [{ kind }, this.requestSeconds.get(kind)!]));
    this.eventLoopDelay.fold();
    r.histogram('event_loop_delay_seconds', "How late the event loop ran a timer: a 10 ms one while the loop is busy (perf_hooks.monitorEventLoopDelay), the server's own tick while it is idle; time every request waits on top of its own", [[{}, this.eventLoopDelay.histogram]]);
    this.rollouts.metrics(r);
    return r.text() + processMetrics('fleetcast');
  }
}
