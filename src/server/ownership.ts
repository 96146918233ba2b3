import { Logger } from '../util/log';
import { CoordinationEngine, EngineUnavailable } from './engine';

/** How long a lease on an allocation key lasts without renewal, by the engine's clock. */
export const OWNER_LEASE_TTL_MS = 4000;
/** How often the owner renews all its leases (one statement for all keys). */
export const OWNER_RENEW_MS = 1000;

/** Where a request for a key goes. */
export type Route =
  | { mine: true }
  | { mine: false; url: string; msLeft: number }
  | { unavailable: string; retryAfterMs: number };

interface Known {
  url: string;
  /** Until then (local clock) requests are proxied to `url` without asking the engine. */
  until: number;
}

/**
 * Which allocation keys this instance owns (docs/scale-out.md, "Several coordinators").
 * A key is claimed in the engine on first need and renewed every OWNER_RENEW_MS while
 * held. When the engine cannot be reached, the keys held stay held (served from memory)
 * and no new key is taken; the route says why, for a 503. A renewal the engine refuses
 * (another instance took the key after ours expired) drops the key at once: `lost` is
 * called and this instance stops answering for it.
 * Like Dragonfly's schedulers, which keep themselves alive in the manager's database, and
 * unlike Kraken's trackers, which hash keys over a ring of healthy peers: a key moves only
 * when its owner stops renewing, never because an instance joined, so a running
 * allocation is not cut in two.
 */
export class Ownership {
  private readonly owned = new Set<string>();
  private readonly known = new Map<string, Known>();
  private readonly claiming = new Map<string, Promise<Route>>();
  private engineDown: string | null = null;
  private renewing = false;

  constructor(
    private readonly engine: CoordinationEngine,
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly hooks: { gained: (key: string) => Promise<void>; lost: (key: string) => void },
    private readonly ttlMs = OWNER_LEASE_TTL_MS,
  ) {}

  /** Keys held now. */
  keys(): string[] {
    return [...this.owned];
  }

  owns(key: string): boolean {
    return this.owned.has(key);
  }

  /** Why new ownership is refused now (the engine is unreachable), or null. */
  get unavailable(): string | null {
    return this.engineDown;
  }

  /** The owner we proxy to answered, so it still owns the key: keep routing there for a lease's time. */
  confirmed(key: string, url: string): void {
    const k = this.known.get(key);
    if (k && k.url === url) k.until = this.now() + this.ttlMs;
  }

  /** The owner we proxied to failed or said it does not own the key: ask the engine next time. */
  forget(key: string): void {
    this.known.delete(key);
  }

  route(key: string): Promise<Route> {
    if (this.owned.has(key)) return Promise.resolve({ mine: true });
    const k = this.known.get(key);
    if (k && this.now() < k.until) return Promise.resolve({ mine: false, url: k.url, msLeft: k.until - this.now() });
    let p = this.claiming.get(key);
    if (!p) {
      p = this.claim(key).finally(() => this.claiming.delete(key));
      this.claiming.set(key, p);
    }
    return p;
  }

  private async claim(key: string): Promise<Route> {
    try {
      const c = await this.engine.claim(key, this.ttlMs);
      this.up();
      if (c.mine) {
        this.known.delete(key);
        this.owned.add(key);
        this.log.info(`${key}: this instance owns it now (lease in ${this.engine.name})`);
        await this.hooks.gained(key);
        return { mine: true };
      }
      if (!c.url) return { unavailable: `${key}: its owner just released it; ask again`, retryAfterMs: 100 };
      // Asked again within a renewal at most: ownership moves only on expiry.
      this.known.set(key, { url: c.url, until: this.now() + Math.min(Math.max(c.msLeft, 100), OWNER_RENEW_MS) });
      return { mine: false, url: c.url, msLeft: c.msLeft };
    } catch (err) {
      if (!(err instanceof EngineUnavailable)) throw err;
      this.down(err.message);
      // While the engine is away, its last known owner keeps the key.
      const k = this.known.get(key);
      if (k) return { mine: false, url: k.url, msLeft: 0 };
      return { unavailable: `cannot take ownership of ${key}: the shared engine is unreachable (${err.message}); groups this instance already owns are still served`, retryAfterMs: OWNER_RENEW_MS };
    }
  }

  /** Renew every key held (the timer calls this every OWNER_RENEW_MS). */
  async renew(): Promise<void> {
    if (this.renewing) return;
    this.renewing = true;
    try {
      const keys = this.keys();
      const still = await this.engine.renew(keys, this.ttlMs);
      this.up();
      for (const key of keys) {
        if (still.has(key) || !this.owned.has(key)) continue;
        this.owned.delete(key);
        this.log.warn(`${key}: another instance took it while our lease had expired; this instance no longer answers for it`);
        this.hooks.lost(key);
      }
    } catch (err) {
      if (!(err instanceof EngineUnavailable)) throw err;
      this.down(err.message);
    } finally {
      this.renewing = false;
    }
  }

  /** Give keys up (no member left in them): another instance may take them at once. */
  async release(keys: string[]): Promise<void> {
    for (const k of keys) this.owned.delete(k);
    await this.engine.release(keys).catch((err: Error) => this.log.warn(`could not release ${keys.length} key(s) in ${this.engine.name}: ${err.message}; they move once their leases expire`));
  }

  /** Clean shutdown: give every key up, so another instance takes it at once. */
  async releaseAll(): Promise<void> {
    const keys = this.keys();
    this.owned.clear();
    await this.engine.release(keys).catch((err: Error) => this.log.warn(`could not release ${keys.length} key(s) in ${this.engine.name}: ${err.message}; they move once their leases expire`));
  }

  private down(why: string): void {
    if (this.engineDown === null) this.log.error(`shared engine unreachable: ${why}; serving the ${this.owned.size} group(s) this instance owns from memory, refusing new ones until it returns`);
    this.engineDown = why;
  }

  private up(): void {
    if (this.engineDown !== null) this.log.info(`shared engine ${this.engine.name} reachable again`);
    this.engineDown = null;
  }
}
