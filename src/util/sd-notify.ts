import { loadNativeAddon } from '../transport/binding';

/** sd_notify(3) through the native addon; a no-op when there is no addon or no NOTIFY_SOCKET. */
export function sdNotify(state: string): number {
  if (!process.env.NOTIFY_SOCKET) return 0;
  const a = loadNativeAddon();
  return a?.sdNotify ? a.sdNotify(state) : 0;
}
