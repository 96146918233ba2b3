import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ExitCode, FleetcastError } from '../util/errors';
import { Manifest, unitLength } from './manifest';

/**
 * Content encryption (optional per release): every unit is AES-256-GCM ciphertext of
 * `unitSize - 16` plaintext bytes followed by its 16-byte tag. The nonce is the unit
 * index (4 zero bytes, then u64 big-endian): unique because every release has its own
 * key. Unit hashes and the whole-file hash in the manifest are over the ciphertext, so
 * the LAN, the allocation and the stores work on ciphertext only; an agent decrypts
 * after the ciphertext verified, with the key the server releases to authenticated
 * agents (GET /v1/releases/{id}/key).
 */
export const CONTENT_CIPHER = 'aes-256-gcm';
export const GCM_TAG_BYTES = 16;
export const CONTENT_KEY_BYTES = 32;

function nonce(unit: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(BigInt(unit), 4);
  return n;
}

export function encryptUnit(key: Uint8Array, unit: number, plain: Uint8Array): Buffer {
  const c = createCipheriv(CONTENT_CIPHER, key, nonce(unit));
  const body = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([body, c.getAuthTag()]);
}

export function decryptUnit(key: Uint8Array, unit: number, ct: Uint8Array): Buffer {
  if (ct.length < GCM_TAG_BYTES) throw new FleetcastError('DECRYPT', `unit ${unit} is shorter than its tag`, ExitCode.DATAERR);
  const d = createDecipheriv(CONTENT_CIPHER, key, nonce(unit));
  d.setAuthTag(ct.subarray(ct.length - GCM_TAG_BYTES));
  try {
    return Buffer.concat([d.update(ct.subarray(0, ct.length - GCM_TAG_BYTES)), d.final()]);
  } catch {
    throw new FleetcastError('DECRYPT', `unit ${unit} does not decrypt with the release key (wrong key?)`, ExitCode.DATAERR);
  }
}

/** Decrypt a verified ciphertext file unit by unit into `out` (atomically), checking the plaintext hash. */
export async function decryptFile(key: Uint8Array, m: Manifest, input: string, out: string): Promise<void> {
  const tmp = `${out}.tmp`;
  const src = await fs.open(input, 'r');
  const dst = await fs.open(tmp, 'w');
  const whole = createHash('sha256');
  try {
    for (let u = 0; u < m.unitCount; u++) {
      const len = unitLength(m, u);
      const ct = Buffer.allocUnsafe(len);
      await src.read(ct, 0, len, u * m.unitSize);
      const plain = decryptUnit(key, u, ct);
      whole.update(plain);
      await dst.write(plain);
    }
    await dst.datasync();
  } finally {
    await src.close();
    await dst.close();
  }
  const digest = whole.digest('hex');
  if (digest !== m.plainSha256) {
    await fs.rm(tmp, { force: true });
    throw new FleetcastError('PLAIN_HASH', `decrypted ${m.name} hashes to ${digest}, the manifest says ${m.plainSha256}`, ExitCode.DATAERR);
  }
  await fs.rename(tmp, out);
}

/** Where `fleetcast publish --encrypt` keeps a release's key: outside the store, so a copy of the store reveals nothing. */
export function contentKeyPath(keysDir: string, releaseId: string): string {
  return path.join(keysDir, `${releaseId}.key`);
}

export async function readContentKey(keysDir: string, releaseId: string): Promise<Buffer | null> {
  try {
    const hex = (await fs.readFile(contentKeyPath(keysDir, releaseId), 'utf8')).trim();
    return /^[0-9a-f]{64}$/.test(hex) ? Buffer.from(hex, 'hex') : null;
  } catch {
    return null;
  }
}
