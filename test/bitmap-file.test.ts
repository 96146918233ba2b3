import test from 'ava';
import { decodeBitmapFile, encodeBitmapFile } from '../src/storage/bitmap-file';

const rid = new Uint8Array(16).fill(9);

test('round-trips and checks release, count and checksum', (t) => {
  const bits = new Uint8Array([0b10100000, 0b01000000]);
  const f = encodeBitmapFile(rid, 10, bits);
  const d = decodeBitmapFile(f, rid, 10);
  t.true(d.ok);
  if (d.ok) t.deepEqual([...d.bits], [...bits]);
  t.deepEqual(decodeBitmapFile(f, new Uint8Array(16), 10), { ok: false, reason: 'belongs to another release' });
  t.false(decodeBitmapFile(f, rid, 11).ok);
  const flipped = Buffer.from(f);
  flipped[28] ^= 1;
  t.deepEqual(decodeBitmapFile(flipped, rid, 10), { ok: false, reason: 'checksum mismatch' });
  t.false(decodeBitmapFile(f.subarray(0, f.length - 1), rid, 10).ok);
});
