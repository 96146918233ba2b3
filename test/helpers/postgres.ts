import { ChildProcess, spawn } from 'node:child_process';
import { spawnSync } from './sync';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { freePort } from './ports';

/**
 * A real PostgreSQL (Debian's package `postgresql`; .ci/run installs it) in a temporary
 * directory on a private port of 127.0.0.1, the shared engine of several coordinators
 * (docs/scale-out.md). PostgreSQL refuses to run as root, so initdb and the postmaster
 * run as the `postgres` user (setpriv execs, so the PID we hold is the postmaster's).
 * stop() and start() again keep the data (the "engine stopped" test); the server is
 * stopped by its PID and the directory removed in t.teardown, also when the test fails.
 */
export interface Postgres {
  url: string;
  port: number;
  pid(): number;
  /** Fast shutdown (SIGINT: open sessions are cut), waits for the postmaster to exit. */
  stop(): Promise<void>;
  /** Start again on the same data and port, ready when it returns. */
  start(): Promise<void>;
}

const BIN_DIRS = ['/usr/lib/postgresql/17/bin', '/usr/lib/postgresql/16/bin', '/usr/lib/postgresql/15/bin', '/usr/lib/postgresql/14/bin'];

/** The directory holding initdb and postgres, or null when PostgreSQL is not installed. */
export function postgresBinDir(): string | null {
  for (const d of BIN_DIRS) if (spawnSync(path.join(d, 'postgres'), ['--version']).status === 0) return d;
  return null;
}

/** Why the coordinator tests cannot run here, or null (rootTest's reason). */
export function postgresUnsupported(): string | null {
  if (process.getuid?.() !== 0) return 'needs root to run PostgreSQL as the postgres user';
  if (!postgresBinDir()) return 'needs PostgreSQL (apt-get install postgresql; .ci/run does)';
  if (spawnSync('id', ['-u', 'postgres']).status !== 0) return 'needs the postgres user (the postgresql package makes it)';
  return null;
}

function asPostgres(cmd: string, args: string[]): [string, string[]] {
  return ['setpriv', ['--reuid', 'postgres', '--regid', 'postgres', '--init-groups', '--', cmd, ...args]];
}

export async function startPostgres(t: ExecutionContext): Promise<Postgres> {
  const bin = postgresBinDir();
  if (!bin) throw new Error('PostgreSQL is not installed (apt-get install postgresql; .ci/run does)');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-pg-'));
  await fs.chmod(dir, 0o755);
  const data = path.join(dir, 'data');
  spawnSync('chown', ['postgres:postgres', dir]);
  const port = await freePort();
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  let log = '';
  const stop = async () => {
    const c = child;
    if (c && c.exitCode === null && c.signalCode === null) {
      c.kill('SIGINT'); // fast shutdown
      const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
  };
  t.teardown(async () => {
    await stop();
    await fs.rm(dir, { recursive: true, force: true });
  });
  const [cmd, args] = asPostgres(path.join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync']);
  const init = spawnSync(cmd, args, { encoding: 'utf8' });
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}${init.stdout}`);
  const start = async () => {
    const [c, a] = asPostgres(path.join(bin, 'postgres'), ['-D', data, '-k', dir, '-h', '127.0.0.1', '-p', String(port), '-c', 'fsync=off', '-c', 'max_connections=50']);
    const p = spawn(c, a, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = p;
    p.stderr!.on('data', (d) => (log = (log + d).slice(-8000)));
    exited = new Promise<void>((resolve) => p.on('exit', () => resolve()));
    for (let i = 0; ; i++) {
      if (p.exitCode !== null) throw new Error(`postgres exited ${p.exitCode}: ${log}`);
      if (/ready to accept connections/.test(log.split('\n').slice(-5).join('\n')) && (await canConnect(port))) break;
      if (i > 600) throw new Error(`postgres did not become ready within 30 s: ${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await start();
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, pid: () => child?.pid ?? 0, stop, start };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}
