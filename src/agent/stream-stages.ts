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
 *
 * With it set, the LAN core's repair rounds are kept too (`lan`, RepairEvent): for a unit
 * taken from the LAN, when its copies came, when its gap was noticed, its NACKs and the
 * repairs that answered them. What this agent did as a repairer goes to FILE as lines of
 * their own, `{"repairer":UNIT,"ev":...,"t":...,"n":...}` (the unit is delivered here long
 * before a peer asks for it), so the bench can put both ends of a round side by side.
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
  /** The LAN core's repair events for the unit, in order: [event, time, count]. */
  lan?: [RepairEvent, number, number][];
}

/**
 * What the LAN core reports of a unit's repair rounds (LanCore.repairTrace).
 * As a receiver:
 *   copy      the first copy fragment of the unit arrived
 *   copyEnd   its last fragment arrived as a copy (the sender got to its end)
 *   last      the last data of the unit before its gap was noticed (traced with 'ripe', at its own time)
 *   ripe      its gap was noticed: the NACK backoff started (n: fragments missing)
 *   heard     another receiver's NACK for it was heard (n: fragments it asked for)
 *   again     a holdoff ended with fragments still missing: a new backoff (n: missing)
 *   nack      our NACK went out (n: fragments asked for)
 *   echo      our NACK went out once more, its echo delay after it, nothing of the unit having come (n: fragments)
 *   suppressed our backoff ended with every missing fragment asked for by others
 *   repair    the first repair fragment after a NACK (ours or heard) arrived
 * As a repairer (lines of their own in the file):
 *   nackIn    a NACK for a unit we answer (n: fragments asked; deduped: see next)
 *   dedup     fragments of that NACK dropped as repaired within dedupMs (n)
 *   sent      a repair of n fragments queued
 */
export type RepairEvent = 'copy' | 'copyEnd' | 'last' | 'ripe' | 'heard' | 'again' | 'nack' | 'echo' | 'suppressed' | 'repair' | 'nackIn' | 'dedup' | 'sent';

/** Repair events kept per unit at most. */
const MAX_EVENTS = 64;

const MAX_TRACKED = 8192;

export class StreamStages {
  private readonly units = new Map<number, UnitStages>();
  private readonly file = process.env.FLEETCAST_STREAM_STAGES || null;
  private lines: string[] = [];

  /** Whether records are written at all (the core traces repair rounds only then). */
  get enabled(): boolean {
    return this.file !== null;
  }

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

  /** A repair event of the LAN core (RepairEvent): on the unit's record, or a line of its own as a repairer. */
  repair(u: number, ev: RepairEvent, now: number, n = 0): void {
    if (!this.file) return;
    if (ev === 'nackIn' || ev === 'dedup' || ev === 'sent') {
      this.lines.push(JSON.stringify({ repairer: u, ev, t: now, n }));
      return;
    }
    const s = this.get(u);
    const l = (s.lan ??= []);
    if (l.length < MAX_EVENTS) l.push([ev, now, n]);
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
