import { createHash, Hash } from 'node:crypto';
import { BufferPool } from '../../util/buffer-pool';
import { bitmapBytes, getBit, setBit } from '../../wire/packet';
import { AGENT_DEFAULTS } from './defaults';

export interface Assembly {
  /** The unit's bytes (buffered mode); null in place, where they go to storage in chunks. */
  buf: Buffer | null;
  /** In place: consecutive fragments not yet written, from the unit's byte chunkAt; and its fill. */
  chunk?: Buffer | null;
  chunkAt?: number;
  chunkLen?: number;
  /** In place: SHA-256 over the unit's bytes [0, hashed), fed while they arrive in order. */
  hash?: Hash;
  hashed?: number;
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
  /** In place: write-combining chunks. */
  private readonly chunks: BufferPool | null;
  /** In place: where each full (or gap-broken) chunk goes; the bytes are the callee's until it calls chunkDone(). */
  write: (unit: number, offset: number, bytes: Buffer) => void = () => {
    throw new Error('Assembler.write is not set');
  };

  /**
   * `inPlace`: assemblies are built in place (issue 16): each keeps one chunk of
   * assemblyChunkBytes, not a unit-sized buffer; a chunk that is full or broken by a gap
   * goes to write(), and the hash runs over fragments as they arrive in order (the rest
   * is read back, verifyInPlace).
   */
  constructor(
    unitSize: number,
    private readonly drop: (reason: string) => void,
    inPlace = false,
  ) {
    const budget = Math.max(AGENT_DEFAULTS.minAssemblies, Math.floor(AGENT_DEFAULTS.assemblyMaxBytes / Math.max(1, unitSize)));
    this.maxAssemblies = Math.min(AGENT_DEFAULTS.maxAssemblies, budget);
    this.pool = new BufferPool(unitSize, Math.min(AGENT_DEFAULTS.repairCacheUnits + AGENT_DEFAULTS.unitPoolMaxFree, budget));
    this.chunks = inPlace ? new BufferPool(Math.min(unitSize, AGENT_DEFAULTS.assemblyChunkBytes), AGENT_DEFAULTS.assemblyChunksFree) : null;
  }

  get inPlace(): boolean {
    return this.chunks !== null;
  }

  /** A chunk handed to write() is free again. */
  chunkDone(chunk: Buffer): void {
    this.chunks?.give(chunk);
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
      const got = new Uint8Array(bitmapBytes(fragmentCount));
      a = this.chunks ? { buf: null, chunk: null, chunkAt: 0, chunkLen: 0, hash: createHash('sha256'), hashed: 0, got, count: 0, fragmentCount, lastData: now, verifying: false } : { buf: this.pool.take(unitBytes), got, count: 0, fragmentCount, lastData: now, verifying: false };
      this.assemblies.set(unit, a);
    }
    a.lastData = now;
    if (a.verifying || getBit(a.got, fragment)) return 'dup';
    if (a.buf) a.buf.set(payload, offset);
    else this.place(unit, a, offset, payload);
    setBit(a.got, fragment);
    a.count++;
    return a.count === a.fragmentCount ? 'complete' : 'new';
  }

  /** In place: one fragment into the assembly's chunk (the chunk before it written out when this one does not follow or fit). */
  private place(unit: number, a: Assembly, offset: number, payload: Uint8Array): void {
    let chunk = a.chunk;
    if (!chunk || offset !== a.chunkAt! + a.chunkLen! || a.chunkLen! + payload.length > chunk.length) {
      this.flushChunk(unit, a);
      chunk = a.chunk = this.chunks!.take(this.chunks!.size);
      a.chunkAt = offset;
      a.chunkLen = 0;
    }
    chunk.set(payload, a.chunkLen);
    a.chunkLen! += payload.length;
    // In order so far (the chunk holds the next bytes to hash): hash them now. After a gap
    // the rest of the unit is read back when it completes (verifyInPlace).
    const from = a.hashed! - a.chunkAt!;
    if (from >= 0 && from < a.chunkLen!) {
      a.hash!.update(chunk.subarray(from, a.chunkLen));
      a.hashed = a.chunkAt! + a.chunkLen!;
    }
    if (a.chunkLen === chunk.length) this.flushChunk(unit, a);
  }

  private flushChunk(unit: number, a: Assembly): void {
    const chunk = a.chunk;
    if (!chunk) return;
    a.chunk = null;
    if (a.chunkLen) this.write(unit, a.chunkAt!, chunk.subarray(0, a.chunkLen));
    else this.chunks!.give(chunk);
  }

  /** A complete assembly: its bytes when they match `sha256hex` (kept until stored), else null (all dropped). */
  verify(unit: number, sha256hex: string): Buffer | null {
    const a = this.assemblies.get(unit);
    if (!a || !a.buf) return null;
    a.verifying = true;
    if (createHash('sha256').update(a.buf).digest('hex') === sha256hex) return a.buf;
    // Forged or corrupted copy: throw all of it away and ask again.
    this.assemblies.delete(unit);
    this.pool.give(a.buf);
    return null;
  }

  /** In place: a complete assembly's last chunk goes out; it waits, verifying, for verifyInPlace. */
  completeInPlace(unit: number): void {
    const a = this.assemblies.get(unit);
    if (!a || a.buf) return;
    this.flushChunk(unit, a);
    a.verifying = true;
  }

  /**
   * In place: whether the unit's bytes match `sha256hex`, reading back from `read` what
   * did not arrive in order (`read(offset, into)` fills `into` with the unit's bytes from
   * `offset`). On a mismatch the assembly is dropped; on a match it stays until stored().
   */
  verifyInPlace(unit: number, unitBytes: number, sha256hex: string, read: (offset: number, into: Buffer) => void): boolean {
    const a = this.assemblies.get(unit);
    if (!a || !a.verifying || !a.hash) return false;
    let ok = false;
    try {
      if (a.hashed! < unitBytes) {
        const scratch = this.chunks!.take(this.chunks!.size);
        try {
          for (let at = a.hashed!; at < unitBytes; at += scratch.length) {
            const part = scratch.subarray(0, Math.min(scratch.length, unitBytes - at));
            read(at, part);
            a.hash.update(part);
          }
        } finally {
          this.chunks!.give(scratch);
        }
      }
      ok = a.hash.digest('hex') === sha256hex;
    } finally {
      a.hash = undefined;
      if (!ok) this.assemblies.delete(unit);
    }
    return ok;
  }

  /**
   * The store wrote a verified assembly's bytes and needs them no more: they go to the
   * repair cache (or the pool) now, not after the commit's fdatasync. The assembly stays,
   * verifying, until stored(), so nothing writes into the buffer through it.
   */
  release(unit: number): void {
    const a = this.assemblies.get(unit);
    if (!a || !a.buf || !a.verifying || a.released) return;
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
    this.forget(unit);
  }

  /** Forget an assembly whatever its state (in place: its unwritten chunk too). */
  forget(unit: number): void {
    const a = this.assemblies.get(unit);
    if (!a) return;
    this.assemblies.delete(unit);
    if (a.buf) this.pool.give(a.buf);
    if (a.chunk) this.chunks!.give(a.chunk);
    a.chunk = null;
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
