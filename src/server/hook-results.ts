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
    const r = parseHookResults(raw);
    if (typeof r === 'string') return this.log.warn(`ignoring ${this.file}: ${r}`);
    for (const x of r) if (known(x.release)) this.byKey.set(`${x.release}/${x.group}/${x.member}`, x);
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

/**
 * hooks.json: `{"results": [{release, group, member, at, durationMs, exitCode?, signal?,
 * error?}, ...]}`. Pure and total (a fuzz target): the results it could read, or what is
 * wrong with the whole file. Malformed entries are skipped, strings capped as the
 * endpoint caps them.
 */
export function parseHookResults(text: string): HookResult[] | string {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  const list = (j as { results?: unknown } | null)?.results;
  if (!Array.isArray(list)) return 'no results list';
  const out: HookResult[] = [];
  for (const x of list.slice(-MAX_RESULTS) as Partial<HookResult>[]) {
    if (typeof x !== 'object' || x === null) continue;
    if (typeof x.release !== 'string' || typeof x.group !== 'string' || typeof x.member !== 'string' || typeof x.at !== 'number' || typeof x.durationMs !== 'number') continue;
    out.push({
      release: x.release.slice(0, 64),
      group: x.group.slice(0, 256),
      member: x.member.slice(0, 256),
      at: x.at,
      durationMs: x.durationMs,
      ...(typeof x.exitCode === 'number' ? { exitCode: x.exitCode } : {}),
      ...(typeof x.signal === 'string' ? { signal: x.signal.slice(0, 32) } : {}),
      ...(typeof x.error === 'string' ? { error: x.error.slice(0, 512) } : {}),
    });
  }
  return out;
}
