import test from 'ava';
import { REGISTRY_PROGRESS_MS, REGISTRY_REFRESH_MS, RegistryWriter } from '../src/server/registry-writer';

const row = (member: string, over: Partial<{ complete: boolean; verifiedUnits: number; address: string | null; group: string }> = {}) => ({
  release: 'ab'.repeat(16), member, group: 'east', key: `${'ab'.repeat(16)}/east`, instance: 'http://a', complete: false, verifiedUnits: 0, address: '10.0.0.1', ...over,
});

test('the registry gets a member when it is new, when completion or address changes at once, its progress every 10 s, and nothing else but a refresh every 60 s', (t) => {
  const w = new RegistryWriter();
  const ids = (rs: { member: string }[]) => rs.map((r) => r.member);
  t.deepEqual(ids(w.pick([row('a'), row('b')], 0)), ['a', 'b']);
  t.deepEqual(ids(w.pick([row('a'), row('b')], 2000)), [], 'nothing changed');
  t.deepEqual(ids(w.pick([row('a', { verifiedUnits: 5 }), row('b')], 4000)), [], 'progress waits for its interval');
  t.deepEqual(ids(w.pick([row('a', { verifiedUnits: 9 }), row('b', { complete: true })], 6000)), ['b'], 'completion goes at once');
  t.deepEqual(ids(w.pick([row('a', { verifiedUnits: 9 }), row('b', { complete: true })], REGISTRY_PROGRESS_MS)), ['a']);
  t.deepEqual(ids(w.pick([row('a', { verifiedUnits: 9, address: '10.0.0.2' }), row('b', { complete: true })], REGISTRY_PROGRESS_MS + 2000)), ['a'], 'a new address goes at once');
  t.deepEqual(ids(w.pick([row('a', { verifiedUnits: 9, address: '10.0.0.2' }), row('b', { complete: true })], 6000 + REGISTRY_REFRESH_MS)), ['b'], 'refreshed (last_seen) once a minute');
  // A member gone from the views is forgotten: back, it is new again.
  w.pick([row('b', { complete: true })], 70_000);
  t.deepEqual(ids(w.pick([row('a', { verifiedUnits: 9, address: '10.0.0.2' }), row('b', { complete: true })], 72_000)), ['a']);
  // A write the engine refused makes its rows due again.
  const due = w.pick([row('c')], 74_000);
  w.failed(due);
  t.deepEqual(ids(w.pick([row('c')], 76_000)), ['c']);
});
