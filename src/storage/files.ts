import { createHash } from 'node:crypto';
import { promises as fs, createReadStream } from 'node:fs';

/**
 * Whole-file helpers for every layer that keeps files (stores, channels, the server's
 * state): replace a file atomically, hash a file.
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
