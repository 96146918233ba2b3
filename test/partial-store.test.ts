import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { signManifest } from '../src/release/manifest';
import { PartialStore, readPersistedBitmap } from '../src/storage/partial-store';
import { getBit } from '../src/wire/packet';
import { spawnSync } from './helpers/sync';
import { rootTest } from './helpers/netns';
import { SPOOL_AFTER_MS, UnitSpool } from '../src/storage/spool';
import { BufferPool } from '../src/util/buffer-pool';
import { FleetcastError } from '../src/util/errors';
import { ed25519 } from './helpers/keys';
import { randomRelease, scratchDir, sha } from './helpers/random-release';

const UNIT = 4096;

function release(size: number) {
  return randomRelease(size, UNIT);
}

const tmp = (t: { teardown(f: () => Promise<void>): void }) => scratchDir(t, 'fc-store-');

test('units written in any order finish as the release, hashed as they land', async (t) => {
  const dir = await tmp(t);
  const r = release(37 * UNIT + 123);
  const s = await PartialStore.open(dir, r.m);
  const order = r.units.map((_, u) => u).sort(() => Math.random() - 0.5);
  // Half one at a time, half all at once (committed in groups, one sync each).
  for (const u of order.slice(0, 18)) await s.writeUnit(u, r.units[u]);
  await Promise.all(order.slice(18).map((u) => s.writeUnit(u, r.units[u])));
  t.is(s.verifiedUnits, r.units.length);
  const file = await s.finish();
  t.deepEqual(await fs.readFile(file), r.data);
  t.true(s.isComplete);
});

test('a store reopened after a restart resumes and still checks the whole file', async (t) => {
  const dir = await tmp(t);
  const r = release(20 * UNIT);
  const first = await PartialStore.open(dir, r.m);
  for (const u of [0, 1, 2, 9, 15]) await first.writeUnit(u, r.units[u]);
  await first.close();
  const again = await PartialStore.open(dir, r.m);
  t.is(again.verifiedUnits, 5);
  for (let u = 0; u < r.units.length; u++) if (!again.has(u)) await again.writeUnit(u, r.units[u]);
  t.deepEqual(await fs.readFile(await again.finish()), r.data);
});

test('bytes changed on disk before the whole-file hash reaches them fail finish and clear the bitmap', async (t) => {
  const dir = await tmp(t);
  const r = release(8 * UNIT);
  const s = await PartialStore.open(dir, r.m);
  // Unit 0 last: the hash cannot pass it, so units 1..7 are read back from disk later.
  for (let u = r.units.length - 1; u >= 1; u--) await s.writeUnit(u, r.units[u]);
  const part = path.join(dir, r.m.id, 'data.part');
  const fh = await fs.open(part, 'r+');
  await fh.write(Buffer.from([0xde, 0xad]), 0, 2, 5 * UNIT + 7);
  await fh.close();
  await s.writeUnit(0, r.units[0]);
  t.teardown(() => s.close());
  const e = await t.throwsAsync(s.finish(), { instanceOf: FleetcastError });
  t.is(e!.code, 'WHOLE_HASH');
  t.is(s.verifiedUnits, 0);
  t.false(s.has(3));
});

test('the buffer pool hands back what it was given, only at its size, once', (t) => {
  const pool = new BufferPool(1024, 2);
  const a = pool.take(1024);
  t.is(a.length, 1024);
  pool.give(a);
  pool.give(a); // twice: still one entry
  t.is(pool.available, 1);
  t.is(pool.take(1024), a);
  t.is(pool.available, 0);
  const short = pool.take(100);
  t.is(short.length, 100);
  pool.give(short);
  pool.give(a.subarray(0, 1024 - 1));
  t.is(pool.available, 0, 'other sizes and views are not pooled');
  for (const b of [pool.take(1024), pool.take(1024), pool.take(1024)]) pool.give(b);
  t.is(pool.available, 2, 'at most max buffers are kept');
});

test('a unit download is spooled only once it has been slow, then resumes from the spool', async (t) => {
  const dir = await tmp(t);
  const bytes = randomBytes(10_000);
  const first = await UnitSpool.open(dir, 3, bytes.length);
  t.is(first.bytes.length, 0);
  first.spool.update(bytes, 4000); // fast so far: nothing written
  await first.spool.close();
  t.is((await UnitSpool.open(dir, 3, bytes.length)).bytes.length, 0);
  const slow = await UnitSpool.open(dir, 3, bytes.length);
  slow.spool.update(bytes, 4000, Date.now() + SPOOL_AFTER_MS);
  slow.spool.update(bytes, 6500, Date.now() + SPOOL_AFTER_MS);
  await slow.spool.close();
  const again = await UnitSpool.open(dir, 3, bytes.length);
  t.deepEqual(again.bytes, bytes.subarray(0, 6500));
  again.spool.update(bytes, 10_000, Date.now() + SPOOL_AFTER_MS);
  await again.spool.close();
  t.deepEqual((await UnitSpool.open(dir, 3, bytes.length)).bytes, bytes);
  await again.spool.discard();
  t.is((await UnitSpool.open(dir, 3, bytes.length)).bytes.length, 0);
});

test('commits are incremental: a unit appends 8 bytes to the journal; the bitmap is rewritten only when the journal is folded', async (t) => {
  const dir = await tmp(t);
  // 40,000 units of 4 KiB: a 5,000-byte bitmap, which a whole-file commit would rewrite per unit.
  const size = 40_000 * UNIT;
  const units = Array.from({ length: 40_000 }, () => 'a'.repeat(64));
  const m = signManifest({ v: 1, name: 'big.img', size, unitSize: UNIT, sha256: 'b'.repeat(64), units, created: '2026-01-01T00:00:00.000Z' }, ed25519().privateKey);
  const s = await PartialStore.open(dir, m);
  const opened = s.bitmapRewrites;
  const zero = Buffer.alloc(UNIT);
  for (let u = 0; u < 300; u++) await s.writeUnit(u, zero);
  const journal = await fs.stat(path.join(s.dir, 'data.journal'));
  t.is(journal.size, 24 + 300 * 8, 'one 8-byte record per unit');
  t.is(s.bitmapRewrites - opened, 0, 'no bitmap rewrite in 300 commits');
  for (let u = 300; u < 3000; u++) await s.writeUnit(u, zero);
  const folds = s.bitmapRewrites - opened;
  t.true(folds >= 1 && folds <= 2, `${folds} folds in 3,000 commits`);
  // A crash tears the last record: it is ignored, the rest counts.
  await s.close();
  const jp = path.join(s.dir, 'data.journal');
  await fs.appendFile(jp, Buffer.from([0, 0, 0x0b, 0xb8, 1, 2])); // a partial record for unit 3000
  const again = await PartialStore.open(dir, m);
  t.is(again.verifiedUnits, 3000);
  t.false(again.has(3000));
  await again.close();
});

test('journal records: round trip, a torn or corrupt record ends the journal, wrong release refused', async (t) => {
  const { decodeJournal, encodeJournalHeader, encodeJournalRecords } = await import('../src/storage/bitmap-file');
  const rid = new Uint8Array(16).fill(3);
  const j = Buffer.concat([encodeJournalHeader(rid), encodeJournalRecords(rid, [5, 0, 9])]);
  t.deepEqual(decodeJournal(j, rid, 10), { ok: true, units: [5, 0, 9], torn: false });
  t.deepEqual(decodeJournal(j.subarray(0, j.length - 3), rid, 10), { ok: true, units: [5, 0], torn: true });
  const bad = Buffer.from(j);
  bad[24 + 8 + 7] ^= 1;
  t.deepEqual(decodeJournal(bad, rid, 10), { ok: true, units: [5], torn: true });
  t.deepEqual(decodeJournal(j, rid, 9), { ok: true, units: [5, 0], torn: true }, 'a unit past the release ends it');
  t.false(decodeJournal(j, new Uint8Array(16), 10).ok);
});

rootTest('a disk that fills in the middle of a unit: the write is finished or refused with ENOSPC, never marked verified half-written', async (t) => {
  // A write can be short without an error when the disk fills part-way (tmpfs here).
  const dir = await tmp(t);
  const mnt = path.join(dir, 'small');
  await fs.mkdir(mnt);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { encoding: 'utf8' });
  t.is(m.status, 0, m.stderr);
  t.teardown(async () => {
    spawnSync('umount', ['-l', mnt]);
  });
  const unit = 64 * 1024;
  const data = randomBytes(8 * unit);
  const units = Array.from({ length: 8 }, (_, u) => data.subarray(u * unit, (u + 1) * unit));
  const man = signManifest({ v: 1, name: 'big.img', size: data.length, unitSize: unit, sha256: sha(data), units: units.map(sha), created: '2026-01-01T00:00:00.000Z' }, ed25519().privateKey);
  const s = await PartialStore.open(mnt, man);
  // Leave room for a little more than one unit, then write units until the disk refuses.
  const st = await fs.statfs(mnt);
  await fs.writeFile(path.join(mnt, 'filler'), Buffer.alloc(Math.max(0, st.bavail * st.bsize - unit - unit / 2))).catch(() => undefined);
  let refused: NodeJS.ErrnoException | null = null;
  for (let u = 0; u < 8 && !refused; u++) await s.writeUnit(u, units[u]).catch((e: NodeJS.ErrnoException) => (refused = e));
  t.truthy(refused, 'the disk filled');
  t.regex(String((refused as unknown as Error).message), /no space left on device/i);
  const bits = await readPersistedBitmap(path.join(mnt, man.id), man.idBytes, man.unitCount);
  const part = await fs.readFile(path.join(mnt, man.id, 'data.part'));
  let marked = 0;
  for (let u = 0; u < 8; u++) {
    if (!bits || !getBit(bits, u)) continue;
    marked++;
    t.is(sha(part.subarray(u * unit, (u + 1) * unit)), man.units[u], `unit ${u} marked verified holds its bytes`);
  }
  t.true(marked < 8);
  await s.close().catch(() => undefined);
});

test('readUnit fills a reused buffer with the unit (partial and finished), refuses a buffer of another length, and a short read throws', async (t) => {
  const dir = await tmp(t);
  const r = release(5 * UNIT + 100);
  const s = await PartialStore.open(dir, r.m);
  for (let u = 0; u < r.units.length; u++) await s.writeUnit(u, r.units[u]);
  const buf = Buffer.alloc(UNIT, 0xaa); // stale bytes of "another unit"
  t.is(await s.readUnit(2, buf), buf);
  t.deepEqual(buf, Buffer.from(r.units[2]));
  await t.throwsAsync(s.readUnit(5, Buffer.alloc(UNIT)), { message: /unit 5 is 100 bytes, not 4096/ });
  t.deepEqual(await s.readUnit(5, Buffer.alloc(100)), Buffer.from(r.units[5]));
  const file = await s.finish();
  buf.fill(0xaa);
  t.deepEqual(await s.readUnit(4, buf), Buffer.from(r.units[4]));
  // The finished file cut short: the last units cannot be read whole.
  await fs.truncate(file, 3 * UNIT + 10);
  await t.throwsAsync(s.readUnit(3, buf), { message: /short read/ });
});

test('writeUnit releases the caller\'s bytes once written, before the commit settles; also for a unit it skips or fails to write', async (t) => {
  const dir = await tmp(t);
  const r = release(6 * UNIT);
  const s = await PartialStore.open(dir, r.m);
  const order: string[] = [];
  const p = s.writeUnit(0, r.units[0], () => order.push('released 0'));
  await p.then(() => order.push('committed 0'));
  t.deepEqual(order, ['released 0', 'committed 0']);
  // Out of order, several at once: each released exactly once, and the file is the release.
  const released = new Map<number, number>();
  await Promise.all([3, 1, 5, 2, 4].map((u) => s.writeUnit(u, r.units[u], () => released.set(u, (released.get(u) ?? 0) + 1))));
  t.deepEqual([...released.keys()].sort(), [1, 2, 3, 4, 5]);
  t.true([...released.values()].every((n) => n === 1));
  // Already stored: released at once, nothing written.
  let again = 0;
  await s.writeUnit(3, Buffer.alloc(UNIT), () => again++);
  t.is(again, 1);
  // Wrong length: refused, and still released.
  const s2 = await PartialStore.open(await tmp(t), r.m);
  let bad = 0;
  await t.throwsAsync(s2.writeUnit(1, Buffer.alloc(10), () => bad++), { message: /wrong length/ });
  t.is(bad, 1);
  t.deepEqual(await fs.readFile(await s.finish()), r.data);
});
