import { getEventListeners } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ROLLOUT_TOKEN_RE } from '../wire/ids';
import { FOLLOWING_MAX_MS } from '../wire/http-bodies';
import { Agent } from './agent';
import type { Heartbeats } from './heartbeat';
import { HookResult, runHook } from './hook';
import { markCompleted, prune } from './retention';
import { ChannelHead, parseChannelHead } from '../release/channels';
import { ExitCode, FleetcastError } from '../util/errors';
import { ControlClient, describeFetchError, tlsTrustProblem } from './control-client';
import type { HttpAnswer } from '../net/server-access';
import { parseManifest } from '../release/manifest';
import { noteNewest, readNewest } from './daemon-files';
import { DaemonState, HOOK_FILE, isFatal, Reloadable } from './daemon-state';

export type { DaemonOptions, Reloadable } from './daemon-state';

/**
 * The long-running agent (`fleetcast agent` without --once): it follows a channel (or
 * stays on one release), runs one Agent at a time, runs the on_complete hook once per
 * release and reports its status to the server, prunes old releases, and answers
 * `fleetcast status` on a unix socket and Prometheus on a metrics address.
 */
export class AgentDaemon extends DaemonState {
  get channel(): string | undefined {
    return this.opts.channel;
  }

  /** Run until stop(): follow the channel (or stay on the one release). */
  async runForever(): Promise<void> {
    this.startSampling();
    while (!this.stopped) {
      try {
        const acted = this.follower.actions;
        const target = await this.target(true);
        const pending = target !== this.currentRelease || !this.current;
        if (target !== this.currentRelease && Date.now() >= this.retryAt) await this.switchTo(target);
        if (this.opts.channel) await this.follower.step(this.opts.channel);
        this.settled = !pending && this.follower.actions === acted;
        this.pollBackoffMs = 0;
      } catch (err) {
        this.settled = false;
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

  /** The release to be on: the fixed one, or the channel's current one (`wait`: a long poll). */
  protected async target(wait = false): Promise<string> {
    if (this.opts.release) return this.opts.release;
    const head = await this.fetchChannel(wait);
    // A rollout on the channel: its release is staged at once, whatever our wave. 1.7: a
    // held poll that named us stood for this poll while nothing moved (section 19).
    await this.follower.poll(this.opts.channel!, { token: this.rolloutToken, following: this.following.has('rollout') });
    return this.follower.target(head.release);
  }

  /**
   * The channel's head. `wait`: a long poll (docs/protocol.md, section 13) that the server
   * holds up to channel_poll while the channel still names the release of our last poll,
   * so a move is learned at once and an idle agent asks once per channel_poll. 1.6
   * (section 18): while no rollout runs on the channel, as long as the server grants (5
   * minutes), with the rollout token of its last answer, so that a rollout starting or
   * moving ends the hold too: an idle agent then costs the server almost nothing. 1.7
   * (section 19): it names our member and group, so the server sees us follow the channel
   * and live through it, and the rollout poll after it can be left out.
   */
  async fetchChannel(wait = false): Promise<ChannelHead> {
    const ch = this.opts.channel!;
    const known = this.channelKnown;
    const long = this.settled && this.rolloutToken !== null && this.serverMaxHoldMs !== null && this.follower.quiet();
    const holdMs = wait && known ? Math.round(long ? Math.max(this.opts.channelPollMs, this.serverMaxHoldMs!) : this.opts.channelPollMs) : 0;
    const params: Record<string, string> = holdMs > 0 ? { release: known!, waitMs: String(holdMs) } : {};
    if (holdMs > 0 && this.rolloutToken !== null) {
      params.rollout = this.rolloutToken;
      // 1.7 (section 19): the poll names us, so it shows the server we follow and live.
      const member = await this.follower.memberId();
      if (member) Object.assign(params, { member, group: this.opts.agent.group });
    }
    this.following = new Set();
    const query = holdMs > 0 ? `?${new URLSearchParams(params)}` : '';
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
      if (params.member) this.unheld();
      throw tlsTrustProblem(err, this.opts.agent.server.url) ?? new FleetcastError('UNREACHABLE', `asking the server for channel ${ch}: ${describeFetchError(err)}`);
    }
    // An older server answers at once and ignores the query: then the loop sleeps between polls.
    if (holdMs > 0 && res.status === 200) {
      const granted = res.headers['x-fleetcast-long-poll'];
      this.serverHoldsPolls = granted !== undefined;
      const ms = typeof granted === 'string' && /^\d{1,9}$/.test(granted) ? Number(granted) : NaN;
      this.serverMaxHoldMs = ms >= 1000 ? Math.min(ms, FOLLOWING_MAX_MS) : null; // 1.8: a day (section 20)
      const token = res.headers['x-fleetcast-rollout'];
      this.rolloutToken = typeof token === 'string' && ROLLOUT_TOKEN_RE.test(token) ? token : null;
      const following = res.headers['x-fleetcast-following'];
      this.following = new Set(typeof following === 'string' && params.member ? following.split(',') : []);
    }
    if (params.member && !this.following.has('member')) this.unheld();
    if (res.status === 404) throw new FleetcastError('NO_CHANNEL', `the server has no channel ${ch} yet`);
    if (res.status === 401) throw new FleetcastError('UNAUTHORIZED', 'the server refused our token (401): check token or token_file', ExitCode.NOPERM);
    if (res.status < 200 || res.status > 299) throw new FleetcastError('HTTP', `channel ${ch}: server said ${res.status} ${body.toString('utf8').slice(0, 200)}`);
    const head = parseChannelHead(body);
    if (typeof head === 'string') throw new FleetcastError('BAD_RESPONSE', `channel ${ch}: bad answer from the server: ${head}`);
    this.channelKnown = head.release;
    return head;
  }

  /** A poll that named us did not keep us alive (section 19): an hour-long heartbeat interval no longer holds. */
  private unheld(): void {
    (this.current?.heartbeats as Heartbeats | undefined)?.unheld();
  }

  protected newAgent(id: string): Agent {
    return new Agent({ ...this.opts.agent, releaseId: id, logger: this.log, onProgress: () => this.opts.onProgress?.(this) });
  }

  /** Leave the release we are on (a superseded partial is discarded) and start on `id` in the background. */
  /**
   * Before leaving the release we are on: the new one's manifest must be signed by a
   * trusted key and, when following a channel, not older than the newest release this
   * agent has had (a replayed old release from a hostile mirror is refused; set
   * allow_downgrade to roll back on purpose). A refused release is not retried.
   */
  protected async precheck(id: string): Promise<boolean> {
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

  protected async switchTo(id: string): Promise<void> {
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

  protected async retire(ag: Agent): Promise<void> {
    this.absorb(ag);
    await ag.leave();
    await ag.close();
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
      // Say so now, before a step may start the install: the loop's own poll could come just
      // before the record was written and then wait on that step, which reports only once the
      // hook is done: a wave that waits for every member's staging waited on itself (the
      // rollout-e2e halt test timed out "waiting for all 8 staged B" on a busy box).
      await this.follower.poll(this.opts.channel);
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
  protected async reportHook(ag: Agent, r: HookResult): Promise<void> {
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

  protected setState(s: AgentDaemon['state']): void {
    this.state = s;
    // The rate sampler pauses while idle (sample()); a transfer brings it back.
    if (s === 'fetching' && !this.stopped) this.startSampling();
    this.opts.onState?.(this);
  }

  /**
   * Wait `ms`, or until woken (reload, a failed agent) or stopped. The abort listener
   * goes when the wait ends however it ends: one left per poll piled up on the
   * long-lived signal (MaxListenersExceededWarning after a few minutes of polling).
   */
  protected sleep(ms: number): Promise<void> {
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
  protected wakeUp(): void {
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
}
