/**
 * The agent's LAN protocol core: its inputs and outputs (issue 16). The core owns the
 * protocol state (peers, assembly, NACK and repair scheduling, repair roles, cross-group
 * forwarding intents, send queues and pacing, announces) and does no I/O: no clock, no
 * timers, no sockets, no files. Time (`now`, ms) and randomness come in as arguments.
 *
 * The shape is quinn-proto's `Connection` (handlers `handle_*` for what arrives, `poll_*`
 * for what the caller must do: poll_transmit, poll_timeout, poll for events; "none of the
 * functions actually perform system-level I/O"), and the split of NORM (NRL's
 * normSession.cpp / normNode.cpp): one session object for the local member, one record
 * per remote sender. The driver (src/agent/agent.ts) owns the clock, both transports,
 * HTTP and the disk; test/sim/ drives many cores over an in-memory LAN.
 */
import type { Logger } from '../../util/log';

export interface Endpoint {
  address: string;
  port: number;
}

/** What the core needs of the manifest (release/manifest.ts's Manifest fits). */
export interface CoreManifest {
  /** Release id, 16 bytes, as it appears in every packet. */
  readonly idBytes: Uint8Array;
  readonly size: number;
  readonly unitSize: number;
  readonly unitCount: number;
  /** SHA-256 (hex) of each unit: the core verifies what it assembles from the LAN. */
  readonly units: readonly string[];
}

/** The server's split-download map as the core reads it (the join/heartbeat answer). */
export interface CoreSplitMap {
  members: {
    id: string;
    verifiedUnits: number;
    complete: boolean;
    address: string | null;
    group?: string;
    dataPort?: number | null;
    role?: 'gateway' | 'member';
  }[];
  /** unit -> index into members of its holder (lease or verified copy); -1: none. */
  holders: number[];
  groupComplete: boolean;
  /** Base64 of this release's group key: MACs on control packets. Absent: keep the last. */
  groupKey?: string;
  /** false under the `all-fetched` start policy until every unit is held somewhere. */
  lanStart?: boolean;
  /** The other LAN groups' gateways, where copies go besides the LAN. */
  copyTo?: CopyDestination[];
  /** 1.5: copies go down copy trees of this degree, derived from `members` (docs/protocol.md section 17). */
  copyTree?: number;
}

export interface CopyDestination {
  member: string;
  address: string;
  port: number;
  /** Its LAN group, when known: a path to a group's new gateway starts at the pace learned to the old one. */
  group?: string;
}

/** A lease answer (POST /v1/lease), merged into the core's queue of units to fetch. */
export interface CoreLeaseGrant {
  units: number[];
  /** Units granted because the wide-area group could not deliver them: LAN copies only. */
  relayed?: number[];
  copyTo?: CopyDestination[];
}

export interface CoreConfig {
  manifest: CoreManifest;
  /** This member's id (the server's name for it) and LAN group. */
  member: string;
  group: string;
  /** Set when the LAN group is part of a wide-area group (gateways then tick for cross-group pacing). */
  wideGroup?: string;
  /** Random per process, never 0: receivers drop their own multicast by it. */
  senderId: number;
  /** Fragment payload bytes: the grid, equal across the group. */
  fragmentBytes: number;
  /** Bits kept for units: a stream's unit count grows up to this (agent/stream-core.ts); default the manifest's. */
  unitCapacity?: number;
  /** Units verified at start (the store's bitmap, MSB first); copied. */
  have: Uint8Array;
  rateBytesPerSec: number;
  crossRateBytesPerSec: number;
  /** First control-packet sequence number (the driver uses the clock in µs, so a restart does not reuse one). */
  controlSeqStart: bigint;
  /** Uniform in [0, 1): NACK and repair backoffs. */
  random: () => number;
  logger?: Logger;
  /** Counters the core adds to (AgentCounters in agent.ts and `drops`); default: its own. */
  stats?: CoreStats;
  /**
   * LAN assemblies go to storage as they fill ('write' and 'verify' events) instead of
   * being held whole in memory for a 'store' event (issue 16). Default off (streams).
   */
  assembleInPlace?: boolean;
  /** Echo each NACK once this long after it while no data of its unit came (NackScheduler echoMs; streams). Default none. */
  nackEchoMs?: number;
  /**
   * Hold copies from a sender not heard yet until a control packet of it comes
   * (held-datagrams.ts; streams). Default off: in a release the NACK-suppression
   * simulator's 256 receivers sent twice the NACK packets with it (3.72 requests per lost
   * fragment before its first repair against 2.57), as the whole-unit NACKs of members
   * that had dropped such copies no longer suppressed the others' and a release has no
   * latency to win.
   */
  holdUnheard?: boolean;
  /**
   * Copy the units fetched lately to a LAN group's gateway learnt of after them
   * (copyRecent in core-units.ts; streams). Default off: a release's units are large,
   * and a burst of them on a new path (its pace starts at 4 Mbit/s) can pause this
   * member's downloads past the cross-queue bounds and get its overdue leases hedged: the
   * likely cause (not shown) of a test/wide.test.ts failure under load, two units fetched
   * twice from the server.
   */
  recentCopies?: boolean;
}

/** The counters the core keeps (a subset of AgentStats; the driver passes its own object). */
export interface CoreStats {
  lanBytes: number;
  lanDuplicateBytes: number;
  copyBytesSent: number;
  repairBytesSent: number;
  repairPacketsSent: number;
  nacksSent: number;
  nacksSuppressed: number;
  nacksHeard: number;
  /** NACKed units we queued repair fragments for. */
  nacksAnswered: number;
  /** Payload bytes sent by unicast to other LAN groups (copies and repairs). */
  crossGroupBytesSent: number;
  /** Payload bytes received from other LAN groups (forwarded copies). */
  crossGroupBytes: number;
  /** Fragments this gateway re-multicast on its LAN. */
  fragmentsForwarded: number;
  /** Units copied to another LAN group's gateway learnt of after they were fetched (copyRecent). */
  recentCopies: number;
  /** `all-fetched`: units fetched while the LAN exchange waited, copied once it started. */
  unitsDeferred: number;
  unitsFromWan: number;
  unitsFromLan: number;
  unitsRejected: number;
  drops: Record<string, number>;
}

/**
 * Datagrams to send now, all to one place: `to === null` is the LAN group (multicast),
 * an endpoint is a unicast to another LAN group's member (the cross transport).
 * The views stay valid until `transmitted()` returns.
 */
export interface Transmit {
  to: Endpoint | null;
  datagrams: Uint8Array[];
}

export type CoreEvent =
  /** A unit assembled from the LAN and verified: write it, then call unitStored() (or stop on an error). The bytes stay the core's: do not keep them. */
  | { type: 'store'; unit: number; bytes: Buffer }
  /**
   * In place (CoreConfig.assembleInPlace): unverified bytes of a unit being assembled from
   * the LAN; write them at once (they are valid until the next pollEvent()), with the unit's
   * bit clear, or call assemblyRefused() when the store will not take them.
   */
  | { type: 'write'; unit: number; offset: number; bytes: Buffer }
  /**
   * In place: every fragment of the unit is written. Call verifyInPlace() at once, with a
   * reader of the unit's bytes on disk; when it says so, commit the unit, then unitStored().
   */
  | { type: 'verify'; unit: number }
  /** Read a stored unit (for repairs or deferred copies), then call unitRead(). */
  | { type: 'read'; unit: number }
  /** Ask the server for units (POST /v1/lease with `want` and `reason`), then call relayAnswered(). */
  | { type: 'relay'; units: number[]; reason: 'relayed' | 'stalled' }
  /** Units were queued to fetch (takeLeased() may have more) or the map changed: wake the fetch workers. */
  | { type: 'wake' }
  /** Every unit is verified and stored: finish the file, then call fileComplete(). */
  | { type: 'complete' };

/** The core's interface; LanCore (core/lan-core.ts) implements it. */
export interface ProtocolCore {
  // ---- inputs (handle_*): what arrived
  /** One datagram from the LAN (via undefined) or from another group's member by unicast (via = its source). */
  handleDatagram(buf: Uint8Array, now: number, via?: Endpoint): void;
  /** The deadline from pollTimeout() passed (calling it early is harmless). */
  handleTimeout(now: number): void;
  /** A new split map (join/heartbeat answer). */
  setSplitMap(map: CoreSplitMap, now: number): void;
  /** A lease answer; for a relay request, the units asked for too (those not granted are asked again later). */
  leaseGranted(grant: CoreLeaseGrant, now: number, asked?: { units: number[]; reason: 'relayed' | 'stalled' }): void;
  /** A relay request failed (network, server): ask again later. */
  relayFailed(units: number[], now: number): void;
  /** The next leased unit to fetch over the WAN, or undefined. */
  takeLeased(): number | undefined;
  /** Units leased and not yet taken. */
  readonly leasedCount: number;
  /** A buffer for a download of `len` bytes, from the core's pool; giveBuffer() returns one not handed to unitFetched. */
  takeBuffer(len: number): Buffer;
  giveBuffer(buf: Buffer): void;
  /** The driver starts downloading `unit`: LAN assembly of it stops. */
  fetchStarted(unit: number, now: number): void;
  /**
   * The unit's bytes up to `received` are here: fragments complete in it go out as copies
   * (cut-through). `bytes[0]` is the unit's byte `base` (a window that moves on by whole
   * fragments; every fragment from the last call's end on must be in it).
   */
  fetchProgress(unit: number, bytes: Uint8Array, received: number, now: number, base?: number): void;
  /** The download ended (done, failed or abandoned). */
  fetchEnded(unit: number, now: number): void;
  /**
   * A unit from the WAN, verified and written to storage. `bytes` become the core's: it
   * serves repairs from them and later recycles them for other units' assemblies, so the
   * caller must neither keep them nor take them from a pool of its own (use takeBuffer()).
   * null: the caller gave the buffer back with giveBuffer() already (once written).
   */
  unitFetched(unit: number, bytes: Buffer | null, now: number): void;
  /**
   * Optional, before unitStored: the store needs the bytes of a 'store' event no more
   * (written or failed; PartialStore.writeUnit's `released`), though the unit is not yet
   * committed. The core recycles them then instead of holding them through the commit.
   */
  unitWritten?(unit: number, now: number): void;
  /**
   * In place: the unit of a 'verify' event matches its hash, with `read(offset, into)`
   * filling `into` from the unit's bytes on disk (synchronously: nothing may land on them
   * between the read and the commit). false: dropped (bad copy, or no longer assembled).
   */
  verifyInPlace?(unit: number, read: (offset: number, into: Buffer) => void, now: number): boolean;
  /** In place: the store refused a 'write' (a download of the unit is landing): the assembly is dropped. */
  assemblyRefused?(unit: number, now: number): void;
  /** The unit of a 'store' event is written. */
  unitStored(unit: number, now: number): void;
  /** The bytes of a 'read' event, or null when they could not be read. They become the core's (see unitFetched): hand a fresh buffer. */
  unitRead(unit: number, bytes: Buffer | null, now: number): void;
  /** The whole file is verified and in place: announces say complete. */
  fileComplete(now: number): void;
  /** Finishing failed (the whole-file hash did not match): storage starts over holding `have`. */
  fileFailed(have: Uint8Array, now: number): void;
  /** The LAN transport can take datagrams again after refusing some. */
  writable(now: number): void;
  setRate(bytesPerSec: number): void;
  /**
   * The LAN transport copies each datagram before sendBatch returns (native sendmmsg):
   * the core may then write new datagrams where sent ones were. Off by default; the
   * driver must not keep a LAN Transmit's datagrams past transmitted().
   */
  reuseSentDatagrams?(on: boolean): void;

  // ---- outputs (poll_*): what the driver must do
  /** Next datagrams to send, or null. Every Transmit must be answered by transmitted(). */
  pollTransmit(now: number): Transmit | null;
  /** How many of t.datagrams the transport took. LAN: the rest is sent again after writable(). Unicast: the rest is lost. */
  transmitted(t: Transmit, accepted: number, now: number): void;
  /** Absolute time (ms) at which handleTimeout() is due, or null when nothing is timed. */
  pollTimeout(): number | null;
  pollEvent(): CoreEvent | null;

  // ---- getters
  /** Whether the unit is verified and stored. */
  has(unit: number): boolean;
  /** Every unit verified and stored. */
  readonly holdsAll: boolean;
  /** Copies queued beyond what the LAN/cross pace drains soon: start no WAN download (`inFlight`: pause one, SendEngine). */
  backlogged(inFlight?: boolean): boolean;
  /** Backlog drained below half: paused downloads may resume. */
  drained(inFlight?: boolean): boolean;
}
