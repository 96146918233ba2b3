/**
 * A seeded pseudo-random source for the simulator: xoshiro128** (Blackman and
 * Vigna, https://prng.di.unimi.it/), seeded through splitmix32 so that nearby
 * seeds give unrelated streams. Everything random in a simulation (loss draws,
 * the cores' NACK backoffs, arrival jitter) comes from a `Prng`, so a seed fixes
 * the whole run.
 *
 * `fork(label)` derives an independent stream from this one's seed and a label
 * (a link's or a member's name), without drawing from this stream: adding a link
 * or a member does not shift the numbers every other one sees.
 */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    let s = seed >>> 0;
    const next = (): number => {
      // splitmix32
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    if ((this.a | this.b | this.c | this.d) === 0) this.d = 1;
  }

  /** The next 32 random bits, as an unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** A float uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 0x1_0000_0000;
  }

  /** An integer uniform in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** `next` bound to this source, for APIs that take a `() => number`. */
  get random(): () => number {
    return () => this.next();
  }

  /** An independent stream named by `label`; does not advance this one. */
  fork(label: string): Prng {
    return new Prng(hash32(`${this.seed}/${label}`));
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** FNV-1a over the string's UTF-16 code units. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}
