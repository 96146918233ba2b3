import { createPublicKey } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Manifest, parseManifest, isReleaseId } from './manifest';
import { fromSystemError } from '../util/errors';

export interface StoredRelease {
  manifest: Manifest;
  dataPath: string;
}

/**
 * The server's releases on disk: `<store>/releases/<id>/{manifest,data}`, as written
 * by `fleetcast publish`. The server checks each manifest's signature against the
 * key named in it (integrity, not trust: agents decide trust with their own keys).
 */
export class ReleaseStore {
  private readonly releases = new Map<string, StoredRelease>();
  /** Loads under way (get), so that requests asking at once share one. */
  private readonly loading = new Map<string, Promise<StoredRelease | undefined>>();
  readonly problems: string[] = [];
  constructor(readonly dir: string) {}

  async load(): Promise<void> {
    const root = path.join(this.dir, 'releases');
    let entries: string[];
    try {
      entries = await fs.readdir(root);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw fromSystemError(err, `reading ${root}`);
    }
    for (const id of entries) {
      if (!isReleaseId(id)) continue;
      await this.loadOne(id).catch((err: Error) => this.problems.push(`release ${id}: ${err.message}`));
    }
  }

  async loadOne(id: string): Promise<StoredRelease | undefined> {
    const dir = path.join(this.dir, 'releases', id);
    const raw = await fs.readFile(path.join(dir, 'manifest'));
    const outer = JSON.parse(raw.toString('utf8')) as { key?: string };
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(String(outer.key), 'base64').toString('base64url') }, format: 'jwk' });
    const manifest = parseManifest(raw, [key]);
    if (manifest.id !== id) throw new Error(`manifest hashes to ${manifest.id}, not its directory name`);
    const dataPath = path.join(dir, 'data');
    const st = await fs.stat(dataPath);
    if (st.size !== manifest.size) throw new Error(`data is ${st.size} bytes, manifest says ${manifest.size}`);
    const rel = { manifest, dataPath };
    this.releases.set(id, rel);
    return rel;
  }

  /**
   * Looks on disk too, so releases published while the server runs are found. Requests
   * that ask at once share one load: every idle follower of a channel asks for its new
   * release in the same half second, and each load reads and verifies the manifest.
   */
  async get(id: string): Promise<StoredRelease | undefined> {
    if (!isReleaseId(id)) return undefined;
    const known = this.releases.get(id);
    if (known) return known;
    let loading = this.loading.get(id);
    if (!loading) {
      loading = this.loadOne(id)
        .catch(() => undefined)
        .finally(() => this.loading.delete(id));
      this.loading.set(id, loading);
    }
    return loading;
  }

  /** Only what is loaded already (no disk access). */
  peek(id: string): StoredRelease | undefined {
    return this.releases.get(id);
  }

  list(): StoredRelease[] {
    return [...this.releases.values()];
  }
}
