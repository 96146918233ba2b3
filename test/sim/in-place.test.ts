import test from 'ava';
import { AGENT_DEFAULTS } from '../../src/agent/core/defaults';
import { PacketType, decodePacket } from '../../src/wire/packet';
import { makeLanCore } from './core-api';
import { bernoulli, burstyLoss } from './loss';
import { World, WorldOptions } from './world';

// LAN assemblies built in the store (issue 16's memory target), as the agent's core runs
// them: fragments go out in chunks of assemblyChunkBytes as 'write' events, the hash runs
// over what arrived in order, the rest is read back by 'verify'. Units of 64 KiB and
// 8 KiB chunks, so a unit takes several chunks and a loss breaks one.

const CHUNK_BYTES = 8 * 1024;

function world(o: Partial<WorldOptions> & Pick<WorldOptions, 'groups'>): World {
  return new World({ seed: 1, makeCore: makeLanCore, unitCount: 24, unitSize: 64 * 1024, fragmentBytes: 1024, ...o, member: { assembleInPlace: true, ...o.member } });
}

function withChunkBytes<T>(bytes: number, run: () => T): T {
  const before = AGENT_DEFAULTS.assemblyChunkBytes;
  AGENT_DEFAULTS.assemblyChunkBytes = bytes;
  try {
    return run();
  } finally {
    AGENT_DEFAULTS.assemblyChunkBytes = before;
  }
}

const LAN_LIMIT_MS = 5_000;

for (const [name, loss] of [
  ['10% independent loss', bernoulli(0.1)],
  ['10% bursty loss (bursts of 4)', burstyLoss(0.1, 4)],
] as const) {
  test(`in place, 4 members at ${name} complete; the store gets each LAN byte about once and reads back only what came out of order`, (t) => {
    withChunkBytes(CHUNK_BYTES, () => {
      const w = world({ groups: [{ name: 'g0', members: 4 }], lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss } } });
      const done = w.runUntilComplete(LAN_LIMIT_MS);
      const m = w.release.manifest;
      t.true(done, `not complete by ${w.sim.now} ms`);
      for (const x of w.members) {
        t.true(x.storeEqualsRelease(), `${x.opts.id}'s store differs from the release`);
        t.is(x.stats.unitsRejected, 0);
        const fromLan = x.stats.unitsFromLan * m.unitSize;
        t.log(`${x.opts.id}: ${x.stats.unitsFromLan} units from the LAN, ${x.inPlaceWritten} B written in place, ${x.inPlaceReadBack} B read back`);
        t.true(x.stats.unitsFromLan > 0);
        // Every LAN byte is written; a dropped assembly (none expected here) would write again.
        t.true(x.inPlaceWritten >= fromLan && x.inPlaceWritten <= fromLan * 1.1, `${x.inPlaceWritten} B written for ${fromLan} B of LAN units`);
        // Losses were repaired after later fragments, so some units were read back, never more than whole.
        t.true(x.inPlaceReadBack > 0 && x.inPlaceReadBack < fromLan, `${x.inPlaceReadBack} B read back`);
        t.is(x.partial.size, 0, 'no unit is left half-assembled in the store');
      }
    });
  });
}

test('in place, without loss every unit is hashed as it arrives: nothing is read back', (t) => {
  withChunkBytes(CHUNK_BYTES, () => {
    const w = world({ groups: [{ name: 'g0', members: 3 }], lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1 } } });
    t.true(w.runUntilComplete(LAN_LIMIT_MS));
    for (const x of w.members) {
      t.true(x.storeEqualsRelease());
      t.true(x.stats.unitsFromLan > 0);
      t.is(x.inPlaceReadBack, 0);
    }
  });
});

test('in place, a member that corrupts its copies: the bad units fail verification, are dropped and asked for again; every store ends right', (t) => {
  withChunkBytes(CHUNK_BYTES, () => {
    let corrupted = 0;
    // g0-m0 flips a payload byte in every 8th first-time DATA copy it sends (repairs stay honest).
    const mangle = (d: Uint8Array): Uint8Array | null => {
      const p = decodePacket(d);
      if (p.ok && p.packet.type === PacketType.DATA && !p.packet.repair && p.packet.fragment % 8 === 3) {
        const out = Uint8Array.from(d);
        out[out.length - 1] ^= 0xff;
        corrupted++;
        return out;
      }
      return d;
    };
    const w = world({ groups: [{ name: 'g0', members: 4 }], lan: { down: { rateBytesPerSec: 12_500_000, delayMs: 0.1 } }, memberOverrides: (_g, i) => (i === 0 ? { mangle } : {}) });
    const done = w.runUntilComplete(4 * LAN_LIMIT_MS);
    t.true(corrupted > 0);
    t.true(done, `not complete by ${w.sim.now} ms`);
    for (const x of w.members) t.true(x.storeEqualsRelease(), `${x.opts.id}'s store differs from the release`);
    const rejected = w.members.slice(1).reduce((s, x) => s + x.stats.unitsRejected, 0);
    t.log(`${corrupted} corrupted copies, ${rejected} units rejected by the others`);
    t.true(rejected > 0, 'the corrupted units were caught by their hash');
  });
});
