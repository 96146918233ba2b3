import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runDemo, DemoResult } from '../src/cli/demo';

/**
 * `npm run bench -- demo [RUNS]`: the loopback demo at 0% and 5% loss, 64 MiB, 4 agents,
 * RUNS times each (default 5); medians to bench/results/demo.md. Baseline in the same
 * run: the time for one agent alone (every byte over loopback HTTP, no multicast), so
 * the table shows what the LAN exchange costs or saves on this machine.
 */
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function bench(name: string, runs: number, f: () => Promise<DemoResult>) {
  const rs: DemoResult[] = [];
  for (let i = 0; i < runs; i++) {
    const r = await f();
    if (!r.ok) throw new Error(`${name}: run ${i + 1} did not verify: ${JSON.stringify(r.agents.filter((a) => !a.ok))}`);
    rs.push(r);
    process.stderr.write(`${name}: run ${i + 1}/${runs}: ${r.seconds.toFixed(2)} s\n`);
  }
  return {
    name,
    seconds: median(rs.map((r) => r.seconds)),
    egress: median(rs.map((r) => r.egressRatio)),
    nacks: median(rs.map((r) => r.agents.reduce((s, a) => s + a.nacksSent, 0))),
    repairMiB: median(rs.map((r) => r.agents.reduce((s, a) => s + a.repairBytesSent, 0) / 2 ** 20)),
    goodputMbit: median(rs.map((r) => (r.releaseBytes * 8) / r.seconds / 1e6)),
    transport: rs[0].transport,
  };
}

async function main() {
  const [what = 'demo', runsArg = '5'] = process.argv.slice(2);
  if (what !== 'demo') {
    process.stderr.write(`bench: unknown benchmark ${JSON.stringify(what)}; available: demo\n`);
    process.exit(64);
  }
  const runs = Number(runsArg);
  const size = 64 * 1024 * 1024;
  const rows = [
    await bench('baseline: 4 agents, each downloads all over HTTP', runs, () => runDemo({ agents: 4, sizeBytes: size, lossPct: 0, separateGroups: true })),
    await bench('4 agents, 0% loss', runs, () => runDemo({ agents: 4, sizeBytes: size, lossPct: 0 })),
    await bench('4 agents, 5% loss', runs, () => runDemo({ agents: 4, sizeBytes: size, lossPct: 5 })),
  ];
  const base = rows[0];
  const lines = [
    '# Loopback demo benchmark',
    '',
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${os.release()}, Node ${process.version}.`,
    `Command: \`npm run bench -- demo ${runs}\`. Release 64 MiB, unit 1 MiB, loopback multicast, per-agent LAN rate 500 Mbit/s.`,
    `Medians of ${runs} runs. "Server egress" is unit bytes the server sent divided by the release size (1.00 = each byte crossed the WAN once for the group).`,
    `The baseline puts each agent in a group of its own, so every agent fetches the whole release from the server over loopback HTTP (what per-device HTTP download does). "Time vs baseline" is the row's seconds over the baseline's, same run. All processes share this machine's ${os.cpus().length} cores, and loopback HTTP is far faster than any WAN: here the baseline's only cost is the server's egress (${base.egress.toFixed(2)}x).`,
    '',
    '| setup | seconds (all verified) | server egress | goodput per agent (Mbit/s) | NACKs | repair MiB | time vs baseline | transport |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...rows.map((r) => `| ${r.name} | ${r.seconds.toFixed(2)} | ${r.egress.toFixed(3)} | ${r.goodputMbit.toFixed(0)} | ${r.nacks} | ${r.repairMiB.toFixed(1)} | ${(r.seconds / base.seconds).toFixed(2)} | ${r.transport} |`),
    '',
    `Generated ${new Date().toISOString()}.`,
    '',
  ];
  const out = path.join(__dirname, '..', '..', 'bench', 'results', 'demo.md');
  await fs.mkdir(path.dirname(out), { recursive: true });
  await fs.writeFile(out, lines.join('\n'));
  process.stdout.write(lines.join('\n'));
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`);
  process.exit(1);
});
