import test from 'ava';
import { CoordinationEngine, RolloutRow } from '../src/server/engine';
import { createRollout, parseWaves, report, RolloutSpec } from '../src/server/rollout';
import { SharedRollouts } from '../src/server/rollout-shared';
import { Logger } from '../src/util/log';

/** The engine's rollout table alone, with an outage switch (as PostgresEngine keeps it: one row per id). */
function fakeEngine() {
  const rows = new Map<string, RolloutRow>();
  let down = false;
  const e = {
    name: 'fake',
    async putRollouts(rs: RolloutRow[]) {
      if (down) throw new Error('connection refused');
      for (const r of rs) rows.set(r.id, r);
    },
    async rollouts(channel: string | null) {
      if (down) throw new Error('connection refused');
      return [...rows.values()].filter((r) => channel === null || r.channel === channel);
    },
  } as unknown as CoordinationEngine;
  return { e, rows, setDown: (d: boolean) => (down = d) };
}

const spec = (id: string, channel = 'stable'): RolloutSpec => ({ id, channel, release: 'b'.repeat(32), previous: 'a'.repeat(32), waves: parseWaves('100%') as never, maxFailures: { count: 0 }, waveWaitMs: null, window: null, createdAt: 0 });
const members = [{ id: 'm1', group: 'g' }, { id: 'm2', group: 'g' }];

function logger() {
  const lines: string[] = [];
  const log = { debug() {}, info: (m: string) => lines.push(`info ${m}`), warn: (m: string) => lines.push(`warn ${m}`), error: (m: string) => lines.push(`error ${m}`) } as unknown as Logger;
  return { log, lines };
}

test('a change the engine refused (it was down) is written once it answers, in its latest state, with one warning for the outage', async (t) => {
  const f = fakeEngine();
  const { log, lines } = logger();
  const shared = new SharedRollouts(f.e, log);
  const r = createRollout(spec('r-000000000001'), members, 0);
  f.setDown(true);
  await shared.put([r]);
  report(r, 'm1', 'g', 'committed', null, 1);
  await shared.put([r]);
  await shared.put([]);
  t.is(f.rows.size, 0);
  t.is(lines.filter((l) => l.startsWith('warn')).length, 1, lines.join('\n'));
  f.setDown(false);
  await shared.put([]); // the save interval's retry, with no new change
  const doc = JSON.parse(f.rows.get(r.id)!.doc) as { members: Record<string, { state: string }> };
  t.is(doc.members.m1.state, 'committed');
  t.regex(lines.join('\n'), /written to fake again/);
});

test('a channel\'s rollouts are read back from the engine; a damaged row is skipped and logged, not trusted', async (t) => {
  const f = fakeEngine();
  const { log, lines } = logger();
  const shared = new SharedRollouts(f.e, log);
  await shared.put([createRollout(spec('r-000000000001'), members, 0), createRollout(spec('r-000000000002', 'beta'), members, 0)]);
  f.rows.set('r-000000000003', { id: 'r-000000000003', channel: 'stable', doc: '{"version":1,"id":"r-000000000003"' });
  t.deepEqual((await shared.load('stable')).map((r) => r.id), ['r-000000000001']);
  t.regex(lines.join('\n'), /ignoring r-000000000003/);
  await shared.refresh();
  t.deepEqual(shared.others().map((r) => r.id).sort(), ['r-000000000001', 'r-000000000002']);
  // Rollouts a single server's store had, the engine lacks: passed on; one it has is not overwritten.
  const old = createRollout(spec('r-000000000001'), [{ id: 'other', group: 'x' }], 5);
  await shared.import([old, createRollout(spec('r-000000000004'), members, 0)]);
  t.true(f.rows.has('r-000000000004'));
  t.false(f.rows.get('r-000000000001')!.doc.includes('"other"'));
});
