import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { benchIdleFleet, IDLE_FORMS, IdleForm, idleFleetReport } from './idle-fleet';
import { benchIdleHeld, HeldRow, idleHeldReport } from './idle-held';
import { randomInt } from 'node:crypto';
import { runDemo, DemoResult } from '../src/cli/demo';
import { benchIdleAll, idleReport } from './idle';
import { benchScale, scaleReport } from './scale';
import { clusterReport } from './scale-cluster';
import { benchStream, streamReport } from './stream';
import { AgentMemory, AgentMemorySampler, nodeBaselineKiB } from './proc-memory';
import { keepOtherSections, keptNotes, notesAfterGenerated } from './results-notes';

/**
 * `npm run bench -- demo [RUNS]`: the loopback demo at 0% and 5% loss, 64 MiB, 4 agents,
 * RUNS times each (default 5); medians to bench/results/demo.md. Baseline in the same
 * run: the time for one agent alone (every byte over loopback HTTP, no multicast), so
 * the table shows what the LAN exchange costs or saves on this machine. Then each
 * agent's peak resident memory, from /proc, with 3 agents at 64 MiB and 2 GiB (issue 16;
 * `npm run bench -- memory [RUNS]` prints that part alone, without writing the file).
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

/** bench/results/NAME.md as it is now ('' when there is none): its notes go into the next run's file. */
function previousResult(name: string): Promise<string> {
  return fs.readFile(resultPath(name), 'utf8').catch(() => '');
}

function resultPath(name: string): string {
  return path.join(__dirname, '..', '..', 'bench', 'results', `${name}.md`);
}

async function writeResult(name: string, lines: string[]): Promise<void> {
  if (process.env.FLEETCAST_BENCH_ONLY || process.env.FLEETCAST_BENCH_ROWS) {
    process.stdout.write(lines.join('\n') + '\n(FLEETCAST_BENCH_ONLY or FLEETCAST_BENCH_ROWS is set: not written to bench/results)\n');
    return;
  }
  const out = resultPath(name);
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
  const previous = await previousResult(what);
  await writeResult(what, [
    `# Namespace benchmark: ${what}`,
    '',
    `Machine: ${machine()}.`,
    `Versions: ${versions()}.`,
    `Command: \`npm run bench -- ${what} ${runs}\` (as root). Medians of ${runs} runs, every tool measured in the same run.`,
    '',
    ...body,
    `Generated ${new Date().toISOString()}.`,
    ...notesAfterGenerated(previous),
    '',
  ]);
}

const MIB = 1024 * 1024;
/** Issue 16: peak agent RSS at most this for a 2 GiB release, flat in release size. */
const PEAK_RSS_TARGET_MIB = 64;
const MEMORY_SIZES = (process.env.FLEETCAST_BENCH_MEMORY_MIB ?? '64,2048').split(',').map((x) => Number(x) * MIB);

/** 3 agents on loopback, `runs` times: each agent's peak resident memory (VmHWM) and sampled VmRSS. */
async function memoryRow(sizeBytes: number, runs: number) {
  const peaks: number[] = [];
  const medians: number[] = [];
  const rssMax: number[] = [];
  const secs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const sampler = new AgentMemorySampler();
    let mem: AgentMemory[] = [];
    let r: DemoResult;
    try {
      r = await runDemo({ agents: 3, sizeBytes, lossPct: 0 });
    } finally {
      mem = sampler.stop();
    }
    const name = `memory ${sizeBytes / MIB} MiB`;
    if (!r.ok) throw new Error(`${name}: run ${i + 1} did not verify: ${JSON.stringify(r.agents.filter((a) => !a.ok))}`);
    if (mem.length !== 3 || mem.some((m) => m.samples === 0)) throw new Error(`${name}: sampled ${mem.length} agent(s) of 3 from /proc`);
    const hwm = mem.map((m) => m.hwmKiB / 1024);
    peaks.push(Math.max(...hwm));
    medians.push(median(hwm));
    rssMax.push(Math.max(...mem.map((m) => m.rssMaxKiB / 1024)));
    secs.push(r.seconds);
    process.stderr.write(`${name}: run ${i + 1}/${runs}: ${r.seconds.toFixed(2)} s, agent peaks ${hwm.map((x) => x.toFixed(1)).join(', ')} MiB\n`);
  }
  return { sizeBytes, runs, peak: median(peaks), peakMax: Math.max(...peaks), medianAgent: median(medians), rssMax: median(rssMax), seconds: median(secs) };
}

/** One more run with bench/mem-probe.js in every agent: where the memory is at its peak. */
async function memoryBreakdown(sizeBytes: number) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-memprobe-'));
  const before = process.env.NODE_OPTIONS;
  process.env.NODE_OPTIONS = `${before ?? ''} --require ${path.join(__dirname, 'mem-probe.js')}`.trim();
  process.env.FLEETCAST_MEMPROBE_DIR = dir;
  try {
    const r = await runDemo({ agents: 3, sizeBytes, lossPct: 0 });
    if (!r.ok) throw new Error(`memory breakdown ${sizeBytes / MIB} MiB: did not verify`);
    const files = await fs.readdir(dir);
    const ps = await Promise.all(files.map(async (f) => JSON.parse(await fs.readFile(path.join(dir, f), 'utf8')) as Record<string, number>));
    if (ps.length !== 3) throw new Error(`memory breakdown: ${ps.length} probe file(s) of 3`);
    const p = ps.sort((a, b) => b.rssKiB - a.rssKiB)[0]; // the agent with the highest sampled RSS
    const heap = p.heapTotal / MIB;
    const ab = p.arrayBuffers / MIB;
    const anon = p.anonKiB / 1024;
    const gcs = ps.map((x) => x.forcedGcs ?? -1);
    const cpu = ps.map((x) => x.cpuSeconds).sort((a, b) => a - b).map((c) => c.toFixed(2)).join(', ');
    return { cpu, sizeBytes, rss: p.rssKiB / 1024, hwm: p.hwmKiB / 1024, file: p.fileKiB / 1024, anon, heap, heapUsed: p.heapUsed / MIB, arrayBuffers: ab, otherExternal: (p.external - p.arrayBuffers) / MIB, rest: anon - heap - ab, gcs: gcs.some((g) => g < 0) ? '-' : gcs.join(', ') };
  } finally {
    if (before === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = before;
    delete process.env.FLEETCAST_MEMPROBE_DIR;
    await fs.rm(dir, { recursive: true, force: true });
  }
}

async function memoryLines(runs: number): Promise<string[]> {
  const rows = [];
  for (const size of MEMORY_SIZES) rows.push(await memoryRow(size, runs));
  const parts = [];
  for (const size of MEMORY_SIZES) parts.push(await memoryBreakdown(size));
  const base = nodeBaselineKiB();
  const flat = rows[rows.length - 1].peak / rows[0].peak;
  const f = (x: number) => x.toFixed(1);
  const met = rows.every((r) => r.peakMax <= PEAK_RSS_TARGET_MIB);
  return [
    '## Agent memory (issue 16)',
    '',
    `3 agents on loopback, 0% loss, ${runs} run(s) per size. Each agent's VmHWM (the kernel's peak of its resident set) and VmRSS are read from /proc/PID/status every 20 ms until it exits (bench/proc-memory.ts).`,
    `"Peak" is the highest agent's VmHWM in a run, median over runs (worst run beside it). Target: at most ${PEAK_RSS_TARGET_MIB} MiB at 2 GiB, flat in release size.`,
    '',
    '| release | seconds | peak RSS per agent (MiB) | worst run (MiB) | median agent (MiB) | highest sampled VmRSS (MiB) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.sizeBytes / MIB} MiB | ${r.seconds.toFixed(2)} | ${f(r.peak)} | ${f(r.peakMax)} | ${f(r.medianAgent)} | ${f(r.rssMax)} |`),
    '',
    `Peak at ${MEMORY_SIZES[MEMORY_SIZES.length - 1] / MIB} MiB over peak at ${MEMORY_SIZES[0] / MIB} MiB: ${flat.toFixed(2)}x. ${met ? `Target met: every run's peak is at most ${PEAK_RSS_TARGET_MIB} MiB.` : `Target NOT met: some run's peak is over ${PEAK_RSS_TARGET_MIB} MiB.`}`,
    '',
    `Where it goes, one more run per size with bench/mem-probe.js preloaded in every agent (the agent with the highest sampled VmRSS, at that sample; the probe's own cost included). A bare \`node -e\` on this machine: ${f(base.rss / 1024)} MiB resident, ${f(base.file / 1024)} MiB of it file-backed.`,
    '',
    '| release | VmRSS | file-backed (node binary, libraries) | anonymous | V8 heap (heapTotal / used) | ArrayBuffers | other anonymous (malloc, stacks, code) | VmHWM | full GCs forced by the heap ceiling (each agent) | CPU seconds (each agent) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...parts.map((p) => `| ${p.sizeBytes / MIB} MiB | ${f(p.rss)} | ${f(p.file)} | ${f(p.anon)} | ${f(p.heap)} / ${f(p.heapUsed)} | ${f(p.arrayBuffers)} | ${f(p.rest)} | ${f(p.hwm)} | ${p.gcs} | ${p.cpu} |`),
    '',
  ];
}

async function main() {
  const [what = 'demo', runsArg] = process.argv.slice(2);
  if (what === 'transport') return benchTransport(Number(runsArg ?? 5));
  if (what === 'idle') {
    const seconds = Number(runsArg ?? 60);
    return writeResult('idle', idleReport(await benchIdleAll(seconds, Number(process.argv[4] ?? 3)), machine()));
  }
  if (what === 'idle-fleet') {
    // npm run bench -- idle-fleet [FOLLOWERS[,FOLLOWERS...]] [SECONDS] [1.5|1.6|1.7|1.8[,...]]
    const args = process.argv.slice(3);
    const counts = (args[0] ?? '10000').split(',').map(Number);
    const seconds = Number(args[1] ?? 120);
    if (args[2] === 'held') {
      // npm run bench -- idle-fleet [FOLLOWERS] [SECONDS] held [RUNS]: the idle server's CPU by row (bench/idle-held.ts),
      // medians of RUNS runs; printed, not written (bench/results/idle-fleet.md keeps it by hand).
      const runs = Number(args[3] ?? 3);
      if (counts.length !== 1 || !Number.isInteger(counts[0]) || counts[0] < 10 || !(seconds > 0) || !Number.isInteger(runs) || runs < 1 || args.length > 4) {
        process.stderr.write('bench: usage: npm run bench -- idle-fleet [FOLLOWERS] [SECONDS] held [RUNS]\n');
        process.exit(64);
      }
      const all: HeldRow[][] = [];
      for (let i = 0; i < runs; i++) all.push(await benchIdleHeld(counts[0], seconds));
      const rows = all[0].map((r, k) => ({ ...r, cpuSeconds: r.seconds * median(all.map((rs) => rs[k].cpuSeconds / rs[k].seconds)), answered: median(all.map((rs) => rs[k].answered)), rssMiB: median(all.map((rs) => rs[k].rssMiB)) }));
      const each = all.map((rs, i) => `run ${i + 1}: ${rs.map((r) => ((r.cpuSeconds / r.seconds) * 1000).toFixed(1)).join(' / ')} ms a second`);
      process.stdout.write([`\`npm run bench -- ${process.argv.slice(2).join(' ')}\`, medians of ${runs} run(s) of ${seconds} s windows (${machine()}):`, '', ...idleHeldReport(rows), '', ...each, ''].join('\n'));
      return;
    }
    const forms = (args[2] ?? '1.5,1.6').split(',') as IdleForm[];
    if (counts.some((n) => !Number.isInteger(n) || n < 10) || !(seconds > 0) || forms.some((f) => !IDLE_FORMS.includes(f)) || args.length > 3) {
      process.stderr.write('bench: usage: npm run bench -- idle-fleet [FOLLOWERS[,FOLLOWERS...]] [SECONDS] [1.5|1.6|1.7|1.8[,...]]  (followers >= 10; about 1.2 open files each, within this process limit)\n');
      process.exit(64);
    }
    const results = [];
    for (const n of counts) for (const form of forms) results.push(await benchIdleFleet(n, seconds, form));
    return writeResult('idle-fleet', idleFleetReport(results, machine(), `npm run bench -- idle-fleet ${process.argv.slice(3).join(' ')}`.trim()));
  }
  if (what === 'scale') {
    // npm run bench -- scale [AGENTS[,AGENTS...]] [SECONDS] [POLICY[,POLICY]] [FORM[,FORM]] [--instances N[,N]]
    const args = process.argv.slice(3);
    const flag = args.indexOf('--instances');
    const instances = flag < 0 ? [1] : (args.splice(flag, 2)[1] ?? '').split(',').map(Number);
    const counts = (args[0] ?? '1000,10000').split(',').map(Number);
    const seconds = Number(args[1] ?? 30);
    const policies = (args[2] ?? 'group,wide').split(',') as ('group' | 'wide')[];
    const forms = (args[3] ?? '1.4').split(',') as ('1.3' | '1.4' | '1.5')[];
    if (counts.some((n) => !Number.isInteger(n) || n < 10) || !(seconds > 0) || policies.some((p) => p !== 'group' && p !== 'wide') || forms.some((f) => f !== '1.3' && f !== '1.4' && f !== '1.5') || args.length > 4 || instances.some((n) => !Number.isInteger(n) || n < 1 || n > 8)) {
      process.stderr.write('bench: usage: npm run bench -- scale [AGENTS[,AGENTS...]] [SECONDS] [group|wide[,...]] [1.3|1.4|1.5[,...]] [--instances N[,N...]]  (agents >= 10; 1 to 8 instances: more than 1 share a PostgreSQL the bench starts, as root)\n');
      process.exit(64);
    }
    const results = [];
    for (const agents of counts)
      for (const policy of policies)
        for (const form of forms)
          for (const n of instances) {
            process.stderr.write(`scale: ${agents} agents, protocol ${form}, policy ${policy}, ${seconds} s window, ${n} server instance(s)\n`);
            results.push(await benchScale({ agents, perGroup: 10, policy, sitesPerWide: 20, seconds, wanBytesPerSec: 5e6, originBytesPerSec: 10e9 / 8, lanDelayMs: 200, form, instances: n }));
            // Each row as it is measured: a long run cut short keeps what it had.
            if (flag >= 0) process.stderr.write(clusterReport(results.slice(-1), '').filter((l) => l.startsWith(`| ${agents.toLocaleString('en')} `)).join('\n') + '\n');
          }
    const command = `npm run bench -- ${process.argv.slice(2).join(' ')}`;
    const cluster = flag < 0 ? [] : clusterReport(results, command);
    await writeResult('scale', keepOtherSections(await previousResult('scale'), [...scaleReport(results, machine(), command), ...cluster]));
    // The result is written. After a saturated run (100,000 agents under policy wide) the simulator once stayed up,
    // idle, on a handle not found: it ends here rather than hold the heavy-test lock.
    process.exit(0);
  }
  if (what === 'stream') {
    // npm run bench -- stream [AGENTS] [MBIT] [SECONDS] [LOSS%[,LOSS%]] [UNIT_KIB] [RUNS]
    const agents = Number(runsArg ?? 4);
    const mbit = Number(process.argv[4] ?? 20);
    const seconds = Number(process.argv[5] ?? 20);
    const losses = (process.argv[6] ?? '0,3').split(',').map(Number);
    const unitBytes = Number(process.argv[7] ?? 64) * 1024;
    const runs = Number(process.argv[8] ?? 3);
    if (!(agents >= 1 && mbit > 0 && seconds > 0 && losses.every((l) => l >= 0 && l < 100) && unitBytes >= 4096 && Number.isInteger(runs) && runs >= 1)) {
      process.stderr.write('bench: usage: npm run bench -- stream [AGENTS] [MBIT] [SECONDS] [LOSS%[,LOSS%]] [UNIT_KIB] [RUNS]\n');
      process.exit(64);
    }
    const rows = losses.map(() => [] as Awaited<ReturnType<typeof benchStream>>[]);
    for (let run = 0; run < runs; run++)
      for (const [i, lossPct] of losses.entries()) {
        process.stderr.write(`stream: ${agents} agents, ${mbit} Mbit/s for ${seconds} s, ${lossPct}% loss, run ${run + 1} of ${runs}\n`);
        rows[i].push(await benchStream({ agents, mbit, seconds, lossPct, unitBytes, flushMs: 200 }));
      }
    const previous = await previousResult('stream');
    return writeResult('stream', keepOtherSections(previous, streamReport(rows, machine(), `npm run bench -- ${process.argv.slice(2).join(' ')}`)));
  }
  // npm run bench -- stream-sites [SITES] [AGENTS] [MBIT] [SECONDS] [LOSS%[,LOSS%]] [RUNS] [WAN_MBIT]: the stream on the sites testbed (root)
  if (what === 'fleet-memory') return (await import('./fleet-memory-save')).fleetMemorySaveMain(process.argv.slice(3));
  if (what === 'stream-sites') return (await import('./stream-sites')).streamSitesMain(process.argv.slice(3));
  // npm run bench -- stream-answer [UNITS[,UNITS...]] [MEMBERS] [RUNS]: the holders of a stream heartbeat answer, two ways (prints a table)
  if (what === 'stream-answer') return (await import('./stream-answer')).streamAnswerMain(process.argv.slice(3));
  if (what === 'lan' || what === 'sites' || what === 'uplinks' || what === 'policies') return benchNamespaces(what, Number(runsArg ?? 3));
  if (what === 'memory') {
    process.stdout.write((await memoryLines(Number(runsArg ?? 3))).join('\n') + '\n');
    return;
  }
  if (what !== 'demo') {
    process.stderr.write(`bench: unknown benchmark ${JSON.stringify(what)}; available: demo, memory, transport, idle, scale, fleet-memory, stream, stream-sites (the stream on the sites testbed, as root), stream-answer, lan, sites, policies, uplinks
`);
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
  const memory = await memoryLines(Math.min(runs, 3));
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
    ...memory,
    ...keptNotes(await previousResult('demo')),
    `Generated ${new Date().toISOString()}.`,
    '',
  ];
  await writeResult('demo', lines);
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`);
  process.exit(1);
});
