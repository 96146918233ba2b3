import { encodeFeedback, fragmentCountFor, getBit, setBit } from '../../wire/packet';
import type { NackPacket } from '../../wire/packet';
import { sealControl } from '../../wire/auth';
import type { NackRequest } from '../nack-scheduler';
import type { RepairScheduler } from '../repair-scheduler';
import { CoreUnits } from './core-units';
import type { CopyTreeView } from './copy-tree-view';
import { CrossGroupState } from './cross-group';
import { AGENT_DEFAULTS } from './defaults';
import type { PeerTable } from './peers';
import { sameEndpoint } from './split-map';
import type { SplitMapView } from './split-map';
import type { CoreStats, Endpoint } from './types';

/**
 * The repair path of the LAN core, after NORM (RFC 5740): as a receiver, which units are
 * ripe for a NACK and what they miss (NackScheduler times them); as a sender, who answers
 * a NACK (repair roles; RepairScheduler aggregates); across LAN groups, NACKs a gateway
 * forwards to a unit's holder, the relays it asks the server for when they go unanswered,
 * FEEDBACK to members sending it copies, and the stall check of last resort.
 */
export abstract class RepairFlow extends CoreUnits {
  protected abstract readonly peers: PeerTable;
  protected abstract readonly repairs: RepairScheduler;
  protected abstract readonly view: SplitMapView;
  /** 1.5 copy trees: our wide-area group's trees, or null when every member copies to every gateway. */
  protected abstract tree: CopyTreeView | null;
  protected readonly crossGroup = new CrossGroupState();
  /** When we first heard a NACK for a unit its designated repairer has not answered. */
  protected readonly unanswered = new Map<number, number>();
  protected abstract controlSeq: bigint;

  protected onNack(p: NackPacket, now: number, via?: Endpoint, raw?: Uint8Array): void {
    this.stats.nacksHeard++;
    const u = p.unit;
    if (u >= this.m.unitCount || p.fragmentBytes !== this.fb) return this.drop('nack-invalid');
    const fc = fragmentCountFor(this.unitBytes(u), this.fb);
    if (p.fragmentCount !== fc) return this.drop('nack-invalid');
    // The bitmap is a view into the receive buffer: keep a copy if it is used later.
    const missing = Uint8Array.from(p.missing);
    if (via) {
      // Another group's gateway forwarded its LAN's NACK to us, the unit's holder
      // (unless our copies of it, to that gateway too, are still on their way).
      if (this.crossGroup.firstNack(u)) {
        this.log.debug(`cross-group NACK for unit ${u} from ${via.address}:${via.port}: ${this.has(u) ? 'held' : 'not held'}, ${this.send.copying.get(u) ?? 0} copies queued`);
      }
      // Copies of the unit still queued for that gateway will arrive: answer once they have
      // left (copies of it to other groups may be slower, and copies of other units to that
      // gateway go behind our repairs: neither is a reason to wait). A stream's copies to a
      // gateway are queued nearly all the time: waiting for that queue to empty left a lost
      // copy's NACKs unanswered for rounds (sites testbed, issue 19).
      if (!this.has(u) || this.send.cross.unitQueuedTo(via, u)) return;
      // Repairs go only to a member's registered endpoint, never to whatever source
      // address a NACK carries: a spoofed source would make us reflect onto a third party.
      const to = this.view.registeredEndpoint(via);
      if (!to) return this.drop('unregistered-source');
      const frags = this.crossGroup.repairable(u, to, missing, fc, this.send.cross.repairWindowMs(to), now);
      if (!frags) return;
      const want = new Uint8Array(missing.length);
      for (const f of frags) setBit(want, f);
      this.repairUnicast(u, want, to, now);
      return;
    }
    if (!this.has(u)) {
      // A LAN peer's NACK for a unit held in another group that we, its gateway, lack too:
      // only our unicast reaches the holder. Counted as asked for (our own NACK leaves
      // those fragments out), it was never passed on, and the unit waited for our own
      // NACK of other fragments, or for none (sites testbed: a gateway role that moved
      // at the stream's start left its first unit, and every unit behind it, 140 ms).
      if (!via && raw) this.forwardNack(raw, u, now);
      // Part of a copy of it came, and a peer NACKs it, which it does only for what some member
      // has (section 5): NACKable here too, without the ANNOUNCE that says so (lost, our heard
      // backoff waited for the next one). Not on a NACK alone: a member's NACK of a unit nobody
      // sent would have every receiver NACK it.
      if (this.asm.get(u)) this.availableMissing.add(u);
      return this.nacks.heardNack(u, fc, missing, now);
    }
    if (this.send.lanCopying.has(u)) return; // our LAN copies of it are still on their way
    const role = this.repairRole(u, now);
    if (role === 'none') return;
    const queued = this.send.repairQueued.get(u);
    const want = queued ? missing.map((b, i) => b & ~queued[i]) : missing;
    this.repairs.onNack(u, fc, want, role === 'designated', now);
    this.ensureTicking(now);
  }

  /**
   * Who answers a NACK for a unit we hold: its holder in the split-download map
   * answers at once; nobody else does, unless the map names no holder or the
   * NACKs have gone unanswered for orphanRepairMs (holder gone, map stale) —
   * then every holder answers after a random backoff, with suppression.
   */
  protected repairRole(unit: number, now: number): 'designated' | 'fallback' | 'none' {
    const r = this.view.repairRole(unit);
    if (r !== 'others') return r;
    const since = this.unanswered.get(unit);
    if (since === undefined) {
      this.unanswered.set(unit, now);
      return 'none';
    }
    return now - since > AGENT_DEFAULTS.orphanRepairMs ? 'fallback' : 'none';
  }

  /**
   * Units a peer holds that we lack, not being fetched, and whose sender is done with them:
   * their last fragment arrived (a copy goes out in fragment order, so what is missing
   * before it is lost) and gapAfterLastFragmentMs passed, or no data came for gapQuietMs
   * (the last fragment itself lost). NORM detects gaps by order the same way:
   * NormSenderNode::HandleObjectMessage runs RepairCheck on every data message for the
   * blocks before it, and a NORM_CMD(FLUSH) checks through the segment it names (NRL norm,
   * src/common/normNode.cpp; RFC 5740 §5.3), rather than waiting out a quiet time.
   * A unit another site announced, with none of its data here: crossGapQuietMs after that
   * announce (its paced copy may still be queued at its sender), or gapQuietMs after the
   * announce of the member whose copy it is (crossAnnounced): progress, not time alone.
   * Cheap checks only.
   */
  protected *ripeUnits(now: number): Generator<number> {
    for (const u of this.availableMissing) {
      if (this.has(u) || this.fetching.has(u)) continue;
      const a = this.asm.get(u);
      if (a && (a.verifying || now - a.lastData < (getBit(a.got, a.fragmentCount - 1) ? AGENT_DEFAULTS.gapAfterLastFragmentMs : AGENT_DEFAULTS.gapQuietMs))) continue;
      const since = this.crossGroup.announcedSince.get(u);
      if (since !== undefined && !a && now - since < AGENT_DEFAULTS.crossGapQuietMs) {
        const copier = this.crossGroup.copierAnnounced.get(u);
        if (copier === undefined || now - copier < AGENT_DEFAULTS.gapQuietMs) continue;
      }
      yield u;
    }
  }

  /**
   * Unit u, which we lack, announced by unicast from another site's member at `via`. The
   * first such announce starts crossGapQuietMs (unless a LAN peer announced u first). An
   * announce from the member whose copies of u come to us (copierOf) says they have all
   * left (a member announces a unit only then, docs/protocol.md section 8): whatever of
   * u has not arrived is lost (a copy never sent, a stale copyTo, a drop on the path), so
   * u needs only the ordinary gap wait. Called before u joins availableMissing.
   */
  protected crossAnnounced(u: number, via: Endpoint, now: number): void {
    if (!this.availableMissing.has(u)) this.crossGroup.announcedSince.set(u, now);
    if (this.crossGroup.copierAnnounced.has(u)) return;
    const copier = this.copierOf(u);
    if (copier && sameEndpoint(via, copier)) this.crossGroup.copierAnnounced.set(u, now);
  }

  /**
   * The registered endpoint whose copies of unit u reach us, per the map: u's holder, in
   * another group; under copy trees the holder only when our group is its group's child
   * in that tree, else our parent group's gateway. Null when the map does not say.
   */
  protected copierOf(u: number): Endpoint | null {
    const h = this.view.holderOf(u);
    if (!h || h.group === this.cfg.group || !h.address || !h.dataPort) return null;
    const holder = { address: h.address, port: h.dataPort };
    return this.tree ? this.tree.copierOf(h.group, holder) : holder;
  }

  /** A unit held, or not wanted any more: forget what other sites announced of it. */
  protected override unitHeld(u: number): void {
    this.crossGroup.forgetUnit(u);
  }

  /** The missing-fragment bitmap of a unit, or null when nothing is missing any more. */
  protected gapOf(u: number): NackRequest | null {
    if (this.has(u) || this.fetching.has(u)) return null;
    const fc = fragmentCountFor(this.unitBytes(u), this.fb);
    return { unit: u, fragmentCount: fc, missing: this.asm.missing(u, fc) };
  }

  /**
   * A gateway whose LAN lacks a unit held only in another group forwards its NACK to
   * the holder by unicast (while the map names no holder yet, to the member whose copies
   * of it reached us: a stream's newest units are copied before the map lists them); if
   * that has not brought the unit within relayAfterMs, it asks the server for it (relay).
   */
  protected forwardNack(packet: Uint8Array, unit: number, now: number): void {
    if (this.view.role !== 'gateway') return;
    const h = this.view.holderOf(unit);
    if (h && (h.group === this.cfg.group || h.id === this.cfg.member)) return;
    const src = h ? undefined : this.crossGroup.sourceOf(unit);
    // The copies' source only as a member registered it: a spoofed source address gets nothing from us.
    const holder = h ? (h.address && h.dataPort ? { address: h.address, port: h.dataPort } : null) : src && this.view.registeredEndpoint(src);
    if (!holder) return;
    this.send.queueDirect(packet, holder);
    const first = this.crossGroup.forwardedBefore(unit, now);
    if (first === undefined) return this.log.debug(`NACK for unit ${unit}: holder ${h ? `${h.id} in ${h.group}` : `unknown, copies from ${holder.address}:${holder.port}`}`);
    const q = this.crossGroup.shouldRelay(unit, first, this.asm.get(unit)?.lastData ?? 0, holder, now);
    if (!q) return;
    this.log.info(`unit ${unit}: no answer from ${h ? `${h.id} in group ${h.group}` : `${holder.address}:${holder.port}`} (unit quiet ${Math.round(q.unitQuiet / 1000)} s, holder ${Math.round(q.holderQuiet / 1000)} s); asking the server for it`);
    this.events.push({ type: 'relay', units: [unit], reason: 'relayed' });
  }

  /**
   * Last resort: nothing verified and no data of a missing unit for stallRelayMs, nothing
   * leased or in flight, units still missing. Whatever went wrong (a holder that never answers, a lost copy no one
   * announced), ask the server for the missing units; it grants those no member of our
   * LAN group holds or leases, and our LAN repairs the rest.
   */
  protected checkStall(now: number): void {
    // Waiting for the all-fetched start is not a stall.
    if (this.finishing || this.fileDone || this.fetching.size || this.leased.length || !this.lanStart) {
      if (!this.lanStart) this.lastProgressAt = now;
      return;
    }
    if (now - this.lastProgressAt < AGENT_DEFAULTS.stallRelayMs) return;
    this.lastProgressAt = now; // once per stall period
    const want: number[] = [];
    for (let u = 0; u < this.m.unitCount && want.length < 64; u++) if (!this.has(u)) want.push(u);
    if (!want.length) return;
    // Warn: a stall is a fault of the exchange (what every other path should have repaired), and says what we knew.
    this.log.warn(`no progress for ${AGENT_DEFAULTS.stallRelayMs / 1000} s with ${this.m.unitCount - this.heldCount} unit(s) missing (as ${this.view.role}); asking the server; ${want.slice(0, 4).map((u) => this.stallOf(u, now)).join('; ')}`);
    this.events.push({ type: 'relay', units: want, reason: 'stalled' });
  }

  /** What we know of a missing unit, for the stall warning: its holder, our NACKs forwarded, its data. */
  private stallOf(u: number, now: number): string {
    const h = this.view.holderOf(u);
    const a = this.asm.get(u);
    const fwd = this.crossGroup.forwardedAt(u);
    const ago = (t: number | undefined) => (t === undefined ? 'never' : `${Math.round(now - t)} ms ago`);
    return `unit ${u}: holder ${h ? `${h.id} in ${h.group}` : 'none'}, forwarded ${ago(fwd)}, ${a ? `${a.count}/${a.fragmentCount} fragments, last data ${ago(a.lastData)}` : 'no data'}, announced ${ago(this.crossGroup.announcedSince.get(u))}, ${this.fetching.has(u) ? 'fetching' : 'not fetching'}`;
  }

  /** As a gateway: report to each member of another group that sent us copies lately; slow paths that went silent. */
  protected crossFeedback(now: number): void {
    this.send.cross.tick(now);
    for (const f of this.send.cross.feedbackDue(now)) {
      // Like repairs, only to a member's registered endpoint: a spoofed source gets nothing.
      const to = this.view.registeredEndpoint(f.to);
      if (!to) {
        this.drop('unregistered-source');
        continue;
      }
      this.send.queueDirect(this.seal(encodeFeedback({ sender: this.cfg.senderId, releaseId: this.m.idBytes, ...f })), to);
      // The 1.1 form too (1.1 senders drop the 1.2 one; a 1.2 sender ignores this copy).
      if (f.atEcho) this.send.queueDirect(this.seal(encodeFeedback({ sender: this.cfg.senderId, releaseId: this.m.idBytes, ...f, atEcho: undefined })), to);
    }
  }

  /** Every other member of the group (per the map) announced it holds everything. */
  lanPeersComplete(now: number): boolean {
    const others = this.view.memberCount - 1;
    if (others <= 0) return false; // alone, or no map: the server decides
    return this.peers.completeCount(now) >= others;
  }

  /** MAC a control packet under the group key, with the next sequence number. */
  protected seal(packet: Uint8Array): Uint8Array {
    this.controlSeq++;
    return this.peers.groupKey ? sealControl(packet, this.peers.groupKey, this.controlSeq) : packet;
  }
}

export function emptyStats(): CoreStats {
  return {
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
    recentCopies: 0,
    unitsDeferred: 0,
    unitsFromWan: 0,
    unitsFromLan: 0,
    unitsRejected: 0,
    drops: {},
  };
}

export function drop(stats: CoreStats, reason: string): void {
  stats.drops[reason] = (stats.drops[reason] ?? 0) + 1;
}

/** Drop counts as text, most first: `REASON N, REASON N` ('' when none). The agent's end line, `fleetcast status` and the bench read this. */
export function dropsText(drops: Record<string, number>): string {
  return Object.entries(drops)
    .sort((x, y) => y[1] - x[1])
    .map(([r, n]) => `${r} ${n}`)
    .join(', ');
}

