import { peekOwnData } from '../wire/packet';
import type { FeedbackPacket } from '../wire/packet';
import { CrossPacer } from './cross-pacer';
import { TokenBucket } from './token-bucket';

/** Least wait between two cross-group send rounds (a pacer's burst covers it: 64 KiB is 5 ms at 100 Mbit/s). */
export const CROSS_MIN_WAIT_MS = 4;

export interface Endpoint {
  address: string;
  port: number;
  /** The LAN group of that gateway, when known (the lease answer's `copyTo` names it). */
  group?: string;
}

interface Path {
  to: Endpoint;
  group: string | undefined;
  pacer: CrossPacer;
  /** Repairs first (a whole LAN group waits for each), then copies. */
  repairs: Uint8Array[];
  copies: Uint8Array[];
  /** Bytes sent on the path: copies, and repairs (what a gateway's forwarded NACKs cost). */
  copyBytes: number;
  repairBytes: number;
  /** Queued copies handed on to the group's next gateway (retarget) instead of sent here. */
  movedAway: number;
}

/** What a FEEDBACK reports (its counters and echo), as the gateway builds it and the sender takes it. */
type FeedbackReport = Pick<FeedbackPacket, 'receivedDatagrams' | 'receivedBytes' | 'echoSeq' | 'echoHoldMs' | 'atEcho'>;

interface Source {
  to: Endpoint;
  datagrams: number;
  bytes: number;
  /** Heard since our last FEEDBACK to it. */
  fresh: boolean;
  echoSeq: bigint;
  echoAt: number;
  /** Our counters when that ANNOUNCE arrived (FEEDBACK's at-echo counters, 1.2). */
  echoDatagrams: number;
  echoBytes: number;
  /** An echo went to it in a FEEDBACK already (its sender has a round trip). */
  echoed: boolean;
}

/**
 * Cross-group traffic of one agent (docs/wide-area.md): what it sends to other LAN
 * groups' gateways, one queue and one learned pace per gateway (CrossPacer) under the
 * member's overall cap, and, as a gateway, what it receives from other groups' members,
 * reported back to them in FEEDBACK packets. Pure: every method takes `now` (ms); the
 * agent owns the socket.
 */
export class CrossPaths {
  private readonly paths = new Map<string, Path>();
  private readonly sources = new Map<string, Source>();
  /** The member's overall cap on cross-group sends (cross_rate): the site's uplink. */
  readonly total: TokenBucket;
  private lastFeedbackAt = 0;
  /** A member's first ANNOUNCE arrived: its FEEDBACK is due now (feedbackDue). */
  private firstEchoDue = false;
  /** Copy bytes queued on every path (repairs are few and not counted). */
  copyBytesQueued = 0;
  /** Sources forgotten because the table was full. */
  sourcesDropped = 0;

  constructor(
    private capBytesPerSec: number,
    now: number,
    private readonly opts: { feedbackMs: number; maxPaths: number; burstBytes: number; minWaitMs?: number },
  ) {
    this.total = new TokenBucket(capBytesPerSec, opts.burstBytes, now);
  }

  setCap(capBytesPerSec: number): void {
    this.capBytesPerSec = capBytesPerSec;
    this.total.rateBytesPerSec = capBytesPerSec;
    for (const p of this.paths.values()) p.pacer.setCap(capBytesPerSec);
  }

  private path(to: Endpoint, now: number): Path {
    const k = key(to);
    let p = this.paths.get(k);
    if (!p) {
      if (this.paths.size >= this.opts.maxPaths) {
        // Forget an idle path; a busy table keeps sending on what it has.
        for (const [k2, q] of this.paths) {
          if (!q.repairs.length && !q.copies.length) {
            this.paths.delete(k2);
            break;
          }
        }
      }
      // A new gateway of a group we already send to (the role moved: from the provisional
      // first gateway to a measured one, or off a gateway that left) sits behind the same
      // site links: start at the pace learned on the way there, not at 4 Mbit/s again.
      const group = typeof to.group === 'string' ? to.group : undefined;
      let learned = 0;
      if (group !== undefined) for (const q of this.paths.values()) if (q.group === group) learned = Math.max(learned, q.pacer.rateBytesPerSec);
      const pacer = new CrossPacer({ capBytesPerSec: this.capBytesPerSec, ...(learned > 0 ? { initialBytesPerSec: learned } : {}) }, now);
      p = { to, group, pacer, repairs: [], copies: [], copyBytes: 0, repairBytes: 0, movedAway: 0 };
      this.paths.set(k, p);
    }
    return p;
  }

  queue(d: Uint8Array, to: Endpoint, repair: boolean, now: number): void {
    const p = this.path(to, now);
    if (repair) p.repairs.push(d);
    else {
      p.copies.push(d);
      this.copyBytesQueued += d.length;
    }
  }

  /**
   * The gateway of a LAN group moved from `from` to `to` (the provisional first gateway gave
   * way to a measured one, or it left): copies still queued for the old one go to the new
   * one, ahead of any queued for it since. Left where they were, they crawled on: the old
   * gateway re-multicasts a copy but no longer reports its path (the pacer halves the pace
   * of a silent path), while the new one NACKed the units they held a second after our
   * announces named them, and each came across twice (wide-area namespace test: 60-1163
   * datagrams queued at the move, repairs 28-39 MiB a run for a 32 MiB release). Repairs
   * stay: they answer the old gateway's own NACKs. Returns the datagrams moved.
   */
  retarget(from: Endpoint, to: Endpoint, now: number): number {
    const old = this.paths.get(key(from));
    if (!old || !old.copies.length || key(from) === key(to)) return 0;
    const p = this.path(to, now);
    const n = old.copies.length;
    p.copies = old.copies.concat(p.copies);
    old.copies = [];
    old.movedAway += n;
    return n;
  }

  /** New copy destinations: for each group whose gateway changed between `before` and `after`, retarget. */
  retargetMoved(before: readonly Endpoint[], after: readonly Endpoint[], now: number): void {
    for (const d of before) {
      const next = d.group === undefined ? undefined : after.find((n) => n.group === d.group);
      if (next) this.retarget(d, next, now);
    }
  }

  /** Copies (not repairs) still queued for the gateway at `to`. */
  copiesQueuedTo(to: Endpoint): number {
    return this.paths.get(key(to))?.copies.length ?? 0;
  }

  /** Whether copies (not repairs) of `unit` are still queued for the gateway at `to`. */
  unitQueuedTo(to: Endpoint, unit: number): boolean {
    for (const d of this.paths.get(key(to))?.copies ?? []) if (peekOwnData(d)?.unit === unit) return true;
    return false;
  }

  /**
   * How long a repair sent to `to` now may take to arrive and show in its gateway's
   * next NACK: what waits before it on the path (repairs go first) at the path's pace,
   * plus 1.5 round trips (the last echoed ANNOUNCE's). 0 for an unknown path.
   */
  repairWindowMs(to: Endpoint): number {
    const p = this.paths.get(key(to));
    if (!p) return 0;
    let queued = 0;
    for (const d of p.repairs) queued += d.length;
    return (queued * 1000) / p.pacer.rateBytesPerSec + 1.5 * (p.pacer.lastRttMs ?? 0);
  }

  get pending(): boolean {
    for (const p of this.paths.values()) if (p.repairs.length || p.copies.length) return true;
    return false;
  }

  /**
   * Send what every path's pace and the overall cap allow now, repairs before copies.
   * Returns ms until more may leave (0: nothing waits).
   */
  drain(now: number, send: (d: Uint8Array, to: Endpoint, repair: boolean) => void): number {
    let wait = Infinity;
    for (const p of this.paths.values()) {
      for (;;) {
        const repair = p.repairs.length > 0;
        const d = repair ? p.repairs[0] : p.copies[0];
        if (!d) break;
        const w = Math.max(p.pacer.bucket.wait(d.length, now), this.total.wait(d.length, now));
        if (w > 0) {
          wait = Math.min(wait, w);
          break;
        }
        p.pacer.bucket.take(d.length, now);
        this.total.take(d.length, now);
        if (repair) p.repairs.shift();
        else {
          p.copies.shift();
          this.copyBytesQueued -= d.length;
        }
        p.pacer.sent(d.length, now);
        if (repair) p.repairBytes += d.length;
        else p.copyBytes += d.length;
        send(d, p.to, repair);
      }
    }
    // Not sooner than minWaitMs: the buckets hold a burst, so what accumulates meanwhile
    // leaves together. Waking for every datagram's tokens (a timer each ~0.1-1 ms per
    // path) cost more CPU than the sending on a busy box.
    return Number.isFinite(wait) ? Math.max(wait, this.opts.minWaitMs ?? CROSS_MIN_WAIT_MS) : 0;
  }

  /** An ANNOUNCE with sequence `seq` left for `to`: the pacer's round-trip probe. */
  probe(to: Endpoint, seq: bigint, now: number): void {
    this.path(to, now).pacer.probe(seq, now);
  }

  /** A FEEDBACK from the gateway at `from`. */
  feedback(from: Endpoint, f: FeedbackReport, now: number): boolean {
    const p = this.paths.get(key(from));
    if (!p) return false;
    p.pacer.report(f.receivedDatagrams, f.receivedBytes, f.echoSeq, f.echoHoldMs, now, f.atEcho);
    return true;
  }

  /** As a gateway: a DATA datagram of `bytes` arrived from another group's member at `from`. */
  received(from: Endpoint, bytes: number): void {
    const s = this.source(from);
    if (!s) return;
    s.datagrams = (s.datagrams + 1) >>> 0;
    s.bytes = (s.bytes + bytes) >>> 0;
    s.fresh = true;
  }

  /** As a gateway: an authenticated ANNOUNCE with sequence `seq` arrived from `from`. */
  announced(from: Endpoint, seq: bigint, now: number): void {
    const s = this.source(from);
    if (!s) return;
    s.echoSeq = seq;
    s.echoAt = now;
    s.echoDatagrams = s.datagrams;
    s.echoBytes = s.bytes;
    s.fresh = true;
    if (!s.echoed) this.firstEchoDue = true;
  }

  private source(from: Endpoint): Source | null {
    const k = key(from);
    let s = this.sources.get(k);
    if (!s) {
      if (this.sources.size >= this.opts.maxPaths) {
        this.sourcesDropped++;
        return null;
      }
      s = { to: { address: from.address, port: from.port }, datagrams: 0, bytes: 0, fresh: false, echoSeq: 0n, echoAt: 0, echoDatagrams: 0, echoBytes: 0, echoed: false };
      this.sources.set(k, s);
    }
    return s;
  }

  /**
   * Every feedbackMs: the reports owed to the members heard since the last ones, with
   * the counters at the echo once an ANNOUNCE has been heard (1.2 senders judge by those;
   * the agent also sends each without them, the 1.1 form, for 1.1 senders). A member's
   * first ANNOUNCE is echoed at once, not at the next period: its pacer doubles only once
   * it has a round trip, and a new path's first units crossed at the 4 Mbit/s start pace
   * for up to a period (sites testbed, issue 19).
   */
  feedbackDue(now: number): (FeedbackReport & { to: Endpoint })[] {
    const periodic = now - this.lastFeedbackAt >= this.opts.feedbackMs;
    if (!periodic && !this.firstEchoDue) return [];
    this.firstEchoDue = false;
    if (periodic) this.lastFeedbackAt = now;
    const out = [];
    for (const [k, s] of this.sources) {
      if (!periodic) {
        // A first echo alone: the source stays fresh, so the period neither forgets it nor skips its report.
        if (s.echoed || !s.echoSeq) continue;
        s.echoed = true;
        out.push(this.report(s, now));
        continue;
      }
      if (!s.fresh) {
        // Silent for a whole period: forget it (its counters restart if it comes back,
        // and its sender starts a new window).
        this.sources.delete(k);
        continue;
      }
      s.fresh = false;
      if (s.echoSeq) s.echoed = true;
      out.push(this.report(s, now));
    }
    return out;
  }

  private report(s: Source, now: number): FeedbackReport & { to: Endpoint } {
    return {
      to: s.to,
      receivedDatagrams: s.datagrams,
      receivedBytes: s.bytes,
      echoSeq: s.echoSeq,
      echoHoldMs: s.echoSeq ? now - s.echoAt : 0,
      ...(s.echoSeq ? { atEcho: { datagrams: s.echoDatagrams, bytes: s.echoBytes } } : {}),
    };
  }

  /** Paths whose gateway stopped reporting slow down (CrossPacer.checkSilence). */
  tick(now: number): void {
    for (const p of this.paths.values()) p.pacer.checkSilence(now);
  }

  /** Per gateway: the learned pace and what the last reports said. */
  view(): { to: string; rateBytesPerSec: number; lastLoss: number; lastRttMs: number | null; congestionEvents: number; appLimitedCuts: number; queued: number; copyBytes: number; repairBytes: number; movedAway: number }[] {
    return [...this.paths.entries()].map(([k, p]) => ({
      to: k,
      rateBytesPerSec: Math.round(p.pacer.rateBytesPerSec),
      lastLoss: p.pacer.lastLoss,
      lastRttMs: p.pacer.lastRttMs,
      congestionEvents: p.pacer.congestionEvents,
      appLimitedCuts: p.pacer.appLimitedCuts,
      queued: p.copies.length + p.repairs.length,
      copyBytes: p.copyBytes,
      repairBytes: p.repairBytes,
      movedAway: p.movedAway,
    }));
  }
}

function key(e: Endpoint): string {
  return `${e.address}:${e.port}`;
}
