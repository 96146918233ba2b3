import { fuzz, TARGETS } from './targets';

/** `npm run fuzz [-- CASES [SEED]]`: every parser, 1,000,000 cases each by default. */
const cases = Number(process.argv[2] ?? 1_000_000);
const seed = Number(process.argv[3] ?? Date.now() % 0x7fffffff);
let failed = 0;
for (const t of TARGETS) {
  const start = Date.now();
  try {
    fuzz(t, cases, seed);
    process.stdout.write(`${t.name}: ${cases} cases ok in ${((Date.now() - start) / 1000).toFixed(1)} s (seed ${seed})\n`);
  } catch (err) {
    failed++;
    process.stdout.write(`${t.name}: FAILED: ${(err as Error).message}\n`);
  }
}
process.exit(failed ? 1 : 0);
