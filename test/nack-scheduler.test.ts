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

test('the holdoff follows the measured repair round trip, within its floor and ceiling', (t) => {
  const s = new NackScheduler({ backoffMs: 0, holdoffMs: 300, minHoldoffMs: 20, groupSize: 1, maxUnitsInFlight: 4, random: () => 0 });
  const gap = (unit: number) => ({ unit, fragmentCount: 8, missing: all(8) });
  const poll = (now: number, u: number) => s.poll(now, [u], () => gap(u));
  t.is(s.holdoffMs, 300, 'no repair timed yet: the ceiling');
  // Unit 1: NACKed at 0 (the backoff is 0), its repair data arrives 4 ms later.
  poll(0, 1);
  t.is(poll(0, 1).length, 1);
  s.progress(1, 4);
  t.is(s.srttMs, 4);
  t.is(s.holdoffMs, 20, '4 + 4 x 2 ms is under the floor');
  // Unit 2: NACKed, and the repair is lost: asked again once the (short) holdoff ends.
  poll(100, 2);
  t.is(poll(100, 2).length, 1);
  t.deepEqual(poll(119, 2), [], 'still holding off');
  poll(120, 2); // the holdoff ended: a new backoff (0 ms)...
  t.is(poll(120, 2).length, 1, '...and the gap is asked for again, 20 ms after the first NACK, not 300');
  // Slow repairs raise it again, up to the ceiling.
  for (let i = 0; i < 20; i++) {
    const u = 10 + i;
    const at = 1000 + i * 1000;
    poll(at, u);
    poll(at, u);
    s.progress(u, at + 500);
  }
  t.is(s.holdoffMs, 300);
});

test('data arriving while holding off keeps the holdoff running (a repair in progress is not asked for again)', (t) => {
  const s = new NackScheduler({ backoffMs: 0, holdoffMs: 80, minHoldoffMs: 20, groupSize: 1, maxUnitsInFlight: 4, random: () => 0 });
  const poll = (now: number) => s.poll(now, [1], () => ({ unit: 1, fragmentCount: 8, missing: all(8) }));
  poll(0);
  t.is(poll(0).length, 1);
  // Repair data trickles in every 30 ms, well past the 80 ms holdoff: no second NACK meanwhile.
  for (let now = 30; now <= 300; now += 30) {
    s.progress(1, now);
    t.deepEqual(poll(now), [], `asked again at ${now} ms while the repair was arriving`);
  }
});

test('a NACK that brings no data doubles the unit\'s next holdoff up to 4 x the ceiling; its first data resets it', (t) => {
  const s = new NackScheduler({ backoffMs: 0, holdoffMs: 80, minHoldoffMs: 20, groupSize: 1, maxUnitsInFlight: 4, random: () => 0 });
  const poll = (now: number, u: number) => s.poll(now, [u], () => ({ unit: u, fragmentCount: 8, missing: all(8) }));
  // A repair timed at 4 ms: the holdoff is at its 20 ms floor.
  poll(0, 9);
  poll(0, 9);
  s.progress(9, 4);
  t.is(s.holdoffMs, 20);
  // Unit 1's holder never answers: its NACKs are 20, 40, 80, 160, 320 and 320 ms apart (+ 1 ms
  // each: a poll every ms ends the holdoff, the next one the 0 ms backoff).
  const asked: number[] = [];
  for (let now = 0; now <= 1000; now++) if (poll(now, 1).length) asked.push(now);
  t.deepEqual(asked.slice(1).map((a, i) => a - asked[i]), [21, 41, 81, 161, 321, 321], `asked at ${asked.join(', ')}`);
  // Data of the unit arrives: the NACKs after it are the short holdoff apart again.
  const last = asked[asked.length - 1];
  s.progress(1, last + 5);
  const next: number[] = [];
  for (let now = last + 6; now <= last + 800; now++) if (poll(now, 1).length) next.push(now);
  t.deepEqual(next.slice(1, 3).map((a, i) => a - next[i]), [21, 41], `asked at ${next.join(', ')}`);
});

test('echoMs: a NACK that brought nothing is asked once more, for what of it is still missing, before the holdoff ends', (t) => {
  const s = new NackScheduler({ backoffMs: 10, holdoffMs: 80, groupSize: 1, maxUnitsInFlight: 4, random: () => 0, echoMs: 15 });
  const gaps = new Map<number, NackRequest>([[1, { unit: 1, fragmentCount: 16, missing: new Uint8Array([0xf0, 0x01]) }]]);
  const poll = (now: number) => s.poll(now, gaps.keys(), (u) => gaps.get(u) ?? null);
  t.deepEqual(poll(0), []); // ripe: the backoff starts (0 ms with random 0)
  const [nack] = poll(0);
  t.deepEqual([...nack.missing], [0xf0, 0x01]);
  t.deepEqual(poll(14), [], 'nothing before echoMs');
  // Two of the asked fragments came some other way (not data after our NACK: progress() is not called).
  gaps.set(1, { unit: 1, fragmentCount: 16, missing: new Uint8Array([0x30, 0x01]) });
  const echo = poll(15);
  t.is(echo.length, 1, 'echoed at echoMs');
  t.deepEqual([...echo[0].missing], [0x30, 0x01], 'only what is still missing');
  t.deepEqual(poll(40), [], 'once');
  t.is(s.sent, 2);
  t.is(s.echoed, 1);
});

test('echoMs: data of the unit after our NACK (a repair on its way) cancels the echo; without echoMs there is none', (t) => {
  for (const echoMs of [15, undefined]) {
    const s = new NackScheduler({ backoffMs: 10, holdoffMs: 80, groupSize: 1, maxUnitsInFlight: 4, random: () => 0, ...(echoMs ? { echoMs } : {}) });
    const gap: NackRequest = { unit: 2, fragmentCount: 8, missing: new Uint8Array([0x81]) };
    const poll = (now: number) => s.poll(now, [2], () => gap);
    poll(0);
    t.is(poll(0).length, 1, 'the NACK');
    if (echoMs) s.progress(2, 5);
    t.deepEqual(poll(20), [], `no echo (echoMs ${echoMs})`);
    t.is(s.echoed, 0);
  }
});

test('echoMs: on a path whose repairs take longer, the echo waits for srtt + 2 rttvar of them', (t) => {
  const s = new NackScheduler({ backoffMs: 10, holdoffMs: 200, minHoldoffMs: 20, groupSize: 1, maxUnitsInFlight: 4, random: () => 0, echoMs: 15 });
  const gap: NackRequest = { unit: 1, fragmentCount: 8, missing: new Uint8Array([0x80]) };
  const poll = (now: number, u = 1) => s.poll(now, [u], () => ({ ...gap, unit: u }));
  // Two rounds whose repairs came 40 ms after the NACK: srtt 40, rttvar 15 (RFC 6298), so the echo waits 70 ms.
  poll(0);
  poll(0);
  s.progress(1, 40);
  s.done(1);
  poll(100, 2);
  poll(100, 2);
  s.progress(2, 140);
  s.done(2);
  t.is(s.srttMs, 40);
  poll(200, 3);
  t.is(poll(200, 3).length, 1, 'the NACK');
  t.deepEqual(poll(215, 3), [], 'not at echoMs');
  t.deepEqual(poll(269, 3), [], 'not before srtt + 2 rttvar');
  t.is(poll(270, 3).length, 1, 'then the echo');
  t.is(s.echoed, 1);
});

test('echoMs: a suppressed NACK is echoed too, for our gaps, when no data of the unit came; data cancels it', (t) => {
  for (const data of [false, true]) {
    const s = new NackScheduler({ backoffMs: 10, holdoffMs: 80, groupSize: 1, maxUnitsInFlight: 4, random: () => 0.5, echoMs: 15 });
    const gap: NackRequest = { unit: 3, fragmentCount: 8, missing: new Uint8Array([0x41]) };
    const poll = (now: number) => s.poll(now, [3], () => gap);
    t.deepEqual(poll(0), []); // ripe: the backoff starts
    s.heardNack(3, 8, new Uint8Array([0xff]), 2); // another receiver's NACK covers our gaps
    t.deepEqual(poll(20), [], 'suppressed');
    t.is(s.suppressed, 1);
    if (data) s.progress(3, 25); // its repair reached us (some of it)
    t.deepEqual(poll(34), [], 'nothing before echoMs');
    const echo = poll(35);
    if (data) t.deepEqual(echo, [], 'data of the unit came: no echo, the holdoff waits');
    else t.deepEqual(echo.map((n) => [...n.missing]), [[0x41]], 'echoed: the repair was lost to us');
    t.is(s.echoed, data ? 0 : 1);
  }
});

test('askAgainAtOnce: a holdoff that ends with gaps after repairs came asks at once; one in which nothing came backs off first', (t) => {
  // random 0.99: the backoff is nearly its whole 15 ms; the first NACK after it. Holdoff 80 ms (no round trip timed yet).
  for (const atOnce of [true, false]) {
    const s = new NackScheduler({ backoffMs: 15, holdoffMs: 80, groupSize: 1, maxUnitsInFlight: 4, random: () => 0.99, ...(atOnce ? { askAgainAtOnce: true } : {}) });
    const gaps = new Map<number, NackRequest>([
      [1, { unit: 1, fragmentCount: 16, missing: new Uint8Array([0xf0, 0x01]) }],
      [2, { unit: 2, fragmentCount: 16, missing: new Uint8Array([0x0f, 0x00]) }],
    ]);
    const poll = (now: number) => s.poll(now, gaps.keys(), (u) => gaps.get(u) ?? null);
    const asked = new Map<number, number[]>([[1, []], [2, []]]);
    for (let now = 0; now <= 200; now++) {
      // Unit 1's repair comes 4 ms after its first NACK and leaves one fragment missing (lost to us); unit 2's never comes.
      const first = asked.get(1)![0];
      if (first !== undefined && now === first + 4) {
        s.progress(1, now);
        gaps.set(1, { unit: 1, fragmentCount: 16, missing: new Uint8Array([0x00, 0x01]) });
      }
      for (const n of poll(now)) asked.get(n.unit)!.push(now);
    }
    const [a1, b1] = asked.get(1)!;
    const [a2, b2] = asked.get(2)!;
    t.log(`askAgainAtOnce ${atOnce}: unit 1 asked at ${a1} and ${b1} ms, unit 2 at ${a2} and ${b2} ms`);
    // Without minHoldoffMs the holdoff is a constant 80 ms (the data at +4 ms extends it only to +44).
    const backoff = normBackoff(15, 1, 0.99);
    if (atOnce) t.is(b1 - a1, 80, 'asked again the moment the holdoff ended');
    else t.is(b1 - a1, 80 + Math.ceil(backoff), 'asked again one backoff after the holdoff');
    t.is(b2 - a2, 80 + Math.ceil(backoff), 'a NACK that brought nothing backs off either way');
  }
});
