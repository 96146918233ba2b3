/**
 * Loaded into each agent of a diagnostic demo run (NODE_OPTIONS=--require, set by
 * `npm run bench -- demo`): every 20 ms it reads VmRSS, RssAnon and RssFile from
 * /proc/self/status and process.memoryUsage(), and at exit writes the sample taken at
 * the highest VmRSS, with VmHWM, to FLEETCAST_MEMPROBE_DIR/<pid>.json. It shows where
 * an agent's memory is at its peak: file-backed pages (the node binary), the V8 heap,
 * ArrayBuffers (unit buffers, rings, datagram arenas) and the rest of the anonymous
 * memory (malloc, thread stacks, code). The probe's own cost is in these numbers, so
 * the timed rows come from runs without it.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

const dir = process.env.FLEETCAST_MEMPROBE_DIR;
if (dir && process.argv.includes('agent')) {
  const kib = (s: string, k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? 0);
  let peak: Record<string, number> = { rssKiB: 0 };
  let hwm = 0;
  const sample = () => {
    const s = readFileSync('/proc/self/status', 'utf8');
    const rss = kib(s, 'VmRSS');
    hwm = kib(s, 'VmHWM');
    if (rss < peak.rssKiB) return;
    const m = process.memoryUsage();
    peak = { rssKiB: rss, anonKiB: kib(s, 'RssAnon'), fileKiB: kib(s, 'RssFile'), heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers };
  };
  setInterval(sample, 20).unref();
  process.on('exit', () => {
    sample();
    // The agent's own module instance (same path): the full GCs its heap ceiling forced.
    let forcedGcs = -1;
    try {
      forcedGcs = (require(path.join(__dirname, '..', 'src', 'util', 'memory-tuning.js')) as { heapCollections: { count: number } }).heapCollections.count;
    } catch {
      /* not built alongside */
    }
    const cpu = process.cpuUsage();
    writeFileSync(path.join(dir, `${process.pid}.json`), JSON.stringify({ ...peak, hwmKiB: hwm, forcedGcs, cpuSeconds: (cpu.user + cpu.system) / 1e6 }));
  });
}
