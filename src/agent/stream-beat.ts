import type { Logger } from '../util/log';
import { bitmapBytes, setBit } from '../wire/packet';
import { MAX_STREAM_HAVE_BYTES, parseStreamBeatAnswer, StreamBeatAnswer } from '../wire/stream-control';

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

/**
 * The agent's side of map tokens (docs/protocol.md, "Map tokens"): every heartbeat sends
 * the `mapToken` of the last answer applied ("" before the first), and an answer that
 * leaves `members`, `groupKey` and `copyTo` out is completed from that answer. With it,
 * `lean: true` (agents from 2026-12-03; "Lean answers"): the answers also leave out what
 * parseStreamBeatAnswer fills in. A server from before 2026-12-01 refuses the token (400,
 * unknown field "mapToken"): from then on the agent leaves both fields out and takes whole
 * answers, as before; one from before 2026-12-03 refuses `lean`: the agent goes on with
 * the token alone.
 */
export class MapTokens {
  /** Whether heartbeats carry `mapToken` (false once the server refused it). */
  on = true;
  /** Whether they carry `lean` (false once the server refused it, or the token). */
  lean = true;
  private kept: StreamBeatAnswer | null = null;

  /** The fields for the next body. */
  field(): { mapToken?: string; lean?: true } {
    if (!this.on) return {};
    return { mapToken: this.kept?.mapToken ?? '', ...(this.lean ? { lean: true as const } : {}) };
  }

  /** The whole answer; a bad one throws, and the next body asks for everything again. */
  parse(bytes: Uint8Array): StreamBeatAnswer {
    try {
      const a = parseStreamBeatAnswer(bytes, this.kept);
      this.kept = a;
      return a;
    } catch (err) {
      this.kept = null;
      throw err;
    }
  }

  /** True (and that field off from now on) when `err` is the server refusing a field of ours: send the beat again without it. */
  refused(err: unknown, log: Logger): boolean {
    if (!(err instanceof Error)) return false;
    const field = /unknown field "(mapToken|lean)"/.exec(err.message)?.[1];
    if (field === 'lean' && this.lean) {
      this.lean = false;
      log.info('the server does not take lean in stream heartbeats (a server before 2026-12-03): answers with every field from now on');
      return true;
    }
    if (field !== 'mapToken' || !this.on) return false;
    this.on = false;
    this.lean = false;
    this.kept = null;
    log.info('the server does not take mapToken in stream heartbeats (a server before 2026-12-01): whole answers from now on');
    return true;
  }
}
