import type { ChannelHead } from '../release/channels';
import { FOLLOWING_MAX_MS } from '../wire/http-bodies';

/** How often a channel with waiting requests is read again (the most a move can go unseen). */
export const CHANNEL_CHECK_MS = 500;
/**
 * The longest a channel request may be held (`waitMs` above this is cut to it), and what
 * the answer's `x-fleetcast-long-poll` says. 1.6 agents hold this long while no rollout
 * asks anything of them (section 18): an idle agent then asks once per 5 minutes instead of
 * every channel_poll, and still learns of a move within CHANNEL_CHECK_MS (issue 17; with
 * the idle heartbeat rate, 10,000 idle followers cost 10.7 µs a second each instead of 26.9:
 * bench/results/idle-fleet.md). Was 60 s. Within the 10-minute memory of the channel's
 * followers (section 12), which sees such an agent at each of its rollout polls.
 */
export const MAX_CHANNEL_WAIT_MS = 300_000;
/**
 * The longest hold of a 1.7 poll that names its member when this server notes the
 * follower itself (section 19: `x-fleetcast-following` includes `rollout`): the follower
 * counts as seen for as long as its poll is held, so the hold need not fit in that
 * memory: a 1.8 follower asks once a day, a 1.7 one (which asks for an hour at most) once
 * an hour (issue 17; 15 minutes until 2026-12-01: 11 polls a second at 10,000 followers,
 * 2.8 with an hour; section 20). Such a poll's connection has TCP keepalive on at both
 * ends (HELD_KEEPALIVE_MS), so a NAT keeps it and a dead follower's poll ends within
 * minutes, not at the hold's end.
 */
export const MAX_FOLLOWING_WAIT_MS = FOLLOWING_MAX_MS;
/**
 * The idle time after which the server's end of a held following poll sends TCP keepalive
 * probes (the agent sets the same on its own requests: src/net/server-access.ts): a follower
 * that vanished without closing (power lost, cable pulled) fails them and its hold ends
 * as a closed connection does, so it counts as seen no longer than this plus the probes.
 */
export const HELD_KEEPALIVE_MS = 60_000;

interface Waiter {
  known: string;
  /** 1.6: the channel's rollout token the agent last got; the hold also ends when it changes. */
  rollout: string | undefined;
  done: () => void;
}

/**
 * Long polls of `GET /v1/channels/{name}?release=R&waitMs=N` (docs/protocol.md, section
 * 13): a request that names the release the agent already knows is held until the channel
 * moves off it or `waitMs` passes, so an idle agent asks once per wait and still learns of
 * a new release within CHANNEL_CHECK_MS. `fleetcast publish` writes the channel file from
 * another process (and another instance may move it, through the shared engine), so each
 * channel someone waits on is read every CHANNEL_CHECK_MS (one small read for all its
 * waiters; nothing while nobody waits).
 */
export class ChannelWatch {
  /**
   * Channel -> (known release, rollout token) -> its waiters: a check compares each such
   * pair once, not every waiter (100,000 idle followers of one channel are one pair).
   */
  private readonly waiting = new Map<string, Map<string, Set<Waiter>>>();
  private timer: NodeJS.Timeout | null = null;
  private checking = false;

  /**
   * `read`: a channel's head now (the server's ChannelBook); `rolloutToken`: what the
   * channel's rollouts look like now (RolloutService.token), compared with a waiter's.
   */
  constructor(
    private readonly read: (name: string) => Promise<ChannelHead | null>,
    private readonly rolloutToken: (name: string) => string = () => '',
  ) {}

  /**
   * Resolves when channel `name` no longer names release `known`, or (given `rollout`)
   * its rollout token is no longer `rollout`, after `waitMs`, when `signal` aborts (the
   * client went away) or on close(), whichever is first.
   */
  wait(name: string, known: string, waitMs: number, signal: AbortSignal, rollout?: string): Promise<void> {
    return new Promise<void>((resolve) => {
      let pairs = this.waiting.get(name);
      if (!pairs) this.waiting.set(name, (pairs = new Map()));
      const pair = rollout === undefined ? known : `${known} ${rollout}`;
      let set = pairs.get(pair);
      if (!set) pairs.set(pair, (set = new Set()));
      const w: Waiter = { known, rollout, done };
      const t = setTimeout(done, Math.min(waitMs, MAX_FOLLOWING_WAIT_MS));
      const waiters = set;
      function done() {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        waiters.delete(w);
        resolve();
      }
      if (signal.aborted) return done();
      signal.addEventListener('abort', done, { once: true });
      waiters.add(w);
      this.schedule();
    });
  }

  /** Requests held right now (all channels). */
  held(): number {
    let n = 0;
    for (const pairs of this.waiting.values()) for (const s of pairs.values()) n += s.size;
    return n;
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.check(), CHANNEL_CHECK_MS);
    this.timer.unref();
  }

  private async check(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      for (const [name, pairs] of this.waiting) {
        for (const [pair, set] of pairs) if (set.size === 0) pairs.delete(pair);
        if (pairs.size === 0) {
          this.waiting.delete(name);
          continue;
        }
        const head: ChannelHead | null = await this.read(name).catch(() => null);
        const token = this.rolloutToken(name);
        // A channel that vanished or cannot be read ends the wait too: the answer says why.
        for (const [pair, set] of pairs) {
          const w0 = set.values().next().value as Waiter | undefined;
          if (!w0 || (head && head.release === w0.known && (w0.rollout === undefined || w0.rollout === token))) continue;
          pairs.delete(pair);
          for (const w of set) w.done();
        }
      }
      if (this.waiting.size === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = null;
      }
    } finally {
      this.checking = false;
    }
  }

  /** Answer every held request now (server stop). */
  close(): void {
    for (const pairs of this.waiting.values()) for (const set of pairs.values()) for (const w of [...set]) w.done();
    this.waiting.clear();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
