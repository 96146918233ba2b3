import { createHash } from 'node:crypto';
import { isName } from '../wire/ids';
import { MaxFailures, MAX_WAVES, RolloutSpec, WaveSpec } from './rollout-model';

/** The waves of a rollout: the --waves and --max-failures syntax, and which member falls in which wave. */

/** What wave assignment reads of a rollout. */
type RolloutWaves = Pick<RolloutSpec, 'id' | 'waves'>;

// ---------------------------------------------------------------- parsing (CLI and API input)

/** "1%,10%,50%,100%" (cumulative shares) or "site-a,site-b,*" (LAN groups). Returns the waves or what is wrong. */
export function parseWaves(s: string): WaveSpec[] | string {
  const items = s.split(',').map((x) => x.trim());
  if (items.length === 0 || items.some((x) => x === '')) return 'must be a comma-separated list, e.g. 1%,10%,100% or site-a,site-b,*';
  if (items.length > MAX_WAVES) return `has ${items.length} waves; at most ${MAX_WAVES}`;
  const shares = items.filter((x) => x.endsWith('%'));
  if (shares.length && shares.length !== items.length) return 'mixes shares (N%) and LAN group names: use one or the other';
  if (shares.length) {
    const out: WaveSpec[] = [];
    let last = 0;
    for (const x of items) {
      const m = /^(\d{1,3}(?:\.\d{1,3})?)%$/.exec(x);
      const v = m ? Number(m[1]) : NaN;
      if (!(v > 0 && v <= 100)) return `${JSON.stringify(x)} is not a share between 0% and 100%`;
      if (v <= last) return `shares are cumulative and must grow: ${x} after ${last}%`;
      last = v;
      out.push({ kind: 'share', upto: v });
    }
    if (last !== 100) return `ends at ${last}%: the last wave must reach 100%`;
    return out;
  }
  const seen = new Set<string>();
  for (const x of items) {
    if (x !== '*' && !isName(x)) return `${JSON.stringify(x)} is not a LAN group name (or * for every other group)`;
    if (seen.has(x)) return `names ${x} twice`;
    seen.add(x);
  }
  if (!seen.has('*')) return 'does not reach 100%: end the list with * (every other LAN group)';
  if (items.at(-1) !== '*') return '* (every other LAN group) must be the last wave';
  return items.map((x) => ({ kind: 'groups', groups: [x] }));
}

/** "5%" or "3". */
export function parseMaxFailures(s: string): MaxFailures | string {
  const t = s.trim();
  let m = /^(\d{1,3}(?:\.\d{1,3})?)%$/.exec(t);
  if (m && Number(m[1]) <= 100) return { percent: Number(m[1]) };
  m = /^\d{1,9}$/.exec(t);
  if (m) return { count: Number(t) };
  return `${JSON.stringify(s)} is neither a share (5%) nor a count (3)`;
}

/** "90s", "30m", "2h", "1d", "1h30m"; ms, or what is wrong. */
export function parseDuration(s: string): number | string {
  const t = s.trim();
  if (!/^(\d{1,6}(ms|s|m|h|d))+$/.test(t)) return `${JSON.stringify(s)} is not a duration like 90s, 30m, 2h or 1h30m`;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  let ms = 0;
  for (const m of t.matchAll(/(\d+)(ms|s|m|h|d)/g)) ms += Number(m[1]) * unit[m[2]];
  return ms;
}

// ---------------------------------------------------------------- waves

/** A point in [0, 1) from the member and rollout ids: the member's place, stable across restarts. */
export function memberPoint(rolloutId: string, member: string): number {
  const h = createHash('sha256').update(rolloutId).update('\0').update(member).digest();
  return h.readUIntBE(0, 6) / 2 ** 48;
}

/**
 * Waves for the members known when the rollout starts. Shares: members sorted by their
 * point, the first ceil(share x n) of them up to each wave (so 25% of 8 is exactly 2).
 * Groups: the wave naming the member's LAN group, else the `*` wave.
 */
export function assignWaves(spec: RolloutWaves, members: { id: string; group: string }[]): Map<string, number> {
  const out = new Map<string, number>();
  if (spec.waves[0]?.kind === 'share') {
    const sorted = [...members].map((m) => ({ ...m, p: memberPoint(spec.id, m.id) })).sort((a, b) => a.p - b.p || (a.id < b.id ? -1 : 1));
    const n = sorted.length;
    let w = 0;
    sorted.forEach((m, k) => {
      while (w < spec.waves.length - 1 && k >= Math.ceil(((spec.waves[w] as { upto: number }).upto * n) / 100)) w++;
      out.set(m.id, w);
    });
    return out;
  }
  for (const m of members) out.set(m.id, groupWave(spec.waves, m.group));
  return out;
}

function groupWave(waves: WaveSpec[], group: string): number {
  const i = waves.findIndex((w) => w.kind === 'groups' && w.groups.includes(group));
  return i >= 0 ? i : waves.findIndex((w) => w.kind === 'groups' && w.groups.includes('*'));
}

/** The wave of a member that was not known at the start: by its point against the shares, or by its group. */
export function lateWave(spec: RolloutWaves, member: string, group: string): number {
  if (spec.waves[0]?.kind !== 'share') return groupWave(spec.waves, group);
  const p = memberPoint(spec.id, member) * 100;
  const i = spec.waves.findIndex((w) => w.kind === 'share' && p < w.upto);
  return i >= 0 ? i : spec.waves.length - 1;
}
