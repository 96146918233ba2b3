import test from 'ava';
import { CrossGroupState } from '../src/agent/core/cross-group';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';

/*
 * Where a gateway forwards a NACK for a unit its map names no holder for (a held stream
 * heartbeat's map is up to heartbeatMs old): the member of another group that sent it a
 * copy of the unit, else one that announced it (src/agent/core/repair-flow.ts forwardNack).
 */

test('the sender of a copy wins over an announcer, the first copy sender stays, and a held unit forgets both', (t) => {
  const g = new CrossGroupState();
  const a = { address: '10.0.1.5', port: 4000 };
  const b = { address: '10.0.1.6', port: 4001 };
  t.is(g.sourceOf(7), null);
  g.sentUs(7, a, false);
  t.deepEqual(g.sourceOf(7), a, 'an announce names a source while no copy came');
  g.sentUs(7, b, true);
  t.deepEqual(g.sourceOf(7), b, 'a copy replaces an announcer');
  g.sentUs(7, a, true);
  g.sentUs(7, a, false);
  t.deepEqual(g.sourceOf(7), b, 'the first copy sender stays');
  g.forgetUnit(7);
  t.is(g.sourceOf(7), null, 'held: forgotten');
});

test('sources are bounded: past the cap the table starts again rather than grow', (t) => {
  const g = new CrossGroupState();
  const cap = AGENT_DEFAULTS.maxCrossPaths * 4;
  for (let u = 0; u < cap; u++) g.sentUs(u, { address: '10.0.1.5', port: 4000 }, true);
  t.truthy(g.sourceOf(0));
  g.sentUs(cap, { address: '10.0.1.5', port: 4000 }, true);
  t.is(g.sourceOf(0), null, 'cleared at the cap');
  t.truthy(g.sourceOf(cap));
});
