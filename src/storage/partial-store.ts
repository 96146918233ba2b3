import { promises as fs } from 'node:fs';
import { makeDir } from './make-dir';
import { checkFreeSpace, exists, fsyncDir, readFully, sha256File, writeAtomic, writeFully, readFullySync, writeFullySync } from './files';
import * as path from 'node:path';
import { Manifest, unitLength } from '../wire/manifest';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { bitmapBytes, countBits, getBit, setBit } from '../util/bits';
import { PrefixHash } from './prefix-hash';
import { decodeBitmapFile, decodeJournal, encodeBitmapFile, encodeJournalHeader, encodeJournalRecords, JOURNAL_HEADER_BYTES } from './bitmap-file';

/** Their home is files.ts; still exported here for callers that import them with the store. */
export { sha256File, writeAtomic } from './files';
export { readPersistedBitmap } from './bitmap-file';

/** At most this many units per commit (one fdatasync and one bitmap write for all). */
const MAX_COMMIT_UNITS = 64;

/**
 * An agent's copy of one release, on disk under `<storage>/<release id>/`:
 *   manifest      the signed manifest as received
 *   data.part     the preallocated partial file, units written in place
 *   data.bitmap   which units were verified when it was last folded (bitmap-file.ts)
 *   data.journal  units verified since: one appended record per unit (bitmap-file.ts)
 *   <name>        the finished file, renamed from data.part once verified whole
 * A unit's bytes are fsynced before its bit is persisted, so a crash loses at most
 * the units in flight and never marks a unit that is not on disk.
 */
export class PartialStore {
  readonly dir: string;
  readonly finalPath: string;
  private readonly partPath: string;
  private readonly bitmapPath: string;
  private readonly journalPath: string;
  private fh: fs.FileHandle | null = null;
  /** The open journal and its length; records are appended at `journalBytes`. */
  private jfh: fs.FileHandle | null = null;
  private journalBytes = 0;
  /** Bitmap rewrites (fold of the journal), for tests and the bound in docs. */
  bitmapRewrites = 0;
  private bits: Uint8Array;
  private verified = 0;
  private complete = false;
  /** Why a bitmap found on disk was discarded, for the log. */
  discardedBitmapReason: string | null = null;
  /** The whole-file SHA-256 over the stored prefix, so finish() need not read the file again. */
  private readonly whole: PrefixHash;

  private constructor(readonly manifest: Manifest, storageDir: string) {
    this.dir = path.join(storageDir, manifest.id);
    this.partPath = path.join(this.dir, 'data.part');
    this.bitmapPath = path.join(this.dir, 'data.bitmap');
    this.journalPath = path.join(this.dir, 'data.journal');
    // An encrypted release's ciphertext keeps a name of its own: the plaintext goes to <name>.
    this.finalPath = path.join(this.dir, manifest.enc ? `${manifest.name}.fcenc` : manifest.name);
    this.bits = new Uint8Array(bitmapBytes(manifest.unitCount));
    this.whole = new PrefixHash(manifest);
  }

  static async open(storageDir: string, manifest: Manifest): Promise<PartialStore> {
    const s = new PartialStore(manifest, storageDir);
    await s.init();
    return s;
  }

  private async init(): Promise<void> {
    const m = this.manifest;
    try {
      await makeDir(this.dir);
      await writeAtomic(path.join(this.dir, 'manifest'), m.raw);
    } catch (err) {
      throw fromSystemError(err, `preparing storage ${this.dir}`);
    }
    if (await exists(this.finalPath)) {
      // Finished before: trust it only if it still hashes right.
      if ((await sha256File(this.finalPath)) === m.sha256) {
        this.bits.fill(0xff);
        const rem = m.unitCount & 7;
        if (rem && this.bits.length) this.bits[this.bits.length - 1] = (0xff << (8 - rem)) & 0xff;
        this.verified = m.unitCount;
        this.complete = true;
        return;
      }
      await fs.rename(this.finalPath, this.partPath).catch(() => undefined);
    }
    try {
      const buf = await fs.readFile(this.bitmapPath);
      const d = decodeBitmapFile(buf, m.idBytes, m.unitCount);
      if (d.ok) this.bits = d.bits;
      else this.discardedBitmapReason = d.reason;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `reading ${this.bitmapPath}`);
    }
    // Units verified after the bitmap was last written; their data was synced first.
    const journal = await fs.readFile(this.journalPath).catch(() => null);
    if (journal) {
      const j = decodeJournal(journal, m.idBytes, m.unitCount);
      if (j.ok) for (const u of j.units) setBit(this.bits, u);
    }
    let size = 0;
    try {
      size = (await fs.stat(this.partPath)).size;
    } catch {
      this.bits.fill(0); // no data file: any bitmap is stale
    }
    if (size < m.size) await checkFreeSpace(this.dir, m.size - size, `release ${m.name}`);
    try {
      this.fh = await fs.open(this.partPath, size > 0 ? 'r+' : 'w+');
      if (size !== m.size) await this.fh.truncate(m.size);
    } catch (err) {
      throw fromSystemError(err, `preallocating ${this.partPath} (${m.size} bytes)`);
    }
    this.verified = countBits(this.bits, m.unitCount);
    await this.foldJournal(this.bits);
  }

  /** Past this many journal bytes, the journal is folded into the bitmap: at least 4 KiB, or the bitmap's own size x4. */
  private get journalCompactBytes(): number {
    return JOURNAL_HEADER_BYTES + Math.max(4096, 4 * bitmapBytes(this.manifest.unitCount));
  }

  /** Write `bits` as the bitmap, then start an empty journal. A crash between leaves records the bitmap already has: harmless. */
  private async foldJournal(bits: Uint8Array): Promise<void> {
    const m = this.manifest;
    try {
      await writeAtomic(this.bitmapPath, encodeBitmapFile(m.idBytes, m.unitCount, bits));
      this.bitmapRewrites++;
      await this.jfh?.close();
      this.jfh = null;
      await writeAtomic(this.journalPath, encodeJournalHeader(m.idBytes));
      this.jfh = await fs.open(this.journalPath, 'r+');
      this.journalBytes = JOURNAL_HEADER_BYTES;
    } catch (err) {
      throw fromSystemError(err, `writing ${this.bitmapPath}`);
    }
  }

  get unitCount(): number {
    return this.manifest.unitCount;
  }
  get verifiedUnits(): number {
    return this.verified;
  }
  get isComplete(): boolean {
    return this.complete;
  }
  has(unit: number): boolean {
    return unit >= 0 && unit < this.manifest.unitCount && getBit(this.bits, unit);
  }
  /** A copy of the verified-units bitmap. */
  bitmap(): Uint8Array {
    return this.bits.slice();
  }

  /**
   * Writes are committed in groups: the units queued while a commit runs go out
   * together, then one fdatasync, then one bitmap covering all of them. Data still
   * reaches the disk before its bit does, at two syncs per group instead of per unit
   * (the syncs set the pace on a slow disk). `writeChain` settles when the queue is empty.
   */
  private queued: { unit: number; written: Promise<void>; resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Units queued or committing; and writeRange's writes in flight, per unit. */
  private readonly storing = new Set<number>();
  private readonly rangeWrites = new Map<number, Set<Promise<void>>>();
  private writeChain: Promise<void> = Promise.resolve();
  private committing = false;

  /**
   * Caller has checked the unit's hash. Data reaches the disk before the bit does.
   * The bytes are written (to the page cache) at once, not when their group commits:
   * `released` runs as soon as the store needs `bytes` no more (written, skipped or
   * failed), before the group's syncs, so a caller that reuses its buffers holds each
   * one for a write, not for a commit behind a slow disk's fdatasync (issue 16: up to 17
   * unit buffers per demo agent waited there).
   */
  writeUnit(unit: number, bytes: Uint8Array, released?: () => void): Promise<void> {
    const written = this.writeNow(unit, bytes).finally(() => released?.());
    written.catch(() => undefined); // awaited (and reported) by the commit
    return this.enqueue(unit, written);
  }

  private enqueue(unit: number, written: Promise<void>): Promise<void> {
    this.storing.add(unit);
    return new Promise<void>((resolve, reject) => {
      this.queued.push({ unit, written, resolve, reject });
      if (!this.committing) {
        this.committing = true;
        this.writeChain = this.commitQueued();
      }
    });
  }

  /**
   * Bytes of a unit that is not stored yet, put in place as a download streams in (issue
   * 16: no unit-sized buffer per download). The unit's bit stays clear, so a crash leaves
   * them as unverified bytes; the caller hashes them as they go and, when they match,
   * commits them with commitInPlace. Nothing is written over a unit stored or queued
   * for its commit (another copy of it, verified, got there first).
   */
  async writeRange(unit: number, offset: number, bytes: Uint8Array): Promise<void> {
    const fh = this.rangeOf(unit, offset, bytes.length);
    if (this.has(unit) || this.storing.has(unit)) return;
    const w = writeFully(fh, bytes, unit * this.manifest.unitSize + offset);
    const inFlight = this.rangeWrites.get(unit) ?? new Set<Promise<void>>();
    this.rangeWrites.set(unit, inFlight.add(w));
    await w.catch((err) => {
      throw fromSystemError(err, `storing unit ${unit} of ${this.manifest.name}`);
    }).finally(() => {
      inFlight.delete(w);
      if (!inFlight.size && this.rangeWrites.get(unit) === inFlight) this.rangeWrites.delete(unit);
    });
  }

  /** A download of the unit has writeRange writes in flight. */
  landing(unit: number): boolean {
    return this.rangeWrites.has(unit);
  }
  /**
   * writeRange and readRange on the calling thread, for a LAN assembly built in place
   * (issue 16): its chunk is free on return, and nothing of it is in flight, nor can land,
   * between its read-back and its commit. false, nothing written: the unit is stored or
   * committing, or a download of it is landing (the two must not land over each other).
   */
  writeRangeSync(unit: number, offset: number, bytes: Uint8Array): boolean {
    const fh = this.rangeOf(unit, offset, bytes.length);
    if (this.has(unit) || this.storing.has(unit) || this.rangeWrites.has(unit)) return false;
    try {
      writeFullySync(fh.fd, bytes, unit * this.manifest.unitSize + offset);
    } catch (err) {
      throw fromSystemError(err, `storing unit ${unit} of ${this.manifest.name}`);
    }
    return true;
  }
  readRangeSync(unit: number, offset: number, into: Uint8Array): void {
    readFullySync(this.rangeOf(unit, offset, into.length).fd, into, unit * this.manifest.unitSize + offset);
  }

  /** `len` bytes of a unit from `offset`, as they are in the file (written by writeRange or stored). */
  async readRange(unit: number, offset: number, len: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(len);
    await readFully(this.rangeOf(unit, offset, len), buf, unit * this.manifest.unitSize + offset);
    return buf;
  }

  private rangeOf(unit: number, offset: number, len: number): fs.FileHandle {
    if (!this.fh) throw new FleetcastError('CLOSED', 'store is closed', ExitCode.SOFTWARE);
    if (offset < 0 || len < 0 || offset + len > unitLength(this.manifest, unit)) throw new FleetcastError('BAD_UNIT', `bytes ${offset}+${len} are outside unit ${unit}`, ExitCode.SOFTWARE);
    return this.fh;
  }

  /**
   * Commit a unit whose bytes writeRange put in place, all of them, and whose hash the
   * caller checked: like writeUnit, without the bytes (the whole-file hash reads them back).
   */
  commitInPlace(unit: number): Promise<void> {
    return this.enqueue(unit, Promise.resolve());
  }

  private async commitQueued(): Promise<void> {
    while (this.queued.length) {
      const group = this.queued.splice(0, MAX_COMMIT_UNITS);
      try {
        await this.commit(group);
        for (const w of group) w.resolve();
      } catch (err) {
        for (const w of group) w.reject(err as Error);
      }
      for (const w of group) this.storing.delete(w.unit);
    }
    this.committing = false; // in the same turn as the empty-queue check: no write is left behind
  }

  /**
   * Write a unit's bytes in place; a unit that is next for the whole-file hash is hashed
   * from them here (the others are read back by hashPrefix once committed). Its bytes
   * match the manifest, so hashing them before the commit is as good as after.
   */
  private async writeNow(unit: number, bytes: Uint8Array): Promise<void> {
    const m = this.manifest;
    if (!this.fh) throw new FleetcastError('CLOSED', 'store is closed', ExitCode.SOFTWARE);
    if (this.has(unit)) return;
    if (bytes.length !== unitLength(m, unit)) throw new FleetcastError('BAD_UNIT', `unit ${unit} has wrong length`, ExitCode.SOFTWARE);
    try {
      // Unverified bytes of a download still landing (writeRange) must not land over these.
      await Promise.allSettled(this.rangeWrites.get(unit) ?? []);
      await writeFully(this.fh, bytes, unit * m.unitSize);
    } catch (err) {
      throw fromSystemError(err, `storing unit ${unit} of ${m.name}`);
    }
    if (!this.has(unit)) this.whole.written(unit, bytes);
  }

  private async commit(group: { unit: number; written: Promise<void> }[]): Promise<void> {
    const m = this.manifest;
    for (const w of group) await w.written;
    if (!this.fh) throw new FleetcastError('CLOSED', 'store is closed', ExitCode.SOFTWARE);
    const fresh = new Set<number>();
    for (const { unit } of group) if (!this.has(unit)) fresh.add(unit);
    if (fresh.size === 0) return;
    const at = fresh.values().next().value!;
    try {
      await this.fh.datasync();
      const next = this.bits.slice();
      for (const unit of fresh.keys()) setBit(next, unit);
      // Incremental: 8 bytes per unit appended and synced, not the whole bitmap rewritten.
      if (!this.jfh) throw new FleetcastError('CLOSED', 'store is closed', ExitCode.SOFTWARE);
      const rec = encodeJournalRecords(m.idBytes, fresh.values());
      await writeFully(this.jfh, rec, this.journalBytes);
      await this.jfh.datasync();
      this.journalBytes += rec.length;
      this.bits = next;
      this.verified += fresh.size;
      if (this.journalBytes > this.journalCompactBytes) await this.foldJournal(next);
    } catch (err) {
      throw fromSystemError(err, `storing unit ${at} of ${m.name}`);
    }
    await this.hashPrefix();
  }

  /** Advance the whole-file hash over stored units in order, reading back what writeNow could not hash. */
  private async hashPrefix(): Promise<void> {
    if (this.fh) await this.whole.catchUp(this.fh, (u) => getBit(this.bits, u));
  }

  /**
   * A stored unit's bytes, read into `into` when given (a reused buffer of the unit's
   * length: the page cache holds recent units, so a read costs a copy, and the agent
   * keeps no cache of its own), else into a new buffer.
   */
  async readUnit(unit: number, into?: Buffer): Promise<Buffer> {
    const m = this.manifest;
    const len = unitLength(m, unit);
    if (into && into.length !== len) throw new FleetcastError('BAD_UNIT', `unit ${unit} is ${len} bytes, not ${into.length}`, ExitCode.SOFTWARE);
    const buf = into ?? Buffer.allocUnsafe(len);
    if (this.complete) {
      const fh = await fs.open(this.finalPath, 'r');
      try {
        await readFully(fh, buf, unit * m.unitSize);
      } finally {
        await fh.close();
      }
      return buf;
    }
    if (!this.fh) throw new FleetcastError('CLOSED', 'store is closed', ExitCode.SOFTWARE);
    await readFully(this.fh, buf, unit * m.unitSize);
    return buf;
  }

  /**
   * All units verified: check the whole-file hash (mostly computed while units landed,
   * see hashPrefix), then rename the file into place. A whole-file
   * mismatch (which unit hashes should make impossible) clears the bitmap and throws.
   */
  async finish(): Promise<string> {
    if (this.complete) return this.finalPath;
    const m = this.manifest;
    if (this.verified !== m.unitCount) throw new FleetcastError('INCOMPLETE', `${m.unitCount - this.verified} units missing`, ExitCode.SOFTWARE);
    await this.writeChain;
    await this.fh?.datasync();
    await this.hashPrefix();
    const digest = this.whole.take() ?? (await sha256File(this.partPath));
    if (digest !== m.sha256) {
      this.bits.fill(0);
      this.verified = 0;
      await fs.rm(this.bitmapPath, { force: true });
      await this.jfh?.close();
      this.jfh = null;
      await fs.rm(this.journalPath, { force: true });
      await this.foldJournal(this.bits);
      throw new FleetcastError('WHOLE_HASH', `whole-file SHA-256 ${digest} does not match the manifest's ${m.sha256}; starting over`, ExitCode.DATAERR);
    }
    await this.fh?.close();
    this.fh = null;
    try {
      await fs.rename(this.partPath, this.finalPath);
      await fsyncDir(this.dir);
      await fs.rm(this.bitmapPath, { force: true });
      await this.jfh?.close();
      this.jfh = null;
      await fs.rm(this.journalPath, { force: true });
    } catch (err) {
      throw fromSystemError(err, `moving ${m.name} into place`);
    }
    this.complete = true;
    return this.finalPath;
  }

  async close(): Promise<void> {
    const fh = this.fh;
    const jfh = this.jfh;
    this.fh = null;
    this.jfh = null;
    await fh?.close();
    await jfh?.close();
  }
}
