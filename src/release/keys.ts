import { createPrivateKey, createPublicKey, generateKeyPairSync, KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';

/** Ed25519 keys live on disk as PEM: PKCS#8 for the private key, SPKI for the public. */
export async function generateKeyPair(outDir: string): Promise<{ keyPath: string; pubPath: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyPath = path.join(outDir, 'server.key');
  const pubPath = path.join(outDir, 'server.pub');
  try {
    await fs.mkdir(outDir, { recursive: true });
    // 'wx': never overwrite a key that exists; losing a signing key strands the fleet.
    await fs.writeFile(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    await fs.writeFile(pubPath, publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new FleetcastError('EEXIST', `a key already exists in ${outDir}; refusing to overwrite it`, ExitCode.CANTCREAT);
    }
    throw fromSystemError(err, `writing keys to ${outDir}`);
  }
  return { keyPath, pubPath };
}

async function readPem(file: string, what: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    throw fromSystemError(err, `reading ${what} ${file}`);
  }
}

async function loadKey(file: string, kind: 'private' | 'public'): Promise<KeyObject> {
  const pem = await readPem(file, `${kind} key`);
  let key: KeyObject;
  try {
    key = kind === 'private' ? createPrivateKey(pem) : createPublicKey(pem);
  } catch {
    throw new FleetcastError('BAD_KEY', `${file} is not a PEM ${kind} key`, ExitCode.DATAERR);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    const role = kind === 'private' ? 'signs with Ed25519' : 'trusts Ed25519 keys only';
    throw new FleetcastError('BAD_KEY', `${file} holds a ${key.asymmetricKeyType} key; fleetcast ${role}`, ExitCode.DATAERR);
  }
  return key;
}

export const loadPrivateKey = (file: string): Promise<KeyObject> => loadKey(file, 'private');
export const loadPublicKey = (file: string): Promise<KeyObject> => loadKey(file, 'public');

/** The 32 raw bytes of an Ed25519 public key (from its JWK form). */
export function rawPublicKey(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' });
  return Buffer.from(jwk.x as string, 'base64url');
}
