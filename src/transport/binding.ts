import { DgramTransport } from './dgram-transport';
import { Transport, TransportOptions } from './transport';
import { ExitCode, FleetcastError } from '../util/errors';

/**
 * The one loader (STYLE.md): picks the transport. FLEETCAST_TRANSPORT=dgram|native
 * forces one. The native UDP socket is not built yet (it is its own issue); until
 * then `native` is refused with that reason and the default is dgram.
 */
export interface NativeAddon {
  sdNotify?: (state: string) => number;
  abiVersion?: number;
}

let addon: NativeAddon | null | undefined;
let addonError = '';

export function loadNativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  for (const p of ['../../../build/Release/fleetcast_native.node', '../../build/Release/fleetcast_native.node']) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      addon = require(p) as NativeAddon;
      return addon;
    } catch (err) {
      addonError = (err as Error).message.split('\n')[0];
    }
  }
  addon = null;
  return addon;
}

export function nativeAddonError(): string {
  return addonError || 'not built (run `npm install` with g++, make and python3 present)';
}

export function createTransport(opts: TransportOptions, env: NodeJS.ProcessEnv = process.env): Transport {
  const forced = env.FLEETCAST_TRANSPORT;
  if (forced && forced !== 'dgram' && forced !== 'native') {
    throw new FleetcastError('BAD_ENV', `FLEETCAST_TRANSPORT must be "dgram" or "native", not ${JSON.stringify(forced)}`, ExitCode.CONFIG);
  }
  if (forced === 'native') {
    throw new FleetcastError('NO_NATIVE', 'FLEETCAST_TRANSPORT=native: the native UDP transport is not implemented yet; use dgram', ExitCode.CONFIG);
  }
  return new DgramTransport(opts, forced === 'dgram' ? undefined : 'the native UDP socket is not implemented yet');
}
