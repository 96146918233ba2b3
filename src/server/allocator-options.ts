/** A GroupAllocator's tunables (allocator.ts) and their defaults. */
export interface AllocatorOptions {
  unitCount: number;
  unitBytes: (unit: number) => number;
  memberTimeoutMs: number;
  /** Leases a member of median speed may hold unfinished. */
  baseDepth: number;
  maxDepth: number;
  /** A lease is reclaimed when it runs this many times longer than predicted... */
  leaseSlackFactor: number;
  /** ...but never sooner than this. */
  leaseMinMs: number;
  /** Near the end, a member predicted to finish this many times later than the best waits. */
  tailSlackFactor: number;
  /** Weight of a new overhead sample in the EWMA. */
  overheadAlpha: number;
  /**
   * Hedging (004 claim 5): a lease running this many times longer than its member's
   * overhead predicts (and at least hedgeMinMs) is also given to another member; the
   * first verified copy wins.
   */
  hedgeFactor: number;
  hedgeMinMs: number;
  /** `representative` policy: only each LAN group's gateway (its best member) takes leases. */
  representativeOnly: boolean;
  /** A gateway keeps its role until its overhead is this many times the best in its group. */
  gatewaySlackFactor: number;
  /**
   * ...or this many times, while it is forwarding other groups' copies (it re-multicast
   * within gatewayIdleMs): moving it costs every sender a path learned anew and the copies
   * queued for it, and the forwarding itself (and, under `wide`, downloads paced by the
   * cross-group copies) inflates its overhead. On a loaded box the role flapped between
   * members at 1.5x, each move making things worse.
   */
  gatewayForwardingSlackFactor: number;
  /**
   * A gateway that re-multicast nothing for this long, while its LAN group lacked units
   * held verified in other groups, loses the role for gatewayDemoteMs.
   */
  gatewayIdleMs: number;
  gatewayDemoteMs: number;
  /**
   * `all-fetched` start: nothing crosses between groups until every unit is held, so a
   * quiet gateway is judged only after that.
   */
  deferredStart: boolean;
  /**
   * A claim is not proof: when members of a LAN group have asked for a unit (relay or stall
   * requests) at least claimReports times over at least claimExpireMs while a member of
   * that group claims to hold it, the claim expires and the unit is leased again.
   */
  claimExpireMs: number;
  claimReports: number;
  /**
   * Start gate, after udp-sender's --min-receivers/--max-wait (udpcast): no lease is
   * granted until this many members have joined the allocation, or until its first member
   * joined maxWaitMs ago. 0: lease at once. Without it, members that boot a few seconds
   * late find their group done and gone, and fetch the release again.
   */
  minMembers: number;
  maxWaitMs: number;
  /**
   * Protocol 1.4 delta answers: changes kept per allocator (a member further behind gets
   * the whole map), and how often a member's counters alone (verified units, leases,
   * overhead, forwarded, LAN bytes) are sent again when nothing else about it changed.
   */
  mapLogEntries: number;
  memberRefreshMs: number;
  /**
   * The refresh interval is at least this times the allocator's members: each member's
   * answers then carry at most about one counters-only record per this many ms, however
   * large its wide-area group (200 members: every 200 s; issue 17).
   */
  memberRefreshPerMemberMs: number;
  /**
   * Protocol 1.5 copy trees (docs/protocol.md section 17): in a wide-area group whose every
   * member speaks 1.5, each sender has at most this many copy destinations per unit; 0
   * keeps every member sending to every other group's gateway.
   */
  copyTreeDegree: number;
  /**
   * A stream's allocator: units are shared by overhead with credits (allocator-share.ts),
   * not given to whoever asks first, and there is no tail rule (a stream has no tail).
   */
  shareWeighted: boolean;
}

export const DEFAULT_ALLOCATOR_OPTIONS: Omit<AllocatorOptions, 'unitCount' | 'unitBytes'> = {
  memberTimeoutMs: 6000,
  baseDepth: 3,
  maxDepth: 12,
  leaseSlackFactor: 4,
  leaseMinMs: 15000,
  tailSlackFactor: 2,
  overheadAlpha: 0.3,
  hedgeFactor: 4,
  hedgeMinMs: 20_000,
  representativeOnly: false,
  gatewaySlackFactor: 1.5,
  gatewayForwardingSlackFactor: 4,
  gatewayIdleMs: 8000,
  gatewayDemoteMs: 30_000,
  deferredStart: false,
  claimExpireMs: 10_000,
  claimReports: 2,
  minMembers: 0,
  maxWaitMs: 30_000,
  mapLogEntries: 2048,
  copyTreeDegree: 4,
  memberRefreshMs: 30_000,
  memberRefreshPerMemberMs: 1_000,
  shareWeighted: false,
};
