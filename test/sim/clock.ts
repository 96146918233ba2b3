/**
 * The simulator's clock and event queue: discrete-event simulation. Time is a
 * number of milliseconds that moves only when the next event is taken; nothing
 * here reads the wall clock or sets a real timer, so a run is as fast as the
 * code it drives and exactly repeatable.
 *
 * Events at the same instant run in the order they were scheduled (a sequence
 * number breaks ties), which with a seeded `Prng` makes a whole run a function
 * of its seed.
 */
export interface TimerHandle {
  readonly at: number;
  cancel(): void;
  readonly cancelled: boolean;
}

interface Entry {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

export interface RunLimits {
  /** Stop before the first event later than this simulated time (ms). */
  until?: number;
  /** Stop after this many events (a guard against a run that never settles). */
  maxEvents?: number;
  /** Checked after every event; the run stops once it returns true. */
  stopWhen?: () => boolean;
}

export type RunEnd = 'idle' | 'until' | 'maxEvents' | 'stopWhen';

export class Sim {
  private heap: Entry[] = [];
  private seq = 0;
  private time = 0;
  /** Events run so far. */
  events = 0;

  /** Simulated time in ms. */
  get now(): number {
    return this.time;
  }

  /** Runs `fn` at simulated time `at` (never earlier than now). */
  at(at: number, fn: () => void): TimerHandle {
    if (!Number.isFinite(at)) throw new RangeError(`sim: event time must be finite, not ${at}`);
    const e: Entry = { at: Math.max(at, this.time), seq: this.seq++, fn, cancelled: false };
    this.push(e);
    return {
      at: e.at,
      cancel: () => {
        e.cancelled = true;
      },
      get cancelled() {
        return e.cancelled;
      },
    };
  }

  /** Runs `fn` after `delayMs` of simulated time. */
  after(delayMs: number, fn: () => void): TimerHandle {
    return this.at(this.time + Math.max(0, delayMs), fn);
  }

  /** Events still queued (cancelled ones included until they are popped). */
  get pending(): number {
    return this.heap.length;
  }

  /** Time of the next live event, or null when the queue is empty. */
  peek(): number | null {
    while (this.heap.length && this.heap[0].cancelled) this.pop();
    return this.heap.length ? this.heap[0].at : null;
  }

  /** Takes events in time order until the queue is empty or a limit is hit. */
  run(limits: RunLimits = {}): RunEnd {
    const until = limits.until ?? Infinity;
    const maxEvents = limits.maxEvents ?? Infinity;
    let ran = 0;
    for (;;) {
      if (limits.stopWhen?.()) return 'stopWhen';
      const next = this.peek();
      if (next === null) return 'idle';
      if (next > until) {
        this.time = until;
        return 'until';
      }
      if (ran >= maxEvents) return 'maxEvents';
      const e = this.pop()!;
      this.time = e.at;
      ran++;
      this.events++;
      e.fn();
    }
  }

  private push(e: Entry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(e, h[parent])) break;
      h[i] = h[parent];
      i = parent;
    }
    h[i] = e;
  }

  private pop(): Entry | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length && last) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= h.length) break;
        const r = l + 1;
        const c = r < h.length && before(h[r], h[l]) ? r : l;
        if (!before(h[c], last)) break;
        h[i] = h[c];
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}

function before(a: Entry, b: Entry): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}
