import { DATA_HEADER_BYTES, getBit, PacketType, peekSender, setBit } from '../wire/packet';
import type { AnnouncePacket } from '../wire/packet';
import { BATCH_ORIGIN_BYTES, BATCH_OVERHEAD_BYTES, BatchPacket, decodeBatchPacket, encodeBatchPacket } from '../wire/stream-packet';
import type { Endpoint } from '../transport/transport';
import type { StreamBatchBody } from '../release/stream-manifest';
import { streamUnitLength } from '../release/stream-manifest';
import { AGENT_DEFAULTS } from './core/defaults';
import { LanCore } from './core/lan-core';
import { AHEAD_UNITS, AheadBuffer } from './stream-ahead';
import type { CoreConfig, CoreManifest } from './core/types';

/**
 * Unit numbers an agent keeps bits for in one run of a stream: 1,048,576 (64 GiB of a
 * stream in 64 KiB units, 1 TiB in 1 MiB units). Past it the agent stops with a clear
 * error; a restart goes on from its position with a fresh window.
 */
export const STREAM_UNIT_CAPACITY = 1 << 20;

/**
 * What the LAN core knows of a stream: its units' hashes and lengths, from the batches
 * verified so far. It grows as batches arrive; `unitCount` is one past the last unit
 * known. Units before the first batch taken are never known (a late joiner).
 */
export class StreamWindow implements CoreManifest {
  readonly idBytes: Uint8Array;
  readonly units: string[] = [];
  readonly lengths: number[] = [];
  unitCount = 0;
  /** Not used by the stream core (lengths are per unit); a release's size. */
  readonly size = Number.MAX_SAFE_INTEGER;

  constructor(
    id: string,
    readonly unitSize: number,
  ) {
    this.idBytes = Buffer.from(id, 'hex');
  }

  /** A verified batch: its units become known. */
  add(b: StreamBatchBody): void {
    for (let i = 0; i < b.count; i++) {
      const u = b.first + i;
      this.units[u] = b.units[i];
      this.lengths[u] = streamUnitLength(b, u);
    }
    this.unitCount = Math.max(this.unitCount, b.first + b.count);
  }

  known(u: number): boolean {
    return this.units[u] !== undefined;
  }

  /** Forget units before `u` (retention): their hashes go. */
  forget(from: number, u: number): void {
    for (let v = from; v < u; v++) {
      delete this.units[v];
      delete this.lengths[v];
    }
  }
}

/**
 * The LAN protocol core (core/lan-core.ts) for a stream: the same packets, NACKs and
 * repairs, over a window of units that grows as batches are verified (StreamWindow).
 * Units this member does not want (before its start point, or dropped by retention) are
 * marked done, so it neither NACKs nor waits for them. The core's 'complete' event means
 * nothing for a stream (every known unit held): the driver ignores it.
 */
export class StreamCore extends LanCore {
  private skippedTo = 0;
  /**
   * BATCH packets (wire/stream-packet.ts), decoded but not verified: the batch follower takes
   * them. `across`: by unicast from another site's member (its gateway role, "Batches across sites").
   */
  onBatchPacket: ((p: BatchPacket, now: number, across: boolean) => void) | null = null;

  constructor(
    cfg: Omit<CoreConfig, 'manifest' | 'have' | 'unitCapacity'>,
    readonly window: StreamWindow,
    now: number,
  ) {
    super({ nackEchoMs: AGENT_DEFAULTS.streamNackEchoMs, holdUnheard: true, recentCopies: true, ...cfg, manifest: window, have: new Uint8Array(0), unitCapacity: STREAM_UNIT_CAPACITY }, now);
  }

  /** NACKs this member echoed (NackScheduler echoMs): each was a NACK that had brought nothing in its echo delay. */
  get nackEchoes(): number {
    return this.nacks.echoed;
  }

  override handleDatagram(buf: Uint8Array, now: number, via?: Endpoint): void {
    // Before the group key, a BATCH packet too is kept (LanCore's pre-key hold) and comes back here once it is in.
    if (buf.length < 4 || buf[3] !== PacketType.BATCH || !this.peers.groupKey) return super.handleDatagram(buf, now, via);
    if (peekSender(buf) === this.cfg.senderId) return;
    const r = decodeBatchPacket(buf);
    if (!r.ok) return this.drop(r.reason);
    // By unicast only a batch another site's member fetched (docs/protocol.md, "Batches across
    // sites"); a forwarded one (with an origin) is for a LAN, never sent on.
    if (via && r.packet.origin !== undefined) return this.drop('batch-unicast');
    if (!Buffer.from(r.packet.releaseId).equals(this.window.idBytes)) return this.drop('other-release');
    // Under the group key, as NACK and ANNOUNCE: a sender outside the group cannot make members passive.
    const bad = this.peers.admitBatch(r.packet.sender, r.packet.auth!);
    if (bad) return this.drop(bad);
    this.onBatchPacket?.(r.packet, now, via !== undefined);
  }

  /**
   * Send a batch file by unicast to the other sites' gateways (this member's copy
   * destinations, a wide-area group's), unpaced like an announce: their LANs need not poll
   * the server for it. The number of gateways it went to (0: none, or it does not fit).
   */
  sendBatchAcross(batch: number, file: Uint8Array): number {
    if (!this.copyTo.length || !this.peers.groupKey || BATCH_OVERHEAD_BYTES + file.length > this.fb + DATA_HEADER_BYTES) return 0;
    const pkt = this.seal(encodeBatchPacket({ sender: this.cfg.senderId, releaseId: this.window.idBytes, batch, file }));
    for (const to of this.copyTo) this.send.queueDirect(pkt, to);
    return this.copyTo.length;
  }

  /** Multicast on this LAN a batch another site's member `origin` sent us (flags 1); false when it does not fit. */
  forwardBatch(origin: number, batch: number, file: Uint8Array): boolean {
    if (!this.peers.groupKey || BATCH_OVERHEAD_BYTES + BATCH_ORIGIN_BYTES + file.length > this.fb + DATA_HEADER_BYTES) return false;
    this.send.queueControl(this.seal(encodeBatchPacket({ sender: this.cfg.senderId, releaseId: this.window.idBytes, batch, origin, file })), true);
    return true;
  }

  /**
   * Multicast a batch file on the LAN (one copy; stream-follow.ts sends the second), when it
   * fits a datagram no larger than this member's DATA packets (so no IP fragmentation) and
   * the group key is known (peers drop a BATCH packet without its MAC); false when not.
   * Ahead of queued repairs, which can be many under loss.
   */
  relayBatch(batch: number, file: Uint8Array): boolean {
    if (!this.peers.groupKey || BATCH_OVERHEAD_BYTES + file.length > this.fb + DATA_HEADER_BYTES) return false;
    this.send.queueControl(this.seal(encodeBatchPacket({ sender: this.cfg.senderId, releaseId: this.window.idBytes, batch, file })), true);
    return true;
  }

  protected override unitBytes(u: number): number {
    return this.window.lengths[u] ?? 0;
  }

  /**
   * A verified batch: its units can be assembled, NACKed, fetched; the copies of them its
   * LAN brought before it are handled now, and the units a peer announced are NACKable.
   */
  batchVerified(b: StreamBatchBody, now = Date.now()): void {
    if (b.first + b.count > STREAM_UNIT_CAPACITY) throw new Error(`unit ${b.first + b.count} is past the ${STREAM_UNIT_CAPACITY} units one run of an agent keeps track of: restart the agent`);
    this.window.add(b);
    const { datagrams, announced } = this.aheadBuf.release(this.window.unitCount, now);
    for (const u of announced) if (!this.has(u) && u >= this.skippedTo) this.availableMissing.add(u);
    this.replaying = true;
    try {
      for (const d of datagrams) super.handleDatagram(d.buf, now, d.via);
    } finally {
      this.replaying = false;
    }
  }

  /** Copies and announces of units past the known ones (stream-ahead.ts). */
  readonly aheadBuf = new AheadBuffer();

  protected override ahead(buf: Uint8Array, unit: number, via: Endpoint | undefined, now: number): boolean {
    return this.aheadBuf.hold(buf, unit, this.window.unitCount, via, now);
  }

  protected override announcedAhead(p: AnnouncePacket, via: Endpoint | undefined, end: number, now: number): number {
    const last = p.firstUnit + p.unitCount;
    if (via || last <= end) return end;
    const units: number[] = [];
    for (let u = Math.max(end, p.firstUnit); u < last && u < end + AHEAD_UNITS; u++) if (getBit(p.have, u - p.firstUnit)) units.push(u);
    this.aheadBuf.announce(units, end, now);
    return end;
  }

  /** Units before `u` are not wanted here (before the start, or dropped by retention). */
  skipBefore(u: number): void {
    const to = Math.min(u, STREAM_UNIT_CAPACITY);
    for (let v = this.skippedTo; v < to; v++) {
      this.asm.dropAssembly(v);
      this.availableMissing.delete(v);
      this.unitHeld(v);
      this.nacks.done(v);
      this.markDone(v);
    }
    if (to > this.skippedTo) {
      this.window.forget(this.skippedTo, to);
      this.skippedTo = to;
    }
  }

  /** A unit an earlier run left on disk, verified then: held, not to be fetched or NACKed. */
  heldOnDisk(v: number): void {
    if (v < STREAM_UNIT_CAPACITY) this.markDone(v);
  }

  private markDone(v: number): void {
    if (getBit(this.have, v)) return;
    setBit(this.have, v);
    this.heldCount++;
  }

  get skipped(): number {
    return this.skippedTo;
  }
}
