import { getEventListeners } from 'node:events';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Agent, AgentCounters, AgentOptions, zeroCounters } from './agent';
import { HookResult, runHook } from './hook';
import { markCompleted, prune } from './retention';
import { ChannelHead, parseChannelHead } from '../release/channels';
import { Logger, Level } from '../util/log';
import { MetricsRegistry, processMetrics } from '../util/metrics';
import { RateMeter, verifiedBytes } from '../util/rate';
import { ExitCode, FleetcastError } from '../util/errors';
import { ControlClient, describeFetchError, tlsTrustProblem } from './control-client';
import type { HttpAnswer } from '../net/server-access';
import { parseManifest } from '../release/manifest';
import { writeAtomic } from '../storage/files';
import { InstallHooks, RolloutFollower } from './install';

/**
 * The long-running agent (`fleetcast agent` without --once): it follows a channel (or
 * stays on one release), runs one Agent at a time, runs the on_complete hook once per
 * release and reports its status to the server, prunes old releases, and answers
 * `fleetcast status` on a unix socket and Prometheus on a metrics address.
 */
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
  onProgress?: (d: AgentDaemon) => void;
  /** Called when the agent moves to a release (status line for systemd). */
  onState?: (d: AgentDaemon) => void;
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

type Totals = AgentCounters;
const ZERO: Totals = zeroCounters();

const HOOK_FILE = 'hook.json';

/** Errors that end the daemon instead of being retried: the config must change first. */
const isFatal = (err: unknown): boolean => err instanceof FleetcastError && err.code === 'TLS_UNTRUSTED';
const MAX_ERRORS = 10;

export class AgentDaemon {
  current: Agent | null = null;
  currentRelease: string | null = null;
  state: 'starting' | 'fetching' | 'complete' | 'waiting' | 'retrying' | 'stopped' = 'starting';
  readonly lastErrors: { at: string; message: string }[] = [];
  lastHook: (HookResult & { release: string }) | null = null;
  /** The last release this agent completed: when, and how long it took. */
  lastCompletion: { release: string; atMs: number; seconds: number } | null = null;
  hooksRun = 0;
  private readonly started = Date.now();
  /** Counters of agents that have ended, so totals only grow. */
  private readonly past: Totals = { ...ZERO };
  private readonly pastDrops: Record<string, number> = {};
  private rates = { wanBytesPerSec: 0, lanBytesPerSec: 0, sentBytesPerSec: 0 };
  private lastSample = { at: Date.now(), wan: 0, lan: 0, sent: 0 };
  private sampler: NodeJS.Timeout | null = null;
  /** Verified bytes of the current release over time: `status`'s rate and ETA. */
  private verifiedRate = new RateMeter(10_000);
  private stopped = false;
  private readonly abort = new AbortController();
  private wakeLoop: (() => void) | null = null;
  /** Aborts a held channel poll when the loop is woken (reload, a failed agent). */
  private pollWake = new AbortController();
  /** The release the channel named at the last poll: the next poll waits for it to change. */
  private channelKnown: string | null = null;
  /** The server holds channel polls until the channel moves (long poll): no sleep between them. Null: not asked yet. */
  private serverHoldsPolls: boolean | null = null;
  private pollBackoffMs = 0;
  private readonly refused = new Set<string>();
  private failures = 0;
  /** An error no retry can fix (an untrusted certificate): runForever ends with it. */
  private fatal: Error | null = null;
  private retryAt = 0;
  private readonly log: Logger;
  private statusServer: http.Server | null = null;
  private opts: DaemonOptions;
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

  get channel(): string | undefined {
    return this.opts.channel;
  }

  noteError(message: string): void {
    this.lastErrors.push({ at: new Date().toISOString(), message });
    if (this.lastErrors.length > MAX_ERRORS) this.lastErrors.shift();
  }

  /** Run until stop(): follow the channel (or stay on the one release). */
  async runForever(): Promise<void> {
    this.startSampling();
    while (!this.stopped) {
      try {
        const target = await this.target(true);
        if (target !== this.currentRelease && Date.now() >= this.retryAt) await this.switchTo(target);
        if (this.opts.channel) await this.follower.step(this.opts.channel);
        this.pollBackoffMs = 0;
      } catch (err) {
        if (isFatal(err)) throw err;
        if (err instanceof FleetcastError && err.code === 'WOKEN') continue;
        this.pollBackoffMs = Math.min(60_000, Math.max(1000, this.pollBackoffMs * 2));
        this.log.warn(`${(err as Error).message}; asking again in ${this.pollBackoffMs / 1000} s`);
        if (!this.current) this.setState('retrying');
      }
      // A held poll (long poll) already waited up to channelPollMs for the channel to move;
      // after the first answer, the next poll finds out whether the server holds them.
      const held = this.opts.channel && this.channelKnown !== null && this.serverHoldsPolls !== false;
      await this.sleep(Math.max(this.pollBackoffMs, held ? 0 : this.opts.channelPollMs));
      if (this.fatal) throw this.fatal;
    }
  }

  /** --once: get the release to be on, fetch it, run the hook; resolves with its path. */
  async runOnce(): Promise<{ agent: Agent; path: string }> {
    this.startSampling();
    let target: string | null = null;
    while (!target) {
      try {
        target = await this.target();
      } catch (err) {
        if (err instanceof FleetcastError && err.code !== 'NO_CHANNEL' && err.code !== 'UNREACHABLE') throw err;
        this.log.warn(`${(err as Error).message}; asking again in 1 s`);
        await this.sleep(1000);
        if (this.stopped) throw new FleetcastError('STOPPED', 'stopped');
      }
    }
    this.currentRelease = target;
    this.setState('fetching');
    const ag = this.newAgent(target);
    this.current = ag;
    const finalPath = await ag.run();
    this.setState('complete');
    await this.completed(ag, finalPath);
    return { agent: ag, path: finalPath };
  }

  private startSampling(): void {
    this.sampler = setInterval(() => this.sample(), 1000);
    this.sampler.unref();
  }

  /** The release to be on: the fixed one, or the channel's current one (`wait`: a long poll). */
  private async target(wait = false): Promise<string> {
    if (this.opts.release) return this.opts.release;
    const head = await this.fetchChannel(wait);
    // A rollout on the channel: its release is staged at once, whatever our wave.
    await this.follower.poll(this.opts.channel!);
    return this.follower.target(head.release);
  }

  /**
   * The channel's head. `wait`: a long poll (docs/protocol.md, section 13) that the server
   * holds up to channel_poll while the channel still names the release of our last poll,
   * so a move is learned at once and an idle agent asks once per channel_poll.
   */
  async fetchChannel(wait = false): Promise<ChannelHead> {
    const ch = this.opts.channel!;
    const known = this.channelKnown;
    const holdMs = wait && known ? Math.round(this.opts.channelPollMs) : 0;
    const query = holdMs > 0 ? `?${new URLSearchParams({ release: known!, waitMs: String(holdMs) })}` : '';
    const woken = this.pollWake.signal;
    // node:http with keep-alive, not fetch(): a cold fetch() cost an idle agent ~6 ms of
    // CPU per poll, a third of its idle cost at the default 10 s poll.
    let res: HttpAnswer;
    let body: Buffer;
    try {
      const signals = [AbortSignal.timeout(10_000 + holdMs), this.abort.signal, ...(holdMs > 0 ? [woken] : [])];
      res = await this.opts.agent.server.request('GET', `/v1/channels/${encodeURIComponent(ch)}${query}`, { signal: AbortSignal.any(signals) });
      body = await res.bytes();
    } catch (err) {
      if (woken.aborted && !this.abort.signal.aborted) throw new FleetcastError('WOKEN', 'channel poll cut short');
      throw tlsTrustProblem(err, this.opts.agent.server.url) ?? new FleetcastError('UNREACHABLE', `asking the server for channel ${ch}: ${describeFetchError(err)}`);
    }
    // An older server answers at once and ignores the query: then the loop sleeps between polls.
    if (holdMs > 0 && res.status === 200) this.serverHoldsPolls = res.headers['x-fleetcast-long-poll'] !== undefined;
    if (res.status === 404) throw new FleetcastError('NO_CHANNEL', `the server has no channel ${ch} yet`);
    if (res.status === 401) throw new FleetcastError('UNAUTHORIZED', 'the server refused our token (401): check token or token_file', ExitCode.NOPERM);
    if (res.status < 200 || res.status > 299) throw new FleetcastError('HTTP', `channel ${ch}: server said ${res.status} ${body.toString('utf8').slice(0, 200)}`);
    const head = parseChannelHead(body);
    if (typeof head === 'string') throw new FleetcastError('BAD_RESPONSE', `channel ${ch}: bad answer from the server: ${head}`);
    this.channelKnown = head.release;
    return head;
  }

  private newAgent(id: string): Agent {
    return new Agent({ ...this.opts.agent, releaseId: id, logger: this.log, onProgress: () => this.opts.onProgress?.(this) });
  }

  /** Leave the release we are on (a superseded partial is discarded) and start on `id` in the background. */
  /**
   * Before leaving the release we are on: the new one's manifest must be signed by a
   * trusted key and, when following a channel, not older than the newest release this
   * agent has had (a replayed old release from a hostile mirror is refused; set
   * allow_downgrade to roll back on purpose). A refused release is not retried.
   */
  private async precheck(id: string): Promise<boolean> {
    if (this.refused.has(id)) return false;
    if (!this.opts.channel || this.opts.allowDowngrade || this.follower.allowsMoveTo(id)) return true;
    const newest = await readNewest(this.opts.agent.storageDir);
    if (!newest || newest.release === id) return true;
    const client = new ControlClient(this.opts.agent.server, AbortSignal.any([this.abort.signal, AbortSignal.timeout(30_000)]), this.log);
    const m = parseManifest(await client.getManifest(id), this.opts.agent.trustedKeys);
    if (m.id !== id) throw new FleetcastError('WRONG_RELEASE', `the server sent manifest ${m.id} when asked for ${id}`, ExitCode.DATAERR);
    if (Date.parse(m.created) >= newest.created) return true;
    this.refused.add(id);
    this.log.error(
      `refusing release ${m.name} (${id}) from channel ${this.opts.channel}: created ${m.created}, before ${newest.name} (${newest.release}, ${new Date(newest.created).toISOString()}) which this agent already has. ` +
        'A replay of an old release? To roll back on purpose, set allow_downgrade: true.',
    );
    return false;
  }

  private async switchTo(id: string): Promise<void> {
    if (!(await this.precheck(id))) return;
    const old = this.current;
    if (old) {
      this.log.info(`moving from release ${this.currentRelease} to ${id}`);
      this.current = null;
      await this.retire(old);
    }
    this.currentRelease = id;
    this.setState('fetching');
    // Superseded partials go now, before the new release takes their space.
    await prune(this.opts.agent.storageDir, id, this.opts.keep, this.log).catch((err) => this.log.warn(`pruning: ${(err as Error).message}`));
    const ag = this.newAgent(id);
    this.current = ag;
    ag.run().then(
      (finalPath) => {
        if (this.current !== ag) return;
        this.failures = 0;
        this.setState('complete');
        this.completed(ag, finalPath).catch((err) => this.log.error(`after completing ${id}: ${(err as Error).message}`));
      },
      async (err: Error) => {
        if (this.current !== ag) return;
        this.current = null;
        this.currentRelease = null;
        if (isFatal(err)) {
          this.fatal = err;
          await this.retire(ag).catch(() => undefined);
          this.wakeUp();
          return;
        }
        this.failures++;
        const wait = Math.min(60_000, 1000 * 2 ** Math.min(6, this.failures - 1));
        this.retryAt = Date.now() + wait;
        // Storage that cannot be written (read-only, missing, full) waits for someone to fix
        // it: a warning each retry, not silence.
        const storage = /storage/.test(err.message);
        (storage ? this.log.warn : this.log.error)(`release ${id}: ${err.message}; trying again in ${wait / 1000} s`);
        this.setState('retrying');
        await this.retire(ag).catch(() => undefined);
        this.wakeUp();
      },
    );
  }

  private async retire(ag: Agent): Promise<void> {
    this.absorb(ag);
    await ag.leave();
    await ag.close();
  }

  /** Fold an ending agent's counters into the totals. */
  private absorb(ag: Agent): void {
    for (const k of Object.keys(ZERO) as (keyof Totals)[]) this.past[k] += ag.stats[k];
    for (const [r, n] of Object.entries(ag.stats.drops)) this.pastDrops[r] = (this.pastDrops[r] ?? 0) + n;
  }

  /** Hook (once per release, remembered on disk), report to the server, prune. */
  async completed(ag: Agent, finalPath: string): Promise<void> {
    const m = ag.manifest;
    this.lastCompletion = { release: m.id, atMs: ag.stats.completedAtMs || Date.now(), seconds: ag.stats.seconds };
    const dir = path.join(this.opts.agent.storageDir, m.id);
    await markCompleted(this.opts.agent.storageDir, m.id);
    if (this.opts.channel && this.follower.owns(m.id)) {
      // Staged for a rollout: the install hook runs when the wave and window allow (install.ts).
      await this.follower.staged(m, finalPath);
      await prune(this.opts.agent.storageDir, m.id, this.opts.keep, this.log);
      await this.follower.step(this.opts.channel);
      return;
    }
    await noteNewest(this.opts.agent.storageDir, { release: m.id, name: m.name, created: Date.parse(m.created) });
    const cmd = this.opts.onComplete;
    if (cmd) {
      const hookFile = path.join(dir, HOOK_FILE);
      const already = await fs.readFile(hookFile, 'utf8').then(
        (t) => JSON.parse(t) as HookResult,
        () => null,
      );
      let r: HookResult;
      if (already) {
        r = already;
        this.log.info(`hook already ran for ${m.name} (${m.id}); not running it again`);
      } else {
        this.log.info(`running on_complete hook for ${m.name}`);
        r = await runHook(
          cmd,
          {
            FLEETCAST_FILE: finalPath,
            FLEETCAST_RELEASE_ID: m.id,
            FLEETCAST_RELEASE_NAME: m.name,
            FLEETCAST_SHA256: m.sha256,
            FLEETCAST_SIZE: String(m.size),
            FLEETCAST_CHANNEL: this.opts.channel ?? '',
            FLEETCAST_GROUP: this.opts.agent.group,
            FLEETCAST_MEMBER: ag.memberId,
          },
          this.opts.hookTimeoutMs,
          this.log.child('hook'),
        );
        await fs.writeFile(hookFile, JSON.stringify(r) + '\n');
        this.hooksRun++;
        const how = r.exitCode !== undefined ? `exit status ${r.exitCode}` : r.signal ? `signal ${r.signal}` : (r.error ?? 'unknown');
        (r.exitCode === 0 ? this.log.info : this.log.error)(`hook for ${m.name}: ${how} after ${r.durationMs} ms`);
      }
      this.lastHook = { ...r, release: m.id };
      await this.reportHook(ag, r);
    }
    await prune(this.opts.agent.storageDir, m.id, this.opts.keep, this.log);
  }

  /** To the server, with the control client's retries (backoff on network errors and 5xx) for up to a minute. */
  private async reportHook(ag: Agent, r: HookResult): Promise<void> {
    const body = { release: ag.manifest.id, group: this.opts.agent.group, member: ag.memberId, durationMs: r.durationMs, exitCode: r.exitCode, signal: r.signal, error: r.error?.slice(0, 512) };
    const client = new ControlClient(this.opts.agent.server, AbortSignal.any([this.abort.signal, AbortSignal.timeout(60_000)]), this.log);
    await client.post('/v1/hook', body).catch((err: Error) => this.log.warn(`reporting the hook's result: ${err.message}`));
  }

  /** Apply a reloaded config; returns what changed. */
  reload(r: Reloadable): string[] {
    const changed: string[] = [];
    if (this.current && this.current.rateBytesPerSec !== r.rateBytesPerSec) {
      this.current.setRate(r.rateBytesPerSec);
      changed.push('rate');
    }
    if (this.opts.agent.rateBytesPerSec !== r.rateBytesPerSec && !changed.includes('rate')) changed.push('rate');
    if (r.keep !== this.opts.keep) changed.push('keep');
    if (r.onComplete !== this.opts.onComplete) changed.push('on_complete');
    if (r.hookTimeoutMs !== this.opts.hookTimeoutMs) changed.push('hook_timeout');
    const channelChanged = r.channel !== this.opts.channel;
    if (channelChanged) changed.push('channel');
    if (r.allowDowngrade !== Boolean(this.opts.allowDowngrade)) {
      changed.push('allow_downgrade');
      this.refused.clear();
    }
    this.opts = {
      ...this.opts,
      agent: { ...this.opts.agent, rateBytesPerSec: r.rateBytesPerSec },
      channel: r.channel,
      keep: r.keep,
      onComplete: r.onComplete,
      hookTimeoutMs: r.hookTimeoutMs,
      allowDowngrade: r.allowDowngrade,
    };
    this.opts.logger.setLevel(r.logLevel);
    if (channelChanged) this.channelKnown = null;
    if (channelChanged || changed.includes('allow_downgrade')) this.wakeUp();
    return changed;
  }

  private setState(s: AgentDaemon['state']): void {
    this.state = s;
    this.opts.onState?.(this);
  }

  /**
   * Wait `ms`, or until woken (reload, a failed agent) or stopped. The abort listener
   * goes when the wait ends however it ends: one left per poll piled up on the
   * long-lived signal (MaxListenersExceededWarning after a few minutes of polling).
   */
  private sleep(ms: number): Promise<void> {
    const signal = this.abort.signal;
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        resolve();
      }
      this.wakeLoop = done;
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** End the loop's wait now: its sleep, or a channel poll the server is holding. */
  private wakeUp(): void {
    this.wakeLoop?.();
    this.pollWake.abort();
    this.pollWake = new AbortController();
  }

  /** Listeners on the daemon's own abort signal (a leak shows as a growing count). */
  abortListenerCount(): number {
    return getEventListeners(this.abort.signal, 'abort').length;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.setState('stopped');
    this.abort.abort();
    this.wakeLoop?.();
    if (this.sampler) clearInterval(this.sampler);
    if (this.current) await this.retire(this.current);
    await new Promise<void>((resolve) => (this.statusServer ? this.statusServer.close(() => resolve()) : resolve()));
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

  private sample(): void {
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
  private transfer(ag: Agent): { verifiedBytes: number; bytesPerSec: number | null; etaSeconds: number | null } {
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

  private async listenStatus(socketPath: string): Promise<http.Server> {
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

interface Newest {
  release: string;
  name: string;
  /** The manifest's `created`, ms since the epoch. */
  created: number;
}

const NEWEST_FILE = 'newest.json';

/** The newest release (by its signed `created` time) this agent has completed. */
async function readNewest(storageDir: string): Promise<Newest | null> {
  try {
    const j = JSON.parse(await fs.readFile(path.join(storageDir, NEWEST_FILE), 'utf8')) as Newest;
    return typeof j.created === 'number' && typeof j.release === 'string' ? j : null;
  } catch {
    return null;
  }
}

async function noteNewest(storageDir: string, n: Newest): Promise<void> {
  const cur = await readNewest(storageDir);
  if (cur && cur.created >= n.created) return;
  await writeAtomic(path.join(storageDir, NEWEST_FILE), Buffer.from(JSON.stringify(n) + '\n'));
}

/** A logger that also remembers warnings and errors for `fleetcast status`. */
function recordingLogger(inner: Logger, note: (m: string) => void): Logger {
  return {
    error: (m) => {
      note(m);
      inner.error(m);
    },
    warn: (m) => {
      note(m);
      inner.warn(m);
    },
    info: (m) => inner.info(m),
    debug: (m) => inner.debug(m),
    child: (p) => recordingLogger(inner.child(p), (m) => note(`${p}: ${m}`)),
    setLevel: (l) => inner.setLevel(l),
  };
}
