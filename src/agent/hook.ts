import { Logger } from '../util/log';

/** Loaded when a hook first runs (issue 16): an agent without hooks does not pay for child_process. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const childProcess = (): typeof import('node:child_process') => require('node:child_process') as typeof import('node:child_process');

export interface HookResult {
  /** Exit status; absent when killed by a signal or it could not start. */
  exitCode?: number;
  signal?: string;
  durationMs: number;
  error?: string;
}

/**
 * Run the `on_complete` command through /bin/sh with the release's facts in its
 * environment (FLEETCAST_FILE, FLEETCAST_RELEASE_ID, ...). Its output goes to our log,
 * a line at a time. A hook running past `timeoutMs` gets SIGTERM, then SIGKILL 5 s later.
 */
export function runHook(command: string, env: Record<string, string>, timeoutMs: number, log: Logger): Promise<HookResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    let child;
    try {
      child = childProcess().spawn('/bin/sh', ['-c', command], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      resolve({ durationMs: 0, error: `cannot start: ${(err as Error).message}` });
      return;
    }
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      log.warn(`hook still running after ${timeoutMs / 1000} s: sending SIGTERM`);
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), 5000);
    }, timeoutMs);
    const relay = (stream: NodeJS.ReadableStream, warn: boolean) => {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const lines = (rest + chunk).split('\n');
        rest = lines.pop() ?? '';
        for (const l of lines) (warn ? log.warn : log.info)(`hook: ${l}`);
        if (rest.length > 4096) {
          (warn ? log.warn : log.info)(`hook: ${rest}`);
          rest = '';
        }
      });
      stream.on('end', () => {
        if (rest) (warn ? log.warn : log.info)(`hook: ${rest}`);
      });
    };
    relay(child.stdout, false);
    relay(child.stderr, true);
    let startError: string | undefined;
    child.on('error', (err) => {
      startError = err.message;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      const r: HookResult = { durationMs: Date.now() - started };
      if (code !== null) r.exitCode = code;
      if (signal) r.signal = signal;
      if (startError) r.error = `cannot start: ${startError}`;
      else if (timedOut) r.error = `timed out after ${timeoutMs / 1000} s`;
      resolve(r);
    });
  });
}
