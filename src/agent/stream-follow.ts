import { createHash, KeyObject } from 'node:crypto';
import { batchFromCompact, batchFromObject, isCompactBatch, parseBatch, parseBatchEnvelope, refusedAfter, StreamBatch } from '../release/stream-manifest';
import type { Logger } from '../util/log';
import type { StreamBeatAnswer } from '../wire/stream-control';
import type { BatchPacket } from '../wire/stream-packet';
import type { StreamCore } from './stream-core';
import type { StreamHttp } from './stream-http';

/** How long the batch follower's asks (and the agent's first one) are held by the server. */
export const BATCH_WAIT_MS = 30_000;
/**
 * How long a member that takes its batches from a LAN peer waits, once the server shows a
 * batch it lacks, for the LAN to bring it before it fetches the batch itself. The wait is
 * started again while batches keep arriving from the LAN (progress), so a relay that is
 * slow but moving is not replaced.
 */
export const LAN_BATCH_GRACE_MS = 150;
/**
 * The wait instead when a later batch came from the LAN: the relayer sends in order, so
 * both copies of the missing one were sent already, but for the second's spacing.
 */
export const LAN_BATCH_GAP_MS = 40;
/**
 * A relayed batch's second copy goes this long after the first. Back to back, both were
 * lost together (a receiver's socket buffer full of a burst of repairs at 3% loss: a
 * passive member missed 2.5% of the batches, not 0.09%).
 */
export const RELAY_REPEAT_MS = 20;
/**
 * BATCH packets whose signature is checked, at most this many a second (a token bucket,
 * burst as many): each costs a parse and an Ed25519 verification, and anyone on the LAN can
 * send them. A stream needs about one a batch. Past it they are dropped and counted; the
 * member falls back to the server, as for a lost batch.
 */
export const LAN_BATCH_VERIFIES_PER_S = 200;

export interface FollowerHost {
  readonly http: StreamHttp;
  readonly core: StreamCore;
  readonly trusted: readonly KeyObject[];
  readonly log: Logger;
  /** The last batch verified and chained. */
  last(): StreamBatch;
  /** A verified batch after last(): chained (throws BAD_CHAIN), its units made known. */
  take(b: StreamBatch): void;
  /** The stream's final batch was taken, or the agent closed. */
  finished(): boolean;
  kick(): void;
}

/** What the batch follower did (`fleetcast status`, metrics). */
export interface FollowCounts {
  /** Batches in the server's answers (those a LAN peer brought first too: each crossed the WAN). */
  fromServer: number;
  /** Batches taken from a LAN peer's BATCH packets. */
  fromLan: number;
  /** Of fromServer, those the server sent in compact form (docs/protocol.md, "Compact batches"). */
  compact: number;
  /** Batches this member multicast on its LAN (each sent twice). */
  relayed: number;
  /** Batches this member also sent to the other sites' gateways (each twice; a wide-area group). */
  across: number;
  /** BATCH packets another site's member sent this member (a gateway) that it multicast on its LAN. */
  forwarded: number;
  /** BATCH packets refused: a batch that does not parse, verify or chain, or names another index. */
  refused: number;
  /** Times a member that took its batches from the LAN went back to the server for one it lacked. */
  fallbacks: number;
  /** BATCH packets dropped unchecked: past LAN_BATCH_VERIFIES_PER_S. */
  limited: number;
}

/**
 * A stream agent's batches (docs/protocol.md section 15, "Batches on the LAN"). Each member
 * long-polls the server for the next batch and multicasts every batch it fetches on its LAN
 * as a BATCH packet, twice; a member that hears a peer with a smaller sender id multicast
 * the newest batch stops polling (passive) and takes its batches from the LAN. A passive
 * member goes back to the server when it sees evidence of a batch it lacks (a heartbeat
 * answer past its batches, or a BATCH packet past the next one) and the LAN brings no
 * batch for LAN_BATCH_GRACE_MS. So in a steady state one member per LAN group polls, and
 * a group takes each batch over the WAN about once, not once per member.
 * (After NORM's suppression of redundant receiver feedback, RFC 5740: a receiver that
 * hears a peer send what it would have sent holds its own. Here what is held is the
 * request to the server, and the smaller sender id breaks the tie.)
 */
export class BatchFollower {
  readonly counts: FollowCounts = { fromServer: 0, compact: 0, fromLan: 0, relayed: 0, across: 0, forwarded: 0, refused: 0, fallbacks: 0, limited: 0 };
  private verifies = { tokens: LAN_BATCH_VERIFIES_PER_S, at: 0 };
  /** A peer with a smaller sender id relays batches: this member does not poll. */
  passive = false;
  /** Whether polls ask for compact batches (false once the server refused `after`). */
  compact = true;
  private poll: AbortController | null = null;
  private wake: (() => void) | null = null;
  private timer: NodeJS.Timeout | null = null;
  private timerDue = 0;
  private closed = false;
  /** What the server or the LAN showed exists: one past its last unit, whether it ended, the highest batch index. */
  private seen = { unit: 0, ended: false, batch: -1 };

  constructor(
    private readonly h: FollowerHost,
    private readonly senderId: number,
  ) {
    h.core.onBatchPacket = (p, now, across) => this.packet(p, now, across);
  }

  /** Polls while not passive, until the stream's end. */
  async run(): Promise<void> {
    while (!this.h.finished()) {
      if (this.passive) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = null;
        continue;
      }
      const ctrl = new AbortController();
      this.poll = ctrl;
      let got: unknown[];
      // Compact batches: the answer's first batch may come as what it adds to this one (docs/protocol.md).
      let prev = this.h.last();
      try {
        got = await this.h.http.batches(`from=${prev.batch + 1}&waitMs=${BATCH_WAIT_MS}${this.compact ? `&after=${prev.hash}` : ''}`, ctrl.signal);
      } catch (err) {
        // We aborted it: passive now (the LAN brings them), or closing; the loop's test decides. Never a failure.
        if (ctrl.signal.aborted) continue;
        if (this.compact && refusedAfter(err)) {
          this.compact = false;
          this.h.log.info('the server does not take after= on stream batches (a server before 2026-12-03): whole batches from now on');
          continue;
        }
        throw err;
      } finally {
        this.poll = null;
      }
      for (const o of got) {
        const compact = isCompactBatch(o);
        const b = compact ? batchFromCompact(prev, o, this.h.trusted) : batchFromObject(o, this.h.trusted);
        prev = b;
        if (compact) this.counts.compact++;
        this.counts.fromServer++;
        if (b.batch > this.h.last().batch) this.h.take(b);
        // Relayed even when a LAN peer's came first, while it is the newest: else a poller whose
        // answers lose the race to a larger sender's relay is never heard, and both poll on.
        if (b.batch === this.h.last().batch) this.relay(b);
      }
      this.h.kick();
    }
  }

  /** A heartbeat answer: what the server's head shows. */
  answer(a: Pick<StreamBeatAnswer, 'nextUnit' | 'ended'>): void {
    this.seen.unit = Math.max(this.seen.unit, a.nextUnit);
    this.seen.ended ||= a.ended;
    this.check();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.poll?.abort();
    this.wake?.();
  }

  /**
   * A BATCH packet from the LAN, or (`across`) by unicast from another site's member: then,
   * unless refused, multicast on this LAN too with that member as its origin, so that this
   * site's members can stop polling (docs/protocol.md, "Batches across sites").
   */
  private packet(p: BatchPacket, now: number, across = false): void {
    const newest = p.batch >= this.h.last().batch;
    if (this.take(p, now, across) && across && newest && !this.closed && this.h.core.forwardBatch(p.sender, p.batch, p.file)) this.counts.forwarded++;
  }

  /** False when the packet was refused (it did not parse, verify or chain, or is not the batch we hold under its index). */
  private take(p: BatchPacket, now: number, across: boolean): boolean {
    const last = this.h.last();
    // The member whose poll brought it: for a forwarded packet, its origin in another site.
    const from = p.origin ?? p.sender;
    if (p.batch < last.batch) return true;
    if (p.batch === last.batch) {
      // A peer relays the batch we hold: the same one (its body's hash), not a replay of another.
      if (from >= this.senderId && !across) return true;
      const same = bodyHash(p.file) === last.hash;
      if (same && from < this.senderId && !this.h.finished()) this.relayHeard();
      return same;
    }
    if (this.h.finished()) return false; // nothing comes after the final batch
    if (p.batch > last.batch + 1) {
      // One or more batches before it were lost on the LAN: evidence, not a batch we can chain.
      this.seen.batch = Math.max(this.seen.batch, p.batch);
      this.check();
      return true;
    }
    if (!this.mayVerify(now)) {
      this.counts.limited++;
      this.seen.batch = Math.max(this.seen.batch, p.batch); // evidence all the same: the fallback covers it
      this.check();
      return false;
    }
    let b: StreamBatch;
    try {
      b = parseBatch(p.file, this.h.trusted);
      if (b.batch !== p.batch) throw new Error(`its header names batch ${p.batch}, its body ${b.batch}`);
      this.h.take(b);
    } catch (err) {
      this.counts.refused++;
      this.h.log.debug(`stream ${last.stream}: a BATCH packet from sender ${p.sender} refused: ${(err as Error).message}`);
      return false;
    }
    this.counts.fromLan++;
    if (from < this.senderId) this.relayHeard();
    this.h.kick();
    this.check();
    return true;
  }

  private mayVerify(now: number): boolean {
    const v = this.verifies;
    v.tokens = Math.min(LAN_BATCH_VERIFIES_PER_S, v.tokens + ((now - v.at) * LAN_BATCH_VERIFIES_PER_S) / 1000);
    v.at = now;
    if (v.tokens < 1) return false;
    v.tokens--;
    return true;
  }

  /**
   * A batch on the LAN, and to the other sites' gateways: a copy now, the second
   * RELAY_REPEAT_MS later (the final batch's too).
   */
  private relay(b: StreamBatch): void {
    if (!this.h.core.relayBatch(b.batch, b.raw)) return;
    this.counts.relayed++;
    if (this.h.core.sendBatchAcross(b.batch, b.raw)) this.counts.across++;
    setTimeout(() => {
      if (this.closed) return;
      this.h.core.relayBatch(b.batch, b.raw);
      this.h.core.sendBatchAcross(b.batch, b.raw);
      this.h.kick();
    }, RELAY_REPEAT_MS).unref?.();
  }

  private relayHeard(): void {
    if (this.passive) return;
    this.passive = true;
    this.poll?.abort();
    this.h.log.debug(`stream ${this.h.last().stream}: a LAN peer relays the batches; not polling the server`);
  }

  /** Whether the server or the LAN showed a batch this member lacks. */
  private behind(): boolean {
    const last = this.h.last();
    return this.h.core.window.unitCount < this.seen.unit || (this.seen.ended && !last.final) || last.batch < this.seen.batch;
  }

  /**
   * While passive and behind: wait for the LAN (LAN_BATCH_GRACE_MS, or LAN_BATCH_GAP_MS once a
   * later batch came), with the wait started again on progress; then poll the server again.
   */
  private check(): void {
    if (!this.passive || this.h.finished() || !this.behind()) return;
    const mark = this.h.last().batch;
    const wait = mark < this.seen.batch ? LAN_BATCH_GAP_MS : LAN_BATCH_GRACE_MS;
    const due = Date.now() + wait;
    if (this.timer) {
      if (due >= this.timerDue) return;
      clearTimeout(this.timer);
    }
    this.timerDue = due;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.passive || this.h.finished() || !this.behind()) return;
      if (this.h.last().batch > mark) return this.check(); // the LAN is bringing them
      this.counts.fallbacks++;
      this.passive = false;
      this.h.log.debug(`stream ${this.h.last().stream}: no batch ${mark + 1} from the LAN within ${wait} ms; polling the server again`);
      this.wake?.();
    }, wait);
    this.timer.unref?.();
  }
}

/** SHA-256 of a batch file's body (its batch hash), or null when it does not parse. */
function bodyHash(file: Uint8Array): string | null {
  try {
    return createHash('sha256').update(parseBatchEnvelope(file).body).digest('hex');
  } catch {
    return null;
  }
}
