import { bitmapBytes, clearBit, getBit, setBit } from '../wire/packet';
import type { MapDelta, MemberRecord, MemberRecord14, SplitMap } from '../wire/http-bodies';
import { Member, MIB, SendReason, LeaseGrant } from './allocator-state';
import { GatewayTable } from './allocator-gateways';
import { BuiltRecord, RecordCache } from './allocator-records';

export { RESEND_REASONS } from './allocator-state';
export { DEFAULT_ALLOCATOR_OPTIONS } from './allocator-options';
export type { AllocatorOptions } from './allocator-options';
export type { LeaseGrant, ResendReason, SendReason } from './allocator-state';
export type { SplitMap } from '../wire/http-bodies';
/** A member's record in the split map (the wire's MemberRecord). */
export type MemberView = MemberRecord;

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
export class GroupAllocator extends GatewayTable {
  /** 1.4 member records, built once per logged change (allocator-records.ts). */
  private readonly records = new RecordCache();

  /**
   * The server starts sending unit `u` to `id` (000 claim 8: register the send time).
   * Returns why `id` gets it (its lease, or a re-send), or null when it holds no lease.
   */
  sending(id: string, u: number, now: number): SendReason | null {
    const l = this.leaseOf(id, u);
    if (!l) return null;
    if (l.sentAt === null) {
      l.sentAt = now;
      l.lastByteAt = now;
    }
    return l.reason;
  }


  /**
   * Unit `u` was granted to `id` with an HTTP range origin: the grant is the send time
   * (the server will not see the bytes go). Such a lease is hedged only once a heartbeat
   * has listed it in `fetching`, and its hedge clock runs from then, as a server lease's
   * runs from its first byte: a unit still queued behind the member's other downloads is
   * not late.
   */
  originGranted(id: string, u: number, now: number): void {
    const l = this.leaseOf(id, u);
    if (!l || l.sentAt !== null) return;
    this.sending(id, u, now);
    l.origin = { startedAt: null };
  }


  /** Receipt notice (000 claim 8): member verified unit u. Updates overhead and ranking. */
  receipt(id: string, u: number, now: number): void {
    const m = this.members.get(id);
    if (!m || u < 0 || u >= this.opts.unitCount) return;
    m.lastSeen = now;
    this.dueMember(m); // a receipt's time may be older than the last heartbeat (receiptAgesMs)
    const l = this.leaseOf(id, u);
    const ended = m.endedSends?.get(u);
    if (ended !== undefined) m.endedSends!.delete(u);
    const sentAt = l && l.sentAt !== null ? l.sentAt : (ended ?? null);
    if (sentAt !== null) {
      const bytes = Math.max(1, this.opts.unitBytes(u));
      const sample = Math.max(0, now - sentAt) / bytes;
      m.overhead = m.overhead === null ? sample : m.overhead + this.opts.overheadAlpha * (sample - m.overhead);
      m.overheadRemembered = false;
      this.overheadChanged(id);
    }
    // Sent the unit under a lease: its claim of it counts again.
    if (l && m.distrust) clearBit(m.distrust, u);
    this.markHeld(m, u);
    this.touch(m, now);
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
      // The hedge clock: from the first byte sent, or for an origin's bytes from the first heartbeat that listed the download.
      const start = l.origin ? l.origin.startedAt : l.sentAt;
      if (l.member === m.id || this.hedges.has(u) || start === null) continue;
      const bytes = this.opts.unitBytes(u);
      const owner = this.members.get(l.member);
      const oh = owner ? this.overheadOf(owner) : null;
      const predicted = oh === null ? 0 : oh * bytes;
      const elapsed = now - start;
      if (elapsed <= Math.max(this.opts.hedgeMinMs, this.opts.hedgeFactor * predicted)) continue;
      if (l.copying && now - l.lastByteAt < this.opts.hedgeMinMs) continue;
      if (l.bytesSent > 0 && now - l.lastByteAt < this.opts.hedgeMinMs) {
        const rate = l.bytesSent / Math.max(1, l.lastByteAt - start); // bytes per ms
        const remainingMs = (bytes - l.bytesSent) / rate;
        if (remainingMs <= this.opts.hedgeFactor * m.overhead * bytes) continue;
      }
      return u;
    }
    return null;
  }


  /** When the start gate (minMembers / maxWaitMs) opened, or null while it holds. */
  private startedAt: number | null = null;

  /** The start gate is open: minMembers have joined, or the first of them joined maxWaitMs ago. */
  started(now: number): boolean {
    if (this.startedAt !== null || this.opts.minMembers <= 0) return true;
    let first = Infinity;
    for (const m of this.members.values()) first = Math.min(first, m.joinedAt);
    if (this.members.size < this.opts.minMembers && now - first < this.opts.maxWaitMs) return false;
    this.startedAt = now;
    return true;
  }

  /**
   * Lease up to the member's depth of free units (at most `max`: a 1.4 heartbeat's
   * `lease`). The member must have joined.
   */
  lease(id: string, now: number, max = Infinity): LeaseGrant {
    const m = this.members.get(id);
    if (!m) return { units: [], retryAfterMs: 0, exhausted: false };
    const g = this.leaseFor(m, now, max);
    this.touch(m, now);
    return g;
  }


  private leaseFor(m: Member, now: number, max: number): LeaseGrant {
    const id = m.id;
    m.lastSeen = now;
    if (this.opts.representativeOnly && this.gatewayFor(m.lanGroup, now) !== id) return { units: [], retryAfterMs: 0, exhausted: true };
    if (!this.started(now)) return { units: [], retryAfterMs: 1000, exhausted: false }; // ask again in a second: a gated fleet of 100,000 must not beat every 250 ms
    const want = Math.min(max, this.depthFor(m) - m.leases.size);
    if (want <= 0) return { units: [], retryAfterMs: 200, exhausted: false };
    const free = this.freeUnits(want);
    if (free.length === 0) {
      const h = this.hedgeable(m, now);
      if (h !== null) {
        this.hedges.set(h, this.newLease(id, m, h, now, 'hedged'));
        m.leases.add(h);
        this.rename(h);
        return { units: [h], hedged: [h], retryAfterMs: 0, exhausted: false };
      }
      return { units: [], retryAfterMs: 0, exhausted: true };
    }
    const remaining = this.freeCount();
    const wait = this.opts.shareWeighted ? this.shareWait(m, free[0], remaining, now) : this.tailWait(m, this.opts.unitBytes(free[0]), remaining);
    if (wait !== null) return { units: [], retryAfterMs: wait, exhausted: false };
    const units = remaining <= this.members.size ? free.slice(0, 1) : free;
    for (const u of units) {
      this.leases.set(u, this.newLease(id, m, u, now, 'lease'));
      m.leases.add(u);
      this.rename(u);
    }
    if (this.opts.shareWeighted) this.share.leased(m, units, this.members.values(), this.medianOverhead());
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
      this.rename(u);
      units.push(u);
    }
    this.touch(m, now);
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
        this.unionChanged(o.lanGroup);
        o.verified--;
        o.complete = false;
        if (--this.holderCount[v] === 0) this.missing++;
        setBit(o.distrust, v);
        o.undeliveredClaims++;
        this.claimsExpired++;
        if (v < this.scanFrom) this.scanFrom = v;
        this.rename(v);
      }
      this.touch(o, now);
    }
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


  /**
   * For units `from` to `to - 1`: the index into `members` of the member the 1.4 map names
   * (named[]: the lessee, else a holder kept while it holds the unit), -1 none. Unlike map()'s
   * first-ranked holder it does not move with every overhead sample, and it costs the units
   * asked for, not units x members.
   */
  namedHolders(from: number, to: number, members: readonly { id: string }[]): number[] {
    const index = new Map<string, number>(members.map((m, i) => [m.id, i]));
    const out: number[] = [];
    for (let u = Math.max(0, from); u < Math.min(to, this.opts.unitCount); u++) {
      const m = this.named[u] >= 0 ? this.bySlot.get(this.named[u]) : undefined;
      out.push(m ? (index.get(m.id) ?? -1) : -1);
    }
    return out;
  }

  /**
   * The 1.4 map (docs/protocol.md section 14) for a member that last saw `since` of this
   * allocator's `epoch`: only what changed after it, or the whole map (`full`) when it saw
   * none, another allocator's, or one older than the change log holds. Costs what changed.
   */
  mapSince(now: number, epoch: number | undefined, since: number | undefined): MapDelta & { membersJson: string } {
    const roles = this.rolesCached(now);
    const built: BuiltRecord[] = [];
    const add = (m: Member, live = false): void => {
      built.push(this.records.get(m, roles.get(m.lanGroup) === m.id ? 'gateway' : 'member', live));
    };
    let groupComplete = this.members.size > 0;
    for (const m of this.members.values()) if (!m.complete) groupComplete = false;
    const head = { mapEpoch: this.mapEpoch, mapVersion: this.mapLog.version, groupComplete, allHeld: this.missing === 0 };
    // The records as objects (MapDelta) and as the JSON text an answer splices in (server-routes heartbeat14).
    const records = (): { members: MemberRecord14[]; membersJson: string } => ({ members: built.map((b) => b.rec), membersJson: built.map((b) => b.json).join(',') });
    if (epoch === this.mapEpoch && since !== undefined) {
      const units = new Set<number>();
      const slots = new Set<number>();
      if (this.mapLog.since(since, (u) => units.add(u), (s) => slots.add(s))) {
        const gone: number[] = [];
        for (const s of slots) {
          const m = this.bySlot.get(s);
          if (m) add(m);
          else gone.push(s);
        }
        const holderChanges: number[] = [];
        for (const u of units) holderChanges.push(u, this.named[u]);
        return { ...head, full: false, ...records(), ...(gone.length ? { gone } : {}), ...(holderChanges.length ? { holderChanges } : {}) };
      }
    }
    for (const m of this.members.values()) add(m, true);
    return { ...head, full: true, ...records(), holderSlots: Array.from(this.named.subarray(0, this.opts.unitCount)) };
  }


  /** Whether copy destinations (gateways, their endpoints) changed after version `since` of `epoch`. */
  copyToChangedSince(epoch: number | undefined, since: number | undefined): boolean {
    return epoch !== this.mapEpoch || since === undefined || this.copyToVersion > since;
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
      // Seen right now through a held channel poll (sections 19, 20), however long since its last beat.
      lastSeenMsAgo: m.pollsHeld > 0 ? 0 : Math.max(0, now - m.lastSeen),
      address: m.address,
    }));
  }


  /**
   * Units no live member holds verified: the count kept as holders come and go. A
   * /metrics scrape asks every group; walking each one's units made a scrape of 10,000
   * groups of 2,048 units hold the server's loop ~150 ms (issue 17).
   */
  missingInGroup(): number {
    return this.missing;
  }
}
