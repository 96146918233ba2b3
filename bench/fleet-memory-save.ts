import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { FleetMemory } from '../src/server/fleet-memory';
import { silentLogger } from '../src/util/log';

/**
 * `npm run bench -- fleet-memory [ENTRIES] [SAVES]`: the longest event-loop block while the
 * server's FleetMemory.save() writes ENTRIES members' overheads to fleet.json (default 100,000,
 * 5 saves): the largest gap of a 1 ms interval over each save. One JSON.stringify of the whole
 * map blocked 95-119 ms at 100,000 (issue 17; bench/results/scale.md). Prints, writes nothing.
 */
export async function fleetMemorySaveMain(args: string[]): Promise<void> {
  const entries = Number(args[0] ?? 100_000);
  const saves = Number(args[1] ?? 5);
  if (!Number.isInteger(entries) || entries < 1 || !Number.isInteger(saves) || saves < 1 || args.length > 2) {
    process.stderr.write('bench: usage: npm run bench -- fleet-memory [ENTRIES] [SAVES]\n');
    process.exit(64);
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-fleet-memory-'));
  try {
    const file = path.join(dir, 'fleet.json');
    const m = new FleetMemory(file, silentLogger);
    const blocks: string[] = [];
    for (let run = 0; run < saves; run++) {
      for (let i = 0; i < entries; i++) m.noteOverhead(`0123456789abcdef0123456789abcdef/site-${Math.floor(i / 10)}/agent-${i}`, run + i / 7);
      await new Promise((r) => setTimeout(r, 20));
      let last = performance.now();
      let worst = 0;
      const t = setInterval(() => {
        const now = performance.now();
        worst = Math.max(worst, now - last);
        last = now;
      }, 1);
      await m.save();
      worst = Math.max(worst, performance.now() - last);
      clearInterval(t);
      blocks.push(worst.toFixed(1));
    }
    process.stdout.write(`fleet.json of ${entries.toLocaleString('en')} overheads (${(await fs.stat(file)).size} bytes): longest event-loop block per save (ms): ${blocks.join(', ')}\n`);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}
