import test from 'ava';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StreamDisk, UNIT_CACHE_BYTES } from '../src/agent/stream-disk';

/*
 * A stream agent's disk keeps just-written units in memory too, so the sink need not read
 * each back (four thread-pool round trips per unit). The disk stays the record: a unit is
 * on disk before it counts as held, and a restart, or a unit the bounded cache let go, is
 * read from there with the same bytes.
 */

const unit = (n: number, size = 64 * 1024) => Buffer.alloc(size, n & 0xff);

test('the sink takes a just-written unit from memory, the same bytes as on disk; past the cap the newest are left to the disk', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-stream-disk-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const disk = await StreamDisk.open(dir, 's');
  const per = 64 * 1024;
  const n = UNIT_CACHE_BYTES / per + 8; // 8 units more than the cache holds
  let released = 0;
  for (let u = 0; u < n; u++) await disk.writeUnit(u, unit(u), () => released++);
  t.is(released, n, 'every caller buffer was let go');
  for (let u = 0; u < n; u++) t.deepEqual(await fs.readFile(path.join(disk.unitsDir, String(u))), unit(u), `unit ${u} on disk`);

  for (let u = 0; u < n; u++) t.deepEqual(await disk.takeUnit(u), unit(u), `unit ${u} to the sink`);
  t.deepEqual(disk.reads, { memory: n - 8, disk: 8 }, 'the lowest units stayed in memory; the 8 newest were read back');

  // A repair's read copies into the caller's buffer, from memory or disk alike.
  await disk.writeUnit(n, unit(n));
  const into = Buffer.alloc(per + 10);
  t.deepEqual(await disk.readUnit(n, into), unit(n));
  await disk.drop(n);
  await t.throwsAsync(disk.readUnit(n), { message: /not on disk/ }, 'a dropped unit is gone from memory too');

  // A restart finds the units on disk.
  const again = await StreamDisk.open(dir, 's');
  t.true(again.held.has(3));
  t.deepEqual(await again.takeUnit(3), unit(3));
  t.deepEqual(again.reads, { memory: 0, disk: 1 });
});
