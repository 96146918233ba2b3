/**
 * The agent's LAN protocol core (issue 16, docs/architecture.md): one member of one
 * release's LAN group, as a state machine without I/O. Datagrams, timeouts, the split
 * map, leases and storage answers come in with `now`; datagrams to send, units to store
 * or read, requests to the server and completion go out through poll_* calls.
 *
 * After quinn-proto's `Connection` (handle_* inputs; poll_transmit, poll_timeout and
 * poll for outputs, "none of the functions actually perform system-level I/O"; the
 * driver, like quinn's endpoint driver, owns sockets and timers) and NORM's split
 * (NRL norm, common/normSession.cpp and normNode.cpp: a NormSession for the local
 * member, one NormSenderNode per remote sender with HandleObjectMessage/HandleNackMessage):
 * here the session is LanCore, remote senders live in PeerTable, and the state is split
 * by owner: Assembler (unit buffers), SendEngine (queues and pacing), NackScheduler and
 * RepairScheduler (NORM's timers, RFC 5740), CrossGroupState (other LAN groups).
 */
import type { Logger } from '../../util/log';
import { silentLogger } from '../../util/log';
import { bytesEqual } from '../../util/bits';
import { type AnnouncePacket, bitmapBytes, decodePacket, encodeAnnounce, encodeNack, fragmentCountFor, fragmentPayloadBytes, getBit, PacketType, peekSender, setBit } from '../../wire/packet';
import { NackScheduler } from '../nack-scheduler';
import { RepairScheduler } from '../repair-scheduler';
import { Assembler } from './assembler';
import { CopyTreeView } from './copy-tree-view';
import { AGENT_DEFAULTS } from './defaults';
import { HeldDatagrams } from './held-datagrams';
import { firstAnnounceLacks, PeerTable } from './peers';
import { RepairTrace } from './repair-trace';
import { RepairFlow, emptyStats, drop } from './repair-flow';
import { SendEngine, withoutQueued } from './send-engine';
import { SplitMapView } from './split-map';
import type { CoreConfig, CoreLeaseGrant, CoreSplitMap, CopyDestination, Endpoint, ProtocolCore, Transmit } from './types';

/** How often the core looks for a stall (the heartbeat's pace). */
const STALL_CHECK_MS = 1000;

export class LanCore extends RepairFlow implements ProtocolCore {
  protected readonly log: Logger;
  readonly peers = new PeerTable();
  protected readonly send: SendEngine;
  protected readonly nacks: NackScheduler;
  protected readonly repairs: RepairScheduler;
  protected readonly view: SplitMapView;
  /** Where copies go besides the LAN: the other LAN groups' gateways (from the map or lease answers). */
  protected copyTo: CopyDestination[] = [];
  /** 1.5 copy trees (docs/protocol.md section 17), null when copies go to every gateway; our own copies' origin. */
  protected tree: CopyTreeView | null = null;
  protected copyTreeOrigin: number | undefined;
  /** Whom our announces go to by unicast: copyTo, and as a tree's gateway whatever we may forward to. */
  private announceTo: CopyDestination[] = [];
  protected controlSeq: bigint;
  private started = false;
  private tickAt: number | null = null;
  private announceAt: number | null = null;
  /** The announce timer's period: announceMs, or idleAnnounceMs while idle. */
  private announceEveryMs = 0;
  private announceSoonAt: number | null = null;
  readonly held = new HeldDatagrams((r) => this.drop(r));
  private stallAt: number | null = null;
  /** Each step of a unit's repair rounds, as receiver and repairer, once its sink is set (stream bench). */
  readonly repairTrace: RepairTrace;

  constructor(cfg: CoreConfig, now: number) {
    const stats = cfg.stats ?? emptyStats();
    super(cfg, new Assembler(cfg.manifest.unitSize, (r) => drop(stats, r), cfg.assembleInPlace), stats, now);
    this.log = cfg.logger ?? silentLogger;
    this.controlSeq = cfg.controlSeqStart;
    this.view = new SplitMapView(cfg.member, cfg.group);
    this.send = new SendEngine(cfg.rateBytesPerSec, cfg.crossRateBytesPerSec, now, { sender: cfg.senderId, releaseId: cfg.manifest.idBytes, fragmentBytes: cfg.fragmentBytes }, stats, {
      copiesLeft: (_unit, t) => this.announceSoon(t),
      repairSent: (unit, fragment, fc, t) => this.repairs.sawFragment(unit, fragment, fc, t),
    });
    const trace = (this.repairTrace = new RepairTrace(this.asm)).event;
    this.nacks = new NackScheduler({ backoffMs: AGENT_DEFAULTS.nackBackoffMs, holdoffMs: AGENT_DEFAULTS.nackHoldoffMs, minHoldoffMs: AGENT_DEFAULTS.nackHoldoffMinMs, groupSize: 1, maxUnitsInFlight: AGENT_DEFAULTS.nackMaxUnitsInFlight, random: cfg.random, trace, ...(cfg.nackEchoMs ? { echoMs: cfg.nackEchoMs, askAgainAtOnce: true } : {}) });
    this.repairs = new RepairScheduler({ aggregateMs: AGENT_DEFAULTS.repairAggregateMs, backoffMs: AGENT_DEFAULTS.repairBackoffMs, dedupMs: AGENT_DEFAULTS.repairDedupMs, random: cfg.random, trace });
    this.completeIfAll();
  }

  // ---------------------------------------------------------------- inputs

  handleDatagram(buf: Uint8Array, now: number, via?: Endpoint): void {
    // Our own multicast comes back (IP_MULTICAST_LOOP, for peers on this host): skip it before decoding.
    if (peekSender(buf) === this.cfg.senderId) return;
    // Before the first map's group key nothing can be taken: kept until it comes (a peer's lost announce cost announceMs of its copies).
    if (!this.peers.groupKey) return void (this.held.hold(buf, null, via, now) || this.drop('pre-key-full'));
    const r = decodePacket(buf);
    if (!r.ok) return this.drop(r.reason);
    const p = r.packet;
    if (!bytesEqual(p.releaseId, this.m.idBytes)) return this.drop('other-release');
    const peer = this.peers.admit(p, now);
    if (typeof peer === 'string') return void ((peer === 'unknown-sender' && this.cfg.holdUnheard && this.held.hold(buf, p.sender, via, now)) || this.drop(peer));
    // A control packet from a sender whose copies are held (held-datagrams.ts): those first.
    if (p.type !== PacketType.DATA && this.held.has(p.sender)) for (const d of this.held.take(p.sender, now)) this.handleDatagram(d.buf, now, d.via);
    if (via) this.crossGroup.heard(via, now);
    switch (p.type) {
      case PacketType.DATA: {
        // What arrived from another group's member, duplicates too: its pacer counts what it sent.
        if (via && !this.replaying) this.send.cross.received(via, buf.length);
        const u = p.unit;
        if (u >= this.m.unitCount) return void (this.ahead(buf, u, via, now) || this.drop('unit-range'));
        if (p.fragmentBytes !== this.fb) return this.drop('fragment-grid');
        const len = this.unitBytes(u);
        const fc = fragmentCountFor(len, this.fb);
        if (p.fragmentCount !== fc) return this.drop('fragment-grid');
        if (p.payload.length !== fragmentPayloadBytes(len, p.fragment, this.fb)) return this.drop('length');
        // Repair dedup matters only for units we could repair ourselves.
        if (this.has(u)) this.repairs.sawFragment(u, p.fragment, fc, now);
        if (p.repair) this.unanswered.delete(u);
        const res = this.has(u) || this.fetching.has(u) ? 'dup' : this.asm.add(u, len, fc, p.fragment, p.fragment * this.fb, p.payload, now);
        if (res === 'dup') {
          this.stats.lanDuplicateBytes += p.payload.length;
          // Another group's repair of a fragment we have: a LAN peer's NACK we passed on asked for it (onNack).
          if (p.forward && p.repair && via) this.send.queueLan(u, p.fragment, fc, p.payload, true);
          return;
        }
        this.lastProgressAt = now; // data of a missing unit: not a stall
        this.repairTrace.data(u, p.fragment, fc, p.repair, res === 'complete', now);
        // A copy's last fragment, from a LAN peer or another group: its sender got to the unit's
        // end (fragment order), as its ANNOUNCE would say (sections 5, 8), which is one datagram:
        // lost, the unit waited for the next (a stream's p99 at 3% loss). NACKable now.
        if (!p.repair && p.fragment === fc - 1 && res !== 'complete') this.availableMissing.add(u);
        if (via) this.stats.crossGroupBytes += p.payload.length;
        else this.stats.lanBytes += p.payload.length;
        if (p.forward && via) {
          this.crossGroup.copiedFrom(u, via);
          // A copy from another LAN group: we are this group's gateway; send it on as our own,
          // and (1.5) down the origin's copy tree to our children in it, flagged again.
          this.send.queueLan(u, p.fragment, fc, p.payload, false);
          this.stats.fragmentsForwarded++;
          if (p.treeOrigin !== undefined && !p.repair && this.tree) {
            // Behind on our uplink: pass nothing more on rather than queue without bound (the sites below NACK the holder).
            if (this.send.cross.copyBytesQueued > AGENT_DEFAULTS.treeForwardQueueMaxBytes) this.drop('tree-forward-queue-full');
            else for (const to of this.tree.forwardTo(p.treeOrigin)) this.send.queueUnicast(u, p.fragment, fc, p.payload, false, to, now, p.treeOrigin);
          }
        }
        this.nacks.progress(u, now);
        if (res === 'complete') this.verifyAssembly(u);
        return;
      }
      case PacketType.NACK:
        return this.onNack(p, now, via, buf);
      case PacketType.FEEDBACK:
        if (via) this.send.cross.feedback(via, p, now);
        return;
      case PacketType.ANNOUNCE:
        if (via) this.send.cross.announced(via, p.auth!.seq, now);
        peer.complete = p.complete;
        // A peer that lacks units: back to the fast pace (we may be idle).
        if (!p.complete) this.setAnnouncePace(AGENT_DEFAULTS.announceMs, now);
        if (!via && firstAnnounceLacks(peer, p, this.m.unitCount, (u) => this.has(u))) this.announceSoon(now);
        return this.onAnnounce(p, now, via);
    }
  }

  private onAnnounce(p: AnnouncePacket, now: number, via?: Endpoint): void {
    const end = this.announcedAhead(p, via, Math.min(this.m.unitCount, p.firstUnit + p.unitCount), now);
    for (let u = p.firstUnit; u < end; u++) {
      if (!getBit(p.have, u - p.firstUnit) || this.has(u)) continue;
      if (via) this.crossAnnounced(u, via, now); // before it is added: first heard from another site?
      this.availableMissing.add(u);
    }
  }

  handleTimeout(now: number): void {
    if (this.announceSoonAt !== null && now >= this.announceSoonAt) {
      this.announceSoonAt = null;
      this.announce(now);
    }
    if (this.announceAt !== null && now >= this.announceAt) {
      this.announceAt = now + this.announceEveryMs;
      this.announceOnTimer(now);
    }
    if (this.tickAt !== null && now >= this.tickAt) {
      this.tick(now);
      // An idle agent would otherwise wake 200 times a second (about 2% of a core).
      this.tickAt = this.needsTick(now) ? now + AGENT_DEFAULTS.tickMs : null;
    }
    if (this.stallAt !== null && now >= this.stallAt) {
      // Nothing to wait for once the file is in place: no wake-ups for it while idle.
      this.stallAt = this.fileDone ? null : now + STALL_CHECK_MS;
      this.checkStall(now);
    }
  }

  setSplitMap(map: CoreSplitMap, now: number): void {
    this.view.map = map;
    // Gateways move: a new one gets our copies (queued ones too) and announces within a heartbeat (setCopyTo).
    if (map.copyTree) {
      this.tree = new CopyTreeView(map, this.cfg.group, map.copyTree);
      const own = this.tree.own();
      this.copyTreeOrigin = own.origin;
      this.setCopyTo(own.dests, now, this.view.role === 'gateway' ? this.tree.gatewayTargets() : []);
    } else if (map.copyTo) {
      this.tree = null;
      this.copyTreeOrigin = undefined;
      this.setCopyTo(map.copyTo, now);
    }
    const start = map.lanStart ?? true;
    if (start && !this.lanStart) {
      this.log.info(`every unit is held in the group: LAN exchange starts (${this.deferred.length} units to copy)`);
      this.lanStart = true;
      this.pumpDeferred();
    } else this.lanStart = start;
    if (map.groupKey) this.peers.groupKey = Buffer.from(map.groupKey, 'base64');
    this.nacks.setGroupSize(map.members.length);
    if (!this.started) {
      // The first map brings the group key: from now on the core announces and ticks.
      this.started = true;
      this.stallAt = now + STALL_CHECK_MS;
      this.setAnnouncePace(AGENT_DEFAULTS.announceMs, now);
      this.announce(now);
    }
    this.ensureTicking(now); // a new role or copy destinations may need the tick again
    this.events.push({ type: 'wake' });
    if (this.peers.groupKey) for (const d of this.held.take(null, now)) this.handleDatagram(d.buf, now, d.via);
  }

  /** New copy destinations (and gateways we forward to): announce ourselves to them first, so they accept our copies; a moved gateway's queued copies follow it. */
  protected setCopyTo(dests: CopyDestination[], now: number, forwardTo: CopyDestination[] = []): void {
    const key = (d: Endpoint) => `${d.address}:${d.port}`;
    const before = new Set(this.announceTo.map(key));
    const groups = new Set(this.copyTo.map((d) => d.group ?? key(d)));
    this.send.cross.retargetMoved(this.announceTo, [...dests, ...forwardTo], now);
    const to = new Map(dests.map((d) => [key(d), d]));
    for (const d of forwardTo) to.set(key(d), d);
    this.copyTo = dests;
    this.announceTo = [...to.values()];
    if (this.started && this.announceTo.some((d) => !before.has(key(d)))) this.announce(now);
    if (!this.tree) this.copyRecent(dests.filter((d) => !groups.has(d.group ?? key(d))), now); // after the announce: it must know us first
  }

  leaseGranted(grant: CoreLeaseGrant, now: number, asked?: { units: number[]; reason: 'relayed' | 'stalled' }): void {
    for (const u of grant.units) if (!this.leased.includes(u) && !this.fetching.has(u) && !(asked && this.has(u))) this.leased.push(u);
    for (const u of grant.relayed ?? []) this.relayed.add(u);
    if (!asked) {
      if (!this.tree) this.setCopyTo(grant.copyTo ?? [], now); // a tree's destinations come from the map
    } else if (asked.reason === 'relayed') for (const u of asked.units) if (!grant.units.includes(u)) this.crossGroup.retryRelayLater(u, now);
    this.events.push({ type: 'wake' });
  }

  relayFailed(units: number[], now: number): void {
    for (const u of units) this.crossGroup.retryRelayLater(u, now);
  }

  writable(now: number): void {
    this.send.writable(now);
  }

  setRate(bytesPerSec: number): void {
    this.send.setRate(bytesPerSec);
  }

  reuseSentDatagrams(on: boolean): void {
    this.send.reuseSentDatagrams(on);
  }

  // ---------------------------------------------------------------- outputs

  pollTransmit(now: number): Transmit | null {
    if (this.deferred.length) this.pumpDeferred();
    return this.send.pollTransmit(now);
  }

  transmitted(t: Transmit, accepted: number, now: number): void {
    this.send.transmitted(t, accepted, now);
  }

  pollTimeout(): number | null {
    let t: number | null = null;
    for (const x of [this.tickAt, this.announceAt, this.announceSoonAt, this.stallAt, this.send.nextRoundAt]) if (x !== null && (t === null || x < t)) t = x;
    return t;
  }

  backlogged(inFlight = false): boolean {
    return this.send.backlogged(inFlight);
  }
  drained(inFlight = false): boolean {
    return this.send.drained(inFlight);
  }
  /** Cross-group copies queued past half their cap: downloads paused for them (the heartbeat says so). */
  get crossBusy(): boolean {
    return this.send.cross.copyBytesQueued > AGENT_DEFAULTS.crossQueueMaxBytes / 2;
  }
  /** Units being assembled from the LAN. */
  get assemblies(): ReadonlyMap<number, unknown> {
    return this.asm.assemblies;
  }
  get role(): 'gateway' | 'member' {
    return this.view.role;
  }
  crossPaths() {
    return this.send.cross.view();
  }
  peersSeen(now: number) {
    return this.peers.seen(now);
  }

  // ---------------------------------------------------------------- timers

  private tick(now: number): void {
    if (!this.fileDone) {
      const before = this.nacks.suppressed;
      for (const n of this.nacks.poll(now, this.ripeUnits(now), (u) => this.gapOf(u))) {
        const nack = this.seal(encodeNack({ sender: this.cfg.senderId, releaseId: this.m.idBytes, unit: n.unit, fragmentCount: n.fragmentCount, fragmentBytes: this.fb, missing: n.missing }));
        this.send.queueControl(nack);
        this.forwardNack(nack, n.unit, now);
        this.stats.nacksSent++;
      }
      this.stats.nacksSuppressed += this.nacks.suppressed - before;
    }
    for (const job of this.repairs.due(now)) this.sendRepair(job.unit, job.fragments);
    this.crossFeedback(now);
  }

  /**
   * Whether the tick has anything to time: NACKs while units are missing, repairs
   * pending, and cross-group pacing (a gateway's FEEDBACK reports, a path's silence
   * check) while this agent is a wide-area group's gateway, copies to other sites or has
   * unicast queued. (A plain LAN group's gateway has no cross-group traffic.)
   */
  private needsTick(now: number): boolean {
    if (!this.fileDone || this.repairs.nextDueIn(now) !== null) return true;
    if ((this.cfg.wideGroup && this.view.role === 'gateway') || this.announceTo.length > 0) return true;
    return this.send.cross.view().some((p) => p.queued > 0);
  }

  protected ensureTicking(now: number): void {
    if (this.started && !this.fileDone && this.stallAt === null) this.stallAt = now + STALL_CHECK_MS;
    if (this.tickAt !== null || !this.started || !this.needsTick(now)) return;
    this.tickAt = now + AGENT_DEFAULTS.tickMs;
  }

  // ---------------------------------------------------------------- announces

  /** One announce for everything that changed within announceDebounceMs, not one per change. */
  protected announceSoon(now: number): void {
    if (!this.started || this.announceSoonAt !== null) return;
    this.announceSoonAt = now + AGENT_DEFAULTS.announceDebounceMs;
  }

  /**
   * The periodic announce. Idle (complete here and at every peer heard) the timer runs
   * every idleAnnounceMs instead of announceMs: fewer wake-ups. An announce from a peer
   * that lacks units brings back the fast pace at once. Announces for other reasons (a
   * unit verified, new copy destinations) go out whatever the pace.
   */
  private announceOnTimer(now: number): void {
    this.announce(now);
    this.setAnnouncePace(this.fileDone && this.peers.allComplete ? AGENT_DEFAULTS.idleAnnounceMs : AGENT_DEFAULTS.announceMs, now);
  }

  private setAnnouncePace(ms: number, now: number): void {
    if (!this.started || (this.announceAt !== null && this.announceEveryMs === ms)) return;
    this.announceEveryMs = ms;
    this.announceAt = now + ms;
  }

  /** Repairs to a requester that never heard from us (trees: not our child) go after an announce, or it drops them. */
  protected override repairUnicast(unit: number, missing: Uint8Array, to: Endpoint, now: number): void {
    if (!this.announceTo.some((d) => d.address === to.address && d.port === to.port) && this.crossGroup.introduce(to, now)) this.announce(now, to);
    super.repairUnicast(unit, missing, to, now);
  }

  /** Our announce on the LAN and to announceTo; `only`: to that endpoint alone (another group's). */
  protected announce(now: number, only?: Endpoint): void {
    if (!this.started) return;
    this.peers.prune(now);
    this.asm.age(now);
    // Not announced while copies are queued (peers would NACK fragments on their way): on the LAN, LAN copies; to gateways, any.
    const lan = withoutQueued(this.have, this.send.lanCopying);
    const cross = only || this.announceTo.length ? withoutQueued(this.have, this.send.copying) : lan;
    const n = this.m.unitCount;
    // One packet per bitmap chunk that fits a fragment; at least one (an empty release).
    const perPacket = (this.fb - 64) * 8;
    let first = 0;
    do {
      const count = Math.min(perPacket, n - first);
      const pkt = (bits: Uint8Array) => {
        const have = new Uint8Array(bitmapBytes(count));
        for (let i = 0; i < count; i++) if (getBit(bits, first + i)) setBit(have, i);
        return this.seal(encodeAnnounce({ sender: this.cfg.senderId, releaseId: this.m.idBytes, firstUnit: first, unitCount: count, complete: this.fileDone, have }));
      };
      if (only) this.send.queueDirect(pkt(cross), only);
      else {
        this.send.queueControl(pkt(lan));
        // Gateways we copy to must know us before our copies arrive; each is a pacer's round-trip probe (echoed).
        const toGateways = this.announceTo.length ? pkt(cross) : null;
        for (const to of this.announceTo) {
          this.send.queueDirect(toGateways!, to);
          this.send.cross.probe(to, this.controlSeq, now);
        }
      }
      first += perPacket;
    } while (first < n);
  }
}
