import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { Manifest, unitLength } from '../release/manifest';
import { DirLock, lockStorage } from '../storage/dir-lock';
import { makeDir } from '../storage/make-dir';
import { PartialStore } from '../storage/partial-store';
import { UnitSpool } from '../storage/spool';
import { Transport } from '../transport/transport';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { Logger, silentLogger } from '../util/log';
import { decryptRelease, loadManifest, openTransports, persistentMemberId } from './agent-setup';
import type { AgentOptions, AgentStats, CrossPathView } from './agent-types';
import { newAgentStats } from './agent-types';
import { ControlClient, ControlError, sleep, SplitMapResponse } from './control-client';
import { AGENT_DEFAULTS } from './core/defaults';
import { LanCore } from './core/lan-core';
import { WanFetch } from './wan-fetch';
import { fragmentBytesForMtu, readMtu, resolveInterface } from '../net/interface';
import { CoreDriver } from './core-driver';
import { Heartbeats } from './heartbeat';

export { AGENT_DEFAULTS } from './core/defaults';
export type { AgentCounters, AgentOptions, AgentStats } from './agent-types';
export { zeroCounters } from './agent-types';

/**
 * The agent process for one release: a thin driver around the LAN protocol core
 * (core/lan-core.ts, which does no I/O). It owns the clock and one timer, the LAN
 * transport and the cross-group socket, HTTP (control-client.ts; the WAN side in
 * wan-fetch.ts) and storage (partial-store.ts). Every input goes to the core with the
 * time; after each, flush() sends what the core polls out, acts on its events and arms
 * the timer for its next deadline (quinn's endpoint driver around quinn-proto).
 */
export class Agent {
  readonly stats: AgentStats;
  manifest!: Manifest;
  store!: PartialStore;
  finalPath: string | null = null;
  private core!: LanCore;
  private wan!: WanFetch;
  private transport!: Transport;
  private client!: ControlClient;
  private readonly abort = new AbortController();
  private readonly log: Logger;
  private readonly random: () => number;
  private readonly senderId = randomBytes(4).readUInt32BE(0) || 1;
  private member = '';
  private interfaceAddress = '';
  private rate: number;
  private map: SplitMapResponse | null = null;
  /** Cross-group transport (unicast): copies to other LAN groups' gateways, forwarded NACKs and their repairs. */
  private cross: Transport | null = null;
  private driver: CoreDriver | null = null;
  private dataPort = 0;
  heartbeats!: Heartbeats; // set in setup(): undefined before
  private finishing = false;
  private started = 0;
  private completion!: { resolve: (p: string) => void; reject: (e: Error) => void };
  private readonly completed: Promise<string>;
  private closed = false;
  private storageLock: DirLock | null = null;

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.logger ?? silentLogger;
    this.random = opts.random ?? Math.random;
    this.rate = opts.rateBytesPerSec ?? AGENT_DEFAULTS.rateBytesPerSec;
    this.stats = newAgentStats();
    this.completed = new Promise((resolve, reject) => (this.completion = { resolve, reject }));
    this.completed.catch(() => undefined);
  }

  get memberId(): string {
    return this.member;
  }
  get transportInfo() {
    return this.transport?.info;
  }
  get progress(): { verified: number; total: number } {
    return { verified: this.store?.verifiedUnits ?? 0, total: this.manifest?.unitCount ?? 0 };
  }
  /** LAN send rate, changeable at run time (SIGHUP reload). */
  setRate(bytesPerSec: number): void {
    this.rate = bytesPerSec;
    this.core?.setRate(bytesPerSec);
  }
  get rateBytesPerSec(): number {
    return this.rate;
  }
  /** Other agents heard on the LAN for this release lately (sender ids are per process). */
  peersSeen(): { sender: string; lastSeenMsAgo: number; complete: boolean }[] {
    return this.core?.peersSeen(Date.now()) ?? [];
  }
  /** Per other group's gateway we send to: the learned pace and what its reports said. */
  crossPaths(): CrossPathView {
    return this.core?.crossPaths() ?? [];
  }
  get isComplete(): boolean {
    return this.finalPath !== null;
  }
  /** This member's role from the latest map. */
  get role(): 'gateway' | 'member' {
    return this.core?.role ?? 'member';
  }
  /** The group's other members from the latest map: the server's ids and what each holds. */
  groupMembers(): { id: string; group: string; verifiedUnits: number; complete: boolean }[] {
    return (this.map?.members ?? []).filter((m) => m.id !== this.member).map((m) => ({ id: m.id, group: m.group ?? this.opts.group, verifiedUnits: m.verifiedUnits, complete: m.complete }));
  }
  /** Units being assembled from the LAN (tests look at their bound). */
  get assemblies(): ReadonlyMap<number, unknown> {
    return this.core?.assemblies ?? new Map();
  }
  /** The heartbeat interval the server asked for last: it changes with the phase (issue 14). */
  get heartbeatMs(): number {
    return this.heartbeats?.ms ?? 1000;
  }
  /** This release's group key once the server gave it. */
  get groupKey(): Buffer | null {
    return this.core?.peers.groupKey ?? null;
  }

  /** Join, then resolve with the final file's path once the release is complete and verified. */
  async run(): Promise<string> {
    this.started = Date.now();
    await this.setup();
    return this.completed;
  }

  private async setup(): Promise<void> {
    const o = this.opts;
    try {
      await makeDir(o.storageDir);
    } catch (err) {
      throw fromSystemError(err, `creating storage ${o.storageDir}`);
    }
    // One agent process per storage directory: exit 73 with the holder's pid otherwise.
    this.storageLock = await lockStorage(o.storageDir);
    this.member = o.member ?? (await persistentMemberId(o.storageDir));
    this.stats.member = this.member;
    this.client = new ControlClient(o.server, this.abort.signal, this.log);
    const m = (this.manifest = await loadManifest(o, this.client));
    this.store = await PartialStore.open(o.storageDir, m);
    if (this.store.discardedBitmapReason) this.log.warn(`discarded bitmap on disk: ${this.store.discardedBitmapReason}; starting this release over`);
    this.stats.unitsResumed = this.store.verifiedUnits;
    if (this.store.verifiedUnits > 0) this.log.info(`resuming: ${this.store.verifiedUnits} of ${m.unitCount} units already verified`);
    const ipv6 = o.multicast.address.includes(':');
    const iface = resolveInterface(o.interface, ipv6 ? 6 : 4);
    this.interfaceAddress = iface.address;
    const fragmentBytes = o.fragmentBytes ?? fragmentBytesForMtu(await readMtu(iface.name), ipv6);
    // Control-packet sequence numbers start at the clock in µs, so a restart does not reuse them.
    const now = Date.now();
    const cross = o.crossRateBytesPerSec ?? AGENT_DEFAULTS.crossRateBytesPerSec;
    const cfg = { manifest: m, member: this.member, group: o.group, wideGroup: o.wideGroup, senderId: this.senderId, fragmentBytes, have: this.store.bitmap() };
    this.core = new LanCore({ ...cfg, assembleInPlace: true, rateBytesPerSec: this.rate, crossRateBytesPerSec: cross, controlSeqStart: BigInt(now) * 1000n, random: this.random, logger: this.log, stats: this.stats }, now);
    const t = await openTransports(o, iface.address, fragmentBytes, this.random, this.log);
    this.transport = t.lan;
    this.cross = t.cross;
    this.stats.transport = t.lan.info.kind;
    this.dataPort = t.cross.localPort?.() ?? 0;
    this.driver = new CoreDriver(this.core, t.lan, t.cross, {
      store: this.store,
      readBuffer: (unit) => this.core.takeBuffer(unitLength(m, unit)),
      log: this.log,
      stored: () => this.opts.onProgress?.(this),
      fail: (err) => this.completion.reject(err),
      relay: (units, reason) => this.wan.relay(units, reason),
      wake: () => this.wan.wake(),
      complete: () => void this.complete(),
      afterFlush: () => this.wan?.resume(),
    });
    this.wan = new WanFetch({
      ...{ client: this.client, core: this.core, store: this.store, manifest: m, log: this.log, stats: this.stats, signal: this.abort.signal, random: this.random },
      ...{ ref: { release: m.id, group: o.group, member: this.member }, storageDir: o.storageDir, wanRateBytesPerSec: o.wanRateBytesPerSec },
      stopped: () => this.closed || this.store.isComplete || this.finishing,
      heartbeatMs: () => this.heartbeats.ms,
      rejoin: () => this.heartbeats.beat().then(() => undefined),
      kick: () => this.kick(),
      progressed: () => this.opts.onProgress?.(this),
      fail: (err) => this.completion.reject(err),
    });
    this.heartbeats = new Heartbeats(this.client, this.log, () => this.heartbeatBody(), (map) => {
      this.map = map;
      this.core.setSplitMap(map, Date.now());
      this.kick();
    });
    try {
      await this.heartbeats.beat(true);
    } catch (err) {
      // Device identity (docs/security.md): this member id or token is bound elsewhere.
      if (err instanceof ControlError && err.status === 403) throw new FleetcastError('IDENTITY', `the server refused member ${this.member}: ${err.message}`, ExitCode.NOPERM);
      throw err;
    }
    this.heartbeats.start();
    // Already complete, or nothing to fetch at all (an empty release has no units): the core says 'complete'.
    if (!this.core.holdsAll) this.wan.start();
    this.kick();
  }

  /** The core has new input: drain its outputs once this run of inputs is over. */
  private kick(): void {
    this.driver?.kick();
  }

  /** What each heartbeat tells the server (the server drops leases we no longer have in flight). */
  private heartbeatBody(): Record<string, unknown> {
    const fetching = [...this.wan.inFlight.keys()];
    return {
      release: this.manifest.id,
      group: this.opts.group,
      member: this.member,
      have: Buffer.from(this.store.bitmap()).toString('base64'),
      address: this.interfaceAddress,
      fetching,
      fetchingBytes: fetching.map((u) => this.wan.inFlight.get(u) ?? 0),
      // Downloads paused while our own copies to other sites drain: alive and sending, not a straggler.
      ...(this.core.crossBusy ? { copying: true } : {}),
      forwarded: this.stats.fragmentsForwarded,
      lanBytes: this.stats.lanBytes,
      // 1.5: in a wide-area group, this agent takes copy trees (docs/protocol.md section 17).
      ...(this.opts.wideGroup ? { wideGroup: this.opts.wideGroup, copyTree: true } : {}),
      ...(this.dataPort ? { dataPort: this.dataPort } : {}),
    };
  }

  private async complete(): Promise<void> {
    if (this.finishing) return;
    this.finishing = true;
    try {
      const stored = await this.store.finish();
      this.finalPath = this.manifest.enc ? await decryptRelease(this.client, this.manifest, this.opts.storageDir, stored, this.log) : stored;
    } catch (err) {
      this.finishing = false;
      if ((err as FleetcastError).code === 'WHOLE_HASH') {
        this.log.error((err as Error).message);
        this.core.fileFailed(this.store.bitmap(), Date.now());
        this.wan.start();
        return;
      }
      this.completion.reject(err as Error);
      return;
    }
    const completedAt = Date.now();
    this.stats.seconds = (completedAt - this.started) / 1000;
    this.stats.completedAtMs = completedAt;
    await UnitSpool.removeAll(path.join(this.opts.storageDir, this.manifest.id)).catch(() => undefined);
    this.core.fileComplete(Date.now());
    this.kick();
    try {
      await this.client.post('/v1/complete', { release: this.manifest.id, group: this.opts.group, member: this.member, sha256: this.manifest.sha256 });
    } catch (err) {
      this.log.warn(`completion notice: ${(err as Error).message}`);
    }
    this.log.info(`release ${this.manifest.name} complete and verified: ${this.finalPath}`);
    this.completion.resolve(this.finalPath!);
  }

  /**
   * After completing, keep answering NACKs until every member of the group is
   * complete, or `lingerMs` passes. Complete means: every other member in the
   * split map announced `complete` on the LAN (fast), or the server says so.
   */
  async linger(): Promise<void> {
    const limit = Date.now() + (this.opts.lingerMs ?? AGENT_DEFAULTS.lingerMs);
    await this.heartbeats.beat().catch(() => undefined);
    while (!this.closed && Date.now() < limit) {
      if (this.map?.groupComplete || this.core.lanPeersComplete(Date.now())) return;
      await sleep(AGENT_DEFAULTS.lingerPollMs, this.abort.signal);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.heartbeats?.stop();
    this.driver?.close();
    this.wan?.close();
    this.abort.abort();
    await this.cross?.close();
    await this.transport?.close();
    await this.store?.close();
    await this.storageLock?.release();
  }

  /** Leave the group politely (the server hands our leases to others at once). */
  async leave(): Promise<void> {
    if (!this.manifest) return;
    try {
      // node:http like every other call of ours: the first fetch() of a process compiles
      // undici's WebAssembly HTTP parser, ~25 MiB of peak RSS on the way out (issue 16).
      const res = await this.opts.server.request('POST', '/v1/leave', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ release: this.manifest.id, group: this.opts.group, member: this.member }),
        signal: AbortSignal.timeout(2000),
      });
      res.dump();
    } catch {
      /* the server will time us out */
    }
  }
}
