import { bitmapBytes, getBit, setBit } from '../wire/packet';
import { MapLog } from './allocator-log';
import { AllocatorOptions, DEFAULT_ALLOCATOR_OPTIONS } from './allocator-options';
import { ShareLedger } from './allocator-share';

/*
 * The state of one GroupAllocator (allocator.ts) and the helpers every part of it uses:
 * its options, the member and lease records, overhead-based predictions (000 claims 3-4,
 * 13), and marking a unit held. The allocator is layered: this state, the member table
 * (allocator-members.ts), the gateways (allocator-gateways.ts), and leasing with the
 * split map (allocator.ts). Pure: every method takes `now` (ms); no timers, no I/O.
 */
export interface Member {
  id: string;
  lastSeen: number;
  joinedAt: number;
  address: string | null;
  lanGroup: string;
  dataPort: number | null;
  have: Uint8Array;
  verified: number;
  leases: Set<number>;
  /**
   * Units whose lease another member's report of them ended while this member, their
   * lessee, was sending them: when the server started sending (its receipt still scores
   * the overhead). At most MAX_ENDED_SENDS, the oldest dropped; optional (most never have any).
   */
  endedSends?: Map<number, number>;
  /** ms per byte, EWMA; null until first sample. */
  overhead: number | null;
  /** Stream allocators (`shareWeighted`): its share credit in units, and whether its last heartbeat asked for a lease (allocator-share.ts). */
  credit?: number;
  asking?: boolean;
  /** `overhead` is the one remembered from before a server restart, not measured since. */
  overheadRemembered: boolean;
  complete: boolean;
  /** Fragments re-multicast as a gateway (the member's own cumulative count) and when it last grew. */
  forwarded: number;
  forwardedAt: number;
  /** Release bytes it took from its LAN peers (its own count, from heartbeats). */
  lanBytes: number;
  /** Not eligible as a gateway before this (it held the role and forwarded nothing). */
  demotedUntil: number;
  gatewayDemotions: number;
  /** Units whose claim expired undelivered: its heartbeats' bits for them are ignored until it is sent them. */
  distrust: Uint8Array | null;
  undeliveredClaims: number;
  /**
   * 1.7 (docs/protocol.md section 19): channel polls that name it, held right now. While
   * one is held the member is alive (the server sees the connection) and does not time out.
   */
  pollsHeld: number;
  /** 1.7: the idle interval of protocol 1.6 when it last held a poll (ms), 0 if never: with no poll held it times out after three of these. */
  pollFallbackMs: number;
  /** The heartbeat interval the server last asked of it (ms), 0 before the first answer. */
  heartbeatMs: number;
  /** Its number in this allocator's 1.4 answers: assigned at join, never reused. */
  slot: number;
  /** What the change log last recorded of it (MapLog): its shape, its counters, when. */
  loggedShape: string;
  loggedCounters: string;
  loggedAt: number;
}

/** Why the server sends a unit to a member: its first lease, or one of the re-sends. */
export type SendReason = 'lease' | ResendReason;
/**
 * Re-sends of a unit that some member of the group already holds or leases:
 * `hedged` (a straggler's overdue lease, 004 claim 5), `relayed` (a gateway's forwarded
 * NACK went unanswered), `stalled` (an agent made no progress at all).
 */
export type ResendReason = 'hedged' | 'relayed' | 'stalled';
export const RESEND_REASONS: readonly ResendReason[] = ['hedged', 'relayed', 'stalled'];

export interface Lease {
  member: string;
  grantedAt: number;
  deadline: number;
  /** When the server started sending the unit's bytes to the member. */
  sentAt: number | null;
  reason: SendReason;
  /** Bytes of the unit written to the member so far, and when the last of them left. */
  bytesSent: number;
  lastByteAt: number;
  /** The member's last heartbeat said its downloads wait for its own cross-group copies. */
  copying?: boolean;
  /**
   * The bytes come from an HTTP range origin (docs/scale-out.md): sentAt is the grant, and
   * the server learns the download started only when a heartbeat lists the unit in `fetching`.
   */
  origin?: { startedAt: number | null };
}

export interface LeaseGrant {
  units: number[];
  /** Of `units`, those that are hedges of another member's overdue lease. */
  hedged?: number[];
  /** Units leased again for a LAN group that could not get them from the wide-area group. */
  relayed?: number[];
  /** Set when nothing was granted but units remain: ask again after this long. */
  retryAfterMs: number;
  /** Nothing is left to lease in this group: every unit is leased or held. */
  exhausted: boolean;
}

export const MIB = 1024 * 1024;

/** A member is dropped after missing this many of its heartbeats (plus TIMEOUT_SLACK_MS)... */
const MISSED_HEARTBEATS = 3;
/** ...for a slow network or a busy box. */
const TIMEOUT_SLACK_MS = 1000;
/** Per member: sends whose lease a peer's report ended, kept for the receipt (Member.endedSends). */
export const MAX_ENDED_SENDS = 64;
/** A member a stream's share rule held back asks again after this (it beats at the next batch anyway). */
const SHARE_RETRY_MS = 50;

export abstract class AllocatorState {
  protected readonly members = new Map<string, Member>();
  protected readonly leases = new Map<number, Lease>();
  /** holderCount[u]: live members holding u verified. */
  protected holderCount: Uint32Array;
  /** Lowest unit index that might still be free; a scan hint. */
  protected scanFrom = 0;
  readonly opts: AllocatorOptions;
  /** Leases reclaimed because their member left or they ran past the deadline. */
  reclaimed = 0;
  /** Second leases of overdue units (hedging), by unit; the first verified copy wins. */
  protected readonly hedges = new Map<number, Lease>();
  private shareLedger?: ShareLedger;
  /** Stream allocators (`shareWeighted`): the members' share credits (made at first use: releases never use them). */
  get share(): ShareLedger {
    return (this.shareLedger ??= new ShareLedger());
  }

  /** `id`'s lease of unit `u`, or its hedge lease of it; undefined when it holds neither. */
  protected leaseOf(id: string, u: number): Lease | undefined {
    return this.leases.get(u)?.member === id ? this.leases.get(u) : this.hedges.get(u)?.member === id ? this.hedges.get(u) : undefined;
  }
  get hedgedUnits(): number {
    return this.resentUnits.hedged;
  }
  /** Units sent again to a group that already had them held or leased, by reason. */
  readonly resentUnits: Record<ResendReason, number> = { hedged: 0, relayed: 0, stalled: 0 };
  /** Units some member of a LAN group asked for while a member of that group claimed them: "group/unit" -> first ask, count. */
  protected readonly missingReports = new Map<string, { first: number; count: number }>();
  /** Claims that expired undelivered (a lying or broken member), all members. */
  claimsExpired = 0;
  /** Members by slot (1.4 answers name members by slot). */
  protected readonly bySlot = new Map<number, Member>();
  protected nextSlot = 0;
  /**
   * named[u]: the slot of the member the 1.4 map names for unit u: its lessee, else a
   * member holding it verified (kept while it holds it), else -1. Kept up to date on every
   * change, so an answer costs what changed, not units x members.
   */
  protected named: Int32Array;
  /** Units no live member holds verified. */
  protected missing: number;
  readonly mapLog: MapLog;
  /** Random per allocator: a member's version from another allocator (or server run) is not taken for ours. */
  readonly mapEpoch = Math.floor(Math.random() * 0xffffffff);
  /** Version of the last change to gateways or members' endpoints (copy destinations). */
  protected copyToVersion = 0;
  /**
   * No member times out and no lease or hedge passes its deadline before this (ms; a lower
   * bound, Infinity when nothing can expire: every member holds a poll). expire() sets it
   * from what it walked; a change that brings a deadline before it lowers it (due()), and
   * a later deadline (a member seen again) leaves it: the walk at the old bound finds it.
   */
  nextDue = Infinity;
  /** Told each new nextDue (the server keeps its allocators in a heap by it: allocators.ts). */
  onDue: ((at: number) => void) | null = null;
  /** The server's count of live members in all its allocators, kept by joins and leaves (allocators.ts). */
  census: { members: number } | null = null;
  /** Members expire() walked, all calls (the work of expiry: issue 17 counts it, never times it). */
  membersWalked = 0;
  /** Members whose overhead changed since takeOverheads() (the fleet memory notes only those). */
  protected readonly overheadsChanged = new Set<string>();
  protected medianKept: number | null | undefined;
  /** Told when the first of them changed since takeOverheads(). */
  onOverhead: (() => void) | null = null;

  protected overheadChanged(id: string): void {
    this.medianKept = undefined;
    if (this.overheadsChanged.size === 0) this.onOverhead?.();
    this.overheadsChanged.add(id);
  }

  constructor(opts: Partial<AllocatorOptions> & Pick<AllocatorOptions, 'unitCount' | 'unitBytes'>) {
    this.opts = { ...DEFAULT_ALLOCATOR_OPTIONS, ...opts };
    this.holderCount = new Uint32Array(this.opts.unitCount);
    this.named = new Int32Array(this.opts.unitCount).fill(-1);
    this.missing = this.opts.unitCount;
    this.mapLog = new MapLog(this.opts.mapLogEntries);
  }


  /**
   * A stream's allocator (server/stream-alloc.ts) learns units as they are published:
   * the unit count grows to `unitCount` (members are not complete any more), and units
   * before `firstUnit` (dropped by retention) are not leased again. The arrays and the
   * members' bitmaps grow by doubling, so that a unit costs what it adds, not a copy of
   * everything before it (at 100,000 units and 10 members the copies took 0.3 ms a unit,
   * at ~38 units a second; `npm run bench -- stream-answer`); they may be longer than the
   * unit count, and nothing reads past it. A release's allocator never calls this.
   */
  growUnits(unitCount: number, firstUnit: number): void {
    const old = this.opts.unitCount;
    if (unitCount > old) {
      const grow = <T extends Uint8Array | Uint32Array | Int32Array>(a: T, n: number, fill = 0): T => {
        if (a.length >= n) return a;
        const b = new (a.constructor as new (n: number) => T)(Math.max(n, 2 * a.length));
        b.fill(fill);
        b.set(a);
        return b;
      };
      this.holderCount = grow(this.holderCount, unitCount);
      this.named = grow(this.named, unitCount, -1);
      for (const m of this.members.values()) {
        m.have = grow(m.have, bitmapBytes(unitCount));
        if (m.distrust) m.distrust = grow(m.distrust, bitmapBytes(unitCount));
        m.complete = false;
      }
      this.missing += unitCount - old;
      this.opts.unitCount = unitCount;
    }
    this.scanFrom = Math.max(this.scanFrom, Math.min(firstUnit, this.opts.unitCount));
  }

  /** Unit u's lessee or holders may have changed: name its holder again, logging a change. */
  protected rename(u: number): void {
    const l = this.leases.get(u);
    let s = -1;
    if (l) s = this.members.get(l.member)?.slot ?? -1;
    else {
      const cur = this.named[u] >= 0 ? this.bySlot.get(this.named[u]) : undefined;
      if (cur && getBit(cur.have, u)) s = cur.slot;
      else if (this.holderCount[u] > 0) {
        for (const m of this.members.values()) {
          if (getBit(m.have, u)) {
            s = m.slot;
            break;
          }
        }
      }
    }
    if (s !== this.named[u]) {
      this.named[u] = s;
      this.mapLog.unit(u);
    }
  }


  /**
   * A member's record may have changed: log it when its shape did (group, endpoint,
   * completion), or its counters did and it was last logged memberRefreshMs ago, or
   * memberRefreshPerMemberMs per member of the allocator if longer (section 14).
   */
  protected touch(m: Member, now: number): void {
    const endpoint = `${m.lanGroup}|${m.address}|${m.dataPort}|`;
    const shape = `${endpoint}${m.complete}`;
    const counters = `${m.verified}|${m.leases.size}|${m.overhead}|${m.forwarded}|${m.lanBytes}|${m.gatewayDemotions}|${m.undeliveredClaims}`;
    if (shape === m.loggedShape && (counters === m.loggedCounters || now - m.loggedAt < Math.max(this.opts.memberRefreshMs, this.members.size * this.opts.memberRefreshPerMemberMs))) return;
    // A new endpoint or group may change where copies go (copy destinations).
    if (!m.loggedShape.startsWith(endpoint)) this.copyToVersion = this.mapLog.version + 1;
    m.loggedShape = shape;
    m.loggedCounters = counters;
    m.loggedAt = now;
    this.mapLog.member(m.slot);
  }


  /** Something may expire at `at`: lower nextDue to it. */
  protected due(at: number): void {
    if (!(at < this.nextDue)) return;
    this.nextDue = at;
    this.onDue?.(at);
  }

  /** `m`'s timeout may have come nearer (a shorter interval, its poll ended, an older sighting). */
  protected dueMember(m: Member): void {
    this.due(m.lastSeen + this.memberTimeout(m));
  }

  protected memberTimeout(m: Member): number {
    if (m.pollsHeld > 0) return Infinity;
    const every = m.pollFallbackMs > 0 ? Math.min(m.heartbeatMs, m.pollFallbackMs) : m.heartbeatMs;
    return Math.max(this.opts.memberTimeoutMs, MISSED_HEARTBEATS * every + TIMEOUT_SLACK_MS);
  }


  protected newLease(id: string, m: Member, u: number, now: number, reason: SendReason): Lease {
    if (reason !== 'lease') this.resentUnits[reason]++;
    const deadline = now + this.leaseDuration(m, u);
    this.due(deadline);
    return { member: id, grantedAt: now, deadline, sentAt: null, reason, bytesSent: 0, lastByteAt: now };
  }


  protected markHeld(m: Member, u: number): void {
    if (u < 0 || u >= this.opts.unitCount || getBit(m.have, u)) return;
    setBit(m.have, u);
    m.verified++;
    if (this.holderCount[u]++ === 0) this.missing--;
    if (m.verified === this.opts.unitCount) m.complete = true;
    const l = this.leases.get(u);
    if (l) {
      this.leases.delete(u);
      const lessee = this.members.get(l.member);
      lessee?.leases.delete(u);
      // Its peers took the lessee's copies and said so before its receipt came: keep what
      // the receipt needs to score the lessee's overhead (on a loaded LAN, every sample of
      // a member could end so, leaving it unmeasured and unweighted).
      if (lessee && lessee !== m && l.sentAt !== null) {
        const e = (lessee.endedSends ??= new Map());
        if (e.size >= MAX_ENDED_SENDS) e.delete(e.keys().next().value as number);
        e.set(u, l.sentAt);
      }
    }
    const h = this.hedges.get(u);
    if (h) {
      this.hedges.delete(u);
      this.members.get(h.member)?.leases.delete(u);
    }
    this.rename(u);
  }


  /** Reference overhead: the median of members with a sample, or null; kept (medianKept) until an overhead changes or a member leaves. */
  protected medianOverhead(): number | null {
    if (this.medianKept !== undefined) return this.medianKept;
    const xs = [...this.members.values()].map((m) => m.overhead).filter((x): x is number => x !== null).sort((a, b) => a - b);
    return (this.medianKept = xs.length === 0 ? null : xs[Math.floor(xs.length / 2)]);
  }

  protected overheadOf(m: Member): number | null {
    return m.overhead ?? this.medianOverhead();
  }


  protected depthFor(m: Member): number {
    const med = this.medianOverhead();
    if (m.overhead === null || med === null || m.overhead <= 0) return this.opts.baseDepth;
    const d = Math.round((this.opts.baseDepth * med) / m.overhead);
    return Math.max(1, Math.min(this.opts.maxDepth, d));
  }


  protected leaseDuration(m: Member, u: number): number {
    const oh = this.overheadOf(m);
    const predicted = oh === null ? 0 : oh * this.opts.unitBytes(u) * (m.leases.size + 1);
    // A member told to beat slowly (load, 1.4) keeps its lease alive with those beats: two fit in it.
    return Math.max(this.opts.leaseMinMs, predicted * this.opts.leaseSlackFactor, 2 * m.heartbeatMs);
  }


  /**
   * Tail rule: a member whose next unit (of `bytes`) would land later than the rest of the
   * group could finish the `remaining` free units (times tailSlackFactor) waits: how long, or null.
   * The rest cannot finish sooner than its fastest member finishes one unit: a unit is not
   * split. (Without that floor, with five or more equally fast members and the last units
   * free, every asker was told to wait for the others, and nobody fetched them until the
   * agents' stall relay, 15 s later.)
   */
  protected tailWait(m: Member, bytes: number, remaining: number): number | null {
    const mine = this.predictedFinish(m, bytes);
    const rest = this.othersFinishTime(m, remaining * bytes, bytes);
    return mine !== null && rest !== null && mine > rest * this.opts.tailSlackFactor ? Math.max(50, Math.min(2000, Math.round(rest))) : null;
  }

  /** A stream's share rule (allocator-share.ts), while free units are scarce: how long `m` waits, or null. */
  protected shareWait(m: Member, u: number, remaining: number, now: number): number | null {
    return remaining <= this.members.size && this.share.defers(m, u, this.members.values(), (o) => this.depthFor(o), now) ? SHARE_RETRY_MS : null;
  }

  /** Predicted time for m to finish its queue plus one more unit of `bytes`. */
  protected predictedFinish(m: Member, bytes: number): number | null {
    const oh = this.overheadOf(m);
    if (oh === null) return null;
    return oh * bytes * (m.leases.size + 1);
  }


  /**
   * Time the members other than `m` need for `bytes` plus their own queues, or null if
   * unknown; at least the time the fastest of them needs for its queue and one more `unit`.
   */
  protected othersFinishTime(m: Member, bytes: number, unit: number): number | null {
    let rate = 0; // bytes per ms
    let queued = 0;
    let fastest = Infinity;
    for (const o of this.members.values()) {
      if (o === m || o.overhead === null || o.overhead <= 0) continue;
      rate += 1 / o.overhead;
      for (const u of o.leases) queued += this.opts.unitBytes(u);
      fastest = Math.min(fastest, this.predictedFinish(o, unit) ?? Infinity); // measured: its own overhead
    }
    return rate > 0 ? Math.max((bytes + queued) / rate, fastest) : null;
  }
}
