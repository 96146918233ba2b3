import { createHash } from 'node:crypto';
import { ExitCode, FleetcastError } from '../util/errors';
import { promises as fs, createReadStream, readSync, writeSync } from 'node:fs';

/**
 * Whole-file helpers for every layer that keeps files (stores, channels, the server's
 * state): replace a file atomically, hash a file, and positioned reads and writes that
 * are whole or throw.
 */

/** Write `data` to `file` through `file.tmp`, synced before the rename, so a crash leaves the old file or the new one. */
export async function writeAtomic(file: string, data: Uint8Array): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await fs.open(tmp, 'w');
  try {
    await fh.writeFile(data);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}

/** The SHA-256 of a file's bytes, as 64 lowercase hex characters. */
export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file, { highWaterMark: 1 << 20 })
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/** Whether `p` exists (any type). */
export async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

/** fsync a directory, so a rename in it is durable; file systems that refuse are let be. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } catch {
    /* some file systems refuse fsync on directories */
  } finally {
    await fh.close();
  }
}

/** Fill `buf` from `position`; a stored unit read short (a truncated file) is an error, not stale bytes. */
export async function readFully(fh: fs.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesRead } = await fh.read(buf, off, buf.length - off, position + off);
    if (bytesRead <= 0) throw Object.assign(new Error(`short read at byte ${position + off}`), { code: 'EIO' });
    off += bytesRead;
  }
}

/**
 * Write all of `bytes` at `position`. A write may be short without an error (a disk that
 * fills mid-write): the rest is written again, and a full disk then throws ENOSPC. Taking
 * a short write for a whole one marked a unit verified over bytes that never landed.
 */
export async function writeFully(fh: fs.FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, position + off);
    if (bytesWritten <= 0) throw Object.assign(new Error('no space left on device (a write made no progress)'), { code: 'ENOSPC' });
    off += bytesWritten;
  }
}

/** writeFully on the calling thread: a LAN assembly's chunk (PartialStore.writeRangeSync), so its buffer is free at once. */
export function writeFullySync(fd: number, bytes: Uint8Array, position: number): void {
  let off = 0;
  while (off < bytes.length) {
    const n = writeSync(fd, bytes, off, bytes.length - off, position + off);
    if (n <= 0) throw Object.assign(new Error('no space left on device (a write made no progress)'), { code: 'ENOSPC' });
    off += n;
  }
}

/** Fill `into` from `position` on the calling thread; a file that ends first is an error. */
export function readFullySync(fd: number, into: Uint8Array, position: number): void {
  let off = 0;
  while (off < into.length) {
    const n = readSync(fd, into, off, into.length - off, position + off);
    if (n <= 0) throw Object.assign(new Error(`short read at byte ${position + off}`), { code: 'EIO' });
    off += n;
  }
}

/** Throws ENOSPC (exit 74) when `dir`'s file system has less than `needed` bytes free for `what`; quiet when it cannot tell. */
export async function checkFreeSpace(dir: string, needed: number, what: string): Promise<void> {
  let st: { bavail: number; bsize: number } | undefined;
  try {
    st = await fs.statfs(dir);
  } catch {
    return; // cannot tell; the write will say ENOSPC
  }
  const free = st.bavail * st.bsize;
  if (free < needed) throw new FleetcastError('ENOSPC', `${what} needs ${needed} more bytes in ${dir}, only ${free} are free`, ExitCode.IOERR);
}
