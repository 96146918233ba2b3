import * as path from 'node:path';

/**
 * Loads the C++ addon (build/Release/fleetcast_native.node) once, for every layer: util's
 * sd_notify uses it as well as the transports. The one loader with its fallback and the
 * transport's view of the addon (its UdpSocket) stay in src/transport/binding.ts.
 */
export interface NativeAddonExports {
  sdNotify?: (socket: string, state: string) => number;
  /** mallopt(M_MMAP_THRESHOLD) under glibc; see memory-tuning.ts. */
  setMallocMmapThreshold?: (bytes: number) => boolean;
  /** mallopt(M_ARENA_MAX) under glibc; see memory-tuning.ts. */
  setMallocArenaMax?: (arenas: number) => boolean;
  /** malloc_trim(0) under glibc: true when memory went back to the kernel. */
  mallocTrim?: () => boolean;
  /** Unmaps the pages of read-only file mappings that hold no private copy; see memory-tuning.ts. */
  dropCleanFilePages?: () => number;
  abiVersion?: number;
}

let addon: NativeAddonExports | null | undefined;
let addonError = '';

export function loadNativeAddon(): NativeAddonExports | null {
  if (addon !== undefined) return addon;
  // dist/src/util -> repo root
  const file = path.join(__dirname, '..', '..', '..', 'build', 'Release', 'fleetcast_native.node');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    addon = require(file) as NativeAddonExports;
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    addonError = (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' ? `${file} is not built` : msg;
    addon = null;
  }
  return addon;
}

/** Why the addon did not load, and how to fix it. */
export function nativeAddonError(): string {
  return `${addonError || 'unknown error'} (rebuild it with \`npm rebuild\`, which needs g++, make and python3)`;
}
