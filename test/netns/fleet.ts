import { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../../src/release/keys';
import { Manifest } from '../../src/release/manifest';
import { publishRelease } from '../../src/release/publish';
import { Host, Topology } from './topology';

export const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'fleetcast.js');
export const MCAST_PORT = 7601;

export interface NetAgent {
  host: Host;
  id: string;
  child: ChildProcess;
  exit: Promise<number | null>;
  stderr(): string;
  report(): Promise<Record<string, unknown> & { path: string; wanBytes: number; lanBytes: number; seconds: number }>;
}

/**
 * A release, a server in the topology's server namespace and agents in theirs,
 * all through the CLI as users run it. Files live in one temporary directory
 * (namespaces share the file system); `cleanup()` removes it.
 */
export async function netFleet(topo: Topology, o: { sizeBytes: number; unitSize?: number; heartbeatMs?: number }) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-netns-'));
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const source = randomBytes(o.sizeBytes);
  await fs.writeFile(path.join(dir, 'release.bin'), source);
  const manifest: Manifest = await publishRelease(path.join(dir, 'release.bin'), path.join(dir, 'store'), await loadPrivateKey(keyPath), { name: 'release.bin', unitSize: o.unitSize });
  const sourceSha = createHash('sha256').update(source).digest('hex');
  let serverErr = '';
  const server = topo.exec(topo.server.ns, [process.execPath, BIN, 'server', '--plain-http', '--store', path.join(dir, 'store'), '--listen', '0.0.0.0:7600', '--heartbeat-ms', String(o.heartbeatMs ?? 250), '--log-level', 'warn']);
  server.stderr!.on('data', (d) => (serverErr += d));
  // Wait until the server answers inside its namespace.
  for (let i = 0; ; i++) {
    const r = await topo.run(topo.server.ns, [process.execPath, '-e', 'fetch("http://127.0.0.1:7600/v1/releases").then(r=>process.exit(r.ok?0:1),()=>process.exit(1))']);
    if (r.code === 0) break;
    if (i > 100) throw new Error(`server did not start: ${serverErr}`);
    await new Promise((r2) => setTimeout(r2, 50));
  }

  const startAgent = (host: Host, id: string, group: string, extra: string[] = []): NetAgent => {
    const report = path.join(dir, `${id}.json`);
    const child = topo.exec(host.ns, [
      process.execPath, BIN, 'agent', '--server', topo.serverUrl(host), '--plain-http', '--group', group, '--interface', host.lanAddress,
      '--multicast', `239.200.0.1:${MCAST_PORT}`, '--status-socket', 'none', '--storage', path.join(dir, id), '--trust', pubPath, '--release', manifest.id,
      '--once', '--member', id, '--report', report, '--linger', '30', '--timeout', '300', '--log-level', 'warn', ...extra,
    ]);
    let err = '';
    child.stderr!.on('data', (d) => (err = (err + d).slice(-4000)));
    child.stdout!.resume();
    const exit = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    return { host, id, child, exit, stderr: () => err, report: async () => JSON.parse(await fs.readFile(report, 'utf8')) };
  };

  const serverStats = async (): Promise<{ unitBytesSent: number; unitBytesSentByGroup: Record<string, number> }> => {
    const r = await topo.run(topo.server.ns, [process.execPath, '-e', 'fetch("http://127.0.0.1:7600/v1/stats").then(r=>r.text()).then(t=>process.stdout.write(t))']);
    return JSON.parse(r.stdout);
  };

  const cleanup = async () => {
    server.kill('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  };
  return { dir, manifest, sourceSha, startAgent, serverStats, cleanup };
}
