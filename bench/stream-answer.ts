import { GroupAllocator } from '../src/server/allocator';
import { bitmapBytes, setBit } from '../src/wire/packet';

/**
 * `npm run bench -- stream-answer [UNITS[,UNITS...]] [MEMBERS] [RUNS]`: the server's CPU for
 * the holders of one stream heartbeat answer (src/server/stream-alloc.ts), in the same run
 * both ways: the whole split map (GroupAllocator.map(): every unit x every member, then the
 * answer's window cut out of it, as before 2026-12-02) and the named holders of the window
 * alone (memberViews + namedHolders, now). A stream's allocator keeps every unit it has seen
 * (retention drops them from the answers, not from the allocator), so the map's cost grew
 * with the stream's age. Every member holds every unit but the last 64, the answer's window
 * is those 64 (a live edge). Median over RUNS of the mean over 200 answers, µs.
 *
 * Then what a new unit costs the allocator (growUnits, once per published unit): now, its
 * arrays and the members' bitmaps grow by doubling; the baseline is what it did before
 * 2026-12-02, measured in the same run: a new array of the exact size for the holder
 * counts, the named holders and every member's bitmap, the old one copied in. Mean over
 * 20,000 new units from UNITS on, µs.
 *
 * Last, a member's heartbeat in the allocator (GroupAllocator.heartbeat) with its bitmap
 * over every unit of the stream (as the stream server built it before 2026-12-02) and
 * with the bitmap from its `haveFrom` on (now): the member holds everything but the last
 * 64 units and reports the newest one, bitmap building included. Median over RUNS of the
 * mean of 200.
 */
export function streamAnswerMain(args: string[]): void {
  const unitsList = (args[0] ?? '1000,10000,100000').split(',').map(Number);
  const members = Number(args[1] ?? 10);
  const runs = Number(args[2] ?? 5);
  if (!(unitsList.every((u) => Number.isInteger(u) && u >= 64) && Number.isInteger(members) && members >= 1 && Number.isInteger(runs) && runs >= 1)) {
    process.stderr.write('bench: usage: npm run bench -- stream-answer [UNITS[,UNITS...]] [MEMBERS] [RUNS]  (units >= 64)\n');
    process.exit(64);
  }
  const PER_RUN = 200;
  const WINDOW = 64;
  process.stdout.write(`| units | members | whole map, then the window (µs per answer) | named holders of the window (µs per answer) | ratio |\n| ---: | ---: | ---: | ---: | ---: |\n`);
  for (const units of unitsList) {
    const g = new GroupAllocator({ unitCount: units, unitBytes: () => 65536 });
    const have = new Uint8Array(bitmapBytes(units));
    for (let u = 0; u < units - WINDOW; u++) setBit(have, u);
    for (let i = 0; i < members; i++) g.heartbeat(`m${i}`, 0, { have });
    const time = (f: () => unknown): number => {
      const t0 = process.hrtime.bigint();
      for (let k = 0; k < PER_RUN; k++) f();
      return Number(process.hrtime.bigint() - t0) / PER_RUN / 1e3;
    };
    const whole: number[] = [];
    const named: number[] = [];
    for (let r = 0; r < runs; r++) {
      // Alternating, so that drift and JIT warm-up fall on both.
      whole.push(time(() => g.map(1).holders.slice(units - WINDOW, units)));
      named.push(time(() => g.namedHolders(units - WINDOW, units, g.memberViews(1))));
    }
    // Both name nobody for the window's units (no member holds them): the same answer.
    const check = JSON.stringify(g.map(1).holders.slice(units - WINDOW, units)) === JSON.stringify(g.namedHolders(units - WINDOW, units, g.memberViews(1))) ? '' : ' (the holders differ!)';
    const a = median(whole);
    const b = median(named);
    process.stdout.write(`| ${units.toLocaleString('en')} | ${members} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${(a / b).toFixed(0)}x${check} |\n`);
  }
  const GROWN = 20_000;
  process.stdout.write(`\n| units | members | a new unit, exact-size copies as before (µs) | a new unit, doubling (µs) | ratio |\n| ---: | ---: | ---: | ---: | ---: |\n`);
  for (const units of unitsList) {
    const g = new GroupAllocator({ unitCount: units, unitBytes: () => 65536 });
    for (let i = 0; i < members; i++) g.heartbeat(`m${i}`, 0, {});
    let t0 = process.hrtime.bigint();
    for (let n = units + 1; n <= units + GROWN; n++) g.growUnits(n, 0);
    const now = Number(process.hrtime.bigint() - t0) / GROWN / 1e3;
    // The old growth, on arrays of the same shapes: holderCount (Uint32), named (Int32), a bitmap per member.
    let holderCount = new Uint32Array(units);
    let named = new Int32Array(units).fill(-1);
    let haves = Array.from({ length: members }, () => new Uint8Array(bitmapBytes(units)));
    t0 = process.hrtime.bigint();
    for (let n = units + 1; n <= units + GROWN; n++) {
      holderCount = copied(holderCount, n);
      named = copied(named, n, -1);
      haves = haves.map((h) => copied(h, bitmapBytes(n)));
    }
    const before = Number(process.hrtime.bigint() - t0) / GROWN / 1e3;
    process.stdout.write(`| ${units.toLocaleString('en')} | ${members} | ${before.toFixed(1)} | ${now.toFixed(2)} | ${(before / now).toFixed(0)}x |\n`);
  }
  process.stdout.write(`\n| units | members | a heartbeat, bitmap over every unit as before (µs) | a heartbeat, bitmap from haveFrom (µs) | ratio |\n| ---: | ---: | ---: | ---: | ---: |\n`);
  for (const units of unitsList) {
    const g = new GroupAllocator({ unitCount: units, unitBytes: () => 65536 });
    const held = new Uint8Array(bitmapBytes(units));
    for (let u = 0; u < units - WINDOW; u++) setBit(held, u);
    for (let i = 0; i < members; i++) g.heartbeat(`m${i}`, 0, { have: held });
    const from = units - WINDOW; // the member's haveFrom: its first unit not held
    const whole: number[] = [];
    const windowed: number[] = [];
    const beat = (f: () => void) => {
      const t0 = process.hrtime.bigint();
      for (let k = 0; k < PER_RUN; k++) f();
      return Number(process.hrtime.bigint() - t0) / PER_RUN / 1e3;
    };
    for (let r = 0; r < runs; r++) {
      whole.push(beat(() => {
        // The agent's bitmap starts at its haveFrom; the server copied it into one over every unit.
        const have = new Uint8Array(bitmapBytes(units));
        setBit(have, units - 1);
        g.heartbeat('m0', 1, { have });
      }));
      windowed.push(beat(() => {
        const base = from & ~7;
        const have = new Uint8Array(bitmapBytes(units - base));
        setBit(have, units - 1 - base);
        g.heartbeat('m0', 1, { have, haveFrom: base });
      }));
    }
    const a = median(whole);
    const b = median(windowed);
    process.stdout.write(`| ${units.toLocaleString('en')} | ${members} | ${a.toFixed(1)} | ${b.toFixed(2)} | ${(a / b).toFixed(0)}x |\n`);
  }
}

function copied<T extends Uint8Array | Uint32Array | Int32Array>(a: T, n: number, fill = 0): T {
  const b = new (a.constructor as new (n: number) => T)(n);
  b.fill(fill);
  b.set(a);
  return b;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
