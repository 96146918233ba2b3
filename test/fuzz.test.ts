import test from 'ava';
import { fuzz, TARGETS } from './fuzz/targets';

// CI runs 100,000 cases per parser; `npm run fuzz` runs 1,000,000 each.
const CASES = Number(process.env.FLEETCAST_FUZZ_CASES ?? 100_000);

for (const target of TARGETS) {
  // The YAML parser is ~50x slower per case than the binary codecs: a fifth of the cases in CI.
  const n = Math.ceil(CASES * (target.ciShare ?? 1));
  test(`${target.name} survives ${n} random and mutated inputs`, (t) => {
    t.is(fuzz(target, n, 0x5eed + target.name.length), n);
  });
}

test('the fuzzer finds a planted bug (it can fail)', (t) => {
  const planted = { name: 'planted', seeds: [new Uint8Array([1, 2, 3])], run: (b: Uint8Array) => { if (b.length > 0 && b[0] === 0xff) throw new Error('boom'); } };
  t.throws(() => fuzz(planted, 100_000, 1), { message: /planted: case \d+ .*boom/ });
});
