import { createHash, KeyObject, randomBytes } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import { makeDir } from '../storage/make-dir';
import * as os from 'node:os';
import * as path from 'node:path';
import { Manifest, parseManifest, unitLength } from '../release/manifest';
import { PartialStore } from '../storage/partial-store';
import { createTransport } from '../transport/binding';
import { trySetBuffer } from '../transport/dgram-transport';
import { DEFAULT_MAX_DATAGRAM_BYTES, RecvBatch, Transport, TransportOptions } from '../transport/transport';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { Logger, silentLogger } from '../util/log';
import {
  bitmapBytes,
  clearBit,
  DATA_HEADER_BYTES,
  decodePacket,
  encodeAnnounce,
  encodeFeedback,
  encodeNack,
  fragmentCountFor,
  getBit,
  fragmentPayloadBytes,
  fragmentSlice,
  isOwnCopy,
  PacketType,
  peekOwnData,
  peekSender,
  setBit,
  writeDataHeader,
} from '../wire/packet';
import { ControlClient, ControlError, LeaseResponse, sleep, SplitMapResponse } from './control-client';
import { NackRequest, NackScheduler } from './nack-scheduler';
import { RepairScheduler } from './repair-scheduler';
import { decryptFile } from '../release/content-crypto';
import { ServerAccess } from '../net/server-access';
import { fragmentBytesForMtu, readMtu, resolveInterface } from '../net/interface';
import { UnitSpool } from '../storage/spool';
import { DirLock, lockStorage } from '../storage/dir-lock';
import { BufferPool } from '../util/buffer-pool';
import { sealControl, verifyControl } from '../wire/auth';
import { TokenBucket } from './token-bucket';
import { CrossPaths, Endpoint } from './cross-paths';

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
  /** A unit that a peer holds is ripe for NACKs once no data arrived for it this long. */
  gapQuietMs: 25,
  nackBackoffMs: 30,
  nackHoldoffMs: 80,
  nackMaxUnitsInFlight: 16,
  repairAggregateMs: 3,
  repairBackoffMs: 40,
  repairDedupMs: 60,
  /** A NACK its designated repairer leaves unanswered this long is answered by any holder. */
  orphanRepairMs: 1000,
  maxAssemblies: 128,
  /**
   * Bytes of incomplete assemblies and pooled unit buffers, each: at large unit sizes the
   * assembly count shrinks to fit (at least minAssemblies). Issue 13: 128 assemblies of
   * 64 MiB units was 8 GiB.
   */
  assemblyMaxBytes: 128 * 1024 * 1024,
  minAssemblies: 4,
  /** An incomplete assembly that got no data for this long is dropped (its buffer freed). */
  assemblyMaxIdleMs: 10_000,
  /**
   * Verified units kept in memory to answer NACKs from. None: a repair reads the unit
   * back from the store into a pooled buffer (the page cache holds recent units), so
   * memory stays flat in release size (issue 16: 16 cached units were 16 MiB per agent).
   */
  repairCacheUnits: 0,
  /**
   * Free unit-sized buffers the pool keeps for the next download, assembly or repair
   * read; also capped by assemblyMaxBytes. A buffer the pool drops is old by then and
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
  /** A unit another site announced is NACKed only after this long without any of its data. */
  crossGapQuietMs: 1000,
  /** No unit verified and no data of a missing unit arrived for this long, nothing in flight: ask the server. */
  stallRelayMs: 15_000,
  /** The same unit is repaired to the same cross-group requester at most this often. */
  unicastRepairDedupMs: 100,
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
  /** Cross-group copies queued above which WAN downloads pause (~0.2 s at 10 Mbit/s). */
  crossQueueMaxBytes: 256 * 1024,
};

export interface AgentOptions {
  server: ServerAccess;
  group: string;
  /** Member id; default: read from (or created in) `<storage>/member-id`. */
  member?: string;
  /** Interface name (e.g. eth0, lo) or local IPv4/IPv6 address. */
  interface: string;
  multicast: { address: string; port: number };
  storageDir: string;
  trustedKeys: KeyObject[];
  releaseId: string;
  /** The wide-area group this LAN group belongs to (policy `wide` spans LAN groups). */
  wideGroup?: string;
  rateBytesPerSec?: number;
  /** Fragment payload bytes; default from the interface MTU. Must match across the group. */
  fragmentBytes?: number;
  lossPct?: number;
  /**
   * Pace of what this member sends to other LAN groups (copies and repairs to their
   * gateways), which crosses the site's WAN uplink: keep the members' sum under it.
   */
  crossRateBytesPerSec?: number;
  /** Testing: cap this agent's WAN download rate (a slow uplink, a straggler). */
  wanRateBytesPerSec?: number;
  /** After completing, keep serving repairs until the group is complete, at most this long. */
  lingerMs?: number;
  logger?: Logger;
  random?: () => number;
  transport?: (opts: TransportOptions) => Transport;
  onProgress?: (a: Agent) => void;
}

export interface AgentStats {
  member: string;
  wanBytes: number;
  /** Bytes of partly downloaded units found in the spool at restart (not fetched again). */
  wanBytesResumed: number;
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
  /** `all-fetched`: units fetched while the LAN exchange waited, copied once it started. */
  unitsDeferred: number;
  unitsFromWan: number;
  unitsFromLan: number;
  unitsRejected: number;
  unitsResumed: number;
  /** Reports sent to the server of a unit that kept failing verification from it. */
  badUnitReports: number;
  drops: Record<string, number>;
  seconds: number;
  /** When the verified file was in place (ms since the epoch); 0 until then. */
  completedAtMs: number;
  transport: string;
  /** Per other group's gateway we sent to: the learned pace and what its reports said. */
  crossPaths: ReturnType<CrossPaths['view']>;
}

/** The counters of AgentStats (what a daemon sums across releases). */
export type AgentCounters = Omit<AgentStats, 'member' | 'drops' | 'seconds' | 'completedAtMs' | 'transport' | 'crossPaths'>;

export function zeroCounters(): AgentCounters {
  return {
    wanBytes: 0,
    wanBytesResumed: 0,
    lanBytes: 0,
    lanDuplicateBytes: 0,
    copyBytesSent: 0,
    repairBytesSent: 0,
    repairPacketsSent: 0,
    nacksSent: 0,
    nacksSuppressed: 0,
    nacksHeard: 0,
    nacksAnswered: 0,
    crossGroupBytesSent: 0,
    crossGroupBytes: 0,
    fragmentsForwarded: 0,
    unitsDeferred: 0,
    unitsFromWan: 0,
    unitsFromLan: 0,
    unitsRejected: 0,
    badUnitReports: 0,
    unitsResumed: 0,
  };
}

interface Assembly {
  buf: Buffer;
  got: Uint8Array;
  count: number;
  fragmentCount: number;
  lastData: number;
  verifying: boolean;
}

interface Peer {
  lastSeen: number;
  complete: boolean;
}

export class Agent {
  readonly stats: AgentStats;
  manifest!: Manifest;
  store!: PartialStore;
  finalPath: string | null = null;
  private transport!: Transport;
  private client!: ControlClient;
  private readonly abort = new AbortController();
  private readonly log: Logger;
  private readonly random: () => number;
  private readonly senderId: number;
  private member = '';
  private fragmentBytes = 0;
  private interfaceAddress = '';
  private readonly bucket: TokenBucket;
  /** Cross-group sends: one learned pace per other group's gateway, under the member's cap. */
  private readonly cross: CrossPaths;
  private nacks!: NackScheduler;
  private readonly repairs: RepairScheduler;
  private readonly assemblies = new Map<number, Assembly>();
  /** maxAssemblies, lowered so they fit assemblyMaxBytes at this release's unit size. */
  private maxAssemblies = AGENT_DEFAULTS.maxAssemblies;
  private readonly fetching = new Set<number>();
  private readonly leased: number[] = [];
  private readonly peers = new Map<number, Peer>();
  /**
   * Highest control-packet sequence number seen per sender, kept for the life of the
   * release (not aged out with `peers`): anything not above it is a replay. When it is
   * full, control packets from new senders are dropped; nothing is forgotten to make room,
   * so no record can be evicted and re-created at 0 (issue 13: a 5 s window let captured
   * NACKs replay).
   */
  private readonly replay = new Map<number, bigint>();
  /** Units some peer announced verified that we lack. */
  private readonly availableMissing = new Set<number>();
  private readonly repairCache = new Map<number, Buffer>();
  /** Unit-sized buffers for downloads and assemblies, handed back when the repair cache or an assembly lets go. */
  private units!: BufferPool;
  private readonly repairQueue: Uint8Array[] = [];
  private readonly copyQueue: Uint8Array[] = [];
  private copyQueueBytes = 0;
  private copyQueueWaiters: (() => void)[] = [];
  /** Copy datagrams still queued, per unit: such units are not announced or repaired yet. */
  private readonly copying = new Map<number, number>();
  /** Repair fragments queued but not sent, per unit (bitmap). */
  private readonly repairQueued = new Map<number, Uint8Array>();
  /** When we first heard a NACK for a unit its designated repairer has not answered. */
  private readonly unanswered = new Map<number, number>();
  private map: SplitMapResponse | null = null;
  /** Cross-group socket (unicast): copies to other LAN groups' gateways, forwarded NACKs and their repairs. */
  private unicast: dgram.Socket | null = null;
  private dataPort = 0;
  /** Where copies go besides the LAN: the other LAN groups' gateways (from the lease answers). */
  private copyTo: { member: string; address: string; port: number }[] = [];
  /** `all-fetched` start policy: false until every unit is held somewhere; copies wait. */
  private lanStart = true;
  private readonly deferred: number[] = [];
  /** Units whose NACK this gateway forwarded to another group: when it first did. */
  private readonly forwarded = new Map<number, number>();
  private readonly relayAsked = new Set<number>();
  private readonly crossNackLogged = new Set<number>();
  /** When a unit was last verified, or data of a missing unit last arrived (or the agent started): the stall check's clock. */
  private lastProgressAt = Date.now();
  /** "address:port" of a member of another group -> when it last sent us anything (relays wait while the holder sends). */
  private readonly crossHeardAt = new Map<string, number>();
  /** Bytes received so far of each unit being fetched (reported in heartbeats: the server's hedging looks at it). */
  private readonly fetchedBytes = new Map<number, number>();
  /** Units first announced to us by another site (unicast): when. */
  private readonly crossSince = new Map<number, number>();
  /** --wan-rate (testing): paces our own downloads. */
  private readonly wanPace: { take(bytes: number, now: number): number } | null = null;
  private readonly unicastRepairs = new Map<string, number>();
  /** "unit/address/port" -> fragments queued for that cross-group requester, not yet sent. */
  private readonly unicastRepairQueued = new Map<string, Uint8Array>();
  /** This release's group key, from the server (join/heartbeat answers). */
  private groupKey: Buffer | null = null;
  /** Control-packet sequence numbers start at the clock in µs, so a restart does not reuse them. */
  private controlSeq = BigInt(Date.now()) * 1000n;
  private heartbeatMs = 1000;
  private tickTimer: NodeJS.Timeout | null = null;
  private drainTimer: NodeJS.Timeout | null = null;
  private announceTimer: NodeJS.Timeout | null = null;
  /** The announce timer's period: announceMs, or idleAnnounceMs while idle. */
  private announceEveryMs = 0;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private waitingWritable = false;
  private finishing = false;
  private started = 0;
  private completedAt = 0;
  private completion!: { resolve: (p: string) => void; reject: (e: Error) => void };
  private readonly completed: Promise<string>;
  private closed = false;
  private storageLock: DirLock | null = null;

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.logger ?? silentLogger;
    this.random = opts.random ?? Math.random;
    this.senderId = randomBytes(4).readUInt32BE(0) || 1;
    const rate = opts.rateBytesPerSec ?? AGENT_DEFAULTS.rateBytesPerSec;
    this.bucket = new TokenBucket(rate, AGENT_DEFAULTS.burstBytes, Date.now());
    this.cross = new CrossPaths(opts.crossRateBytesPerSec ?? AGENT_DEFAULTS.crossRateBytesPerSec, Date.now(), {
      feedbackMs: AGENT_DEFAULTS.crossFeedbackMs,
      maxPaths: AGENT_DEFAULTS.maxCrossPaths,
      burstBytes: AGENT_DEFAULTS.burstBytes / 4,
    });
    this.repairs = new RepairScheduler({
      aggregateMs: AGENT_DEFAULTS.repairAggregateMs,
      backoffMs: AGENT_DEFAULTS.repairBackoffMs,
      dedupMs: AGENT_DEFAULTS.repairDedupMs,
      random: this.random,
    });
    this.stats = { member: '', ...zeroCounters(), drops: {}, seconds: 0, completedAtMs: 0, transport: '', crossPaths: [] };
    if (opts.wanRateBytesPerSec) {
      // Debt-based: take always succeeds and says how long to sleep to stay at the rate.
      const rate = opts.wanRateBytesPerSec;
      let next = 0;
      this.wanPace = {
        take: (bytes, now) => {
          next = Math.max(next, now) + (bytes * 1000) / rate;
          return Math.max(0, Math.floor(next - now));
        },
      };
    }
    this.completed = new Promise((resolve, reject) => {
      this.completion = { resolve, reject };
    });
    this.completed.catch(() => undefined);
  }

  get memberId(): string {
    return this.member;
  }
  get transportInfo() {
    return this.transport?.info;
  }
  get progress(): { verified: number; total: number } {
    return { verified: this.store?.verifiedUnits ?? 0, total: this.manifest?.unitCount ?? 0 };
  }

  /** LAN send rate, changeable at run time (SIGHUP reload). */
  setRate(bytesPerSec: number): void {
    this.bucket.rateBytesPerSec = bytesPerSec;
  }
  get rateBytesPerSec(): number {
    return this.bucket.rateBytesPerSec;
  }

  /** Other agents heard on the LAN for this release lately (sender ids are per process). */
  peersSeen(): { sender: string; lastSeenMsAgo: number; complete: boolean }[] {
    const now = Date.now();
    return [...this.peers.entries()]
      .filter(([, p]) => now - p.lastSeen < AGENT_DEFAULTS.peerTimeoutMs)
      .map(([id, p]) => ({ sender: id.toString(16).padStart(8, '0'), lastSeenMsAgo: now - p.lastSeen, complete: p.complete }));
  }

  /** Per other group's gateway we send to: the learned pace and what its reports said. */
  crossPaths(): AgentStats['crossPaths'] {
    return this.cross.view();
  }

  get isComplete(): boolean {
    return this.finalPath !== null;
  }

  /** Join, then resolve with the final file's path once the release is complete and verified. */
  async run(): Promise<string> {
    this.started = Date.now();
    await this.setup();
    return this.completed;
  }

  private async setup(): Promise<void> {
    const o = this.opts;
    try {
      await makeDir(o.storageDir);
    } catch (err) {
      throw fromSystemError(err, `creating storage ${o.storageDir}`);
    }
    // One agent process per storage directory: exit 73 with the holder's pid otherwise.
    this.storageLock = await lockStorage(o.storageDir);
    this.member = o.member ?? (await this.persistentMemberId());
    this.stats.member = this.member;
    this.client = new ControlClient(o.server, this.abort.signal, this.log);
    this.manifest = await this.loadManifest();
    this.store = await PartialStore.open(o.storageDir, this.manifest);
    const budget = Math.max(AGENT_DEFAULTS.minAssemblies, Math.floor(AGENT_DEFAULTS.assemblyMaxBytes / Math.max(1, this.manifest.unitSize)));
    this.maxAssemblies = Math.min(AGENT_DEFAULTS.maxAssemblies, budget);
    this.units = new BufferPool(this.manifest.unitSize, Math.min(AGENT_DEFAULTS.repairCacheUnits + AGENT_DEFAULTS.unitPoolMaxFree, budget));
    if (this.store.discardedBitmapReason) this.log.warn(`discarded bitmap on disk: ${this.store.discardedBitmapReason}; starting this release over`);
    this.stats.unitsResumed = this.store.verifiedUnits;
    if (this.store.verifiedUnits > 0) this.log.info(`resuming: ${this.store.verifiedUnits} of ${this.manifest.unitCount} units already verified`);

    const ipv6 = o.multicast.address.includes(':');
    const iface = resolveInterface(o.interface, ipv6 ? 6 : 4);
    this.interfaceAddress = iface.address;
    this.fragmentBytes = o.fragmentBytes ?? fragmentBytesForMtu(await readMtu(iface.name), ipv6);
    const topts: TransportOptions = {
      group: o.multicast.address,
      port: o.multicast.port,
      interfaceAddress: iface.address,
      loopback: true,
      // Room for our own grid's DATA packets, whatever --fragment-bytes says.
      maxDatagramBytes: Math.max(DEFAULT_MAX_DATAGRAM_BYTES, this.fragmentBytes + DATA_HEADER_BYTES),
      lossPct: o.lossPct ?? 0,
      random: this.random,
    };
    this.transport = (o.transport ?? createTransport)(topts);
    await this.transport.open();
    const ti = this.transport.info;
    this.stats.transport = ti.kind;
    this.log.info(
      `transport ${ti.kind}${ti.features.length ? ` (${ti.features.join(', ')})` : ''}, receive buffer ${ti.recvBufferBytes} bytes` +
        `${ti.fallbackReason ? `; not native because ${ti.fallbackReason}` : ''}; fragments of ${this.fragmentBytes} bytes`,
    );
    this.transport.onBatch((b) => this.onBatch(b));
    await this.openUnicast(ipv6);
    this.transport.onWritable(() => {
      this.waitingWritable = false;
      this.drain();
    });
    this.nacks = new NackScheduler({
      backoffMs: AGENT_DEFAULTS.nackBackoffMs,
      holdoffMs: AGENT_DEFAULTS.nackHoldoffMs,
      groupSize: 1,
      maxUnitsInFlight: AGENT_DEFAULTS.nackMaxUnitsInFlight,
      random: this.random,
    });

    try {
      await this.heartbeat(true);
    } catch (err) {
      // Device identity (docs/security.md): this member id or token is bound elsewhere.
      if (err instanceof ControlError && err.status === 403) throw new FleetcastError('IDENTITY', `the server refused member ${this.member}: ${err.message}`, ExitCode.NOPERM);
      throw err;
    }
    this.startHeartbeats();
    this.ensureTicking();
    this.setAnnouncePace(AGENT_DEFAULTS.announceMs);
    this.announce();
    // Already complete, or nothing to fetch at all (an empty release has no units).
    if (this.store.isComplete || this.store.verifiedUnits === this.manifest.unitCount) {
      void this.complete();
    } else {
      for (let i = 0; i < AGENT_DEFAULTS.fetchConcurrency; i++) void this.fetchWorker();
    }
  }

  private async openUnicast(ipv6: boolean): Promise<void> {
    const s = dgram.createSocket({ type: ipv6 ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind({ port: 0, address: this.interfaceAddress }, () => {
        s.off('error', reject);
        resolve();
      });
    });
    // Copies from every member of every other site land here in bursts while our event
    // loop may be busy with the LAN: a default-sized buffer overflows, and the senders'
    // pacers would read that as congestion.
    trySetBuffer(s, 'recv', AGENT_DEFAULTS.unicastRecvBufferBytes);
    trySetBuffer(s, 'send', AGENT_DEFAULTS.unicastSendBufferBytes);
    s.on('error', (err) => this.log.debug(`unicast: ${err.message}`));
    s.on('message', (msg, rinfo) => {
      if (!this.closed) this.onDatagram(msg, Date.now(), { address: rinfo.address, port: rinfo.port });
    });
    this.unicast = s;
    this.dataPort = s.address().port;
  }

  /** The group's other members from the latest map: the server's ids and what each holds. */
  groupMembers(): { id: string; group: string; verifiedUnits: number; complete: boolean }[] {
    return (this.map?.members ?? []).filter((m) => m.id !== this.member).map((m) => ({ id: m.id, group: m.group ?? this.opts.group, verifiedUnits: m.verifiedUnits, complete: m.complete }));
  }

  /**
   * The endpoint another member registered with the server (split map: its address and
   * unicast port) that `from` matches, or null when no member registered it.
   */
  private registeredEndpoint(from: { address: string; port: number }): { address: string; port: number } | null {
    const bare = (a: string) => a.replace(/%.*$/, '').replace(/^::ffff:/, '');
    for (const m of this.map?.members ?? []) {
      if (m.id === this.member || !m.address || !m.dataPort) continue;
      if (m.dataPort === from.port && bare(m.address) === bare(from.address)) return { address: m.address, port: m.dataPort };
    }
    return null;
  }

  /** This member's role from the latest map. */
  get role(): 'gateway' | 'member' {
    return this.map?.members.find((m) => m.id === this.member)?.role ?? 'member';
  }

  /** The LAN group of the holder of unit u in the map, or null. */
  private holderOf(u: number): { id: string; group: string; address: string | null; dataPort: number | null } | null {
    const h = this.map?.holders[u];
    if (h === undefined || h < 0) return null;
    const m = this.map!.members[h];
    return m ? { id: m.id, group: m.group ?? this.opts.group, address: m.address, dataPort: m.dataPort ?? null } : null;
  }

  private async persistentMemberId(): Promise<string> {
    const file = path.join(this.opts.storageDir, 'member-id');
    try {
      const id = (await fs.readFile(file, 'utf8')).trim();
      if (/^[A-Za-z0-9._:@-]{1,128}$/.test(id)) return id;
    } catch {
      /* first run */
    }
    const host = os.hostname().replace(/[^A-Za-z0-9.-]/g, '').slice(0, 48) || 'agent';
    const id = `${host}-${randomBytes(4).toString('hex')}`;
    await fs.writeFile(file, id + '\n');
    return id;
  }

  private async loadManifest(): Promise<Manifest> {
    const o = this.opts;
    const local = path.join(o.storageDir, o.releaseId, 'manifest');
    let raw: Buffer | null = null;
    try {
      raw = await fs.readFile(local);
    } catch {
      /* not fetched yet */
    }
    if (!raw) {
      try {
        raw = await this.client.getManifest(o.releaseId);
      } catch (err) {
        if (err instanceof ControlError && err.status === 404) {
          throw new FleetcastError('NO_RELEASE', `server ${o.server.url} does not have release ${o.releaseId}`, ExitCode.DATAERR);
        }
        throw err;
      }
    }
    const m = parseManifest(raw, o.trustedKeys);
    if (m.id !== o.releaseId) {
      throw new FleetcastError('WRONG_RELEASE', `the server sent manifest ${m.id} when asked for ${o.releaseId}`, ExitCode.DATAERR);
    }
    return m;
  }

  // ---------------------------------------------------------------- control plane

  /** `join` on start (and after the server forgot us): the server drops leases we no longer have in flight. */
  private async heartbeat(join = false): Promise<void> {
    if (this.closed) return;
    const map = await this.client.post<SplitMapResponse>(join ? '/v1/join' : '/v1/heartbeat', {
      release: this.manifest.id,
      group: this.opts.group,
      member: this.member,
      have: Buffer.from(this.store.bitmap()).toString('base64'),
      address: this.interfaceAddress,
      fetching: [...this.fetching],
      fetchingBytes: [...this.fetching].map((u) => this.fetchedBytes.get(u) ?? 0),
      // Downloads paused while our own copies to other sites drain: alive and sending, not a straggler.
      ...(this.cross.copyBytesQueued > AGENT_DEFAULTS.crossQueueMaxBytes / 2 ? { copying: true } : {}),
      forwarded: this.stats.fragmentsForwarded,
      lanBytes: this.stats.lanBytes,
      ...(this.opts.wideGroup ? { wideGroup: this.opts.wideGroup } : {}),
      ...(this.dataPort ? { dataPort: this.dataPort } : {}),
    });
    this.map = map;
    // Gateways move: a new one starts getting our copies and announces within a heartbeat
    // (it NACKs what our announces show it lacks, and those NACKs come to us by unicast).
    if (map.copyTo) this.setCopyTo(map.copyTo);
    const start = map.lanStart ?? true;
    if (start && !this.lanStart) {
      this.log.info(`every unit is held in the group: LAN exchange starts (${this.deferred.length} units to copy)`);
      this.lanStart = true;
      void this.sendDeferred();
    } else this.lanStart = start;
    if (map.groupKey) this.groupKey = Buffer.from(map.groupKey, 'base64');
    this.nacks?.setGroupSize(map.members.length);
    this.ensureTicking(); // a new role or copy destinations may need the tick again
    // The server picks the interval by phase (fast while the group transfers, slow when
    // all is done): every answer may change it.
    const every = Math.min(60_000, Math.max(50, Number(map.heartbeatMs) || 1000));
    if (every !== this.heartbeatMs) {
      this.heartbeatMs = every;
      if (this.heartbeatTimer && !this.closed) this.startHeartbeats();
    }
    this.wake();
  }

  private startHeartbeats(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      this.heartbeat().catch((err) => {
        // The server forgot us, or remembers that we left: join again.
        if (err instanceof ControlError && err.code === 'NOT_JOINED') return this.heartbeat(true).catch(() => undefined);
        this.log.debug(`heartbeat: ${(err as Error).message}`);
      });
      this.checkStall();
    }, this.heartbeatMs);
  }

  private async requestLease(): Promise<LeaseResponse> {
    const ref = { release: this.manifest.id, group: this.opts.group, member: this.member };
    try {
      return await this.client.post<LeaseResponse>('/v1/lease', ref);
    } catch (err) {
      if (err instanceof ControlError && err.code === 'NOT_JOINED') {
        await this.heartbeat(); // the server restarted or timed us out: join again
        return { units: [], retryAfterMs: 0, exhausted: false };
      }
      throw err;
    }
  }

  /** Units the server leased us because the wide-area group could not deliver them: LAN copies only. */
  private readonly relayed = new Set<number>();

  /** New copy destinations: announce ourselves to them first, so they accept our copies. */
  private setCopyTo(dests: { member: string; address: string; port: number }[]): void {
    const key = (d: { address: string; port: number }) => `${d.address}:${d.port}`;
    const before = new Set(this.copyTo.map(key));
    this.copyTo = dests;
    if (dests.some((d) => !before.has(key(d)))) this.announce();
  }

  /** One lease request at a time, shared by the fetch workers. */
  private leaseRequest: Promise<LeaseResponse> | null = null;
  private wakers: (() => void)[] = [];

  private takeLeases(): Promise<LeaseResponse> {
    if (!this.leaseRequest) {
      this.leaseRequest = this.requestLease()
        .then((grant) => {
          for (const u of grant.units) if (!this.leased.includes(u) && !this.fetching.has(u)) this.leased.push(u);
          for (const u of grant.relayed ?? []) this.relayed.add(u);
          this.setCopyTo(grant.copyTo ?? []);
          return grant;
        })
        .finally(() => {
          this.leaseRequest = null;
        });
    }
    return this.leaseRequest;
  }

  /** Wake workers waiting for a lease slot or a map change. */
  private wake(): void {
    for (const w of this.wakers.splice(0)) w();
  }

  private waitForWake(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakers.push(done);
    });
  }

  /** Takes leases and fetches their units over the WAN, `fetchConcurrency` at a time. */
  private async fetchWorker(): Promise<void> {
    while (!this.closed && !this.store.isComplete && !this.finishing) {
      const unit = this.leased.shift();
      if (unit !== undefined) {
        await this.fetchUnit(unit);
        this.wake(); // a lease slot is free again
        continue;
      }
      let grant: LeaseResponse;
      try {
        grant = await this.takeLeases();
      } catch (err) {
        if (this.closed) return;
        this.log.warn(`lease: ${(err as Error).message}`);
        await sleep(this.heartbeatMs, this.abort.signal);
        continue;
      }
      if (this.leased.length) continue;
      // Nothing for us now: peers hold or lease the rest, or our slots are full.
      // Wait for one of our units to finish, the map to change, or the server's hint.
      await this.waitForWake(grant.exhausted ? this.heartbeatMs : Math.max(20, grant.retryAfterMs));
    }
  }

  /** Units from the server that failed verification, and how often in a row. */
  private readonly serverFailures = new Map<number, number>();

  /**
   * A unit from the server failed its hash: wait (exponential backoff, with jitter)
   * before fetching it again, and every badUnitReportAfter failures tell the server,
   * which logs it and shows it in `fleetcast fleet`. The count lasts across leases.
   */
  private async badFromServer(unit: number): Promise<void> {
    const n = (this.serverFailures.get(unit) ?? 0) + 1;
    this.serverFailures.set(unit, n);
    const ms = Math.min(AGENT_DEFAULTS.badUnitBackoffMaxMs, AGENT_DEFAULTS.badUnitBackoffMs * 2 ** (n - 1)) * (0.75 + 0.5 * this.random());
    this.log.warn(`unit ${unit} from the server failed verification (${n} time(s) in a row); discarded, fetching it again in ${Math.round(ms)} ms`);
    if (n % AGENT_DEFAULTS.badUnitReportAfter === 0) {
      this.stats.badUnitReports++;
      await this.client
        .post('/v1/bad-unit', { release: this.manifest.id, group: this.opts.group, member: this.member, unit, failures: n })
        .catch((err: Error) => this.log.debug(`bad-unit report: ${err.message}`));
    }
    await sleep(ms, this.abort.signal);
  }

  private async fetchUnit(unit: number): Promise<void> {
    const m = this.manifest;
    if (this.store.has(unit)) {
      await this.sendReceipt(unit);
      return;
    }
    this.fetching.add(unit);
    // A unit we fetch ourselves needs no LAN copy of it.
    this.dropAssembly(unit);
    this.nacks.done(unit);
    const len = unitLength(m, unit);
    const fb = this.fragmentBytes;
    const fragmentCount = fragmentCountFor(len, fb);
    const releaseDir = path.join(this.opts.storageDir, m.id);
    try {
      for (let attempt = 1; attempt <= AGENT_DEFAULTS.fetchRetries && !this.closed; attempt++) {
        const buf = this.units.take(len);
        // What an earlier run (or attempt) of ours already downloaded: resume after it.
        const { spool, bytes } = await UnitSpool.open(releaseDir, unit, len);
        bytes.copy(buf);
        let off = bytes.length;
        let next = 0;
        const crossGroup = !this.relayed.has(unit);
        const cutThrough = () => {
          // Every fragment goes out on the LAN (and to the other groups' gateways) as soon
          // as its bytes are here; under `all-fetched` the copies wait for lanStart.
          while (next < fragmentCount && (off >= (next + 1) * fb || off === len)) {
            if (this.lanStart) this.copyFragment(unit, next, fragmentCount, fragmentSlice(buf.subarray(0, len), next, fb), crossGroup);
            next++;
          }
        };
        if (off > 0) {
          this.log.debug(`unit ${unit}: resuming after ${off} bytes`);
          this.stats.wanBytesResumed += off;
          cutThrough();
        }
        try {
          if (off < len) {
            await this.client.streamUnit(
              m.id,
              unit,
              this.opts.group,
              this.member,
              (chunk) => {
                const take = Math.min(chunk.length, len - off);
                buf.set(chunk.subarray(0, take), off);
                off += take;
                this.fetchedBytes.set(unit, off);
                spool.update(buf, off);
                this.stats.wanBytes += take;
                cutThrough();
                if (this.wanPace) {
                  const ms = this.wanPace.take(take, Date.now());
                  if (ms > 0) return sleep(ms, this.abort.signal);
                }
                if (this.copyBacklogged()) {
                  return new Promise<void>((resolve) => this.copyQueueWaiters.push(resolve));
                }
                return undefined;
              },
              off,
            );
          }
        } catch (err) {
          if (this.closed) {
            await spool.close();
            return;
          }
          this.units.give(buf); // nothing went out of it unless copied into a datagram
          if (err instanceof ControlError) {
            this.log.warn(`unit ${unit}: ${err.message}`);
            await spool.discard();
            return; // lease gone; the server will lease it again to someone
          }
          this.log.warn(`unit ${unit}: download failed (${(err as Error).message}); attempt ${attempt} of ${AGENT_DEFAULTS.fetchRetries}`);
          await spool.close(); // it keeps what arrived: the next attempt resumes
          await sleep(200 * attempt, this.abort.signal);
          continue;
        }
        if (off !== len || sha256(buf) !== m.units[unit]) {
          this.stats.unitsRejected++;
          this.units.give(buf);
          await spool.discard();
          await this.badFromServer(unit);
          continue;
        }
        this.serverFailures.delete(unit);
        await this.acceptUnit(unit, buf, 'wan');
        if (!this.lanStart) {
          this.deferred.push(unit);
          this.stats.unitsDeferred++;
        }
        await spool.discard();
        await this.sendReceipt(unit);
        return;
      }
    } finally {
      this.fetching.delete(unit);
      this.fetchedBytes.delete(unit);
    }
  }

  private async sendReceipt(unit: number): Promise<void> {
    try {
      await this.client.post('/v1/receipt', { release: this.manifest.id, group: this.opts.group, member: this.member, unit });
    } catch (err) {
      if (!this.closed) this.log.warn(`receipt for unit ${unit}: ${(err as Error).message}`);
    }
  }

  /** A verified unit: store it, tell the LAN, and finish when it was the last. */
  private async acceptUnit(unit: number, buf: Buffer, from: 'wan' | 'lan'): Promise<void> {
    if (this.store.has(unit)) return;
    try {
      await this.store.writeUnit(unit, buf);
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    this.lastProgressAt = Date.now();
    if (from === 'wan') this.stats.unitsFromWan++;
    else this.stats.unitsFromLan++;
    this.availableMissing.delete(unit);
    this.assemblies.delete(unit);
    this.nacks.done(unit);
    this.cacheForRepair(unit, buf);
    this.announceSoon();
    this.opts.onProgress?.(this);
    if (this.store.verifiedUnits === this.manifest.unitCount) void this.complete();
  }

  private async complete(): Promise<void> {
    if (this.finishing) return;
    this.finishing = true;
    try {
      const stored = await this.store.finish();
      this.finalPath = this.manifest.enc ? await this.decrypt(stored) : stored;
    } catch (err) {
      this.finishing = false;
      if ((err as FleetcastError).code === 'WHOLE_HASH') {
        this.log.error((err as Error).message);
        for (let i = 0; i < AGENT_DEFAULTS.fetchConcurrency; i++) void this.fetchWorker();
        return;
      }
      this.fail(err as Error);
      return;
    }
    this.completedAt = Date.now();
    this.stats.seconds = (this.completedAt - this.started) / 1000;
    this.stats.completedAtMs = this.completedAt;
    this.stats.crossPaths = this.crossPaths();
    await UnitSpool.removeAll(path.join(this.opts.storageDir, this.manifest.id)).catch(() => undefined);
    this.announce();
    try {
      await this.client.post('/v1/complete', { release: this.manifest.id, group: this.opts.group, member: this.member, sha256: this.manifest.sha256 });
    } catch (err) {
      this.log.warn(`completion notice: ${(err as Error).message}`);
    }
    this.log.info(`release ${this.manifest.name} complete and verified: ${this.finalPath}`);
    this.completion.resolve(this.finalPath);
  }

  /** The ciphertext verified: get the release key from the server and write the plaintext. */
  private async decrypt(ciphertextPath: string): Promise<string> {
    const m = this.manifest;
    const key = await this.client.getContentKey(m.id);
    const out = path.join(this.opts.storageDir, m.id, m.name);
    await decryptFile(key, m, ciphertextPath, out);
    this.log.info(`decrypted ${m.name}; plaintext SHA-256 matches the manifest`);
    return out;
  }

  private fail(err: Error): void {
    this.completion.reject(err);
  }

  /**
   * After completing, keep answering NACKs until every member of the group is
   * complete, or `lingerMs` passes. Complete means: every other member in the
   * split map announced `complete` on the LAN (fast), or the server says so.
   */
  async linger(): Promise<void> {
    const limit = Date.now() + (this.opts.lingerMs ?? AGENT_DEFAULTS.lingerMs);
    await this.heartbeat().catch(() => undefined);
    while (!this.closed && Date.now() < limit) {
      if (this.map?.groupComplete || this.lanPeersComplete()) return;
      await sleep(AGENT_DEFAULTS.lingerPollMs, this.abort.signal);
    }
  }

  /** Every other member of the group (per the map) announced it holds everything. */
  private lanPeersComplete(): boolean {
    const others = (this.map?.members.length ?? 1) - 1;
    if (others <= 0) return false; // alone, or no map: the server decides
    const now = Date.now();
    let complete = 0;
    for (const p of this.peers.values()) if (p.complete && now - p.lastSeen < AGENT_DEFAULTS.peerTimeoutMs) complete++;
    return complete >= others;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of [this.tickTimer, this.heartbeatTimer, this.announceTimer]) if (t) clearInterval(t);
    if (this.announcePending) clearTimeout(this.announcePending);
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.wake();
    for (const w of this.copyQueueWaiters.splice(0)) w();
    this.abort.abort();
    this.unicast?.close();
    this.unicast = null;
    await this.transport?.close();
    await this.store?.close();
    await this.storageLock?.release();
  }

  /** Leave the group politely (the server hands our leases to others at once). */
  async leave(): Promise<void> {
    if (!this.manifest) return;
    try {
      // node:http like every other call of ours: the first fetch() of a process compiles
      // undici's WebAssembly HTTP parser, ~25 MiB of peak RSS on the way out (issue 16).
      const res = await this.opts.server.request('POST', '/v1/leave', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ release: this.manifest.id, group: this.opts.group, member: this.member }),
        signal: AbortSignal.timeout(2000),
      });
      res.dump();
    } catch {
      /* the server will time us out */
    }
  }

  // ---------------------------------------------------------------- data plane

  private drop(reason: string): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + 1;
  }

  private onBatch(b: RecvBatch): void {
    const now = Date.now();
    for (let i = 0; i < b.count; i++) this.onDatagram(b.data(i), now);
  }

  private onDatagram(buf: Uint8Array, now: number, via?: { address: string; port: number }): void {
    // Our own multicast comes back (IP_MULTICAST_LOOP, for peers on this host): skip
    // it before decoding.
    if (peekSender(buf) === this.senderId) return;
    const r = decodePacket(buf);
    if (!r.ok) return this.drop(r.reason);
    const p = r.packet;
    if (!bytesEqual(p.releaseId, this.manifest.idBytes)) return this.drop('other-release');
    let peer = this.peers.get(p.sender);
    if (p.type !== PacketType.DATA) {
      // Control packets make us send: only members holding the group key may.
      if (!this.groupKey) return this.drop('no-key');
      if (!verifyControl(p.auth!, this.groupKey)) return this.drop('bad-mac');
      const last = this.replay.get(p.sender);
      if (last !== undefined && p.auth!.seq <= last) return this.drop('replayed');
      if (last === undefined && this.replay.size >= AGENT_DEFAULTS.maxPeers) return this.drop('too-many-peers');
      this.replay.set(p.sender, p.auth!.seq);
      if (!peer) {
        peer = { lastSeen: now, complete: false };
        this.peers.set(p.sender, peer);
      }
    }
    // Copies only from members heard with authenticated control packets (each announces
    // as it joins): a forger without the key cannot even pollute an assembly, unless it
    // spoofs a member's sender id, and then the unit hash rejects the result.
    if (!peer) return this.drop('unknown-sender');
    peer.lastSeen = now;
    if (via) this.heardCross(via, now);
    switch (p.type) {
      case PacketType.DATA: {
        // What arrived from another group's member, duplicates too: its pacer counts what it sent.
        if (via) this.cross.received(via, buf.length);
        const u = p.unit;
        if (u >= this.manifest.unitCount) return this.drop('unit-range');
        if (p.fragmentBytes !== this.fragmentBytes) return this.drop('fragment-grid');
        const len = unitLength(this.manifest, u);
        const fc = fragmentCountFor(len, this.fragmentBytes);
        if (p.fragmentCount !== fc) return this.drop('fragment-grid');
        if (p.payload.length !== fragmentPayloadBytes(len, p.fragment, this.fragmentBytes)) return this.drop('length');
        // Repair dedup matters only for units we could repair ourselves.
        if (this.store.has(u)) this.repairs.sawFragment(u, p.fragment, fc, now);
        if (p.repair) this.unanswered.delete(u);
        if (this.store.has(u) || this.fetching.has(u)) {
          this.stats.lanDuplicateBytes += p.payload.length;
          return;
        }
        let a = this.assemblies.get(u);
        if (!a) {
          if (this.assemblies.size >= this.maxAssemblies) this.evictAssembly();
          a = { buf: this.units.take(len), got: new Uint8Array(bitmapBytes(fc)), count: 0, fragmentCount: fc, lastData: now, verifying: false };
          this.assemblies.set(u, a);
        }
        a.lastData = now;
        if (a.verifying || getBit(a.got, p.fragment)) {
          this.stats.lanDuplicateBytes += p.payload.length;
          return;
        }
        a.buf.set(p.payload, p.fragment * this.fragmentBytes);
        setBit(a.got, p.fragment);
        a.count++;
        this.lastProgressAt = now; // data of a missing unit: not a stall
        if (via) this.stats.crossGroupBytes += p.payload.length;
        else this.stats.lanBytes += p.payload.length;
        if (p.forward && via) {
          // A copy from another LAN group: we are this group's gateway; send it on as our own.
          this.queueFragment(this.copyQueue, u, p.fragment, fc, p.payload, false);
          this.stats.fragmentsForwarded++;
        }
        this.nacks.progress(u, now);
        if (a.count === fc) this.verifyAssembly(u, a);
        return;
      }
      case PacketType.NACK: {
        this.stats.nacksHeard++;
        const u = p.unit;
        if (u >= this.manifest.unitCount || p.fragmentBytes !== this.fragmentBytes) return this.drop('nack-invalid');
        const fc = fragmentCountFor(unitLength(this.manifest, u), this.fragmentBytes);
        if (p.fragmentCount !== fc) return this.drop('nack-invalid');
        if (via) {
          // Another group's gateway forwarded its LAN's NACK to us, the unit's holder
          // (unless our copies of it, to that gateway too, are still on their way).
          if (!this.crossNackLogged.has(u)) {
            this.crossNackLogged.add(u);
            this.log.debug(`cross-group NACK for unit ${u} from ${via.address}:${via.port}: ${this.store.has(u) ? 'held' : 'not held'}, ${this.copying.get(u) ?? 0} copies queued`);
          }
          // Copies still queued for that gateway will arrive: answer once they have left
          // (copies of the unit to other groups may be slower; they are no reason to wait).
          if (!this.store.has(u) || this.cross.copiesQueuedTo(via) !== 0) return;
          // Repairs go only to a member's registered endpoint, never to whatever source
          // address a NACK carries: a spoofed source would make us reflect onto a third party.
          const to = this.registeredEndpoint(via);
          if (!to) return this.drop('unregistered-source');
          void this.repairUnicast(u, p.missing, to, now);
          return;
        }
        if (!this.store.has(u)) {
          this.nacks.heardNack(u, fc, p.missing, now);
          return;
        }
        if (this.copying.has(u)) return; // our copies of it are still on their way
        const role = this.repairRole(u, now);
        if (role === 'none') return;
        const queued = this.repairQueued.get(u);
        let missing = p.missing;
        if (queued) missing = missing.map((b, i) => b & ~queued[i]);
        this.repairs.onNack(u, fc, missing, role === 'designated', now);
        this.ensureTicking();
        return;
      }
      case PacketType.FEEDBACK: {
        if (via) this.cross.feedback(via, p, now);
        return;
      }
      case PacketType.ANNOUNCE: {
        if (via) this.cross.announced(via, p.auth!.seq, now);
        peer.complete = p.complete;
        // A peer that lacks units: back to the fast pace (we may be idle).
        if (!p.complete) this.setAnnouncePace(AGENT_DEFAULTS.announceMs);
        const end = Math.min(this.manifest.unitCount, p.firstUnit + p.unitCount);
        for (let u = p.firstUnit; u < end; u++) {
          if (!getBit(p.have, u - p.firstUnit) || this.store.has(u) || this.availableMissing.has(u)) continue;
          this.availableMissing.add(u);
          // Heard from another site: its paced cross-group copy may still be on the way.
          if (via) this.crossSince.set(u, now);
        }
        return;
      }
    }
  }

  /** Another group's member sent us something: its path is alive (relays wait), and its copies are counted for FEEDBACK. */
  private heardCross(via: Endpoint, now: number): void {
    const k = `${via.address}:${via.port}`;
    if (!this.crossHeardAt.has(k) && this.crossHeardAt.size >= AGENT_DEFAULTS.maxCrossPaths) this.crossHeardAt.clear();
    this.crossHeardAt.set(k, now);
  }

  /**
   * Who answers a NACK for a unit we hold: its holder in the split-download map
   * answers at once; nobody else does, unless the map names no holder or the
   * NACKs have gone unanswered for orphanRepairMs (holder gone, map stale) —
   * then every holder answers after a random backoff, with suppression.
   */
  private repairRole(unit: number, now: number): 'designated' | 'fallback' | 'none' {
    const map = this.map;
    const h = map?.holders[unit];
    if (!map || h === undefined || h < 0 || !map.members[h]) return 'fallback';
    if (map.members[h].id === this.member) return 'designated';
    // Held only in another LAN group: this group's gateway (which re-multicast it) answers.
    if ((map.members[h].group ?? this.opts.group) !== this.opts.group) return this.role === 'gateway' ? 'designated' : 'fallback';
    const since = this.unanswered.get(unit);
    if (since === undefined) {
      this.unanswered.set(unit, now);
      return 'none';
    }
    return now - since > AGENT_DEFAULTS.orphanRepairMs ? 'fallback' : 'none';
  }

  private evictAssembly(): void {
    let oldest: number | null = null;
    let t = Infinity;
    for (const [u, a] of this.assemblies) {
      if (!a.verifying && a.lastData < t) {
        t = a.lastData;
        oldest = u;
      }
    }
    if (oldest !== null) {
      this.dropAssembly(oldest);
      this.drop('assembly-evicted');
    }
  }

  /** Drop incomplete assemblies that got no data for assemblyMaxIdleMs (forged or abandoned). */
  private ageAssemblies(now: number): void {
    for (const [u, a] of this.assemblies) {
      if (a.verifying || now - a.lastData <= AGENT_DEFAULTS.assemblyMaxIdleMs) continue;
      this.dropAssembly(u);
      this.drop('assembly-aged');
    }
  }

  /** Forget a partial assembly (not one being verified or stored) and reuse its buffer. */
  private dropAssembly(unit: number): void {
    const a = this.assemblies.get(unit);
    if (!a || a.verifying) return;
    this.assemblies.delete(unit);
    this.units.give(a.buf);
  }

  private verifyAssembly(unit: number, a: Assembly): void {
    a.verifying = true;
    if (sha256(a.buf) !== this.manifest.units[unit]) {
      // Forged or corrupted copy: throw all of it away and ask again.
      this.stats.unitsRejected++;
      this.assemblies.delete(unit);
      this.units.give(a.buf);
      this.nacks.done(unit);
      this.log.warn(`unit ${unit} from the LAN failed verification; discarded`);
      return;
    }
    void this.acceptUnit(unit, a.buf, 'lan');
  }

  /** Units a peer holds that we lack, not being fetched, and quiet for gapQuietMs: cheap checks only. */
  private *ripeUnits(now: number): Generator<number> {
    for (const u of this.availableMissing) {
      if (this.store.has(u) || this.fetching.has(u)) continue;
      const a = this.assemblies.get(u);
      if (a && (a.verifying || now - a.lastData < AGENT_DEFAULTS.gapQuietMs)) continue;
      const since = this.crossSince.get(u);
      if (since !== undefined && !a && now - since < AGENT_DEFAULTS.crossGapQuietMs) continue;
      yield u;
    }
  }

  /** The missing-fragment bitmap of a unit, or null when nothing is missing any more. */
  private gapOf(u: number): NackRequest | null {
    if (this.store.has(u) || this.fetching.has(u)) return null;
    const fc = fragmentCountFor(unitLength(this.manifest, u), this.fragmentBytes);
    const a = this.assemblies.get(u);
    const missing = new Uint8Array(bitmapBytes(fc));
    for (let i = 0; i < fc; i++) if (!a || !getBit(a.got, i)) missing[i >>> 3] |= 0x80 >>> (i & 7);
    return { unit: u, fragmentCount: fc, missing };
  }

  private tick(): void {
    if (this.closed) return;
    const now = Date.now();
    if (!this.store.isComplete) {
      const before = this.nacks.suppressed;
      for (const n of this.nacks.poll(now, this.ripeUnits(now), (u) => this.gapOf(u))) {
        const nack = this.seal(encodeNack({ sender: this.senderId, releaseId: this.manifest.idBytes, unit: n.unit, fragmentCount: n.fragmentCount, fragmentBytes: this.fragmentBytes, missing: n.missing }));
        this.repairQueue.push(nack);
        this.forwardNack(nack, n.unit, now);
        this.stats.nacksSent++;
      }
      this.stats.nacksSuppressed += this.nacks.suppressed - before;
    }
    for (const job of this.repairs.due(now)) void this.sendRepair(job.unit, job.fragments);
    this.crossFeedback(now);
    this.drain();
    // An idle agent would otherwise wake 200 times a second (about 2% of a core).
    if (this.tickTimer && !this.needsTick(now)) {
      clearInterval(this.tickTimer);
      this.tickTimer = null;
    }
  }

  /**
   * Whether the tick has anything to time: NACKs while units are missing, repairs
   * pending, and cross-group pacing (a gateway's FEEDBACK reports, a path's silence
   * check) while this agent is a wide-area group's gateway, copies to other sites or has
   * unicast queued. (A plain LAN group's gateway has no cross-group traffic.)
   */
  private needsTick(now: number): boolean {
    if (!this.store.isComplete || this.repairs.nextDueIn(now) !== null) return true;
    if ((this.opts.wideGroup && this.role === 'gateway') || this.copyTo.length > 0) return true;
    return this.cross.view().some((p) => p.queued > 0);
  }

  /** Start the tick if it stopped and has something to time again. */
  private ensureTicking(): void {
    if (this.tickTimer || this.closed) return;
    if (this.store && !this.needsTick(Date.now())) return;
    this.tickTimer = setInterval(() => this.tick(), AGENT_DEFAULTS.tickMs);
  }

  /** As a gateway: report to each member of another group that sent us copies lately; slow paths that went silent. */
  private crossFeedback(now: number): void {
    this.cross.tick(now);
    for (const f of this.cross.feedbackDue(now)) {
      // Like repairs, only to a member's registered endpoint: a spoofed source gets nothing.
      const to = this.registeredEndpoint(f.to);
      if (!to) {
        this.drop('unregistered-source');
        continue;
      }
      const pkt = this.seal(encodeFeedback({ sender: this.senderId, releaseId: this.manifest.idBytes, ...f }));
      this.unicast?.send(pkt, to.port, to.address);
      // The 1.1 form too (1.1 senders drop the 1.2 one; a 1.2 sender ignores this copy).
      if (f.atEcho) this.unicast?.send(this.seal(encodeFeedback({ sender: this.senderId, releaseId: this.manifest.idBytes, ...f, atEcho: undefined })), to.port, to.address);
    }
  }

  /** MAC a control packet under the group key, with the next sequence number. */
  private seal(packet: Uint8Array): Uint8Array {
    this.controlSeq++;
    return this.groupKey ? sealControl(packet, this.groupKey, this.controlSeq) : packet;
  }

  private cacheForRepair(unit: number, buf: Buffer): void {
    this.repairCache.delete(unit);
    this.repairCache.set(unit, buf);
    while (this.repairCache.size > AGENT_DEFAULTS.repairCacheUnits) {
      const [u, b] = this.repairCache.entries().next().value!;
      this.repairCache.delete(u);
      this.units.give(b);
    }
  }

  /** Repair fragments by unicast to another group's gateway, flagged to be re-multicast there. */
  private async repairUnicast(unit: number, missing: Uint8Array, to: { address: string; port: number }, now: number): Promise<void> {
    const k = `${unit}/${to.address}/${to.port}`;
    if (now - (this.unicastRepairs.get(k) ?? -Infinity) < AGENT_DEFAULTS.unicastRepairDedupMs) return;
    this.unicastRepairs.set(k, now);
    if (this.unicastRepairs.size > 4096) this.unicastRepairs.clear();
    await this.withRepairBytes(unit, (buf) => {
      const fb = this.fragmentBytes;
      const fc = fragmentCountFor(buf.length, fb);
      // Fragments still queued for this requester are not queued again: the cross-group
      // pace is slow, and a gateway NACKs again before the first answer has left.
      const queued = queuedBits(this.unicastRepairQueued, k, fc);
      let any = false;
      for (let f = 0; f < fc; f++) {
        if (!getBit(missing, f) || getBit(queued, f)) continue;
        setBit(queued, f);
        any = true;
        this.queueUnicast(unit, f, fc, fragmentSlice(buf, f, fb), true, to);
      }
      if (any) this.stats.nacksAnswered++;
    });
  }

  /**
   * A gateway whose LAN lacks a unit held only in another group forwards its NACK to
   * the holder by unicast; if that has not brought the unit within relayAfterMs, it
   * asks the server for the unit itself (relay).
   */
  private forwardNack(packet: Uint8Array, unit: number, now: number): void {
    if (this.role !== 'gateway') return;
    const h = this.holderOf(unit);
    if (!this.forwarded.has(unit)) this.log.debug(`NACK for unit ${unit}: holder ${h ? `${h.id} in ${h.group}` : 'none'}`);
    if (!h || h.group === this.opts.group || !h.address || !h.dataPort || h.id === this.member) return;
    this.unicast?.send(packet, h.dataPort, h.address);
    const first = this.forwarded.get(unit);
    if (first === undefined) {
      this.forwarded.set(unit, now);
      return;
    }
    if (this.relayAsked.has(unit)) return;
    // Progress, not time alone: no data of the unit since the NACK went out, and the
    // holder silent too (a holder still sending us copies is busy, its answer queued
    // behind them), unless the unit itself has been quiet far longer.
    const unitQuiet = now - Math.max(first, this.assemblies.get(unit)?.lastData ?? 0);
    const holderQuiet = now - (this.crossHeardAt.get(`${h.address}:${h.dataPort}`) ?? 0);
    if (unitQuiet > AGENT_DEFAULTS.relayAfterMs && (holderQuiet > AGENT_DEFAULTS.relayHolderQuietMs || unitQuiet > AGENT_DEFAULTS.relayUnitQuietMs)) {
      this.relayAsked.add(unit);
      this.log.info(`unit ${unit}: no answer from ${h.id} in group ${h.group} (unit quiet ${Math.round(unitQuiet / 1000)} s, holder ${Math.round(holderQuiet / 1000)} s); asking the server for it`);
      void this.requestRelay([unit], 'relayed').then(
        (granted) => {
          if (!granted.includes(unit)) this.retryRelayLater(unit);
        },
        (err: Error) => {
          this.log.warn(`relay lease for unit ${unit}: ${err.message}`);
          this.retryRelayLater(unit);
        },
      );
    }
  }

  /** Ask the server for `want` (relay, docs/protocol.md); queue what it grants. Resolves with the granted units. */
  private async requestRelay(want: number[], reason: 'relayed' | 'stalled'): Promise<number[]> {
    const grant = await this.client.post<LeaseResponse>('/v1/lease', { release: this.manifest.id, group: this.opts.group, member: this.member, want, reason });
    for (const u of grant.units) if (!this.leased.includes(u) && !this.fetching.has(u) && !this.store.has(u)) this.leased.push(u);
    for (const u of grant.relayed ?? []) this.relayed.add(u);
    this.wake();
    return grant.units;
  }

  /**
   * Last resort: nothing verified and no data of a missing unit for stallRelayMs, nothing
   * leased or in flight, units still missing. Whatever went wrong (a holder that never answers, a lost copy no one
   * announced), ask the server for the missing units; it grants those no member of our
   * LAN group holds or leases, and our LAN repairs the rest.
   */
  private checkStall(): void {
    const now = Date.now();
    // Waiting for the all-fetched start is not a stall.
    if (this.closed || this.finishing || !this.store || this.store.isComplete || this.fetching.size || this.leased.length || !this.lanStart) {
      if (!this.lanStart) this.lastProgressAt = now;
      return;
    }
    if (now - this.lastProgressAt < AGENT_DEFAULTS.stallRelayMs) return;
    this.lastProgressAt = now; // once per stall period
    const want: number[] = [];
    for (let u = 0; u < this.manifest.unitCount && want.length < 64; u++) if (!this.store.has(u)) want.push(u);
    if (!want.length) return;
    this.log.info(`no progress for ${AGENT_DEFAULTS.stallRelayMs / 1000} s with ${this.manifest.unitCount - this.store.verifiedUnits} unit(s) missing; asking the server`);
    this.requestRelay(want, 'stalled').catch((err: Error) => this.log.debug(`stall relay: ${err.message}`));
  }

  /** Not granted now (someone in our group leases or holds it): ask again after another wait. */
  private retryRelayLater(unit: number): void {
    this.relayAsked.delete(unit);
    this.forwarded.set(unit, Date.now());
  }

  /**
   * Run `use` on a verified unit's bytes, from the small cache or else from disk. `use`
   * must be synchronous and keep no reference: a buffer that leaves the cache goes back
   * to the pool, and the next download or assembly overwrites it.
   */
  private async withRepairBytes(unit: number, use: (buf: Buffer) => void): Promise<void> {
    const cached = this.repairCache.get(unit);
    if (cached) return use(cached);
    const buf = await this.readStored(unit, 'for repair');
    if (!buf) return;
    use(buf);
    this.cacheForRepair(unit, buf);
  }

  /** A verified unit's bytes from disk, or null (logged) when they cannot be read. */
  private async readStored(unit: number, purpose: string): Promise<Buffer | null> {
    try {
      return await this.store.readUnit(unit, this.units.take(unitLength(this.manifest, unit)));
    } catch (err) {
      this.log.warn(`reading unit ${unit} ${purpose}: ${(err as Error).message}`);
      return null;
    }
  }

  private async sendRepair(unit: number, fragments: number[]): Promise<void> {
    await this.withRepairBytes(unit, (buf) => {
      const fb = this.fragmentBytes;
      const fc = fragmentCountFor(buf.length, fb);
      const queued = queuedBits(this.repairQueued, unit, fc);
      let any = false;
      for (const f of fragments) {
        if (f >= fc || getBit(queued, f)) continue;
        setBit(queued, f);
        any = true;
        this.queueFragment(this.repairQueue, unit, f, fc, fragmentSlice(buf, f, fb), true);
      }
      if (any) this.stats.nacksAnswered++;
    });
    this.drain();
  }

  /** Outgoing datagrams are carved from arenas (datagramArenaBytes): one allocation per many fragments, not one each. */
  private arena = new Uint8Array(0);
  private arenaOff = 0;

  private allocDatagram(bytes: number): Uint8Array {
    if (this.arenaOff + bytes > this.arena.length) {
      this.arena = new Uint8Array(Math.max(AGENT_DEFAULTS.datagramArenaBytes, bytes));
      this.arenaOff = 0;
    }
    const d = this.arena.subarray(this.arenaOff, this.arenaOff + bytes);
    this.arenaOff += bytes;
    return d;
  }

  /**
   * Downloads pause while copies wait: LAN copies beyond copyQueueMaxBytes, or
   * cross-group copies beyond crossQueueMaxBytes (small: the cross-group pace is slow,
   * and a long queue there only delays copies until the receiving gateway NACKs them).
   */
  private copyBacklogged(): boolean {
    return this.copyQueueBytes > AGENT_DEFAULTS.copyQueueMaxBytes || this.cross.copyBytesQueued > AGENT_DEFAULTS.crossQueueMaxBytes;
  }

  /** A copy of one fragment: multicast on the LAN, and unicast to each other group's gateway to be re-multicast there. */
  private copyFragment(unit: number, fragment: number, fc: number, payload: Uint8Array, crossGroup: boolean): void {
    this.queueFragment(this.copyQueue, unit, fragment, fc, payload, false);
    if (crossGroup) for (const to of this.copyTo) this.queueUnicast(unit, fragment, fc, payload, false, to);
  }

  private queueUnicast(unit: number, fragment: number, fc: number, payload: Uint8Array, repair: boolean, to: { address: string; port: number }): void {
    const d = this.allocDatagram(DATA_HEADER_BYTES + payload.length);
    writeDataHeader(d, { sender: this.senderId, releaseId: this.manifest.idBytes, repair, forward: true, unit, fragment, fragmentCount: fc, fragmentBytes: this.fragmentBytes });
    d.set(payload, DATA_HEADER_BYTES);
    this.cross.queue(d, to, repair, Date.now());
    this.ensureTicking();
    if (!repair) {
      // Not announced until its cross-group copies are out too: a gateway would NACK them.
      this.copying.set(unit, (this.copying.get(unit) ?? 0) + 1);
    }
    this.drainSoon();
  }

  /** `all-fetched`: the group holds everything now; copy what we fetched while waiting. */
  private async sendDeferred(): Promise<void> {
    const fb = this.fragmentBytes;
    while (this.deferred.length && !this.closed) {
      const unit = this.deferred.shift()!;
      const buf = await this.readStored(unit, 'to copy');
      if (!buf) continue;
      const fc = fragmentCountFor(buf.length, fb);
      for (let f = 0; f < fc; f++) this.copyFragment(unit, f, fc, fragmentSlice(buf, f, fb), !this.relayed.has(unit));
      if (this.copyBacklogged()) await new Promise<void>((resolve) => this.copyQueueWaiters.push(resolve));
    }
  }

  private queueFragment(q: Uint8Array[], unit: number, fragment: number, fragmentCount: number, payload: Uint8Array, repair: boolean): void {
    const d = this.allocDatagram(DATA_HEADER_BYTES + payload.length);
    writeDataHeader(d, { sender: this.senderId, releaseId: this.manifest.idBytes, repair, unit, fragment, fragmentCount, fragmentBytes: this.fragmentBytes });
    d.set(payload, DATA_HEADER_BYTES);
    q.push(d);
    if (q === this.copyQueue) {
      this.copyQueueBytes += d.length;
      this.copying.set(unit, (this.copying.get(unit) ?? 0) + 1);
    }
    if (!repair) this.drainSoon();
  }

  private drainQueued = false;
  /**
   * Drain once the current run of queueing is over: the fragments of one HTTP chunk (or
   * one receive batch) leave in one sendmmsg, as GSO super-datagrams, instead of one
   * syscall each.
   */
  private drainSoon(): void {
    if (this.drainQueued) return;
    this.drainQueued = true;
    queueMicrotask(() => {
      this.drainQueued = false;
      this.drain();
    });
  }

  /** Send what the token bucket allows; repairs and NACKs before copies. */
  private drain(): void {
    if (this.closed || this.waitingWritable || this.drainTimer) return;
    const batch: Uint8Array[] = [];
    const now = Date.now();
    let wait = 0;
    // Cross-group sends: each other group's gateway at the pace its path delivers
    // (FEEDBACK), repairs first: a whole LAN group is waiting for each.
    const crossWait = this.cross.drain(now, (d, to, repair) => {
      const unit = this.sendCross(d, to);
      if (!repair) return this.copyLeft(unit);
      const q = this.unicastRepairQueued.get(`${unit}/${to.address}/${to.port}`);
      if (q) clearBit(q, peekOwnData(d)!.fragment);
    });
    while (wait === 0 && batch.length < AGENT_DEFAULTS.sendBatch) {
      const q = this.repairQueue.length ? this.repairQueue : this.copyQueue;
      const d = q[0];
      if (!d) break;
      wait = this.bucket.take(d.length, now);
      if (wait > 0) break;
      q.shift();
      if (q === this.copyQueue) this.copyQueueBytes -= d.length;
      batch.push(d);
    }
    if (this.copyQueueWaiters.length && this.copyQueueBytes <= AGENT_DEFAULTS.copyQueueMaxBytes / 2 && this.cross.copyBytesQueued <= AGENT_DEFAULTS.crossQueueMaxBytes / 2) {
      for (const w of this.copyQueueWaiters.splice(0)) w();
    }
    if (batch.length) {
      const n = this.transport.sendBatch(batch, this.transport.groupEndpoint);
      for (let i = 0; i < n; i++) this.sent(batch[i], now);
      if (n < batch.length) {
        // Kernel queue full: put the rest back in front, in order, and wait.
        const rest = batch.slice(n);
        for (let i = rest.length - 1; i >= 0; i--) {
          const isCopy = isOwnCopy(rest[i]);
          (isCopy ? this.copyQueue : this.repairQueue).unshift(rest[i]);
          if (isCopy) this.copyQueueBytes += rest[i].length;
        }
        this.waitingWritable = true;
        return;
      }
    }
    const crossPending = this.cross.pending;
    if (wait > 0 || crossWait > 0 || this.repairQueue.length || this.copyQueue.length || crossPending) {
      const lanPending = this.repairQueue.length || this.copyQueue.length;
      const next = Math.min(lanPending ? Math.max(1, wait) : Infinity, crossPending ? Math.max(1, crossWait) : Infinity);
      this.drainTimer = setTimeout(() => {
        this.drainTimer = null;
        this.drain();
      }, Number.isFinite(next) ? next : 1);
    }
  }

  /** Bookkeeping for a DATA datagram that left: stats, repair dedup, copy tracking. */
  private sent(d: Uint8Array, now: number): void {
    const h = peekOwnData(d);
    if (!h) return;
    const { unit, fragment, fragmentCount: fc, payloadBytes: payload } = h;
    if (h.repair) {
      this.stats.repairBytesSent += payload;
      this.stats.repairPacketsSent++;
      this.repairs.sawFragment(unit, fragment, fc, now);
      const q = this.repairQueued.get(unit);
      if (q) clearBit(q, fragment);
    } else {
      this.stats.copyBytesSent += payload;
      this.copyLeft(unit);
    }
  }

  /** One copy of `unit` left (LAN or cross-group); after its last, peers may NACK it. */
  private copyLeft(unit: number): void {
    const left = (this.copying.get(unit) ?? 1) - 1;
    if (left > 0) this.copying.set(unit, left);
    else {
      this.copying.delete(unit);
      this.announceSoon();
    }
  }

  /** Send one queued cross-group datagram; returns its unit. */
  private sendCross(d: Uint8Array, to: Endpoint): number {
    this.unicast?.send(d, to.port, to.address);
    const h = peekOwnData(d)!;
    this.stats.crossGroupBytesSent += h.payloadBytes;
    return h.unit;
  }

  /** One announce for everything that changed within announceDebounceMs, not one per change. */
  private announcePending: NodeJS.Timeout | null = null;

  private announceSoon(): void {
    if (this.closed || this.announcePending) return;
    this.announcePending = setTimeout(() => {
      this.announcePending = null;
      this.announce();
    }, AGENT_DEFAULTS.announceDebounceMs);
    this.announcePending.unref();
  }

  /**
   * The periodic announce. Idle (complete here and at every peer heard) the timer runs
   * every idleAnnounceMs instead of announceMs: fewer wake-ups. An announce from a peer
   * that lacks units brings back the fast pace at once. Announces for other reasons (a
   * unit verified, new copy destinations) go out whatever the pace.
   */
  private announceOnTimer(): void {
    if (this.closed || !this.store) return;
    this.announce();
    let idle = this.store.isComplete;
    for (const p of this.peers.values()) if (!p.complete) idle = false;
    this.setAnnouncePace(idle ? AGENT_DEFAULTS.idleAnnounceMs : AGENT_DEFAULTS.announceMs);
  }

  private setAnnouncePace(ms: number): void {
    if (this.closed || (this.announceTimer && this.announceEveryMs === ms)) return;
    if (this.announceTimer) clearInterval(this.announceTimer);
    this.announceEveryMs = ms;
    this.announceTimer = setInterval(() => this.announceOnTimer(), ms);
  }

  private announce(): void {
    if (this.closed || !this.store) return;
    // Forget peers gone quiet: sender ids are cheap to invent, so the map must not grow forever.
    const now = Date.now();
    for (const [id, p] of this.peers) if (now - p.lastSeen > AGENT_DEFAULTS.peerTimeoutMs) this.peers.delete(id);
    this.ageAssemblies(now);
    const bits = this.store.bitmap();
    // Units whose copies are still queued are not announced: peers would NACK
    // fragments that are on their way.
    for (const u of this.copying.keys()) bits[u >>> 3] &= ~(0x80 >>> (u & 7));
    const n = this.manifest.unitCount;
    // One packet per bitmap chunk that fits a fragment; at least one (an empty release).
    const perPacket = (this.fragmentBytes - 64) * 8;
    let first = 0;
    do {
      const count = Math.min(perPacket, n - first);
      const have = new Uint8Array(bitmapBytes(count));
      for (let i = 0; i < count; i++) if (getBit(bits, first + i)) setBit(have, i);
      const pkt = this.seal(encodeAnnounce({ sender: this.senderId, releaseId: this.manifest.idBytes, firstUnit: first, unitCount: count, complete: this.store.isComplete, have }));
      this.repairQueue.push(pkt);
      // The gateways we copy to must know us before our copies arrive; each announce is
      // also the round-trip probe of that path's pacer (the gateway echoes its sequence).
      for (const to of this.copyTo) {
        this.unicast?.send(pkt, to.port, to.address);
        this.cross.probe(to, this.controlSeq, now);
      }
      first += perPacket;
    } while (first < n);
    this.drain();
  }
}

/** The bitmap of fragments queued for `key` (a unit, or a unit and requester), made on first use. */
function queuedBits<K>(m: Map<K, Uint8Array>, key: K, fragmentCount: number): Uint8Array {
  let q = m.get(key);
  if (!q) {
    q = new Uint8Array(bitmapBytes(fragmentCount));
    m.set(key, q);
  }
  return q;
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

