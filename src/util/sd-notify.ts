import { loadNativeAddon } from './native-addon';

/** sd_notify(3) through the native addon; a no-op when there is no addon or no NOTIFY_SOCKET. */
export function sdNotify(state: string, socket: string | undefined = process.env.NOTIFY_SOCKET): number {
  if (!socket) return 0;
  const a = loadNativeAddon();
  return a?.sdNotify ? a.sdNotify(socket, state) : 0;
}

/**
 * systemd's watchdog: when the service manager set WATCHDOG_USEC (WatchdogSec=) for
 * this process, send WATCHDOG=1 at half that interval from the event loop, so a
 * wedged loop gets the service restarted. Returns a stop function.
 */
export function startWatchdog(env: NodeJS.ProcessEnv = process.env): () => void {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.NOTIFY_SOCKET || !Number.isFinite(usec) || usec <= 0) return () => undefined;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== process.pid) return () => undefined;
  const every = Math.max(50, Math.floor(usec / 2000));
  sdNotify('WATCHDOG=1', env.NOTIFY_SOCKET);
  const t = setInterval(() => sdNotify('WATCHDOG=1', env.NOTIFY_SOCKET), every);
  t.unref();
  return () => clearInterval(t);
}

/** STATUS= lines, at most one a second unless `force` (state changes). */
export function statusNotifier(): (line: string, force?: boolean) => void {
  let last = 0;
  let lastLine = '';
  return (line, force = false) => {
    const now = Date.now();
    if (line === lastLine || (!force && now - last < 1000)) return;
    last = now;
    lastLine = line;
    sdNotify(`STATUS=${line}`);
  };
}
