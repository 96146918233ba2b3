import test from 'ava';
import { NackRequest, NackScheduler, normBackoff } from '../src/agent/nack-scheduler';
import { RepairScheduler } from '../src/agent/repair-scheduler';

const all = (n: number) => {
  const b = new Uint8Array(Math.ceil(n / 8));
  for (let i = 0; i < n; i++) b[i >> 3] |= 0x80 >> (i & 7);
  return b;
};

function sched(random: () => number) {
  const s = new NackScheduler({ backoffMs: 100, holdoffMs: 300, groupSize: 8, maxUnitsInFlight: 4, random });
  /** The gaps are the ripe units; their bitmaps are looked up only when the scheduler asks. */
  const poll = (now: number, gaps: NackRequest[]) => s.poll(now, gaps.map((g) => g.unit), (u: number) => gaps.find((g) => g.unit === u) ?? null);
  return Object.assign(s, { pollGaps: poll });
}

test('NORM backoff stays within [0, T] and grows with U', (t) => {
  t.is(normBackoff(100, 8, 0), 0);
  t.true(Math.abs(normBackoff(100, 8, 1) - 100) < 1e-9);
  t.true(normBackoff(100, 8, 0.5) > normBackoff(100, 8, 0.2));
});

test('a gap is NACKed only after the random backoff', (t) => {
  const s = sched(() => 0.5);
  const gap = { unit: 3, fragmentCount: 10, missing: all(10) };
  t.deepEqual(s.pollGaps(0, [gap]), []);
  const due = normBackoff(100, 8, 0.5);
  t.deepEqual(s.pollGaps(due - 1, [gap]), []);
  const out = s.pollGaps(due, [gap]);
  t.is(out.length, 1);
  t.is(out[0].unit, 3);
  // then holds off: no second NACK before the holdoff ends
  t.deepEqual(s.pollGaps(due + 299, [gap]), []);
});

test('a NACK heard during backoff that covers our gaps suppresses ours', (t) => {
  const s = sched(() => 0.9);
  const gap = { unit: 1, fragmentCount: 16, missing: all(16) };
  s.pollGaps(0, [gap]);
  s.heardNack(1, 16, all(16), 10);
  t.deepEqual(s.pollGaps(1000, [gap]), []);
  t.is(s.suppressed, 1);
  t.is(s.sent, 0);
});

test('a partial overlap sends only the fragments nobody asked for', (t) => {
  const s = sched(() => 0.9);
  s.pollGaps(0, [{ unit: 1, fragmentCount: 16, missing: all(16) }]);
  s.heardNack(1, 16, new Uint8Array([0xff, 0x00]), 10);
  const out = s.pollGaps(1000, [{ unit: 1, fragmentCount: 16, missing: all(16) }]);
  t.deepEqual([...out[0].missing], [0x00, 0xff]);
});

test('a NACK heard before our own gap was ripe: we ask within one backoff, only for the fragments it did not name', (t) => {
  const s = sched(() => 0.5);
  const due = normBackoff(100, 8, 0.5);
  s.heardNack(1, 16, new Uint8Array([0xff, 0x00]), 0);
  const gap = { unit: 1, fragmentCount: 16, missing: all(16) };
  t.deepEqual(s.pollGaps(due - 1, [gap]), []);
  const out = s.pollGaps(due, [gap]);
  t.is(out.length, 1, 'not after the holdoff (300 ms): within the backoff');
  t.deepEqual([...out[0].missing], [0x00, 0xff]);
});

test('a NACK heard before our own gap was ripe that covers it: suppressed, then the holdoff', (t) => {
  const s = sched(() => 0.5);
  const due = normBackoff(100, 8, 0.5);
  s.heardNack(1, 16, all(16), 0);
  const gap = { unit: 1, fragmentCount: 16, missing: new Uint8Array([0x0f, 0x00]) };
  t.deepEqual(s.pollGaps(due, [gap]), []);
  t.is(s.suppressed, 1);
  t.deepEqual(s.pollGaps(due + 299, [gap]), [], 'the repair gets its holdoff');
  t.deepEqual(s.pollGaps(due + 300, [gap]), [], 'its end starts a new backoff');
  t.is(s.pollGaps(due + 300 + due, [gap]).length, 1, 'and the gap is asked for again if the repair never came');
});

test('at most maxUnitsInFlight units are requested at once, and only their bitmaps are built', (t) => {
  const s = sched(() => 0);
  const gaps = Array.from({ length: 10 }, (_, u) => ({ unit: u, fragmentCount: 8, missing: all(8) }));
  s.pollGaps(0, gaps);
  t.is(s.pollGaps(0, gaps).length, 4);
  let built = 0;
  s.poll(1, gaps.map((g) => g.unit), (u) => {
    built++;
    return gaps[u];
  });
  t.is(built, 0, 'units over the limit or on a timer cost no bitmap');
});

test('repairs aggregate NACKs; a non-designated repairer yields to a repair it hears', (t) => {
  const r = new RepairScheduler({ aggregateMs: 5, backoffMs: 50, dedupMs: 100, random: () => 1 });
  r.onNack(7, 16, new Uint8Array([0xf0, 0x00]), false, 0);
  r.onNack(7, 16, new Uint8Array([0x0f, 0x01]), false, 1);
  r.sawFragment(7, 0, 16, 10); // someone else repaired fragment 0
  t.deepEqual(r.due(54), []);
  t.deepEqual(r.due(55), [{ unit: 7, fragments: [1, 2, 3, 4, 5, 6, 7, 15] }]);
  // a NACK for fragments repaired a moment ago is not answered again
  r.onNack(7, 16, new Uint8Array([0x80, 0x00]), true, 60);
  t.deepEqual(r.due(100), []);
});

test('repair history is dropped once idle, so it does not grow with the release', (t) => {
  const r = new RepairScheduler({ aggregateMs: 1, backoffMs: 1, dedupMs: 50, random: () => 0 });
  for (let u = 0; u < 1000; u++) r.sawFragment(u, 0, 700, 0);
  t.is(r.trackedUnits, 1000);
  r.due(2000); // idle > 10 x dedupMs and past the prune interval
  t.is(r.trackedUnits, 0);
  r.sawFragment(5, 1, 700, 2800);
  r.due(3100); // pruning runs, but 300 ms idle is inside 10 x dedupMs: kept
  t.is(r.trackedUnits, 1);
});
