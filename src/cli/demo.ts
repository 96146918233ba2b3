import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../release/keys';
import { publishRelease } from '../release/publish';
import { sha256File } from '../storage/files';
import { FleetcastServer } from '../server/server';
import { ExitCode } from '../util/errors';
import { Command } from './command';
import { usageError } from './args';
import { formatBytes, ProgressBar } from './progress';
import { fragmentBytesForMtu } from '../net/interface';

/** The demo models an Ethernet LAN: fragments sized for a 1500-byte MTU. */
export const DEMO_MTU = 1500;

const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'fleetcast.js');

export interface DemoAgentResult {
  id: string;
  ok: boolean;
  sha256: string | null;
  wanBytes: number;
  lanBytes: number;
  nacksSent: number;
  repairPacketsSent: number;
  repairBytesSent: number;
  unitsRejected: number;
  seconds: number;
  exitCode: number | null;
  transport: string;
  transportFeatures: string[];
  error?: string;
}

export interface DemoResult {
  ok: boolean;
  releaseBytes: number;
  releaseSha256: string;
  unitSize: number;
  units: number;
  serverEgressBytes: number;
  egressRatio: number;
  seconds: number;
  lossPct: number;
  transport: string;
  /** Kernel features the agents' transport used (recvmmsg, UDP_SEGMENT, ...). */
  transportFeatures: string[];
  agents: DemoAgentResult[];
}

export interface DemoOptions {
  agents: number;
  sizeBytes: number;
  lossPct: number;
  unitSize?: number;
  rateMbit?: number;
  /** LAN MTU the agents size fragments for; loopback's own (64 KiB) is not what a LAN has. */
  mtu?: number;
  timeoutS?: number;
  keepDir?: string;
  /** Baseline: every agent in a group of its own, so each downloads everything over HTTP. */
  separateGroups?: boolean;
  onProgress?: (verified: number, total: number) => void;
}

async function writeRandomFile(file: string, size: number): Promise<void> {
  const ws = createWriteStream(file);
  let left = size;
  while (left > 0) {
    const n = Math.min(left, 1 << 20);
    if (!ws.write(randomBytes(n))) await new Promise<void>((r) => ws.once('drain', () => r()));
    left -= n;
  }
  await new Promise<void>((resolve, reject) => ws.end((err?: Error | null) => (err ? reject(err) : resolve())));
}

/**
 * The loopback demo: a random release, a server on 127.0.0.1, N agent processes in
 * one group on a random 239.255.x.y group on `lo`; everything is cleaned up after.
 */
export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const dir = o.keepDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-demo-')));
  await fs.mkdir(dir, { recursive: true });
  const children: ReturnType<typeof spawn>[] = [];
  let srv: FleetcastServer | null = null;
  try {
    const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
    const src = path.join(dir, 'release.bin');
    await writeRandomFile(src, o.sizeBytes);
    const m = await publishRelease(src, path.join(dir, 'store'), await loadPrivateKey(keyPath), { name: 'demo.bin', unitSize: o.unitSize });
    srv = new FleetcastServer({ storeDir: path.join(dir, 'store'), host: '127.0.0.1', port: 0, heartbeatMs: 250, allocator: { memberTimeoutMs: 3000 } });
    const addr = await srv.start();
    const mcast = () => `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}:${randomInt(20000, 60000)}`;
    const shared = mcast();
    const started = Date.now();
    // Distribution time ends when the last agent exits holding its verified file;
    // the demo's own re-check of every file below is not part of it.
    let lastExit = started;
    const server = srv;
    const progress = o.onProgress
      ? setInterval(() => {
          const fleet = server.fleet() as { groups: { members: { verifiedUnits: number }[] }[] };
          const done = fleet.groups.reduce((s, g) => s + g.members.reduce((x, m) => x + m.verifiedUnits, 0), 0);
          o.onProgress!(done, m.unitCount * o.agents);
        }, 200)
      : null;
    const results = await Promise.all(
      Array.from({ length: o.agents }, async (_, i): Promise<DemoAgentResult> => {
        const id = `agent-${i + 1}`;
        const report = path.join(dir, `${id}.json`);
        const args = [
          BIN, 'agent', '--server', addr.url, '--plain-http', '--group', o.separateGroups ? `demo-${i + 1}` : 'demo', '--interface', '127.0.0.1',
          '--multicast', o.separateGroups ? mcast() : shared, '--status-socket', 'none',
          '--storage', path.join(dir, id), '--trust', pubPath, '--release', m.id, '--once', '--member', id,
          '--loss', String(o.lossPct), '--report', report, '--linger', '30', '--timeout', String(o.timeoutS ?? 600),
          '--log-level', 'warn', '--rate', String(o.rateMbit ?? 500),
          '--fragment-bytes', String(fragmentBytesForMtu(o.mtu ?? DEMO_MTU, false)),
        ];
        const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        children.push(child);
        let stderr = '';
        child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
        child.stdout!.resume();
        const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
        lastExit = Math.max(lastExit, Date.now());
        let r: Record<string, unknown> = {};
        try {
          r = JSON.parse(await fs.readFile(report, 'utf8'));
        } catch {
          /* agent died before writing its report */
        }
        const finalPath = typeof r.path === 'string' ? r.path : null;
        const sha = finalPath ? await sha256File(finalPath).catch(() => null) : null;
        return {
          id,
          ok: code === 0 && sha === m.sha256,
          sha256: sha,
          wanBytes: Number(r.wanBytes ?? 0),
          lanBytes: Number(r.lanBytes ?? 0),
          nacksSent: Number(r.nacksSent ?? 0),
          repairPacketsSent: Number(r.repairPacketsSent ?? 0),
          repairBytesSent: Number(r.repairBytesSent ?? 0),
          unitsRejected: Number(r.unitsRejected ?? 0),
          seconds: Number(r.seconds ?? 0),
          exitCode: code,
          transport: String(r.transport ?? ''),
          transportFeatures: Array.isArray((r.transportInfo as { features?: unknown })?.features) ? ((r.transportInfo as { features: string[] }).features) : [],
          ...(code !== 0 ? { error: stderr.trim().split('\n').slice(-3).join(' | ') } : {}),
        };
      }),
    );
    if (progress) clearInterval(progress);
    const seconds = (lastExit - started) / 1000;
    return {
      ok: results.every((r) => r.ok),
      releaseBytes: m.size,
      releaseSha256: m.sha256,
      unitSize: m.unitSize,
      units: m.unitCount,
      serverEgressBytes: srv.stats.unitBytesSent,
      egressRatio: m.size ? srv.stats.unitBytesSent / m.size : 0,
      seconds,
      lossPct: o.lossPct,
      transport: [...new Set(results.map((x) => x.transport).filter(Boolean))].join(',') || 'unknown',
      transportFeatures: [...new Set(results.flatMap((x) => x.transportFeatures))],
      agents: results,
    };
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await srv?.stop();
    if (!o.keepDir) await fs.rm(dir, { recursive: true, force: true });
  }
}

export const demo: Command = {
  spec: {
    name: 'demo',
    summary: 'Loopback demo, no root: a random release, a server and N agents in one group on lo; distributes, verifies and prints what each agent did.',
    usage: 'demo [--agents N] [--size BYTES] [--loss PCT] [--json]',
    flags: {
      agents: { type: 'number', arg: 'N', help: 'number of agents', default: 4 },
      size: { type: 'number', arg: 'BYTES', help: 'release size in bytes', default: 64 * 1024 * 1024 },
      loss: { type: 'number', arg: 'PCT', help: 'share of received datagrams each agent drops', default: 0 },
      'unit-size': { type: 'number', arg: 'BYTES', help: 'unit size', default: 1048576 },
      rate: { type: 'number', arg: 'MBIT', help: 'per-agent LAN send rate in Mbit/s', default: 500 },
      mtu: { type: 'number', arg: 'BYTES', help: 'LAN MTU to size fragments for (loopback itself has 65536)', default: DEMO_MTU },
      json: { type: 'boolean', help: 'print one JSON object instead of a table' },
      keep: { type: 'string', arg: 'DIR', help: 'work in DIR and keep it (default: a temporary directory, removed)' },
    },
  },
  async run(a) {
    const spec = demo.spec;
    const n = a.flags.agents as number;
    const size = a.flags.size as number;
    const loss = a.flags.loss as number;
    if (!Number.isInteger(n) || n < 1 || n > 32) throw usageError(spec, '--agents must be an integer from 1 to 32');
    if (!Number.isSafeInteger(size) || size < 0 || size > 16 * 1024 ** 3) throw usageError(spec, '--size must be an integer from 0 to 16 GiB');
    if (!(loss >= 0 && loss < 100)) throw usageError(spec, '--loss must be from 0 to less than 100');
    const mtu = a.flags.mtu as number;
    if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65536) throw usageError(spec, '--mtu must be an integer from 576 to 65536');
    const bar = new ProgressBar('demo');
    if (!a.flags.json) process.stderr.write(`demo: ${n} agents, ${formatBytes(size)} release, ${loss}% loss, on loopback multicast\n`);
    const r = await runDemo({
      agents: n,
      sizeBytes: size,
      lossPct: loss,
      unitSize: a.flags['unit-size'] as number,
      rateMbit: a.flags.rate as number,
      mtu: a.flags.mtu as number,
      keepDir: a.flags.keep as string | undefined,
      onProgress: a.flags.json ? undefined : (d, t) => bar.update(d, t, `${d}/${t} units`),
    });
    bar.finish();
    if (a.flags.json) {
      process.stdout.write(JSON.stringify(r) + '\n');
    } else {
      process.stdout.write(formatDemoTable(r));
    }
    return r.ok ? ExitCode.OK : ExitCode.FAILURE;
  },
};

export function formatDemoTable(r: DemoResult): string {
  const head = ['agent', 'from WAN', 'from LAN', 'NACKs sent', 'repairs', 'seconds', 'verified'];
  const rows = r.agents.map((x) => [x.id, formatBytes(x.wanBytes), formatBytes(x.lanBytes), String(x.nacksSent), String(x.repairPacketsSent), x.seconds.toFixed(2), x.ok ? 'yes' : `NO${x.error ? ` (${x.error})` : ''}`]);
  const sum = (f: (x: DemoAgentResult) => number) => r.agents.reduce((s, x) => s + f(x), 0);
  rows.push(['total', formatBytes(sum((x) => x.wanBytes)), formatBytes(sum((x) => x.lanBytes)), String(sum((x) => x.nacksSent)), String(sum((x) => x.repairPacketsSent)), r.seconds.toFixed(2), r.ok ? 'all' : 'NOT ALL']);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ').trimEnd();
  return [
    line(head),
    line(w.map((x) => '-'.repeat(x))),
    ...rows.map(line),
    '',
    `release ${formatBytes(r.releaseBytes)} (${r.units} units), server sent ${formatBytes(r.serverEgressBytes)} of unit bytes (${r.egressRatio.toFixed(3)}x the release), ${r.seconds.toFixed(2)} s`,
    `transport ${r.transport}${r.transportFeatures.length ? ` (${r.transportFeatures.join(', ')})` : ''}`,
    r.ok ? 'every agent verified the release' : 'NOT every agent verified the release',
    '',
  ].join('\n');
}
