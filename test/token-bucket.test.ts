import test from 'ava';
import { TokenBucket } from '../src/agent/token-bucket';

test('spends the burst, then paces at the rate', (t) => {
  const b = new TokenBucket(1000, 500, 0); // 1000 B/s, 500 B burst
  t.is(b.take(500, 0), 0);
  t.is(b.take(100, 0), 100); // 100 B at 1000 B/s = 100 ms
  t.is(b.take(100, 100), 0);
  t.true(b.take(100, 100) > 0);
});

test('over a long run the bytes taken never exceed rate*time + burst', (t) => {
  const b = new TokenBucket(10_000, 2_000, 0);
  let sent = 0;
  for (let now = 0; now <= 10_000; now++) while (b.take(700, now) === 0) sent += 700;
  t.true(sent <= 10_000 * 10 + 2_000);
  t.true(sent >= 10_000 * 10 - 2_000);
});
