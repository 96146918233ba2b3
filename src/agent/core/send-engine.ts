import { bitmapBytes, clearBit, DATA_HEADER_BYTES, isOwnCopy, PacketType, peekOwnData, writeDataHeader } from '../../wire/packet';
import { CrossPaths } from '../cross-paths';
import { TokenBucket } from '../token-bucket';
import { AGENT_DEFAULTS } from './defaults';
import type { CoreStats, Endpoint, Transmit } from './types';

/** What the send engine tells its owner. */
export interface SendEngineHooks {
  /** The last queued copy of a unit left, or the last for the LAN (its LAN peers may NACK it now): announce it. */
  copiesLeft(unit: number, now: number): void;
  /** A repair fragment left on the LAN (repair dedup). */
  repairSent(unit: number, fragment: number, fragmentCount: number, now: number): void;
}

/**
 * The send queues of one agent and their pacing, without sockets (issue 16): LAN repairs
 * and control packets before copies, under one token bucket; cross-group sends to other
 * groups' gateways, one learned pace per path (CrossPaths); unpaced unicast control
 * packets. Sending happens in rounds, as the agent's drain() did: a round hands out one
 * LAN batch and every cross-group datagram the pacers allow, then the next round waits
 * for the bucket (at least 1 ms), so the pace and the batch sizes are what they were.
 */
export class SendEngine {
  readonly bucket: TokenBucket;
  /** Cross-group sends: one learned pace per other group's gateway, under the member's cap. */
  readonly cross: CrossPaths;
  /** Outgoing datagrams are carved from arenas (datagramArenaBytes): one allocation per many fragments, not one each. */
  private arena: Uint8Array = new Uint8Array(0);
  private arenaOff = 0;
  /** Unicast datagrams come from arenas of their own, never reused: the driver may hold them after handing out (its backlog). */
  private crossArena: Uint8Array = new Uint8Array(0);
  private crossArenaOff = 0;
  /**
   * Reuse of LAN arenas once all their datagrams left (reuseSentDatagrams): datagrams not
   * yet sent, per arena, and the emptied arenas kept for the next ones. Without it every
   * arena is garbage once sent, and one that waited through two scavenges dies old and
   * stays resident until a full GC: at 2 GiB, 10-15 MiB of dead arenas per demo agent
   * (bench -- memory).
   */
  private reuse = false;
  private readonly arenaLive = new Map<ArrayBufferLike, number>();
  private readonly freeArenas: Uint8Array[] = [];
  private readonly repairQueue: Uint8Array[] = [];
  private readonly copyQueue: Uint8Array[] = [];
  private copyQueueBytes = 0;
  /** Unicast control packets (announces to gateways, forwarded NACKs, FEEDBACK): not paced. */
  private readonly direct: { to: Endpoint; d: Uint8Array }[] = [];
  /** What the current round let out to other groups, handed out one Transmit per datagram. */
  private readonly crossOut: { to: Endpoint; d: Uint8Array }[] = [];
  private lanBatch: Uint8Array[] | null = null;
  /** Copy datagrams still queued, per unit (LAN and cross-group): such units are not announced to other groups yet. */
  readonly copying = new Map<number, number>();
  /**
   * Of those, the LAN copies: a unit whose LAN copies have left is announced on the LAN and
   * repaired there, whatever still waits for another group's pace (a slow or new path's
   * copies held the LAN peers' NACKs and repairs back: sites testbed, 170 ms at start).
   */
  readonly lanCopying = new Map<number, number>();
  /** Repair fragments queued but not sent, per unit (bitmap). */
  readonly repairQueued = new Map<number, Uint8Array>();
  /** "unit/address/port" -> fragments queued for that cross-group requester, not yet sent. */
  readonly unicastRepairQueued = new Map<string, Uint8Array>();
  /** The next round may not start before this (the bucket's or a pacer's wait); null: at once. */
  private roundAt: number | null = null;
  /** The LAN transport refused datagrams: no round until writable(). */
  private blocked = false;

  private readonly h: { sender: number; releaseId: Uint8Array; repair: boolean; forward: boolean; treeOrigin: number | undefined; unit: number; fragment: number; fragmentCount: number; fragmentBytes: number };

  constructor(
    rateBytesPerSec: number,
    crossRateBytesPerSec: number,
    now: number,
    header: { sender: number; releaseId: Uint8Array; fragmentBytes: number },
    private readonly stats: CoreStats,
    private readonly hooks: SendEngineHooks,
  ) {
    this.h = { sender: header.sender, releaseId: header.releaseId, repair: false, forward: false, treeOrigin: undefined, unit: 0, fragment: 0, fragmentCount: 0, fragmentBytes: header.fragmentBytes };
    this.bucket = new TokenBucket(rateBytesPerSec, AGENT_DEFAULTS.burstBytes, now);
    this.cross = new CrossPaths(crossRateBytesPerSec, now, {
      feedbackMs: AGENT_DEFAULTS.crossFeedbackMs,
      maxPaths: AGENT_DEFAULTS.maxCrossPaths,
      burstBytes: AGENT_DEFAULTS.burstBytes / 4,
    });
  }

  /**
   * The LAN transport copies a datagram before sendBatch returns (the native one:
   * sendmmsg), so an arena whose datagrams have all been sent may be written again. Not
   * for the fallback transport on Node's datagram sockets, which holds each datagram
   * until its send completes.
   */
  reuseSentDatagrams(on: boolean): void {
    this.reuse = on;
    if (!on) {
      this.arenaLive.clear();
      this.freeArenas.length = 0;
    }
  }

  private allocDatagram(bytes: number, lan: boolean): Uint8Array {
    if (!lan) {
      if (this.crossArenaOff + bytes > this.crossArena.length) {
        this.crossArena = new Uint8Array(Math.max(AGENT_DEFAULTS.datagramArenaBytes, bytes));
        this.crossArenaOff = 0;
      }
      const d = this.crossArena.subarray(this.crossArenaOff, this.crossArenaOff + bytes);
      this.crossArenaOff += bytes;
      return d;
    }
    if (this.arenaOff + bytes > this.arena.length) {
      const old = this.arena;
      if (this.reuse && old.length === AGENT_DEFAULTS.datagramArenaBytes && !this.arenaLive.has(old.buffer)) this.recycleArena(old);
      const size = Math.max(AGENT_DEFAULTS.datagramArenaBytes, bytes);
      this.arena = (size === AGENT_DEFAULTS.datagramArenaBytes && this.freeArenas.pop()) || new Uint8Array(size);
      this.arenaOff = 0;
    }
    const d = this.arena.subarray(this.arenaOff, this.arenaOff + bytes);
    this.arenaOff += bytes;
    if (this.reuse) this.arenaLive.set(d.buffer, (this.arenaLive.get(d.buffer) ?? 0) + 1);
    return d;
  }

  /** A LAN datagram left: its arena may be reused once it is no longer the current one and all its datagrams left. */
  private datagramLeft(d: Uint8Array): void {
    const left = this.arenaLive.get(d.buffer);
    if (left === undefined) return; // not from a reused arena (reuse off, or a control packet)
    if (left > 1) {
      this.arenaLive.set(d.buffer, left - 1);
      return;
    }
    this.arenaLive.delete(d.buffer);
    if (d.buffer !== this.arena.buffer && d.buffer.byteLength === AGENT_DEFAULTS.datagramArenaBytes) this.recycleArena(new Uint8Array(d.buffer));
  }

  private recycleArena(a: Uint8Array): void {
    if (this.freeArenas.length < AGENT_DEFAULTS.datagramArenasFree) this.freeArenas.push(a);
  }

  private data(unit: number, fragment: number, fragmentCount: number, payload: Uint8Array, repair: boolean, forward: boolean, treeOrigin?: number): Uint8Array {
    const d = this.allocDatagram(DATA_HEADER_BYTES + payload.length, !forward);
    // One header object of a fixed shape, filled in per fragment: this runs for every
    // datagram, and a fresh (spread) object each time cost more than the copy itself.
    const h = this.h;
    h.repair = repair;
    h.forward = forward;
    h.treeOrigin = treeOrigin;
    h.unit = unit;
    h.fragment = fragment;
    h.fragmentCount = fragmentCount;
    writeDataHeader(d, h);
    d.set(payload, DATA_HEADER_BYTES);
    return d;
  }

  /** A fragment for the LAN: a copy (ours, or forwarded as a gateway) or a repair. */
  queueLan(unit: number, fragment: number, fragmentCount: number, payload: Uint8Array, repair: boolean): void {
    const d = this.data(unit, fragment, fragmentCount, payload, repair, false);
    if (repair) {
      this.repairQueue.push(d);
      return;
    }
    this.copyQueue.push(d);
    this.copyQueueBytes += d.length;
    countUp(this.copying, unit);
    countUp(this.lanCopying, unit);
  }

  /** A fragment by unicast to another group's gateway, flagged to be re-multicast there (1.5: and down `treeOrigin`'s copy tree). */
  queueUnicast(unit: number, fragment: number, fragmentCount: number, payload: Uint8Array, repair: boolean, to: Endpoint, now: number, treeOrigin?: number): void {
    this.cross.queue(this.data(unit, fragment, fragmentCount, payload, repair, true, treeOrigin), to, repair, now);
    // Not announced until its cross-group copies are out too: a gateway would NACK them.
    if (!repair) countUp(this.copying, unit);
  }

  /**
   * A control packet (NACK, ANNOUNCE) for the LAN: ahead of copies; `first`: ahead of repairs
   * too (a stream's BATCH), but behind the BATCH packets queued so before it, so that they
   * leave in the order of their sequence numbers (a receiver drops one numbered below the
   * last it took from us).
   */
  queueControl(packet: Uint8Array, first = false): void {
    if (!first) return void this.repairQueue.push(packet);
    let i = 0;
    while (i < this.repairQueue.length && this.repairQueue[i][3] === PacketType.BATCH) i++;
    this.repairQueue.splice(i, 0, packet);
  }

  /** A control packet by unicast, unpaced. */
  queueDirect(packet: Uint8Array, to: Endpoint): void {
    this.direct.push({ to, d: packet });
  }

  setRate(bytesPerSec: number): void {
    this.bucket.rateBytesPerSec = bytesPerSec;
  }

  /**
   * Downloads pause while copies wait: LAN copies beyond copyQueueMaxBytes, or cross-group
   * copies beyond crossQueueMaxBytes (small: the cross-group pace is slow, and a long
   * queue there only delays copies until the receiving gateway NACKs them). A download
   * already in flight (`inFlight`) pauses for cross-group copies only past
   * crossQueueHardMaxBytes: paused mid-unit, its LAN peers would wait on half a unit.
   */
  backlogged(inFlight = false): boolean {
    const cross = inFlight ? AGENT_DEFAULTS.crossQueueHardMaxBytes : AGENT_DEFAULTS.crossQueueMaxBytes;
    return this.copyQueueBytes > AGENT_DEFAULTS.copyQueueMaxBytes || this.cross.copyBytesQueued > cross;
  }
  /** Below half of those caps: paused downloads may go on. */
  drained(inFlight = false): boolean {
    const cross = inFlight ? AGENT_DEFAULTS.crossQueueHardMaxBytes : AGENT_DEFAULTS.crossQueueMaxBytes;
    return this.copyQueueBytes <= AGENT_DEFAULTS.copyQueueMaxBytes / 2 && this.cross.copyBytesQueued <= cross / 2;
  }
  get lanQueued(): boolean {
    return this.repairQueue.length > 0 || this.copyQueue.length > 0;
  }

  /** When the next round is due: null when nothing waits for one. */
  get nextRoundAt(): number | null {
    if (this.blocked || !this.pending) return null;
    return this.roundAt;
  }

  /** Something queued that a round would hand out now or later. */
  private get pending(): boolean {
    return this.lanQueued || this.cross.pending;
  }

  pollTransmit(now: number): Transmit | null {
    const direct = this.direct.shift();
    if (direct) return { to: direct.to, datagrams: [direct.d] };
    if (!this.lanBatch && !this.crossOut.length) this.round(now);
    const c = this.crossOut.shift();
    if (c) return { to: c.to, datagrams: [c.d] };
    const b = this.lanBatch;
    this.lanBatch = null;
    return b && b.length ? { to: null, datagrams: b } : null;
  }

  /** One round, as the agent's drain(): cross-group sends the pacers allow, then one LAN batch under the bucket. */
  private round(now: number): void {
    if (this.blocked || (this.roundAt !== null && now < this.roundAt)) return;
    this.roundAt = null;
    if (!this.pending) return;
    // Cross-group sends: each other group's gateway at the pace its path delivers
    // (FEEDBACK), repairs first: a whole LAN group is waiting for each.
    const crossWait = this.cross.drain(now, (d, to, repair) => {
      this.crossOut.push({ to, d });
      const h = peekOwnData(d)!;
      this.stats.crossGroupBytesSent += h.payloadBytes;
      if (!repair) return this.copyLeft(h.unit, now);
      const q = this.unicastRepairQueued.get(`${h.unit}/${to.address}/${to.port}`);
      if (q) clearBit(q, h.fragment);
    });
    const batch: Uint8Array[] = [];
    let wait = 0;
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
    this.lanBatch = batch;
    const crossPending = this.cross.pending;
    const lanPending = this.lanQueued;
    if (wait > 0 || crossWait > 0 || lanPending || crossPending) {
      const next = Math.min(lanPending ? Math.max(1, wait) : Infinity, crossPending ? Math.max(1, crossWait) : Infinity);
      this.roundAt = now + (Number.isFinite(next) ? next : 1);
    }
  }

  /** The transport took `accepted` of a Transmit's datagrams. */
  transmitted(t: Transmit, accepted: number, now: number): void {
    if (t.to !== null) return; // unicast: counted when handed out; what the socket refused is lost, as UDP may
    for (let i = 0; i < accepted; i++) this.sent(t.datagrams[i], now);
    if (accepted >= t.datagrams.length) return;
    // Kernel queue full: put the rest back in front, in order, and wait for writable().
    for (let i = t.datagrams.length - 1; i >= accepted; i--) {
      const d = t.datagrams[i];
      const copy = isOwnCopy(d);
      (copy ? this.copyQueue : this.repairQueue).unshift(d);
      if (copy) this.copyQueueBytes += d.length;
    }
    this.blocked = true;
  }

  writable(now: number): void {
    this.blocked = false;
    if (this.roundAt === null && this.pending) this.roundAt = now;
  }

  /** Bookkeeping for a datagram that left on the LAN: stats, repair dedup, copy tracking. */
  private sent(d: Uint8Array, now: number): void {
    if (this.reuse) this.datagramLeft(d);
    const h = peekOwnData(d);
    if (!h) return;
    if (h.repair) {
      this.stats.repairBytesSent += h.payloadBytes;
      this.stats.repairPacketsSent++;
      this.hooks.repairSent(h.unit, h.fragment, h.fragmentCount, now);
      const q = this.repairQueued.get(h.unit);
      if (q) clearBit(q, h.fragment);
    } else {
      this.stats.copyBytesSent += h.payloadBytes;
      const lanLeft = countDown(this.lanCopying, h.unit);
      this.copyLeft(h.unit, now);
      // The last LAN copy, with copies for other groups still queued: the LAN may hear of it now.
      if (lanLeft <= 0 && this.copying.has(h.unit)) this.hooks.copiesLeft(h.unit, now);
    }
  }

  /** One copy of `unit` left (LAN or cross-group); after its last, peers may NACK it. */
  private copyLeft(unit: number, now: number): void {
    if (countDown(this.copying, unit) <= 0) this.hooks.copiesLeft(unit, now);
  }
}

/** One more queued datagram of `unit` in `m` (copying, lanCopying). */
function countUp(m: Map<number, number>, unit: number): void {
  m.set(unit, (m.get(unit) ?? 0) + 1);
}

/** One fewer: the datagrams of `unit` still queued (the entry goes at 0). */
function countDown(m: Map<number, number>, unit: number): number {
  const left = (m.get(unit) ?? 1) - 1;
  if (left > 0) m.set(unit, left);
  else m.delete(unit);
  return left;
}

/** The units of `have` (a bitmap), less those with datagrams in `queued` (copying, lanCopying). */
export function withoutQueued(have: Uint8Array, queued: ReadonlyMap<number, number>): Uint8Array {
  const bits = new Uint8Array(have); // a copy (Uint8Array.from goes through the iterator)
  for (const u of queued.keys()) bits[u >>> 3] &= ~(0x80 >>> (u & 7));
  return bits;
}

/** The bitmap of fragments queued for `key` (a unit, or a unit and requester), made on first use. */
export function queuedBits<K>(m: Map<K, Uint8Array>, key: K, fragmentCount: number): Uint8Array {
  let q = m.get(key);
  if (!q) {
    q = new Uint8Array(bitmapBytes(fragmentCount));
    m.set(key, q);
  }
  return q;
}
