import { createHash, KeyObject, randomBytes } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { CONTENT_CIPHER, CONTENT_KEY_BYTES, contentKeyPath, encryptUnit, GCM_TAG_BYTES } from './content-crypto';
import { checkReleaseName, DEFAULT_UNIT_BYTES, Manifest, ManifestBody, MAX_UNIT_BYTES, MAX_UNITS, MIN_UNIT_BYTES, signManifest, unitCountFor } from './manifest';
import { writeAtomic } from '../storage/files';

export interface PublishOptions {
  name?: string;
  unitSize?: number;
  /** Called with bytes hashed so far and the total. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Encrypt the content (AES-256-GCM per unit) with a new key written to
   * `<contentKeysDir>/<release id>.key`, outside the store. `unitSize` stays the unit
   * size on the wire: each unit holds `unitSize - 16` plaintext bytes and the tag.
   */
  contentKeysDir?: string;
}

/**
 * Splits `file` into units, hashes each unit and the whole, signs the manifest and
 * stores it with a copy of the data under `<store>/releases/<id>/` (manifest, data).
 * One pass over the file: the copy and the hashes come from the same reads.
 */
export async function publishRelease(file: string, storeDir: string, key: KeyObject, opts: PublishOptions = {}): Promise<Manifest> {
  const unitSize = opts.unitSize ?? DEFAULT_UNIT_BYTES;
  if (!Number.isSafeInteger(unitSize) || unitSize < MIN_UNIT_BYTES || unitSize > MAX_UNIT_BYTES) {
    throw new FleetcastError('BAD_UNIT_SIZE', `--unit-size must be an integer from ${MIN_UNIT_BYTES} to ${MAX_UNIT_BYTES}`, ExitCode.USAGE);
  }
  const name = opts.name ?? path.basename(file);
  const nameErr = checkReleaseName(name);
  if (nameErr) throw new FleetcastError('BAD_NAME', `release ${nameErr}: ${JSON.stringify(name)} (use --name)`, ExitCode.USAGE);
  let size: number;
  try {
    const st = await fs.stat(file);
    if (!st.isFile()) throw new FleetcastError('NOT_FILE', `${file} is not a regular file`, ExitCode.NOINPUT);
    size = st.size;
  } catch (err) {
    throw fromSystemError(err, `reading ${file}`);
  }
  if (unitCountFor(size, opts.contentKeysDir ? unitSize - GCM_TAG_BYTES : unitSize) > MAX_UNITS) {
    throw new FleetcastError('TOO_MANY_UNITS', `${file} would have more than ${MAX_UNITS} units; raise --unit-size`, ExitCode.USAGE);
  }
  const incoming = path.join(storeDir, 'incoming');
  const tmpData = path.join(incoming, `${randomBytes(8).toString('hex')}.data`);
  try {
    await fs.mkdir(incoming, { recursive: true });
  } catch (err) {
    throw fromSystemError(err, `creating ${incoming}`);
  }
  const whole = createHash('sha256');
  const plainWhole = createHash('sha256');
  const units: string[] = [];
  const contentKey = opts.contentKeysDir ? randomBytes(CONTENT_KEY_BYTES) : null;
  // Plaintext per unit: the whole unit, or what is left beside the GCM tag.
  const plainUnit = contentKey ? unitSize - GCM_TAG_BYTES : unitSize;
  let pending = Buffer.allocUnsafe(plainUnit);
  let inUnit = 0;
  let done = 0;
  let written = 0;
  const out = await fs.open(tmpData, 'w').catch((err) => {
    throw fromSystemError(err, `creating ${tmpData}`);
  });
  const emit = async (plain: Buffer) => {
    const bytes = contentKey ? encryptUnit(contentKey, units.length, plain) : plain;
    await out.write(bytes);
    whole.update(bytes);
    plainWhole.update(plain);
    units.push(createHash('sha256').update(bytes).digest('hex'));
    written += bytes.length;
  };
  try {
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
      let off = 0;
      while (off < chunk.length) {
        const take = Math.min(plainUnit - inUnit, chunk.length - off);
        chunk.copy(pending, inUnit, off, off + take);
        inUnit += take;
        off += take;
        if (inUnit === plainUnit) {
          await emit(pending);
          pending = Buffer.allocUnsafe(plainUnit);
          inUnit = 0;
        }
      }
      done += chunk.length;
      opts.onProgress?.(done, size);
    }
    if (inUnit > 0) await emit(pending.subarray(0, inUnit));
    await out.datasync();
  } catch (err) {
    await out.close().catch(() => undefined);
    await fs.rm(tmpData, { force: true });
    throw fromSystemError(err, `publishing ${file}`);
  }
  await out.close();
  if (done !== size) {
    await fs.rm(tmpData, { force: true });
    throw new FleetcastError('CHANGED', `${file} changed size while it was read (${size} → ${done}); publish it again`, ExitCode.DATAERR);
  }
  const encFields = contentKey ? { enc: CONTENT_CIPHER, plainSize: size, plainSha256: plainWhole.digest('hex') } : {};
  const manifest = signManifest({ v: 1, name, size: written, unitSize, sha256: whole.digest('hex'), units, created: new Date().toISOString(), ...encFields } as ManifestBody, key);
  if (contentKey) {
    // The key first: a release in the store without its key could never be decrypted.
    try {
      await fs.mkdir(opts.contentKeysDir!, { recursive: true, mode: 0o700 });
      await writeAtomic(contentKeyPath(opts.contentKeysDir!, manifest.id), Buffer.from(contentKey.toString('hex') + '\n'));
      await fs.chmod(contentKeyPath(opts.contentKeysDir!, manifest.id), 0o600);
    } catch (err) {
      await fs.rm(tmpData, { force: true });
      throw fromSystemError(err, `writing the content key to ${opts.contentKeysDir}`);
    }
  }
  const dir = path.join(storeDir, 'releases', manifest.id);
  try {
    await fs.mkdir(dir, { recursive: true });
    await fs.rename(tmpData, path.join(dir, 'data'));
    await writeAtomic(path.join(dir, 'manifest'), manifest.raw);
  } catch (err) {
    await fs.rm(tmpData, { force: true });
    throw fromSystemError(err, `storing release in ${dir}`);
  }
  return manifest;
}
