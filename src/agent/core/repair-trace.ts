import type { RepairEvent } from '../stream-stages';
import type { Assembler } from './assembler';

export type RepairTraceSink = (unit: number, ev: RepairEvent, now: number, n: number) => void;

/**
 * The LAN core's repair rounds as events (stream-stages.ts, RepairEvent), for the stream
 * bench's "where the tail went": what the NACK and repair schedulers decide, and the data
 * that answers them. Only while a sink is set (FLEETCAST_STREAM_STAGES); no I/O here.
 */
export class RepairTrace {
  sink: RepairTraceSink | null = null;
  /** Units whose repair data arrived since our last NACK event for them (one 'repair' event per round). */
  private readonly repaired = new Set<number>();

  constructor(private readonly asm: Assembler) {}

  /** A scheduler's decision (NackScheduler, RepairScheduler trace option). */
  readonly event = (u: number, ev: RepairEvent, t: number, n: number): void => {
    if (!this.sink) return;
    if (ev === 'nack' || ev === 'echo' || ev === 'heard' || ev === 'suppressed') this.repaired.delete(u);
    if (ev === 'ripe') {
      const a = this.asm.get(u);
      if (a) this.sink(u, 'last', a.lastData, a.count);
    }
    this.sink(u, ev, t, n);
  };

  /** A DATA fragment of a unit we lack, taken into its assembly. */
  data(u: number, fragment: number, fc: number, repair: boolean, complete: boolean, now: number): void {
    if (!this.sink) return;
    if (repair) {
      if (!this.repaired.has(u)) {
        this.repaired.add(u);
        this.sink(u, 'repair', now, fragment);
      }
    } else if (fragment === fc - 1) this.sink(u, 'copyEnd', now, fragment);
    else if (this.asm.get(u)?.count === 1) this.sink(u, 'copy', now, fragment);
    if (complete) this.repaired.delete(u);
  }
}
