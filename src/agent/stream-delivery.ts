import type { KeyObject } from 'node:crypto';
import type { StreamBatch } from '../release/stream-manifest';
import { coversUnit } from '../release/stream-manifest';
import { fromSystemError } from '../util/errors';
import type { Logger } from '../util/log';
import type { StreamCore } from './stream-core';
import type { StreamDisk } from './stream-disk';
import { openStreamSink, StreamSink } from './stream-sink';

export interface StreamDeliveryOptions {
  stream: string;
  /** FILE, -, unix:PATH or exec:CMD (stream-sink.ts). */
  sink: string;
  trustedKeys: KeyObject[];
}

/** Latency samples kept for the percentiles (the newest). */
const LATENCY_SAMPLES = 4096;

/**
 * Delivery of a stream's verified units to the sink: in order, exactly once, as soon as
 * they are contiguous (NORM_OBJECT_STREAM's in-order read, RFC 5740 section 4.2.1.3). The
 * units wait on disk (stream-disk.ts) until their turn, so a slow sink never holds up the
 * LAN exchange. After each unit the position (next unit, sink bytes, the batch covering
 * it) is saved, so a restart goes on from there: a file sink is cut back to the recorded
 * bytes and nothing is written twice or left out.
 */
export class StreamDelivery {
  next: number;
  /** Verified batches from the one covering `next` on; the last is the chain's tip. */
  private readonly batches: StreamBatch[] = [];
  private endUnit: number | null = null;
  /** Units before this are gone from the server (retention): missing ones are gaps. */
  private floor = 0;
  private pumping = false;
  private again = false;
  private closed = false;
  /** Units lost to retention before they arrived, and the runs they made. */
  gapUnits = 0;
  gaps = 0;
  /** Publish-to-delivery latencies (ms): now minus the covering batch's signing time. */
  readonly latenciesMs: number[] = [];
  lastDeliveredAt = 0;
  private done!: { resolve: () => void; reject: (e: Error) => void };
  readonly finished: Promise<void>;

  private constructor(
    private readonly o: StreamDeliveryOptions,
    private readonly disk: StreamDisk,
    private readonly core: StreamCore,
    readonly sink: StreamSink,
    next: number,
    anchor: StreamBatch,
    private readonly log: Logger,
  ) {
    this.next = next;
    this.batches.push(anchor);
    this.finished = new Promise((resolve, reject) => (this.done = { resolve, reject }));
    this.finished.catch(() => undefined);
  }

  static async open(o: StreamDeliveryOptions, disk: StreamDisk, core: StreamCore, anchor: StreamBatch, next: number, resumeBytes: number | null, log: Logger): Promise<StreamDelivery> {
    const sink = await openStreamSink(o.sink, resumeBytes);
    return new StreamDelivery(o, disk, core, sink, next, anchor, log);
  }

  get lastBatch(): StreamBatch {
    return this.batches[this.batches.length - 1];
  }

  addBatch(b: StreamBatch): void {
    this.batches.push(b);
  }

  /** The stream's last unit is `endUnit - 1`: done once it is delivered. */
  endAt(endUnit: number): void {
    this.endUnit = endUnit;
    this.pump();
  }

  /** The server keeps units from `firstUnit` on: older ones not here by now never come. */
  retained(firstUnit: number): void {
    if (firstUnit <= this.floor) return;
    this.floor = firstUnit;
    this.core.skipBefore(Math.max(firstUnit, 0));
    this.pump();
  }

  /** Deliver what is contiguous from `next`; one run at a time. */
  pump(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    void this.run().then(
      () => {
        this.pumping = false;
        if (this.again) {
          this.again = false;
          this.pump();
        }
      },
      (err: Error) => {
        this.pumping = false;
        this.done.reject(err);
      },
    );
  }

  private async run(): Promise<void> {
    for (;;) {
      this.again = false;
      if (this.closed) return;
      if (this.endUnit !== null && this.next >= this.endUnit) {
        this.log.info(`stream ${this.o.stream}: ended; ${this.sink.bytes} bytes delivered`);
        return this.done.resolve();
      }
      const u = this.next;
      if (!this.disk.held.has(u)) {
        if (u >= this.floor) return;
        // Dropped by the server before any member here had it: a gap, said as such.
        let end = u;
        while (end < this.floor && !this.disk.held.has(end)) end++;
        this.gaps++;
        this.gapUnits += end - u;
        this.log.warn(`stream ${this.o.stream}: GAP units ${u} to ${end - 1} were dropped by retention before they arrived; delivery goes on at unit ${end}`);
        this.next = end;
        continue;
      }
      const bytes = await this.disk.readUnit(u);
      await this.sink.write(bytes).catch((err) => {
        throw fromSystemError(err, `writing the sink ${this.o.sink}`);
      });
      this.next = u + 1;
      const now = Date.now();
      while (this.batches.length > 1 && !coversUnit(this.batches[0], u)) this.batches.shift();
      const b = this.batches[0];
      this.latenciesMs.push(Math.max(0, now - Date.parse(b.time)));
      if (this.latenciesMs.length > LATENCY_SAMPLES) this.latenciesMs.shift();
      this.lastDeliveredAt = now;
      await this.disk.savePosition({ v: 1, stream: b.stream, id: b.id, nextUnit: this.next, sinkBytes: this.sink.bytes, batch: b.raw.toString('utf8') });
      await this.dropBelow(this.floor);
    }
  }

  /**
   * Units stay on disk (peers' repairs, late joiners from the beginning) until the
   * server's retention drops them: an agent keeps what the stream keeps.
   */
  private async dropBelow(floor: number): Promise<void> {
    for (const h of this.disk.held) if (h < floor && h < this.next) await this.disk.drop(h);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.sink.close();
  }
}
