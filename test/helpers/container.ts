import { spawn } from 'node:child_process';
import { spawnSync } from './sync';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { ExecutionContext } from 'ava';
import { run, RunResult } from './run';

/**
 * A real systemd booted in its own container, for tests that run the units as installed.
 *
 * `systemd-nspawn --volatile=yes -D /` boots this machine's own /usr with an empty tmpfs
 * as the root: /etc, /var and /tmp start empty and vanish with the container, so the
 * container's systemd (its tmpfiles, its units) never touches the machine's files.
 * Never boot systemd against the machine's own root: its tmpfiles would clean /tmp.
 * `--private-network` gives it a network namespace of its own (only lo), so nothing it
 * starts can reach any other address.
 *
 * Killing systemd-nspawn leaves the container's init running, so the container is
 * stopped through its init: SIGRTMIN+4 asks systemd to power off (systemd(1), "Signals").
 * With --register=no there is no machined to ask, so commands run with nsenter.
 */

/** Why containers cannot be booted here, or null. */
export function containerUnsupported(): string | null {
  if (process.getuid?.() !== 0) return 'needs root to boot a systemd container';
  if (spawnSync('systemd-nspawn', ['--version']).status !== 0) return 'needs systemd-nspawn (Debian package systemd-container)';
  if (!existsSync('/usr/lib/systemd/systemd') && !existsSync('/lib/systemd/systemd')) return 'needs systemd installed under /usr (the container boots it)';
  if (spawnSync('nsenter', ['--version']).status !== 0) return 'needs nsenter (util-linux)';
  return null;
}

export interface Container {
  /** PID of the container's init (systemd), as seen from this machine. */
  pid: number;
  /** Run a shell script inside the container, as root, with a clean environment. */
  sh(script: string, opts?: { timeoutMs?: number }): Promise<RunResult>;
  /** `systemctl show -p ...` of a unit as an object. */
  show(unit: string, props: string[]): Promise<Record<string, string>>;
  /** What systemd-nspawn printed so far (the boot log). */
  console(): string;
}

export interface BootOptions {
  /** Host paths bound read-only at the same path inside. */
  bindRo?: string[];
  /** Host paths bound read-write at the same path inside. */
  bind?: string[];
  /** Extra systemd-nspawn options (for example --tmpfs=/usr/local or --overlay=...). */
  extra?: string[];
}

// glibc's SIGRTMIN is 34; systemd takes SIGRTMIN+4 as "power off" (systemd(1)).
const SIGRTMIN = 34;
const POWEROFF = SIGRTMIN + 4;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Whether `p` settles within `ms`; the timer is cleared either way, so it keeps no worker alive. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The container's init: the child of systemd-nspawn that is PID 1 in its own PID
 * namespace. (nspawn's short-lived outer child is listed first for a moment.)
 */
async function containerInit(nspawnPid: number): Promise<number | null> {
  const txt = await readFile(`/proc/${nspawnPid}/task/${nspawnPid}/children`, 'utf8').catch(() => '');
  for (const c of txt.trim().split(/\s+/).filter(Boolean)) {
    const status = await readFile(`/proc/${c}/status`, 'utf8').catch(() => '');
    if (/^NSpid:\s+\d+\s+1\s*$/m.test(status)) return Number(c);
  }
  return null;
}

/** Boot a container; it is powered off (and, if it does not go, killed) at the test's teardown. */
export async function bootContainer(t: ExecutionContext, opts: BootOptions = {}): Promise<Container> {
  const machine = `fctest-${process.pid}-${randomBytes(3).toString('hex')}`;
  const args = [
    '--quiet', '--keep-unit', '--register=no', '--volatile=yes', '-D', '/', `--machine=${machine}`,
    '--private-network', '--console=read-only',
    ...(opts.bindRo ?? []).map((p) => `--bind-ro=${p}`),
    ...(opts.bind ?? []).map((p) => `--bind=${p}`),
    ...(opts.extra ?? []),
    // systemd-networkd-wait-online waits 2 minutes for a link to come up, and the container's
    // only link is lo: boot would not finish until it gives up (systemd reads its arguments
    // in a container as the kernel command line: systemd.mask=, kernel-command-line(7)).
    '-b', '--', 'systemd.firstboot=off', 'systemd.mask=systemd-networkd-wait-online.service',
  ];
  const nspawn = spawn('systemd-nspawn', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  nspawn.stdout!.on('data', (d) => (out = (out + d).slice(-200_000)));
  nspawn.stderr!.on('data', (d) => (out = (out + d).slice(-200_000)));
  const exited = new Promise<void>((resolve) => nspawn.on('exit', () => resolve()));
  let init: number | null = null;
  let reaper: ReturnType<typeof spawn> | null = null;

  t.teardown(async () => {
    reaper?.kill('SIGKILL');
    // Booting may have failed before the init was known: look once more.
    if ((!init || !alive(init)) && nspawn.pid && nspawn.exitCode === null) init = await containerInit(nspawn.pid);
    if (init && alive(init)) {
      try {
        process.kill(init, POWEROFF);
      } catch {
        /* gone */
      }
      const done = await within(exited, 60_000);
      // A container that does not power off is killed through its init: SIGKILL to a
      // PID namespace's init ends every process in it.
      if (!done && alive(init)) process.kill(init, 'SIGKILL');
    }
    const done = await within(exited, 10_000);
    if (!done && nspawn.exitCode === null) nspawn.kill('SIGKILL');
  });

  for (let i = 0; i < 200 && !init; i++) {
    if (nspawn.exitCode !== null) throw new Error(`systemd-nspawn exited with ${nspawn.exitCode}: ${out}`);
    init = nspawn.pid ? await containerInit(nspawn.pid) : null;
    if (!init) await sleep(100);
  }
  if (!init) throw new Error(`the container's init did not appear: ${out}`);
  const pid = init;
  // If this process dies before its teardown (a runner that times out kills its workers),
  // a detached watcher powers the container off, then kills its init.
  reaper = spawn('/bin/sh', ['-c', `while kill -0 ${process.pid} 2>/dev/null; do sleep 2; done; kill -s RTMIN+4 ${pid}; sleep 60; kill -9 ${pid}`], { detached: true, stdio: 'ignore' });
  reaper.unref();

  const sh = (script: string, o: { timeoutMs?: number } = {}) =>
    run('nsenter', ['--target', String(pid), '--all', '--', '/usr/bin/env', '-i', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', 'LANG=C.UTF-8', '/bin/sh', '-c', script], {
      timeoutMs: o.timeoutMs ?? 60_000,
    });
  const show = async (unit: string, props: string[]) => {
    const r = await sh(`systemctl show ${props.map((p) => `-p ${p}`).join(' ')} ${unit}`);
    return Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  };

  // Until systemd answers and has finished booting ("degraded": some unit of this
  // machine's own set failed in a container; ours are checked one by one).
  let state = '';
  for (let i = 0; i < 120; i++) {
    const r = await sh('systemctl is-system-running --wait', { timeoutMs: 120_000 });
    state = r.stdout.trim();
    if (state === 'running' || state === 'degraded') break;
    await sleep(500);
  }
  if (state !== 'running' && state !== 'degraded') throw new Error(`the container's systemd did not finish booting (${state}): ${out}`);
  return { pid, sh, show, console: () => out };
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll `probe` until it gives a truthy value; throw naming `what` after `ms`. */
export async function until<T>(what: string, ms: number, probe: () => Promise<T | null | undefined | false>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await pause(250);
  }
}

/** Run a script in the container; fail the test with its output when it does not exit 0. */
export async function ok(t: ExecutionContext, c: Container, script: string, timeoutMs = 60_000): Promise<string> {
  const r = await c.sh(script, { timeoutMs });
  t.is(r.code, 0, `${script}\n${r.stdout}${r.stderr}`);
  if (r.code !== 0) throw new Error(`in the container: ${script.split('\n')[0]}...: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The journal of one unit in the container, without timestamps. */
export const journal = (c: Container, unit: string) => c.sh(`journalctl -q -o cat --no-pager -u ${unit}`).then((r) => r.stdout);
