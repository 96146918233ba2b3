import { CopyDestination, CoreLeaseGrant, CoreSplitMap } from './core-api';

/**
 * The origin server as the simulation needs it: membership, a split-download map
 * and answers to relay requests. Deliberately simpler than src/server/allocator.ts:
 * shares are static (unit u belongs to the u-th member in join order, round robin,
 * of those present at the start), so a test controls who sends what.
 *
 * What it does model, because the tests are about it:
 * - heartbeats: a member's map (who holds what, roles, the group key) refreshes on
 *   every heartbeat; a member silent for `memberTimeoutMs` is dropped, its units not
 *   yet held verified by a live member go to live members (round robin) as new
 *   leases, and its group gets a new gateway;
 * - gateways: the first live member of each LAN group, in join order; every member
 *   of a wide-area group copies to the other groups' gateways (`copyTo`);
 * - relays: a member that asks for units (NACKs nobody answered) is leased them.
 */
export interface ServerMember {
  id: string;
  group: string;
  address: string;
  port: number;
  joinedAt: number;
  lastSeen: number;
  have: Uint8Array | null;
  verifiedUnits: number;
  complete: boolean;
  alive: boolean;
}

export interface ServerOptions {
  unitCount: number;
  groupKey: Buffer;
  memberTimeoutMs: number;
  /** Several LAN groups share the download (copies cross to gateways). */
  wide: boolean;
  /** 1.5 copy trees of this degree (docs/protocol.md section 17): maps say `copyTree`, `copyTo` is empty. */
  copyTree?: number;
}

export class SimServer {
  private readonly members: ServerMember[] = [];
  /** unit -> member id it is leased to or held by (for the map). */
  private readonly owner: (string | null)[];
  /** Leases the server handed out, by member: the simulation's driver delivers them. */
  private readonly onLease: Map<string, (grant: CoreLeaseGrant) => void> = new Map();
  /** Units leased again after their first owner died, and units leased on relay requests. */
  releasedUnits = 0;
  relayedUnits = 0;
  relayRequests = 0;

  constructor(readonly opts: ServerOptions) {
    this.owner = new Array(opts.unitCount).fill(null);
  }

  join(m: { id: string; group: string; address: string; port: number }, now: number, onLease: (grant: CoreLeaseGrant) => void): void {
    this.members.push({ ...m, joinedAt: now, lastSeen: now, have: null, verifiedUnits: 0, complete: false, alive: true });
    this.onLease.set(m.id, onLease);
  }

  /** Static shares over the members present now: unit u to member u mod n. Returns each member's units. */
  assignShares(): Map<string, number[]> {
    const live = this.members.filter((m) => m.alive);
    const shares = new Map<string, number[]>(live.map((m) => [m.id, []]));
    for (let u = 0; u < this.opts.unitCount; u++) {
      const m = live[u % live.length];
      this.owner[u] = m.id;
      shares.get(m.id)!.push(u);
    }
    return shares;
  }

  heartbeat(id: string, now: number, have: Uint8Array, verifiedUnits: number, complete: boolean): CoreSplitMap {
    const m = this.member(id);
    m.lastSeen = now;
    m.have = have;
    m.verifiedUnits = verifiedUnits;
    m.complete = complete;
    return this.map(id);
  }

  /** Drops members silent too long and re-leases what only they had. Returns the dropped ids. */
  expire(now: number): string[] {
    const gone = this.members.filter((m) => m.alive && now - m.lastSeen > this.opts.memberTimeoutMs);
    if (!gone.length) return [];
    for (const m of gone) m.alive = false;
    const live = this.members.filter((m) => m.alive);
    if (!live.length) return gone.map((m) => m.id);
    const grants = new Map<string, number[]>();
    let next = 0;
    for (let u = 0; u < this.opts.unitCount; u++) {
      if (!gone.some((m) => m.id === this.owner[u])) continue;
      const holder = live.find((m) => m.have && (m.have[u >>> 3] & (0x80 >>> (u & 7))) !== 0);
      if (holder) {
        this.owner[u] = holder.id;
        continue;
      }
      const to = live[next++ % live.length];
      this.owner[u] = to.id;
      grants.set(to.id, [...(grants.get(to.id) ?? []), u]);
      this.releasedUnits++;
    }
    for (const [id, units] of grants) this.onLease.get(id)!({ units, copyTo: this.copyTo(id) });
    return gone.map((m) => m.id);
  }

  /** A member asks for units its peers could not give it: lease them to it. */
  relay(id: string, units: number[], reason: 'relayed' | 'stalled'): CoreLeaseGrant {
    this.relayRequests++;
    this.relayedUnits += units.length;
    return { units: [...units], ...(reason === 'relayed' ? { relayed: [...units] } : {}), copyTo: this.copyTo(id) };
  }

  gatewayOf(group: string): ServerMember | undefined {
    return this.members.find((m) => m.alive && m.group === group);
  }

  copyTo(id: string): CopyDestination[] {
    if (!this.opts.wide || this.opts.copyTree) return [];
    const mine = this.member(id).group;
    const out: CopyDestination[] = [];
    for (const g of new Set(this.members.map((m) => m.group))) {
      if (g === mine) continue;
      const gw = this.gatewayOf(g);
      if (gw) out.push({ member: gw.id, address: gw.address, port: gw.port });
    }
    return out;
  }

  map(id: string): CoreSplitMap {
    const live = this.members.filter((m) => m.alive);
    const index = new Map(live.map((m, i) => [m.id, i]));
    const gateways = new Set(live.filter((m) => this.gatewayOf(m.group) === m).map((m) => m.id));
    return {
      members: live.map((m) => ({
        id: m.id,
        verifiedUnits: m.verifiedUnits,
        complete: m.complete,
        address: m.address,
        group: m.group,
        dataPort: m.port,
        role: gateways.has(m.id) ? ('gateway' as const) : ('member' as const),
      })),
      holders: this.owner.map((o) => (o === null ? -1 : (index.get(o) ?? -1))),
      groupComplete: live.length > 0 && live.every((m) => m.complete),
      groupKey: this.opts.groupKey.toString('base64'),
      lanStart: true,
      copyTo: this.copyTo(id),
      ...(this.opts.wide && this.opts.copyTree ? { copyTree: this.opts.copyTree } : {}),
    };
  }

  private member(id: string): ServerMember {
    const m = this.members.find((x) => x.id === id);
    if (!m) throw new Error(`sim server: unknown member ${id}`);
    return m;
  }
}
