import type { KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { StreamBatch } from '../release/stream-manifest';
import { coversUnit } from '../release/stream-manifest';
import { fromSystemError } from '../util/errors';
import type { Logger } from '../util/log';
import type { StreamCore } from './stream-core';
import type { StreamDisk } from './stream-disk';
import { openStreamSink, StreamSink } from './stream-sink';
import { percentile } from './stream-status';

export interface StreamDeliveryOptions {
  stream: string;
  /** FILE, -, unix:PATH or exec:CMD (stream-sink.ts). */
  sink: string;
  trustedKeys: KeyObject[];
  /**
   * Undelivered bytes the agent buffers on disk for a slow sink (default 256 MiB). Past
   * it, `block` (default): the agent takes no more leases (its share goes to its peers)
   * and the sink catches up at its pace; `skip`: the oldest undelivered units are
   * dropped down to half the cap, with a gap marker (a GAP log line and a line in
   * `<storage>/streams/<name>/gaps`).
   */
  bufferMaxBytes?: number;
  onFull?: 'block' | 'skip';
}

export const DEFAULT_SINK_BUFFER_BYTES = 256 * 1024 * 1024;

/** The position is recorded (the sink synced first) at most this often while units flow. */
const COMMIT_EVERY_MS = 50;
/** Latency samples kept for the percentiles (the newest). */
const LATENCY_SAMPLES = 4096;

/**
 * Delivery of a stream's verified units to the sink: in order, exactly once, as soon as
 * they are contiguous (NORM_OBJECT_STREAM's in-order read, RFC 5740 section 4.2.1.3). The
 * units wait on disk (stream-disk.ts) until their turn, so a slow sink never holds up the
 * LAN exchange. After each unit the position (next unit, sink bytes, the batch covering
 * it) is saved (at most every COMMIT_EVERY_MS), so a restart goes on from there: a file sink is cut back to the recorded
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
  /** Units lost (retention, or skipped past the buffer cap) and the runs they made. */
  gapUnits = 0;
  gaps = 0;
  /**
   * Publish-to-delivery latencies (ms): now minus the covering batch's signing time, of the
   * units signed at or after `latencyFrom`. A unit published before the agent started (a
   * late joiner's history, or the units a restarted agent missed) measures how late it
   * started, not delivery: in the sites bench, unit 0 was signed before the agents were
   * spawned and carried their ~300 ms start-up into every agent's p99.
   */
  readonly latenciesMs: number[] = [];
  /** When the agent started following the stream (ms since the epoch; 0: every unit counts). */
  latencyFrom = 0;
  lastDeliveredAt = 0;
  /** Called after each unit's sink write (stage timing, stream-stages.ts). */
  onDelivered: (unit: number) => void = () => undefined;
  private uncommitted = false;
  private committedAt = 0;
  private commitTimer: NodeJS.Timeout | null = null;
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
        const p = (q: number) => percentile(this.latenciesMs, q) ?? NaN;
        this.log.info(`stream ${this.o.stream}: ended; ${this.sink.bytes} bytes delivered; latency p50 ${p(50)} ms p99 ${p(99)} ms; gaps ${this.gaps} (${this.gapUnits} units)`);
        await this.commit();
        return this.done.resolve();
      }
      if (this.o.onFull === 'skip' && this.pendingBytes() > this.bufferMax) {
        await this.skip();
        continue;
      }
      const u = this.next;
      if (!this.disk.held.has(u)) {
        if (u >= this.floor) {
          if (this.uncommitted && Date.now() - this.committedAt >= COMMIT_EVERY_MS) await this.commit();
          else if (this.uncommitted) this.commitLater();
          return;
        }
        // Dropped by the server before any member here had it: a gap, said as such.
        let end = u;
        while (end < this.floor && !this.disk.held.has(end)) end++;
        this.gaps++;
        this.gapUnits += end - u;
        await this.gap(u, end, 'dropped by retention before they arrived');
        continue;
      }
      const bytes = await this.disk.readUnit(u);
      await this.sink.write(bytes).catch((err) => {
        throw fromSystemError(err, `writing the sink ${this.o.sink}`);
      });
      this.next = u + 1;
      this.onDelivered(u);
      const now = Date.now();
      while (this.batches.length > 1 && !coversUnit(this.batches[0], u)) this.batches.shift();
      const b = this.batches[0];
      const signed = Date.parse(b.time);
      if (signed >= this.latencyFrom) this.latenciesMs.push(Math.max(0, now - signed));
      if (this.latenciesMs.length > LATENCY_SAMPLES) this.latenciesMs.shift();
      this.lastDeliveredAt = now;
      this.uncommitted = true;
      if (now - this.committedAt >= COMMIT_EVERY_MS) await this.commit();
      else this.commitLater();
    }
  }

  get bufferMax(): number {
    return this.o.bufferMaxBytes ?? DEFAULT_SINK_BUFFER_BYTES;
  }

  /** Bytes of verified units on disk not yet delivered: the sink's buffer. */
  pendingBytes(): number {
    return this.disk.bytesFrom(this.next);
  }

  /** Past the cap under `block`: take no more leases. */
  get full(): boolean {
    return this.o.onFull !== 'skip' && this.pendingBytes() > this.bufferMax;
  }

  /** `skip`: drop the oldest undelivered units until the buffer is at half its cap. */
  private async skip(): Promise<void> {
    const from = this.next;
    let end = from;
    while (this.pendingBytes() > this.bufferMax / 2) {
      await this.disk.drop(end);
      end++;
    }
    // Units in the run that had not arrived are in the gap too: delivery goes on after it.
    await this.gap(from, end, 'skipped: the sink is slower than the stream and the buffer reached its cap');
  }

  /** Units [from, to) will not be delivered: say so (log, counters, the gaps file) and go on at `to`. */
  private async gap(from: number, to: number, why: string): Promise<void> {
    this.gaps++;
    this.gapUnits += to - from;
    this.log.warn(`stream ${this.o.stream}: GAP units ${from} to ${to - 1} ${why}; delivery goes on at unit ${to} (sink byte ${this.sink.bytes})`);
    const line = JSON.stringify({ fromUnit: from, toUnit: to, sinkByte: this.sink.bytes, at: new Date().toISOString(), why }) + '\n';
    await fs.appendFile(path.join(this.disk.dir, 'gaps'), line).catch(() => undefined);
    this.next = to;
  }

  /**
   * Make what was delivered durable, then record it: the sink synced (a file), then the
   * position. At most every COMMIT_EVERY_MS, so a unit's delivery never waits for a
   * sync of its own; a restart goes on from the last position recorded (a file sink is
   * cut back to it, so nothing is written twice there).
   */
  private commitLater(): void {
    this.commitTimer ??= setTimeout(() => {
      this.commitTimer = null;
      this.pump();
    }, COMMIT_EVERY_MS);
  }

  private async commit(): Promise<void> {
    if (this.commitTimer) clearTimeout(this.commitTimer);
    this.commitTimer = null;
    if (!this.uncommitted) return;
    this.uncommitted = false;
    this.committedAt = Date.now();
    await this.sink.sync();
    const b = this.batches[0];
    await this.disk.savePosition({ v: 1, stream: b.stream, id: b.id, nextUnit: this.next, sinkBytes: this.sink.bytes, batch: b.raw.toString('utf8') });
    await this.dropBelow(this.floor);
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
    if (this.commitTimer) clearTimeout(this.commitTimer);
    this.commitTimer = null;
    // Stopped between units: record where the sink is (a unit being written is written again after a restart).
    if (!this.pumping) await this.commit().catch(() => undefined);
    await this.sink.close();
  }
}
