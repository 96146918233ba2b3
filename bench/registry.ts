import type { ExecutionContext } from 'ava';
import { PostgresEngine } from '../src/server/engine-postgres';
import { RegistryWriter } from '../src/server/registry-writer';
import { postgresUnsupported, startPostgres } from '../test/helpers/postgres';
import { clockTicks } from './idle';
import { postgresCpuSeconds } from './scale-cluster';

/**
 * `node dist/bench/registry.js [MEMBERS]` (root: it runs PostgreSQL as the postgres user):
 * what the member registry costs an owner of MEMBERS members (docs/scale-out.md, "Durable
 * state in the engine"). 1. One `putMembers` of all MEMBERS rows, 4 times: wall time, the
 * PostgreSQL's CPU (its postmaster and children, from /proc: postgresCpuSeconds of the
 * scale bench) and this process's. 2. Rows a RegistryWriter picks over 120 s of writes every 2 s, for a
 * downloading fleet (every member's verified count grows at each write) and an idle one
 * (nothing changes), against writing every member at every write as before.
 */

const row = (i: number, verified: number) => ({
  release: 'ab'.repeat(16), member: `m${i}`, group: `g${Math.floor(i / 10)}`, key: `${'ab'.repeat(16)}/g${Math.floor(i / 10)}`, instance: 'http://coord1:7600', complete: false, verifiedUnits: verified, address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
});

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 100_000);
  const why = postgresUnsupported();
  if (why) throw new Error(`cannot run: ${why}`);
  const teardowns: (() => Promise<void> | void)[] = [];
  const t = { teardown: (f: () => Promise<void> | void) => void teardowns.push(f) } as unknown as ExecutionContext;
  try {
    const pg = await startPostgres(t);
    const engine = new PostgresEngine(pg.url, 'bench#1', 'http://coord1:7600');
    teardowns.push(() => engine.close());
    await engine.open(Buffer.alloc(32));
    const rows = Array.from({ length: n }, (_, i) => row(i, i % 2048));
    process.stdout.write(`| putMembers of ${n.toLocaleString('en')} rows | wall (ms) | PostgreSQL CPU (s) | this process's CPU (s) |\n| --- | ---: | ---: | ---: |\n`);
    const hz = clockTicks();
    const pgCpu = () => postgresCpuSeconds(pg.pid(), hz);
    for (let k = 1; k <= 4; k++) {
      const pg0 = await pgCpu();
      const u0 = process.cpuUsage();
      const t0 = Date.now();
      await engine.putMembers(rows);
      const u = process.cpuUsage(u0);
      process.stdout.write(`| ${k} | ${Date.now() - t0} | ${((await pgCpu()) - pg0).toFixed(2)} | ${((u.user + u.system) / 1e6).toFixed(2)} |\n`);
    }
    for (const fleet of ['downloading', 'idle'] as const) {
      const w = new RegistryWriter();
      let picked = 0;
      let writes = 0;
      for (let now = 0; now < 120_000; now += 2000, writes++) picked += w.pick(Array.from({ length: n }, (_, i) => row(i, fleet === 'idle' ? 0 : now / 2000)), now).length;
      process.stdout.write(`${fleet} fleet, ${writes} writes in 120 s: ${picked.toLocaleString('en')} rows written, ${(picked / (writes * n)).toFixed(3)} of writing every member every time\n`);
    }
  } finally {
    for (const f of teardowns.reverse()) await f();
  }
}

main().catch((err: Error) => {
  process.stderr.write(`registry bench: ${err.message}\n`);
  process.exit(1);
});
