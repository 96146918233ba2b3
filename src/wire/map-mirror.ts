import { MAX_UNITS } from './manifest';
import type { MemberRecord, MemberRecord14, SplitMap } from './http-bodies';

/**
 * An agent's copy of its allocator's split map, kept from 1.4 answers: applies each
 * answer (untrusted bytes from the network, so every index is checked) and gives the
 * 1.3-shaped SplitMap the agent's core reads (members ranked by overhead, holders as
 * indices into them). Throws an Error naming the field on a malformed answer; the
 * caller then asks for the whole map again (mapVersion absent).
 */
export class MapMirror {
  epoch: number | undefined;
  version: number | undefined;
  private readonly bySlot = new Map<number, MemberRecord14>();
  private holders: Int32Array = new Int32Array(0);
  private flags = { groupComplete: false, allHeld: false };
  /** Units in the release: the length of the last full answer's holderSlots. */
  unitCount = 0;

  /** Forget everything: the next heartbeat asks for the whole map. */
  reset(): void {
    this.epoch = this.version = undefined;
    this.bySlot.clear();
  }

  apply(a: unknown): SplitMap {
    const o = a as Record<string, unknown>;
    if (typeof o !== 'object' || o === null) throw new Error('answer is not an object');
    const uint = (v: unknown, name: string) => {
      if (!Number.isSafeInteger(v) || (v as number) < 0) throw new Error(`${name} must be a non-negative integer`);
      return v as number;
    };
    const epoch = uint(o.mapEpoch, 'mapEpoch');
    const version = uint(o.mapVersion, 'mapVersion');
    if (!Array.isArray(o.members)) throw new Error('members must be an array');
    const full = o.full === true;
    if (!full && (epoch !== this.epoch || this.version === undefined)) throw new Error('a delta for a map this agent does not have');
    const slotOf = (v: unknown, name: string) => {
      if (!Number.isSafeInteger(v) || (v as number) < -1) throw new Error(`${name} must be a slot (integer >= -1)`);
      return v as number;
    };
    const records: MemberRecord14[] = [];
    for (const r of o.members as unknown[]) {
      const m = r as MemberRecord14;
      if (typeof m !== 'object' || m === null || typeof m.id !== 'string') throw new Error('members[] must be member records with an id');
      uint(m.slot, 'members[].slot');
      const n = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0);
      records.push({
        slot: m.slot,
        id: m.id,
        group: typeof m.group === 'string' ? m.group : '',
        address: typeof m.address === 'string' ? m.address : null,
        dataPort: Number.isSafeInteger(m.dataPort) && (m.dataPort as number) > 0 && (m.dataPort as number) < 65536 ? m.dataPort : null,
        role: m.role === 'gateway' ? 'gateway' : 'member',
        overheadMsPerMiB: typeof m.overheadMsPerMiB === 'number' && Number.isFinite(m.overheadMsPerMiB) ? m.overheadMsPerMiB : null,
        verifiedUnits: n(m.verifiedUnits),
        leases: n(m.leases),
        complete: m.complete === true,
        forwarded: n(m.forwarded),
        lanBytes: n(m.lanBytes),
        gatewayDemotions: n(m.gatewayDemotions),
        undeliveredClaims: n(m.undeliveredClaims),
      });
    }
    if (full) {
      if (!Array.isArray(o.holderSlots) || o.holderSlots.length > MAX_UNITS) throw new Error(`holderSlots must be an array of at most ${MAX_UNITS} slots`);
      this.unitCount = o.holderSlots.length;
      this.bySlot.clear();
      const h = new Int32Array(this.unitCount);
      for (let u = 0; u < this.unitCount; u++) h[u] = slotOf(o.holderSlots[u], 'holderSlots[]');
      this.holders = h;
    } else {
      if (o.gone !== undefined) {
        if (!Array.isArray(o.gone)) throw new Error('gone must be an array');
        for (const s of o.gone) this.bySlot.delete(uint(s, 'gone[]'));
      }
      if (o.holderChanges !== undefined) {
        const c = o.holderChanges;
        if (!Array.isArray(c) || c.length % 2 !== 0) throw new Error('holderChanges must be pairs of unit and slot');
        for (let i = 0; i < c.length; i += 2) {
          const u = uint(c[i], 'holderChanges[] unit');
          if (u >= this.unitCount) throw new Error(`holderChanges names unit ${u}; the release has ${this.unitCount}`);
          this.holders[u] = slotOf(c[i + 1], 'holderChanges[] slot');
        }
      }
    }
    for (const r of records) this.bySlot.set(r.slot, r);
    this.epoch = epoch;
    this.version = version;
    this.flags = { groupComplete: o.groupComplete === true, allHeld: o.allHeld === true };
    return this.view();
  }

  /** The 1.3 shape: members ranked by overhead (unmeasured last, by slot), holders as indices. */
  view(): SplitMap {
    const ranked = [...this.bySlot.values()].sort((a, b) => {
      if (a.overheadMsPerMiB === null || b.overheadMsPerMiB === null) return a.overheadMsPerMiB !== null ? -1 : b.overheadMsPerMiB !== null ? 1 : a.slot - b.slot;
      return a.overheadMsPerMiB - b.overheadMsPerMiB || a.slot - b.slot;
    });
    const index = new Map<number, number>();
    const members: MemberRecord[] = ranked.map((m, i) => {
      index.set(m.slot, i);
      return { id: m.id, rank: i + 1, overheadMsPerMiB: m.overheadMsPerMiB, verifiedUnits: m.verifiedUnits, leases: m.leases, complete: m.complete, lastSeenMsAgo: 0, address: m.address, group: m.group, dataPort: m.dataPort, role: m.role, forwarded: m.forwarded, lanBytes: m.lanBytes, gatewayDemotions: m.gatewayDemotions, undeliveredClaims: m.undeliveredClaims };
    });
    const holders = new Array<number>(this.unitCount);
    for (let u = 0; u < this.unitCount; u++) holders[u] = index.get(this.holders[u]) ?? -1;
    return { members, holders, ...this.flags };
  }
}
