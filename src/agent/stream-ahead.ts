import type { Endpoint } from '../transport/transport';

/** Units past the last known one whose copies and announces are held, at most. */
export const AHEAD_UNITS = 64;
/** Bytes of held datagrams, at most: past it the oldest go (counted). */
export const AHEAD_MAX_BYTES = 4 * 1024 * 1024;
/** A held datagram or announced unit older than this is dropped when the next batch comes (counted). */
export const AHEAD_MAX_MS = 2000;

interface Held {
  unit: number;
  buf: Uint8Array;
  via: Endpoint | undefined;
  at: number;
}

/**
 * What a stream member's LAN brings for units whose batch it has not verified yet. The
 * member that polls the server (or another site's) can lease, fetch and copy a unit
 * before its LAN peers hear of the batch (its BATCH packet lost, or slower than the
 * copy): those peers dropped the copies as out of range, and the lessee's announce too,
 * and found the gap only at its next announce that listed the unit, then NACKed for all
 * of it (sites testbed at 3% loss: ~3% of units, ~100 ms each, and now and then ~1 s).
 * Held here instead, bounded in units, bytes and time, and handled once the batch covering
 * them is verified (the unit hash still decides what is kept). Much as a NORM receiver
 * (RFC 5740) takes up an object it learns of from its data messages, not only from an
 * announcement ahead of them.
 */
export class AheadBuffer {
  private held: Held[] = [];
  private bytes = 0;
  /** Unit -> when an announce from a LAN peer first listed it. */
  private announced = new Map<number, number>();
  readonly counts = { held: 0, replayed: 0, expired: 0, full: 0, tooFar: 0 };

  /** Keep a DATA datagram for `unit` (past `known`); false when it is too far ahead. */
  hold(buf: Uint8Array, unit: number, known: number, via: Endpoint | undefined, now: number): boolean {
    if (unit >= known + AHEAD_UNITS) {
      this.counts.tooFar++;
      return false;
    }
    this.held.push({ unit, buf: Uint8Array.from(buf), via, at: now });
    this.bytes += buf.length;
    this.counts.held++;
    while (this.bytes > AHEAD_MAX_BYTES) {
      this.bytes -= this.held.shift()!.buf.length;
      this.counts.full++;
    }
    return true;
  }

  /** Units past `known` a LAN peer's announce listed (in ascending order); those too far ahead are not kept. */
  announce(units: Iterable<number>, known: number, now: number): void {
    for (const u of units) {
      if (u >= known + AHEAD_UNITS) break;
      if (!this.announced.has(u)) this.announced.set(u, now);
    }
  }

  /**
   * What is known now that units before `known` are: the held datagrams of those units,
   * in the order they came, and the units announced. Anything older than AHEAD_MAX_MS
   * is dropped.
   */
  release(known: number, now: number): { datagrams: { buf: Uint8Array; via: Endpoint | undefined }[]; announced: number[] } {
    const datagrams: { buf: Uint8Array; via: Endpoint | undefined }[] = [];
    const keep: Held[] = [];
    for (const h of this.held) {
      if (now - h.at > AHEAD_MAX_MS) {
        this.bytes -= h.buf.length;
        this.counts.expired++;
      } else if (h.unit < known) {
        this.bytes -= h.buf.length;
        datagrams.push({ buf: h.buf, via: h.via });
      } else keep.push(h);
    }
    this.held = keep;
    this.counts.replayed += datagrams.length;
    const announced: number[] = [];
    for (const [u, at] of this.announced) {
      if (now - at > AHEAD_MAX_MS) this.announced.delete(u);
      else if (u < known) {
        announced.push(u);
        this.announced.delete(u);
      }
    }
    return { datagrams, announced };
  }

  get heldBytes(): number {
    return this.bytes;
  }
}
