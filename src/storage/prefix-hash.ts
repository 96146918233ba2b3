import { createHash, Hash } from 'node:crypto';
import type { promises as fs } from 'node:fs';
import { Manifest, unitLength } from '../wire/manifest';

/** Bytes read back per read when the hash catches up over units stored out of order. */
const READ_BACK_BYTES = 256 * 1024;

/**
 * The whole-file SHA-256 of a partial file, advanced over its stored prefix as units
 * land (from the bytes just written, or read back for units that came out of order), so
 * finishing need not read the whole file again. `units` is how many leading units it
 * covers; -1 after a read failed (the file is then hashed whole).
 */
export class PrefixHash {
  private hash: Hash = createHash('sha256');
  units = 0;
  /** Read back in pieces: a unit-sized buffer was 1 MiB resident in every agent (issue 16). */
  private scratch: Buffer | null = null;

  constructor(private readonly m: Manifest) {}

  /** A unit's bytes as they are written: hashed now if the unit is next. */
  written(unit: number, bytes: Uint8Array): void {
    if (unit !== this.units) return;
    this.hash.update(bytes);
    this.units = unit + 1;
  }

  /** Hash on over the units `stored` says are in `fh`, in order, reading them back. */
  async catchUp(fh: fs.FileHandle, stored: (unit: number) => boolean): Promise<void> {
    const m = this.m;
    try {
      while (this.units >= 0 && this.units < m.unitCount && stored(this.units)) {
        const u = this.units;
        const len = unitLength(m, u);
        this.scratch ??= Buffer.allocUnsafe(Math.min(m.unitSize, READ_BACK_BYTES));
        for (let off = 0; off < len; ) {
          const want = Math.min(this.scratch.length, len - off);
          const { bytesRead } = await fh.read(this.scratch, 0, want, u * m.unitSize + off);
          if (bytesRead !== want) throw new Error(`short read of unit ${u}`);
          this.hash.update(this.scratch.subarray(0, want));
          off += want;
        }
        this.units = u + 1;
      }
    } catch {
      this.units = -1;
    }
  }

  /** The digest when it covers every unit, else null; either way it starts over. */
  take(): string | null {
    const digest = this.units === this.m.unitCount ? this.hash.digest('hex') : null;
    this.hash = createHash('sha256');
    this.units = 0;
    this.scratch = null;
    return digest;
  }
}
