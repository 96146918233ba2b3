import test from 'ava';
import { BUSY_HIGH, BUSY_LOW, LoadFactor, MAX_LOAD_FACTOR } from '../src/server/load-factor';

// How much the load-chosen heartbeat interval is stretched while the server's loop is busy (issue 17).

test('a loop busy all the time stretches the interval up to 3x; an idle one brings it back to 1; in between it holds', (t) => {
  const f = new LoadFactor();
  t.is(f.update(1), 1, 'one busy tick is not enough: the busy share is smoothed');
  let ticks = 1;
  while (f.factor < MAX_LOAD_FACTOR && ticks < 1000) {
    f.update(1);
    ticks++;
  }
  t.is(f.factor, MAX_LOAD_FACTOR);
  t.true(ticks > 20 && ticks < 40, `reached 3x after ${ticks} half-second ticks`);
  for (let i = 0; i < 100; i++) f.update(1);
  t.is(f.factor, MAX_LOAD_FACTOR, 'and no further');

  // Between the two thresholds the factor stays where it is.
  for (let i = 0; i < 100; i++) f.update((BUSY_HIGH + BUSY_LOW) / 2);
  const held = f.factor;
  for (let i = 0; i < 100; i++) f.update((BUSY_HIGH + BUSY_LOW) / 2);
  t.is(f.factor, held);

  ticks = 0;
  while (f.factor > 1 && ticks < 1000) {
    f.update(0.2);
    ticks++;
  }
  t.is(f.factor, 1);
  t.true(ticks > 40, `back to 1x after ${ticks} ticks: it shrinks slower than it grows`);
  t.is(f.update(Number.NaN), 1, 'a reading that is not a number changes nothing');
});
