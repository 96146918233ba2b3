/**
 * One-unit commits of a 65,536-unit release (4 KiB units): the bitmap journal (now)
 * against rewriting the whole bitmap per commit (before; issue 13 measured 58 units/s
 * at 1M units). Run: `npm run build && node dist/bench/storage-commit.js [COMMITS]`.
 * Prints one line; writes nothing to bench/results.
 */
import { generateKeyPairSync } from 'node:crypto';
import { promises as fs, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { signManifest } from '../src/release/manifest';
import { encodeBitmapFile } from '../src/storage/bitmap-file';
import { PartialStore, writeAtomic } from '../src/storage/partial-store';

async function main(): Promise<void> {
  const units = 65_536;
  const unitBytes = 4096;
  const commits = Number(process.argv[2] ?? 2000);
  const { privateKey } = generateKeyPairSync('ed25519');
  const m = signManifest({ v: 1, name: 'bench.img', size: units * unitBytes, unitSize: unitBytes, sha256: 'b'.repeat(64), units: Array<string>(units).fill('a'.repeat(64)), created: '2026-01-01T00:00:00.000Z' }, privateKey);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetcast-bench-'));
  try {
    const zero = Buffer.alloc(unitBytes);
    const s = await PartialStore.open(dir, m);
    let t = process.hrtime.bigint();
    for (let u = 0; u < commits; u++) await s.writeUnit(u, zero);
    const journal = commits / (Number(process.hrtime.bigint() - t) / 1e9);
    await s.close();
    const fh = await fs.open(path.join(dir, 'before.part'), 'w+');
    const bits = new Uint8Array(units / 8);
    t = process.hrtime.bigint();
    for (let u = 0; u < commits; u++) {
      await fh.write(zero, 0, unitBytes, u * unitBytes);
      await fh.datasync();
      bits[u >>> 3] |= 0x80 >>> (u & 7);
      await writeAtomic(path.join(dir, 'before.bitmap'), encodeBitmapFile(m.idBytes, units, bits));
    }
    const whole = commits / (Number(process.hrtime.bigint() - t) / 1e9);
    await fh.close();
    console.log(`${commits} one-unit commits, ${units} units, in ${dir}: journal ${journal.toFixed(0)} units/s (${s.bitmapRewrites} bitmap rewrites), whole-bitmap rewrite per commit ${whole.toFixed(0)} units/s`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

void main();
