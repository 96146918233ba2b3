import { bitmapBytes, getBit } from '../wire/packet';
import { AllocatorState, MIB } from './allocator-state';

/**
 * The allocator's member table: joins and heartbeats (what each member holds, is
 * fetching, and its endpoint), restarts and leaves, timeouts by each member's own
 * heartbeat interval, completion, and overheads remembered across a server restart.
 */
export abstract class MemberTable extends AllocatorState {

  /** Join or heartbeat. `have` is the member's verified-units bitmap (authoritative). */
  heartbeat(
    id: string,
    now: number,
    info: {
      have?: Uint8Array | null;
      /** The unit `have`'s first bit stands for (a multiple of 8; default 0): bits only add, so a bitmap of the units from there on is enough. */
      haveFrom?: number;
      address?: string | null;
      fetching?: number[];
      fetchingBytes?: number[];
      copying?: boolean;
      lanGroup?: string;
      dataPort?: number | null;
      forwarded?: number;
      lanBytes?: number;
      /** It asks for a lease now (stream heartbeats with `lease` > 0): shares wait for it (allocator-share.ts). */
      asking?: boolean;
    } = {},
  ): void {
    let m = this.members.get(id);
    if (!m) {
      m = {
        id,
        lastSeen: now,
        joinedAt: now,
        address: null,
        lanGroup: info.lanGroup ?? '',
        dataPort: null,
        have: new Uint8Array(bitmapBytes(this.opts.unitCount)),
        verified: 0,
        leases: new Set(),
        overhead: null,
        overheadRemembered: false,
        complete: this.opts.unitCount === 0,
        forwarded: 0,
        forwardedAt: now,
        lanBytes: 0,
        demotedUntil: 0,
        gatewayDemotions: 0,
        distrust: null,
        undeliveredClaims: 0,
        heartbeatMs: 0,
        pollsHeld: 0,
        pollFallbackMs: 0,
        slot: this.nextSlot++,
        loggedShape: '',
        loggedCounters: '',
        loggedAt: now,
      };
      this.members.set(id, m);
      this.bySlot.set(m.slot, m);
      if (this.census) this.census.members++;
      this.dueMember(m);
    }
    m.lastSeen = now;
    if (info.address !== undefined) m.address = info.address;
    if (info.lanGroup !== undefined) m.lanGroup = info.lanGroup;
    if (info.dataPort !== undefined) m.dataPort = info.dataPort;
    if (info.lanBytes !== undefined) m.lanBytes = info.lanBytes;
    if (info.asking !== undefined) m.asking = info.asking;
    if (info.forwarded !== undefined && info.forwarded !== m.forwarded) {
      m.forwarded = info.forwarded;
      m.forwardedAt = now;
    }
    if (info.have) {
      // Byte by byte: only bytes with a bit the server does not have yet cost more (a
      // heartbeat's cost follows what changed, not the release's size).
      const have = info.have;
      const base = Math.floor((info.haveFrom ?? 0) / 8);
      for (let i = 0; i < have.length && base + i < m.have.length; i++) {
        if ((have[i] & ~m.have[base + i]) === 0) continue;
        for (let b = 0; b < 8; b++) {
          const u = (base + i) * 8 + b;
          if (u < this.opts.unitCount && getBit(have, i * 8 + b) && !(m.distrust && getBit(m.distrust, u))) this.markHeld(m, u);
        }
      }
    }
    // Units the member is still receiving keep their lease alive, and say how far they got.
    const fetching = info.fetching ?? [];
    for (let i = 0; i < fetching.length; i++) {
      const u = fetching[i];
      const l = this.leaseOf(id, u);
      if (!l) continue;
      if (this.leases.get(u) === l) l.deadline = Math.max(l.deadline, now + this.leaseDuration(m, u));
      if (l.origin && l.origin.startedAt === null) {
        l.origin.startedAt = now; // the hedge clock runs from here, not from the grant
        l.lastByteAt = now;
      }
      const b = info.fetchingBytes?.[i];
      // Paused for its own copies to other groups: alive and sending, as good as progress.
      l.copying = info.copying === true;
      if (l.copying) l.lastByteAt = now;
      if (b !== undefined && b > l.bytesSent) {
        l.bytesSent = b;
        l.lastByteAt = now;
      }
    }
    this.touch(m, now);
  }


  /**
   * A member (re)starts: whatever it had leased is not in flight any more, so
   * those leases go back to the pool at once instead of waiting for deadlines.
   */
  restart(id: string): number {
    const m = this.members.get(id);
    if (!m) return 0;
    const n = m.leases.size;
    for (const u of m.leases) {
      if (this.hedges.get(u)?.member === id) this.hedges.delete(u);
      else if (this.leases.get(u)?.member === id) this.leases.delete(u);
      if (u < this.scanFrom) this.scanFrom = u;
    }
    const was = [...m.leases];
    m.leases.clear();
    for (const u of was) this.rename(u);
    return n;
  }


  /** A lease returns to the pool (its member left, or its deadline passed): its hedge, if any, becomes the lease. */
  private reclaimLease(u: number): void {
    this.leases.delete(u);
    this.reclaimed++;
    const h = this.hedges.get(u);
    if (h) {
      this.hedges.delete(u);
      this.leases.set(u, h);
    }
    if (u < this.scanFrom) this.scanFrom = u;
    this.rename(u);
  }

  leave(id: string): void {
    const m = this.members.get(id);
    if (!m) return;
    for (const u of m.leases) {
      if (this.hedges.get(u)?.member === id) this.hedges.delete(u);
      else if (this.leases.get(u)?.member === id) this.reclaimLease(u);
      if (u < this.scanFrom) this.scanFrom = u;
    }
    for (let u = 0; u < this.opts.unitCount; u++) {
      if (getBit(m.have, u)) {
        this.holderCount[u]--;
        if (this.holderCount[u] === 0) {
          this.missing++;
          if (u < this.scanFrom) this.scanFrom = u;
        }
      }
    }
    this.members.delete(id);
    this.medianKept = undefined;
    if (this.census) this.census.members--;
    this.overheadsChanged.delete(id);
    this.bySlot.delete(m.slot);
    this.mapLog.member(m.slot);
    this.copyToVersion = this.mapLog.version;
    for (let u = 0; u < this.opts.unitCount; u++) if (this.named[u] === m.slot) this.rename(u);
  }


  /**
   * The server asked `id` to heartbeat every `ms` from now on: it is timed out only after
   * missing about three of those (memberTimeoutMs is the floor), so a member told to beat
   * slowly while idle is not dropped between its beats.
   */
  setHeartbeatInterval(id: string, ms: number): void {
    const m = this.members.get(id);
    if (!m || m.heartbeatMs === ms) return;
    m.heartbeatMs = ms;
    this.dueMember(m);
  }


  /**
   * 1.7 (docs/protocol.md section 19): a channel poll naming `id` is held from now. It is
   * alive until the returned function is called with the time (the poll answered or its
   * connection closed), and is seen then too. `fallbackMs`: the idle interval protocol 1.6 would ask
   * of it; once no poll is held it times out after three of those, as if it beat at that
   * rate. Null when `id` is not a member here.
   */
  holdPoll(id: string, now: number, fallbackMs: number): ((at: number) => void) | null {
    const m = this.members.get(id);
    if (!m) return null;
    m.lastSeen = now;
    m.pollsHeld++;
    m.pollFallbackMs = fallbackMs;
    let ended = false;
    return (at: number) => {
      if (ended) return;
      ended = true;
      m.pollsHeld--;
      m.lastSeen = Math.max(m.lastSeen, at);
      if (this.members.get(m.id) === m) this.dueMember(m);
    };
  }


  /** Whether `id` holds a channel poll right now (1.7): its heartbeats may then be rare. */
  holdsPoll(id: string): boolean {
    return (this.members.get(id)?.pollsHeld ?? 0) > 0;
  }


  /** How long `id` may stay silent before it is dropped. */
  timeoutOf(id: string): number | null {
    const m = this.members.get(id);
    return m ? this.memberTimeout(m) : null;
  }


  /**
   * Nothing is left for `id` to do in this group: it holds every unit, leases none, and
   * every member of the (wide-area) group is complete, so nobody fetches or copies. The
   * server lets such a member heartbeat slowly.
   */
  idle(id: string): boolean {
    const m = this.members.get(id);
    if (!m || !m.complete || m.leases.size > 0) return false;
    for (const o of this.members.values()) if (!o.complete) return false;
    return true;
  }


  /**
   * Drop silent members and reclaim overdue leases, walking them all; nextDue is then the
   * earliest deadline left. The server calls it only once nextDue has passed (allocators.ts).
   */
  expire(now: number): string[] {
    const gone: string[] = [];
    let next = Infinity;
    this.membersWalked += this.members.size;
    for (const m of this.members.values()) {
      const at = m.lastSeen + this.memberTimeout(m);
      if (now > at) gone.push(m.id);
      else if (at < next) next = at;
    }
    for (const id of gone) this.leave(id);
    for (const [u, l] of this.leases) {
      if (now > l.deadline) {
        this.members.get(l.member)?.leases.delete(u);
        this.reclaimLease(u);
      } else if (l.deadline < next) next = l.deadline;
    }
    for (const [u, h] of this.hedges) {
      if (now > h.deadline) {
        this.hedges.delete(u);
        this.members.get(h.member)?.leases.delete(u);
      } else if (h.deadline < next) next = h.deadline;
    }
    this.nextDue = next;
    if (next < Infinity) this.onDue?.(next);
    return gone;
  }


  hasMember(id: string): boolean {
    return this.members.has(id);
  }


  /**
   * The overhead `id` had before a server restart (fleet.json): it ranks, weights and may
   * make the member a gateway as a measurement would, and new samples smooth from it.
   * Ignored once the member has a measurement of its own.
   */
  rememberOverhead(id: string, msPerMiB: number): void {
    const m = this.members.get(id);
    if (!m || m.overhead !== null || !Number.isFinite(msPerMiB) || msPerMiB < 0) return;
    m.overhead = msPerMiB / MIB;
    m.overheadRemembered = true;
    this.overheadChanged(id);
  }


  /** Whether `id`'s overhead is still the one from before a restart. */
  overheadRemembered(id: string): boolean {
    return this.members.get(id)?.overheadRemembered ?? false;
  }


  markComplete(id: string, now = 0): void {
    const m = this.members.get(id);
    if (!m) return;
    m.complete = true;
    this.touch(m, now);
  }


  /** Address and unicast port of a member, for copy destinations and NACK forwarding. */
  endpointOf(id: string): { address: string; port: number; group: string } | null {
    const m = this.members.get(id);
    return m && m.address && m.dataPort ? { address: m.address, port: m.dataPort, group: m.lanGroup } : null;
  }


  lanGroupOf(id: string): string | null {
    return this.members.get(id)?.lanGroup ?? null;
  }


  memberCount(): number {
    return this.members.size;
  }


  /** Members' ids, in no order (members.json). */
  memberIds(): string[] {
    return [...this.members.keys()];
  }


  /** Overheads (ms per MiB) of the members whose overhead changed since the last call. */
  takeOverheads(): [string, number][] {
    const out: [string, number][] = [];
    for (const id of this.overheadsChanged) {
      const o = this.members.get(id)?.overhead;
      if (o !== null && o !== undefined) out.push([id, o * MIB]);
    }
    this.overheadsChanged.clear();
    return out;
  }
}
