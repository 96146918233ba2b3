import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { fsyncDir, writeAtomic } from '../storage/files';
import { batchBytes, checkReleaseName, parseStreamHead, peekBatch, StreamBatch, StreamHead } from './stream-manifest';

/**
 * A stream on disk, under `<store>/streams/<name>/` (docs/protocol.md, "Streams (1.4)"):
 *   units/<n>     the bytes of unit n (n in decimal)
 *   batches/<i>   the batch file of batch i
 *   head          the head (StreamHead JSON), replaced atomically
 * The publisher writes and fsyncs a batch's units (and their directory) before it writes
 * the batch, and the batch before the head: a crash never leaves a batch naming a unit
 * that is not on disk, and the batch files are the truth a restart rebuilds from.
 * The server reads the same files (several readers, one writer).
 */
export class StreamStore {
  readonly dir: string;
  constructor(readonly storeDir: string, readonly name: string) {
    const err = checkReleaseName(name);
    if (err) throw new FleetcastError('BAD_NAME', `stream ${err}: ${JSON.stringify(name)}`, ExitCode.USAGE);
    this.dir = path.join(storeDir, 'streams', name);
  }

  unitPath(n: number): string {
    return path.join(this.dir, 'units', String(n));
  }
  batchPath(i: number): string {
    return path.join(this.dir, 'batches', String(i));
  }

  async readBatchRaw(i: number): Promise<Buffer | null> {
    try {
      return await fs.readFile(this.batchPath(i));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw fromSystemError(err, `reading ${this.batchPath(i)}`);
    }
  }

  /** A stored batch, its signature unchecked (see peekBatch; the publisher checks the last one against its key). */
  async readBatch(i: number): Promise<StreamBatch | null> {
    const raw = await this.readBatchRaw(i);
    return raw && peekBatch(raw);
  }

  /**
   * The head, or null when the stream does not exist. The head file may lag its batches by
   * one when the publisher died between the two writes: batches past it are taken in.
   */
  async head(): Promise<StreamHead | null> {
    let raw: Buffer;
    try {
      raw = await fs.readFile(path.join(this.dir, 'head'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw fromSystemError(err, `reading ${this.dir}/head`);
    }
    const h = parseStreamHead(raw);
    for (let n = 0; n < 64 && !h.ended; n++) {
      const b = await this.readBatch(h.lastBatch + 1).catch(() => null);
      if (!b || b.first !== h.nextUnit) break;
      advanceHead(h, b);
    }
    return h;
  }

  async writeHead(h: StreamHead): Promise<void> {
    await writeAtomic(path.join(this.dir, 'head'), Buffer.from(JSON.stringify(h) + '\n'));
  }

  /** The index of the retained batch that covers `unit`, by binary search over batch files; null if none. */
  async batchFor(unit: number, h: StreamHead): Promise<number | null> {
    if (unit < h.firstUnit || unit >= h.nextUnit) return null;
    let lo = h.firstBatch;
    let hi = h.lastBatch;
    while (lo <= hi) {
      const mid = Math.floor((lo + hi) / 2);
      const b = await this.readBatch(mid);
      if (!b) return null;
      if (unit < b.first) hi = mid - 1;
      else if (unit >= b.first + b.count) lo = mid + 1;
      else return mid;
    }
    return null;
  }

  /** Create the directories of a new stream. */
  async create(): Promise<void> {
    for (const d of ['units', 'batches']) {
      await fs.mkdir(path.join(this.dir, d), { recursive: true }).catch((err) => {
        throw fromSystemError(err, `creating ${path.join(this.dir, d)}`);
      });
    }
  }

  /** Write a unit's bytes, synced (its directory entry is synced by appendBatch). */
  async writeUnit(n: number, bytes: Uint8Array): Promise<void> {
    const fh = await fs.open(this.unitPath(n), 'w');
    try {
      await fh.writeFile(bytes);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  /** After its units: the batch file, then the head. */
  async appendBatch(b: StreamBatch, h: StreamHead): Promise<void> {
    await fsyncDir(path.join(this.dir, 'units'));
    await writeAtomic(this.batchPath(b.batch), b.raw);
    await fsyncDir(path.join(this.dir, 'batches'));
    await this.writeHead(h);
  }

  /**
   * Rebuild after a crash: the last batch file is the truth; unit files past it (written
   * before a batch that never was) and temporary files go. Null for a stream never started.
   */
  async recover(): Promise<{ last: StreamBatch; head: StreamHead } | null> {
    const indices = await this.listNumbers('batches');
    if (indices.length === 0) {
      // Started, but died before its first batch: its units are nobody's.
      for (const n of await this.listNumbers('units')) await fs.rm(this.unitPath(n), { force: true });
      return null;
    }
    const lastIndex = indices[indices.length - 1];
    const last = await this.readBatch(lastIndex);
    if (!last) return null;
    const old = await this.head().catch(() => null);
    const firstBatch = indices[0];
    const firstOfFirst = firstBatch === lastIndex ? last : await this.readBatch(firstBatch);
    const head: StreamHead = {
      stream: last.stream,
      id: last.id,
      unitSize: last.unitSize,
      firstUnit: Math.max(old?.id === last.id ? old.firstUnit : 0, firstOfFirst?.first ?? last.first),
      firstBatch,
      lastBatch: lastIndex,
      nextUnit: last.first + last.count,
      bytes: last.offset + batchBytes(last),
      time: last.time,
      ended: last.final === true,
    };
    // Past the last batch: written before a batch that never was. Before the first retained: a
    // retention step that moved the head and died before it deleted them.
    for (const n of await this.listNumbers('units')) if (n >= head.nextUnit || n < head.firstUnit) await fs.rm(this.unitPath(n), { force: true });
    for (const d of ['batches', 'units', '.']) {
      for (const f of await fs.readdir(path.join(this.dir, d)).catch(() => [] as string[])) if (f.endsWith('.tmp')) await fs.rm(path.join(this.dir, d, f), { force: true });
    }
    await this.writeHead(head);
    return { last, head };
  }

  /**
   * Drop every unit before `unit` and every batch that covers only dropped units; the head
   * moves first, so a reader never sees a retained unit that is gone.
   */
  async dropBefore(unit: number, h: StreamHead): Promise<void> {
    if (unit <= h.firstUnit) return;
    const firstBatch = (await this.batchFor(unit, h)) ?? h.lastBatch;
    const from = h.firstUnit;
    const fromBatch = h.firstBatch;
    h.firstUnit = unit;
    h.firstBatch = firstBatch;
    await this.writeHead(h);
    for (let n = from; n < unit; n++) await fs.rm(this.unitPath(n), { force: true });
    for (let i = fromBatch; i < firstBatch; i++) await fs.rm(this.batchPath(i), { force: true });
  }

  /** Bytes of the unit files on disk (for tests and progress). */
  async unitBytesOnDisk(): Promise<number> {
    let sum = 0;
    for (const n of await this.listNumbers('units')) sum += (await fs.stat(this.unitPath(n)).catch(() => ({ size: 0 }))).size;
    return sum;
  }

  async listNumbers(sub: 'units' | 'batches'): Promise<number[]> {
    const names = await fs.readdir(path.join(this.dir, sub)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw fromSystemError(err, `reading ${path.join(this.dir, sub)}`);
    });
    return names.filter((f) => /^(0|[1-9]\d{0,15})$/.test(f)).map(Number).sort((a, b) => a - b);
  }
}

/** Move head `h` past batch `b` (which follows it). */
export function advanceHead(h: StreamHead, b: StreamBatch): void {
  h.lastBatch = b.batch;
  h.nextUnit = b.first + b.count;
  h.bytes = b.offset + batchBytes(b);
  h.time = b.time;
  h.ended = b.final === true;
}
