import { ChildProcess, spawn } from 'node:child_process';
import { ExecutionContext } from 'ava';
import { BIN } from './fleet';
import { freePort } from './ports';

/** One `fleetcast server` process of several on a shared engine (docs/scale-out.md); tests that start them. */

export interface Coordinator {
  url: string;
  child: ChildProcess;
  log(): string;
  exit: Promise<number | null>;
}


export async function hangGuard(cond: () => Promise<boolean> | boolean, what: string, limitMs = 90_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > limitMs) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startCoordinator(t: ExecutionContext, store: string, engine: string, extra: string[] = []): Promise<Coordinator> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(process.execPath, [BIN, 'server', '--store', store, '--listen', `127.0.0.1:${port}`, '--plain-http', '--engine', engine, '--instance-url', url,
    '--heartbeat-ms', '200', '--min-members', '3', '--max-wait', '60', '--max-connections-per-client', '1024', '--log-level', 'info', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
  });
  await hangGuard(() => {
    if (child.exitCode !== null) throw new Error(`coordinator exited ${child.exitCode}: ${log}`);
    return /listening on/.test(log);
  }, `coordinator ${url} listening`, 30_000);
  return { url, child, log: () => log, exit };
}
