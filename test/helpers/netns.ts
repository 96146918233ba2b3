import { spawnSync } from './sync';
import { randomBytes } from 'node:crypto';
import test, { ExecutionContext } from 'ava';
import { run, RunResult } from './run';

/**
 * Network-namespace helpers. Namespace tests need root (CAP_SYS_ADMIN) and iproute2.
 * Without them a test is skipped with the reason in its title, except under CI=true,
 * where it must run: there it fails instead. Every namespace is deleted when its
 * test ends, pass or fail. Addresses used live only inside these namespaces.
 */
export function namespaceUnsupported(): string | null {
  if (process.getuid?.() !== 0) return 'needs root for network namespaces';
  const ip = spawnSync('ip', ['-V'], { encoding: 'utf8' });
  if (ip.status !== 0) return 'needs iproute2 (ip)';
  return null;
}

export function namespaceTest(title: string, fn: (t: ExecutionContext) => Promise<void>, opts: { serial?: boolean } = {}): void {
  rootTest(title, fn, namespaceUnsupported(), opts.serial);
}

/** A test that needs root for something (mounts, namespaces): skipped without, failed under CI. */
export function rootTest(title: string, fn: (t: ExecutionContext) => Promise<void>, why: string | null = process.getuid?.() !== 0 ? 'needs root' : null, serial = false): void {
  if (!why) (serial ? test.serial : test)(title, fn);
  else if (process.env.CI === 'true') test(`${title} (cannot run: ${why})`, (t) => t.fail(`namespace tests must run under CI: ${why}`));
  else test.skip(`${title} (skipped: ${why})`, () => {});
}

export type ExecResult = RunResult;

/** Create a namespace, run `setup` (shell lines) inside it, delete it at teardown. */
export async function netns(t: ExecutionContext, setup: string[]): Promise<string> {
  const name = `fc-${process.pid}-${randomBytes(3).toString('hex')}`;
  const add = await run('ip', ['netns', 'add', name]);
  if (add.code !== 0) throw new Error(`ip netns add ${name}: ${add.stderr.trim()}`);
  t.teardown(async () => {
    // Kill whatever still runs inside, then remove the namespace.
    await run('ip', ['netns', 'pids', name]).then(async (r) => {
      for (const pid of r.stdout.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    });
    await run('ip', ['netns', 'del', name]);
  });
  const s = await inNetns(name, 'sh', ['-ec', setup.join('\n')]);
  if (s.code !== 0) throw new Error(`setting up ${name}: ${s.stderr.trim()}`);
  return name;
}

export function inNetns(name: string, cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
  return run('ip', ['netns', 'exec', name, cmd, ...args], opts);
}
