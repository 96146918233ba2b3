import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeAtomic } from '../storage/files';
import { makeDir } from '../storage/make-dir';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { parsePositionText, StreamPosition } from '../wire/stream-position';

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
    try {
      await fs.writeFile(`${p}.tmp`, bytes);
      released?.();
      await fs.rename(`${p}.tmp`, p);
    } catch (err) {
      released?.();
      throw fromSystemError(err, `writing ${p}`);
    }
    if (!this.held.has(unit)) {
      this.held.add(unit);
      this.sizes.set(unit, bytes.length);
      this.bytesHeld += bytes.length;
      this.onHeld(unit);
    }
  }

  async readUnit(unit: number, into?: Buffer): Promise<Buffer> {
    if (!this.held.has(unit)) throw new Error(`unit ${unit} is not on disk`);
    const b = await fs.readFile(this.unitPath(unit));
    if (!into || into.length < b.length) return b;
    b.copy(into);
    return into.subarray(0, b.length);
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
    this.bytesHeld -= this.sizes.get(unit) ?? 0;
    this.sizes.delete(unit);
    await fs.rm(this.unitPath(unit), { force: true }).catch(() => undefined);
  }
}
