import { setFlagsFromString } from 'node:v8';
import { loadNativeAddon } from './native-addon';

/**
 * Process-wide memory settings for the agent, which runs for months on boxes with little
 * RAM (issue 16: peak RSS at most 64 MiB). bin/fleetcast.js applies them to the `agent`
 * command only; the server and the CLI keep Node's defaults.
 *
 * - glibc's mmap threshold, fixed at 128 KiB (its initial value) through the native
 *   addon. glibc raises it by itself once a large block is freed, after which 1 MiB
 *   unit buffers come from the heap, and the freed ones stay resident: the demo agent's
 *   RSS crept up by ~20 MiB over a 64 MiB release while its live ArrayBuffers stayed
 *   at 10-20 MiB. Fixed, each large buffer is its own mapping, returned when freed.
 *   Without the addon (node:dgram transport) this one is not applied.
 * - V8's young generation stays at its initial size (1 MiB semi-spaces) instead of
 *   growing to 16 MiB ones: the agent's short-lived objects (one per datagram) die in
 *   any size, and a scavenge also frees young ArrayBuffers (HTTP chunks) sooner. The
 *   heap was ~16 MiB at the peak, ~10 MiB with this. (`--max-semi-space-size` would do
 *   the same but only on the command line; the growth factor is read at each growth.)
 */
export const AGENT_MALLOC_MMAP_THRESHOLD_BYTES = 128 * 1024;

export function tuneAgentMemory(): { mallocMmapThreshold: boolean } {
  setFlagsFromString('--semi-space-growth-factor=1');
  const addon = loadNativeAddon();
  const mallocMmapThreshold = typeof addon?.setMallocMmapThreshold === 'function' && addon.setMallocMmapThreshold(AGENT_MALLOC_MMAP_THRESHOLD_BYTES);
  return { mallocMmapThreshold };
}
