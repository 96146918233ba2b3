/**
 * Bytes per second over the last `windowMs`, from (time, bytes done) samples: what a
 * progress line shows as the rate and divides the rest by for the ETA.
 */
export class RateMeter {
  private readonly samples: { at: number; bytes: number }[] = [];
  constructor(
    private readonly windowMs = 5000,
    private readonly now: () => number = Date.now,
  ) {}

  add(bytes: number): void {
    const at = this.now();
    const last = this.samples.at(-1);
    if (last && bytes < last.bytes) this.samples.length = 0; // a new transfer
    this.samples.push({ at, bytes });
    while (this.samples.length > 2 && at - this.samples[1].at >= this.windowMs) this.samples.shift();
  }

  /** Bytes per second, or null before two samples a moment apart. */
  rate(): number | null {
    const a = this.samples[0];
    const b = this.samples.at(-1);
    if (!a || !b || b.at - a.at < 200) return null;
    return Math.max(0, (b.bytes - a.bytes) / ((b.at - a.at) / 1000));
  }
}

/** Bytes of a release held, from its verified unit count (only the last unit is short). */
export function verifiedBytes(p: { verified: number; total: number }, size: number, unitSize: number): number {
  return p.verified >= p.total ? size : Math.min(size, p.verified * unitSize);
}

