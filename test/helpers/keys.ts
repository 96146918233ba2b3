import { generateKeyPairSync, KeyObject } from 'node:crypto';

export function ed25519(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ed25519');
}
