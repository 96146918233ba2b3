/**
 * The change log of one allocator's split map (protocol 1.4, docs/protocol.md section 14):
 * every change to a unit's named holder or to a member's record takes the next version
 * number, and an answer to a member that saw version V lists only what changed after V.
 * A ring of `capacity` entries: a member further behind than that gets the whole map.
 * Pure bookkeeping, no clock.
 */
export class MapLog {
  /** The latest version; 0 before any change. */
  version = 0;
  private readonly ring: Int32Array;

  constructor(readonly capacity: number) {
    this.ring = new Int32Array(Math.max(1, capacity));
  }

  /** Unit u's named holder changed. */
  unit(u: number): void {
    this.ring[++this.version % this.ring.length] = u;
  }

  /** The record of the member in `slot` changed (or it joined, or left). */
  member(slot: number): void {
    this.ring[++this.version % this.ring.length] = -1 - slot;
  }

  /**
   * Calls back for every change after `since` (a unit or a member may come more than
   * once). False when the ring no longer holds them all, or `since` is from the future.
   */
  since(since: number, onUnit: (u: number) => void, onMember: (slot: number) => void): boolean {
    if (!Number.isSafeInteger(since) || since < 0 || since > this.version || this.version - since > this.ring.length) return false;
    for (let v = since + 1; v <= this.version; v++) {
      const x = this.ring[v % this.ring.length];
      if (x >= 0) onUnit(x);
      else onMember(-1 - x);
    }
    return true;
  }
}
