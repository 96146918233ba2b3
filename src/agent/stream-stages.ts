import { appendFileSync } from 'node:fs';

/**
 * Where a stream unit's publish-to-delivery time goes, unit by unit: the times (ms since
 * the epoch, this machine's clock) at which this agent passed each stage. The publisher's
 * signing time comes from the batch. Kept for the newest MAX_TRACKED units only.
 *
 *   signed    the publisher signed the batch naming the unit (the batch's `time`)
 *   known     this agent verified that batch (its long poll answered)
 *   leased    the server leased the unit to this agent (units it fetches only)
 *   fetched   its WAN download ended, verified (units it fetches only)
 *   held      the unit was on this agent's disk, verified (from the WAN or the LAN)
 *   delivered it was written to the sink
 *
 * With FLEETCAST_STREAM_STAGES=FILE set, each delivered unit's record is appended to FILE
 * as a JSON line (the bench reads them); without it nothing is written.
 */
export interface UnitStages {
  unit: number;
  signed: number;
  known?: number;
  leased?: number;
  fetched?: number;
  held?: number;
  delivered?: number;
  /** Where the unit came from: this agent's WAN download, or its LAN peers. */
  from?: 'wan' | 'lan';
}

const MAX_TRACKED = 8192;

export class StreamStages {
  private readonly units = new Map<number, UnitStages>();
  private readonly file = process.env.FLEETCAST_STREAM_STAGES || null;
  private lines: string[] = [];

  private get(u: number): UnitStages {
    let s = this.units.get(u);
    if (!s) {
      s = { unit: u, signed: NaN };
      this.units.set(u, s);
      if (this.units.size > MAX_TRACKED) this.units.delete(this.units.keys().next().value as number);
    }
    return s;
  }

  /** A verified batch: its units' signing time, and when this agent learnt of them. */
  known(first: number, count: number, signedAt: number, now: number): void {
    for (let u = first; u < first + count; u++) {
      const s = this.get(u);
      s.signed = signedAt;
      s.known ??= now;
    }
  }

  leased(u: number, now: number): void {
    this.get(u).leased ??= now;
  }

  fetched(u: number, now: number): void {
    const s = this.get(u);
    s.fetched ??= now;
    s.from = 'wan';
  }

  held(u: number, now: number): void {
    const s = this.get(u);
    if (s.held !== undefined) return;
    s.held = now;
    s.from ??= 'lan';
  }

  delivered(u: number, now: number): void {
    const s = this.units.get(u);
    if (!s) return;
    s.delivered = now;
    this.units.delete(u);
    if (this.file) {
      this.lines.push(JSON.stringify(s));
      if (this.lines.length >= 64) this.flush();
    }
  }

  /** Append the records not yet written (at the end, and every 64 units). */
  flush(): void {
    if (!this.file || this.lines.length === 0) return;
    const text = this.lines.join('\n') + '\n';
    this.lines = [];
    try {
      appendFileSync(this.file, text);
    } catch {
      /* a debug aid: it never fails the agent */
    }
  }
}
