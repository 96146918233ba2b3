import type { CoreSplitMap, Endpoint } from './types';

/** What one member reads from the server's split-download map: its role, units' holders, registered endpoints. */
export class SplitMapView {
  map: CoreSplitMap | null = null;

  constructor(
    private readonly member: string,
    private readonly group: string,
  ) {}

  /** This member's role from the latest map. */
  get role(): 'gateway' | 'member' {
    return this.map?.members.find((m) => m.id === this.member)?.role ?? 'member';
  }

  get memberCount(): number {
    return this.map?.members.length ?? 1;
  }

  /** The holder of unit u in the map (its LAN group and unicast endpoint), or null. */
  holderOf(u: number): { id: string; group: string; address: string | null; dataPort: number | null } | null {
    const h = this.map?.holders[u];
    if (h === undefined || h < 0) return null;
    const m = this.map!.members[h];
    return m ? { id: m.id, group: m.group ?? this.group, address: m.address, dataPort: m.dataPort ?? null } : null;
  }

  /**
   * The endpoint another member registered with the server (its address and unicast
   * port) that `from` matches, or null when no member registered it.
   */
  registeredEndpoint(from: Endpoint): Endpoint | null {
    for (const m of this.map?.members ?? []) {
      if (m.id === this.member || !m.address || !m.dataPort) continue;
      const e = { address: m.address, port: m.dataPort };
      if (sameEndpoint(from, e)) return e;
    }
    return null;
  }

  /**
   * Who answers a NACK for a unit we hold, as far as the map says: its holder answers at
   * once ('designated'); with no holder named, every holder answers after a random backoff
   * ('fallback'); a unit held only in another LAN group is answered by this group's
   * gateway; otherwise 'others' (another member of our group holds it: the caller waits).
   */
  repairRole(unit: number): 'designated' | 'fallback' | 'others' {
    const map = this.map;
    const h = map?.holders[unit];
    if (!map || h === undefined || h < 0 || !map.members[h]) return 'fallback';
    if (map.members[h].id === this.member) return 'designated';
    // Held only in another LAN group: this group's gateway (which re-multicast it) answers.
    if ((map.members[h].group ?? this.group) !== this.group) return this.role === 'gateway' ? 'designated' : 'fallback';
    return 'others';
  }
}

/** An address as a socket reports it and as a member registered it: no zone index, no IPv4-mapped prefix. */
const bare = (a: string) => a.replace(/%.*$/, '').replace(/^::ffff:/, '');

/** Whether a datagram's source `from` is the endpoint `e` (a registered one, from the map). */
export function sameEndpoint(from: Endpoint, e: Endpoint): boolean {
  return from.port === e.port && bare(from.address) === bare(e.address);
}
