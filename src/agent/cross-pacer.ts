import { TokenBucket } from './token-bucket';

/**
 * The pace of copies to one other LAN group's gateway, learned from that gateway's
 * FEEDBACK (docs/protocol.md). Pure: every method takes `now` (ms).
 *
 * The path to another site crosses two shaped uplinks that other traffic shares, so no
 * fixed rate fits. After TFMCC (RFC 4654) the receiver reports what arrived; after
 * LEDBAT (RFC 6817) the sender also watches the queueing delay it adds:
 * - a report closes a window. Since 1.2 the gateway reports its counters as they stood
 *   when our echoed ANNOUNCE arrived, and we compare them with what we had sent when that
 *   ANNOUNCE left (the same socket, the same path, in order): loss = 1 − received/sent
 *   datagrams between two echoed ANNOUNCEs, exact whatever is still in flight or waiting
 *   in a busy gateway's socket. (Before, the counters at the report were compared with
 *   what had been sent when it arrived: a gateway that fell behind for a moment looked
 *   like a lossy path, and the pace collapsed on a busy box.) Reports without those
 *   counters (1.1 gateways) are judged the old way;
 * - congestion is loss well above the path's background loss (random loss is not
 *   congestion): above the median loss of the last 8 windows by 3 points, or by three
 *   standard deviations of a window that size, and at least 5% (20% until 3 windows have
 *   been judged);
 * - a standing queue is the least of the last 4 round-trip times (echoed ANNOUNCEs, at
 *   least 3) more than `delayTargetMs` above the lowest seen;
 * - on congestion the rate drops to what the window delivered, times 0.85 (and at
 *   least by a quarter), unless the sender was application-limited in that window (it
 *   lost more tokens to the bucket's burst limit than it sent: copies used under half the
 *   pace, as a stream's units, which come in bursts, do). Then what the window delivered is the sender's
 *   demand, not the path's rate, and the pace drops by a quarter only: Linux marks such
 *   delivery-rate samples app-limited and does not lower its bandwidth estimate from them
 *   (net/ipv4/tcp_rate.c; draft-cheng-iccrg-delivery-rate-estimation). On the sites
 *   testbed one window of 7% loss (3% background) cut a stream's 86 Mbit/s pace to its
 *   3 Mbit/s average, and its copies queued for seconds. Under a standing queue it holds; otherwise it doubles per
 *   window until the first congestion or queue (slow start), then grows by
 *   `capBytesPerSec / 100` per window (5 Mbit/s a second at a 100 Mbit/s cap: several
 *   senders share a bottleneck, and their increases add up);
 * - in slow start, once a round trip has been measured, it also doubles per round trip
 *   between windows (after TCP's slow start, RFC 5681 §3.1, which doubles per round trip;
 *   a window here takes 200-400 ms to be judged): each `rampStepMs` or round trip,
 *   whichever is longer, in which the sender used the whole pace (no token of the bucket
 *   was lost to its burst limit: copies waited for the pace), the pace doubles, but not
 *   beyond twice what was sent in that step nor `rampMaxFactor` times what the last
 *   judged window delivered (the start pace before the first; an application-limited
 *   window, as above, only raises that ceiling: a stream's first windows, judged while
 *   its copies trickled, held a new path at its 4 Mbit/s start for over a second on the
 *   sites testbed): a path slower than that
 *   is overrun by at most that factor until the next judged window cuts the pace as above;
 * - it never exceeds `capBytesPerSec` (the operator's cross_rate) nor twice what was
 *   actually sent in the last window (no credit for idle time), and never goes under
 *   `minBytesPerSec`;
 * - no report for `silenceMs` while sending: halve (the path or the gateway is gone).
 */
export interface CrossPacerOptions {
  capBytesPerSec: number;
  initialBytesPerSec: number;
  minBytesPerSec: number;
  burstBytes: number;
  /** Queueing delay above the path's lowest round trip that counts as congestion. */
  delayTargetMs: number;
  silenceMs: number;
  /** Slow start between windows: the least step of the per-round-trip doubling. */
  rampStepMs: number;
  /** ... and how far above what the last judged window delivered it may take the pace. */
  rampMaxFactor: number;
}

export const CROSS_PACER_DEFAULTS: Omit<CrossPacerOptions, 'capBytesPerSec'> = {
  initialBytesPerSec: (4 * 1e6) / 8,
  minBytesPerSec: (0.5 * 1e6) / 8,
  burstBytes: 64 * 1024,
  delayTargetMs: 60,
  silenceMs: 2000,
  rampStepMs: 10,
  rampMaxFactor: 4,
};

/** One edge of a judged window: our counters (sent, and tokens lost to the burst limit) and the gateway's received ones. */
interface WindowEdge {
  at: number;
  sentDatagrams: number;
  sentBytes: number;
  wastedBytes: number;
  recvDatagrams: number;
  recvBytes: number;
}

/** Windows with fewer datagrams sent than this say nothing about loss. */
const MIN_WINDOW_DATAGRAMS = 16;

export class CrossPacer {
  readonly bucket: TokenBucket;
  private readonly o: CrossPacerOptions;
  private sentDatagrams = 0;
  private sentBytes = 0;
  /** At the last report: our sent counters and the receiver's cumulative counters. */
  private win: WindowEdge | null = null;
  private slowStart = true;
  /** Loss of the last windows: their median is the path's background loss. */
  private readonly losses: number[] = [];
  /** The last round-trip samples (the current-delay filter). */
  private readonly rtts: number[] = [];
  private minRttMs = Infinity;
  lastRttMs: number | null = null;
  lastLoss = 0;
  /** Windows judged congested (loss or delay), for stats. */
  congestionEvents = 0;
  /** Of those, windows in which the pace went unused (cut by a quarter, not to what they delivered). */
  appLimitedCuts = 0;
  /** Doublings between windows in slow start, for stats and tests. */
  rampSteps = 0;
  /** When the first datagram no report has covered yet left, or null. */
  private unreportedSince: number | null = null;
  /** Sent ANNOUNCE sequence numbers (to this gateway), when, and our counters then: the round-trip probe and window edge. */
  private readonly probes: { seq: bigint; at: number; sentDatagrams: number; sentBytes: number; wastedBytes: number }[] = [];
  /** The gateway reports counters at the echo (1.2): legacy reports are then ignored. */
  private exact = false;
  /** At the last judged echo: our counters when that ANNOUNCE left, the gateway's when it arrived. */
  private echoWin: WindowEdge | null = null;
  /** The per-round-trip doubling in slow start: where its current step began, and its ceiling. */
  private rampFrom: { at: number; sentBytes: number; wastedBytes: number } | null = null;
  private rampCeiling: number;

  constructor(opts: Partial<CrossPacerOptions> & Pick<CrossPacerOptions, 'capBytesPerSec'>, now: number) {
    this.o = { ...CROSS_PACER_DEFAULTS, ...opts };
    const start = Math.max(this.o.minBytesPerSec, Math.min(this.o.capBytesPerSec, this.o.initialBytesPerSec));
    this.bucket = new TokenBucket(start, this.o.burstBytes, now);
    this.rampCeiling = this.o.rampMaxFactor * start;
  }

  get rateBytesPerSec(): number {
    return this.bucket.rateBytesPerSec;
  }

  /** The operator's cap changed (reload). */
  setCap(capBytesPerSec: number): void {
    this.o.capBytesPerSec = capBytesPerSec;
    this.setRate(this.bucket.rateBytesPerSec);
  }

  /** A DATA datagram of `bytes` left for this gateway. */
  sent(bytes: number, now: number): void {
    if (this.unreportedSince === null) this.unreportedSince = now;
    this.sentDatagrams++;
    this.sentBytes += bytes;
    // Not once the last round trip shows a queue building (HyStart++, RFC 9406, leaves slow start on a rising round trip).
    if (this.slowStart && this.lastRttMs !== null && this.lastRttMs - this.minRttMs <= this.o.delayTargetMs / 2) this.ramp(now);
  }

  /** Slow start between judged windows: double per round trip in which the whole pace was used (the class comment). */
  private ramp(now: number): void {
    const from = this.rampFrom;
    // Called per datagram sent: the step's edge is only made when a step begins.
    if (from && now - from.at < Math.max(this.o.rampStepMs, this.lastRttMs ?? 0)) return;
    this.rampFrom = { at: now, sentBytes: this.sentBytes, wastedBytes: this.bucket.wastedBytes };
    if (!from) return;
    const ms = now - from.at;
    // Tokens lost to the burst limit: the sender did not use the whole pace (no credit for idle time).
    if (this.bucket.wastedBytes > from.wastedBytes) return;
    const sentRate = ((this.sentBytes - from.sentBytes) * 1000) / ms;
    const next = Math.min(2 * this.rate, 2 * sentRate, this.rampCeiling);
    if (next > this.rate) {
      this.rampSteps++;
      this.setRate(next);
    }
  }

  /** An ANNOUNCE with authentication sequence `seq` left for this gateway. */
  probe(seq: bigint, now: number): void {
    this.probes.push({ seq, at: now, sentDatagrams: this.sentDatagrams, sentBytes: this.sentBytes, wastedBytes: this.wasted(now) });
    if (this.probes.length > 16) this.probes.shift();
  }

  /**
   * The gateway's FEEDBACK: cumulative counters (mod 2^32), the echo of our latest
   * ANNOUNCE and, since 1.2, the counters as they stood when that ANNOUNCE arrived.
   */
  report(recvDatagrams: number, recvBytes: number, echoSeq: bigint, echoHoldMs: number, now: number, atEcho?: { datagrams: number; bytes: number }): void {
    this.unreportedSince = null;
    if (!atEcho && this.exact) return; // the legacy copy of a report we judge exactly
    const probe = this.probes.find((p) => p.seq === echoSeq);
    let delayed = false;
    if (probe) {
      const rtt = Math.max(0, now - probe.at - echoHoldMs);
      this.lastRttMs = rtt;
      this.minRttMs = Math.min(this.minRttMs, rtt);
      // LEDBAT's current-delay filter (RFC 6817 §3.4.2): the least of the last few
      // samples, so a busy event loop at either end (one late sample) is not a queue.
      this.rtts.push(rtt);
      if (this.rtts.length > 4) this.rtts.shift();
      delayed = this.rtts.length >= 3 && Math.min(...this.rtts) - this.minRttMs > this.o.delayTargetMs;
      this.probes.splice(0, this.probes.indexOf(probe) + 1);
    }
    if (atEcho) {
      this.exact = true;
      // A window per echoed ANNOUNCE (an echo seen before, or of a forgotten probe, is none).
      if (probe) this.closeWindow('echoWin', { ...probe, recvDatagrams: atEcho.datagrams, recvBytes: atEcho.bytes }, delayed);
      return;
    }
    this.closeWindow('win', { at: now, sentDatagrams: this.sentDatagrams, sentBytes: this.sentBytes, wastedBytes: this.wasted(now), recvDatagrams, recvBytes }, delayed);
  }

  /** Judge the window from the edge kept in `which` to `next` (our sent counters and the gateway's received ones there). */
  private closeWindow(which: 'win' | 'echoWin', next: WindowEdge, delayed: boolean): void {
    const w = this[which];
    if (!w) {
      this[which] = next;
      return;
    }
    const sent = next.sentDatagrams - w.sentDatagrams;
    const got = (next.recvDatagrams - w.recvDatagrams) >>> 0;
    const gotBytes = (next.recvBytes - w.recvBytes) >>> 0;
    const ms = Math.max(1, next.at - w.at);
    // More arrived than we sent: the gateway's counters restarted (it forgot us). A new window.
    if (got > sent + MIN_WINDOW_DATAGRAMS) {
      this[which] = next;
      return;
    }
    // Too little sent to judge: the window stays open until enough has gone (a slow
    // pace must still be able to learn that the path recovered).
    if (sent < MIN_WINDOW_DATAGRAMS) return;
    this[which] = next;
    // Application-limited: more tokens lost to the burst limit than bytes sent (under half the pace used).
    const appLimited = next.wastedBytes - w.wastedBytes > next.sentBytes - w.sentBytes;
    // What such a window delivered is the sender's demand: it may raise the ramp's ceiling, never lower it.
    const ceiling = this.o.rampMaxFactor * ((gotBytes * 1000) / ms);
    if (!appLimited || ceiling > this.rampCeiling) this.rampCeiling = ceiling;
    const loss = Math.max(0, Math.min(1, 1 - got / sent));
    this.lastLoss = loss;
    const floor = median(this.losses);
    this.losses.push(loss);
    if (this.losses.length > 8) this.losses.shift();
    const p = Math.max(floor, 0.01);
    // Until 3 windows have shown the path's background loss, only heavy loss counts.
    const threshold = Math.max(this.losses.length > 3 ? 0.05 : 0.2, floor + 0.03, floor + 3 * Math.sqrt((p * (1 - p)) / sent));
    if (loss > threshold) {
      this.congested(gotBytes, ms, appLimited);
      return;
    }
    // A standing queue on the path (ours or other traffic's): hold the pace, do not push more into it.
    if (delayed) {
      this.slowStart = false;
      return;
    }
    const sentRate = ((next.sentBytes - w.sentBytes) * 1000) / ms;
    const grown = this.slowStart ? this.rate * 2 : this.rate + this.o.capBytesPerSec / 100;
    // No credit for idle time: a pace never used is not known to fit.
    this.setRate(Math.min(grown, Math.max(this.rate, 2 * sentRate)));
  }

  /** No FEEDBACK for silenceMs while we sent: back off (called on the sender's timer). */
  checkSilence(now: number): void {
    if (this.unreportedSince === null || now - this.unreportedSince < this.o.silenceMs) return;
    this.unreportedSince = now;
    this.win = null;
    this.echoWin = null;
    this.setRate(this.rate / 2);
    // Nothing judged says the path still delivers: no doubling between windows above this until one is.
    this.rampCeiling = Math.min(this.rampCeiling, this.rate);
    this.rampFrom = null;
  }

  private get rate(): number {
    return this.bucket.rateBytesPerSec;
  }

  /** A congested window; `appLimited`: the pace went unused in it (the class comment). */
  private congested(gotBytes: number, ms: number, appLimited: boolean): void {
    this.congestionEvents++;
    if (appLimited) this.appLimitedCuts++;
    this.slowStart = false;
    const delivered = (gotBytes * 1000) / ms;
    this.setRate(appLimited ? this.rate * 0.75 : Math.min(this.rate * 0.75, delivered * 0.85));
  }

  /** Tokens lost to the burst limit up to `now` (the bucket counts them only when it refills). */
  private wasted(now: number): number {
    this.bucket.refill(now);
    return this.bucket.wastedBytes;
  }

  private setRate(r: number): void {
    this.bucket.rateBytesPerSec = Math.max(this.o.minBytesPerSec, Math.min(this.o.capBytesPerSec, r));
  }
}

function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}
