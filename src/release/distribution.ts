import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeAtomic } from '../storage/files';

/**
 * How a release is distributed (docs/wide-area.md), per release in
 * `<store>/releases/<id>/distribution.json`, written by `fleetcast publish --policy
 * --start --origin`; the server's `policy`, `start` and `origin` are the defaults.
 *
 * - policy `wide`: one copy per wide-area group: each unit is leased to one member of
 *   the whole wide-area group, which multicasts it on its LAN and sends it to the other
 *   LAN groups' gateways. `group`: one copy per LAN group, no cross-group traffic.
 *   `representative`: each LAN group's best member fetches every unit and relays each
 *   fragment on arrival.
 * - start `immediate`: each unit goes out on the LAN as it arrives. `all-fetched`: LAN
 *   exchange starts once every unit is held by some member.
 */
export const POLICIES = ['wide', 'group', 'representative'] as const;
export const START_POLICIES = ['immediate', 'all-fetched'] as const;
export type Policy = (typeof POLICIES)[number];
export type StartPolicy = (typeof START_POLICIES)[number];

export interface Distribution {
  policy: Policy;
  start: StartPolicy;
  /**
   * HTTP range origins that serve this release's unit bytes instead of the coordinator
   * (docs/scale-out.md): base URLs of a copy of the store, `<origin>/releases/<id>/data`.
   * Empty: the coordinator serves them.
   */
  origins?: string[];
}

/** At most this many origins per release or server. */
export const MAX_ORIGINS = 8;

/** Why `url` cannot be an origin (http(s), no credentials, query or fragment, at most 512 characters), or null. */
export function originUrlProblem(url: string): string | null {
  if (url.length > 512) return 'is longer than 512 characters';
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return 'is not a URL';
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return `must be http:// or https://, not ${u.protocol}`;
  if (u.username || u.password || u.search || u.hash) return 'must not carry credentials, a query or a fragment';
  return null;
}

export async function readDistribution(releaseDir: string): Promise<Partial<Distribution> | null> {
  let raw: string;
  try {
    raw = await fs.readFile(path.join(releaseDir, 'distribution.json'), 'utf8');
  } catch {
    return null;
  }
  return parseDistribution(raw);
}

/** A distribution.json's text: what it validly says (unknown or bad fields dropped), or null when it is not a JSON object. */
export function parseDistribution(raw: string): Partial<Distribution> | null {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    return null; // not JSON: the server's defaults
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return null;
  const out: Partial<Distribution> = {};
  if (typeof j.policy === 'string' && (POLICIES as readonly string[]).includes(j.policy)) out.policy = j.policy as Policy;
  if (typeof j.start === 'string' && (START_POLICIES as readonly string[]).includes(j.start)) out.start = j.start as StartPolicy;
  if (Array.isArray(j.origins)) out.origins = j.origins.filter((o): o is string => typeof o === 'string' && originUrlProblem(o) === null).slice(0, MAX_ORIGINS);
  return out;
}

export async function writeDistribution(releaseDir: string, d: Partial<Distribution>): Promise<void> {
  await writeAtomic(path.join(releaseDir, 'distribution.json'), Buffer.from(JSON.stringify(d) + '\n'));
}
