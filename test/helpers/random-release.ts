import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { signManifest, unitCountFor, unitLength } from '../../src/release/manifest';
import { ed25519 } from './keys';

export const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** A signed manifest for `size` random bytes cut into units of `unitSize`, and the units (views of the data). */
export function randomRelease(size: number, unitSize: number) {
  const data = randomBytes(size);
  const n = unitCountFor(size, unitSize);
  const units = Array.from({ length: n }, (_, u) => data.subarray(u * unitSize, u * unitSize + unitLength({ size, unitSize }, u)));
  const m = signManifest({ v: 1, name: 'fw.img', size, unitSize, sha256: sha(data), units: units.map(sha), created: '2026-01-01T00:00:00.000Z' }, ed25519().privateKey);
  return { data, units, m };
}

/** A temporary directory removed when the test ends. */
export async function scratchDir(t: { teardown(f: () => Promise<void>): void }, prefix: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}
