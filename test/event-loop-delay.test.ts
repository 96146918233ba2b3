import test from 'ava';
import { startFleet } from './helpers/fleet';

// Node's reset of an event-loop delay monitor (EventLoopDelay.fold resets it) forgets when
// its timer last ran, so the interval a fold falls in is not recorded, a blocked loop
// included. The server folds when scraped, never on its own timer, so a block between two
// scrapes is always in the next one.

const busy = (ms: number) => {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    /* busy */
  }
};

test('the server folds its event-loop delay only when scraped, so a blocked loop between scrapes is counted', async (t) => {
  const f = await startFleet(t, { size: 65536, unitSize: 65536, heartbeatMs: 200 });
  const eld = (f.server as unknown as { eventLoopDelay: { fold: () => void; histogram: { bounds: number[]; counts: number[] } } }).eventLoopDelay;
  let folds = 0;
  const fold = eld.fold.bind(eld);
  eld.fold = () => {
    folds++;
    fold();
  };
  // Ten of the server's ticks (every 100 ms at heartbeat_ms 200).
  await new Promise((r) => setTimeout(r, 1000));
  t.is(folds, 0, 'no fold between scrapes');
  const above = () => eld.histogram.counts.reduce((n, c, i) => (i > 0 && eld.histogram.bounds[i - 1] >= 0.1 ? n + c : n), 0);
  f.server.metrics();
  const before = above();
  // Past the interval the scrape's own fold fell in (Node's timer runs every 10 ms).
  await new Promise((r) => setTimeout(r, 50));
  busy(300);
  await new Promise((r) => setTimeout(r, 50));
  f.server.metrics();
  t.is(folds, 2);
  t.is(above() - before, 1, 'the 300 ms block is one sample above 100 ms');
});
