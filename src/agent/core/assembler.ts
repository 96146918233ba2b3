import { createHash } from 'node:crypto';
import { BufferPool } from '../../util/buffer-pool';
import { bitmapBytes, getBit, setBit } from '../../wire/packet';
import { AGENT_DEFAULTS } from './defaults';

export interface Assembly {
  buf: Buffer;
  got: Uint8Array;
  count: number;
  fragmentCount: number;
  lastData: number;
  /** Complete and verified, waiting to be stored: its buffer is the store's until then. */
  verifying: boolean;
  /** The store is done with `buf` (written): it went to the repair cache or the pool already. */
  released?: boolean;
}

/**
 * The unit-sized buffers of one agent: units being assembled from LAN fragments (NORM's
 * receive-side object buffers, one per unit here), the small cache of verified units that
 * repairs are served from, and the pool both draw from. Bounded: at most maxAssemblies
 * (fewer for large units, so their bytes fit assemblyMaxBytes), the one idle longest is
 * evicted for a new one, and ones idle assemblyMaxIdleMs are dropped.
 */
export class Assembler {
  readonly assemblies = new Map<number, Assembly>();
  private readonly repairCache = new Map<number, Buffer>();
  readonly pool: BufferPool;
  private readonly maxAssemblies: number;

  constructor(
    unitSize: number,
    private readonly drop: (reason: string) => void,
  ) {
    const budget = Math.max(AGENT_DEFAULTS.minAssemblies, Math.floor(AGENT_DEFAULTS.assemblyMaxBytes / Math.max(1, unitSize)));
    this.maxAssemblies = Math.min(AGENT_DEFAULTS.maxAssemblies, budget);
    this.pool = new BufferPool(unitSize, Math.min(AGENT_DEFAULTS.repairCacheUnits + AGENT_DEFAULTS.unitPoolMaxFree, budget));
  }

  get(unit: number): Assembly | undefined {
    return this.assemblies.get(unit);
  }

  /**
   * Place one fragment's payload (already checked against the grid). Returns 'dup' for a
   * fragment held already, 'new', or 'complete' when it was the unit's last.
   */
  add(unit: number, unitBytes: number, fragmentCount: number, fragment: number, offset: number, payload: Uint8Array, now: number): 'dup' | 'new' | 'complete' {
    let a = this.assemblies.get(unit);
    if (!a) {
      if (this.assemblies.size >= this.maxAssemblies) this.evict();
      a = { buf: this.pool.take(unitBytes), got: new Uint8Array(bitmapBytes(fragmentCount)), count: 0, fragmentCount, lastData: now, verifying: false };
      this.assemblies.set(unit, a);
    }
    a.lastData = now;
    if (a.verifying || getBit(a.got, fragment)) return 'dup';
    a.buf.set(payload, offset);
    setBit(a.got, fragment);
    a.count++;
    return a.count === a.fragmentCount ? 'complete' : 'new';
  }

  /** A complete assembly: its bytes when they match `sha256hex` (kept until stored), else null (all dropped). */
  verify(unit: number, sha256hex: string): Buffer | null {
    const a = this.assemblies.get(unit);
    if (!a) return null;
    a.verifying = true;
    if (createHash('sha256').update(a.buf).digest('hex') === sha256hex) return a.buf;
    // Forged or corrupted copy: throw all of it away and ask again.
    this.assemblies.delete(unit);
    this.pool.give(a.buf);
    return null;
  }

  /**
   * The store wrote a verified assembly's bytes and needs them no more: they go to the
   * repair cache (or the pool) now, not after the commit's fdatasync. The assembly stays,
   * verifying, until stored(), so nothing writes into the buffer through it.
   */
  release(unit: number): void {
    const a = this.assemblies.get(unit);
    if (!a || !a.verifying || a.released) return;
    a.released = true;
    this.cache(unit, a.buf);
  }

  /** The unit is stored: forget its assembly (its buffer now belongs to the repair cache). */
  stored(unit: number): void {
    this.assemblies.delete(unit);
  }

  /** Forget a partial assembly (not one being verified or stored) and reuse its buffer. */
  dropAssembly(unit: number): void {
    const a = this.assemblies.get(unit);
    if (!a || a.verifying) return;
    this.assemblies.delete(unit);
    this.pool.give(a.buf);
  }

  private evict(): void {
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
  age(now: number): void {
    for (const [u, a] of this.assemblies) {
      if (a.verifying || now - a.lastData <= AGENT_DEFAULTS.assemblyMaxIdleMs) continue;
      this.dropAssembly(u);
      this.drop('assembly-aged');
    }
  }

  /** The fragments still missing of a unit (bit set = missing), all when nothing arrived. */
  missing(unit: number, fragmentCount: number): Uint8Array {
    const a = this.assemblies.get(unit);
    const missing = new Uint8Array(bitmapBytes(fragmentCount));
    for (let i = 0; i < fragmentCount; i++) if (!a || !getBit(a.got, i)) missing[i >>> 3] |= 0x80 >>> (i & 7);
    return missing;
  }

  cached(unit: number): Buffer | undefined {
    return this.repairCache.get(unit);
  }

  /** Keep a verified unit's bytes for repairs; the oldest beyond repairCacheUnits goes back to the pool. */
  cache(unit: number, buf: Buffer): void {
    this.repairCache.delete(unit);
    this.repairCache.set(unit, buf);
    while (this.repairCache.size > AGENT_DEFAULTS.repairCacheUnits) {
      const [u, b] = this.repairCache.entries().next().value!;
      this.repairCache.delete(u);
      this.pool.give(b);
    }
  }
}
