import { createPublicKey, KeyObject, randomBytes } from 'node:crypto';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { lockStorage, DirLock } from '../storage/dir-lock';
import { DEFAULT_UNIT_BYTES, MAX_UNIT_BYTES, MIN_UNIT_BYTES } from '../wire/manifest';
import { rawPublicKey } from './keys';
import { batchBytes, batchSignerKey, MAX_BATCH_UNITS, parseBatch, signBatch, StreamBatch, StreamBatchBody, StreamHead, unitHash, ZERO_HASH } from './stream-manifest';
import { advanceHead, StreamStore } from './stream-store';

const LOCK_ATTEMPTS = 10;

/** How much of a stream to keep: the last `units` units, or the units of batches younger than `ms`. */
export type Retention = { units: number } | { ms: number } | null;

export interface StreamPublishOptions {
  unitSize?: number;
  /** Close a unit that is not full this long after its first byte arrived. */
  flushMs?: number;
  retain?: Retention;
  now?: () => number;
}

/**
 * The publishing side of a stream (docs/protocol.md, "Streams (1.4)"): bytes go in with
 * push(); full units, and a partial one once it is `flushMs` old, are written to the
 * store with a signed batch naming them; end() closes the stream with a final batch.
 * Operations run one at a time in order (the flush timer queues behind a push's batch).
 */
export class StreamPublisher {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Units cut but not yet in a batch. */
  private ready: Buffer[] = [];
  private timer: NodeJS.Timeout | null = null;
  private queue: Promise<void> = Promise.resolve();
  private failure: unknown = null;
  private readonly now: () => number;
  readonly unitSize: number;
  /** Per batch written, ms from its signing to its batch file and head stored (the newest 4096). */
  readonly storeMs: number[] = [];

  private constructor(
    readonly store: StreamStore,
    private readonly key: KeyObject,
    private last: StreamBatch | null,
    readonly head: StreamHead,
    private readonly opts: StreamPublishOptions,
    private readonly lock: DirLock,
  ) {
    this.unitSize = head.unitSize;
    this.now = opts.now ?? Date.now;
  }

  /**
   * Open stream `name` in `storeDir`: continue its chain when it exists (the unit size is
   * the stream's; a different --unit-size is an error), or start a new one.
   */
  static async open(storeDir: string, name: string, key: KeyObject, opts: StreamPublishOptions = {}): Promise<StreamPublisher> {
    const unitSize = opts.unitSize ?? DEFAULT_UNIT_BYTES;
    if (!Number.isSafeInteger(unitSize) || unitSize < MIN_UNIT_BYTES || unitSize > MAX_UNIT_BYTES) {
      throw new FleetcastError('BAD_UNIT_SIZE', `--unit-size must be an integer from ${MIN_UNIT_BYTES} to ${MAX_UNIT_BYTES}`, ExitCode.USAGE);
    }
    const store = new StreamStore(storeDir, name);
    await store.create();
    let lock: DirLock | null = null;
    // A lock this process just released stays bound while a child it forked meanwhile has not
    // yet exec'd (the child holds a copy of the socket until then): try again for a moment.
    for (let attempt = 0; !lock; attempt++) {
      try {
        lock = await lockStorage(store.dir);
      } catch (err) {
        if ((err as FleetcastError).code !== 'LOCKED') throw err;
        if (attempt >= LOCK_ATTEMPTS) throw new FleetcastError('LOCKED', `stream ${name} in ${storeDir} is being published by another process`, ExitCode.CANTCREAT);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    try {
      const found = await store.recover();
      if (!found) {
        const head: StreamHead = { stream: name, id: randomBytes(16).toString('hex'), unitSize, firstUnit: 0, firstBatch: 0, lastBatch: -1, nextUnit: 0, bytes: 0, time: new Date(opts.now?.() ?? Date.now()).toISOString(), ended: false };
        return new StreamPublisher(store, key, null, head, opts, lock);
      }
      const { last, head } = found;
      if (!rawPublicKey(batchSignerKey(last.raw)).equals(rawPublicKey(createPublicKey(key)))) {
        throw new FleetcastError('OTHER_KEY', `stream ${name} is signed with another key than --key; continue it with the key that started it, or publish under a new name`, ExitCode.DATAERR);
      }
      // The chain goes on from this batch: it must be ours as it was signed.
      parseBatch(last.raw, [createPublicKey(key)]);
      if (head.ended) throw new FleetcastError('ENDED', `stream ${name} has ended (its last batch, ${last.batch}, is final); publish under a new name`, ExitCode.USAGE);
      if (opts.unitSize !== undefined && opts.unitSize !== head.unitSize) {
        throw new FleetcastError('BAD_UNIT_SIZE', `stream ${name} has units of ${head.unitSize} bytes; --unit-size ${opts.unitSize} cannot change that`, ExitCode.USAGE);
      }
      return new StreamPublisher(store, key, last, head, opts, lock);
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  /** The batch to come and the byte offset the next unit starts at (what a restart continues from). */
  get position(): { batch: number; unit: number; bytes: number } {
    return { batch: this.head.lastBatch + 1, unit: this.head.nextUnit + this.ready.length, bytes: this.head.bytes + this.ready.reduce((s, u) => s + u.length, 0) };
  }

  /** Take bytes in; cuts the units they fill, and batches them. Resolves when they are stored. */
  push(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      const take = Math.min(this.unitSize - this.pendingBytes, chunk.length - off);
      this.pending.push(chunk.subarray(off, off + take));
      this.pendingBytes += take;
      off += take;
      if (this.pendingBytes === this.unitSize) this.cut();
    }
    if (this.pendingBytes > 0 && !this.timer && this.opts.flushMs !== undefined) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.cut();
        void this.enqueue(() => this.writeBatch(false)).catch(() => undefined);
      }, this.opts.flushMs);
    }
    return this.ready.length > 0 ? this.enqueue(() => this.writeBatch(false)) : this.enqueue(async () => undefined);
  }

  /** Close the partial unit (if any) and write what is ready in a batch. */
  flush(): Promise<void> {
    this.cut();
    return this.enqueue(() => this.writeBatch(false));
  }

  /** The end marker: what is left in a final batch. No push() after it. */
  async end(): Promise<void> {
    this.cut();
    await this.enqueue(() => this.writeBatch(true));
  }

  /** Stop the timer and let other processes publish the stream. */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.queue.catch(() => undefined);
    await this.lock.release();
  }

  private cut(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.pendingBytes === 0) return;
    this.ready.push(this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending));
    this.pending = [];
    this.pendingBytes = 0;
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const p = this.queue.then(() => {
      if (this.failure) throw this.failure;
      return fn();
    });
    this.queue = p.catch((err) => {
      this.failure ??= err;
    });
    return p;
  }

  private async writeBatch(final: boolean): Promise<void> {
    if (this.head.ended) return;
    while (this.ready.length > 0 || final) {
      // A short unit (cut by the flush timer) is the last of its batch: every other unit is full.
      let n = 0;
      while (n < this.ready.length && n < MAX_BATCH_UNITS) {
        n++;
        if (this.ready[n - 1].length < this.unitSize) break;
      }
      const units = this.ready.slice(0, n);
      const isFinal = final && n === this.ready.length;
      const body: StreamBatchBody = {
        v: 1,
        stream: this.head.stream,
        id: this.head.id,
        batch: this.head.lastBatch + 1,
        first: this.head.nextUnit,
        offset: this.head.bytes,
        count: n,
        unitSize: this.unitSize,
        units: units.map((u) => unitHash(u)),
        lastLength: n === 0 ? 0 : units[n - 1].length,
        prev: this.last?.hash ?? ZERO_HASH,
        time: new Date(this.now()).toISOString(),
        ...(isFinal ? { final: true as const } : {}),
      };
      const batch = signBatch(body, this.key);
      try {
        for (let i = 0; i < n; i++) await this.store.writeUnit(body.first + i, units[i]);
        const next = { ...this.head };
        if (next.lastBatch < 0) next.firstBatch = 0;
        advanceHead(next, batch);
        await this.store.appendBatch(batch, next);
        Object.assign(this.head, next);
        this.storeMs.push(this.now() - Date.parse(body.time));
        if (this.storeMs.length > 4096) this.storeMs.shift();
      } catch (err) {
        throw fromSystemError(err, `writing stream ${this.head.stream} to ${this.store.dir}`);
      }
      this.ready.splice(0, n);
      this.last = batch;
      await this.applyRetention();
      if (isFinal) return;
    }
  }

  private async applyRetention(): Promise<void> {
    const r = this.opts.retain;
    if (!r) return;
    if ('units' in r) return this.store.dropBefore(Math.max(0, this.head.nextUnit - r.units), this.head);
    // By age: drop whole batches older than r.ms, the newest batch always stays.
    const cutoff = this.now() - r.ms;
    let keepFrom = this.head.firstUnit;
    for (let i = this.head.firstBatch; i < this.head.lastBatch; i++) {
      const b = await this.store.readBatch(i);
      if (!b || Date.parse(b.time) >= cutoff) break;
      keepFrom = b.first + b.count;
    }
    await this.store.dropBefore(keepFrom, this.head);
  }

  /** Stream bytes published so far, for progress lines. */
  get publishedBytes(): number {
    return this.head.bytes;
  }
  get lastBatch(): StreamBatch | null {
    return this.last;
  }
  get retainedUnits(): number {
    return this.head.nextUnit - this.head.firstUnit;
  }
  get batchBytesOfLast(): number {
    return this.last ? batchBytes(this.last) : 0;
  }
}

/** `--retain`: a unit count (`500`) or a duration (`90s`, `30m`, `2h`, `1d`). Null when malformed. */
export function parseRetention(s: string): Retention | null {
  const m = /^(\d{1,12})(s|m|h|d)?$/.exec(s.trim());
  if (!m) return null;
  const n = Number(m[1]);
  if (n <= 0) return null;
  if (!m[2]) return { units: n };
  return { ms: n * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'] };
}
