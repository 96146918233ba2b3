import { Sim, TimerHandle } from './clock';
import { CoreConfig, CoreLeaseGrant, CoreStats, Endpoint as CoreEndpoint, MakeCore, SimCore, Transmit, newStats } from './core-api';
import { Endpoint, Network } from './network';
import { Prng } from './prng';
import { SimRelease } from './release';
import { SimServer } from './server';
import type { Logger } from '../../src/util/log';

/**
 * One simulated agent: the driver around a protocol core, as src/agent/core-driver.ts is
 * on a real box, with the simulator's clock, network endpoint, WAN and store in
 * place of the real ones.
 *
 * - Every input to the core carries the simulated `now`; after each, the driver
 *   drains the core in the order the interface asks (transmits until none, then
 *   events until none, repeated until both are empty) and re-arms one timer at
 *   `pollTimeout()`.
 * - The store is a Map of unit -> bytes; 'store' and 'read' events are answered at
 *   once (an in-memory disk). Buffers given to the core become the core's (its pool
 *   reuses them), so the store only ever hands over copies, as a disk read would.
 *   With assembleInPlace, 'write' puts unverified bytes in a unit's place (`partial`)
 *   and 'verify' reads them back through verifyInPlace, then commits them, as
 *   PartialStore's writeRangeSync, readRangeSync and commitInPlace do.
 * - The WAN: leased units "arrive" at `wanRateBytesPerSec` after `wanDelayMs`, in
 *   chunks (cut-through `fetchProgress`), `fetchConcurrency` at a time, paused while
 *   the core says it is backlogged.
 * - The server: a heartbeat every `heartbeatMs` carries the store's bitmap and brings
 *   back the split map; relay requests reach it after one WAN delay.
 */
export interface MemberOptions {
  id: string;
  group: string;
  wideGroup?: string;
  /** LAN send rate of the core's pacer. */
  rateBytesPerSec: number;
  crossRateBytesPerSec: number;
  fragmentBytes: number;
  wanRateBytesPerSec: number;
  wanDelayMs: number;
  fetchConcurrency: number;
  /** Bytes per fetchProgress call. */
  wanChunkBytes: number;
  heartbeatMs: number;
  /** The core builds LAN assemblies in the store ('write'/'verify' events), as the agent's does. */
  assembleInPlace?: boolean;
  /** Rewrites each outgoing datagram (a lying member); null drops it. `unicast`: sent to one endpoint, not the LAN. */
  mangle?: (datagram: Uint8Array, unicast: boolean) => Uint8Array | null;
  /** Whether this member takes a datagram that reached it (false: lost on the way to it alone). `cross`: from another LAN group. */
  inbound?: (datagram: Uint8Array, cross: boolean) => boolean;
  /** The core's logger (default: silent). */
  logger?: Logger;
}

/** Two inputs at the same instant, over and over, mean the core is spinning. */
const MAX_WAKEUPS_AT_ONE_INSTANT = 100_000;

export class SimMember {
  readonly store = new Map<number, Buffer>();
  /** In place: units' unverified bytes as 'write' events left them. */
  readonly partial = new Map<number, Buffer>();
  /** In place: bytes written, and bytes read back to verify. */
  inPlaceWritten = 0;
  inPlaceReadBack = 0;
  readonly stats: CoreStats = newStats();
  readonly core: SimCore;
  readonly endpoint: Endpoint;
  /** Simulated time the core reported 'complete', or null. */
  completedAt: number | null = null;
  /** Bytes taken from the WAN, and units. */
  wanBytes = 0;
  wanUnits = 0;
  relayEvents = 0;
  private dead = false;
  private timer: TimerHandle | null = null;
  private fetching = 0;
  private paused = false;
  private wanBusyUntil = 0;
  private readonly have: Uint8Array;
  private lastInstant = -1;
  private wakeupsAtInstant = 0;
  private heartbeatTimer: TimerHandle | null = null;

  constructor(
    private readonly sim: Sim,
    net: Network,
    lan: ReturnType<Network['addLan']>,
    private readonly server: SimServer,
    private readonly release: SimRelease,
    makeCore: MakeCore,
    rng: Prng,
    readonly opts: MemberOptions,
    readonly address: CoreEndpoint,
  ) {
    const unitCount = release.manifest.unitCount;
    this.have = new Uint8Array((unitCount + 7) >>> 3);
    this.endpoint = net.attach(lan, epName(address));
    const cfg: CoreConfig = {
      manifest: release.manifest,
      member: opts.id,
      group: opts.group,
      ...(opts.wideGroup ? { wideGroup: opts.wideGroup } : {}),
      senderId: 1 + rng.int(0xfffffffe),
      fragmentBytes: opts.fragmentBytes,
      have: new Uint8Array(this.have),
      rateBytesPerSec: opts.rateBytesPerSec,
      crossRateBytesPerSec: opts.crossRateBytesPerSec,
      controlSeqStart: 1n,
      random: rng.fork('core').random,
      stats: this.stats,
      ...(opts.assembleInPlace ? { assembleInPlace: true } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
    };
    this.core = makeCore(cfg, sim.now);
    this.endpoint.onReceive = (data, from, via, now) => {
      if (this.dead || (this.opts.inbound && !this.opts.inbound(data, via === 'cross'))) return;
      this.core.handleDatagram(data, now, via === 'cross' ? parseEp(from) : undefined);
      this.drive();
    };
    server.join({ id: opts.id, group: opts.group, address: address.address, port: address.port }, sim.now, (grant) => this.granted(grant));
  }

  /** Joins: the first split map, then heartbeats. */
  start(): void {
    this.heartbeat();
  }

  /** The units this member is to fetch from the WAN (its static share). */
  lease(units: number[]): void {
    this.granted({ units, copyTo: this.server.copyTo(this.opts.id) });
  }

  /** The box dies: no more inputs, outputs or heartbeats; its endpoint drops what arrives. */
  kill(): void {
    this.dead = true;
    this.endpoint.kill();
    this.timer?.cancel();
    this.heartbeatTimer?.cancel();
  }

  get alive(): boolean {
    return !this.dead;
  }

  /** Every unit stored, byte for byte the release. */
  storeEqualsRelease(): boolean {
    const units = this.release.units;
    if (this.store.size !== units.length) return false;
    for (let u = 0; u < units.length; u++) if (!this.store.get(u)?.equals(units[u])) return false;
    return true;
  }

  private granted(grant: CoreLeaseGrant): void {
    if (this.dead) return;
    this.core.leaseGranted(grant, this.sim.now);
    this.drive();
  }

  private heartbeat(): void {
    if (this.dead) return;
    const verified = this.store.size;
    const map = this.server.heartbeat(this.opts.id, this.sim.now, new Uint8Array(this.have), verified, this.completedAt !== null);
    this.core.setSplitMap(map, this.sim.now);
    this.drive();
    this.heartbeatTimer = this.sim.after(this.opts.heartbeatMs, () => this.heartbeat());
  }

  /** Drains the core's outputs, then re-arms its timer. */
  private drive(): void {
    if (this.dead) return;
    const now = this.sim.now;
    if (now === this.lastInstant) {
      if (++this.wakeupsAtInstant > MAX_WAKEUPS_AT_ONE_INSTANT) {
        throw new Error(`sim: member ${this.opts.id} woke ${MAX_WAKEUPS_AT_ONE_INSTANT} times at ${now} ms without time moving (a timeout that is always due?)`);
      }
    } else {
      this.lastInstant = now;
      this.wakeupsAtInstant = 0;
    }
    for (;;) {
      let busy = false;
      for (let t = this.core.pollTransmit(now); t; t = this.core.pollTransmit(now)) {
        busy = true;
        this.send(t);
        this.core.transmitted(t, t.datagrams.length, now);
      }
      for (let e = this.core.pollEvent(); e; e = this.core.pollEvent()) {
        busy = true;
        switch (e.type) {
          case 'store':
            this.keep(e.unit, Buffer.from(e.bytes));
            // Written (the bytes are the core's again), then committed, as PartialStore does.
            this.core.unitWritten?.(e.unit, now);
            this.core.unitStored(e.unit, now);
            break;
          case 'write': {
            const len = unitBytes(this.release, e.unit);
            let p = this.partial.get(e.unit);
            if (!p) this.partial.set(e.unit, (p = Buffer.alloc(len)));
            p.set(e.bytes, e.offset);
            this.inPlaceWritten += e.bytes.length;
            break;
          }
          case 'verify': {
            const p = this.partial.get(e.unit) ?? Buffer.alloc(unitBytes(this.release, e.unit));
            const ok = this.core.verifyInPlace!(e.unit, (offset, into) => {
              p.copy(into, 0, offset, offset + into.length);
              this.inPlaceReadBack += into.length;
            }, now);
            if (!ok) break;
            this.partial.delete(e.unit);
            this.keep(e.unit, Buffer.from(p));
            this.core.unitStored(e.unit, now);
            break;
          }
          case 'read': {
            // The core owns what it is given (its buffer pool reuses it): hand over a copy, as a disk read would.
            const b = this.store.get(e.unit);
            this.core.unitRead(e.unit, b ? Buffer.from(b) : null, now);
            break;
          }
          case 'relay': {
            this.relayEvents++;
            const asked = { units: [...e.units], reason: e.reason };
            this.sim.after(this.opts.wanDelayMs, () => {
              if (this.dead) return;
              this.core.leaseGranted(this.server.relay(this.opts.id, asked.units, asked.reason), this.sim.now, asked);
              this.drive();
            });
            break;
          }
          case 'wake':
            this.startFetches();
            break;
          case 'complete':
            if (this.completedAt === null) this.completedAt = now;
            this.core.fileComplete(now);
            break;
        }
      }
      if (!busy) break;
    }
    this.startFetches();
    const at = this.core.pollTimeout();
    if (this.timer && (at === null || this.timer.at !== Math.max(at, now))) {
      this.timer.cancel();
      this.timer = null;
    }
    if (at !== null && !this.timer) {
      this.timer = this.sim.at(Math.max(at, now), () => {
        this.timer = null;
        if (this.dead) return;
        this.core.handleTimeout(this.sim.now);
        this.drive();
      });
    }
  }

  private send(t: Transmit): void {
    for (const d of t.datagrams) {
      const out = this.opts.mangle ? this.opts.mangle(d, t.to !== null) : d;
      if (!out) continue;
      if (t.to === null) this.endpoint.multicast(out);
      else this.endpoint.unicast(epName(t.to), out);
    }
  }

  private keep(unit: number, bytes: Buffer): void {
    this.store.set(unit, bytes);
    this.have[unit >>> 3] |= 0x80 >>> (unit & 7);
  }

  private startFetches(): void {
    // Downloads pause while the core's copy queues are backlogged, until they drain.
    if (this.core.backlogged()) this.paused = true;
    else if (this.paused && this.core.drained()) this.paused = false;
    while (!this.dead && !this.paused && this.fetching < this.opts.fetchConcurrency) {
      const unit = this.core.takeLeased();
      if (unit === undefined) return;
      if (this.store.has(unit)) continue;
      this.fetch(unit);
    }
  }

  /** One unit over the WAN: chunks at the member's WAN rate (shared by its fetches), cut through to the core. */
  private fetch(unit: number): void {
    this.fetching++;
    const bytes = this.release.units[unit];
    // From the core's pool, as the real driver does: the core recycles what unitFetched hands it.
    const got = this.core.takeBuffer(bytes.length);
    this.core.fetchStarted(unit, this.sim.now);
    let received = 0;
    let t = Math.max(this.sim.now + this.opts.wanDelayMs, this.wanBusyUntil);
    const chunks: number[] = [];
    for (let off = 0; off < bytes.length; off += this.opts.wanChunkBytes) {
      const end = Math.min(bytes.length, off + this.opts.wanChunkBytes);
      t += ((end - off) * 1000) / this.opts.wanRateBytesPerSec;
      chunks.push(t);
    }
    this.wanBusyUntil = t;
    chunks.forEach((at, i) => {
      this.sim.at(at, () => {
        if (this.dead) return;
        const end = Math.min(bytes.length, (i + 1) * this.opts.wanChunkBytes);
        bytes.copy(got, received, received, end);
        received = end;
        this.wanBytes += end - i * this.opts.wanChunkBytes;
        const now = this.sim.now;
        if (received < bytes.length) {
          this.core.fetchProgress(unit, got, received, now);
        } else {
          this.wanUnits++;
          // The store keeps its own copy: `got` now belongs to the core.
          this.keep(unit, Buffer.from(got));
          this.core.fetchProgress(unit, got, received, now);
          this.core.unitFetched(unit, got, now);
          this.core.fetchEnded(unit, now);
          this.fetching--;
        }
        this.drive();
      });
    });
  }
}

export function epName(e: CoreEndpoint): string {
  return `${e.address}:${e.port}`;
}

function parseEp(name: string): CoreEndpoint {
  const i = name.lastIndexOf(':');
  return { address: name.slice(0, i), port: Number(name.slice(i + 1)) };
}

function unitBytes(release: SimRelease, unit: number): number {
  const m = release.manifest;
  return Math.max(0, Math.min(m.unitSize, m.size - unit * m.unitSize));
}
