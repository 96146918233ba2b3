import test from 'ava';
import { formatEta, ProgressBar, RateMeter, transferLine, verifiedBytes } from '../src/cli/progress';

test('RateMeter: bytes per second over its window, from an injected clock; a new transfer starts over', (t) => {
  let now = 0;
  const m = new RateMeter(5000, () => now);
  t.is(m.rate(), null, 'nothing yet');
  m.add(0);
  now = 100;
  m.add(1000);
  t.is(m.rate(), null, 'too short to say');
  now = 1000;
  m.add(10_000);
  t.is(m.rate(), 10_000);
  // Old samples leave the window: the rate follows the recent pace.
  for (let s = 2; s <= 20; s++) {
    now = s * 1000;
    m.add(10_000 + (s - 1) * 2000);
  }
  t.is(m.rate(), 2000);
  now = 21_000;
  m.add(500); // the next release
  t.is(m.rate(), null);
});

test('formatEta and transferLine say bytes, rate and time left', (t) => {
  t.is(formatEta(0), '0:00');
  t.is(formatEta(65), '1:05');
  t.is(formatEta(3 * 3600 + 4 * 60 + 5.2), '3:04:06');
  t.is(formatEta(null), '?');
  t.is(formatEta(Infinity), '?');
  t.is(transferLine({ done: 12 * 1048576, total: 30 * 1048576, bytesPerSec: 6 * 1048576 }), '12.0 MiB of 30.0 MiB, 6.0 MiB/s, ETA 0:03');
  t.is(transferLine({ done: 0, total: 1048576, bytesPerSec: null }), '0 B of 1.0 MiB, ? MiB/s, ETA ?');
  t.is(transferLine({ done: 1048576, total: 1048576, bytesPerSec: null }), '1.0 MiB of 1.0 MiB, ? MiB/s, ETA 0:00');
  t.is(verifiedBytes({ verified: 2, total: 3 }, 2.5 * 1048576, 1048576), 2 * 1048576);
  t.is(verifiedBytes({ verified: 3, total: 3 }, 2.5 * 1048576, 1048576), 2.5 * 1048576);
});

test('ProgressBar on a terminal: the release name, bytes, rate and ETA; nothing when not a terminal', (t) => {
  let now = 0;
  const written: string[] = [];
  const tty = { isTTY: true, write: (s: string) => written.push(s) > 0 };
  const bar = new ProgressBar('agent', tty as never, () => now);
  bar.relabel('fw-2.4.img');
  now = 1000;
  bar.update(15 * 1048576, 30 * 1048576, transferLine({ done: 15 * 1048576, total: 30 * 1048576, bytesPerSec: 5 * 1048576 }));
  bar.finish();
  const line = written.join('');
  t.regex(line, /fw-2\.4\.img \[#{15}\.{15}\]  50% 15\.0 MiB of 30\.0 MiB, 5\.0 MiB\/s, ETA 0:03/);
  const quiet: string[] = [];
  const pipe = new ProgressBar('x', { isTTY: false, write: (s: string) => quiet.push(s) > 0 } as never);
  pipe.update(1, 2, 'x');
  pipe.finish();
  t.deepEqual(quiet, []);
});
