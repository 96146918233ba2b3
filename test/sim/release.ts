import { createHash } from 'node:crypto';
import { CoreManifest } from './core-api';
import { Prng } from './prng';

/** A release made of seeded random bytes, with what the core needs of its manifest. */
export interface SimRelease {
  manifest: CoreManifest;
  units: Buffer[];
}

export function makeRelease(seed: number, unitCount: number, unitSize: number, lastUnitBytes = unitSize): SimRelease {
  const rng = new Prng(seed).fork('release');
  const idBytes = new Uint8Array(16);
  for (let i = 0; i < 16; i++) idBytes[i] = rng.int(256);
  const units: Buffer[] = [];
  for (let u = 0; u < unitCount; u++) {
    const b = Buffer.alloc(u === unitCount - 1 ? lastUnitBytes : unitSize);
    for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(rng.nextUint32(), i - Math.max(0, i + 4 - b.length));
    units.push(b);
  }
  const size = (unitCount - 1) * unitSize + lastUnitBytes;
  return {
    units,
    manifest: {
      idBytes,
      size,
      unitSize,
      unitCount,
      units: units.map((b) => createHash('sha256').update(b).digest('hex')),
    },
  };
}
