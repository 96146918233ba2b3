import { bitmapBytes, getBit } from '../util/bits';

/**
 * Receiver-side NACK timing, after NORM (RFC 5740 §5.3): a receiver that finds
 * gaps waits a random backoff drawn from a truncated exponential distribution
 * before it NACKs; if during the backoff it hears another receiver's NACK that
 * covers all its gaps it suppresses its own, so one NACK stands for everyone who
 * misses the same fragments. After a NACK (sent or suppressed) it holds off to let
 * the repair arrive before asking again.
 *
 * The holdoff follows the measured repair round trip, as NORM scales its holdoff to the
 * group RTT (NORM's reference implementation holds off (K + 2) x GRTT): each NACK we send
 * is timed to the first data of its unit that arrives after it, and the holdoff is
 * srtt + 4 x rttvar of those samples (RFC 6298's estimator), kept within
 * [minHoldoffMs, holdoffMs]. Until a sample exists it is holdoffMs. No wire change: the
 * samples are our own NACKs and the repairs they bring. A LAN whose repairs come back in
 * a few ms no longer waits a constant 80 ms before asking again for a lost repair.
 * A NACK that brought no data at all by the end of its holdoff doubles the unit's next
 * holdoff (up to 4 x holdoffMs), as a retransmission timer backs off (RFC 6298 §5.5): a
 * holder that does not answer (gone, or lying about what it holds) is not asked every
 * 20 ms while the other holders wait out orphanRepairMs; the unit's first data resets it.
 *
 * Pure: the caller passes `now` and a random source, and says what is missing.
 * The scheduler remembers only timers and what it heard; it never touches bytes.
 */
export interface NackSchedulerOptions {
  /** Upper bound of the random backoff (NORM's T_maxBackoff). */
  backoffMs: number;
  /** How long to wait for repairs after a NACK before asking again, at most (and before any repair was timed). */
  holdoffMs: number;
  /** The holdoff's floor however fast repairs come back (defaults to holdoffMs: a constant holdoff). */
  minHoldoffMs?: number;
  /** Estimated group size, for NORM's λ = ln(groupSize) + 1. */
  groupSize: number;
  /** Units NACKed at once at most (bounds what a late joiner asks for in one go). */
  maxUnitsInFlight: number;
  random: () => number;
  /**
   * Ask once more this long after our NACK (or srtt + 2 rttvar of the repair round trips,
   * when longer), for what is still missing of what it asked, while no data of the unit
   * came since (a lost NACK or a lost repair: at 3% loss each, one NACK round in fifteen;
   * the holdoff and a new backoff came 20-35 ms after the NACK, and twice that after a
   * second miss). A NACK suppressed by others' is echoed too, for our gaps they covered.
   * A repairer drops it as a duplicate when the lost repair left it less than
   * its dedup window before (AGENT_DEFAULTS.streamNackEchoMs says when). Unset: no echo.
   */
  echoMs?: number;
  /**
   * When a holdoff ends with gaps left although data of the unit came during it (repairs
   * came, and some of them were lost to us), ask at once rather than after a new backoff:
   * what is left is most likely lost to us alone, and the backoff, there to hear whether
   * others ask for the same, cost a second round 15 ms (stream traces, issue 19). A holdoff
   * in which nothing came still backs off, and from a longer holdoff after it.
   */
  askAgainAtOnce?: boolean;
  /** Told of each decision, for tracing (stream-stages.ts); n: fragments missing or asked for. */
  trace?: (unit: number, ev: 'ripe' | 'heard' | 'again' | 'nack' | 'suppressed' | 'echo', now: number, n: number) => void;
}

interface Pending {
  state: 'backoff' | 'holdoff';
  until: number;
  /** Fragments other receivers asked for during our backoff. */
  heard: Uint8Array;
  /** When we sent our NACK for the unit (holdoff after our own NACK, until its first repair data). */
  askedAt?: number;
  /** Our NACKs for the unit in a row that brought no data by the end of their holdoff. */
  misses?: number;
  /** When to echo our NACK (echoMs), and what it asked for; cleared by the unit's data. */
  echoAt?: number;
  asked?: Uint8Array;
  /** Data of the unit came during this holdoff. */
  answered?: boolean;
}

export interface NackRequest {
  unit: number;
  fragmentCount: number;
  missing: Uint8Array;
}

/** NORM's truncated exponential backoff: t = T · ln((e^λ − 1)·U + 1) / λ. */
export function normBackoff(maxMs: number, groupSize: number, u: number): number {
  const lambda = Math.log(Math.max(1, groupSize)) + 1;
  return (maxMs * Math.log((Math.exp(lambda) - 1) * u + 1)) / lambda;
}

export class NackScheduler {
  private readonly pending = new Map<number, Pending>();
  /** Stats. */
  sent = 0;
  suppressed = 0;
  /** Of `sent`, echoes (echoMs). */
  echoed = 0;
  /** Repair round trip (our NACK -> the unit's next data), smoothed, and its mean deviation; ms. */
  srttMs: number | null = null;
  rttvarMs = 0;

  constructor(private readonly opts: NackSchedulerOptions) {}

  setGroupSize(n: number): void {
    this.opts.groupSize = Math.max(1, n);
  }

  /** Another receiver's NACK for `unit`. */
  heardNack(unit: number, fragmentCount: number, missing: Uint8Array, now: number): void {
    this.opts.trace?.(unit, 'heard', now, missingCount(missing, fragmentCount));
    const p = this.pending.get(unit);
    if (p && p.state === 'backoff') {
      if (p.heard.length !== bitmapBytes(fragmentCount)) return;
      for (let i = 0; i < p.heard.length; i++) p.heard[i] |= missing[i];
    } else if (!p) {
      // Someone asked already: start our backoff with what they asked for, so at its end we
      // ask only for the fragments nobody did (nothing, if theirs cover ours: suppressed).
      // A holdoff here made a receiver whose gaps differed from the first NACK wait
      // holdoffMs before asking at all: at 3% loss most units have such receivers, and
      // that wait was a stream's whole latency tail (bench/results/stream.md).
      const heard = new Uint8Array(bitmapBytes(fragmentCount));
      heard.set(missing.subarray(0, heard.length));
      this.pending.set(unit, { state: 'backoff', until: now + normBackoff(this.opts.backoffMs, this.opts.groupSize, this.opts.random()), heard });
    }
  }

  /** The unit is complete (or abandoned): forget its timers. */
  done(unit: number): void {
    this.pending.delete(unit);
  }

  /** New data arrived for the unit: a repair in progress, so extend any holdoff. */
  progress(unit: number, now: number): void {
    const p = this.pending.get(unit);
    if (!p || p.state !== 'holdoff') return;
    if (p.askedAt !== undefined) {
      this.sampleRtt(now - p.askedAt);
      p.askedAt = undefined;
    }
    p.misses = 0;
    p.echoAt = undefined;
    p.answered = true;
    p.until = Math.max(p.until, now + this.holdoffMs / 2);
  }

  /** The current holdoff: srtt + 4 rttvar of the repair round trips, within [minHoldoffMs, holdoffMs]. */
  get holdoffMs(): number {
    if (this.srttMs === null) return this.opts.holdoffMs;
    const floor = Math.min(this.opts.minHoldoffMs ?? this.opts.holdoffMs, this.opts.holdoffMs);
    return Math.min(this.opts.holdoffMs, Math.max(floor, this.srttMs + 4 * this.rttvarMs));
  }

  /** RFC 6298 §2: rttvar = 3/4 rttvar + 1/4 |srtt - r|, srtt = 7/8 srtt + 1/8 r. */
  private sampleRtt(r: number): void {
    if (!(r >= 0)) return;
    if (this.srttMs === null) {
      this.srttMs = r;
      this.rttvarMs = r / 2;
      return;
    }
    this.rttvarMs = 0.75 * this.rttvarMs + 0.25 * Math.abs(this.srttMs - r);
    this.srttMs = 0.875 * this.srttMs + 0.125 * r;
  }

  /**
   * `ripe` lists units that are missing fragments and ripe for a NACK (their source
   * has finished sending); `gapOf` builds a unit's missing-fragment bitmap and is
   * called only when the scheduler needs it (a new timer, or one that expired), so
   * the many units waiting on a timer or on the in-flight limit cost nothing per poll.
   * Returns the NACKs to send now.
   */
  poll(now: number, ripe: Iterable<number>, gapOf: (unit: number) => NackRequest | null): NackRequest[] {
    const out: NackRequest[] = [];
    let inFlight = this.pending.size;
    for (const unit of ripe) {
      const p = this.pending.get(unit);
      if (!p) {
        if (inFlight >= this.opts.maxUnitsInFlight) continue;
        const g = gapOf(unit);
        if (!g) continue;
        inFlight++;
        this.opts.trace?.(unit, 'ripe', now, missingCount(g.missing, g.fragmentCount));
        this.startBackoff(g, now);
        continue;
      }
      if (now < p.until) {
        if (p.echoAt !== undefined && now >= p.echoAt) this.echo(unit, p, now, gapOf, out);
        continue;
      }
      const g = gapOf(unit);
      if (!g) {
        this.pending.delete(unit);
        continue;
      }
      let heard = p.heard;
      if (p.state === 'holdoff') {
        // Repairs did not fill the gaps in time: back off again and ask (and if our NACK
        // brought nothing at all, hold off longer after the next one).
        this.opts.trace?.(unit, 'again', now, missingCount(g.missing, g.fragmentCount));
        const misses = (p.misses ?? 0) + (p.askedAt !== undefined ? 1 : 0);
        if (!(this.opts.askAgainAtOnce && p.answered)) {
          this.startBackoff(g, now, misses);
          continue;
        }
        // Repairs came and left gaps (askAgainAtOnce): ask now, no second backoff.
        p.misses = misses;
        heard = new Uint8Array(0);
      }
      // Backoff expired: send what nobody else asked for.
      const rest = new Uint8Array(g.missing.length);
      let any = false;
      for (let i = 0; i < rest.length; i++) {
        rest[i] = g.missing[i] & ~(heard[i] ?? 0);
        if (rest[i]) any = true;
      }
      if (any) {
        out.push({ unit, fragmentCount: g.fragmentCount, missing: rest });
        this.sent++;
        this.opts.trace?.(unit, 'nack', now, missingCount(rest, g.fragmentCount));
      } else {
        this.suppressed++;
        this.opts.trace?.(unit, 'suppressed', now, 0);
      }
      const misses = p.misses ?? 0;
      const holdoff = Math.min(4 * this.opts.holdoffMs, this.holdoffMs * 2 ** Math.min(misses, 8));
      // A suppressed NACK is echoed too, for what of ours the other NACKs covered: their
      // repair may be lost to us alone, and a holdoff and a new backoff were a second round.
      const echoAt = this.opts.echoMs !== undefined ? now + this.echoDelayMs(this.opts.echoMs) : undefined;
      this.pending.set(unit, { state: 'holdoff', until: now + holdoff, heard: new Uint8Array(0), askedAt: any ? now : undefined, misses, echoAt, asked: echoAt !== undefined ? (any ? rest : g.missing) : undefined });
    }
    return out;
  }

  /**
   * When a NACK's answer is overdue: echoMs, or srtt + 2 rttvar of the repair round trips
   * when that is longer (a slow LAN or path would otherwise have every NACK echoed before
   * its repair could come; at or past the holdoff there is no echo, the holdoff asks again).
   */
  private echoDelayMs(echoMs: number): number {
    return this.srttMs === null ? echoMs : Math.max(echoMs, this.srttMs + 2 * this.rttvarMs);
  }

  /** Our NACK brought nothing in echoDelayMs: ask again for what of it is still missing (once). */
  private echo(unit: number, p: Pending, now: number, gapOf: (unit: number) => NackRequest | null, out: NackRequest[]): void {
    p.echoAt = undefined;
    const g = gapOf(unit);
    if (!g || !p.asked || p.asked.length !== g.missing.length) return;
    const again = g.missing.map((b, i) => b & p.asked![i]);
    if (!again.some((b) => b !== 0)) return;
    out.push({ unit, fragmentCount: g.fragmentCount, missing: again });
    this.sent++;
    this.echoed++;
    p.askedAt = now; // the round trip is timed from the echo
    this.opts.trace?.(unit, 'echo', now, missingCount(again, g.fragmentCount));
  }

  private startBackoff(g: NackRequest, now: number, misses = 0): void {
    const delay = normBackoff(this.opts.backoffMs, this.opts.groupSize, this.opts.random());
    this.pending.set(g.unit, { state: 'backoff', until: now + delay, heard: new Uint8Array(bitmapBytes(g.fragmentCount)), misses });
  }

  /** Units with a timer running. */
  get active(): number {
    return this.pending.size;
  }
}

export function missingCount(missing: Uint8Array, fragmentCount: number): number {
  let n = 0;
  for (let i = 0; i < fragmentCount; i++) if (getBit(missing, i)) n++;
  return n;
}
