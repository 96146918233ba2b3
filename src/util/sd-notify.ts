import { loadNativeAddon } from '../transport/binding';

/** sd_notify(3) through the native addon; a no-op when there is no addon or no NOTIFY_SOCKET. */
export function sdNotify(state: string, socket: string | undefined = process.env.NOTIFY_SOCKET): number {
  if (!socket) return 0;
  const a = loadNativeAddon();
  return a?.sdNotify ? a.sdNotify(socket, state) : 0;
}
