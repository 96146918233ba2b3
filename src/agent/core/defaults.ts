/** Tuning knobs: one home, units in the names (STYLE.md). */
export const AGENT_DEFAULTS = {
  rateBytesPerSec: 60 * 1024 * 1024,
  /** Cap on what one member sends to other LAN groups; the pace under it is learned per path (CrossPacer). */
  crossRateBytesPerSec: (100 * 1e6) / 8,
  /** A gateway reports to each member sending it copies this often (FEEDBACK). */
  crossFeedbackMs: 200,
  unicastRecvBufferBytes: 4 * 1024 * 1024,
  unicastSendBufferBytes: 1024 * 1024,
  /** Cross-group paths and sources tracked (bounded against abuse). */
  maxCrossPaths: 256,
  /**
   * 1.5 copy trees: a gateway with this many copy bytes queued to other sites passes no
   * more copies on (its uplink is behind); the sites below it NACK the units' holders.
   */
  treeForwardQueueMaxBytes: 4 * 1024 * 1024,
  /**
   * A stream member copies to a LAN group's gateway that it learns of the units it fetched
   * this recently, of its last recentCopyUnits, oldest first, up to recentCopyMaxBytes
   * (copyRecent in core-units.ts; the bytes as the cross queue's lease pause, so a burst
   * of them cannot pause downloads).
   */
  recentCopyMs: 1000,
  recentCopyUnits: 16,
  recentCopyMaxBytes: 256 * 1024,
  burstBytes: 256 * 1024,
  fetchConcurrency: 2,
  tickMs: 5,
  announceMs: 400,
  /**
   * Holding the whole release while every peer heard does too, the announce timer runs
   * this often instead (an idle agent's wake-ups); under peerTimeoutMs so peers keep us listed.
   */
  idleAnnounceMs: 2000,
  announceDebounceMs: 10,
  /** A unit that a peer holds is ripe for NACKs once no data arrived for it this long... */
  gapQuietMs: 25,
  /**
   * ...or, once its last fragment arrived (its sender got to the end: what is missing before
   * it is lost), this long after its last data. Not 0: NACKs sent while a busy LAN still
   * carries copies reach the other receivers too late to suppress theirs. In the simulator's
   * suppression curve (test/sim/nack-suppression.test.ts, 100 Mbit/s links, 10% loss), 0 and
   * 5 ms gave 2.94 and 3.05 requests per lost fragment before its first repair at 64
   * receivers and 4.06 and 4.33 at 256 (the bound is 3); 12 ms gave 2.31 and 2.58.
   */
  gapAfterLastFragmentMs: 12,
  /**
   * NORM's T_maxBackoff. 15 ms, was 30: at 3% loss a stream unit's tail is two or three NACK
   * rounds, each waiting a backoff (bench/results/stream.md); the suppression curve of
   * test/sim/nack-suppression.test.ts holds at 15 ms up to 256 receivers (docs/simulator.md).
   */
  nackBackoffMs: 15,
  /** The NACK holdoff's ceiling (and its value until a repair round trip was measured)... */
  nackHoldoffMs: 80,
  /** ...and its floor: it follows the measured repair round trip in between (NackScheduler). */
  nackHoldoffMinMs: 20,
  nackMaxUnitsInFlight: 16,
  /**
   * A stream's NACK is echoed once this long after it while no data of its unit came
   * (NackScheduler echoMs), under the holdoff's floor. A lost repair is sent again only if
   * it left its repairer at most 5 ms after our NACK came (repairDedupMs counts from then; a
   * tick and repairAggregateMs can take 8): else the echo is dropped there and the holdoff
   * asks again (about a quarter of echoes on the sites testbed). Releases do not echo.
   */
  streamNackEchoMs: 15,
  repairAggregateMs: 3,
  repairBackoffMs: 40,
  /**
   * A fragment repaired less than this long ago is not repaired again for a NACK: that NACK
   * crossed the repair in flight (a LAN round trip and a tick at each end). It must stay
   * well under the soonest a receiver asks again after its own NACK (nackHoldoffMinMs, less
   * repairAggregateMs), or a repair lost on the way is never re-sent for that re-ask: at
   * 60 ms that was most of a stream's 3% loss tail (bench/results/stream.md, "Where the
   * tail went": NACK, repair lost, the re-ask dropped as a duplicate, then a holdoff doubled
   * for the NACK that brought nothing).
   */
  repairDedupMs: 10,
  /** A NACK its designated repairer leaves unanswered this long is answered by any holder. */
  orphanRepairMs: 1000,
  maxAssemblies: 128,
  /**
   * Bytes of incomplete assemblies and pooled unit buffers, each: at large unit sizes the
   * assembly count shrinks to fit (at least minAssemblies). Issue 13: 128 assemblies of
   * 64 MiB units was 8 GiB. An assembly built in place holds a chunk, not its unit, but
   * counts as a unit here: what it holds on disk is unverified until it completes.
   */
  assemblyMaxBytes: 128 * 1024 * 1024,
  minAssemblies: 4,
  /**
   * In place (the agent's LAN assemblies, issue 16): consecutive fragments are gathered in a
   * chunk of this size and written to the partial file when it is full or a gap breaks it,
   * instead of a unit-sized buffer per assembly (4 filling at once in the demo: 4 MiB).
   */
  assemblyChunkBytes: 128 * 1024,
  /** Free chunks kept for reuse. */
  assemblyChunksFree: 8,
  /** An incomplete assembly that got no data for this long is dropped (its buffer freed). */
  assemblyMaxIdleMs: 10_000,
  /**
   * Verified units kept in memory to answer NACKs from. None: a repair reads the unit
   * back from the store into a pooled buffer (the page cache holds recent units), so
   * memory stays flat in release size (issue 16: 16 cached units were 16 MiB per agent).
   */
  repairCacheUnits: 0,
  /**
   * Free unit-sized buffers the pool keeps for the next repair read or deferred copy
   * (and a stream's downloads and assemblies); also capped by assemblyMaxBytes. A buffer the pool drops is old by then and
   * stays resident until a full GC, so the pool keeps what the caps let be in use.
   */
  unitPoolMaxFree: 16,
  peerTimeoutMs: 5000,
  /**
   * A gateway asks the server for a unit (relay) when a forwarded NACK went unanswered
   * this long, no data of the unit arrived for that long either, and the holder has sent
   * us nothing for relayHolderQuietMs (a holder still sending is busy, not gone)...
   */
  relayAfterMs: 10_000,
  relayHolderQuietMs: 3000,
  /** ...unless the unit itself has seen no data for this long: then a live holder that never answers is passed over. */
  relayUnitQuietMs: 30_000,
  /**
   * A unit another site announced is NACKed only after this long without any of its data
   * (its paced copy may still be queued), unless the member whose copies of it reach us
   * announced it: then gapQuietMs after that announce (docs/protocol.md section 8).
   */
  crossGapQuietMs: 1000,
  /** No unit verified and no data of a missing unit arrived for this long, nothing in flight: ask the server. */
  stallRelayMs: 15_000,
  /**
   * A fragment repaired to a cross-group requester less than this long ago (or less than
   * the path's queued repairs and 1.5 round trips, CrossPaths.repairWindowMs, when longer)
   * is not repaired again for its NACK: that repair is still on its way. Was 100 ms, which
   * is longer than a gateway waits before it asks again (its holdoff follows the measured
   * repair round trip, from nackHoldoffMinMs): a repair lost on the way was re-sent only
   * for the second or third re-ask. On the sites testbed (wide-area stream, 3% loss) those
   * units were the p99: re-asks 36 and 44 ms after a lost repair dropped as duplicates, the
   * unit held 300 ms after its batch. Like repairDedupMs, it stays under nackHoldoffMinMs.
   */
  unicastRepairDedupMs: 10,
  /** Fragments whose last cross-group repair time is kept (8 bytes each), across units and requesters. */
  maxRepairTracked: 1 << 20,
  /** Members heard with valid control packets that we track (bounded against abuse). */
  maxPeers: 4096,
  lingerMs: 60_000,
  lingerPollMs: 50,
  fetchRetries: 3,
  /** A unit from the server that fails verification is fetched again after this, doubling per failure... */
  badUnitBackoffMs: 500,
  /** ...up to this. */
  badUnitBackoffMaxMs: 60_000,
  /** After this many failures of one unit from the server (and every as many more), the agent reports it. */
  badUnitReportAfter: 3,
  sendBatch: 64,
  /**
   * Copy bytes queued for the LAN above which WAN downloads pause: ~16 ms at 500 Mbit/s.
   * Was 4 MiB; each queued MiB is resident, and datagrams that wait long outlive two
   * scavenges, so their arenas die old and stay until a full GC (issue 16).
   */
  copyQueueMaxBytes: 1024 * 1024,
  /** Outgoing datagrams are carved from arenas of this size: one allocation per ~170 1.5 KB datagrams. */
  datagramArenaBytes: 256 * 1024,
  /** Emptied LAN arenas kept for reuse (native transport only): copyQueueMaxBytes' worth and a little more. */
  datagramArenasFree: 8,
  /** Cross-group copies queued above which no new WAN download starts (~0.2 s at 10 Mbit/s). */
  crossQueueMaxBytes: 256 * 1024,
  /**
   * ... and above which even a download in flight pauses: the memory bound. Between the
   * two a started unit is finished, so its LAN peers are not left holding part of it
   * while a slow cross-site path drains (they drop it after assemblyMaxIdleMs and ask the
   * server after stallRelayMs). Room for fetchConcurrency 1 MiB units to a few sites.
   */
  crossQueueHardMaxBytes: 8 * 1024 * 1024,
};
