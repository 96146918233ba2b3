import { getBit } from '../../wire/packet';
import { AGENT_DEFAULTS } from './defaults';
import type { Endpoint } from './types';

/** Copy sources remembered at most (CrossGroupState.copySource). */
const COPY_SOURCES_MAX = 1024;

/**
 * What one member remembers about other LAN groups (docs/wide-area.md): when each of
 * their members last sent us anything, which NACKs this gateway forwarded to a unit's
 * holder in another group and when, which of those it asked the server to relay, which
 * units another site announced (their paced copies may still be on the way), and the
 * cross-group repairs it answered lately. Pure: the core asks it for decisions.
 */
export class CrossGroupState {
  /** "address:port" of a member of another group -> when it last sent us anything (relays wait while the holder sends). */
  private readonly heardAt = new Map<string, number>();
  /** Units whose NACK this gateway forwarded to another group: when it first did. */
  private readonly forwarded = new Map<number, number>();
  private readonly relayAsked = new Set<number>();
  /** Units first announced to us by another site (unicast): when. */
  readonly announcedSince = new Map<number, number>();
  /**
   * Of those, units announced by the member whose copies of them reach us (their holder, or
   * our parent gateway in a copy tree): when first. It announces a unit only once all its
   * copies have left, so a copy not here by then is lost, not queued.
   */
  readonly copierAnnounced = new Map<number, number>();
  /** "unit/address/port" -> when each fragment was last repaired to that requester (ms; -Infinity: never). */
  private readonly repairedAt = new Map<string, Float64Array>();
  /** Fragments tracked in repairedAt (bounded: cleared past maxRepairTracked). */
  private repairTracked = 0;
  private readonly nackLogged = new Set<number>();
  /** "address:port" of a requester we repair but do not announce to -> when we last announced ourselves to it (1.5 trees). */
  private readonly introducedAt = new Map<string, number>();

  /**
   * Units whose copies or repairs reached this gateway from another group, not held yet:
   * from where (bounded: units in flight only; the oldest go first past COPY_SOURCES_MAX).
   */
  private readonly copySource = new Map<number, Endpoint>();

  /** A unit is held (or no longer wanted): nothing to wait for. */
  forgetUnit(unit: number): void {
    this.announcedSince.delete(unit);
    this.copierAnnounced.delete(unit);
    this.copySource.delete(unit);
  }

  /** A copy or repair of `unit` from another group's member at `via`. */
  copiedFrom(unit: number, via: Endpoint): void {
    if (this.copySource.has(unit)) return;
    if (this.copySource.size >= COPY_SOURCES_MAX) this.copySource.delete(this.copySource.keys().next().value as number);
    this.copySource.set(unit, via);
  }

  /** Where the unit's copies came from, if any did: who to NACK while the map names no holder yet. */
  sourceOf(unit: number): Endpoint | undefined {
    return this.copySource.get(unit);
  }

  /** Another group's member sent us something: its path is alive. */
  heard(via: Endpoint, now: number): void {
    const k = `${via.address}:${via.port}`;
    if (!this.heardAt.has(k) && this.heardAt.size >= AGENT_DEFAULTS.maxCrossPaths) this.heardAt.clear();
    this.heardAt.set(k, now);
  }

  /**
   * Whether to announce ourselves to a requester before repairing it: under copy trees a
   * gateway below a dead or moved one NACKs a unit's holder that never copied to it, and
   * takes DATA only from senders it heard announce (at most once per announceMs each).
   */
  introduce(to: Endpoint, now: number): boolean {
    const k = `${to.address}:${to.port}`;
    const at = this.introducedAt.get(k);
    if (at !== undefined && now - at < AGENT_DEFAULTS.announceMs) return false;
    if (at === undefined && this.introducedAt.size >= AGENT_DEFAULTS.maxCrossPaths) this.introducedAt.clear();
    this.introducedAt.set(k, now);
    return true;
  }

  /** First cross-group NACK for this unit (log it once). */
  firstNack(unit: number): boolean {
    if (this.nackLogged.has(unit)) return false;
    this.nackLogged.add(unit);
    return true;
  }

  /**
   * Of the fragments a cross-group requester NACKed, those to repair now: a fragment
   * repaired to the same requester within `windowMs` is not sent again (that repair is
   * still on its way; the path's round trip is in the window). Marks the chosen ones
   * as sent. A gateway NACKs again every ~110 ms (holdoff and backoff) while nothing
   * arrives, and a loaded site link holds a repair for longer than that (tbf queues
   * of up to 100 ms each way): without this each re-NACK put the same fragments on the
   * path again (issue 12: 9-55 MiB of 128 MiB cross-group bytes were such repeats).
   * Returns null when nothing is left to send.
   */
  repairable(unit: number, to: Endpoint, missing: Uint8Array, fragmentCount: number, windowMs: number, now: number): number[] | null {
    const k = `${unit}/${to.address}/${to.port}`;
    let at = this.repairedAt.get(k);
    if (!at) {
      if (this.repairTracked + fragmentCount > AGENT_DEFAULTS.maxRepairTracked) {
        this.repairedAt.clear();
        this.repairTracked = 0;
      }
      at = new Float64Array(fragmentCount).fill(-Infinity);
      this.repairedAt.set(k, at);
      this.repairTracked += fragmentCount;
    }
    const window = Math.max(AGENT_DEFAULTS.unicastRepairDedupMs, windowMs);
    const out: number[] = [];
    for (let f = 0; f < fragmentCount && f < at.length; f++) {
      if (!getBit(missing, f)) continue;
      if (now - at[f] < window) continue;
      at[f] = now;
      out.push(f);
    }
    return out.length ? out : null;
  }

  /** When a NACK for the unit was first forwarded to its holder (undefined: never). */
  forwardedAt(unit: number): number | undefined {
    return this.forwarded.get(unit);
  }

  /** Whether a forwarded NACK for the unit was seen before (the first only starts the clock). */
  forwardedBefore(unit: number, now: number): number | undefined {
    const first = this.forwarded.get(unit);
    if (first === undefined) this.forwarded.set(unit, now);
    return first;
  }

  /**
   * Whether to ask the server to relay a unit whose forwarded NACK (first at `first`)
   * brought nothing: progress, not time alone. No data of the unit since the NACK went
   * out, and the holder silent too (a holder still sending us copies is busy, its answer
   * queued behind them), unless the unit itself has been quiet far longer.
   */
  shouldRelay(unit: number, first: number, lastData: number, holder: Endpoint, now: number): { unitQuiet: number; holderQuiet: number } | null {
    if (this.relayAsked.has(unit)) return null;
    const unitQuiet = now - Math.max(first, lastData);
    const holderQuiet = now - (this.heardAt.get(`${holder.address}:${holder.port}`) ?? 0);
    if (unitQuiet > AGENT_DEFAULTS.relayAfterMs && (holderQuiet > AGENT_DEFAULTS.relayHolderQuietMs || unitQuiet > AGENT_DEFAULTS.relayUnitQuietMs)) {
      this.relayAsked.add(unit);
      return { unitQuiet, holderQuiet };
    }
    return null;
  }

  /** A relay not granted now (someone in our group leases or holds it), or failed: ask again after another wait. */
  retryRelayLater(unit: number, now: number): void {
    if (!this.relayAsked.delete(unit)) return;
    this.forwarded.set(unit, now);
  }
}
