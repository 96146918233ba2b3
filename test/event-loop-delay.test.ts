import test from 'ava';
import { startFleet } from './helpers/fleet';
import { EventLoopDelay } from '../src/util/metrics';

// Node's reset of an event-loop delay monitor (EventLoopDelay.fold resets it) forgets when
// its timer last ran, so the interval a fold falls in is not recorded, a blocked loop
// included. The server folds when scraped (and when its 10 ms monitor goes idle), never on
// a timer of its own, so a block between two scrapes is always in the next one.

const busy = (ms: number) => {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    /* busy */
  }
};
const above = (eld: EventLoopDelay, s: number) => eld.histogram.counts.reduce((n, c, i) => (i > 0 && eld.histogram.bounds[i - 1] >= s ? n + c : n), 0);

test.serial('the server counts a blocked loop between two scrapes once, as a sample above 100 ms', async (t) => {
  const f = await startFleet(t, { size: 65536, unitSize: 65536, heartbeatMs: 200 });
  const eld = (f.server as unknown as { eventLoopDelay: EventLoopDelay }).eventLoopDelay;
  await new Promise((r) => setTimeout(r, 1000));
  f.server.metrics();
  const before = above(eld, 0.1);
  // Past the interval the scrape's own fold fell in (Node's timer runs every 10 ms).
  await new Promise((r) => setTimeout(r, 50));
  const mode = eld.sampling;
  busy(300);
  await new Promise((r) => setTimeout(r, 50));
  f.server.metrics();
  t.is(above(eld, 0.1) - before, 1, `the 300 ms block is one sample above 100 ms (the loop was sampled ${mode})`);
});

/** A loop clock the test moves: time in ms, and the loop's active and idle ms so far. */
function fakeClock() {
  const c = { t: 0, active: 0, idle: 0 };
  type U = { idle: number; active: number; utilization: number };
  const clock = {
    now: () => c.t,
    eventLoopUtilization: (a?: U, b?: U): U => {
      const cur = a ?? { idle: c.idle, active: c.active, utilization: 0 };
      if (!b) return cur;
      const active = cur.active - b.active;
      const idle = cur.idle - b.idle;
      return { active, idle, utilization: active + idle > 0 ? active / (active + idle) : 0 };
    },
  };
  /** One tick of TICK_MS, of which `activeMs` busy, run `lateMs` late. */
  const step = (eld: EventLoopDelay, activeMs: number, lateMs = 0) => {
    c.t += TICK_MS + lateMs;
    c.active += activeMs;
    c.idle += TICK_MS + lateMs - activeMs;
    eld.tick(TICK_MS);
  };
  return { clock, step };
}
const TICK_MS = 500;
const samples = (eld: EventLoopDelay) => eld.histogram.counts.reduce((a, b) => a + b, 0);

test.serial('an idle loop is sampled by the owner\'s ticks only; a busy or late tick starts the 10 ms monitor until the loop is quiet again', (t) => {
  const { clock, step } = fakeClock();
  const eld = new EventLoopDelay(10, clock as never);
  t.teardown(() => eld.stop());
  let folds = 0;
  const fold = eld.fold.bind(eld);
  eld.fold = () => {
    folds++;
    fold();
  };
  eld.start();
  t.is(eld.sampling, 'fine', 'a starting process is watched closely');
  for (let i = 0; i < EventLoopDelay.IDLE_TICKS; i++) step(eld, 5); // 1% busy
  t.is(eld.busy, 5 / TICK_MS, 'the last tick\'s utilization, which the server\'s load factor reads');
  t.is(eld.sampling, 'coarse', 'quiet for IDLE_TICKS ticks');
  t.is(folds, 1, 'what the fine monitor recorded is folded when it stops');
  const s0 = samples(eld);
  for (let i = 0; i < 20; i++) step(eld, 5);
  t.is(eld.sampling, 'coarse');
  t.is(samples(eld) - s0, 20, 'each tick of an idle loop is a sample');
  t.is(eld.ticks.fine, EventLoopDelay.IDLE_TICKS);
  step(eld, 20, 250); // a 250 ms block held the tick back
  t.is(above(eld, 0.2), 1, 'the late tick is recorded as 250 ms late');
  t.is(eld.sampling, 'fine', 'a late tick starts the fine monitor');
  const s1 = samples(eld);
  for (let i = 0; i < 5; i++) step(eld, 150); // 30% busy: stays fine
  t.is(eld.sampling, 'fine');
  for (let i = 0; i < EventLoopDelay.IDLE_TICKS - 1; i++) step(eld, 5);
  t.is(eld.sampling, 'fine', 'not before IDLE_TICKS quiet ticks');
  t.is(folds, 1);
  step(eld, 5);
  t.is(eld.sampling, 'coarse');
  t.is(folds, 2);
  t.is(eld.ticks.fine, 2 * EventLoopDelay.IDLE_TICKS + 5);
  // Ticks while the fine monitor ran are not samples of their own (the fine monitor's samples, from Node's real
  // timer over the few ms this test took, may add some).
  t.true(samples(eld) >= s1);
  step(eld, EventLoopDelay.BUSY * TICK_MS);
  t.is(eld.sampling, 'fine', `utilization of ${EventLoopDelay.BUSY} starts it`);
  eld.stop();
  step(eld, 5, 1000);
  t.is(above(eld, 0.5), 0, 'no tick is taken after stop()');
});

test.serial('a real 300 ms block is one sample above 100 ms, whichever way the loop was being sampled', async (t) => {
  const eld = new EventLoopDelay();
  eld.start();
  const timer = setInterval(() => eld.tick(100), 100);
  t.teardown(() => {
    clearInterval(timer);
    eld.stop();
  });
  // Long enough for IDLE_TICKS quiet ticks: on an idle box the block comes while the loop is sampled coarsely.
  await new Promise((r) => setTimeout(r, 100 * (EventLoopDelay.IDLE_TICKS + 3)));
  const mode = eld.sampling;
  const before = above(eld, 0.1);
  busy(300);
  await new Promise((r) => setTimeout(r, 150));
  eld.fold();
  t.is(above(eld, 0.1) - before, 1, `one sample above 100 ms (sampled ${mode} before it, ${eld.sampling} at the end)`);
  t.true(eld.ticks.all >= 3);
});
