import { ExitCode, FleetcastError } from '../util/errors';

/**
 * The signed manifest (docs/protocol.md, "Manifest"). The file is JSON:
 *   {"fleetcast":"manifest","v":1,"body":B64,"key":B64,"sig":B64}
 * `body` is the UTF-8 JSON of ManifestBody; `sig` is Ed25519 over exactly those
 * bytes; `key` is the signer's raw 32-byte public key (a hint: verification uses
 * only keys the agent trusts). The release id is the first 16 bytes of
 * SHA-256(body bytes), so it names this exact manifest.
 *
 * This file is the format (fields, limits, the body's validation), pure so that every
 * layer can use it; signing and verifying are in src/release/manifest.ts.
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
export { isReleaseId } from './ids';

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

/** Throws BAD_MANIFEST (exit 65) with `msg`. */
export function badManifest(msg: string): never {
  throw new FleetcastError('BAD_MANIFEST', `manifest: ${msg}`, ExitCode.DATAERR);
}

export function validateBody(b: unknown): ManifestBody {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) badManifest('body is not an object');
  const o = b as Record<string, unknown>;
  const known = new Set(['v', 'name', 'size', 'unitSize', 'sha256', 'units', 'created', 'enc', 'plainSize', 'plainSha256']);
  for (const k of Object.keys(o)) if (!known.has(k)) badManifest(`unknown field "${k}"`);
  if (o.v !== 1) badManifest(`unsupported body version ${JSON.stringify(o.v)}`);
  const nameErr = checkReleaseName(o.name as string);
  if (nameErr) badManifest(nameErr);
  if (!Number.isSafeInteger(o.size) || (o.size as number) < 0) badManifest('size is not a non-negative integer');
  if (!Number.isSafeInteger(o.unitSize) || (o.unitSize as number) < MIN_UNIT_BYTES || (o.unitSize as number) > MAX_UNIT_BYTES) {
    badManifest(`unitSize must be an integer from ${MIN_UNIT_BYTES} to ${MAX_UNIT_BYTES}`);
  }
  if (typeof o.sha256 !== 'string' || !HEX64.test(o.sha256)) badManifest('sha256 is not 64 lowercase hex characters');
  if (!Array.isArray(o.units)) badManifest('units is not an array');
  const count = unitCountFor(o.size as number, o.unitSize as number);
  if (count > MAX_UNITS) badManifest(`release has ${count} units; at most ${MAX_UNITS} are allowed (raise unitSize)`);
  if ((o.units as unknown[]).length !== count) badManifest(`units lists ${(o.units as unknown[]).length} hashes, size and unitSize need ${count}`);
  for (let i = 0; i < count; i++) {
    const h = (o.units as unknown[])[i];
    if (typeof h !== 'string' || !HEX64.test(h)) badManifest(`units[${i}] is not 64 lowercase hex characters`);
  }
  if (typeof o.created !== 'string' || o.created.length > 64 || Number.isNaN(Date.parse(o.created))) badManifest('created is not a timestamp');
  if (o.enc !== undefined || o.plainSize !== undefined || o.plainSha256 !== undefined) {
    if (o.enc !== 'aes-256-gcm') badManifest('enc must be "aes-256-gcm"');
    if (typeof o.plainSha256 !== 'string' || !HEX64.test(o.plainSha256)) badManifest('plainSha256 is not 64 lowercase hex characters');
    // Each unit is its plaintext plus a 16-byte tag.
    if (!Number.isSafeInteger(o.plainSize) || (o.plainSize as number) < 0 || (o.plainSize as number) + 16 * count !== o.size) badManifest('plainSize does not match size less 16 bytes per unit');
  }
  return o as unknown as ManifestBody;
}
