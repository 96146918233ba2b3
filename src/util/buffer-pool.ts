/**
 * Reuses equal-sized Buffers. An agent holds each unit (1 MiB by default) in a buffer
 * only until it is stored and has left the small repair cache; allocating a fresh one
 * each time makes V8 run a full mark-compact every few MiB, because ArrayBuffer bytes
 * count toward the old generation's limit (about 50 major GCs per agent for a 256 MiB
 * release before this pool).
 *
 * Whoever gives a buffer back must hold no other reference to it: the next take()
 * overwrites it.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly pooled = new WeakSet<Buffer>();

  constructor(
    readonly size: number,
    private readonly max: number,
  ) {}

  /** A buffer of `len` bytes with arbitrary contents; pooled when `len` is the pool's size. */
  take(len: number): Buffer {
    if (len !== this.size) return Buffer.allocUnsafe(len);
    const b = this.free.pop();
    if (b) {
      this.pooled.delete(b);
      return b;
    }
    return Buffer.allocUnsafeSlow(this.size);
  }

  /** Hand a buffer back; one of another size, a view, or one already given is ignored. */
  give(b: Buffer): void {
    if (b.length !== this.size || b.byteOffset !== 0 || b.buffer.byteLength !== this.size) return;
    if (this.pooled.has(b) || this.free.length >= this.max) return;
    this.pooled.add(b);
    this.free.push(b);
  }

  get available(): number {
    return this.free.length;
  }
}
