import type { GroupAllocator } from './allocator';

/**
 * The server's allocators by key ("release/group", "release/*wide"), a Map that also keeps
 * what its timer would otherwise walk every allocator and member for (issue 17: an idle
 * fleet's cost per tick follows what changed, not its size):
 * - `members`: live members in all of them, counted by each allocator's joins and leaves
 *   (its `census`), so the load behind the heartbeat interval is read in O(1);
 * - a min-heap of when each allocator may next have a member to drop or a lease to
 *   reclaim (its `nextDue`): due() yields only those whose time passed. An allocator whose
 *   members all hold channel polls (1.7) is never visited; one whose members beat slowly is
 *   visited about once per timeout, when its earliest deadline passes. Entries are lazy: one
 *   whose allocator moved its nextDue since, or left the map, is skipped when it comes up;
 * - the allocators whose members' overheads changed, for the fleet memory.
 */
export class Allocators extends Map<string, GroupAllocator> {
  /** Live members in all allocators of the map. */
  members = 0;
  /** Allocators due() yielded, all calls (counted, never timed: the expiry's work). */
  visited = 0;
  private heap: { at: number; key: string; g: GroupAllocator }[] = [];
  /** Keys of allocators with overheads changed since takeOverheads(). */
  private overheads = new Set<string>();

  override set(key: string, g: GroupAllocator): this {
    const old = super.get(key);
    if (old !== g) {
      if (old) this.detach(old);
      if (this.heap) this.attach(key, g); // undefined while Map's constructor runs
    }
    return super.set(key, g);
  }

  override delete(key: string): boolean {
    const g = super.get(key);
    if (g) this.detach(g);
    return super.delete(key);
  }

  override clear(): void {
    for (const g of super.values()) this.detach(g);
    super.clear();
    this.heap = [];
    this.overheads.clear();
  }

  private attach(key: string, g: GroupAllocator): void {
    g.census = this;
    this.members += g.memberCount();
    g.onDue = (at) => this.push({ at, key, g });
    g.onOverhead = () => this.overheads.add(key);
    if (g.nextDue < Infinity) this.push({ at: g.nextDue, key, g });
  }

  private detach(g: GroupAllocator): void {
    if (g.census === this) {
      g.census = null;
      this.members -= g.memberCount();
    }
    g.onDue = null;
    g.onOverhead = null;
  }

  /** The allocators whose members' overheads changed since the last call, with those overheads (ms per MiB). */
  takeOverheads(): [string, [string, number][]][] {
    const out: [string, [string, number][]][] = [];
    for (const key of this.overheads) {
      const g = super.get(key);
      if (g) out.push([key, g.takeOverheads()]);
    }
    this.overheads.clear();
    return out;
  }

  /**
   * The allocators whose nextDue is before `now`, each once, earliest first: expire(now)
   * on each sets its next due time. Entries added meanwhile at or after `now` wait.
   */
  *due(now: number): Generator<[string, GroupAllocator]> {
    while (this.heap.length > 0 && this.heap[0].at < now) {
      const e = this.pop();
      if (e.g.nextDue !== e.at || super.get(e.key) !== e.g) continue; // stale
      this.visited++;
      yield [e.key, e.g];
    }
  }

  /** Entries in the heap (stale ones included). */
  get pending(): number {
    return this.heap.length;
  }

  private push(e: { at: number; key: string; g: GroupAllocator }): void {
    const h = this.heap;
    h.push(e);
    for (let i = h.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (h[p].at <= h[i].at) break;
      [h[p], h[i]] = [h[i], h[p]];
      i = p;
    }
  }

  private pop(): { at: number; key: string; g: GroupAllocator } {
    const h = this.heap;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && h[l].at < h[m].at) m = l;
        if (r < h.length && h[r].at < h[m].at) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i], h[m]];
        i = m;
      }
    }
    return top;
  }
}
