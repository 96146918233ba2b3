import test from 'ava';
import { GroupAllocator } from '../src/server/allocator';

// Member records of the 1.4 map (docs/protocol.md section 14, "Which changes are logged"):
// built once per logged change (src/server/allocator-records.ts), refreshed for counters
// alone at most every memberRefreshMs, or memberRefreshPerMemberMs per member if longer.

const mk = (unitCount: number) => new GroupAllocator({ unitCount, unitBytes: () => 1 << 20, memberTimeoutMs: 3_600_000 });

function join(g: GroupAllocator, n: number, now: number): string[] {
  const ids = Array.from({ length: n }, (_, i) => `m${i}`);
  for (const id of ids) g.heartbeat(id, now, { lanGroup: 'site1', address: '10.0.0.1', dataPort: 40000 });
  return ids;
}

test('a delta carries a record as logged, built once for every answer; a whole map shows the counters as they are', (t) => {
  const g = mk(16);
  join(g, 5, 0);
  const v0 = g.mapSince(0, undefined, undefined);
  t.is(v0.members.length, 5);
  t.is(v0.membersJson, v0.members.map((m) => JSON.stringify(m)).join(','), 'the text spliced into answers is the records');

  // A counter moves within the refresh interval: not logged, so no delta carries it; a whole map does.
  g.heartbeat('m0', 1000, { lanBytes: 4096 });
  t.deepEqual(g.mapSince(1000, v0.mapEpoch, v0.mapVersion).members, [], 'nothing logged yet');
  t.is(g.mapSince(1000, undefined, undefined).members.find((m) => m.id === 'm0')!.lanBytes, 4096, 'a whole map is current');

  // Past it, the next heartbeat logs the record; two answers that carry it share one built record.
  g.heartbeat('m0', 31_000, { lanBytes: 8192 });
  const d1 = g.mapSince(31_000, v0.mapEpoch, v0.mapVersion);
  const d2 = g.mapSince(31_001, v0.mapEpoch, 0); // a member further behind: every join, and m0's change
  t.deepEqual(d1.members.map((m) => [m.id, m.lanBytes]), [['m0', 8192]]);
  t.is(d2.members.length, 5);
  t.is(d2.members.find((m) => m.id === 'm0'), d1.members[0], 'the same record object: built once, not per answer');
  t.is(d1.membersJson, JSON.stringify(d1.members[0]));

  // A counter that moved after it was built, not logged: deltas keep the logged record, the whole map does not.
  g.heartbeat('m0', 32_000, { lanBytes: 9000 });
  t.is(g.mapSince(32_000, v0.mapEpoch, v0.mapVersion).members[0].lanBytes, 8192, 'a delta: the record as logged (counters may lag)');
  const whole = g.mapSince(32_000, undefined, undefined);
  t.is(whole.members.find((m) => m.id === 'm0')!.lanBytes, 9000);
  t.is(whole.membersJson, whole.members.map((m) => JSON.stringify(m)).join(','));

  // A change of shape (its endpoint) is logged at once and rebuilds the record.
  g.heartbeat('m0', 33_000, { dataPort: 40001 });
  const d3 = g.mapSince(33_000, v0.mapEpoch, d1.mapVersion);
  t.deepEqual(d3.members.map((m) => [m.dataPort, m.lanBytes]), [[40001, 9000]]);
});

test('counters alone are logged every memberRefreshMs, or every second per member when the allocator is larger', (t) => {
  for (const [n, quiet, logged] of [
    [10, 30_500, 30_500], // 10 members: the 30 s floor
    [100, 30_500, 100_500], // 100 members: every 100 s
  ] as const) {
    const g = mk(16);
    join(g, n, 0);
    const v0 = g.mapSince(0, undefined, undefined);
    const logs = (at: number, bytes: number) => {
      g.heartbeat('m1', at, { lanBytes: bytes });
      return g.mapSince(at, v0.mapEpoch, v0.mapVersion).members.map((m) => m.id);
    };
    t.deepEqual(logs(10_000, 1), [], `${n} members: not at 10 s`);
    if (quiet < logged) t.deepEqual(logs(quiet, 2), [], `${n} members: not at ${quiet} ms`);
    t.deepEqual(logs(logged, 3), ['m1'], `${n} members: logged at ${logged} ms`);
  }
});
