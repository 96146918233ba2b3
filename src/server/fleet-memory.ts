import { promises as fs } from 'node:fs';
import { writeAtomic } from '../storage/files';
import { HookBody } from '../wire/http-bodies';
import { Logger } from '../util/log';
import { OneAtATime } from '../util/one-at-a-time';

export type HookResult = HookBody & { at: number };

/** At most this many hook results and overheads are kept (the newest), whatever the file says. */
const MAX_ENTRIES = 100_000;

/**
 * What `fleetcast fleet` shows that the allocator's soft state loses in a server restart,
 * kept in `<store>/fleet.json` (docs/protocol.md, section 7), keyed "release/group/member":
 *   - the on_complete result each agent reported (POST /v1/hook): an agent reports it
 *     once, and never again for that release;
 *   - each member's last measured overhead (ms per MiB): when the member joins again
 *     after a restart, its allocator starts from it (GroupAllocator.rememberOverhead),
 *     and `fleet` marks it until the member is measured again.
 */
export class FleetMemory {
  private readonly hooks = new Map<string, HookResult>();
  private readonly overheads = new Map<string, number>();
  private dirty = false;
  /** Told of every hook result an agent reports (several coordinators keep them in the shared engine too). */
  onHook: ((r: HookResult) => void) | null = null;

  constructor(private readonly file: string, private readonly log: Logger) {}

  hook(key: string): HookResult | undefined {
    return this.hooks.get(key);
  }

  setHook(key: string, r: HookResult, report = true): void {
    bounded(this.hooks, key, r);
    this.dirty = true;
    if (report) this.onHook?.(r);
  }

  /** The overhead measured before the last restart, if the allocator has none yet. */
  overhead(key: string): number | undefined {
    return this.overheads.get(key);
  }

  noteOverhead(key: string, msPerMiB: number): void {
    if (this.overheads.get(key) === msPerMiB) return;
    bounded(this.overheads, key, msPerMiB);
    this.dirty = true;
  }

  /** Read the file; entries of releases no longer in the store (`known` says) are dropped. */
  async load(known: (release: string) => boolean): Promise<void> {
    let raw: string;
    try {
      raw = await fs.readFile(this.file, 'utf8');
    } catch {
      return; // none yet
    }
    const r = parseFleetMemory(raw);
    if (typeof r === 'string') return this.log.warn(`ignoring ${this.file}: ${r}`);
    for (const x of r.hooks) if (known(x.release)) this.hooks.set(`${x.release}/${x.group}/${x.member}`, x);
    for (const [k, v] of r.overheads) if (known(k.split('/')[0])) this.overheads.set(k, v);
  }

  private readonly saving = new OneAtATime();

  /** One write at a time: a save waits for the one in flight (stop must not return while the timer's write runs). */
  save(): Promise<void> {
    return this.saving.run(() => this.saveNow());
  }

  private async saveNow(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    try {
      await writeAtomic(this.file, await fleetMemoryJson(this.hooks, this.overheads));
    } catch (err) {
      this.log.warn(`cannot save ${this.file}: ${(err as Error).message}`);
    }
  }
}

/** Entries serialised between two yields to the event loop (fleetMemoryJson). */
export const SAVE_CHUNK_ENTRIES = 2000;

/**
 * fleet.json's bytes, SAVE_CHUNK_ENTRIES entries at a time with a yield to the event loop
 * between: at 100,000 members one JSON.stringify of the overheads took 80-110 ms (7.5 MB),
 * a stall every few seconds that every request arriving during it waited out (issue 17's
 * p99). Entries that change meanwhile are written as they are when reached; one moved to
 * the end by a newer value (bounded) can appear twice, and the reader keeps the last.
 */
export async function fleetMemoryJson(hooks: Map<string, HookResult>, overheads: Map<string, number>): Promise<Buffer> {
  const out: Buffer[] = [];
  let part: string[] = [];
  const flush = async () => {
    out.push(Buffer.from(part.join('')));
    part = [];
    await new Promise<void>((r) => setImmediate(r));
  };
  part.push('{"hooks":[');
  let n = 0;
  for (const h of hooks.values()) {
    part.push(n ? ',' : '', JSON.stringify(h));
    if (++n % SAVE_CHUNK_ENTRIES === 0) await flush();
  }
  part.push('],"overheads":{');
  n = 0;
  for (const [k, v] of overheads) {
    part.push(n ? ',' : '', JSON.stringify(k), ':', JSON.stringify(v));
    if (++n % SAVE_CHUNK_ENTRIES === 0) await flush();
  }
  part.push('}}');
  out.push(Buffer.from(part.join('')));
  return Buffer.concat(out);
}

function bounded<V>(m: Map<string, V>, key: string, v: V): void {
  m.delete(key);
  m.set(key, v);
  if (m.size > MAX_ENTRIES) m.delete(m.keys().next().value!);
}

/**
 * fleet.json: `{"hooks": [{release, group, member, at, durationMs, exitCode?, signal?,
 * error?}, ...], "overheads": {"release/group/member": msPerMiB, ...}}`. Pure and total
 * (a fuzz target): what it could read, or what is wrong with the whole file. Malformed
 * entries are skipped, strings capped as the endpoint caps them.
 */
export function parseFleetMemory(text: string): { hooks: HookResult[]; overheads: [string, number][] } | string {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  if (typeof j !== 'object' || j === null) return 'not an object';
  const { hooks, overheads } = j as { hooks?: unknown; overheads?: unknown };
  if (hooks !== undefined && !Array.isArray(hooks)) return 'hooks is not a list';
  if (overheads !== undefined && (typeof overheads !== 'object' || overheads === null || Array.isArray(overheads))) return 'overheads is not an object';
  const out: { hooks: HookResult[]; overheads: [string, number][] } = { hooks: [], overheads: [] };
  for (const x of ((hooks ?? []) as Partial<HookResult>[]).slice(-MAX_ENTRIES)) {
    if (typeof x !== 'object' || x === null) continue;
    if (typeof x.release !== 'string' || typeof x.group !== 'string' || typeof x.member !== 'string' || typeof x.at !== 'number' || typeof x.durationMs !== 'number') continue;
    out.hooks.push({
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
  for (const [k, v] of Object.entries((overheads ?? {}) as Record<string, unknown>).slice(-MAX_ENTRIES)) {
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0 && k.length <= 600 && k.split('/').length >= 3) out.overheads.push([k, v]);
  }
  return out;
}
