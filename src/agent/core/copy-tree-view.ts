import { copyTreeChildren, copyTreeParent, copyTreeRing, copyTreeTargets, MAX_COPY_TREE_DEGREE, MAX_COPY_TREE_GROUPS } from '../../wire/copy-tree';
import type { CopyDestination, CoreSplitMap, Endpoint } from './types';

/**
 * One member's view of its wide-area group's copy trees (1.5, docs/protocol.md section
 * 16), derived from the member records of its map: the ring of LAN groups whose gateway
 * has a unicast endpoint, this member's group's position in it, and each position's
 * gateway. Gives the destinations of this member's own units (at most k), what a forward
 * copy of another origin goes on to (at most k), and whom a gateway announces itself to.
 */
export class CopyTreeView {
  /** Each ring position's gateway. */
  private readonly ring: CopyDestination[];
  /** This member's group's position, or -1 when its group has no gateway with an endpoint. */
  readonly at: number;
  readonly k: number;

  constructor(map: CoreSplitMap, group: string, k: number) {
    this.k = Math.max(1, Math.min(MAX_COPY_TREE_DEGREE, Math.floor(k)));
    const gw = new Map<string, CopyDestination>();
    for (const m of map.members) {
      const g = m.group ?? group;
      if (m.role !== 'gateway' || !m.address || !m.dataPort || gw.has(g)) continue;
      gw.set(g, { member: m.id, address: m.address, port: m.dataPort, group: g });
    }
    const names = copyTreeRing(gw.keys()).slice(0, MAX_COPY_TREE_GROUPS);
    this.ring = names.map((n) => gw.get(n)!);
    this.at = names.indexOf(group);
  }

  get size(): number {
    return this.ring.length;
  }

  /**
   * Where this member's own units go: its group's children in its own tree. A member whose
   * group is not in the ring (its gateway has no endpoint yet) sends to every gateway, as
   * in 1.4 but unflagged by a tree (origin: none), so every group still gets the unit once.
   */
  own(): { dests: CopyDestination[]; origin: number | undefined } {
    if (this.at < 0) return { dests: [...this.ring], origin: undefined };
    return { dests: copyTreeChildren(this.size, this.k, this.at, this.at).map((p) => this.ring[p]), origin: this.at };
  }

  /** Where a forward copy that started at ring position `origin` goes on from this group (none: a leaf, or unknown). */
  forwardTo(origin: number): CopyDestination[] {
    if (this.at < 0 || origin >= this.size) return [];
    return copyTreeChildren(this.size, this.k, origin, this.at).map((p) => this.ring[p]);
  }

  /**
   * Who sends this group the copies of a unit fetched by `holder`, a member of `group`:
   * the holder when this group is its group's child in that group's tree, or when its
   * group has no ring position (it copies to every gateway, own()); else the gateway of
   * this group's parent in that tree. Null when this group is not in the ring, or is `group`.
   */
  copierOf(group: string, holder: Endpoint): Endpoint | null {
    if (this.at < 0) return null;
    const origin = this.ring.findIndex((g) => g.group === group);
    if (origin < 0) return holder;
    const parent = copyTreeParent(this.size, this.k, origin, this.at);
    if (parent < 0) return null;
    return parent === origin ? holder : this.ring[parent];
  }

  /** Every gateway this group's gateway may forward to, over all origins: it announces itself to them. */
  gatewayTargets(): CopyDestination[] {
    if (this.at < 0) return [];
    return copyTreeTargets(this.size, this.k, this.at).map((p) => this.ring[p]);
  }
}
