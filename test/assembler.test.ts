import test from 'ava';
import { createHash } from 'node:crypto';
import { Assembler } from '../src/agent/core/assembler';

// A verified unit's buffer goes back to the pool once the store wrote it (release),
// before its commit; until stored() the assembly keeps answering 'dup', so nothing
// writes into a buffer that is now someone else's.
test('release hands a verified assembly buffer to the pool before stored(), once, and the assembly takes no more data', (t) => {
  const unitBytes = 4096;
  const fb = 1024;
  const asm = new Assembler(unitBytes, () => undefined);
  const unit = Buffer.alloc(unitBytes);
  for (let i = 0; i < unitBytes; i++) unit[i] = (i * 7) & 0xff;
  const sha = createHash('sha256').update(unit).digest('hex');
  let res = '';
  for (let f = 0; f < 4; f++) res = asm.add(3, unitBytes, 4, f, f * fb, unit.subarray(f * fb, (f + 1) * fb), 0);
  t.is(res, 'complete');
  const buf = asm.verify(3, sha);
  t.truthy(buf);
  t.is(asm.pool.available, 0, 'the buffer is the store\'s while it writes');

  asm.release(3);
  t.is(asm.pool.available, 1, 'written: the buffer is back in the pool');
  asm.release(3);
  t.is(asm.pool.available, 1, 'a second release gives nothing back twice');
  t.is(asm.add(3, unitBytes, 4, 0, 0, Buffer.alloc(fb, 0xee), 1), 'dup', 'the assembly waits for stored() and writes nothing');
  t.true(buf!.equals(unit), 'the released buffer was not written through the assembly');

  const next = asm.pool.take(unitBytes);
  t.is(next, buf!, 'the next unit reuses it');
  asm.stored(3);
  t.is(asm.get(3), undefined);
  t.is(asm.pool.available, 0, 'stored() after release gives nothing back again');
});

test('release of a unit not verifying (partial, unknown) does nothing', (t) => {
  const asm = new Assembler(4096, () => undefined);
  asm.add(1, 4096, 4, 0, 0, Buffer.alloc(1024), 0);
  asm.release(1);
  asm.release(2);
  t.is(asm.pool.available, 0);
  t.is(asm.add(1, 4096, 4, 1, 1024, Buffer.alloc(1024), 0), 'new', 'the partial assembly still takes data');
});
