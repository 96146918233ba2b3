import { getBit } from '../util/bits';

/**
 * Sender-side repair aggregation, after NORM (RFC 5740 §5.2, "repair
 * aggregation"): NACKs for a unit are merged into one pending bitmap and
 * answered together after a short aggregation delay. The member designated for a
 * unit (its holder in the split-download map) answers at once; other members that
 * hold the unit verified answer only after a random backoff, and drop the
 * fragments they hear someone else repair first. A fragment repaired less than
 * `dedupMs` ago is not repaired again: the NACK crossed the repair in flight.
 *
 * A single NACK can make this member send at most one unit's bytes (its bitmap
 * covers one unit); the rate is bounded by the pacer the caller drains into.
 */
export interface RepairSchedulerOptions {
  aggregateMs: number;
  /** Non-designated repairers wait aggregateMs + U·backoffMs. */
  backoffMs: number;
  dedupMs: number;
  random: () => number;
  /** Told of each NACK taken (n: fragments asked), of fragments dropped by dedup, and of each repair due; for tracing. */
  trace?: (unit: number, ev: 'nackIn' | 'dedup' | 'sent', now: number, n: number) => void;
}

interface PendingRepair {
  at: number;
  fragmentCount: number;
  want: Uint8Array;
}

export interface RepairJob {
  unit: number;
  fragments: number[];
}

export class RepairScheduler {
  private readonly pending = new Map<number, PendingRepair>();
  /**
   * unit -> per-fragment time of the last repair sent or heard. Only units this
   * member holds are tracked, and entries idle for 10 x dedupMs are dropped, so
   * memory follows recent repair activity, not the release size.
   */
  private readonly recent = new Map<number, { times: Float64Array; last: number }>();
  private lastPrune = 0;
  suppressedFragments = 0;

  constructor(private readonly opts: RepairSchedulerOptions) {}

  onNack(unit: number, fragmentCount: number, missing: Uint8Array, designated: boolean, now: number): void {
    const recent = this.recent.get(unit)?.times;
    let p = this.pending.get(unit);
    if (!p) {
      const delay = this.opts.aggregateMs + (designated ? 0 : this.opts.backoffMs * this.opts.random());
      p = { at: now + delay, fragmentCount, want: new Uint8Array(missing.length) };
      this.pending.set(unit, p);
    } else if (p.fragmentCount !== fragmentCount) {
      return;
    }
    let asked = 0;
    let deduped = 0;
    for (let i = 0; i < fragmentCount; i++) {
      if (!getBit(missing, i)) continue;
      asked++;
      if (recent && now - recent[i] < this.opts.dedupMs) {
        deduped++;
        continue;
      }
      p.want[i >>> 3] |= 0x80 >>> (i & 7);
    }
    if (this.opts.trace) {
      this.opts.trace(unit, 'nackIn', now, asked);
      if (deduped) this.opts.trace(unit, 'dedup', now, deduped);
    }
  }

  /** Someone (maybe we) sent this fragment as a repair or copy. */
  sawFragment(unit: number, fragment: number, fragmentCount: number, now: number): void {
    let r = this.recent.get(unit);
    if (!r) {
      r = { times: new Float64Array(fragmentCount).fill(-Infinity), last: now };
      this.recent.set(unit, r);
    }
    r.last = now;
    if (fragment < r.times.length) r.times[fragment] = now;
    const p = this.pending.get(unit);
    if (p && fragment < p.fragmentCount && getBit(p.want, fragment)) {
      p.want[fragment >>> 3] &= ~(0x80 >>> (fragment & 7));
      this.suppressedFragments++;
    }
  }

  /** Repairs due now, removed from the pending set. */
  due(now: number): RepairJob[] {
    if (now - this.lastPrune > 1000) {
      this.lastPrune = now;
      for (const [u, r] of this.recent) if (now - r.last > 10 * this.opts.dedupMs && !this.pending.has(u)) this.recent.delete(u);
    }
    const out: RepairJob[] = [];
    for (const [unit, p] of this.pending) {
      if (now < p.at) continue;
      this.pending.delete(unit);
      const fragments: number[] = [];
      for (let i = 0; i < p.fragmentCount; i++) if (getBit(p.want, i)) fragments.push(i);
      if (fragments.length) {
        out.push({ unit, fragments });
        this.opts.trace?.(unit, 'sent', now, fragments.length);
      }
    }
    return out;
  }

  /** ms until the next repair is due, or null when none is pending. */
  nextDueIn(now: number): number | null {
    let best: number | null = null;
    for (const p of this.pending.values()) best = best === null ? p.at - now : Math.min(best, p.at - now);
    return best === null ? null : Math.max(0, best);
  }

  /** Units with repair history kept (for tests and metrics). */
  get trackedUnits(): number {
    return this.recent.size;
  }
}
