import { promises as fs } from 'node:fs';
import { writeAtomic } from '../storage/partial-store';
import { HookBody } from '../wire/http-bodies';
import { Logger } from '../util/log';

export type HookResult = HookBody & { at: number };

/** At most this many results are kept (the newest), whatever the file says. */
const MAX_RESULTS = 100_000;

/**
 * The on_complete results agents report (POST /v1/hook), keyed "release/group/member",
 * kept in `<store>/hooks.json` so `fleetcast fleet` still shows them after a server
 * restart: an agent reports a result once, and never again for that release.
 */
export class HookResults {
  private readonly byKey = new Map<string, HookResult>();
  private dirty = false;

  constructor(private readonly file: string, private readonly log: Logger) {}

  get(key: string): HookResult | undefined {
    return this.byKey.get(key);
  }

  set(key: string, r: HookResult): void {
    this.byKey.delete(key);
    this.byKey.set(key, r);
    if (this.byKey.size > MAX_RESULTS) this.byKey.delete(this.byKey.keys().next().value!);
    this.dirty = true;
  }

  /** Read the file; results of releases no longer in the store (`known` says) are dropped. */
  async load(known: (release: string) => boolean): Promise<void> {
    let raw: string;
    try {
      raw = await fs.readFile(this.file, 'utf8');
    } catch {
      return; // none yet
    }
    try {
      const j = JSON.parse(raw) as { results?: unknown };
      if (!Array.isArray(j.results)) throw new Error('bad shape');
      for (const x of j.results.slice(-MAX_RESULTS) as Partial<HookResult>[]) {
        if (typeof x !== 'object' || x === null) continue;
        if (typeof x.release !== 'string' || typeof x.group !== 'string' || typeof x.member !== 'string' || typeof x.at !== 'number' || typeof x.durationMs !== 'number') continue;
        if (!known(x.release)) continue;
        this.byKey.set(`${x.release}/${x.group}/${x.member}`, {
          release: x.release,
          group: x.group,
          member: x.member,
          at: x.at,
          durationMs: x.durationMs,
          ...(typeof x.exitCode === 'number' ? { exitCode: x.exitCode } : {}),
          ...(typeof x.signal === 'string' ? { signal: x.signal.slice(0, 32) } : {}),
          ...(typeof x.error === 'string' ? { error: x.error.slice(0, 512) } : {}),
        });
      }
    } catch (err) {
      this.log.warn(`ignoring ${this.file}: ${(err as Error).message}`);
    }
  }

  async save(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    try {
      await writeAtomic(this.file, Buffer.from(JSON.stringify({ results: [...this.byKey.values()] })));
    } catch (err) {
      this.log.warn(`cannot save ${this.file}: ${(err as Error).message}`);
    }
  }
}
