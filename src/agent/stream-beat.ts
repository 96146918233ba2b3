import { bitmapBytes, setBit } from '../wire/packet';
import { MAX_STREAM_HAVE_BYTES, StreamBeatAnswer } from '../wire/stream-control';

/*
 * What a stream agent's heartbeat says and when it beats (docs/protocol.md, streams), as
 * pure functions of its state: stream-agent.ts calls them.
 */

/**
 * The `haveFrom` and `have` bitmap of a heartbeat: from the next unit to deliver when it is
 * below what we hold, since the server names holders from the first unit some member lacks
 * (stream-alloc.ts), which this bitmap shows; at most MAX_STREAM_HAVE_BYTES of it.
 */
export function streamHave(held: Iterable<number>, next: number): { from: number; have: Uint8Array } {
  let lo = Infinity;
  let hi = -1;
  for (const u of held) {
    if (u < lo) lo = u;
    if (u > hi) hi = u;
  }
  const from = hi >= 0 ? Math.min(lo, next) : next;
  const to = Math.min(hi >= 0 ? hi + 1 : from, from + MAX_STREAM_HAVE_BYTES * 8);
  const have = new Uint8Array(bitmapBytes(to - from));
  for (const u of held) if (u < to && u >= from) setBit(have, u - from);
  return { from, have };
}

/**
 * Whether the last answer `a` showed a unit at or past `next` that we lack (`lacks`) with
 * no lessee or holder (−1), which a beat now could lease to us; no answer yet counts as yes.
 */
export function leaseWaiting(a: StreamBeatAnswer | null, next: number, lacks: (u: number) => boolean): boolean {
  if (!a) return true;
  for (let i = 0; i < a.holders.length; i++) {
    const u = a.holdersFrom + i;
    if (a.holders[i] < 0 && u >= next && lacks(u)) return true;
  }
  return false;
}
