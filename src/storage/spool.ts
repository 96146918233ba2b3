import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/**
 * Bytes of a unit being downloaded, appended as they arrive to
 * `<storage>/<id>/spool/<unit>`, so a restart (SIGKILL, crash, lost connection)
 * resumes the unit with an HTTP Range request instead of fetching it again. The spool
 * is not fsynced: after a power loss a torn spool fails the unit hash and the unit is
 * fetched whole. It goes once the unit is verified or given up.
 *
 * Only slow downloads are spooled: one that has not finished within SPOOL_AFTER_MS
 * starts writing then (what it has so far, then what follows). A unit that arrives
 * faster (a LAN-speed link: tens of milliseconds) never touches the disk twice; a kill
 * loses at most that much download time per unit in flight.
 */
export const SPOOL_AFTER_MS = 250;

export class UnitSpool {
  private chain: Promise<void> = Promise.resolve();
  private failed = false;
  private fh: fs.FileHandle | null = null;
  private readonly opened = Date.now();
  private constructor(
    readonly file: string,
    /** Bytes of the unit in the spool file (or queued for it). */
    private written: number,
  ) {}

  static dir(releaseDir: string): string {
    return path.join(releaseDir, 'spool');
  }

  /** Open the spool of `unit`; `bytes` is what a previous run left (at most `len`). */
  static async open(releaseDir: string, unit: number, len: number): Promise<{ spool: UnitSpool; bytes: Buffer }> {
    const dir = UnitSpool.dir(releaseDir);
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, String(unit));
    let bytes = await fs.readFile(file).catch(() => Buffer.alloc(0));
    if (bytes.length > len) {
      await fs.rm(file, { force: true });
      bytes = Buffer.alloc(0);
    }
    return { spool: new UnitSpool(file, bytes.length), bytes };
  }

  /**
   * The unit's bytes up to `end` are in `buf`: queue what the spool lacks, once the
   * download is slow enough to be worth it. Failures (disk full) only stop spooling: the
   * download goes on.
   */
  update(buf: Uint8Array, end: number, now = Date.now()): void {
    if (this.failed || end <= this.written || now - this.opened < SPOOL_AFTER_MS) return;
    // A copy: `buf` is reused for another unit once this one is done.
    const chunk = Buffer.from(buf.subarray(this.written, end));
    this.written = end;
    this.chain = this.chain.then(async () => {
      if (this.failed) return;
      try {
        this.fh ??= await fs.open(this.file, 'a');
        await this.fh.write(chunk);
      } catch {
        this.failed = true;
      }
    });
  }

  /**
   * Like update, for a download that keeps no unit-sized buffer: `chunk` holds the unit's
   * bytes up to `end`, and `head(from, to)` reads back earlier ones (from the partial file,
   * where they were written in place) when spooling starts after them. The caller must not
   * change `chunk` afterwards.
   */
  append(chunk: Uint8Array, end: number, head: (from: number, to: number) => Promise<Uint8Array>, now = Date.now()): void {
    if (this.failed || end <= this.written || now - this.opened < SPOOL_AFTER_MS) return;
    const start = end - chunk.length;
    const from = this.written;
    this.written = end;
    this.chain = this.chain.then(async () => {
      if (this.failed) return;
      try {
        this.fh ??= await fs.open(this.file, 'a');
        if (from < start) await this.fh.write(await head(from, start));
        await this.fh.write(chunk.subarray(Math.max(0, from - start)));
      } catch {
        this.failed = true;
      }
    });
  }

  /** Wait for queued appends and close; the bytes stay for the next attempt. */
  async close(): Promise<void> {
    await this.chain;
    await this.fh?.close().catch(() => undefined);
    this.fh = null;
  }

  async discard(): Promise<void> {
    await this.close();
    if (this.written > 0) await fs.rm(this.file, { force: true });
  }

  static async removeAll(releaseDir: string): Promise<void> {
    await fs.rm(UnitSpool.dir(releaseDir), { recursive: true, force: true });
  }
}
