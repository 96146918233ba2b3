import { promises as fs } from 'node:fs';
import { KeyObject } from 'node:crypto';
import * as path from 'node:path';
import { HookResult, runHook } from './hook';
import { describeFetchError } from './control-client';
import { readMemberId } from './agent-setup';
import { ServerAccess } from '../net/server-access';
import { parseManifest, Manifest } from '../release/manifest';
import { Directive, parsePollAnswer, parseWindow, windowAllows, WindowPart } from '../wire/rollout';
import { writeAtomic } from '../storage/files';
import { Logger } from '../util/log';
import { parseJsonObject } from '../wire/json-object';

/**
 * Installs under a rollout (docs/rollouts.md): the agent stages the rollout's release
 * at once, runs the install hook (on_complete) only when the server says its wave is
 * open and the install window allows, then the health check, and on a failure the
 * on_rollback hook. Each step is written to `<storage>/<release>/install.json` before
 * and after it runs, so a restart continues where it was and no hook runs twice for
 * one release.
 *
 * The states follow Mender's ArtifactInstall -> ArtifactCommit, or ArtifactFailure ->
 * ArtifactRollback (https://docs.mender.io/artifacts/state-scripts); the health check
 * plays the part of RAUC's `rauc status mark-good` after a boot into the new slot.
 */
export type LocalState = 'staged' | 'installing' | 'installed' | 'committed' | 'failed' | 'rolling-back' | 'rolled-back';

export interface InstallRecord {
  version: 1;
  release: string;
  rollout: string;
  state: LocalState;
  reason: string | null;
  /** The on_rollback hook ran (or was interrupted): it never runs again for this release. */
  rollbackRan: boolean;
  /** The verified file. */
  path: string;
}

export type Action = 'none' | 'install' | 'health' | 'rollback';

/**
 * What to do next (pure). `window`: the agent's install_window, else the rollout's,
 * already parsed; null: any time. `localNow` is read in local time by `windowAllows`.
 */
export function nextAction(rec: InstallRecord | null, d: Directive | null, window: WindowPart[] | null, nowMs: number, hasRollbackHook: boolean): Action {
  if (!rec || !d || rec.release !== d.release) return 'none';
  switch (rec.state) {
    case 'staged':
      return d.install && (!window || windowAllows(window, nowMs)) ? 'install' : 'none';
    case 'installed':
      return 'health';
    case 'failed':
      return hasRollbackHook && !rec.rollbackRan ? 'rollback' : 'none';
    case 'committed':
      return d.rollback && hasRollbackHook && !rec.rollbackRan ? 'rollback' : 'none';
    default:
      return 'none';
  }
}

/** What the server hears of a local state. */
export function reportedState(s: LocalState): 'staged' | 'installed' | 'committed' | 'failed' | 'rolled-back' {
  switch (s) {
    case 'staged':
    case 'installing':
      return 'staged';
    case 'rolling-back':
      return 'failed';
    default:
      return s;
  }
}

/** A record found after a restart in the middle of a hook: that hook is not run again. */
export function afterRestart(rec: InstallRecord): InstallRecord {
  if (rec.state === 'installing') return { ...rec, state: 'failed', reason: 'the install hook was interrupted (the agent restarted while it ran); not running it again' };
  if (rec.state === 'rolling-back') return { ...rec, state: 'failed', rollbackRan: true, reason: `${rec.reason ?? 'failed'}; on_rollback was interrupted (the agent restarted while it ran)` };
  return rec;
}

const STATES: LocalState[] = ['staged', 'installing', 'installed', 'committed', 'failed', 'rolling-back', 'rolled-back'];

export function parseInstallRecord(bytes: Uint8Array): InstallRecord | string {
  const o = parseJsonObject(bytes);
  if (typeof o === 'string') return o.startsWith('not JSON') ? o : 'not an install record (version 1)';
  if (o.version !== 1) return 'not an install record (version 1)';
  if (typeof o.release !== 'string' || typeof o.rollout !== 'string' || typeof o.path !== 'string') return 'release, rollout and path must be strings';
  if (!STATES.includes(o.state as LocalState)) return 'state is not an install state';
  if (o.reason !== null && typeof o.reason !== 'string') return 'reason must be a string or null';
  if (typeof o.rollbackRan !== 'boolean') return 'rollbackRan must be a boolean';
  return { version: 1, release: o.release, rollout: o.rollout, state: o.state as LocalState, reason: o.reason as string | null, rollbackRan: o.rollbackRan, path: o.path };
}

export interface InstallHooks {
  /** The install hook (the agent's on_complete). */
  onComplete?: string;
  onRollback?: string;
  healthCheck?: string;
  hookTimeoutMs: number;
  healthTimeoutMs: number;
  /** The agent's own install_window; overrides the rollout's. */
  installWindow?: string;
}

export interface FollowerOptions {
  storageDir: string;
  server: ServerAccess;
  group: string;
  member?: string;
  trustedKeys: readonly KeyObject[];
  hooks: () => InstallHooks;
  log: Logger;
  signal: AbortSignal;
  now?: () => number;
  /** A release was committed: it is now the newest this agent runs. */
  onCommitted?: (m: Manifest) => Promise<void>;
  /** More environment for the hooks (channel, ...). */
  env?: () => Record<string, string>;
}

const RECORD_FILE = 'install.json';
const POLL_TIMEOUT_MS = 10_000;

/** The agent's side of rollouts: asks the server, keeps the install record, runs the hooks. */
export class RolloutFollower {
  directive: Directive | null = null;
  /** The server does not know rollouts (an older one): follow the channel as before. */
  private unsupported = false;
  /** The member id the first Agent made, once read. */
  private madeMember: string | null = null;
  /** What our last answered rollout poll sent, and the channel's rollout token then (1.7: an unchanged one may be left out). */
  private lastPoll: { body: string; token: string | null } | null = null;
  /** Rollout polls left out because a held channel poll stood for them (1.7). */
  pollsLeftOut = 0;
  private readonly now: () => number;
  hooksRun = 0;
  /** Install, health and rollback actions run so far (the daemon holds its polls long only after a round without one). */
  actions = 0;
  private running: Promise<void> | null = null;

  constructor(private readonly o: FollowerOptions) {
    this.now = o.now ?? Date.now;
  }

  private recordFile(release: string): string {
    return path.join(this.o.storageDir, release, RECORD_FILE);
  }

  async record(release: string): Promise<InstallRecord | null> {
    let raw: Buffer;
    try {
      raw = await fs.readFile(this.recordFile(release));
    } catch {
      return null;
    }
    const r = parseInstallRecord(raw);
    if (typeof r === 'string') {
      this.o.log.warn(`ignoring ${this.recordFile(release)}: ${r}`);
      return null;
    }
    this.local = r;
    return r;
  }

  /** For `fleetcast status`: the rollout as the server last described it, and our state of its release. */
  statusInfo(): (Directive & { local: LocalState | null; reason: string | null }) | null {
    const d = this.directive;
    if (!d) return null;
    const l = this.local?.release === d.release ? this.local : null;
    return { ...d, local: l?.state ?? null, reason: l?.reason ?? null };
  }

  private local: InstallRecord | null = null;

  private async save(rec: InstallRecord): Promise<void> {
    this.local = rec;
    await writeAtomic(this.recordFile(rec.release), Buffer.from(JSON.stringify(rec) + '\n'));
  }

  /** Our member id: the configured one, or the one the first Agent made (null before). */
  async memberId(): Promise<string | null> {
    if (this.o.member) return this.o.member;
    if (this.madeMember === null) this.madeMember = await readMemberId(this.o.storageDir); // null: the first Agent makes it
    return this.madeMember;
  }

  /** Ask the server about the channel's rollout, reporting our state of its release. Null: no rollout (or no rollout support). */
  async poll(channel: string, held?: { token: string | null; following: boolean }): Promise<Directive | null> {
    if (this.unsupported) return null;
    const member = await this.memberId();
    if (!member) return null;
    const body: Record<string, unknown> = { channel, group: this.o.group, member };
    const d0 = this.directive;
    if (d0) {
      const rec = await this.record(d0.release);
      if (rec) {
        body.release = rec.release;
        body.state = reportedState(rec.state);
        if (rec.reason) body.reason = rec.reason.slice(0, 512);
      }
    }
    // 1.7 (docs/protocol.md section 19): the held channel poll that named us noted us as
    // following; with the rollout token what it was at our last poll, nothing running, and
    // nothing new to report, this poll would be answered as the last one was.
    const sent = JSON.stringify(body);
    const token = held?.token ?? null;
    if (held?.following && token !== null && this.lastPoll?.token === token && this.lastPoll.body === sent && this.quiet()) {
      this.pollsLeftOut++;
      return this.directive;
    }
    let status: number;
    let bytes: Buffer;
    try {
      const res = await this.o.server.request('POST', '/v1/rollouts/poll', {
        headers: { 'content-type': 'application/json' },
        body: sent,
        signal: AbortSignal.any([this.o.signal, AbortSignal.timeout(POLL_TIMEOUT_MS)]),
      });
      status = res.status;
      bytes = await res.bytes();
    } catch (err) {
      this.o.log.warn(`asking the server about rollouts on ${channel}: ${describeFetchError(err)}`);
      return this.directive; // keep what we knew
    }
    if (status === 404 && bytes.toString('utf8').includes('NOT_FOUND')) {
      this.unsupported = true;
      this.o.log.info('the server does not run rollouts (no /v1/rollouts/poll): installing each channel release as it completes');
      return null;
    }
    if (status !== 200) {
      this.o.log.warn(`rollouts on ${channel}: server said ${status} ${bytes.toString('utf8').slice(0, 200)}`);
      return this.directive;
    }
    const d = parsePollAnswer(bytes);
    if (typeof d === 'string') {
      this.o.log.warn(`rollouts on ${channel}: bad answer from the server: ${d}`);
      return this.directive;
    }
    this.lastPoll = { body: sent, token };
    const before = this.directive;
    this.directive = d;
    if (d && (!before || before.rollout !== d.rollout || before.state !== d.state || before.waveOpen !== d.waveOpen)) {
      this.o.log.info(`rollout ${d.rollout} of ${d.release} on ${channel}: ${d.state}, our wave ${d.wave + 1} ${d.waveOpen ? 'is open' : 'is not open yet'}`);
    }
    return d;
  }

  /**
   * Nothing of a rollout can be due without the server saying so first: no rollout on the
   * channel, or one that is no longer running or paused. Then the daemon holds its channel
   * poll as long as the server grants (protocol 1.6), since a rollout that starts or moves
   * ends the hold; while one runs, it polls every channel_poll as before (install windows
   * open by the clock, not by the server).
   */
  quiet(): boolean {
    const d = this.directive;
    return this.unsupported || !d || (d.state !== 'running' && d.state !== 'paused');
  }

  /** The release to be on, given the channel's head: the rollout's while it runs (or once we installed it), else the head. */
  async target(head: string): Promise<string> {
    const d = this.directive;
    // No rollout, a completed one (the channel names its release now), or a channel moved on by a plain publish since.
    if (!d || d.state === 'completed' || (head !== d.previous && head !== d.release)) return head;
    const rec = await this.record(d.release);
    if (rec && (rec.state === 'failed' || rec.state === 'rolling-back' || rec.state === 'rolled-back')) return d.previous;
    if (rec && rec.state !== 'staged') return d.release;
    return d.stage ? d.release : d.previous;
  }

  /** Does the rollout govern installing this release (instead of on_complete at once)? */
  owns(release: string): boolean {
    return this.directive?.release === release;
  }

  /** A move back to the previous release after a rollback or a halt is not a replay to refuse. */
  allowsMoveTo(release: string): boolean {
    return this.directive?.previous === release;
  }

  /** The release verified and stored: note it staged (once) and go on. */
  async staged(m: Manifest, finalPath: string): Promise<void> {
    const d = this.directive!;
    const rec = await this.record(m.id);
    if (!rec) {
      await this.save({ version: 1, release: m.id, rollout: d.rollout, state: 'staged', reason: null, rollbackRan: false, path: finalPath });
      this.o.log.info(`${m.name} staged for rollout ${d.rollout}; installing when wave ${d.wave + 1} opens${this.windowText(d)}`);
    }
  }

  private windowText(d: Directive): string {
    const w = this.o.hooks().installWindow ?? d.window;
    return w ? ` and the install window (${w}) allows` : '';
  }

  /** Run whatever the state allows now; one at a time. */
  step(channel: string): Promise<void> {
    this.running ??= this.doStep(channel).finally(() => (this.running = null));
    return this.running;
  }

  private async doStep(channel: string): Promise<void> {
    for (let i = 0; i < 4 && !this.o.signal.aborted; i++) {
      const d = this.directive;
      if (!d) return;
      let rec = await this.record(d.release);
      if (!rec) return;
      const fixed = afterRestart(rec);
      if (fixed !== rec) {
        this.o.log.warn(`rollout ${d.rollout}: ${fixed.reason}`);
        await this.save(fixed);
        rec = fixed;
      }
      const hooks = this.o.hooks();
      const wtext = hooks.installWindow ?? d.window;
      const window = wtext ? parseWindow(wtext) : null;
      const action = nextAction(rec, d, typeof window === 'string' ? null : window, this.now(), Boolean(hooks.onRollback));
      if (action === 'none') return;
      this.actions++;
      const m = await this.manifest(rec.release);
      if (action === 'install') await this.install(rec, m, hooks);
      else if (action === 'health') await this.health(rec, m, hooks);
      else await this.rollback(rec, m, d, hooks);
      await this.poll(channel); // report at once
    }
  }

  private async manifest(id: string): Promise<Manifest> {
    return parseManifest(await fs.readFile(path.join(this.o.storageDir, id, 'manifest')), this.o.trustedKeys);
  }

  private async env(rec: InstallRecord, m: Manifest): Promise<Record<string, string>> {
    return {
      FLEETCAST_FILE: rec.path,
      FLEETCAST_RELEASE_ID: m.id,
      FLEETCAST_RELEASE_NAME: m.name,
      FLEETCAST_SHA256: m.sha256,
      FLEETCAST_SIZE: String(m.size),
      FLEETCAST_GROUP: this.o.group,
      FLEETCAST_ROLLOUT: rec.rollout,
      ...this.o.env?.(),
      FLEETCAST_MEMBER: (await this.memberId()) ?? '',
    };
  }

  private async run(what: string, cmd: string, env: Record<string, string>, timeoutMs: number): Promise<string | null> {
    this.o.log.info(`running ${what}`);
    const r: HookResult = await runHook(cmd, env, timeoutMs, this.o.log.child(what));
    this.hooksRun++;
    if (r.exitCode === 0) return null;
    return `${what}: ${r.error ?? (r.exitCode !== undefined ? `exit status ${r.exitCode}` : `killed by ${r.signal}`)}`;
  }

  private async install(rec: InstallRecord, m: Manifest, hooks: InstallHooks): Promise<void> {
    await this.save({ ...rec, state: 'installing' });
    let failure: string | null = null;
    if (hooks.onComplete) {
      failure = await this.run('install hook', hooks.onComplete, await this.env(rec, m), hooks.hookTimeoutMs);
      // The daemon's own once-per-release marker, so the plain on_complete path never runs it again either.
      await fs.writeFile(path.join(this.o.storageDir, m.id, 'hook.json'), JSON.stringify({ durationMs: 0, exitCode: failure ? 1 : 0, rollout: rec.rollout }) + '\n').catch(() => undefined);
    }
    const next: InstallRecord = failure ? { ...rec, state: 'failed', reason: failure } : { ...rec, state: 'installed' };
    await this.save(next);
    (failure ? this.o.log.error : this.o.log.info)(`rollout ${rec.rollout}: ${m.name} ${failure ? `failed: ${failure}` : 'installed'}`);
  }

  private async health(rec: InstallRecord, m: Manifest, hooks: InstallHooks): Promise<void> {
    const failure = hooks.healthCheck ? await this.run('health check', hooks.healthCheck, await this.env(rec, m), hooks.healthTimeoutMs) : null;
    const next: InstallRecord = failure ? { ...rec, state: 'failed', reason: failure } : { ...rec, state: 'committed' };
    await this.save(next);
    if (!failure) await this.o.onCommitted?.(m);
    (failure ? this.o.log.error : this.o.log.info)(`rollout ${rec.rollout}: ${m.name} ${failure ? `failed: ${failure}` : 'committed'}`);
  }

  private async rollback(rec: InstallRecord, m: Manifest, d: Directive, hooks: InstallHooks): Promise<void> {
    await this.save({ ...rec, state: 'rolling-back' });
    const prevPath = await this.releasePath(d.previous);
    if (!prevPath) this.o.log.warn(`rollback: the previous release ${d.previous} is not on this box; FLEETCAST_PREVIOUS_FILE is empty`);
    const why = rec.state === 'committed' ? 'rollout aborted with --rollback' : (rec.reason ?? 'failed');
    const failure = await this.run('on_rollback', hooks.onRollback!, { ...(await this.env(rec, m)), FLEETCAST_PREVIOUS_FILE: prevPath ?? '', FLEETCAST_PREVIOUS_RELEASE_ID: d.previous, FLEETCAST_ROLLBACK_REASON: why }, hooks.hookTimeoutMs);
    const next: InstallRecord = failure ? { ...rec, state: 'failed', rollbackRan: true, reason: `${why}; ${failure}` } : { ...rec, state: 'rolled-back', rollbackRan: true, reason: rec.state === 'committed' ? why : rec.reason };
    await this.save(next);
    (failure ? this.o.log.error : this.o.log.info)(`rollout ${rec.rollout}: ${failure ? `rollback failed: ${failure}` : `rolled back to ${d.previous}`}`);
  }

  /** The verified file of a release this agent keeps, or null. */
  private async releasePath(id: string): Promise<string | null> {
    try {
      const m = await this.manifest(id);
      const p = path.join(this.o.storageDir, id, m.name);
      await fs.access(p);
      return p;
    } catch {
      return null;
    }
  }
}
