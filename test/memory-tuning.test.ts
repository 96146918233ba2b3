import test from 'ava';
import { createHash } from 'node:crypto';
import { spawnSync } from './helpers/sync';
import * as path from 'node:path';
import { loadNativeAddon } from '../src/util/native-addon';

// Each check runs in a child process: the settings are process-wide.
const TUNING = path.join(__dirname, '..', 'src', 'util', 'memory-tuning.js');

function child(script: string, tune: boolean): Record<string, number> {
  const pre = tune ? `require(${JSON.stringify(TUNING)}).tuneAgentMemory();` : '';
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', pre + script], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`child exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const RSS_KIB = "const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]);";

const addonLoads = loadNativeAddon()?.setMallocMmapThreshold !== undefined;

(addonLoads ? test : test.skip)('agent tuning: freed unit-sized buffers leave the resident set (fixed mmap threshold)', (t) => {
  // Buffers freed while others live: with glibc's sliding threshold they end up in holes
  // of the heap that stay resident; each is its own mapping with the threshold fixed.
  const script = `${RSS_KIB}
    const keep = [];
    const before = rss();
    for (let round = 0; round < 8; round++) {
      const bufs = [];
      for (let i = 0; i < 24; i++) { const b = Buffer.allocUnsafeSlow(1 << 20); b.fill(i); bufs.push(b); }
      keep.push(bufs[23]);
      bufs.length = 0;
      gc();
    }
    gc();
    process.stdout.write(JSON.stringify({ before, after: rss() }));`;
  const m = child(script, true);
  // 8 buffers of 1 MiB stay live; the other 184 MiB that went through must not.
  t.true(m.after - m.before < 24 * 1024, `RSS grew by ${m.after - m.before} KiB with 8 MiB live`);
});

test('agent tuning: the young generation stays at its initial size', (t) => {
  const script = `
    const keep = [];
    for (let i = 0; i < 1e6; i++) { const o = { a: i, b: [i, i + 1] }; if (i % 10 === 0) keep.push(o); if (keep.length > 20000) keep.shift(); }
    const ns = require('v8').getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
    process.stdout.write(JSON.stringify({ newSpace: ns.space_size }));`;
  const tuned = child(script, true);
  const plain = child(script, false);
  t.true(tuned.newSpace <= 2 * 1024 * 1024, `new space ${tuned.newSpace} bytes`);
  // The same load grows an untuned process's young generation: the setting is what holds it.
  t.true(plain.newSpace > tuned.newSpace, `untuned ${plain.newSpace}, tuned ${tuned.newSpace}`);
});

test('fleetcast agent loads no other command: not the server, rollouts, streams, the demo or the doctor', (t) => {
  // main() looks commands up lazily (issue 16: the agent's resident set); `agent --help`
  // goes through the same lookup as a real start and exits at once.
  const main = path.join(__dirname, '..', 'src', 'cli', 'main.js');
  const script = `require(${JSON.stringify(main)}).main(['agent', '--help']).then((code) => {
    process.stdout.write(JSON.stringify({ code, loaded: Object.keys(require.cache).map((f) => require('path').relative(${JSON.stringify(path.join(__dirname, '..', 'src'))}, f)) }));
  });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 0, r.stderr);
  const { code, loaded } = JSON.parse(r.stdout.slice(r.stdout.lastIndexOf('{"code"'))) as { code: number; loaded: string[] };
  t.is(code, 0);
  t.true(loaded.includes(path.join('cli', 'agent-command.js')), 'the agent command itself is loaded');
  const others = loaded.filter((f) => /^(server|cli[\\/](server-command|demo|doctor|rollout|init|ops|commands|stream))[\\/.]/.test(f));
  t.deepEqual(others, [], `modules of other commands loaded by \`fleetcast agent\``);
});

test('agent tuning: the heap ceiling keeps promoted garbage down, and follows a large live heap instead of collecting at every check', (t) => {
  // Objects that live through a few scavenges, then die old: what datagram views and HTTP
  // chunks do in an agent. checkAgentHeap runs as the driver calls it, 50 ms of fake clock apart.
  const MT = path.join(__dirname, '..', 'src', 'util', 'memory-tuning.js');
  const script = (live: number) => `
    const mt = require(${JSON.stringify(MT)});
    const v8 = require('v8');
    let maxUsed = 0, now = 0, checks = 0;
    const ring = [];
    for (let i = 0; i < 3000; i++) {
      const a = []; for (let j = 0; j < 500; j++) a.push({ i, j, s: 'x' + j });
      ring.push(a); if (ring.length > ${live}) ring.shift();
      mt.checkAgentHeap(now += 50); checks++;
      maxUsed = Math.max(maxUsed, v8.getHeapStatistics().used_heap_size);
    }
    process.stdout.write(JSON.stringify({ maxUsed, collections: mt.heapCollections.count, checks: Math.floor(now / 250) }));`;
  const tuned = child(script(100), true);
  const plain = child(script(100), false);
  t.is(plain.collections, 0, 'no ceiling without tuneAgentMemory');
  t.true(tuned.collections > 0);
  t.true(tuned.maxUsed < 16 * 1024 * 1024, `tuned: heap used up to ${(tuned.maxUsed / 1048576).toFixed(1)} MiB`);
  t.true(plain.maxUsed > 1.5 * tuned.maxUsed, `untuned ${(plain.maxUsed / 1048576).toFixed(1)} MiB, tuned ${(tuned.maxUsed / 1048576).toFixed(1)} MiB`);
  // ~25 MiB live, above the ceiling: collections come as the heap grows by half, not at each check.
  const big = child(script(1000), true);
  t.true(big.collections < big.checks / 4, `${big.collections} collections in ${big.checks} checks`);
});

(addonLoads ? test : test.skip)('agent tuning: memory freed through malloc between live blocks goes back to the kernel with the full GC the heap ceiling forces (malloc_trim)', (t) => {
  // 64 MiB of 32 KiB buffers (under the mmap threshold: from the malloc heap, as socket
  // reads and HTTP chunks are); one in 16 stays live, so the free memory is holes that
  // glibc does not return by itself (only the heap's top).
  const MT = path.join(__dirname, '..', 'src', 'util', 'memory-tuning.js');
  const script = `${RSS_KIB}
    const mt = require(${JSON.stringify(MT)});
    const keep = [];
    let bufs = [];
    for (let i = 0; i < 2048; i++) { const b = Buffer.allocUnsafeSlow(32 * 1024); b.fill(i); (i % 16 === 15 ? keep : bufs).push(b); }
    bufs = null;
    gc(); gc();
    // Over the heap ceiling (AGENT_HEAP_CEILING_BYTES), so the check collects (and trims).
    const live = []; for (let i = 0; i < 200000; i++) live.push({ i, s: 'x' + i });
    setTimeout(() => {
      gc();
      const freed = rss();
      mt.checkAgentHeap(1e6);
      process.stdout.write(JSON.stringify({ freed, checked: rss(), keep: keep.length, live: live.length, collections: mt.heapCollections.count }));
    }, 100);`;
  const tuned = child(script, true);
  const plain = child(script, false);
  // 60 MiB are free in holes; the check gives most of them back, and only when tuned.
  t.is(tuned.collections, 1);
  t.true(tuned.freed - tuned.checked > 40 * 1024, `tuned: ${tuned.freed} KiB before the check, ${tuned.checked} KiB after`);
  t.true(plain.freed - plain.checked < 8 * 1024, `untuned: ${plain.freed} KiB before, ${plain.checked} KiB after`);
});

(addonLoads ? test : test.skip)('agent tuning: threads that start after it share the one malloc arena', (t) => {
  // Each arena is a 64 MiB-aligned mapping (HEAP_MAX_SIZE); count them after libuv's pool
  // (fs and crypto work on 4 threads) has run. Some of V8's threads made theirs before.
  const script = `
    const fs = require('fs');
    (async () => {
      await Promise.all(Array.from({ length: 200 }, () => fs.promises.readFile('/proc/self/stat')));
      for (let i = 0; i < 40; i++) await new Promise((r) => require('crypto').pbkdf2('a', 'b', 1000, 32, 'sha256', r));
      const arenas = fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => { const m = /^([0-9a-f]+)-[0-9a-f]+ rw-p 00000000 00:00 0\\s*$/.exec(l); return m && parseInt(m[1], 16) % (64 * 1024 * 1024) === 0; }).length;
      process.stdout.write(JSON.stringify({ arenas }));
    })();`;
  const tuned = child(script, true);
  const plain = child(script, false);
  t.true(plain.arenas >= tuned.arenas + 3, `arenas: untuned ${plain.arenas}, tuned ${tuned.arenas}`);
});

(addonLoads ? test : test.skip)('agent tuning: the data path drops the clean pages of node\'s binary and libraries, keeps every private copy, and the process runs on', (t) => {
  // What the agent touched of node's binary and shared libraries while starting (the
  // loader, every builtin's compile, the CLI) stays resident until memory is short. The
  // check unmaps read-only file mappings holding no page of their own; a page used again
  // faults back in from the page cache. Relocated read-only data (RELRO) holds private
  // copies: unmapping those would put unrelocated bytes back, so it must stay.
  const MT = path.join(__dirname, '..', 'src', 'util', 'memory-tuning.js');
  const MAIN = path.join(__dirname, '..', 'src', 'cli', 'main.js');
  const script = `
    const fs = require('fs');
    const mt = require(${JSON.stringify(MT)});
    require(${JSON.stringify(MAIN)});
    const fileKiB = () => Number(/RssFile:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]);
    const privateInFiles = () => {
      let sum = 0, file = false;
      for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
        const head = /^[0-9a-f]+-[0-9a-f]+ \\S+ \\S+ \\S+ (\\d+)\\s*(.*)$/.exec(line);
        if (head) file = head[1] !== '0' && head[2].startsWith('/');
        else if (file && line.startsWith('Anonymous:')) sum += Number(/(\\d+)/.exec(line)[1]);
      }
      return sum;
    };
    const before = fileKiB(), privBefore = privateInFiles();
    mt.checkAgentHeap(1e6);
    const after = fileKiB(), privAfter = privateInFiles();
    mt.checkAgentHeap(1e6 + mt.FILE_PAGES_DROP_MS - 250);
    const drops = mt.filePageDrops.count;
    mt.checkAgentHeap(1e6 + mt.FILE_PAGES_DROP_MS);
    // Code that was unmapped runs again: hashing, JSON, a child's exit code through libuv.
    const digest = require('crypto').createHash('sha256').update(Buffer.alloc(1 << 20, 7)).digest('hex');
    const json = JSON.parse(JSON.stringify({ a: [1, 2, 3] })).a.length;
    const status = require('child_process').spawnSync(process.execPath, ['-e', 'process.exit(3)']).status;
    process.stdout.write(JSON.stringify({ before, after, privBefore, privAfter, drops, dropsLater: mt.filePageDrops.count, digest, json, status }));`;
  const tuned = child(script, true);
  const plain = child(script, false);
  t.true(tuned.before - tuned.after > 8 * 1024, `tuned: file-backed ${tuned.before} KiB before the check, ${tuned.after} KiB after`);
  t.true(tuned.privBefore > 0, 'node has relocated read-only data');
  t.is(tuned.privAfter, tuned.privBefore, 'private copies in file mappings are kept');
  t.is(tuned.drops, 1, 'no second drop within FILE_PAGES_DROP_MS');
  t.is(tuned.dropsLater, 2);
  const expected = createHash('sha256').update(Buffer.alloc(1 << 20, 7)).digest('hex');
  t.is(String(tuned.digest), expected);
  t.is(tuned.json, 3);
  t.is(tuned.status, 3);
  t.is(plain.drops, 0, 'nothing is dropped without tuneAgentMemory');
  t.true(plain.before - plain.after < 2 * 1024, `untuned: ${plain.before} KiB before, ${plain.after} KiB after`);
});

(addonLoads ? test : test.skip)('agent tuning: the drop after start runs once on its timer, and the data path still drops at its first check', (t) => {
  const MT = path.join(__dirname, '..', 'src', 'util', 'memory-tuning.js');
  const script = `
    const mt = require(${JSON.stringify(MT)});
    const fileKiB = () => Number(/RssFile:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]);
    const before = fileKiB();
    mt.dropFilePagesAfterStart(50);
    const atOnce = mt.filePageDrops.count;
    const keep = setInterval(() => {}, 1000);
    setTimeout(() => {
      const timed = mt.filePageDrops.count, after = fileKiB();
      mt.checkAgentHeap(Date.now());
      clearInterval(keep);
      process.stdout.write(JSON.stringify({ before, after, atOnce, timed, firstCheck: mt.filePageDrops.count }));
    }, 400);`;
  const tuned = child(script, true);
  t.is(tuned.atOnce, 0, 'not at once');
  t.is(tuned.timed, 1);
  t.true(tuned.before - tuned.after > 4 * 1024, `file-backed ${tuned.before} KiB before, ${tuned.after} KiB after`);
  t.is(tuned.firstCheck, 2, 'the first check on the data path drops too');
  const plain = child(script, false);
  t.is(plain.timed, 0, 'nothing without tuneAgentMemory');
});
