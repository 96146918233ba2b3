import { createHash, KeyObject, randomBytes } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { checkReleaseName, DEFAULT_UNIT_BYTES, Manifest, MAX_UNIT_BYTES, MAX_UNITS, MIN_UNIT_BYTES, signManifest, unitCountFor } from './manifest';
import { writeAtomic } from '../storage/partial-store';

export interface PublishOptions {
  name?: string;
  unitSize?: number;
  /** Called with bytes hashed so far and the total. */
  onProgress?: (done: number, total: number) => void;
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
  if (unitCountFor(size, unitSize) > MAX_UNITS) {
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
  const units: string[] = [];
  let unitHash = createHash('sha256');
  let inUnit = 0;
  let done = 0;
  const out = await fs.open(tmpData, 'w').catch((err) => {
    throw fromSystemError(err, `creating ${tmpData}`);
  });
  try {
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
      await out.write(chunk);
      whole.update(chunk);
      let off = 0;
      while (off < chunk.length) {
        const take = Math.min(unitSize - inUnit, chunk.length - off);
        unitHash.update(chunk.subarray(off, off + take));
        inUnit += take;
        off += take;
        if (inUnit === unitSize) {
          units.push(unitHash.digest('hex'));
          unitHash = createHash('sha256');
          inUnit = 0;
        }
      }
      done += chunk.length;
      opts.onProgress?.(done, size);
    }
    if (inUnit > 0) units.push(unitHash.digest('hex'));
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
  const manifest = signManifest({ v: 1, name, size, unitSize, sha256: whole.digest('hex'), units, created: new Date().toISOString() }, key);
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
