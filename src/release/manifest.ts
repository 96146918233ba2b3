import { createHash, sign, verify, KeyObject, createPublicKey } from 'node:crypto';
import { ExitCode, FleetcastError } from '../util/errors';
import { badManifest, ManifestBody, Manifest, MAX_MANIFEST_BYTES, validateBody } from '../wire/manifest';
import { rawPublicKey } from './keys';

/**
 * Signing and verifying the manifest (docs/protocol.md, "Manifest"). Its format (the
 * fields, the limits, the body's validation) is in src/wire/manifest.ts, where storage
 * and the HTTP bodies can use it; it is re-exported here.
 */
export * from '../wire/manifest';

export function signManifest(body: ManifestBody, privateKey: KeyObject): Manifest {
  validateBody(body);
  const bodyBytes = Buffer.from(JSON.stringify(body), 'utf8');
  const sig = sign(null, bodyBytes, privateKey);
  const pub = rawPublicKey(createPublicKey(privateKey));
  const raw = Buffer.from(
    JSON.stringify({ fleetcast: 'manifest', v: 1, body: bodyBytes.toString('base64'), key: pub.toString('base64'), sig: sig.toString('base64') }) + '\n',
  );
  return finish(body, bodyBytes, raw);
}

function finish(body: ManifestBody, bodyBytes: Buffer, raw: Buffer): Manifest {
  const idBytes = createHash('sha256').update(bodyBytes).digest().subarray(0, 16);
  return { ...body, id: idBytes.toString('hex'), idBytes: new Uint8Array(idBytes), unitCount: body.units.length, raw };
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Parse and verify a manifest from untrusted bytes. Throws FleetcastError
 * (BAD_MANIFEST, BAD_SIGNATURE, UNTRUSTED_KEY) with a message saying what is wrong.
 */
export function parseManifest(raw: Uint8Array, trusted: readonly KeyObject[]): Manifest {
  if (raw.length > MAX_MANIFEST_BYTES) badManifest(`file is ${raw.length} bytes, more than the ${MAX_MANIFEST_BYTES} allowed`);
  let outer: unknown;
  try {
    outer = JSON.parse(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8'));
  } catch (err) {
    badManifest(`not JSON (${(err as Error).message})`);
  }
  if (typeof outer !== 'object' || outer === null || Array.isArray(outer)) badManifest('not a JSON object');
  const o = outer as Record<string, unknown>;
  if (o.fleetcast !== 'manifest') badManifest('not a fleetcast manifest');
  if (o.v !== 1) badManifest(`unsupported manifest version ${JSON.stringify(o.v)}`);
  for (const f of ['body', 'key', 'sig'] as const) {
    if (typeof o[f] !== 'string' || !B64.test(o[f] as string)) badManifest(`${f} is not base64`);
  }
  const bodyBytes = Buffer.from(o.body as string, 'base64');
  const keyBytes = Buffer.from(o.key as string, 'base64');
  const sig = Buffer.from(o.sig as string, 'base64');
  if (keyBytes.length !== 32) badManifest('key is not a 32-byte Ed25519 public key');
  if (sig.length !== 64) badManifest('sig is not a 64-byte Ed25519 signature');
  const signer = trusted.find((k) => rawPublicKey(k).equals(keyBytes));
  if (!signer) {
    throw new FleetcastError(
      'UNTRUSTED_KEY',
      `manifest is signed by key ${keyBytes.toString('hex').slice(0, 16)}…, which is not among the ${trusted.length} trusted key(s)`,
      ExitCode.DATAERR,
    );
  }
  if (!verify(null, bodyBytes, signer, sig)) {
    throw new FleetcastError('BAD_SIGNATURE', 'manifest signature does not verify: the manifest was altered or signed by another key', ExitCode.DATAERR);
  }
  let body: unknown;
  try {
    body = JSON.parse(bodyBytes.toString('utf8'));
  } catch {
    badManifest('signed body is not JSON');
  }
  return finish(validateBody(body), bodyBytes, Buffer.from(raw));
}
