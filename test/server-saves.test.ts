import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { tmpdir } from './helpers/fleet';
import { FleetMemory, fleetMemoryJson, HookResult, parseFleetMemory, SAVE_CHUNK_ENTRIES } from '../src/server/fleet-memory';
import { FleetcastServer } from '../src/server/server';
import { silentLogger } from '../src/util/log';

// The server's state files (fleet.json, members.json, identities.json) are written by its
// timer and once more on stop. A save called while another is in flight waits for it:
// stop() used to return while the timer's write was still creating its temp file, and a
// test's directory removal then failed with ENOTEMPTY (a clean-clone CI run, stop 27).

test('a save called while another is writing returns only once that write is on disk', async (t) => {
  const dir = await tmpdir(t);
  const file = path.join(dir, 'fleet.json');
  const m = new FleetMemory(file, silentLogger);
  m.noteOverhead('r/g/m1', 12.5);
  const first = m.save();
  await m.save(); // nothing new to write: before, this returned at once while `first` still wrote
  const j = JSON.parse(await fs.readFile(file, 'utf8')) as { overheads: Record<string, number> };
  t.is(j.overheads['r/g/m1'], 12.5);
  t.deepEqual((await fs.readdir(dir)).sort(), ['fleet.json'], 'no temp file left behind');
  await first;
});

test("a server stopped while its timer's save runs leaves the store complete and removable", async (t) => {
  const dir = await tmpdir(t);
  const store = path.join(dir, 'store');
  await fs.mkdir(store);
  const token = randomBytes(16).toString('hex');
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0, tokens: { box1: token } });
  const { url } = await server.start();
  const res = await fetch(`${url}/v1/streams/cam/heartbeat`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ v: 1, group: 'g', member: 'm1', haveFrom: 0, have: '' }),
  });
  await res.text();
  // What the timer does; stop() comes while that write is in flight.
  const timerSave = (server as unknown as { saveState(force?: boolean): Promise<void> }).saveState(true);
  await server.stop();
  const names = await fs.readdir(store);
  t.false(names.some((n) => n.endsWith('.tmp')), `no temp file after stop: ${names.join(', ')}`);
  t.truthy(JSON.parse(await fs.readFile(path.join(store, 'identities.json'), 'utf8')), 'the member-token binding is saved');
  await fs.rm(store, { recursive: true });
  await timerSave;
});

test('fleet.json is written in chunks with the loop free between them, as JSON.stringify would write it; entries that change meanwhile are kept', async (t) => {
  const hooks = new Map<string, HookResult>();
  for (let i = 0; i < 3; i++) hooks.set(`r/g/m${i}`, { release: 'r', group: 'g', member: `m${i}`, at: 1000 + i, durationMs: 5, exitCode: 0 } as HookResult);
  const overheads = new Map<string, number>();
  const n = 5 * SAVE_CHUNK_ENTRIES + 7;
  for (let i = 0; i < n; i++) overheads.set(`r/g"\\${i}/m${i}`, i / 3);
  overheads.set('r/g/nan', NaN);
  const whole = JSON.stringify({ hooks: [...hooks.values()], overheads: Object.fromEntries(overheads) });
  t.is((await fleetMemoryJson(hooks, overheads)).toString(), whole, 'the same bytes as one JSON.stringify');
  // The loop runs between chunks: timers and I/O callbacks are not held up for the whole file.
  let ran = 0;
  const tick = setInterval(() => ran++, 0);
  const during = fleetMemoryJson(hooks, overheads);
  // A value changed mid-save moves its key to the end of the map (FleetMemory's bounded): the file may name it twice.
  setImmediate(() => {
    overheads.delete('r/g"\\0/m0');
    overheads.set('r/g"\\0/m0', 99);
    overheads.set('r/g/late', 7);
  });
  const buf = await during;
  clearInterval(tick);
  t.true(ran > 0, 'a timer ran while the file was serialised');
  const parsed = parseFleetMemory(buf.toString());
  if (typeof parsed === 'string') return t.fail(parsed);
  const got = new Map(parsed.overheads);
  t.is(got.get('r/g"\\0/m0'), 99, 'the newer value is the one read back');
  t.is(got.get('r/g/late'), 7);
  t.is(got.get(`r/g"\\${n - 1}/m${n - 1}`), (n - 1) / 3);
  t.is(parsed.hooks.length, 3);
});
