import type { Member } from './allocator-state';

/** A member's share credit stays within ±this many units (one that stops asking does not bank more). */
export const SHARE_CREDIT_CAP = 4;
/** Units held back for a member behind its share, remembered at most this many (the oldest forgotten). */
const MAX_HELD_BACK = 64;
/**
 * In a wide-area group, how long a unit held back from one LAN group's asker stays held
 * from the other askers of that LAN group, for a member of another LAN group (site) behind
 * it. One member polls for the group's batches, so the other sites hear each batch a site
 * hop later and ask later; held back once in all, the poller's site took 0.53-0.64 of the
 * units on the sites testbed (bench/results/stream.md, "Batches across sites").
 */
export const SHARE_SITE_HOLD_MS = 100;
/** An overhead of 0 (a sample rounded to nothing) weighs as this, in ms per byte, not as infinity. */
const MIN_OVERHEAD = 1e-6;

/**
 * Shares of a stream's units by overhead (docs/protocol.md, "Streams on the LAN").
 *
 * A stream's units appear a batch at a time and every member asks for them at once, so
 * without this the member whose heartbeat lands first takes them: on a loaded box one of
 * two sites took 9 % of a stream, the other 91 %, with the same overheads. And the
 * release's tail rule, which holds back a member predicted slower, holds it back for good
 * in a stream (every unit is the last one), so its overhead is never sampled again: one
 * slow early sample starved a member for the whole stream.
 *
 * Instead each member has a credit, in units. Every unit first leased in the allocator
 * adds to each member that asks for leases its fraction w / W of the unit, w = 1 /
 * overhead (the median for an unmeasured member; all equal while none is measured), and
 * takes one from the lessee. A member at −1 or below waits (nothing leased) when another
 * member that asked at its last heartbeat, has room under its depth and is more than one
 * unit above it could take the unit instead; a unit is held back once, and the next ask
 * takes it, so a unit never waits for a member that does not come. Each member so takes a
 * share in proportion to 1 / overhead, and a slow one keeps being measured.
 *
 * After Deficit Round Robin (Shreedhar and Varghese, "Efficient fair queuing using deficit
 * round robin", SIGCOMM 1995): each flow's deficit counter grows by its quantum per round
 * and pays for what it sends; here the quantum is the member's weight and the round a unit.
 */
export class ShareLedger {
  /** Units held back: the LAN group of the asker it was first held back from, and when. */
  private readonly heldBack = new Map<number, { group: string; at: number }>();
  /**
   * LAN groups whose askers a unit is no longer held back from again: one such hold ran out
   * with no other site's member taking the unit. Until one does (progress), a site that does
   * not ask (alive, but slow or stuck) costs the others no more than one hold per unit.
   */
  private readonly siteHoldOff = new Set<string>();
  /** Asks answered with nothing because another member was behind its share (all members). */
  deferred = 0;

  /**
   * Whether `m`, asking for free unit `u` at `now`, waits for a member behind its share. A unit
   * is held back once; then, for SHARE_SITE_HOLD_MS, also from the other askers of the same LAN
   * group when a member of another LAN group (a wide-area group's other site) is the one behind.
   */
  defers(m: Member, u: number, members: Iterable<Member>, depthOf: (o: Member) => number, now: number): boolean {
    const mine = m.credit ?? 0;
    if (mine > -1) return false;
    const held = this.heldBack.get(u);
    if (held && (held.group !== m.lanGroup || this.siteHoldOff.has(m.lanGroup))) return false;
    if (held && now - held.at > SHARE_SITE_HOLD_MS) {
      this.siteHoldOff.add(m.lanGroup);
      return false;
    }
    for (const o of members) {
      if (o === m || !o.asking || o.leases.size >= depthOf(o) || (o.credit ?? 0) <= mine + 1) continue;
      if (held && o.lanGroup === m.lanGroup) continue;
      if (!held) {
        if (this.heldBack.size >= MAX_HELD_BACK) this.heldBack.delete(this.heldBack.keys().next().value as number);
        this.heldBack.set(u, { group: m.lanGroup, at: now });
      }
      this.deferred++;
      return true;
    }
    return false;
  }

  /**
   * `units` were first leased to `m`: each member that asks (and `m`) earns its fraction of
   * them, and `m` pays for them. A member that does not ask (its sink is full) earns nothing:
   * it would only bank credit to its cap, and the askers' credits would all sink together
   * to the floor, where no difference is left to share by.
   */
  leased(m: Member, units: readonly number[], all: Iterable<Member>, median: number | null): void {
    if (units.length === 0) return;
    for (const u of units) this.heldBack.delete(u);
    for (const g of this.siteHoldOff) if (g !== m.lanGroup) this.siteHoldOff.delete(g);
    const members = [...all].filter((o) => o === m || o.asking);
    const w = members.map((o) => {
      const oh = o.overhead ?? median;
      return oh === null ? 1 : 1 / Math.max(oh, MIN_OVERHEAD);
    });
    const total = w.reduce((a, b) => a + b, 0);
    members.forEach((o, i) => {
      const c = (o.credit ?? 0) + (units.length * w[i]) / total - (o === m ? units.length : 0);
      o.credit = Math.max(-SHARE_CREDIT_CAP, Math.min(SHARE_CREDIT_CAP, c));
    });
  }
}
