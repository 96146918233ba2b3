import * as path from 'node:path';
import { Manifest, unitLength } from '../release/manifest';
import { PartialStore } from '../storage/partial-store';
import { UnitSpool } from '../storage/spool';
import { Logger } from '../util/log';
import { ControlClient, ControlError, LeaseResponse, sleep } from './control-client';
import { AGENT_DEFAULTS } from './core/defaults';
import { LanCore } from './core/lan-core';
import type { AgentStats } from './agent-types';
import { OriginError, RangeOrigins } from '../net/origin';
import { downloadWindow, UnitDownload } from './unit-download';

/** After an origin fails, its units come from the server for this long. */
const ORIGIN_BACKOFF_MS = 30_000;

export interface WanFetchContext {
  client: ControlClient;
  core: LanCore;
  store: PartialStore;
  manifest: Manifest;
  log: Logger;
  stats: AgentStats;
  signal: AbortSignal;
  random: () => number;
  ref: { release: string; group: string; member: string };
  storageDir: string;
  wanRateBytesPerSec?: number;
  /** Whether fetch workers should stop (closed, complete, finishing). */
  stopped(): boolean;
  heartbeatMs(): number;
  /** Join again (the server forgot us). */
  rejoin(): Promise<void>;
  /** The core has new input: drain its outputs. */
  kick(): void;
  /** A unit is stored (progress callbacks). */
  progressed(): void;
  fail(err: Error): void;
}

/**
 * The agent's WAN side (the driver's, not the core's: it does HTTP and disk): lease
 * requests, shared by `fetchConcurrency` workers; each leased unit streamed from the
 * server into a spool (crash-safe resume), handed to the core chunk by chunk for
 * cut-through copies, verified, stored and receipted; relay requests the core asks for.
 */
export class WanFetch {
  /** Bytes received so far of each unit being fetched (reported in heartbeats: the server's hedging looks at it). */
  readonly inFlight = new Map<number, number>();
  /** Units from the server that failed verification, and how often in a row. */
  private readonly serverFailures = new Map<number, number>();
  /** One lease request at a time, shared by the fetch workers. */
  private leaseRequest: Promise<LeaseResponse> | null = null;
  private wakers: (() => void)[] = [];
  /** Workers held for the copy backlog: before a new download (inFlight false) or in one. */
  private copyWaiters: { inFlight: boolean; go: () => void }[] = [];
  /** --wan-rate (testing): paces our own downloads. Debt-based: take says how long to sleep to stay at the rate. */
  private wanNext = 0;
  /** Leased units whose bytes an HTTP range origin serves (the lease named it), and origins failing lately. */
  private readonly originOf = new Map<number, string>();
  private readonly originDownUntil = new Map<string, number>();
  private originClient: RangeOrigins | null = null;
  /** Cut-through windows of finished downloads, for the next ones (one per fetch worker). */
  private readonly windows: Buffer[] = [];

  constructor(private readonly c: WanFetchContext) {}

  start(): void {
    for (let i = 0; i < AGENT_DEFAULTS.fetchConcurrency; i++) void this.worker();
  }

  /** Wake workers waiting for a lease slot or a map change. */
  wake(): void {
    for (const w of this.wakers.splice(0)) w();
  }

  /** Downloads paused for the copy backlog may go on once it drained (or the agent closes). */
  resume(force = false): void {
    if (this.copyWaiters.length) this.release((w) => force || this.c.core.drained(w.inFlight));
  }

  private release(which: (w: { inFlight: boolean }) => boolean): void {
    const go = this.copyWaiters.filter(which);
    this.copyWaiters = this.copyWaiters.filter((w) => !go.includes(w));
    for (const w of go) w.go();
  }

  /** Hold until the copy backlog drained (SendEngine.backlogged); counted, with the longest hold. */
  private hold(inFlight: boolean): Promise<void> {
    const since = Date.now();
    const s = this.c.stats;
    if (inFlight) s.downloadPauses++;
    else s.leaseHolds++;
    return new Promise<void>((go) => this.copyWaiters.push({ inFlight, go })).then(() => {
      const ms = Date.now() - since;
      if (inFlight) {
        s.downloadPausedMs += ms;
        s.downloadPauseMaxMs = Math.max(s.downloadPauseMaxMs, ms);
      } else s.leaseHeldMs += ms;
    });
  }

  private waitForWake(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakers.push(done);
    });
  }

  /** `want` set: a relay request (docs/protocol.md); the grant merges into the core's queue either way. */
  private async lease(asked?: { units: number[]; reason: 'relayed' | 'stalled' }): Promise<LeaseResponse> {
    const body = asked ? { ...this.c.ref, want: asked.units, reason: asked.reason } : this.c.ref;
    let grant: LeaseResponse;
    try {
      // 1.4: a plain lease request rides on a heartbeat; relay requests keep their own.
      const fold = this.c.client.fold;
      grant = !asked && fold?.active ? await fold.lease() : await this.c.client.post<LeaseResponse>('/v1/lease', body);
    } catch (err) {
      if (asked || !(err instanceof ControlError && err.code === 'NOT_JOINED')) throw err;
      await this.c.rejoin(); // the server restarted or timed us out: join again
      grant = { units: [], retryAfterMs: 0, exhausted: false };
    }
    this.noteOrigin(grant);
    this.c.core.leaseGranted(grant, Date.now(), asked);
    this.c.kick();
    if (asked && grant.units.length) this.release((w) => !w.inFlight); // a relay our LAN waits for does not wait for the backlog
    return grant;
  }

  /** A grant that names an HTTP range origin: its units' bytes come from there (the server's, if it fails). */
  noteOrigin(grant: { units: number[]; origin?: string }): void {
    if (typeof grant.origin !== 'string') return;
    for (const u of grant.units) this.originOf.set(u, grant.origin);
    if (this.originOf.size > this.c.manifest.unitCount) this.originOf.clear(); // bounded: stale entries of units long done
  }

  /** Stop: wake every waiting worker (they see stopped()) and close the origins' keep-alive connections. */
  close(): void {
    this.wake();
    this.resume(true);
    this.originClient?.close();
  }

  /** The core asked the server for units (relay or stall). */
  relay(units: number[], reason: 'relayed' | 'stalled'): void {
    this.lease({ units, reason }).catch((err: Error) => {
      if (reason === 'relayed') this.c.log.warn(`relay lease for unit ${units.join(', ')}: ${err.message}`);
      else this.c.log.debug(`stall relay: ${err.message}`);
      this.c.core.relayFailed(units, Date.now());
    });
  }

  private takeLeases(): Promise<LeaseResponse> {
    if (!this.leaseRequest) this.leaseRequest = this.lease().finally(() => (this.leaseRequest = null));
    return this.leaseRequest;
  }

  /** Takes leases and fetches their units over the WAN, `fetchConcurrency` at a time. */
  private async worker(): Promise<void> {
    while (!this.c.stopped()) {
      const unit = this.c.core.takeLeased();
      if (unit !== undefined) {
        await this.fetchUnit(unit);
        this.wake(); // a lease slot is free again
        continue;
      }
      // A new download waits for the copy backlog (one in flight only for a larger one: chunk).
      if (this.c.core.backlogged()) {
        await this.hold(false);
        continue;
      }
      let grant: LeaseResponse;
      try {
        grant = await this.takeLeases();
      } catch (err) {
        if (this.c.signal.aborted) return;
        this.c.log.warn(`lease: ${(err as Error).message}`);
        await sleep(this.c.heartbeatMs(), this.c.signal);
        continue;
      }
      if (this.c.core.leasedCount) continue;
      // Nothing for us now: peers hold or lease the rest, or our slots are full.
      // Wait for one of our units to finish, the map to change, or the server's hint.
      await this.waitForWake(grant.exhausted ? this.c.heartbeatMs() : Math.max(20, grant.retryAfterMs));
    }
  }

  /**
   * A unit from the server failed its hash: wait (exponential backoff, with jitter)
   * before fetching it again, and every badUnitReportAfter failures tell the server,
   * which logs it and shows it in `fleetcast fleet`. The count lasts across leases.
   */
  private async badFromServer(unit: number): Promise<void> {
    const n = (this.serverFailures.get(unit) ?? 0) + 1;
    this.serverFailures.set(unit, n);
    const ms = Math.min(AGENT_DEFAULTS.badUnitBackoffMaxMs, AGENT_DEFAULTS.badUnitBackoffMs * 2 ** (n - 1)) * (0.75 + 0.5 * this.c.random());
    this.c.log.warn(`unit ${unit} from the server failed verification (${n} time(s) in a row); discarded, fetching it again in ${Math.round(ms)} ms`);
    if (n % AGENT_DEFAULTS.badUnitReportAfter === 0) {
      this.c.stats.badUnitReports++;
      await this.c.client.post('/v1/bad-unit', { ...this.c.ref, unit, failures: n }).catch((err: Error) => this.c.log.debug(`bad-unit report: ${err.message}`));
    }
    await sleep(ms, this.c.signal);
  }

  private async fetchUnit(unit: number): Promise<void> {
    const { core, manifest: m, log, stats } = this.c;
    if (core.has(unit)) return this.sendReceipt(unit);
    this.inFlight.set(unit, 0);
    const len = unitLength(m, unit);
    const releaseDir = path.join(this.c.storageDir, m.id);
    const win = this.windows.pop() ?? downloadWindow(core.fragmentBytes);
    let dl: UnitDownload | null = null;
    try {
      for (let attempt = 1; attempt <= AGENT_DEFAULTS.fetchRetries && !this.c.signal.aborted; attempt++) {
        core.fetchStarted(unit, Date.now());
        // What an earlier run (or attempt) of ours already downloaded: resume after it.
        const { spool, bytes } = await UnitSpool.open(releaseDir, unit, len);
        dl = new UnitDownload(unit, len, win, this.c.store, core, spool);
        if (bytes.length > 0) {
          log.debug(`unit ${unit}: resuming after ${bytes.length} bytes`);
          stats.wanBytesResumed += bytes.length;
          await dl.push(bytes, Date.now());
          this.c.kick();
        }
        let fromOrigin = false;
        try {
          if (dl.off < len) fromOrigin = await this.download(dl);
          await dl.settled();
        } catch (err) {
          await dl.settled().catch(() => undefined); // no write of this attempt outlives it
          if (this.c.signal.aborted) return await spool.close();
          if (dl.diskError) return this.c.fail(dl.diskError); // full, read-only: as a failed store
          if (err instanceof ControlError) {
            log.warn(`unit ${unit}: ${err.message}`);
            return await spool.discard(); // lease gone; the server will lease it again to someone
          }
          log.warn(`unit ${unit}: download failed (${(err as Error).message}); attempt ${attempt} of ${AGENT_DEFAULTS.fetchRetries}`);
          await spool.close(); // it keeps what arrived: the next attempt resumes
          await sleep(200 * attempt, this.c.signal);
          continue;
        }
        if (!dl.matches(m.units[unit])) {
          stats.unitsRejected++;
          await spool.discard();
          const origin = fromOrigin ? this.originOf.get(unit) : undefined;
          if (origin !== undefined) this.originFailed(origin, unit, 'its bytes failed verification');
          else if (!fromOrigin) await this.badFromServer(unit);
          continue;
        }
        this.serverFailures.delete(unit);
        if (!core.has(unit)) {
          try {
            await this.c.store.commitInPlace(unit);
          } catch (err) {
            return this.c.fail(err as Error);
          }
        }
        core.unitFetched(unit, null, Date.now());
        this.c.progressed();
        this.c.kick();
        await spool.discard();
        await this.sendReceipt(unit);
        return;
      }
    } finally {
      await dl?.settled().catch(() => undefined);
      this.windows.push(win);
      core.fetchEnded(unit, Date.now());
      this.inFlight.delete(unit);
    }
  }

  /**
   * The rest of a unit's bytes (from dl.off): from the origin its lease named, unless that
   * origin failed lately, else (or when it fails now) from the server. True when the origin
   * sent the last of them.
   */
  private async download(dl: UnitDownload): Promise<boolean> {
    const { manifest: m, ref } = this.c;
    const unit = dl.unit;
    const origin = this.originOf.get(unit);
    if (origin !== undefined && (this.originDownUntil.get(origin) ?? 0) <= Date.now()) {
      this.originClient ??= new RangeOrigins(this.c.client.originAccess);
      const base = unit * m.unitSize;
      const before = dl.off;
      try {
        await this.originClient.streamRange(origin, `releases/${m.id}/data`, { group: ref.group, member: ref.member, unit: String(unit) }, base + dl.off, base + dl.len - 1, (chunk) => this.chunk(dl, chunk), this.c.signal);
        return true;
      } catch (err) {
        if (this.c.signal.aborted || !(err instanceof OriginError)) throw err;
        this.originFailed(origin, unit, err.message);
      } finally {
        this.c.stats.originBytes += dl.off - before;
      }
    }
    await this.c.client.streamUnit(m.id, unit, ref.group, ref.member, (chunk) => this.chunk(dl, chunk), dl.off);
    return false;
  }

  private originFailed(origin: string, unit: number, why: string): void {
    this.c.stats.originFailures++;
    if ((this.originDownUntil.get(origin) ?? 0) <= Date.now()) this.c.log.warn(`unit ${unit}: ${why}; units come from the server instead for ${ORIGIN_BACKOFF_MS / 1000} s`);
    this.originDownUntil.set(origin, Date.now() + ORIGIN_BACKOFF_MS);
  }

  /** One chunk of a unit's download: in place, spooled, cut-through copies, pacing and backpressure. */
  private chunk(dl: UnitDownload, chunk: Uint8Array): Promise<void> | undefined {
    const before = dl.off;
    const disk = dl.push(chunk, Date.now());
    const take = dl.off - before;
    this.inFlight.set(dl.unit, dl.off);
    this.c.stats.wanBytes += take;
    this.c.kick();
    // The backlog is checked after any other wait too: a download whose every chunk waits on the disk or the pace still holds.
    const backlog = () => (this.c.core.backlogged(true) ? this.hold(true) : undefined);
    if (disk) return disk.then(backlog);
    if (this.c.wanRateBytesPerSec) {
      const now = Date.now();
      this.wanNext = Math.max(this.wanNext, now) + (take * 1000) / this.c.wanRateBytesPerSec;
      const ms = Math.floor(this.wanNext - now);
      if (ms > 0) return sleep(ms, this.c.signal).then(backlog);
    }
    return backlog();
  }

  private async sendReceipt(unit: number): Promise<void> {
    const fold = this.c.client.fold;
    if (fold?.active) return fold.receipt(unit); // 1.4: goes with the next heartbeat
    try {
      await this.c.client.post('/v1/receipt', { ...this.c.ref, unit });
    } catch (err) {
      if (!this.c.signal.aborted) this.c.log.warn(`receipt for unit ${unit}: ${(err as Error).message}`);
    }
  }
}
