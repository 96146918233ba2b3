/**
 * Token bucket pacing (pure: the caller passes `now` in ms). Tokens are bytes;
 * they refill at `rateBytesPerSec` up to `burstBytes`.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  /** Tokens lost to the burst limit so far (the pace went unused): a sender that lost none used all of it. */
  wastedBytes = 0;
  constructor(public rateBytesPerSec: number, public burstBytes: number, now: number) {
    this.tokens = burstBytes;
    this.last = now;
  }

  /** Brings the tokens (and wastedBytes) up to `now`. */
  refill(now: number): void {
    if (now > this.last) {
      const full = this.tokens + ((now - this.last) * this.rateBytesPerSec) / 1000;
      if (full > this.burstBytes) this.wastedBytes += full - this.burstBytes;
      this.tokens = Math.min(this.burstBytes, full);
      this.last = now;
    }
  }

  /** What take() would answer, without taking: 0, or ms to wait. */
  wait(bytes: number, now: number): number {
    this.refill(now);
    if (this.tokens >= bytes || (this.tokens >= this.burstBytes && bytes > this.burstBytes)) return 0;
    return Math.max(1, Math.ceil(((bytes - this.tokens) * 1000) / this.rateBytesPerSec));
  }

  /** Take `bytes` if available now: returns 0. Otherwise takes nothing and returns ms to wait. */
  take(bytes: number, now: number): number {
    const w = this.wait(bytes, now);
    if (w === 0) this.tokens -= bytes;
    return w;
  }
}
