import { bitmapBytes, fragmentCountFor, fragmentSlice, getBit, setBit } from '../../wire/packet';
import type { AnnouncePacket } from '../../wire/packet';
import type { Logger } from '../../util/log';
import type { NackScheduler } from '../nack-scheduler';
import type { Assembler } from './assembler';
import { AGENT_DEFAULTS } from './defaults';
import { queuedBits } from './send-engine';
import type { SendEngine } from './send-engine';
import type { CoreConfig, CoreEvent, CoreManifest, CoreStats, CopyDestination, Endpoint } from './types';

/**
 * The unit side of the LAN core: what this member holds, downloads, assembles, stores
 * and reads back, and the copies and repairs made from those bytes. LanCore (lan-core.ts)
 * adds the packets, timers and roles on top. Storage is the driver's: the core asks for
 * writes and reads with events and hears back through unitStored/unitRead.
 */
export abstract class CoreUnits {
  protected readonly m: CoreManifest;
  protected readonly fb: number;
  /** Units verified and stored (bitmap, MSB first), and how many. */
  protected readonly have: Uint8Array;
  protected heldCount = 0;
  protected readonly events: CoreEvent[] = [];
  protected readonly fetching = new Set<number>();
  /** Per unit being fetched: the next fragment to copy out (cut-through). */
  private readonly fetchNext = new Map<number, number>();
  protected readonly leased: number[] = [];
  /** Units the server leased us because the wide-area group could not deliver them: LAN copies only. */
  protected readonly relayed = new Set<number>();
  /** `all-fetched` start policy: false until every unit is held somewhere; copies wait. */
  protected lanStart = true;
  protected readonly deferred: number[] = [];
  /** The units we fetched lately, oldest first, and when (copyRecent; at most recentCopyUnits). */
  private readonly fetchedAt = new Map<number, number>();
  private deferredReading = false;
  /** Units some peer announced verified that we lack. */
  protected readonly availableMissing = new Set<number>();
  /** When a unit was last verified, or data of a missing unit last arrived: the stall check's clock. */
  protected lastProgressAt: number;
  /** The 'complete' event went out; fileDone once the driver says the file is in place. */
  protected finishing = false;
  protected fileDone = false;
  /** Reads asked of the driver: what to do with the bytes, and whether to keep them for repairs. */
  /** The chunk of the last 'write' event polled: free again at the next poll. */
  private written: Buffer | null = null;
  private readonly reads = new Map<number, { uses: ((buf: Buffer) => void)[]; cache: boolean; deferred: boolean }>();

  protected abstract readonly log: Logger;
  protected abstract readonly send: SendEngine;
  protected abstract readonly nacks: NackScheduler;
  protected abstract copyTo: CopyDestination[];
  /** 1.5: our group's copy-tree position, carried by our own cross-group copies (undefined: no tree). */
  protected abstract copyTreeOrigin: number | undefined;
  protected abstract announceSoon(now: number): void;
  protected abstract announce(now: number): void;
  protected abstract ensureTicking(now: number): void;

  constructor(
    protected readonly cfg: CoreConfig,
    protected readonly asm: Assembler,
    readonly stats: CoreStats,
    now: number,
  ) {
    asm.write = (unit, offset, bytes) => this.events.push({ type: 'write', unit, offset, bytes });
    this.m = cfg.manifest;
    this.fb = cfg.fragmentBytes;
    this.have = new Uint8Array(bitmapBytes(cfg.unitCapacity ?? this.m.unitCount));
    this.have.set(cfg.have.subarray(0, this.have.length));
    for (let u = 0; u < this.m.unitCount; u++) if (getBit(this.have, u)) this.heldCount++;
    this.lastProgressAt = now;
  }

  has(unit: number): boolean {
    return unit < this.m.unitCount && getBit(this.have, unit);
  }
  /** Every unit verified and stored. */
  get holdsAll(): boolean {
    return this.heldCount === this.m.unitCount;
  }
  protected unitBytes(u: number): number {
    return Math.max(0, Math.min(this.m.unitSize, this.m.size - u * this.m.unitSize));
  }

  /** A DATA datagram for a unit past the known ones (a stream's batch not verified yet): true when kept for later (StreamCore). */
  protected ahead(_buf: Uint8Array, _unit: number, _via: Endpoint | undefined, _now: number): boolean {
    return false;
  }

  /** An announce that lists units past `end`, the known ones (StreamCore remembers them); returns `end`. */
  protected announcedAhead(_p: AnnouncePacket, _via: Endpoint | undefined, end: number, _now: number): number {
    return end;
  }

  /** Set while held datagrams are handled again: a cross-group pacer counted their bytes when they came. */
  protected replaying = false;

  protected drop(reason: string): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + 1;
  }

  /** A unit-sized buffer for a download (give it back with giveBuffer if it is not handed to unitFetched). */
  takeBuffer(len: number): Buffer {
    return this.asm.pool.take(len);
  }
  giveBuffer(buf: Buffer): void {
    this.asm.pool.give(buf);
  }

  pollEvent(): CoreEvent | null {
    if (this.written) {
      this.asm.chunkDone(Buffer.from(this.written.buffer, 0, this.written.buffer.byteLength));
      this.written = null;
    }
    for (;;) {
      const e = this.events.shift();
      if (!e) return null;
      if (e.type !== 'write') return e;
      // Bytes of an assembly dropped since (a download of the unit started): not written.
      if (this.asm.get(e.unit)) {
        this.written = e.bytes;
        return e;
      }
      this.asm.chunkDone(Buffer.from(e.bytes.buffer, 0, e.bytes.buffer.byteLength));
    }
  }

  get leasedCount(): number {
    return this.leased.length;
  }

  takeLeased(): number | undefined {
    return this.leased.shift();
  }

  fetchStarted(unit: number, _now: number): void {
    this.fetching.add(unit);
    // A unit we fetch ourselves needs no LAN copy of it.
    this.asm.dropAssembly(unit);
    this.nacks.done(unit);
    this.fetchNext.set(unit, 0);
  }

  /** Payload bytes per fragment (the LAN grid): a driver's download window holds whole fragments. */
  get fragmentBytes(): number {
    return this.fb;
  }

  fetchProgress(unit: number, bytes: Uint8Array, received: number, now: number, base = 0): void {
    const len = this.unitBytes(unit);
    const fc = fragmentCountFor(len, this.fb);
    const crossGroup = !this.relayed.has(unit);
    let next = this.fetchNext.get(unit) ?? 0;
    // Every fragment goes out on the LAN (and to the other groups' gateways) as soon
    // as its bytes are here; under `all-fetched` the copies wait for lanStart.
    while (next < fc && (received >= (next + 1) * this.fb || received === len)) {
      const at = next - base / this.fb; // the fragment's index in the window
      if (at < 0 || base % this.fb) throw new RangeError(`fetchProgress: fragment ${next} of unit ${unit} is not in the window at byte ${base}`);
      if (this.lanStart) this.copyFragment(unit, next, fc, fragmentSlice(bytes.subarray(0, len - base), at, this.fb), crossGroup, now);
      next++;
    }
    this.fetchNext.set(unit, next);
  }

  fetchEnded(unit: number, _now: number): void {
    this.fetching.delete(unit);
    this.fetchNext.delete(unit);
  }

  unitFetched(unit: number, bytes: Buffer | null, now: number): void {
    this.accept(unit, bytes, 'wan', now);
    this.fetchedAt.delete(unit);
    this.fetchedAt.set(unit, now);
    if (this.fetchedAt.size > AGENT_DEFAULTS.recentCopyUnits) this.fetchedAt.delete(this.fetchedAt.keys().next().value!);
    if (!this.lanStart) {
      this.deferred.push(unit);
      this.stats.unitsDeferred++;
    }
  }

  unitWritten(unit: number, _now: number): void {
    this.asm.release(unit);
  }

  unitStored(unit: number, now: number): void {
    const a = this.asm.get(unit);
    if (a?.verifying) this.accept(unit, a.released ? null : a.buf, 'lan', now);
  }

  protected verifyAssembly(unit: number): void {
    if (this.asm.inPlace) {
      this.asm.completeInPlace(unit);
      this.events.push({ type: 'verify', unit });
      return;
    }
    const buf = this.asm.verify(unit, this.m.units[unit]);
    if (buf) {
      this.events.push({ type: 'store', unit, bytes: buf });
      return;
    }
    this.stats.unitsRejected++;
    this.nacks.done(unit);
    this.log.warn(`unit ${unit} from the LAN failed verification; discarded`);
  }

  verifyInPlace(unit: number, read: (offset: number, into: Buffer) => void, _now: number): boolean {
    const a = this.asm.get(unit);
    if (!a?.verifying || this.has(unit)) return false;
    let ok: boolean;
    try {
      ok = this.asm.verifyInPlace(unit, this.unitBytes(unit), this.m.units[unit], read);
    } catch (err) {
      this.log.warn(`reading back unit ${unit} to verify it: ${(err as Error).message}; asking for it again`);
      this.asm.forget(unit);
      this.nacks.done(unit);
      this.drop('assembly-read-failed');
      return false;
    }
    if (ok) return true;
    this.stats.unitsRejected++;
    this.nacks.done(unit);
    this.log.warn(`unit ${unit} from the LAN failed verification; discarded`);
    return false;
  }

  assemblyRefused(unit: number, _now: number): void {
    if (!this.asm.get(unit)) return;
    this.asm.forget(unit);
    this.nacks.done(unit);
    this.drop('assembly-refused');
  }

  /** A verified unit is stored: tell the LAN, keep it for repairs, finish when it was the last. */
  private accept(unit: number, buf: Buffer | null, from: 'wan' | 'lan', now: number): void {
    if (this.has(unit)) return;
    setBit(this.have, unit);
    this.heldCount++;
    this.lastProgressAt = now;
    if (from === 'wan') this.stats.unitsFromWan++;
    else this.stats.unitsFromLan++;
    this.availableMissing.delete(unit);
    this.unitHeld(unit);
    this.asm.stored(unit);
    this.nacks.done(unit);
    if (buf) this.asm.cache(unit, buf); // null: released to the cache when written
    this.announceSoon(now);
    this.completeIfAll();
  }

  /** A unit became held (for state kept per missing unit). */
  protected unitHeld(_unit: number): void {}

  protected completeIfAll(): void {
    if (this.holdsAll && !this.finishing && !this.fileDone) {
      this.finishing = true;
      this.events.push({ type: 'complete' });
    }
  }

  fileComplete(now: number): void {
    this.fileDone = true;
    this.announce(now);
  }

  /** Finishing failed and storage starts over with these units (the whole-file hash did not match). */
  fileFailed(have: Uint8Array, now: number): void {
    this.finishing = false;
    this.have.fill(0);
    this.have.set(have.subarray(0, this.have.length));
    this.heldCount = 0;
    for (let u = 0; u < this.m.unitCount; u++) if (getBit(this.have, u)) this.heldCount++;
    this.lastProgressAt = now;
    this.ensureTicking(now);
  }

  unitRead(unit: number, bytes: Buffer | null, now: number): void {
    const r = this.reads.get(unit);
    if (!r) return;
    this.reads.delete(unit);
    if (r.deferred) this.deferredReading = false;
    if (bytes) {
      for (const use of r.uses) use(bytes);
      if (r.deferred) this.copyAll(unit, bytes, now);
      // Kept for repairs as far as repairCacheUnits allows; the rest goes back to the pool.
      if (r.cache) this.asm.cache(unit, bytes);
      else this.asm.pool.give(bytes);
    }
    this.pumpDeferred();
  }

  private read(unit: number, use: ((buf: Buffer) => void) | null, deferred: boolean): void {
    let r = this.reads.get(unit);
    if (!r) {
      r = { uses: [], cache: false, deferred: false };
      this.reads.set(unit, r);
      this.events.push({ type: 'read', unit });
    }
    if (use) {
      r.uses.push(use);
      r.cache = true;
    }
    if (deferred) r.deferred = true;
  }

  /**
   * Run `use` on a verified unit's bytes, from the small cache or else once the driver
   * read them. `use` keeps no reference: a buffer that leaves the cache goes back to the
   * pool, and the next download or assembly overwrites it.
   */
  private withRepairBytes(unit: number, use: (buf: Buffer) => void): void {
    const cached = this.asm.cached(unit);
    if (cached) use(cached);
    else this.read(unit, use, false);
  }

  /** `all-fetched`: the group holds everything now; copy what we fetched while waiting, one unit at a time. */
  protected pumpDeferred(): void {
    if (!this.lanStart || this.deferredReading || this.send.backlogged()) return;
    const unit = this.deferred.shift();
    if (unit === undefined) return;
    this.deferredReading = true;
    this.read(unit, null, true);
  }

  private copyAll(unit: number, buf: Buffer, now: number): void {
    const fc = fragmentCountFor(buf.length, this.fb);
    for (let f = 0; f < fc; f++) this.copyFragment(unit, f, fc, fragmentSlice(buf, f, this.fb), !this.relayed.has(unit), now);
  }

  /**
   * Copies of the units we fetched in the last recentCopyMs to gateways of LAN groups
   * we had none for (`to`: one that joined, or whose first member came, after we copied
   * them). They went to the groups known then, and the new one would ask for each whole
   * unit by NACK once our announce named it: at a stream's start (its first unit fetched
   * before the other site's members were up) that round and its repair's holdoff were
   * 100-200 ms, and every unit behind it waited in that site's sinks.
   */
  protected copyRecent(to: CopyDestination[], now: number): void {
    if (!to.length || !this.lanStart || !this.cfg.recentCopies) return;
    let bytes = 0; // oldest first, up to recentCopyMaxBytes
    for (const [unit, at] of this.fetchedAt) {
      if (now - at > AGENT_DEFAULTS.recentCopyMs || this.relayed.has(unit) || !this.has(unit)) continue;
      if ((bytes += this.unitBytes(unit)) > AGENT_DEFAULTS.recentCopyMaxBytes) break;
      this.withRepairBytes(unit, (buf) => {
        const fc = fragmentCountFor(buf.length, this.fb);
        for (const d of to) for (let f = 0; f < fc; f++) this.send.queueUnicast(unit, f, fc, fragmentSlice(buf, f, this.fb), false, d, now, this.copyTreeOrigin);
        this.stats.recentCopies++;
      });
    }
    this.ensureTicking(now);
  }

  /** A copy of one fragment: multicast on the LAN, and unicast to each other group's gateway to be re-multicast there. */
  protected copyFragment(unit: number, fragment: number, fc: number, payload: Uint8Array, crossGroup: boolean, now: number): void {
    this.send.queueLan(unit, fragment, fc, payload, false);
    if (!crossGroup || !this.copyTo.length) return;
    for (const to of this.copyTo) this.send.queueUnicast(unit, fragment, fc, payload, false, to, now, this.copyTreeOrigin);
    this.ensureTicking(now);
  }

  protected sendRepair(unit: number, fragments: number[]): void {
    this.withRepairBytes(unit, (buf) => {
      const fc = fragmentCountFor(buf.length, this.fb);
      const queued = queuedBits(this.send.repairQueued, unit, fc);
      let any = false;
      for (const f of fragments) {
        if (f >= fc || getBit(queued, f)) continue;
        setBit(queued, f);
        any = true;
        this.send.queueLan(unit, f, fc, fragmentSlice(buf, f, this.fb), true);
      }
      if (any) this.stats.nacksAnswered++;
    });
  }

  /** Repair fragments by unicast to another group's gateway, flagged to be re-multicast there. */
  protected repairUnicast(unit: number, missing: Uint8Array, to: Endpoint, now: number): void {
    const k = `${unit}/${to.address}/${to.port}`;
    this.withRepairBytes(unit, (buf) => {
      const fc = fragmentCountFor(buf.length, this.fb);
      // Fragments still queued for this requester are not queued again: the cross-group
      // pace is slow, and a gateway NACKs again before the first answer has left.
      const queued = queuedBits(this.send.unicastRepairQueued, k, fc);
      let any = false;
      for (let f = 0; f < fc; f++) {
        if (!getBit(missing, f) || getBit(queued, f)) continue;
        setBit(queued, f);
        any = true;
        this.send.queueUnicast(unit, f, fc, fragmentSlice(buf, f, this.fb), true, to, now);
      }
      if (any) this.stats.nacksAnswered++;
      this.ensureTicking(now);
    });
  }
}
