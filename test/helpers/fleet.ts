import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { run, RunResult } from './run';
import { generateKeyPair, loadPrivateKey } from '../../src/release/keys';
import { Manifest } from '../../src/release/manifest';
import { publishRelease } from '../../src/release/publish';
import { FleetcastServer, ServerOptions } from '../../src/server/server';
import { AllocatorOptions } from '../../src/server/allocator';

export const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'fleetcast.js');

export interface Fleet {
  dir: string;
  pubPath: string;
  keyPath: string;
  manifest: Manifest;
  source: Buffer;
  server: FleetcastServer;
  url: string;
  multicast: string;
  agentArgs(id: string, extra?: string[]): string[];
  spawnAgent(id: string, extra?: string[]): AgentProc;
}

export interface AgentProc {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exit: Promise<number | null>;
}

/** A temporary directory removed when the test ends, pass or fail. */
export async function tmpdir(t: ExecutionContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-test-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Poll `cond` every 20 ms until it holds; a hang guard (not an assertion) after `limitMs`. */
export async function until(cond: () => boolean, what: string, limitMs = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > limitMs) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(process.execPath, [BIN, ...args], { timeoutMs: 60_000, ...opts });
}

/**
 * Keys, a random release of `size` bytes, a server on 127.0.0.1 and a random
 * multicast group on lo. Every process and the server stop when the test ends.
 */
export async function startFleet(
  t: ExecutionContext,
  opts: { size: number; unitSize?: number; heartbeatMs?: number; memberTimeoutMs?: number; server?: Partial<ServerOptions>; allocator?: Partial<AllocatorOptions> },
): Promise<Fleet> {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const source = randomBytes(opts.size);
  const file = path.join(dir, 'release.bin');
  await fs.writeFile(file, source);
  const manifest = await publishRelease(file, path.join(dir, 'store'), await loadPrivateKey(keyPath), { name: 'release.bin', unitSize: opts.unitSize });
  const server = new FleetcastServer({
    storeDir: path.join(dir, 'store'),
    host: '127.0.0.1',
    port: 0,
    heartbeatMs: opts.heartbeatMs ?? 200,
    allocator: { memberTimeoutMs: opts.memberTimeoutMs ?? 2000, ...opts.allocator },
    // Every agent of a loopback fleet comes from 127.0.0.1: one "client" to the per-client
    // connection cap (64), which guards against one real box. Tests of the limits give theirs.
    limits: { maxConnectionsPerClient: 1024 },
    ...opts.server,
  });
  const { url } = await server.start();
  const children: ChildProcess[] = [];
  t.teardown(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await server.stop();
  });
  const multicast = `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}:${randomInt(20000, 60000)}`;
  const agentArgs = (id: string, extra: string[] = []) => [
    'agent', '--server', url, '--plain-http', '--group', 'g1', '--interface', '127.0.0.1', '--multicast', multicast, '--status-socket', 'none',
    '--storage', path.join(dir, id), '--trust', pubPath, '--release', manifest.id, '--once', '--member', id,
    '--linger', '20', '--timeout', '100', '--log-level', 'warn', ...extra,
  ];
  const spawnAgent = (id: string, extra: string[] = []): AgentProc => {
    const child = spawn(process.execPath, [BIN, ...agentArgs(id, extra)], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    // 'exit' can come before the last of stdout is read (a loaded box): wait for both pipes
    // to close too, but not past 5 s (a child of the agent, as an exec: sink, may hold them).
    const closed = (s: NodeJS.ReadableStream) => new Promise<void>((r) => s.once('close', () => r()));
    const pipes = Promise.all([closed(child.stdout!), closed(child.stderr!)]);
    const exit = new Promise<number | null>((resolve) =>
      child.on('exit', (c) => void Promise.race([pipes, new Promise((r) => setTimeout(r, 5000).unref())]).then(() => resolve(c))),
    );
    return { child, stdout: () => out, stderr: () => err, exit };
  };
  return { dir, pubPath, keyPath, manifest, source, server, url, multicast, agentArgs, spawnAgent };
}
