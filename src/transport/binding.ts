import type { DgramTransport } from './dgram-transport';
import { NativeTransport, NativeUdpAddon } from './native-transport';
import { Transport, TransportOptions } from './transport';
import { ExitCode, FleetcastError } from '../util/errors';
import { loadNativeAddon as loadAddon, NativeAddonExports, nativeAddonError } from '../util/native-addon';

/**
 * The one loader (STYLE.md, after sharp's and ws's): loads the addon; when it
 * cannot, the node:dgram transport behind the same interface takes over and says
 * why, once. FLEETCAST_TRANSPORT=dgram|native forces one.
 */
export interface NativeAddon extends NativeAddonExports, Partial<NativeUdpAddon> {}

let warned = false;

/* eslint-disable @typescript-eslint/no-require-imports */
/** node:dgram is loaded only for the fallback (issue 16: an agent on the addon does not carry it). */
const dgramTransport = (): typeof DgramTransport => (require('./dgram-transport') as typeof import('./dgram-transport')).DgramTransport;
/* eslint-enable @typescript-eslint/no-require-imports */

/** The addon as the transports see it; loaded once by src/util/native-addon.ts. */
export function loadNativeAddon(): NativeAddon | null {
  return loadAddon() as NativeAddon | null;
}

export { nativeAddonError };

export type TransportChoice = 'native' | 'dgram';

export function createTransport(opts: TransportOptions, env: NodeJS.ProcessEnv = process.env, warn: (msg: string) => void = (m) => process.stderr.write(`warn: ${m}\n`)): Transport {
  const forced = env.FLEETCAST_TRANSPORT;
  if (forced && forced !== 'dgram' && forced !== 'native') {
    throw new FleetcastError('BAD_ENV', `FLEETCAST_TRANSPORT must be "dgram" or "native", not ${JSON.stringify(forced)}`, ExitCode.CONFIG);
  }
  if (forced === 'dgram') return new (dgramTransport())(opts);
  const a = loadNativeAddon();
  const usable = a && typeof a.UdpSocket === 'function';
  if (usable) return new NativeTransport(a as NativeUdpAddon, opts);
  const reason = a ? 'the native addon has no UdpSocket (built from older sources; run `npm rebuild`)' : `the native addon did not load: ${nativeAddonError()}`;
  if (forced === 'native') throw new FleetcastError('NO_NATIVE', `FLEETCAST_TRANSPORT=native, but ${reason}`, ExitCode.CONFIG);
  if (!warned) {
    warned = true;
    warn(`using the node:dgram transport because ${reason}`);
  }
  return new (dgramTransport())(opts, reason);
}
