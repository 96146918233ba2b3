import type { MemberRecord14 } from '../wire/http-bodies';
import { Member, MIB } from './allocator-state';

/** A member's 1.4 record and its JSON text, as built for the answers that carry it. */
export interface BuiltRecord {
  rec: MemberRecord14;
  json: string;
}

/**
 * Members' 1.4 records (docs/protocol.md section 14), each built and serialised once per
 * logged change rather than once per answer that carries it. In a wide-area group of 200
 * members a changed record goes out in up to 200 answers, and a whole map (a join) carries
 * all 200: at 100,000 agents under policy wide, building and serialising them was a third
 * of the server's CPU (issue 17).
 *
 * A kept record stays valid while what the change log last logged of its member (the
 * strings `loggedShape` and `loggedCounters` that touch() compares) and its role are the
 * same: every logged change of a member moves one of the three. In a delta, counters that
 * moved since the record was built without being logged stay as built until the next logged
 * change, as the protocol allows (they may lag by the refresh interval); a whole map takes a
 * kept record only if it equals the member as it is now.
 */
export class RecordCache {
  private readonly kept = new WeakMap<Member, BuiltRecord & { shape: string; counters: string; role: string }>();

  /** `live`: only a record equal to what would be built now (a whole map shows the counters as they are). */
  get(m: Member, role: 'gateway' | 'member', live = false): BuiltRecord {
    const k = this.kept.get(m);
    const keyed = k !== undefined && k.shape === m.loggedShape && k.counters === m.loggedCounters && k.role === role;
    if (keyed && !live) return k;
    const rec = RecordCache.record(m, role);
    // Equal to the kept one: its JSON text serves (the stringify is the cost, not the object).
    if (keyed && (Object.keys(rec) as (keyof MemberRecord14)[]).every((f) => rec[f] === k.rec[f])) return k;
    const built = { rec, json: JSON.stringify(rec), shape: m.loggedShape, counters: m.loggedCounters, role };
    this.kept.set(m, built);
    return built;
  }

  private static record(m: Member, role: 'gateway' | 'member'): MemberRecord14 {
    return {
      slot: m.slot,
      id: m.id,
      group: m.lanGroup,
      address: m.address,
      dataPort: m.dataPort,
      role,
      overheadMsPerMiB: m.overhead === null ? null : m.overhead * MIB,
      verifiedUnits: m.verified,
      leases: m.leases.size,
      complete: m.complete,
      forwarded: m.forwarded,
      lanBytes: m.lanBytes,
      gatewayDemotions: m.gatewayDemotions,
      undeliveredClaims: m.undeliveredClaims,
    };
  }
}
