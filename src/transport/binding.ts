import { DgramTransport } from './dgram-transport';
import { NativeTransport, NativeUdpAddon } from './native-transport';
import { Transport, TransportOptions } from './transport';
import { ExitCode, FleetcastError } from '../util/errors';
import * as path from 'node:path';

/**
 * The one loader (STYLE.md, after sharp's and ws's): loads the addon; when it
 * cannot, the node:dgram transport behind the same interface takes over and says
 * why, once. FLEETCAST_TRANSPORT=dgram|native forces one.
 */
export interface NativeAddon extends Partial<NativeUdpAddon> {
  sdNotify?: (socket: string, state: string) => number;
  abiVersion?: number;
}

let addon: NativeAddon | null | undefined;
let addonError = '';
let warned = false;

export function loadNativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  // dist/src/transport -> repo root
  const file = path.join(__dirname, '..', '..', '..', 'build', 'Release', 'fleetcast_native.node');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    addon = require(file) as NativeAddon;
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    addonError = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' ? `${file} is not built` : msg;
    addon = null;
  }
  return addon;
}

export function nativeAddonError(): string {
  return `${addonError || 'unknown error'} (rebuild it with \`npm rebuild\`, which needs g++, make and python3)`;
}

export type TransportChoice = 'native' | 'dgram';

export function createTransport(opts: TransportOptions, env: NodeJS.ProcessEnv = process.env, warn: (msg: string) => void = (m) => process.stderr.write(`warn: ${m}\n`)): Transport {
  const forced = env.FLEETCAST_TRANSPORT;
  if (forced && forced !== 'dgram' && forced !== 'native') {
    throw new FleetcastError('BAD_ENV', `FLEETCAST_TRANSPORT must be "dgram" or "native", not ${JSON.stringify(forced)}`, ExitCode.CONFIG);
  }
  if (forced === 'dgram') return new DgramTransport(opts);
  const a = loadNativeAddon();
  const usable = a && typeof a.UdpSocket === 'function';
  if (usable) return new NativeTransport(a as NativeUdpAddon, opts);
  const reason = a ? 'the native addon has no UdpSocket (built from older sources; run `npm rebuild`)' : `the native addon did not load: ${nativeAddonError()}`;
  if (forced === 'native') throw new FleetcastError('NO_NATIVE', `FLEETCAST_TRANSPORT=native, but ${reason}`, ExitCode.CONFIG);
  if (!warned) {
    warned = true;
    warn(`using the node:dgram transport because ${reason}`);
  }
  return new DgramTransport(opts, reason);
}
