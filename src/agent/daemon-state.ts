import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Agent, AgentCounters, AgentOptions, zeroCounters } from './agent';
import { HookResult } from './hook';
import { Logger, Level } from '../util/log';
import { MetricsRegistry, processMetrics } from '../util/metrics';
import { RateMeter, verifiedBytes } from '../util/rate';
import { FleetcastError } from '../util/errors';
import { InstallHooks, RolloutFollower } from './install';
import { noteNewest, recordingLogger } from './daemon-files';

export interface DaemonOptions {
  agent: Omit<AgentOptions, 'releaseId' | 'onProgress' | 'logger'>;
  release?: string;
  channel?: string;
  keep: number;
  onComplete?: string;
  hookTimeoutMs: number;
  channelPollMs: number;
  /** Follow a channel back to an older release (otherwise refused as a possible replay). */
  allowDowngrade?: boolean;
  logger: Logger;
  onProgress?: (d: DaemonState) => void;
  /** Called when the agent moves to a release (status line for systemd). */
  onState?: (d: DaemonState) => void;
  /** Rollouts (install.ts): on_rollback, health_check, install_window. */
  install?: Omit<InstallHooks, 'onComplete' | 'hookTimeoutMs'>;
}

/** What can change on SIGHUP. */
export interface Reloadable {
  rateBytesPerSec: number;
  channel?: string;
  keep: number;
  onComplete?: string;
  hookTimeoutMs: number;
  allowDowngrade: boolean;
  logLevel: Level;
}

export type Totals = AgentCounters;
export const ZERO: Totals = zeroCounters();

export const HOOK_FILE = 'hook.json';

/** Errors that end the daemon instead of being retried: the config must change first. */
export const isFatal = (err: unknown): boolean => err instanceof FleetcastError && err.code === 'TLS_UNTRUSTED';
export const MAX_ERRORS = 10;

/**
 * The daemon's state and what it reports: counters that only grow across releases,
 * rates sampled every second, `fleetcast status` (JSON on a unix socket) and Prometheus
 * metrics. The run loop is AgentDaemon (daemon.ts).
 */
export abstract class DaemonState {
  current: Agent | null = null;
  currentRelease: string | null = null;
  state: 'starting' | 'fetching' | 'complete' | 'waiting' | 'retrying' | 'stopped' = 'starting';
  readonly lastErrors: { at: string; message: string }[] = [];
  lastHook: (HookResult & { release: string }) | null = null;
  /** The last release this agent completed: when, and how long it took. */
  lastCompletion: { release: string; atMs: number; seconds: number } | null = null;
  hooksRun = 0;
  protected readonly started = Date.now();
  /** Counters of agents that have ended, so totals only grow. */
  protected readonly past: Totals = { ...ZERO };
  protected readonly pastDrops: Record<string, number> = {};
  protected rates = { wanBytesPerSec: 0, lanBytesPerSec: 0, sentBytesPerSec: 0 };
  protected lastSample = { at: Date.now(), wan: 0, lan: 0, sent: 0 };
  protected sampler: NodeJS.Timeout | null = null;
  /** Verified bytes of the current release over time: `status`'s rate and ETA. */
  protected verifiedRate = new RateMeter(10_000);
  protected stopped = false;
  protected readonly abort = new AbortController();
  protected wakeLoop: (() => void) | null = null;
  /** Aborts a held channel poll when the loop is woken (reload, a failed agent). */
  protected pollWake = new AbortController();
  /** The release the channel named at the last poll: the next poll waits for it to change. */
  protected channelKnown: string | null = null;
  /** The server holds channel polls until the channel moves (long poll): no sleep between them. Null: not asked yet. */
  protected serverHoldsPolls: boolean | null = null;
  /** The longest hold the server grants (its `x-fleetcast-long-poll`), null before it said. */
  protected serverMaxHoldMs: number | null = null;
  /** 1.6: the channel's rollout token from the last answer, sent back so a rollout move ends the hold. */
  protected rolloutToken: string | null = null;
  /** 1.7: what the last held channel poll stood for (its `x-fleetcast-following`: rollout, member). */
  protected following: ReadonlySet<string> = new Set();
  /**
   * The last round of the loop left nothing to do: it stayed on its release (and has one),
   * and no rollout action ran. Only then may the next channel poll be held long: a round
   * that rolled back or switched must come round again at once to act on what it did.
   */
  protected settled = false;
  protected pollBackoffMs = 0;
  protected readonly refused = new Set<string>();
  protected failures = 0;
  /** An error no retry can fix (an untrusted certificate): runForever ends with it. */
  protected fatal: Error | null = null;
  protected retryAt = 0;
  protected readonly log: Logger;
  protected statusServer: http.Server | null = null;
  protected opts: DaemonOptions;
  /** More status fields from the command (e.g. the IGMP querier). */
  statusExtras: () => Record<string, unknown> = () => ({});

  /** Installs under a rollout of the channel: by wave and window, with health check and rollback. */
  readonly follower: RolloutFollower;


  constructor(opts: DaemonOptions) {
    this.opts = opts;
    this.log = recordingLogger(opts.logger, (m) => this.noteError(m));
    const a = opts.agent;
    this.follower = new RolloutFollower({
      storageDir: a.storageDir,
      server: a.server,
      group: a.group,
      member: a.member,
      trustedKeys: a.trustedKeys,
      hooks: () => ({ onComplete: this.opts.onComplete, hookTimeoutMs: this.opts.hookTimeoutMs, healthTimeoutMs: this.opts.hookTimeoutMs, ...this.opts.install }),
      log: this.log.child('rollout'),
      signal: this.abort.signal,
      onCommitted: (m) => noteNewest(a.storageDir, { release: m.id, name: m.name, created: Date.parse(m.created) }),
      env: () => ({ FLEETCAST_CHANNEL: this.opts.channel ?? '' }),
    });
  }

  noteError(message: string): void {
    this.lastErrors.push({ at: new Date().toISOString(), message });
    if (this.lastErrors.length > MAX_ERRORS) this.lastErrors.shift();
  }

  protected startSampling(): void {
    if (this.sampler) return;
    this.lastSample.at = Date.now();
    this.sampler = setInterval(() => this.sample(), 1000);
    this.sampler.unref();
  }

  /** Fold an ending agent's counters into the totals. */
  protected absorb(ag: Agent): void {
    for (const k of Object.keys(ZERO) as (keyof Totals)[]) this.past[k] += ag.stats[k];
    for (const [r, n] of Object.entries(ag.stats.drops)) this.pastDrops[r] = (this.pastDrops[r] ?? 0) + n;
  }

  totals(): Totals & { drops: Record<string, number> } {
    const t: Totals = { ...this.past };
    const drops = { ...this.pastDrops };
    if (this.current) {
      for (const k of Object.keys(ZERO) as (keyof Totals)[]) t[k] += this.current.stats[k];
      for (const [r, n] of Object.entries(this.current.stats.drops)) drops[r] = (drops[r] ?? 0) + n;
    }
    return { ...t, drops };
  }

  protected sample(): void {
    const t = this.totals();
    const now = Date.now();
    const dt = Math.max(1, now - this.lastSample.at) / 1000;
    const sent = t.copyBytesSent + t.repairBytesSent;
    this.rates = {
      wanBytesPerSec: Math.max(0, (t.wanBytes - this.lastSample.wan) / dt),
      lanBytesPerSec: Math.max(0, (t.lanBytes - this.lastSample.lan) / dt),
      sentBytesPerSec: Math.max(0, (sent - this.lastSample.sent) / dt),
    };
    this.lastSample = { at: now, wan: t.wanBytes, lan: t.lanBytes, sent };
    const ag = this.current;
    if (ag?.manifest) this.verifiedRate.add(verifiedBytes(ag.progress, ag.manifest.size, ag.manifest.unitSize));
    // Idle (the release complete, nothing moving): no wake-up a second for rates that stay 0
    // (issue 14: an idle agent's CPU); setState('fetching') starts sampling again.
    if (ag?.isComplete && this.rates.wanBytesPerSec === 0 && this.rates.lanBytesPerSec === 0 && this.rates.sentBytesPerSec === 0 && this.sampler) {
      clearInterval(this.sampler);
      this.sampler = null;
    }
  }

  status(): Record<string, unknown> {
    const ag = this.current;
    const m = ag?.manifest;
    const ti = ag?.transportInfo;
    return {
      version: 1,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
      state: this.state,
      member: ag?.memberId || null,
      group: this.opts.agent.group,
      server: this.opts.agent.server.url,
      channel: this.opts.channel ?? null,
      wideGroup: this.opts.agent.wideGroup ?? null,
      // gateway: receives the other LAN groups' copies and re-multicasts them here.
      role: ag?.role ?? 'member',
      release: m
        ? {
            id: m.id,
            name: m.name,
            size: m.size,
            units: m.unitCount,
            verifiedUnits: ag!.progress.verified,
            ...this.transfer(ag!),
            complete: ag!.isComplete,
            path: ag!.finalPath,
          }
        : this.currentRelease
          ? { id: this.currentRelease, name: null, size: null, units: null, verifiedUnits: 0, complete: false, path: null }
          : null,
      rates: { ...this.rates, limitBytesPerSec: ag?.rateBytesPerSec ?? this.opts.agent.rateBytesPerSec ?? null },
      totals: this.totals(),
      // The group's other members as the server knows them: the ids `fleetcast fleet` shows.
      members: ag?.groupMembers() ?? [],
      // Senders heard on the LAN (per-release sender ids: the packets carry no member id).
      peers: ag?.peersSeen() ?? [],
      // Wide-area groups: the pace learned for each other site's gateway we copy to.
      crossPaths: ag?.crossPaths() ?? [],
      transport: ti ? { kind: ti.kind, features: ti.features, recvBufferBytes: ti.recvBufferBytes, fallbackReason: ti.fallbackReason ?? null } : null,
      hook: this.lastHook,
      rollout: this.follower.statusInfo(),
      lastErrors: this.lastErrors,
      ...this.statusExtras(),
    };
  }

  /** Bytes verified, the rate they grow at, and the time left at that rate (null: unknown). */
  protected transfer(ag: Agent): { verifiedBytes: number; bytesPerSec: number | null; etaSeconds: number | null } {
    const m = ag.manifest;
    const done = verifiedBytes(ag.progress, m.size, m.unitSize);
    const rate = ag.isComplete ? null : this.verifiedRate.rate();
    const left = m.size - done;
    return { verifiedBytes: done, bytesPerSec: rate, etaSeconds: left <= 0 ? 0 : rate ? Math.ceil(left / rate) : null };
  }

  metrics(): string {
    const r = new MetricsRegistry('fleetcast_agent');
    const t = this.totals();
    r.counter('received_bytes_total', 'Verified-path payload bytes received, by source', [
      [{ source: 'wan' }, t.wanBytes],
      [{ source: 'lan' }, t.lanBytes],
      [{ source: 'cross_group' }, t.crossGroupBytes],
    ]);
    r.counter('origin_bytes_total', 'Of the WAN bytes, those from an HTTP range origin instead of the server (docs/scale-out.md)', [[{}, t.originBytes]]);
    r.counter('origin_failures_total', 'Origin requests that failed (error, stall, wrong range or bytes); those units came from the server', [[{}, t.originFailures]]);
    r.counter('download_pauses_total', 'Times a download in flight paused because copies of its bytes waited to be sent (LAN or to other groups)', [[{}, t.downloadPauses]]);
    r.counter('download_paused_seconds_total', 'Seconds downloads in flight spent so paused, summed over the downloads (several run at once)', [[{}, t.downloadPausedMs / 1000]]);
    r.counter('lease_holds_total', 'Times a fetch worker waited for copies to other groups to drain before asking for a new lease', [[{}, t.leaseHolds]]);
    r.counter('lease_held_seconds_total', 'Seconds fetch workers spent so waiting, summed over the workers', [[{}, t.leaseHeldMs / 1000]]);
    r.counter('duplicate_bytes_total', 'LAN payload bytes received that we already had', [[{}, t.lanDuplicateBytes]]);
    r.counter('sent_bytes_total', 'Payload bytes sent, by kind (copy and repair on the LAN, cross_group by unicast to other groups)', [
      [{ kind: 'copy' }, t.copyBytesSent],
      [{ kind: 'repair' }, t.repairBytesSent],
      [{ kind: 'cross_group' }, t.crossGroupBytesSent],
    ]);
    r.counter('fragments_forwarded_total', "Other groups' fragments this gateway re-multicast on its LAN", [[{}, t.fragmentsForwarded]]);
    r.counter('nacks_sent_total', 'NACK packets sent', [[{}, t.nacksSent]]);
    r.counter('nacks_suppressed_total', 'NACKs not sent because a peer asked first', [[{}, t.nacksSuppressed]]);
    r.counter('nacks_heard_total', "NACK packets heard from peers", [[{}, t.nacksHeard]]);
    r.counter('nacks_answered_total', 'NACKed units this agent queued repairs for', [[{}, t.nacksAnswered]]);
    r.counter('repair_packets_sent_total', 'Repair datagrams sent', [[{}, t.repairPacketsSent]]);
    r.counter('drops_total', 'Datagrams dropped, by reason', Object.entries(t.drops).map(([reason, n]) => [{ reason }, n]));
    r.counter('units_verified_total', 'Units verified and stored, by source', [
      [{ source: 'wan' }, t.unitsFromWan],
      [{ source: 'lan' }, t.unitsFromLan],
    ]);
    r.counter('units_rejected_total', 'Units that failed their hash', [[{}, t.unitsRejected]]);
    r.counter('hooks_run_total', 'on_complete hooks run (and rollout hooks and health checks)', [[{}, this.hooksRun + this.follower.hooksRun]]);
    r.counter('rollout_polls_left_out_total', 'rollout polls left out because the held channel poll named this member and nothing moved (protocol 1.7)', [[{}, this.follower.pollsLeftOut]]);
    const p = this.current?.progress;
    r.gauge('release_units', 'Units of the current release', p ? [[{ release: this.currentRelease ?? '' }, p.total]] : []);
    r.gauge('release_verified_units', 'Verified units of the current release', p ? [[{ release: this.currentRelease ?? '' }, p.verified]] : []);
    r.gauge('progress_ratio', 'Share of the current release verified (0 to 1)', p ? [[{}, p.total === 0 ? 1 : p.verified / p.total]] : []);
    r.gauge('peers', 'Peers heard on the LAN in the last 5 s', [[{}, this.current?.peersSeen().length ?? 0]]);
    if (this.lastHook) {
      r.gauge('hook_last_exit_code', 'Exit status of the last hook (-1: signal or failed to start)', [[{ release: this.lastHook.release }, this.lastHook.exitCode ?? -1]]);
      r.gauge('hook_last_duration_seconds', 'How long the last hook ran', [[{ release: this.lastHook.release }, this.lastHook.durationMs / 1000]]);
    }
    const c = this.lastCompletion;
    if (c) {
      r.gauge('last_completion_timestamp_seconds', 'When the last release was complete and verified (unix time; alert on time() minus this)', [[{}, c.atMs / 1000]]);
      r.gauge('last_completion_duration_seconds', 'How long the last completed release took, from the agent starting on it to verified', [[{}, c.seconds]]);
    }
    return r.text() + processMetrics('fleetcast');
  }

  /**
   * `fleetcast status` answers: HTTP on a unix socket, GET /status → JSON. Agents that
   * share a file system (namespaces, containers) may share the path: bind() is the claim,
   * so exactly one agent serves it and the others are refused (the caller warns). Probing
   * and removing the path before binding let agents starting at once each remove the
   * others' socket and bind their own.
   */
  async serveStatus(socketPath: string): Promise<void> {
    await fs.mkdir(path.dirname(socketPath), { recursive: true });
    const inUse = () => new Error('another agent is answering on it');
    let srv: http.Server;
    try {
      srv = await this.listenStatus(socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      // Taken. A stale socket from a crash (nobody answers) goes, unless it was replaced meanwhile.
      const before = await fs.stat(socketPath).catch(() => null);
      if (await statusSocketAnswers(socketPath)) throw inUse();
      const after = await fs.stat(socketPath).catch(() => null);
      if (before && after && before.ino === after.ino) await fs.rm(socketPath, { force: true });
      srv = await this.listenStatus(socketPath).catch((e: NodeJS.ErrnoException) => {
        throw e.code === 'EADDRINUSE' ? inUse() : e;
      });
    }
    await fs.chmod(socketPath, 0o660).catch(() => undefined);
    srv.unref();
    // Served in the background (the agent's start does not wait for it): stopped meanwhile?
    if (this.stopped) srv.close();
    else this.statusServer = srv;
  }

  protected async listenStatus(socketPath: string): Promise<http.Server> {
    const srv = http.createServer((req, res) => {
      const body = req.method === 'GET' && req.url === '/status' ? JSON.stringify(this.status()) : null;
      res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' });
      res.end(body ?? JSON.stringify({ error: 'NOT_FOUND', message: 'GET /status' }));
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(socketPath, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    return srv;
  }
}

/** Whether an agent answers on the unix socket at `socketPath` (a connect is local: 2 s is plenty). */
function statusSocketAnswers(socketPath: string): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const c = net.connect(socketPath, () => {
      c.destroy();
      resolve(true);
    });
    c.setTimeout(2000, () => {
      c.destroy();
      resolve(true); // something holds it: leave it alone
    });
    c.on('error', () => resolve(false));
  });
}
