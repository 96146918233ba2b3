import type { World } from './world';

/** When each member got `unit` (simulated ms): a member fetching it from the WAN, the others storing it from their LAN. */
export function watchUnit(w: World, unit: number): Map<string, number> {
  const gotAt = new Map<string, number>();
  for (const m of w.members) {
    const core = m.core as unknown as { unitFetched(u: number, b: Buffer | null, now: number): void; unitStored(u: number, now: number): void };
    const fetched = core.unitFetched.bind(core);
    const stored = core.unitStored.bind(core);
    core.unitFetched = (u, b, now) => {
      if (u === unit && !gotAt.has(m.opts.id)) gotAt.set(m.opts.id, now);
      fetched(u, b, now);
    };
    core.unitStored = (u, now) => {
      if (u === unit && !gotAt.has(m.opts.id) && m.store.has(u)) gotAt.set(m.opts.id, now);
      stored(u, now);
    };
  }
  return gotAt;
}
