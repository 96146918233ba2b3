import type { Member } from './allocator-state';

/** A member's share credit stays within ±this many units (one that stops asking does not bank more). */
export const SHARE_CREDIT_CAP = 4;
/** Units held back for a member behind its share, remembered at most this many (the oldest forgotten). */
const MAX_HELD_BACK = 64;
/** An overhead of 0 (a sample rounded to nothing) weighs as this, in ms per byte, not as infinity. */
const MIN_OVERHEAD = 1e-6;
/** A stream member's turn is looked for this many units ahead (turn()); past it, it asks at the last. */
export const TURN_HORIZON = 64;
/** A member's turn (turn()) is a unit at which its projected credit is within this of the most. */
const TURN_SLACK = 0.1;

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
 * unit above it could take the unit instead. A unit is held back from each member's asks
 * once: a member's second ask for it takes it, so a unit never waits for a member that does
 * not come. (Held back once in all, the second asker took what the first was held back
 * from: with four members that always asked in the same order, the last two got nothing.)
 * Each member so takes a share in proportion to 1 / overhead, and a slow one keeps being
 * measured.
 *
 * After Deficit Round Robin (Shreedhar and Varghese, "Efficient fair queuing using deficit
 * round robin", SIGCOMM 1995): each flow's deficit counter grows by its quantum per round
 * and pays for what it sends; here the quantum is the member's weight and the round a unit.
 */
export class ShareLedger {
  /** Units held back, and for each the members whose asks it was held back from. */
  private readonly heldBack = new Map<number, Set<string>>();
  /** Asks answered with nothing because another member was behind its share (all members). */
  deferred = 0;

  /** Whether `m`, asking for free unit `u`, waits for a member behind its share. */
  defers(m: Member, u: number, members: Iterable<Member>, depthOf: (o: Member) => number): boolean {
    const mine = m.credit ?? 0;
    if (mine > -1 || this.heldBack.get(u)?.has(m.id)) return false;
    for (const o of members) {
      if (o === m || !o.asking || o.leases.size >= depthOf(o) || (o.credit ?? 0) <= mine + 1) continue;
      let from = this.heldBack.get(u);
      if (!from) {
        if (this.heldBack.size >= MAX_HELD_BACK) this.heldBack.delete(this.heldBack.keys().next().value as number);
        this.heldBack.set(u, (from = new Set()));
      }
      from.add(m.id);
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
    const members = [...all].filter((o) => o === m || o.asking);
    const w = weights(members, median);
    members.forEach((o, i) => {
      o.credit = step(o.credit ?? 0, units.length * w[i], o === m ? units.length : 0);
    });
  }

  /**
   * Of the next `horizon` units to appear, the position (0 = the next one) of the first that
   * could be `m`'s: each goes to the asking member with the most credit, credits moving as
   * leased() moves them, and `m`'s turn is the first unit at which its credit is within
   * TURN_SLACK of the most; `horizon` when none is. A member asking at its turn is not held
   * back (no one is more than a unit above it), so members that ask only from their turns
   * on still get their shares (docs/protocol.md section 15, "Turns").
   */
  turn(m: Member, all: Iterable<Member>, median: number | null, horizon: number): number {
    const members = [...all].filter((o) => o === m || o.asking);
    const w = weights(members, median);
    const credit = members.map((o) => o.credit ?? 0);
    const me = members.indexOf(m);
    for (let k = 0; k < horizon; k++) {
      let best = 0;
      for (let i = 1; i < members.length; i++) if (credit[i] > credit[best]) best = i;
      // Within TURN_SLACK of the top counts as a turn: the overheads move between two
      // members' beats, and near a tie each must still see the unit as possibly its own.
      // An exact tie (members that earned alike) goes to the first, as every projection
      // of the same credits sees it.
      if (best === me || (credit[me] !== credit[best] && credit[me] >= credit[best] - TURN_SLACK)) return k;
      for (let i = 0; i < members.length; i++) credit[i] = step(credit[i], w[i], i === best ? 1 : 0);
    }
    return horizon;
  }
}

/** Each member's share of a unit, w / W with w = 1 / overhead (the median for an unmeasured one; all equal while none is measured). */
function weights(members: readonly Member[], median: number | null): number[] {
  const w = members.map((o) => {
    const oh = o.overhead ?? median;
    return oh === null ? 1 : 1 / Math.max(oh, MIN_OVERHEAD);
  });
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / total);
}

/** A credit after earning `earned` and paying `paid` units, within ±SHARE_CREDIT_CAP. */
function step(credit: number, earned: number, paid: number): number {
  return Math.max(-SHARE_CREDIT_CAP, Math.min(SHARE_CREDIT_CAP, credit + earned - paid));
}
