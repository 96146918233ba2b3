import { createHash } from 'node:crypto';
import type { PartialStore } from '../storage/partial-store';
import type { UnitSpool } from '../storage/spool';
import type { LanCore } from './core/lan-core';

/** A download's cut-through window, rounded down to whole fragments. */
export const DOWNLOAD_WINDOW_BYTES = 64 * 1024;
/** Chunk writes in flight per download above which the download waits for the disk. */
const MAX_PENDING_WRITES = 4;

/**
 * One unit's bytes as they stream in from the WAN, with no unit-sized buffer (issue 16:
 * two 1 MiB download buffers per agent): each chunk is hashed, written in place into the
 * partial file (PartialStore.writeRange, its bit still clear), spooled once the download
 * is slow, and copied into a small window from which the core cuts whole fragments for
 * the LAN (fetchProgress with the window's base). The unit is committed only after its
 * hash matched (commitInPlace); bytes that fail it stay unverified and are overwritten.
 */
export class UnitDownload {
  private readonly hash = createHash('sha256');
  /** Bytes of the unit received. */
  off = 0;
  /** The unit's byte at win[0], and how much of win is filled. */
  private base = 0;
  private fill = 0;
  private readonly writes = new Set<Promise<void>>();
  /** The first write that failed (disk full, read-only), if one did. */
  private writeError: Error | null = null;

  constructor(
    readonly unit: number,
    readonly len: number,
    private readonly win: Buffer,
    private readonly store: Pick<PartialStore, 'writeRange' | 'readRange'>,
    private readonly core: Pick<LanCore, 'fetchProgress'>,
    private readonly spool: UnitSpool,
  ) {}

  /** The next bytes of the unit (past its end: ignored). A promise when the disk is behind: wait for it. */
  push(data: Uint8Array, now: number): Promise<void> | undefined {
    const take = Math.min(data.length, this.len - this.off);
    if (take <= 0) return undefined;
    const d = data.subarray(0, take);
    const at = this.off;
    this.hash.update(d);
    const w: Promise<void> = this.store.writeRange(this.unit, at, d).then(
      () => void this.writes.delete(w),
      (err: Error) => {
        this.writes.delete(w);
        this.writeError ??= err;
      },
    );
    this.writes.add(w);
    this.off += take;
    this.spool.append(d, this.off, (from, to) => this.settled().then(() => this.store.readRange(this.unit, from, to - from)), now);
    for (let p = 0; p < take; ) {
      const n = Math.min(this.win.length - this.fill, take - p);
      this.win.set(d.subarray(p, p + n), this.fill);
      this.fill += n;
      p += n;
      this.core.fetchProgress(this.unit, this.win, this.base + this.fill, now, this.base);
      if (this.fill === this.win.length) {
        this.base += this.fill;
        this.fill = 0;
      }
    }
    return this.writes.size > MAX_PENDING_WRITES ? this.settled().catch(() => undefined) : undefined;
  }

  get diskError(): Error | null {
    return this.writeError;
  }

  /** Every write so far landed; the first write error, if any, is thrown. */
  async settled(): Promise<void> {
    while (this.writes.size) await Promise.all(this.writes);
    if (this.writeError) throw this.writeError;
  }

  /** All bytes are here and hash to `sha256hex` (call once, at the end). */
  matches(sha256hex: string): boolean {
    return this.off === this.len && this.hash.digest('hex') === sha256hex;
  }
}

/** A window for `fragmentBytes`-sized fragments: DOWNLOAD_WINDOW_BYTES rounded down to whole ones (at least one). */
export function downloadWindow(fragmentBytes: number): Buffer {
  return Buffer.allocUnsafe(Math.max(1, Math.floor(DOWNLOAD_WINDOW_BYTES / fragmentBytes)) * fragmentBytes);
}
