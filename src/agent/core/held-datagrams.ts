import type { Endpoint } from './types';

/** Datagrams held at once, at most: past it a new one is dropped (`pre-key-full`, `unknown-sender`). */
export const HOLD_MAX_DATAGRAMS = 512;
export const HOLD_MAX_BYTES = 1024 * 1024;
/** A datagram held longer than this is dropped (`pre-key-expired`, `unknown-sender`). */
export const HOLD_MAX_MS = 1000;

interface Held {
  buf: Uint8Array;
  via: Endpoint | undefined;
  at: number;
  /** Whose copy it is; null: held before the group key (any packet). */
  sender: number | null;
}

/**
 * Datagrams a member cannot take yet that may well be good, held instead of dropped:
 * - Before its first map brings the group key, every datagram. The LAN socket is open
 *   before the join answer: a peer's ANNOUNCE then could not be verified, and with it
 *   lost, every copy from that peer was dropped until its next control packet.
 * - In a stream (CoreConfig.holdUnheard), a copy (DATA) from a sender not heard yet (DATA
 *   is taken only from members heard with authenticated control packets, peers.ts): its
 *   first ANNOUNCE was lost, or it copied a unit before announcing to us. Handled when a
 *   control packet from it is taken; a member announces shortly after each unit it
 *   verifies, so that is usually right after the copies.
 * Sites bench at 3% loss, before: 24-104 such copies dropped in most runs (11 of 14 in
 * bench/results/stream.md's A/B), each unit a whole NACK round. As a NORM receiver (RFC
 * 5740) takes up a sender it first hears from its data. Bounded in datagrams, bytes and
 * time, one pool for both; a forger filling it only brings back the drops it replaces.
 * MACs, replay windows and unit hashes decide as for any datagram when they are handled.
 */
export class HeldDatagrams {
  private held: Held[] = [];
  private bytes = 0;
  /** Sender -> datagrams of it held. */
  private readonly senders = new Map<number, number>();
  /** Datagrams held (one held before the key and again as a copy of a sender not heard counts twice), and taken back. */
  readonly counts = { held: 0, replayed: 0 };

  /** `drop` is told of each datagram that waited past HOLD_MAX_MS, with its reason. */
  constructor(private readonly drop: (reason: string) => void) {}

  /** Hold a copy of `buf`; false when the bounds are reached (the caller drops it). */
  hold(buf: Uint8Array, sender: number | null, via: Endpoint | undefined, now: number): boolean {
    this.expire(now);
    if (this.held.length >= HOLD_MAX_DATAGRAMS || this.bytes + buf.length > HOLD_MAX_BYTES) return false;
    this.held.push({ buf: Uint8Array.from(buf), via, at: now, sender });
    this.bytes += buf.length;
    if (sender !== null) this.senders.set(sender, (this.senders.get(sender) ?? 0) + 1);
    this.counts.held++;
    return true;
  }

  /** Datagrams held now. */
  get size(): number {
    return this.held.length;
  }

  /** Whether a copy from `sender` is held. */
  has(sender: number): boolean {
    return this.senders.has(sender);
  }

  /**
   * The datagrams held of `sender`, or (null) those held before the group key, oldest
   * first, taken out of the hold. (Not the copies of senders not heard: taken again at
   * every map, each would come back held anew and never reach HOLD_MAX_MS.)
   */
  take(sender: number | null, now: number): { buf: Uint8Array; via: Endpoint | undefined }[] {
    this.expire(now);
    if (!this.held.length) return [];
    const out: Held[] = [];
    const keep: Held[] = [];
    for (const d of this.held) (d.sender === sender ? out : keep).push(d);
    this.held = keep;
    for (const d of out) this.forget(d);
    this.counts.replayed += out.length;
    return out;
  }

  private expire(now: number): void {
    while (this.held.length && now - this.held[0].at > HOLD_MAX_MS) {
      const d = this.held.shift()!;
      this.forget(d);
      this.drop(d.sender === null ? 'pre-key-expired' : 'unknown-sender');
    }
  }

  private forget(d: Held): void {
    this.bytes -= d.buf.length;
    if (d.sender === null) return;
    const n = this.senders.get(d.sender)! - 1;
    if (n) this.senders.set(d.sender, n);
    else this.senders.delete(d.sender);
  }
}
