import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeAtomic } from '../storage/files';

/**
 * How a release is distributed (docs/wide-area.md), per release in
 * `<store>/releases/<id>/distribution.json`, written by `fleetcast publish --policy
 * --start`; the server's `policy` and `start` are the defaults.
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
}

export async function readDistribution(releaseDir: string): Promise<Partial<Distribution> | null> {
  let raw: string;
  try {
    raw = await fs.readFile(path.join(releaseDir, 'distribution.json'), 'utf8');
  } catch {
    return null;
  }
  const j = JSON.parse(raw) as Record<string, unknown>;
  const out: Partial<Distribution> = {};
  if (typeof j.policy === 'string' && (POLICIES as readonly string[]).includes(j.policy)) out.policy = j.policy as Policy;
  if (typeof j.start === 'string' && (START_POLICIES as readonly string[]).includes(j.start)) out.start = j.start as StartPolicy;
  return out;
}

export async function writeDistribution(releaseDir: string, d: Partial<Distribution>): Promise<void> {
  await writeAtomic(path.join(releaseDir, 'distribution.json'), Buffer.from(JSON.stringify(d) + '\n'));
}
