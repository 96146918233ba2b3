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
    // Diagnosis only (FLEETCAST_MEMPROBE_DUMP_DIR, kept after the run): the mappings at the peak.
    if (dump && rss >= smapsKiB + 256) {
      smapsKiB = rss;
      smaps = readFileSync('/proc/self/smaps', 'utf8');
    }
  };
  const dump = process.env.FLEETCAST_MEMPROBE_DUMP_DIR;
  let smapsKiB = 0;
  let smaps = '';
  const snapAt = Number(process.env.FLEETCAST_MEMPROBE_HEAPSNAP_AT_MS ?? 0);
  if (dump && snapAt > 0) {
    setTimeout(() => {
      require('node:v8').writeHeapSnapshot(path.join(dump, `${process.pid}.heapsnapshot`));
    }, snapAt).unref();
  }
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
    if (dump) {
      // Which pages of node's own mappings are resident, by file offset (KiB), at exit.
      const res: string[] = [];
      const pm = require('node:fs').openSync('/proc/self/pagemap', 'r');
      for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
        const f = line.split(/\s+/);
        if (f[5] !== process.execPath) continue;
        const [a, b] = f[0].split('-').map((x) => parseInt(x, 16));
        const buf = Buffer.alloc(((b - a) / 4096) * 8);
        require('node:fs').readSync(pm, buf, 0, buf.length, (a / 4096) * 8);
        for (let i = 0; i < buf.length; i += 8) if (buf.readBigUInt64LE(i) >> 63n) res.push(`${f[1]} ${(parseInt(f[2], 16) + (i / 8) * 4096).toString(16)}`);
      }
      writeFileSync(path.join(dump, `${process.pid}.pages`), res.join('\n'));
      writeFileSync(path.join(dump, `${process.pid}.smaps`), `# VmRSS ${smapsKiB} kB\n${smaps}`);
      writeFileSync(path.join(dump, `${process.pid}.modules`), Object.keys(require.cache).join('\n') + '\n' + (process as unknown as { moduleLoadList: string[] }).moduleLoadList.join('\n'));
    }
    const cpu = process.cpuUsage();
    writeFileSync(path.join(dir, `${process.pid}.json`), JSON.stringify({ ...peak, hwmKiB: hwm, forcedGcs, cpuSeconds: (cpu.user + cpu.system) / 1e6 }));
  });
}
