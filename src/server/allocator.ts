import { bitmapBytes, clearBit, getBit, setBit } from '../util/bits';

/**
 * Unit allocation for one release in one LAN group (000 claims 2–4, 8, 13;
 * 004 claims 1, 6–8, 11). Pure: every method takes `now` (ms); no timers, no I/O.
 *
 * - A unit is leased to at most one member of the group at a time (no overlap),
 *   and never while some live member already holds it verified.
 * - Overhead (000 claim 4): for each unit the server registers when it starts
 *   sending the unit to a member and when that member's receipt notice arrives;
 *   (receipt − sent) / bytes is one sample of that member's overhead in ms per
 *   byte, smoothed with an EWMA. Members are ranked by it after every notice.
 * - Weighting: a member may hold `depth` unfinished leases, where depth grows as
 *   its overhead shrinks relative to the group's median; near the end of the
 *   release a member whose predicted finish is far behind the best member's is
 *   told to wait, so the last units go to fast members.
 * - Membership: a member silent for `memberTimeoutMs`, or for three of the heartbeat
 *   intervals the server asked of it plus a second if that is longer, is dropped and its
 *   leases return to the pool; a lease past its deadline returns too. A late joiner is
 *   leased from what is left and takes the rest from its LAN peers.
 * - Soft state: everything here is rebuilt from heartbeats (`have` bitmaps) after
 *   a server restart.
 */
export interface AllocatorOptions {
  unitCount: number;
  unitBytes: (unit: number) => number;
  memberTimeoutMs: number;
  /** Leases a member of median speed may hold unfinished. */
  baseDepth: number;
  maxDepth: number;
  /** A lease is reclaimed when it runs this many times longer than predicted... */
  leaseSlackFactor: number;
  /** ...but never sooner than this. */
  leaseMinMs: number;
  /** Near the end, a member predicted to finish this many times later than the best waits. */
  tailSlackFactor: number;
  /** Weight of a new overhead sample in the EWMA. */
  overheadAlpha: number;
  /**
   * Hedging (004 claim 5): a lease running this many times longer than its member's
   * overhead predicts (and at least hedgeMinMs) is also given to another member; the
   * first verified copy wins.
   */
  hedgeFactor: number;
  hedgeMinMs: number;
  /** `representative` policy: only each LAN group's gateway (its best member) takes leases. */
  representativeOnly: boolean;
  /** A gateway keeps its role until its overhead is this many times the best in its group. */
  gatewaySlackFactor: number;
  /**
   * ...or this many times, while it is forwarding other groups' copies (it re-multicast
   * within gatewayIdleMs): moving it costs every sender a path learned anew and the copies
   * queued for it, and the forwarding itself (and, under `wide`, downloads paced by the
   * cross-group copies) inflates its overhead. On a loaded box the role flapped between
   * members at 1.5x, each move making things worse.
   */
  gatewayForwardingSlackFactor: number;
  /**
   * A gateway that re-multicast nothing for this long, while its LAN group lacked units
   * held verified in other groups, loses the role for gatewayDemoteMs.
   */
  gatewayIdleMs: number;
  gatewayDemoteMs: number;
  /**
   * `all-fetched` start: nothing crosses between groups until every unit is held, so a
   * quiet gateway is judged only after that.
   */
  deferredStart: boolean;
  /**
   * A claim is not proof: when members of a LAN group have asked for a unit (relay or stall
   * requests) at least claimReports times over at least claimExpireMs while a member of
   * that group claims to hold it, the claim expires and the unit is leased again.
   */
  claimExpireMs: number;
  claimReports: number;
}

export const DEFAULT_ALLOCATOR_OPTIONS: Omit<AllocatorOptions, 'unitCount' | 'unitBytes'> = {
  memberTimeoutMs: 6000,
  baseDepth: 3,
  maxDepth: 12,
  leaseSlackFactor: 4,
  leaseMinMs: 15000,
  tailSlackFactor: 2,
  overheadAlpha: 0.3,
  hedgeFactor: 4,
  hedgeMinMs: 20_000,
  representativeOnly: false,
  gatewaySlackFactor: 1.5,
  gatewayForwardingSlackFactor: 4,
  gatewayIdleMs: 8000,
  gatewayDemoteMs: 30_000,
  deferredStart: false,
  claimExpireMs: 10_000,
  claimReports: 2,
};

export interface MemberView {
  id: string;
  /** 1 = lowest overhead. Members without a sample rank after those with one. */
  rank: number;
  /** Smoothed overhead in ms per MiB; null until the first receipt notice. */
  overheadMsPerMiB: number | null;
  verifiedUnits: number;
  leases: number;
  complete: boolean;
  lastSeenMsAgo: number;
  address: string | null;
  /** The member's LAN group (several in a wide-area group). */
  group: string;
  /** UDP port of its unicast socket (cross-group copies and NACKs), when it has one. */
  dataPort: number | null;
  /** `gateway`: the member of its LAN group that receives and re-multicasts other groups' copies. */
  role: 'gateway' | 'member';
  /** Fragments it re-multicast as a gateway (its own count, from heartbeats). */
  forwarded: number;
  /** Release bytes it took from its LAN peers (its own count, from heartbeats). */
  lanBytes: number;
  /** Times it lost the gateway role for forwarding nothing while its group lacked units held elsewhere. */
  gatewayDemotions: number;
  /** Units it claimed to hold that its LAN group kept asking for: claims that did not deliver. */
  undeliveredClaims: number;
}

export interface SplitMap {
  members: MemberView[];
  /** holders[u]: index into `members` of the member leased or holding unit u, -1 for none. */
  holders: number[];
  groupComplete: boolean;
  /** Every unit is held by some member (the `all-fetched` start policy waits for this). */
  allHeld: boolean;
}

interface Member {
  id: string;
  lastSeen: number;
  joinedAt: number;
  address: string | null;
  lanGroup: string;
  dataPort: number | null;
  have: Uint8Array;
  verified: number;
  leases: Set<number>;
  /** ms per byte, EWMA; null until first sample. */
  overhead: number | null;
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
  /** The heartbeat interval the server last asked of it (ms), 0 before the first answer. */
  heartbeatMs: number;
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

interface Lease {
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

const MIB = 1024 * 1024;

/** A member is dropped after missing this many of its heartbeats (plus TIMEOUT_SLACK_MS)... */
const MISSED_HEARTBEATS = 3;
/** ...for a slow network or a busy box. */
const TIMEOUT_SLACK_MS = 1000;

export class GroupAllocator {
  private readonly members = new Map<string, Member>();
  private readonly leases = new Map<number, Lease>();
  /** holderCount[u]: live members holding u verified. */
  private readonly holderCount: Uint32Array;
  /** Lowest unit index that might still be free; a scan hint. */
  private scanFrom = 0;
  readonly opts: AllocatorOptions;
  /** Leases reclaimed because their member left or they ran past the deadline. */
  reclaimed = 0;
  /** Second leases of overdue units (hedging), by unit; the first verified copy wins. */
  private readonly hedges = new Map<number, Lease>();
  get hedgedUnits(): number {
    return this.resentUnits.hedged;
  }
  /** Units sent again to a group that already had them held or leased, by reason. */
  readonly resentUnits: Record<ResendReason, number> = { hedged: 0, relayed: 0, stalled: 0 };
  /** Units some member of a LAN group asked for while a member of that group claimed them: "group/unit" -> first ask, count. */
  private readonly missingReports = new Map<string, { first: number; count: number }>();
  /** Claims that expired undelivered (a lying or broken member), all members. */
  claimsExpired = 0;
  /** `all-fetched`: when every unit was first seen held (copies cross from then on). */
  private allHeldAt: number | null = null;
  /** Each LAN group's gateway (member id), kept until it leaves or slows (hysteresis). */
  private readonly gatewayOf = new Map<string, { id: string; since: number }>();

  constructor(opts: Partial<AllocatorOptions> & Pick<AllocatorOptions, 'unitCount' | 'unitBytes'>) {
    this.opts = { ...DEFAULT_ALLOCATOR_OPTIONS, ...opts };
    this.holderCount = new Uint32Array(this.opts.unitCount);
  }

  /** Join or heartbeat. `have` is the member's verified-units bitmap (authoritative). */
  heartbeat(
    id: string,
    now: number,
    info: {
      have?: Uint8Array | null;
      address?: string | null;
      fetching?: number[];
      fetchingBytes?: number[];
      copying?: boolean;
      lanGroup?: string;
      dataPort?: number | null;
      forwarded?: number;
      lanBytes?: number;
    } = {},
  ): void {
    let m = this.members.get(id);
    if (!m) {
      m = {
        id,
        lastSeen: now,
        joinedAt: now,
        address: null,
        lanGroup: info.lanGroup ?? '',
        dataPort: null,
        have: new Uint8Array(bitmapBytes(this.opts.unitCount)),
        verified: 0,
        leases: new Set(),
        overhead: null,
        overheadRemembered: false,
        complete: this.opts.unitCount === 0,
        forwarded: 0,
        forwardedAt: now,
        lanBytes: 0,
        demotedUntil: 0,
        gatewayDemotions: 0,
        distrust: null,
        undeliveredClaims: 0,
        heartbeatMs: 0,
      };
      this.members.set(id, m);
    }
    m.lastSeen = now;
    if (info.address !== undefined) m.address = info.address;
    if (info.lanGroup !== undefined) m.lanGroup = info.lanGroup;
    if (info.dataPort !== undefined) m.dataPort = info.dataPort;
    if (info.lanBytes !== undefined) m.lanBytes = info.lanBytes;
    if (info.forwarded !== undefined && info.forwarded !== m.forwarded) {
      m.forwarded = info.forwarded;
      m.forwardedAt = now;
    }
    if (info.have) {
      for (let u = 0; u < this.opts.unitCount; u++) if (getBit(info.have, u) && !(m.distrust && getBit(m.distrust, u))) this.markHeld(m, u);
    }
    // Units the member is still receiving keep their lease alive, and say how far they got.
    const fetching = info.fetching ?? [];
    for (let i = 0; i < fetching.length; i++) {
      const u = fetching[i];
      const l = this.leases.get(u)?.member === id ? this.leases.get(u) : this.hedges.get(u)?.member === id ? this.hedges.get(u) : undefined;
      if (!l) continue;
      if (this.leases.get(u) === l) l.deadline = Math.max(l.deadline, now + this.leaseDuration(m, u));
      const b = info.fetchingBytes?.[i];
      // Paused for its own copies to other groups: alive and sending, as good as progress.
      l.copying = info.copying === true;
      if (l.copying) l.lastByteAt = now;
      if (b !== undefined && b > l.bytesSent) {
        l.bytesSent = b;
        l.lastByteAt = now;
      }
    }
  }

  /**
   * A member (re)starts: whatever it had leased is not in flight any more, so
   * those leases go back to the pool at once instead of waiting for deadlines.
   */
  restart(id: string): number {
    const m = this.members.get(id);
    if (!m) return 0;
    const n = m.leases.size;
    for (const u of m.leases) {
      if (this.hedges.get(u)?.member === id) this.hedges.delete(u);
      else if (this.leases.get(u)?.member === id) this.leases.delete(u);
      if (u < this.scanFrom) this.scanFrom = u;
    }
    m.leases.clear();
    return n;
  }

  leave(id: string): void {
    const m = this.members.get(id);
    if (!m) return;
    for (const u of m.leases) {
      if (this.hedges.get(u)?.member === id) this.hedges.delete(u);
      else if (this.leases.get(u)?.member === id) {
        this.leases.delete(u);
        this.reclaimed++;
        // Its hedge, if any, becomes the lease.
        const h = this.hedges.get(u);
        if (h) {
          this.hedges.delete(u);
          this.leases.set(u, h);
        }
      }
      if (u < this.scanFrom) this.scanFrom = u;
    }
    for (let u = 0; u < this.opts.unitCount; u++) {
      if (getBit(m.have, u)) {
        this.holderCount[u]--;
        if (this.holderCount[u] === 0 && u < this.scanFrom) this.scanFrom = u;
      }
    }
    this.members.delete(id);
  }

  /**
   * The server asked `id` to heartbeat every `ms` from now on: it is timed out only after
   * missing about three of those (memberTimeoutMs is the floor), so a member told to beat
   * slowly while idle is not dropped between its beats.
   */
  setHeartbeatInterval(id: string, ms: number): void {
    const m = this.members.get(id);
    if (m) m.heartbeatMs = ms;
  }

  /** How long `id` may stay silent before it is dropped. */
  timeoutOf(id: string): number | null {
    const m = this.members.get(id);
    return m ? this.memberTimeout(m) : null;
  }

  private memberTimeout(m: Member): number {
    return Math.max(this.opts.memberTimeoutMs, MISSED_HEARTBEATS * m.heartbeatMs + TIMEOUT_SLACK_MS);
  }

  /**
   * Nothing is left for `id` to do in this group: it holds every unit, leases none, and
   * every member of the (wide-area) group is complete, so nobody fetches or copies. The
   * server lets such a member heartbeat slowly.
   */
  idle(id: string): boolean {
    const m = this.members.get(id);
    if (!m || !m.complete || m.leases.size > 0) return false;
    for (const o of this.members.values()) if (!o.complete) return false;
    return true;
  }

  /** Drop silent members and reclaim overdue leases. */
  expire(now: number): string[] {
    const gone: string[] = [];
    for (const m of this.members.values()) {
      if (now - m.lastSeen > this.memberTimeout(m)) gone.push(m.id);
    }
    for (const id of gone) this.leave(id);
    for (const [u, l] of this.leases) {
      if (now > l.deadline) {
        this.leases.delete(u);
        this.members.get(l.member)?.leases.delete(u);
        this.reclaimed++;
        const h = this.hedges.get(u);
        if (h) {
          this.hedges.delete(u);
          this.leases.set(u, h);
        }
        if (u < this.scanFrom) this.scanFrom = u;
      }
    }
    for (const [u, h] of this.hedges) {
      if (now > h.deadline) {
        this.hedges.delete(u);
        this.members.get(h.member)?.leases.delete(u);
      }
    }
    return gone;
  }

  hasMember(id: string): boolean {
    return this.members.has(id);
  }

  /**
   * The server starts sending unit `u` to `id` (000 claim 8: register the send time).
   * Returns why `id` gets it (its lease, or a re-send), or null when it holds no lease.
   */
  sending(id: string, u: number, now: number): SendReason | null {
    const l = this.leases.get(u)?.member === id ? this.leases.get(u) : this.hedges.get(u)?.member === id ? this.hedges.get(u) : undefined;
    if (!l) return null;
    if (l.sentAt === null) {
      l.sentAt = now;
      l.lastByteAt = now;
    }
    return l.reason;
  }

  private newLease(id: string, m: Member, u: number, now: number, reason: SendReason): Lease {
    if (reason !== 'lease') this.resentUnits[reason]++;
    return { member: id, grantedAt: now, deadline: now + this.leaseDuration(m, u), sentAt: null, reason, bytesSent: 0, lastByteAt: now };
  }

  /** Receipt notice (000 claim 8): member verified unit u. Updates overhead and ranking. */
  receipt(id: string, u: number, now: number): void {
    const m = this.members.get(id);
    if (!m || u < 0 || u >= this.opts.unitCount) return;
    m.lastSeen = now;
    const l = this.leases.get(u)?.member === id ? this.leases.get(u) : this.hedges.get(u)?.member === id ? this.hedges.get(u) : undefined;
    if (l && l.sentAt !== null) {
      const bytes = Math.max(1, this.opts.unitBytes(u));
      const sample = Math.max(0, now - l.sentAt) / bytes;
      m.overhead = m.overhead === null ? sample : m.overhead + this.opts.overheadAlpha * (sample - m.overhead);
      m.overheadRemembered = false;
    }
    // Sent the unit under a lease: its claim of it counts again.
    if (l && m.distrust) clearBit(m.distrust, u);
    this.markHeld(m, u);
  }

  /**
   * The overhead `id` had before a server restart (fleet.json): it ranks, weights and may
   * make the member a gateway as a measurement would, and new samples smooth from it.
   * Ignored once the member has a measurement of its own.
   */
  rememberOverhead(id: string, msPerMiB: number): void {
    const m = this.members.get(id);
    if (!m || m.overhead !== null || !Number.isFinite(msPerMiB) || msPerMiB < 0) return;
    m.overhead = msPerMiB / MIB;
    m.overheadRemembered = true;
  }

  /** Whether `id`'s overhead is still the one from before a restart. */
  overheadRemembered(id: string): boolean {
    return this.members.get(id)?.overheadRemembered ?? false;
  }

  markComplete(id: string): void {
    const m = this.members.get(id);
    if (m) m.complete = true;
  }

  private markHeld(m: Member, u: number): void {
    if (u < 0 || u >= this.opts.unitCount || getBit(m.have, u)) return;
    setBit(m.have, u);
    m.verified++;
    this.holderCount[u]++;
    if (m.verified === this.opts.unitCount) m.complete = true;
    const l = this.leases.get(u);
    if (l) {
      this.leases.delete(u);
      this.members.get(l.member)?.leases.delete(u);
    }
    const h = this.hedges.get(u);
    if (h) {
      this.hedges.delete(u);
      this.members.get(h.member)?.leases.delete(u);
    }
  }

  /** Reference overhead: the median of members with a sample, or null. */
  private medianOverhead(): number | null {
    const xs = [...this.members.values()].map((m) => m.overhead).filter((x): x is number => x !== null).sort((a, b) => a - b);
    if (xs.length === 0) return null;
    return xs[Math.floor(xs.length / 2)];
  }

  private overheadOf(m: Member): number | null {
    return m.overhead ?? this.medianOverhead();
  }

  private depthFor(m: Member): number {
    const med = this.medianOverhead();
    if (m.overhead === null || med === null || m.overhead <= 0) return this.opts.baseDepth;
    const d = Math.round((this.opts.baseDepth * med) / m.overhead);
    return Math.max(1, Math.min(this.opts.maxDepth, d));
  }

  private leaseDuration(m: Member, u: number): number {
    const oh = this.overheadOf(m);
    const predicted = oh === null ? 0 : oh * this.opts.unitBytes(u) * (m.leases.size + 1);
    return Math.max(this.opts.leaseMinMs, predicted * this.opts.leaseSlackFactor);
  }

  /** Predicted time for m to finish its queue plus one more unit of `bytes`. */
  private predictedFinish(m: Member, bytes: number): number | null {
    const oh = this.overheadOf(m);
    if (oh === null) return null;
    return oh * bytes * (m.leases.size + 1);
  }

  /** Time the members other than `m` need for `bytes` plus their own queues, or null if unknown. */
  private othersFinishTime(m: Member, bytes: number): number | null {
    let rate = 0; // bytes per ms
    let queued = 0;
    for (const o of this.members.values()) {
      if (o === m || o.overhead === null || o.overhead <= 0) continue;
      rate += 1 / o.overhead;
      for (const u of o.leases) queued += this.opts.unitBytes(u);
    }
    return rate > 0 ? (bytes + queued) / rate : null;
  }

  private freeUnits(limit: number): number[] {
    const out: number[] = [];
    let u = this.scanFrom;
    let firstFree = -1;
    for (; u < this.opts.unitCount && out.length < limit; u++) {
      if (this.holderCount[u] === 0 && !this.leases.has(u)) {
        if (firstFree < 0) firstFree = u;
        out.push(u);
      }
    }
    this.scanFrom = firstFree < 0 ? u : firstFree;
    return out;
  }

  private freeCount(): number {
    let n = 0;
    for (let u = this.scanFrom; u < this.opts.unitCount; u++) if (this.holderCount[u] === 0 && !this.leases.has(u)) n++;
    return n;
  }

  /**
   * An overdue lease of another member that `m` may hedge, or null. Overdue is not
   * enough: a holder whose heartbeats show the unit still arriving, at a pace that ends
   * sooner than `m` could fetch it (times hedgeFactor), is left alone. A busy box is
   * slow for everyone; only a straggler, or a holder whose download stopped, is hedged.
   */
  private hedgeable(m: Member, now: number): number | null {
    if (m.overhead === null) return null; // only members with a measured overhead hedge
    for (const [u, l] of this.leases) {
      if (l.member === m.id || this.hedges.has(u) || l.sentAt === null) continue;
      const bytes = this.opts.unitBytes(u);
      const owner = this.members.get(l.member);
      const oh = owner ? this.overheadOf(owner) : null;
      const predicted = oh === null ? 0 : oh * bytes;
      const elapsed = now - l.sentAt;
      if (elapsed <= Math.max(this.opts.hedgeMinMs, this.opts.hedgeFactor * predicted)) continue;
      if (l.copying && now - l.lastByteAt < this.opts.hedgeMinMs) continue;
      if (l.bytesSent > 0 && now - l.lastByteAt < this.opts.hedgeMinMs) {
        const rate = l.bytesSent / Math.max(1, l.lastByteAt - l.sentAt); // bytes per ms
        const remainingMs = (bytes - l.bytesSent) / rate;
        if (remainingMs <= this.opts.hedgeFactor * m.overhead * bytes) continue;
      }
      return u;
    }
    return null;
  }

  /** Lease up to the member's depth of free units. The member must have joined. */
  lease(id: string, now: number): LeaseGrant {
    const m = this.members.get(id);
    if (!m) return { units: [], retryAfterMs: 0, exhausted: false };
    m.lastSeen = now;
    if (this.opts.representativeOnly && this.gatewayFor(m.lanGroup, now) !== id) return { units: [], retryAfterMs: 0, exhausted: true };
    const want = this.depthFor(m) - m.leases.size;
    if (want <= 0) return { units: [], retryAfterMs: 200, exhausted: false };
    const free = this.freeUnits(want);
    if (free.length === 0) {
      const h = this.hedgeable(m, now);
      if (h !== null) {
        this.hedges.set(h, this.newLease(id, m, h, now, 'hedged'));
        m.leases.add(h);
        return { units: [h], hedged: [h], retryAfterMs: 0, exhausted: false };
      }
      return { units: [], retryAfterMs: 0, exhausted: true };
    }
    // Tail rule: a member whose next unit would land later than the rest of the
    // group could finish everything left (times tailSlackFactor) waits instead.
    const remaining = this.freeCount();
    const mine = this.predictedFinish(m, this.opts.unitBytes(free[0]));
    const rest = this.othersFinishTime(m, remaining * this.opts.unitBytes(free[0]));
    if (mine !== null && rest !== null && mine > rest * this.opts.tailSlackFactor) {
      return { units: [], retryAfterMs: Math.max(50, Math.min(2000, Math.round(rest))), exhausted: false };
    }
    const units = remaining <= this.members.size ? free.slice(0, 1) : free;
    for (const u of units) {
      this.leases.set(u, this.newLease(id, m, u, now, 'lease'));
      m.leases.add(u);
    }
    return { units, retryAfterMs: 0, exhausted: false };
  }

  /**
   * Relay fallback: `id`'s LAN group needs `want` and no member of it holds or leases
   * them (the holder in another group did not answer the gateway's forwarded NACK).
   * Lease them to `id` even though they are held elsewhere.
   */
  relay(id: string, want: number[], now: number, reason: 'relayed' | 'stalled' = 'relayed'): LeaseGrant {
    const m = this.members.get(id);
    if (!m) return { units: [], retryAfterMs: 0, exhausted: false };
    // `representative`: only the group's best member ever fetches, relays included.
    if (this.opts.representativeOnly && this.gatewayFor(m.lanGroup, now) !== id) return { units: [], relayed: [], retryAfterMs: 0, exhausted: false };
    const units: number[] = [];
    for (const u of want) {
      if (u < 0 || u >= this.opts.unitCount || getBit(m.have, u) || m.leases.has(u)) continue;
      const group = [...this.members.values()].filter((o) => o.lanGroup === m.lanGroup && o !== m);
      if (group.some((o) => o.leases.has(u))) continue; // on its way to the group
      const claimants = group.filter((o) => getBit(o.have, u));
      if (claimants.length && !this.claimExpired(m, u, claimants, now)) continue;
      if (this.leases.has(u) && this.hedges.has(u)) continue;
      // Held (not just leased) by another group: this is a second send of the unit.
      const lease = this.newLease(id, m, u, now, this.holderCount[u] > 0 || this.leases.has(u) ? reason : 'lease');
      if (this.leases.has(u)) this.hedges.set(u, lease);
      else this.leases.set(u, lease);
      m.leases.add(u);
      units.push(u);
    }
    return { units, relayed: units, retryAfterMs: 0, exhausted: false };
  }

  /**
   * `requester`'s group asks for `u` although `claimants` say they hold it verified.
   * After claimReports asks over claimExpireMs the claims expire: a claimant that did not
   * deliver one unit is not trusted for any other its group still lacks, so each of its
   * claims to a unit the requester lacks is cleared, its later heartbeats' bits for those
   * are ignored until it is sent them, and its undeliveredClaims counts each. Returns
   * whether the claims expired now.
   */
  private claimExpired(requester: Member, u: number, claimants: Member[], now: number): boolean {
    const k = `${requester.lanGroup}/${u}`;
    const r = this.missingReports.get(k) ?? { first: now, count: 0 };
    r.count++;
    this.missingReports.set(k, r);
    if (r.count < this.opts.claimReports || now - r.first < this.opts.claimExpireMs) return false;
    this.missingReports.delete(k);
    for (const o of claimants) {
      o.distrust ??= new Uint8Array(bitmapBytes(this.opts.unitCount));
      for (let v = 0; v < this.opts.unitCount; v++) {
        if (!getBit(o.have, v) || getBit(requester.have, v)) continue;
        clearBit(o.have, v);
        o.verified--;
        o.complete = false;
        this.holderCount[v]--;
        setBit(o.distrust, v);
        o.undeliveredClaims++;
        this.claimsExpired++;
        if (v < this.scanFrom) this.scanFrom = v;
      }
    }
    return true;
  }

  /**
   * A gateway needs a unicast endpoint other groups can reach (a representative, its
   * group's only fetcher with nothing crossing groups, does not). Measured members come
   * first (faster()); an unmeasured one serves only while its group has no measured one
   * with an endpoint (a late joiner whose LAN peers have left still gets other groups'
   * repairs through it), and gives way as soon as there is one.
   */
  private eligibleGateway(m: Member, now: number): boolean {
    if (now < m.demotedUntil) return false;
    return this.opts.representativeOnly || (m.address !== null && m.dataPort !== null);
  }

  /** Lower overhead first; unmeasured members after measured ones, earliest joined first. */
  private static faster(a: Member, b: Member): boolean {
    if (a.overhead === null || b.overhead === null) return a.overhead !== null || (b.overhead === null && a.joinedAt < b.joinedAt);
    return a.overhead < b.overhead;
  }

  /**
   * The gateway of a LAN group: the eligible member with the lowest overhead, kept until
   * it leaves, slows past gatewaySlackFactor times the group's best (hysteresis;
   * gatewayForwardingSlackFactor while it is forwarding), an
   * unmeasured gateway is outranked by a measured member, or it forwards nothing for
   * gatewayIdleMs while its group lacks units that other groups hold (then it may not be
   * gateway for gatewayDemoteMs). Null while no member is eligible.
   */
  gatewayFor(lanGroup: string, now: number): string | null {
    const prev = this.gatewayOf.get(lanGroup);
    const cur = prev ? this.members.get(prev.id) : undefined;
    if (cur && prev && cur.lanGroup === lanGroup && this.forwardsNothing(cur, prev.since, now)) {
      cur.demotedUntil = now + this.opts.gatewayDemoteMs;
      cur.gatewayDemotions++;
    }
    let best: Member | null = null;
    for (const m of this.members.values()) {
      if (m.lanGroup !== lanGroup || !this.eligibleGateway(m, now)) continue;
      if (!best || GroupAllocator.faster(m, best)) best = m;
    }
    if (!best) {
      this.gatewayOf.delete(lanGroup);
      return null;
    }
    if (cur && prev && cur.lanGroup === lanGroup && this.eligibleGateway(cur, now)) {
      const forwarding = cur.forwardedAt > prev.since && now - cur.forwardedAt < this.opts.gatewayIdleMs;
      const slack = forwarding ? this.opts.gatewayForwardingSlackFactor : this.opts.gatewaySlackFactor;
      const slow = cur.overhead !== null && best.overhead !== null && cur.overhead > slack * best.overhead;
      if (!slow && (cur.overhead !== null || best.overhead === null)) return cur.id;
    }
    this.gatewayOf.set(lanGroup, { id: best.id, since: now });
    return best.id;
  }

  /**
   * The gateway has re-multicast nothing for gatewayIdleMs (nor since it took the role)
   * while its LAN group lacks a unit that another group holds verified.
   */
  private forwardsNothing(gw: Member, since: number, now: number): boolean {
    if (this.opts.deferredStart && this.allHeldAt === null) {
      // `all-fetched`: nothing crosses until every unit is held; the idle clock starts then.
      if (!this.allHeld()) return false;
      this.allHeldAt = now;
    }
    if (now - Math.max(since, gw.forwardedAt, this.allHeldAt ?? 0) < this.opts.gatewayIdleMs) return false;
    const groups = new Set<string>();
    for (const m of this.members.values()) groups.add(m.lanGroup);
    if (groups.size < 2) return false;
    const mine = [...this.members.values()].filter((m) => m.lanGroup === gw.lanGroup);
    for (let u = 0; u < this.opts.unitCount; u++) {
      if (this.holderCount[u] === 0) continue;
      let inGroup = 0;
      for (const m of mine) if (getBit(m.have, u)) inGroup++;
      if (inGroup === 0) return true;
    }
    return false;
  }

  /** Gateways of every LAN group present: group -> member id. */
  gateways(now: number): Map<string, string> {
    const out = new Map<string, string>();
    for (const g of new Set([...this.members.values()].map((m) => m.lanGroup))) {
      const id = this.gatewayFor(g, now);
      if (id) out.set(g, id);
    }
    return out;
  }

  /** Address and unicast port of a member, for copy destinations and NACK forwarding. */
  endpointOf(id: string): { address: string; port: number; group: string } | null {
    const m = this.members.get(id);
    return m && m.address && m.dataPort ? { address: m.address, port: m.dataPort, group: m.lanGroup } : null;
  }

  lanGroupOf(id: string): string | null {
    return this.members.get(id)?.lanGroup ?? null;
  }

  /** Every unit is held verified by some live member. */
  allHeld(): boolean {
    for (let u = 0; u < this.opts.unitCount; u++) if (this.holderCount[u] === 0) return false;
    return true;
  }

  leaseHolder(u: number): string | null {
    return this.leases.get(u)?.member ?? null;
  }

  /** The split-download map (004 claim 11): who leases or holds each unit, and the ranking. */
  map(now: number): SplitMap {
    const members = this.memberViews(now);
    const index = new Map<string, number>(members.map((m, i) => [m.id, i]));
    const holders = new Array<number>(this.opts.unitCount).fill(-1);
    for (const [u, l] of this.leases) holders[u] = index.get(l.member) ?? -1;
    for (const v of members) {
      const m = this.members.get(v.id)!;
      const i = index.get(v.id)!;
      for (let u = 0; u < this.opts.unitCount; u++) if (holders[u] === -1 && getBit(m.have, u)) holders[u] = i;
    }
    return { members, holders, groupComplete: members.length > 0 && members.every((m) => m.complete), allHeld: this.allHeld() };
  }

  /** The members, ranked by overhead: the split map without its O(units x members) holders. */
  memberViews(now: number): MemberView[] {
    const ranked = [...this.members.values()].sort((a, b) => {
      if (a.overhead === null && b.overhead === null) return a.joinedAt - b.joinedAt || (a.id < b.id ? -1 : 1);
      if (a.overhead === null) return 1;
      if (b.overhead === null) return -1;
      return a.overhead - b.overhead;
    });
    const gw = this.gateways(now);
    return ranked.map((m, i) => ({
      id: m.id,
      group: m.lanGroup,
      dataPort: m.dataPort,
      role: gw.get(m.lanGroup) === m.id ? ('gateway' as const) : ('member' as const),
      forwarded: m.forwarded,
      lanBytes: m.lanBytes,
      gatewayDemotions: m.gatewayDemotions,
      undeliveredClaims: m.undeliveredClaims,
      rank: i + 1,
      overheadMsPerMiB: m.overhead === null ? null : m.overhead * MIB,
      verifiedUnits: m.verified,
      leases: m.leases.size,
      complete: m.complete,
      lastSeenMsAgo: Math.max(0, now - m.lastSeen),
      address: m.address,
    }));
  }

  /** Units no live member holds verified. */
  missingInGroup(): number {
    let n = 0;
    for (let u = 0; u < this.opts.unitCount; u++) if (this.holderCount[u] === 0) n++;
    return n;
  }

  memberCount(): number {
    return this.members.size;
  }
}
