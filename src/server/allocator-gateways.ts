import { MAX_COPY_TREE_DEGREE } from '../wire/copy-tree';
import { bitmapBytes, countBits, getBit, setBit } from '../wire/packet';
import { Member } from './allocator-state';
import { MemberTable } from './allocator-members';

/**
 * Gateways of a wide-area group (000 claims 29-31, 35-40): per LAN group, the member that
 * receives the other groups' copies and re-multicasts them, chosen by overhead with
 * hysteresis, and demoted when it forwards nothing while its group lacks units held
 * elsewhere. Copy destinations (copyTo) are the other groups' gateways, or (1.5, every
 * member speaking it) a copy tree of bounded degree over them (wire/copy-tree.ts).
 */
export abstract class GatewayTable extends MemberTable {
  /** `all-fetched`: when every unit was first seen held (copies cross from then on). */
  protected allHeldAt: number | null = null;
  /** Each LAN group's gateway (member id), kept until it leaves or slows (hysteresis). */
  protected readonly gatewayOf = new Map<string, { id: string; since: number }>();


  /**
   * A gateway needs a unicast endpoint other groups can reach (a representative, its
   * group's only fetcher with nothing crossing groups, does not). Measured members come
   * first (faster()); an unmeasured one serves only while its group has no measured one
   * with an endpoint (a late joiner whose LAN peers have left still gets other groups'
   * repairs through it), and gives way as soon as there is one.
   */
  protected eligibleGateway(m: Member, now: number): boolean {
    if (now < m.demotedUntil) return false;
    return this.opts.representativeOnly || (m.address !== null && m.dataPort !== null);
  }


  /** Lower overhead first; unmeasured members after measured ones, earliest joined first. */
  protected static faster(a: Member, b: Member): boolean {
    if (a.overhead === null || b.overhead === null) return a.overhead !== null || (b.overhead === null && a.joinedAt < b.joinedAt);
    return a.overhead < b.overhead;
  }


  /**
   * The gateway of a LAN group: the eligible member with the lowest overhead, kept until
   * it leaves, slows past gatewaySlackFactor times the group's best (hysteresis;
   * gatewayForwardingSlackFactor while it is forwarding), an
   * unmeasured gateway is outranked by a measured member, or it forwards nothing for
   * idleMs() while its group lacks units that other groups hold (then it may not be
   * gateway for gatewayDemoteMs). Null while no member is eligible.
   */
  gatewayFor(lanGroup: string, now: number, inGroup?: readonly Member[]): string | null {
    const prev = this.gatewayOf.get(lanGroup);
    const cur = prev ? this.members.get(prev.id) : undefined;
    const mine = inGroup ?? [...this.members.values()].filter((m) => m.lanGroup === lanGroup);
    if (cur && prev && cur.lanGroup === lanGroup && this.forwardsNothing(cur, prev.since, now, mine)) {
      cur.demotedUntil = now + this.opts.gatewayDemoteMs;
      cur.gatewayDemotions++;
    }
    let best: Member | null = null;
    for (const m of mine) {
      if (!this.eligibleGateway(m, now)) continue;
      if (!best || GatewayTable.faster(m, best)) best = m;
    }
    if (!best) {
      if (prev) this.gatewayMoved(prev.id, null);
      this.gatewayOf.delete(lanGroup);
      return null;
    }
    if (cur && prev && cur.lanGroup === lanGroup && this.eligibleGateway(cur, now)) {
      const forwarding = cur.forwardedAt > prev.since && now - cur.forwardedAt < this.idleMs(cur);
      const slack = forwarding ? this.opts.gatewayForwardingSlackFactor : this.opts.gatewaySlackFactor;
      const slow = cur.overhead !== null && best.overhead !== null && cur.overhead > slack * best.overhead;
      if (!slow && (cur.overhead !== null || best.overhead === null)) return cur.id;
    }
    if (prev?.id !== best.id) this.gatewayMoved(prev?.id ?? null, best.id);
    this.gatewayOf.set(lanGroup, { id: best.id, since: now });
    return best.id;
  }


  /**
   * Roles changed: both members' records, and every member's copy destinations, changed (1.4
   * change log). The cached roles are stale from here: an answer built from them would log
   * the new gateway's record as a plain member's, and no later change would correct it
   * (the move can be seen first by an uncached gateways(), e.g. GET /v1/fleet).
   */
  private gatewayMoved(from: string | null, to: string | null): void {
    this.rolesAt = -Infinity;
    for (const id of [from, to]) {
      const m = id === null ? undefined : this.members.get(id);
      if (m) this.mapLog.member(m.slot);
    }
    this.copyToVersion = this.mapLog.version;
  }


  private rolesAt = -Infinity;
  private rolesCache = new Map<string, string>();
  /**
   * gateways(now), computed at most every 250 ms: a 1.4 answer names roles and copy
   * destinations, and a wide-area group's gateways cost O(groups x members) to work out.
   */
  rolesCached(now: number): Map<string, string> {
    if (now - this.rolesAt >= 250 || now < this.rolesAt) {
      this.rolesCache = this.gateways(now);
      this.rolesAt = now;
    }
    return this.rolesCache;
  }


  /**
   * The gateway has re-multicast nothing for idleMs() (nor since it took the role)
   * while its LAN group lacks a unit that another group holds verified.
   */
  protected forwardsNothing(gw: Member, since: number, now: number, mine: readonly Member[]): boolean {
    if (this.opts.deferredStart && this.allHeldAt === null) {
      // `all-fetched`: nothing crosses until every unit is held; the idle clock starts then.
      if (!this.allHeld()) return false;
      this.allHeldAt = now;
    }
    if (now - Math.max(since, gw.forwardedAt, this.allHeldAt ?? 0) < this.idleMs(gw)) return false;
    if (mine.length === this.members.size) return false; // one LAN group: no other holds anything
    // The group's units are a subset of those some live member holds (unitCount - missing): it lacks one held
    // elsewhere exactly when it holds fewer. A wide-area group of 20 LAN groups asks this for every gateway each time
    // its roles are worked out (rolesCached, 4 times a second): reading the bitmaps each time, at 100,000 agents in
    // 500 such groups, it was a seventh of the server's CPU.
    return this.lanHeld(gw.lanGroup, mine) < this.opts.unitCount - this.missing;
  }


  /** Per LAN group: the union of its members' bitmaps and how many units that is; absent until asked, and after a bit was cleared. */
  private readonly lanUnion = new Map<string, { bits: Uint8Array; count: number }>();

  /** Units some member of LAN group `g` (its members: `mine`) holds. */
  private lanHeld(g: string, mine: readonly Member[]): number {
    const bytes = bitmapBytes(this.opts.unitCount);
    let un = this.lanUnion.get(g);
    if (!un || un.bits.length !== bytes) {
      const bits = new Uint8Array(bytes);
      for (const m of mine) for (let i = 0; i < bytes && i < m.have.length; i++) bits[i] |= m.have[i];
      un = { bits, count: countBits(bits, this.opts.unitCount) };
      this.lanUnion.set(g, un);
    }
    return un.count;
  }

  /** Bits only add here: a unit new to the member's LAN group adds to its union. */
  protected override markHeld(m: Member, u: number): void {
    const had = u < 0 || u >= this.opts.unitCount || getBit(m.have, u);
    super.markHeld(m, u);
    const un = had ? undefined : this.lanUnion.get(m.lanGroup);
    if (un && u >> 3 < un.bits.length && !getBit(un.bits, u)) {
      setBit(un.bits, u);
      un.count++;
    }
  }

  /** A LAN group lost a member or a member's bits: its union is worked out again when next asked. */
  protected unionChanged(lanGroup: string): void {
    this.lanUnion.delete(lanGroup);
  }

  override leave(id: string): void {
    const g = this.members.get(id)?.lanGroup;
    super.leave(id);
    if (g !== undefined) this.unionChanged(g);
  }

  override heartbeat(id: string, now: number, info: Parameters<MemberTable['heartbeat']>[2] = {}): void {
    const before = this.members.get(id)?.lanGroup;
    super.heartbeat(id, now, info);
    const after = this.members.get(id)?.lanGroup;
    if (before !== undefined && before !== after) {
      this.unionChanged(before); // it took its units along
      if (after !== undefined) this.unionChanged(after);
    }
  }


  /**
   * How long a gateway may show no growth of `forwarded` before it counts as forwarding
   * nothing: gatewayIdleMs, or two of the heartbeat intervals the server last asked of it
   * (at most 120 s) if longer. Its count only arrives with its heartbeats: at 100,000 agents
   * they come every 20 s, and an 8 s window demoted gateways that were forwarding (issue 17).
   */
  private idleMs(gw: Member): number {
    return Math.max(this.opts.gatewayIdleMs, Math.min(2 * gw.heartbeatMs, 120_000));
  }


  /** Gateways of every LAN group present: group -> member id. */
  gateways(now: number): Map<string, string> {
    // One pass sorts the members by LAN group: each group's choice then looks at its own members only.
    const byGroup = new Map<string, Member[]>();
    for (const m of this.members.values()) {
      const list = byGroup.get(m.lanGroup);
      if (list) list.push(m);
      else byGroup.set(m.lanGroup, [m]);
    }
    const out = new Map<string, string>();
    for (const [g, mine] of byGroup) {
      const id = this.gatewayFor(g, now, mine);
      if (id) out.set(g, id);
    }
    return out;
  }


  /** Members that did not ask for copy trees (`copyTree` in their heartbeats): 1.4 agents. */
  private readonly meshOnly = new Set<string>();

  /**
   * A member's heartbeat said whether it speaks 1.5 copy trees. A change of the group's
   * mode (the first 1.4 member joins, or it leaves) changes every member's copy
   * destinations; so does a member that changes its mind (restarted with another version).
   */
  noteCopyTree(id: string, on: boolean): void {
    const m = this.members.get(id);
    if (!m || on === !this.meshOnly.has(id)) return;
    if (on) this.meshOnly.delete(id);
    else this.meshOnly.add(id);
    this.mapLog.member(m.slot);
    this.copyToVersion = this.mapLog.version;
  }

  /**
   * The copy tree's degree for this wide-area group: the configured one while every live
   * member speaks 1.5, else 0 (every sender copies to every other group's gateway, as 1.4
   * agents expect; a 1.4 gateway would neither forward down a tree nor accept its header).
   * A member that left is dropped from meshOnly here (leaving already changed copyTo).
   */
  copyTreeDegree(): number {
    const k = Math.min(MAX_COPY_TREE_DEGREE, Math.floor(this.opts.copyTreeDegree));
    if (!(k >= 1)) return 0;
    for (const id of this.meshOnly) {
      if (this.members.has(id)) return 0;
      this.meshOnly.delete(id);
    }
    return k;
  }

  /** Every unit is held verified by some live member. */
  allHeld(): boolean {
    return this.missing === 0; // the count of units no live member holds, kept as holders come and go (missingInGroup)
  }
}
