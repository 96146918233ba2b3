import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
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
 *   Lower (32 and 64 KiB, so that 64 KiB socket reads get mappings too) was measured in
 *   round 5 and not kept: at 2 GiB the peak did not move (the bytes left the malloc heap
 *   and showed up as ArrayBuffers not yet collected), and at 32 KiB the agents' CPU rose
 *   8-11% (bench/results/demo.md).
 *   Without the addon (node:dgram transport) this one is not applied.
 * - One malloc arena (mallopt(M_ARENA_MAX), through the addon, before libuv's pool and
 *   V8's platform threads first allocate; MALLOC_ARENA_MAX=1 without the environment):
 *   each thread that allocates otherwise gets an arena of its own, whose freed memory
 *   stays resident apart from the main one's.
 * - malloc_trim(0) after each full GC the heap ceiling forces (checkAgentHeap): the GC
 *   frees the backing stores of dead socket reads and HTTP chunks, which came from
 *   malloc, and the holes they leave stay resident until trimmed (glibc gives back only
 *   the heap's top by itself). At 2 GiB "other anonymous" memory was 14 MiB and grew
 *   with the release. Trimming at every check (250 ms) instead saved ~1 MiB more at
 *   256 MiB but cost ~5% more agent CPU (freed pages fault back in when reused).
 * - V8's young generation stays at its initial size (1 MiB semi-spaces) instead of
 *   growing to 16 MiB ones: the agent's short-lived objects (one per datagram) die in
 *   any size, and a scavenge also frees young ArrayBuffers (HTTP chunks) sooner. The
 *   heap was ~16 MiB at the peak, ~10 MiB with this. (`--max-semi-space-size` would do
 *   the same but only on the command line; the growth factor is read at each growth.)
 * - A ceiling on the V8 heap (checkAgentHeap, from the driver's data path): with
 *   unit buffers and datagram arenas reused, little external memory is allocated, and
 *   that was what made V8 run full GCs; promoted garbage (datagram views, chunks, promises
 *   that outlived two 1 MiB scavenges) then grew the heap to 20+ MiB before V8's first
 *   full GC of its own. Past the ceiling the agent runs one itself, at most every
 *   HEAP_CHECK_MS; the ceiling follows what survives (x1.5), so a large live heap does
 *   not make it collect at every check. (`--max-old-space-size` is read only at startup.)
 *   8 MiB, was 12 (issue 16, 3 agents, 512 MiB, 5 runs each, back to back): median peak
 *   73.8 -> 72.2 MiB, heap 13.9 -> 11.9 MiB at the peak, 1 -> 2-3 forced GCs per agent,
 *   agent CPU 3.36-3.43 -> 3.42-3.55 s.
 * - Node's clean file pages dropped from the resident set (checkAgentHeap, at most every
 *   FILE_PAGES_DROP_MS, through the addon's dropCleanFilePages). What the agent touched of
 *   node's binary and libraries while starting (the loader, every builtin's compile, the
 *   CLI, fault-around) stays mapped until the box runs short: ~42 MiB of a demo agent's
 *   ~72 MiB peak was file-backed, against 33 MiB for a bare `node -e`. The addon unmaps
 *   (madvise MADV_DONTNEED) the read-only file mappings that hold no private copy (no
 *   `Anonymous` pages in smaps, so never RELRO or anything written); a page used again
 *   faults back from the page cache, so what stays is what the transfer uses. An agent
 *   that is up also drops them once START_FILE_PAGES_DROP_MS after READY, for an idle
 *   follower that sees no datagram (dropFilePagesAfterStart). The pages
 *   stay in the page cache, where the kernel can now reclaim them first. Android's app
 *   compaction does the same to the file pages of cached apps (AppCompactor, "file"
 *   compaction). Issue 16, 3 agents, runs alternating: peak at 512 MiB 71.2-71.7 -> 55.2-55.3
 *   MiB, at 2 GiB 74.0-76.7 -> 55.5-55.7 MiB, agent CPU no higher (bench/results/demo.md,
 *   round 8). Scanning smaps and advising takes ~3 ms; pages in use fault back at once.
 */
export const AGENT_MALLOC_MMAP_THRESHOLD_BYTES = 128 * 1024;
export const AGENT_MALLOC_ARENAS = 1;

export const AGENT_HEAP_CEILING_BYTES = 8 * 1024 * 1024;
const HEAP_CHECK_MS = 250;
export const FILE_PAGES_DROP_MS = 5000;
/** How long after READY an agent drops the file pages of its start (dropFilePagesAfterStart). */
export const START_FILE_PAGES_DROP_MS = 10_000;

let collect: (() => void) | null = null;
let trim: (() => boolean) | null = null;
let dropFilePages: (() => number) | null = null;
let lastFileDrop = -Infinity;
let ceiling = AGENT_HEAP_CEILING_BYTES;
let lastCheck = 0;
/** Full GCs run by checkAgentHeap (tests, logs). */
export const heapCollections = { count: 0 };
/** Times checkAgentHeap dropped node's clean file pages (tests, logs). */
export const filePageDrops = { count: 0 };

export function tuneAgentMemory(): { mallocMmapThreshold: boolean; mallocArenas: boolean } {
  setFlagsFromString('--semi-space-growth-factor=1');
  // gc() of a context made after the flag (the main one was made before); ~0.5 MiB.
  setFlagsFromString('--expose-gc');
  collect = runInNewContext('gc') as () => void;
  const addon = loadNativeAddon();
  const mallocMmapThreshold = typeof addon?.setMallocMmapThreshold === 'function' && addon.setMallocMmapThreshold(AGENT_MALLOC_MMAP_THRESHOLD_BYTES);
  const mallocArenas = typeof addon?.setMallocArenaMax === 'function' && addon.setMallocArenaMax(AGENT_MALLOC_ARENAS);
  if (typeof addon?.mallocTrim === 'function') trim = addon.mallocTrim;
  if (typeof addon?.dropCleanFilePages === 'function') dropFilePages = addon.dropCleanFilePages;
  return { mallocMmapThreshold, mallocArenas };
}

/**
 * Node's clean file pages out of the resident set once, `afterMs` after the agent is up
 * (READY), for an agent that may then wait idle for days without a datagram. It leaves
 * the data path's first drop as it is: a transfer that begins meanwhile still drops at
 * its first check what the lazy loads and the join touched (a start-up drop that delayed
 * it cost ~5 MiB of peak at 2 GiB, bench/results/demo.md round 8).
 */
export function dropFilePagesAfterStart(afterMs: number): void {
  if (dropFilePages) setTimeout(dropFilePagesNow, afterMs).unref();
}

function dropFilePagesNow(): void {
  if (!dropFilePages) return;
  dropFilePages();
  filePageDrops.count++;
}

/**
 * The heap ceiling (see above): call it on the data path with the current time; it does
 * nothing unless tuneAgentMemory ran (the agent command), or more often than every
 * HEAP_CHECK_MS.
 */
export function checkAgentHeap(now: number): void {
  if (!collect || now - lastCheck < HEAP_CHECK_MS) return;
  lastCheck = now;
  if (dropFilePages && now - lastFileDrop >= FILE_PAGES_DROP_MS) {
    lastFileDrop = now;
    dropFilePagesNow();
  }
  if (getHeapStatistics().used_heap_size < ceiling) return;
  collect();
  trim?.();
  heapCollections.count++;
  ceiling = Math.max(AGENT_HEAP_CEILING_BYTES, getHeapStatistics().used_heap_size * 1.5);
}
