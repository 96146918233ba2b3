import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PartialStore } from '../src/storage/partial-store';
import { SPOOL_AFTER_MS, UnitSpool } from '../src/storage/spool';
import { downloadWindow, UnitDownload } from '../src/agent/unit-download';
import { fragmentSlice } from '../src/wire/packet';
import { randomRelease, scratchDir } from './helpers/random-release';

// Issue 16: a WAN download streams into the partial file and a small window, not into a
// unit-sized buffer. These check what that must keep: the LAN copies, the hash, resume.

const UNIT = 64 * 1024;
const FB = 1432;

function release(size: number) {
  return randomRelease(size, UNIT);
}

const tmp = (t: { teardown(f: () => Promise<void>): void }) => scratchDir(t, 'fc-dl-');

/** A stand-in for the core's fetchProgress that cuts fragments as LanCore does, and records them. */
function fragmentSink(len: number) {
  const got: Buffer[] = [];
  let next = 0;
  const fc = Math.ceil(len / FB);
  return {
    got,
    fetchProgress(_u: number, bytes: Uint8Array, received: number, _now: number, base = 0) {
      while (next < fc && (received >= (next + 1) * FB || received === len)) {
        got.push(Buffer.from(fragmentSlice(bytes.subarray(0, len - base), next - base / FB, FB)));
        next++;
      }
    },
  };
}

test('a streamed download in odd chunks: every fragment goes out once and whole, the hash matches, the unit commits in place', async (t) => {
  const dir = await tmp(t);
  const r = release(3 * UNIT - 777);
  const s = await PartialStore.open(dir, r.m);
  t.teardown(() => s.close());
  const u = 2; // the short last unit
  const bytes = r.units[u];
  const sink = fragmentSink(bytes.length);
  const { spool } = await UnitSpool.open(dir, u, bytes.length);
  const win = downloadWindow(FB);
  t.is(win.length % FB, 0, 'the window holds whole fragments');
  t.true(win.length < bytes.length, 'smaller than the unit');
  const dl = new UnitDownload(u, bytes.length, win, s, sink, spool);
  for (let off = 0, step = 1; off < bytes.length; off += step, step = (step * 7 + 3) % 5000 || 1) await dl.push(bytes.subarray(off, Math.min(bytes.length, off + step)), Date.now());
  dl.push(randomBytes(100), Date.now()); // past the end: ignored
  await dl.settled();
  t.true(dl.matches(r.m.units[u]));
  t.is(sink.got.length, Math.ceil(bytes.length / FB));
  t.deepEqual(Buffer.concat(sink.got), Buffer.from(bytes), 'the fragments are the unit, in order');
  t.false(s.has(u), 'written in place, not stored before its commit');
  await s.commitInPlace(u);
  t.true(s.has(u));
  t.deepEqual(await s.readUnit(u), Buffer.from(bytes));
  await spool.discard();
});

test('bytes that fail the hash are not committed; writeRange never writes over a stored unit; ranges outside the unit are refused', async (t) => {
  const dir = await tmp(t);
  const r = release(2 * UNIT);
  const s = await PartialStore.open(dir, r.m);
  t.teardown(() => s.close());
  const { spool } = await UnitSpool.open(dir, 0, UNIT);
  const bad = Buffer.from(r.units[0]);
  bad[1000] ^= 1;
  const dl = new UnitDownload(0, UNIT, downloadWindow(FB), s, fragmentSink(UNIT), spool);
  await dl.push(bad, Date.now());
  await dl.settled();
  t.false(dl.matches(r.m.units[0]));
  t.false(s.has(0));
  // A verified copy from elsewhere (the LAN) lands; a late write of the bad bytes must not spoil it.
  await s.writeUnit(0, r.units[0]);
  await s.writeRange(0, 0, bad);
  t.deepEqual(await s.readUnit(0), Buffer.from(r.units[0]));
  await t.throwsAsync(s.writeRange(1, UNIT - 10, Buffer.alloc(11)), { code: 'BAD_UNIT' });
  await t.throwsAsync(s.readRange(1, -1, 5), { code: 'BAD_UNIT' });
  // The whole file still checks out (unit 0 hashed from what writeUnit wrote).
  await s.writeRange(1, 0, r.units[1]);
  await s.commitInPlace(1);
  t.is(path.basename(await s.finish()), 'fw.img');
  t.deepEqual(await fs.readFile(path.join(s.dir, 'fw.img')), r.data);
  await spool.discard();
});

test('a slow streamed download is spooled from its first byte (read back from the partial file) and resumes from the spool', async (t) => {
  const dir = await tmp(t);
  const r = release(2 * UNIT);
  const s = await PartialStore.open(dir, r.m);
  t.teardown(() => s.close());
  const bytes = r.units[1];
  const first = await UnitSpool.open(dir, 1, UNIT);
  const dl = new UnitDownload(1, UNIT, downloadWindow(FB), s, fragmentSink(UNIT), first.spool);
  await dl.push(bytes.subarray(0, 5000), Date.now()); // fast so far: not spooled
  // Slow now: the spool starts with the 5000 bytes it missed, from the partial file.
  first.spool.append(bytes.subarray(5000, 9000), 9000, (from, to) => dl.settled().then(() => s.readRange(1, from, to - from)), Date.now() + SPOOL_AFTER_MS);
  await first.spool.close();
  const again = await UnitSpool.open(dir, 1, UNIT);
  t.deepEqual(again.bytes, bytes.subarray(0, 9000));
  await again.spool.discard();
});

test('a verified copy written while unverified bytes of the same unit are still landing ends up on disk, not those bytes', async (t) => {
  const dir = await tmp(t);
  const r = release(32 * UNIT);
  const s = await PartialStore.open(dir, r.m);
  t.teardown(() => s.close());
  for (let u = 0; u < 32; u++) {
    const junk = randomBytes(UNIT);
    // Not awaited: the verified copy is queued while these writes are in flight.
    const pending = [0, 1, 2, 3].map((q) => s.writeRange(u, q * (UNIT / 4), junk.subarray(q * (UNIT / 4), (q + 1) * (UNIT / 4))));
    const stored = s.writeUnit(u, r.units[u]);
    const late = s.writeRange(u, 0, junk.subarray(0, 4096)); // after: skipped
    await Promise.all([...pending, stored, late]);
    t.deepEqual(await s.readUnit(u), Buffer.from(r.units[u]), `unit ${u}`);
  }
  t.is(path.basename(await s.finish()), 'fw.img');
});
