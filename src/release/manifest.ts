import { createHash, sign, verify, KeyObject, createPublicKey } from 'node:crypto';
import { ExitCode, FleetcastError } from '../util/errors';
import { rawPublicKey } from './keys';

/**
 * The signed manifest (docs/protocol.md, "Manifest"). The file is JSON:
 *   {"fleetcast":"manifest","v":1,"body":B64,"key":B64,"sig":B64}
 * `body` is the UTF-8 JSON of ManifestBody; `sig` is Ed25519 over exactly those
 * bytes; `key` is the signer's raw 32-byte public key (a hint: verification uses
 * only keys the agent trusts). The release id is the first 16 bytes of
 * SHA-256(body bytes), so it names this exact manifest.
 */
export interface ManifestBody {
  v: 1;
  name: string;
  size: number;
  unitSize: number;
  sha256: string;
  units: string[];
  created: string;
  /** Content encryption (content-crypto.ts): units are ciphertext; absent for plain releases. */
  enc?: 'aes-256-gcm';
  /** Encrypted releases: the plaintext file's size and SHA-256. */
  plainSize?: number;
  plainSha256?: string;
}

export interface Manifest extends ManifestBody {
  /** 32 lowercase hex chars. */
  id: string;
  idBytes: Uint8Array;
  unitCount: number;
  /** The exact file bytes, for storing or serving again. */
  raw: Buffer;
}

export const MAX_MANIFEST_BYTES = 96 * 1024 * 1024;
/**
 * Units a release may have. Server and agent state grow with it (bitmaps in every
 * heartbeat, per-unit maps): 65,536 units is 64 GiB at the default unit size and
 * 4 TiB at the largest. Issue 13 measured 583 MB on the server at 1M units.
 */
export const MAX_UNITS = 65_536;
export const MIN_UNIT_BYTES = 4096;
export const MAX_UNIT_BYTES = 64 * 1024 * 1024;
export const DEFAULT_UNIT_BYTES = 1024 * 1024;
const HEX64 = /^[0-9a-f]{64}$/;
const ID_HEX = /^[0-9a-f]{32}$/;

export function isReleaseId(s: string): boolean {
  return ID_HEX.test(s);
}

export function unitLength(m: Pick<ManifestBody, 'size' | 'unitSize'>, unit: number): number {
  const start = unit * m.unitSize;
  return Math.max(0, Math.min(m.unitSize, m.size - start));
}

export function unitCountFor(size: number, unitSize: number): number {
  return size === 0 ? 0 : Math.ceil(size / unitSize);
}

/** Release names become file names on agents: keep them to one safe path component. */
export function checkReleaseName(name: string): string | null {
  if (typeof name !== 'string' || name.length === 0) return 'name is empty';
  if (name.length > 200) return 'name is longer than 200 characters';
  if (name === '.' || name === '..' || name.startsWith('.')) return 'name may not start with a dot';
  if (!/^[A-Za-z0-9._+@=,-]+$/.test(name)) return 'name may contain only letters, digits and . _ + @ = , -';
  return null;
}

function bad(msg: string): never {
  throw new FleetcastError('BAD_MANIFEST', `manifest: ${msg}`, ExitCode.DATAERR);
}

export function validateBody(b: unknown): ManifestBody {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) bad('body is not an object');
  const o = b as Record<string, unknown>;
  const known = new Set(['v', 'name', 'size', 'unitSize', 'sha256', 'units', 'created', 'enc', 'plainSize', 'plainSha256']);
  for (const k of Object.keys(o)) if (!known.has(k)) bad(`unknown field "${k}"`);
  if (o.v !== 1) bad(`unsupported body version ${JSON.stringify(o.v)}`);
  const nameErr = checkReleaseName(o.name as string);
  if (nameErr) bad(nameErr);
  if (!Number.isSafeInteger(o.size) || (o.size as number) < 0) bad('size is not a non-negative integer');
  if (!Number.isSafeInteger(o.unitSize) || (o.unitSize as number) < MIN_UNIT_BYTES || (o.unitSize as number) > MAX_UNIT_BYTES) {
    bad(`unitSize must be an integer from ${MIN_UNIT_BYTES} to ${MAX_UNIT_BYTES}`);
  }
  if (typeof o.sha256 !== 'string' || !HEX64.test(o.sha256)) bad('sha256 is not 64 lowercase hex characters');
  if (!Array.isArray(o.units)) bad('units is not an array');
  const count = unitCountFor(o.size as number, o.unitSize as number);
  if (count > MAX_UNITS) bad(`release has ${count} units; at most ${MAX_UNITS} are allowed (raise unitSize)`);
  if ((o.units as unknown[]).length !== count) bad(`units lists ${(o.units as unknown[]).length} hashes, size and unitSize need ${count}`);
  for (let i = 0; i < count; i++) {
    const h = (o.units as unknown[])[i];
    if (typeof h !== 'string' || !HEX64.test(h)) bad(`units[${i}] is not 64 lowercase hex characters`);
  }
  if (typeof o.created !== 'string' || o.created.length > 64 || Number.isNaN(Date.parse(o.created))) bad('created is not a timestamp');
  if (o.enc !== undefined || o.plainSize !== undefined || o.plainSha256 !== undefined) {
    if (o.enc !== 'aes-256-gcm') bad('enc must be "aes-256-gcm"');
    if (typeof o.plainSha256 !== 'string' || !HEX64.test(o.plainSha256)) bad('plainSha256 is not 64 lowercase hex characters');
    // Each unit is its plaintext plus a 16-byte tag.
    if (!Number.isSafeInteger(o.plainSize) || (o.plainSize as number) < 0 || (o.plainSize as number) + 16 * count !== o.size) bad('plainSize does not match size less 16 bytes per unit');
  }
  return o as unknown as ManifestBody;
}

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
  if (raw.length > MAX_MANIFEST_BYTES) bad(`file is ${raw.length} bytes, more than the ${MAX_MANIFEST_BYTES} allowed`);
  let outer: unknown;
  try {
    outer = JSON.parse(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8'));
  } catch (err) {
    bad(`not JSON (${(err as Error).message})`);
  }
  if (typeof outer !== 'object' || outer === null || Array.isArray(outer)) bad('not a JSON object');
  const o = outer as Record<string, unknown>;
  if (o.fleetcast !== 'manifest') bad('not a fleetcast manifest');
  if (o.v !== 1) bad(`unsupported manifest version ${JSON.stringify(o.v)}`);
  for (const f of ['body', 'key', 'sig'] as const) {
    if (typeof o[f] !== 'string' || !B64.test(o[f] as string)) bad(`${f} is not base64`);
  }
  const bodyBytes = Buffer.from(o.body as string, 'base64');
  const keyBytes = Buffer.from(o.key as string, 'base64');
  const sig = Buffer.from(o.sig as string, 'base64');
  if (keyBytes.length !== 32) bad('key is not a 32-byte Ed25519 public key');
  if (sig.length !== 64) bad('sig is not a 64-byte Ed25519 signature');
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
    bad('signed body is not JSON');
  }
  return finish(validateBody(body), bodyBytes, Buffer.from(raw));
}
