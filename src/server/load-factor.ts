/** Busy share (of the last few seconds) above which heartbeat intervals grow, and below which they shrink back. */
export const BUSY_HIGH = 0.8;
export const BUSY_LOW = 0.6;
/** The most the load-chosen interval is stretched by (it stays at most 60 s). */
export const MAX_LOAD_FACTOR = 3;

/**
 * How much longer than the member count alone says 1.4 agents are asked to beat, from how
 * busy the server's own event loop was (docs/protocol.md section 14, "Interval by load").
 * heartbeats_per_sec assumes a request costs what it does under policy group; a heavier
 * mix (policy wide at 100,000 agents: whole maps of 200-member groups, longer deltas)
 * saturated the one core, requests waited in the socket for seconds, members timed out and
 * joined again with whole maps, which made it worse (issue 17). Pure: update() takes the
 * busy share of the tick just past (the server's EventLoopDelay measures it on the same tick).
 *
 * The busy share is smoothed (an EWMA over about five ticks). Above BUSY_HIGH the factor
 * grows by 5% a tick, to MAX_LOAD_FACTOR; below BUSY_LOW it shrinks by 2% a tick, to 1.
 * Members learn an interval with their next answer, so the factor moves slowly and only on
 * what the server measured, not on elapsed time alone.
 */
export class LoadFactor {
  factor = 1;
  busy = 0;

  update(busyShare: number): number {
    if (!Number.isFinite(busyShare)) return this.factor;
    this.busy += 0.2 * (Math.min(1, Math.max(0, busyShare)) - this.busy);
    if (this.busy > BUSY_HIGH) this.factor = Math.min(MAX_LOAD_FACTOR, this.factor * 1.05);
    else if (this.busy < BUSY_LOW) this.factor = Math.max(1, this.factor / 1.02);
    return this.factor;
  }
}
