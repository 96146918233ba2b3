import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { runDemo, DemoResult } from '../src/cli/demo';
import { benchIdle, idleReport } from './idle';

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

function machine(): string {
  return `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${os.release()}, Node ${process.version}`;
}

async function writeResult(name: string, lines: string[]): Promise<void> {
  if (process.env.FLEETCAST_BENCH_ONLY || process.env.FLEETCAST_BENCH_ROWS) {
    process.stdout.write(lines.join('\n') + '\n(FLEETCAST_BENCH_ONLY or FLEETCAST_BENCH_ROWS is set: not written to bench/results)\n');
    return;
  }
  const out = path.join(__dirname, '..', '..', 'bench', 'results', `${name}.md`);
  await fs.mkdir(path.dirname(out), { recursive: true });
  await fs.writeFile(out, lines.join('\n'));
  process.stdout.write(lines.join('\n'));
}

function runWorker(args: string[], env: NodeJS.ProcessEnv): { ready: Promise<void>; result: Promise<Record<string, unknown>>; kill: () => void } {
  const c = spawn(process.execPath, [path.join(__dirname, 'transport-worker.js'), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let onReady: () => void = () => {};
  const ready = new Promise<void>((r) => (onReady = r));
  c.stdout.on('data', (d) => {
    out += d;
    if (out.includes('ready\n')) onReady();
  });
  const result = new Promise<Record<string, unknown>>((resolve, reject) =>
    c.on('exit', (code) => {
      const line = out.split('\n').filter((l) => l.startsWith('{')).pop();
      if (code === 0 && line) resolve(JSON.parse(line));
      else reject(new Error(`transport worker ${args[0]} exited ${code}`));
    }),
  );
  return { ready, result, kill: () => c.kill('SIGTERM') };
}

/** One sender, three receivers, each its own process, on loopback multicast. */
async function transportRun(kind: 'dgram' | 'native', size: number, seconds: number) {
  const group = `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`;
  const port = String(randomInt(20000, 60000));
  const env = { FLEETCAST_TRANSPORT: kind };
  const rx = [0, 1, 2].map(() => runWorker(['receiver', group, port], env));
  try {
    await Promise.all(rx.map((r) => r.ready));
    const tx = runWorker(['sender', group, port, String(size), String(seconds)], env);
    const s = await tx.result;
    await new Promise((r) => setTimeout(r, 300)); // let the receivers drain
    for (const r of rx) r.kill();
    const rs = await Promise.all(rx.map((r) => r.result));
    const delivered = rs.reduce((a, r) => a + Number(r.received), 0);
    const bytes = rs.reduce((a, r) => a + Number(r.bytes), 0);
    const cpu = Number(s.cpuSeconds) + rs.reduce((a, r) => a + Number(r.cpuSeconds), 0);
    return { dps: delivered / seconds, cpuPerGB: cpu / (bytes / 1e9), lossPct: 100 * (1 - delivered / (3 * Number(s.sent))), features: (rs[0].features as string[]).join(' ') };
  } finally {
    for (const r of rx) r.kill();
  }
}

async function benchTransport(runs: number): Promise<void> {
  const seconds = 2;
  const sizes = [1400, 8192];
  const lines = [
    '# Transport benchmark: native addon vs node:dgram',
    '',
    `Machine: ${machine()}.`,
    `Command: \`npm run bench -- transport ${runs}\`. One sender and three receivers, each its own process, on loopback multicast (239.255.x.y on lo); the sender floods for ${seconds} s with batches of 64. Medians of ${runs} runs per row, transports alternating within the same run. "Delivered" counts datagrams all three receivers got, per second. CPU is user+system seconds of all four processes over GB delivered.`,
    '',
    '| datagram bytes | transport | delivered datagrams/s | CPU s per GB delivered | receiver loss % | native/dgram datagrams/s | native/dgram CPU per GB |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  let features = '';
  for (const size of sizes) {
    const res: Record<string, { dps: number[]; cpu: number[]; loss: number[] }> = { dgram: { dps: [], cpu: [], loss: [] }, native: { dps: [], cpu: [], loss: [] } };
    for (let i = 0; i < runs; i++) {
      for (const kind of ['dgram', 'native'] as const) {
        const r = await transportRun(kind, size, seconds);
        res[kind].dps.push(r.dps);
        res[kind].cpu.push(r.cpuPerGB);
        res[kind].loss.push(r.lossPct);
        if (kind === 'native') features = r.features;
        process.stderr.write(`transport ${size} B ${kind} run ${i + 1}/${runs}: ${Math.round(r.dps)} datagrams/s, ${r.cpuPerGB.toFixed(2)} CPU s/GB\n`);
      }
    }
    const d = { dps: median(res.dgram.dps), cpu: median(res.dgram.cpu), loss: median(res.dgram.loss) };
    const n = { dps: median(res.native.dps), cpu: median(res.native.cpu), loss: median(res.native.loss) };
    lines.push(`| ${size} | dgram | ${Math.round(d.dps)} | ${d.cpu.toFixed(2)} | ${d.loss.toFixed(1)} | | |`);
    lines.push(`| ${size} | native | ${Math.round(n.dps)} | ${n.cpu.toFixed(2)} | ${n.loss.toFixed(1)} | ${(n.dps / d.dps).toFixed(2)}x | ${(n.cpu / d.cpu).toFixed(2)}x |`);
  }
  lines.push('', `Native kernel features in use: ${features}.`, '');
  // The demo, same run: 64 MiB to 4 agents, per transport.
  const demo: Record<string, number[]> = { dgram: [], native: [] };
  for (let i = 0; i < 3; i++) {
    for (const kind of ['dgram', 'native'] as const) {
      process.env.FLEETCAST_TRANSPORT = kind;
      const r = await runDemo({ agents: 4, sizeBytes: 64 * 1024 * 1024, lossPct: 0 });
      if (!r.ok || r.transport !== kind) throw new Error(`demo on ${kind} did not verify (transport ${r.transport})`);
      demo[kind].push(r.seconds);
      process.stderr.write(`demo ${kind} run ${i + 1}/3: ${r.seconds.toFixed(2)} s\n`);
    }
  }
  delete process.env.FLEETCAST_TRANSPORT;
  const dd = median(demo.dgram);
  const nd = median(demo.native);
  lines.push(
    '## Loopback demo, 64 MiB, 4 agents (median of 3, same run)',
    '',
    '| transport | seconds | speed-up |',
    '| --- | ---: | ---: |',
    `| dgram | ${dd.toFixed(2)} | 1.00x |`,
    `| native | ${nd.toFixed(2)} | ${(dd / nd).toFixed(2)}x |`,
    '',
    `Generated ${new Date().toISOString()}.`,
    '',
  );
  await writeResult('transport', lines);
}

async function benchNamespaces(what: 'lan' | 'sites' | 'uplinks' | 'policies', runs: number): Promise<void> {
  if (process.getuid?.() !== 0) {
    process.stderr.write(`bench ${what}: needs root for network namespaces; skipped\n`);
    process.exit(77);
  }
  const { benchLan, benchSitesAndPolicies, benchPolicies, benchUplinks, versions, removeWorkdirs } = await import('./netns');
  // Namespaces and processes go in each benchmark's finally; on a signal, here.
  const { destroyAll } = await import('../test/netns/topology');
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench ${what}: ${sig}: removing namespaces and processes\n`);
      void Promise.all([destroyAll(), removeWorkdirs()]).finally(() => process.exit(130));
    });
  }
  const body =
    what === 'lan' ? await benchLan(runs) : what === 'sites' ? await benchSitesAndPolicies(runs) : what === 'policies' ? await benchPolicies(runs) : await benchUplinks(runs);
  await writeResult(what, [
    `# Namespace benchmark: ${what}`,
    '',
    `Machine: ${machine()}.`,
    `Versions: ${versions()}.`,
    `Command: \`npm run bench -- ${what} ${runs}\` (as root). Medians of ${runs} runs, every tool measured in the same run.`,
    '',
    ...body,
    `Generated ${new Date().toISOString()}.`,
    '',
  ]);
}

async function main() {
  const [what = 'demo', runsArg] = process.argv.slice(2);
  if (what === 'transport') return benchTransport(Number(runsArg ?? 5));
  if (what === 'idle') {
    const seconds = Number(runsArg ?? 60);
    return writeResult('idle', idleReport([await benchIdle(seconds, 1000), await benchIdle(seconds, 5000)], machine()));
  }
  if (what === 'lan' || what === 'sites' || what === 'uplinks' || what === 'policies') return benchNamespaces(what, Number(runsArg ?? 3));
  if (what !== 'demo') {
    process.stderr.write(`bench: unknown benchmark ${JSON.stringify(what)}; available: demo, transport, idle, lan, sites, policies, uplinks\n`);
    process.exit(64);
  }
  const runs = Number(runsArg ?? 5);
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
    `Machine: ${machine()}.`,
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
  await writeResult('demo', lines);
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`);
  process.exit(1);
});
