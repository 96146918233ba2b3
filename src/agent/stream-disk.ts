import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeAtomic } from '../storage/files';
import { makeDir } from '../storage/make-dir';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { parsePositionText, StreamPosition } from '../wire/stream-position';

/** Bytes of just-written units StreamDisk keeps in memory for the sink (64 units of 64 KiB). */
export const UNIT_CACHE_BYTES = 4 * 1024 * 1024;

/** A position file's text; BAD_POSITION (exit 65) when it is not one. The batch in it is verified when used. */
export function parseStreamPosition(raw: string, file: string): StreamPosition {
  const s = parsePositionText(raw);
  if (!s) throw new FleetcastError('BAD_POSITION', `${file} is not a stream position file (remove it to start the stream over)`, ExitCode.DATAERR);
  return s;
}

/**
 * An agent's disk for one stream, `<storage>/streams/<name>/`: verified units waiting to
 * be delivered or kept for repairs (`units/<n>`, written whole then renamed, so a file
 * there is a whole unit), and the delivery position. The units here are the disk buffer
 * between the LAN exchange and a slow sink; retention and delivery delete them.
 */
export class StreamDisk {
  readonly unitsDir: string;
  readonly positionFile: string;
  /** Units on disk, verified. */
  readonly held = new Set<number>();
  bytesHeld = 0;
  /** Called when a unit is on disk (stage timing, stream-stages.ts). */
  onHeld: (unit: number) => void = () => undefined;
  private readonly sizes = new Map<number, number>();
  /**
   * Units just written, kept in memory too (the lowest numbers, at most UNIT_CACHE_BYTES):
   * the sink takes them from here instead of reading each back from disk. Every async file
   * operation is a thread-pool round trip; on the 2-core bench box one costs 75-225 µs of
   * CPU, and reading a unit back took four (open, fstat, read, close). The disk copy stays
   * what a restart, a slow sink and most repairs read.
   */
  private readonly recent = new Map<number, Buffer>();
  private recentBytes = 0;
  /** Units the sink took from memory, and those it read back from disk. */
  readonly reads = { memory: 0, disk: 0 };

  private constructor(readonly dir: string) {
    this.unitsDir = path.join(dir, 'units');
    this.positionFile = path.join(dir, 'position');
  }

  /**
   * Open (creating) the stream's directory. Units an earlier run left are kept (each was
   * verified before it was written, and renamed into place whole); `*.tmp` files go.
   */
  static async open(storageDir: string, name: string): Promise<StreamDisk> {
    const d = new StreamDisk(path.join(storageDir, 'streams', name));
    try {
      await makeDir(d.unitsDir);
      for (const f of await fs.readdir(d.unitsDir)) {
        if (!/^(0|[1-9]\d{0,14})$/.test(f)) {
          await fs.rm(path.join(d.unitsDir, f), { force: true });
          continue;
        }
        const n = Number(f);
        const size = (await fs.stat(path.join(d.unitsDir, f))).size;
        d.held.add(n);
        d.sizes.set(n, size);
        d.bytesHeld += size;
      }
    } catch (err) {
      throw fromSystemError(err, `opening ${d.unitsDir}`);
    }
    return d;
  }

  async position(): Promise<StreamPosition | null> {
    let raw: string;
    try {
      raw = await fs.readFile(this.positionFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw fromSystemError(err, `reading ${this.positionFile}`);
    }
    return parseStreamPosition(raw, this.positionFile);
  }

  async savePosition(p: StreamPosition): Promise<void> {
    await writeAtomic(this.positionFile, Buffer.from(JSON.stringify(p) + '\n')).catch((err) => {
      throw fromSystemError(err, `writing ${this.positionFile}`);
    });
  }

  private unitPath(n: number): string {
    return path.join(this.unitsDir, String(n));
  }

  /** The core's storage interface (PartialStore's shape): write a verified unit whole. */
  async writeUnit(unit: number, bytes: Uint8Array, released?: () => void): Promise<void> {
    const p = this.unitPath(unit);
    // Our own copy: the caller's buffer is free at once (a pooled download or assembly buffer).
    const copy = Buffer.from(bytes);
    released?.();
    try {
      await fs.writeFile(`${p}.tmp`, copy);
      await fs.rename(`${p}.tmp`, p);
    } catch (err) {
      throw fromSystemError(err, `writing ${p}`);
    }
    if (!this.held.has(unit)) {
      this.held.add(unit);
      this.sizes.set(unit, copy.length);
      this.bytesHeld += copy.length;
      this.remember(unit, copy);
      this.onHeld(unit);
    }
  }

  /** Keep a written unit in memory, unless the units kept already fill the cache and are all older. */
  private remember(unit: number, bytes: Buffer): void {
    this.recent.set(unit, bytes);
    this.recentBytes += bytes.length;
    while (this.recentBytes > UNIT_CACHE_BYTES) {
      let newest = -1;
      for (const u of this.recent.keys()) if (u > newest) newest = u;
      this.forget(newest);
    }
  }

  private forget(unit: number): void {
    const b = this.recent.get(unit);
    if (!b) return;
    this.recent.delete(unit);
    this.recentBytes -= b.length;
  }

  async readUnit(unit: number, into?: Buffer): Promise<Buffer> {
    if (!this.held.has(unit)) throw new Error(`unit ${unit} is not on disk`);
    const b = this.recent.get(unit) ?? (await fs.readFile(this.unitPath(unit)));
    if (!into || into.length < b.length) return b;
    b.copy(into);
    return into.subarray(0, b.length);
  }

  /** A unit for the sink: from memory when it is still there (and then no longer kept), else from disk. */
  async takeUnit(unit: number): Promise<Buffer> {
    const b = this.recent.get(unit);
    if (b && this.held.has(unit)) {
      this.forget(unit);
      this.reads.memory++;
      return b;
    }
    this.reads.disk++;
    return this.readUnit(unit);
  }

  /** Bytes of the units held from `unit` on. */
  bytesFrom(unit: number): number {
    let n = 0;
    for (const [u, size] of this.sizes) if (u >= unit) n += size;
    return n;
  }

  /** Drop a unit from disk (delivered and past what repairs need, or retention). */
  async drop(unit: number): Promise<void> {
    if (!this.held.delete(unit)) return;
    this.forget(unit);
    this.bytesHeld -= this.sizes.get(unit) ?? 0;
    this.sizes.delete(unit);
    await fs.rm(this.unitPath(unit), { force: true }).catch(() => undefined);
  }
}
