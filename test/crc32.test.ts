import test from 'ava';
import { randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';
import { crc32 } from '../src/util/crc32';

test('crc32 matches the check value of CRC-32/ISO-HDLC', (t) => {
  t.is(crc32(Buffer.from('123456789', 'ascii')), 0xcbf43926);
  t.is(crc32(new Uint8Array(0)), 0);
});

test('crc32 equals zlib.crc32 on random buffers, whole and continued', (t) => {
  for (let i = 0; i < 200; i++) {
    const b = randomBytes(i * 7);
    t.is(crc32(b), zlib.crc32(b) >>> 0, `length ${b.length}`);
    const cut = Math.floor(b.length / 3);
    t.is(crc32(b.subarray(cut), crc32(b.subarray(0, cut))), zlib.crc32(b) >>> 0, `continued at ${cut} of ${b.length}`);
  }
});
