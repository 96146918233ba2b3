import test from 'ava';
import { afterRestart, InstallRecord, nextAction, reportedState } from '../src/agent/install';
import {
  abort,
  assignWaves,
  createRollout,
  directive,
  lateWave,
  parseDuration,
  parseMaxFailures,
  parseRollout,
  parseWaves,
  parseWindow,
  pause,
  report,
  resume,
  Rollout,
  RolloutSpec,
  summary,
  tick,
  WindowPart,
  windowAllows,
  windowAllowsAt,
} from '../src/server/rollout';

const REL = 'b'.repeat(32);
const PREV = 'a'.repeat(32);

function spec(over: Partial<RolloutSpec> = {}): RolloutSpec {
  return { id: 'r-0123456789ab', channel: 'stable', release: REL, previous: PREV, waves: parseWaves('25%,100%') as never, maxFailures: { count: 1 }, waveWaitMs: null, window: null, createdAt: 0, ...over };
}

const fleet = (n: number, groups = ['site-a', 'site-b']) => Array.from({ length: n }, (_, i) => ({ id: `m${i}`, group: groups[i % groups.length] }));

test('wave lists: shares must grow to 100%, group lists must end with *', (t) => {
  t.deepEqual(parseWaves('1%,10%,50%,100%'), [
    { kind: 'share', upto: 1 },
    { kind: 'share', upto: 10 },
    { kind: 'share', upto: 50 },
    { kind: 'share', upto: 100 },
  ]);
  t.deepEqual(parseWaves('site-a,site-b,*'), [
    { kind: 'groups', groups: ['site-a'] },
    { kind: 'groups', groups: ['site-b'] },
    { kind: 'groups', groups: ['*'] },
  ]);
  t.regex(parseWaves('10%,50%') as string, /must reach 100%/);
  t.regex(parseWaves('50%,10%,100%') as string, /must grow/);
  t.regex(parseWaves('site-a,site-b') as string, /does not reach 100%/);
  t.regex(parseWaves('*,site-a') as string, /must be the last/);
  t.regex(parseWaves('site-a,50%,100%') as string, /mixes/);
  t.regex(parseWaves('0%,100%') as string, /not a share/);
  t.regex(parseWaves('') as string, /comma-separated/);
  t.deepEqual(parseMaxFailures('5%'), { percent: 5 });
  t.deepEqual(parseMaxFailures('3'), { count: 3 });
  t.is(typeof parseMaxFailures('-1'), 'string');
  t.is(parseDuration('1h30m'), 5_400_000);
  t.is(parseDuration('90s'), 90_000);
  t.is(typeof parseDuration('soon'), 'string');
});

test('install windows: days, ranges, midnight, and bad strings', (t) => {
  const w = parseWindow('Mon-Fri 02:00-04:00') as WindowPart[];
  t.true(windowAllowsAt(w, 1, 2 * 60)); // Monday 02:00
  t.true(windowAllowsAt(w, 5, 3 * 60 + 59)); // Friday 03:59
  t.false(windowAllowsAt(w, 5, 4 * 60)); // Friday 04:00: the end is excluded
  t.false(windowAllowsAt(w, 6, 3 * 60)); // Saturday
  t.false(windowAllowsAt(w, 1, 1 * 60 + 59));
  const night = parseWindow('Fri 22:00-02:00') as WindowPart[];
  t.true(windowAllowsAt(night, 5, 23 * 60));
  t.true(windowAllowsAt(night, 6, 60)); // Saturday 01:00 still belongs to Friday's window
  t.false(windowAllowsAt(night, 5, 60)); // Friday 01:00 belongs to Thursday's, which there is not
  const wrap = parseWindow('Sat-Mon 00:00-24:00; 12:00-13:00') as WindowPart[];
  t.true(windowAllowsAt(wrap, 0, 600));
  t.true(windowAllowsAt(wrap, 3, 12 * 60 + 30));
  t.false(windowAllowsAt(wrap, 3, 14 * 60));
  // Local time: a Date built from local fields reads back the same wherever the test runs.
  t.true(windowAllows(w, new Date(2026, 10, 30, 2, 30).getTime())); // Monday
  t.false(windowAllows(w, new Date(2026, 10, 29, 2, 30).getTime())); // Sunday
  for (const bad of ['Mon-Fri', 'Mon-Fri 2-4', 'Funday 02:00-04:00', 'Mon-Fri 25:00-26:00', 'Mon 02:00-02:00', 'Mon-Tue-Wed 01:00-02:00', 'Mon 02:60-03:00']) {
    t.is(typeof parseWindow(bad), 'string', bad);
  }
});

test('waves are picked from a hash of member and rollout id: exact shares, stable, independent of order', (t) => {
  const members = fleet(8);
  const a = assignWaves(spec(), members);
  const b = assignWaves(spec(), [...members].reverse());
  t.deepEqual([...a.entries()].sort(), [...b.entries()].sort());
  t.is([...a.values()].filter((w) => w === 0).length, 2); // 25% of 8
  const other = assignWaves(spec({ id: 'r-ba9876543210' }), members);
  const first = (m: Map<string, number>) => [...m.entries()].filter(([, w]) => w === 0).map(([id]) => id).sort().join();
  // Another rollout id draws another first wave (for these ids, checked once).
  t.not(first(a), first(other));
  const groups = assignWaves(spec({ waves: parseWaves('site-b,*') as never }), members);
  for (const m of members) t.is(groups.get(m.id), m.group === 'site-b' ? 0 : 1);
  // A late member's wave is stable too.
  t.is(lateWave(spec(), 'late-1', 'site-a'), lateWave(spec(), 'late-1', 'site-a'));
});

function firstWave(r: Rollout): string[] {
  return Object.entries(r.members).filter(([, m]) => m.wave === 0).map(([id]) => id);
}

test('failures beyond --max-failures in the open wave halt the rollout; nobody else installs', (t) => {
  const r = createRollout(spec(), fleet(8), 0);
  const w0 = firstWave(r);
  t.is(w0.length, 2);
  for (const id of w0) t.true(directive(r, id, r.members[id].group, 1).install);
  const later = Object.keys(r.members).find((id) => r.members[id].wave === 1)!;
  t.false(directive(r, later, r.members[later].group, 1).install);
  t.deepEqual(report(r, w0[0], 'site-a', 'failed', 'install hook: exit status 3', 10), [`rollout ${r.id}: member ${w0[0]} (${r.members[w0[0]].group}, wave 1) failed: install hook: exit status 3`]);
  t.is(r.state, 'running'); // 1 failure is allowed
  const lines = report(r, w0[1], 'site-b', 'failed', 'health check: exit status 1', 20);
  t.is(r.state, 'halted');
  t.regex(lines.join('\n'), /halted: wave 1 has 2 failure\(s\) of 2 member\(s\), more than the 1 allowed/);
  const d = directive(r, later, r.members[later].group, 30);
  t.false(d.install);
  t.false(d.stage); // stay on the previous release
  t.is(r.openWave, 0);
  report(r, w0[0], 'site-a', 'rolled-back', null, 40);
  const s = summary(r, 50);
  t.is(s.state, 'halted');
  t.deepEqual(
    s.failures.map((f) => [f.member, f.reason, f.state]).sort(),
    [
      [w0[0], 'install hook: exit status 3', 'rolled-back'],
      [w0[1], 'health check: exit status 1', 'failed'],
    ].sort(),
  );
  t.is(s.waves[0].rolledBack, 1);
  t.is(s.waves[0].failed, 1);
  // A halted rollout does not resume; it can be aborted.
  t.regex(resume(r, 60)!, /only a paused rollout resumes/);
  t.is(abort(r, false, 70), null);
  t.is(r.state, 'aborted');
});

test('reports only move forward: a re-sent or stale state changes nothing', (t) => {
  const r = createRollout(spec({ waves: parseWaves('100%') as never }), fleet(2), 0);
  report(r, 'm0', 'site-a', 'installed', null, 1);
  report(r, 'm0', 'site-a', 'committed', null, 2);
  t.deepEqual(report(r, 'm0', 'site-a', 'installed', null, 3), []);
  t.deepEqual(report(r, 'm0', 'site-a', 'staged', null, 3), []);
  t.is(r.members.m0.state, 'committed');
  report(r, 'm1', 'site-b', 'failed', 'x', 4);
  t.deepEqual(report(r, 'm1', 'site-b', 'committed', null, 5), []);
  t.is(r.members.m1.state, 'failed');
});

test('a rollback heard without its failure (both between two polls) counts as a failure; one after a commit does not', (t) => {
  const r = createRollout(spec({ waves: parseWaves('100%') as never, maxFailures: { count: 1 } }), fleet(3), 0);
  report(r, 'm0', 'site-a', 'staged', null, 1);
  report(r, 'm0', 'site-a', 'rolled-back', 'install hook: exit status 2', 2);
  t.true(r.members.m0.failed);
  t.is(r.members.m0.reason, 'install hook: exit status 2');
  report(r, 'm1', 'site-b', 'committed', null, 3);
  report(r, 'm1', 'site-b', 'rolled-back', 'rollout aborted with --rollback', 4);
  t.false(r.members.m1.failed);
  t.is(r.state, 'running');
  report(r, 'm2', 'site-a', 'rolled-back', 'health check: exit status 1', 5);
  t.is(r.state, 'halted');
});

test('pause holds the next wave; abort --rollback tells members on the new release to roll back', (t) => {
  const r = createRollout(spec({ maxFailures: { percent: 50 } }), fleet(8), 0);
  const w0 = firstWave(r);
  t.is(pause(r, 1), null);
  t.false(directive(r, w0[0], 'site-a', 2).install);
  for (const id of w0) report(r, id, r.members[id].group, 'committed', null, 3);
  t.is(r.openWave, 0, 'no wave opens while paused');
  t.is(resume(r, 4), null);
  tick(r, 5);
  t.is(r.openWave, 1);
  t.is(abort(r, true, 6), null);
  t.true(directive(r, w0[0], r.members[w0[0]].group, 7).rollback);
  const pending = Object.keys(r.members).find((id) => r.members[id].wave === 1)!;
  const d = directive(r, pending, r.members[pending].group, 7);
  t.false(d.rollback);
  t.false(d.install);
});

test('the state file round-trips and rejects damage', (t) => {
  const r = createRollout(spec({ window: 'Mon-Fri 02:00-04:00', waveWaitMs: 60_000 }), fleet(8), 5);
  report(r, 'm1', 'site-b', 'failed', 'exit 1', 9);
  const back = parseRollout(Buffer.from(JSON.stringify(r)));
  t.deepEqual(back, r);
  t.regex(parseRollout(Buffer.from(JSON.stringify({ ...r, version: 2 }))) as string, /unknown version/);
  t.regex(parseRollout(Buffer.from(JSON.stringify({ ...r, openWave: 5 }))) as string, /openWave/);
  t.regex(parseRollout(Buffer.from(JSON.stringify({ ...r, members: { m1: { ...r.members.m1, wave: 9 } } }))) as string, /wave is out of range/);
  t.regex(parseRollout(Buffer.from('{')) as string, /not JSON/);
});

test('agent steps: install only in an open wave and inside the window, a restart mid-hook does not rerun it', (t) => {
  const rec: InstallRecord = { version: 1, release: REL, rollout: 'r-0123456789ab', state: 'staged', reason: null, rollbackRan: false, path: '/x' };
  const r = createRollout(spec({ waves: parseWaves('100%') as never, window: 'Mon-Fri 02:00-04:00' }), fleet(1), 0);
  const d = directive(r, 'm0', 'site-a', 0);
  const w = parseWindow(d.window!) as WindowPart[];
  const monday3 = new Date(2026, 10, 30, 3, 0).getTime();
  const monday5 = new Date(2026, 10, 30, 5, 0).getTime();
  t.is(nextAction(rec, d, w, monday3, true), 'install');
  t.is(nextAction(rec, d, w, monday5, true), 'none');
  t.is(nextAction(rec, { ...d, install: false }, w, monday3, true), 'none');
  t.is(nextAction({ ...rec, state: 'installed' }, d, w, monday5, true), 'health'); // the window gates installs, not checks
  t.is(nextAction({ ...rec, state: 'failed' }, d, w, monday5, true), 'rollback');
  t.is(nextAction({ ...rec, state: 'failed' }, d, w, monday5, false), 'none');
  t.is(nextAction({ ...rec, state: 'failed', rollbackRan: true }, d, w, monday5, true), 'none');
  t.is(nextAction({ ...rec, state: 'committed' }, { ...d, rollback: true }, w, monday5, true), 'rollback');
  t.is(nextAction({ ...rec, state: 'committed' }, d, w, monday5, true), 'none');
  const crashed = afterRestart({ ...rec, state: 'installing' });
  t.is(crashed.state, 'failed');
  t.regex(crashed.reason!, /interrupted/);
  t.is(nextAction(afterRestart({ ...rec, state: 'rolling-back', reason: 'x' }), d, w, monday5, true), 'none');
  t.is(reportedState('installing'), 'staged');
  t.is(reportedState('rolling-back'), 'failed');
});

/**
 * A healthy rollout, simulated: the server's rollout and 200 agent cores under one fake
 * clock (5-minute steps from a Friday noon), waves 1%,10%,50%,100% and the window
 * Mon-Fri 02:00-04:00 read in local time. Installs and commits happen only in the
 * window, each wave opens only after every member of the previous ones committed, and
 * the rollout ends completed.
 */
function simulate(over: Partial<RolloutSpec>, opts: { dead?: (id: string, r: Rollout) => boolean } = {}) {
  const members = fleet(200);
  const start = new Date(2026, 10, 27, 12, 0).getTime(); // a Friday
  const r = createRollout(spec({ waves: parseWaves('1%,10%,50%,100%') as never, maxFailures: { count: 0 }, window: 'Mon-Fri 02:00-04:00', createdAt: start, ...over }), members, start);
  const recs = new Map<string, InstallRecord>();
  const installs: { id: string; at: number }[] = [];
  const commits = new Map<string, number>();
  const dead = new Set(members.filter((m) => opts.dead?.(m.id, r)).map((m) => m.id));
  const window = parseWindow(r.window!) as WindowPart[];
  let now = start;
  for (let step = 0; step < 14 * 24 * 12 && r.state === 'running'; step++, now += 5 * 60_000) {
    for (const m of members) {
      if (dead.has(m.id)) continue;
      let rec = recs.get(m.id) ?? null;
      const d = directive(r, m.id, m.group, now);
      if (!rec && d.stage) rec = { version: 1, release: REL, rollout: r.id, state: 'staged', reason: null, rollbackRan: false, path: '/p' };
      for (;;) {
        const a = nextAction(rec, directive(r, m.id, m.group, now), window, now, true);
        if (a === 'none' || !rec) break;
        if (a === 'install') {
          installs.push({ id: m.id, at: now });
          rec = { ...rec, state: 'installed' };
        } else if (a === 'health') {
          rec = { ...rec, state: 'committed' };
          commits.set(m.id, now);
        } else throw new Error(`unexpected ${a}`);
        report(r, m.id, m.group, reportedState(rec.state), null, now);
      }
      if (rec) {
        recs.set(m.id, rec);
        report(r, m.id, m.group, reportedState(rec.state), null, now);
      }
    }
    tick(r, now);
  }
  return { r, installs, commits, dead, start, now };
}

test('a healthy rollout from 1% to 100% opens wave after wave, installs only inside the window, and completes', (t) => {
  const { r, installs, commits } = simulate({});
  t.is(r.state, 'completed');
  t.is(installs.length, 200);
  t.deepEqual(
    r.waves.map((_, i) => Object.values(r.members).filter((m) => m.wave === i).length),
    [2, 18, 80, 100],
  );
  for (const i of installs) {
    const d = new Date(i.at);
    t.true(d.getDay() >= 1 && d.getDay() <= 5 && d.getHours() >= 2 && d.getHours() < 4, `install at ${d.toString()}`);
  }
  t.is(new Date(installs[0].at).getDay(), 1, 'nothing installs over the weekend');
  for (let w = 1; w < r.waves.length; w++) {
    const opened = r.openedAt[w];
    for (const [id, m] of Object.entries(r.members)) {
      if (m.wave < w) t.true(commits.get(id)! <= opened, `wave ${w + 1} opened before ${id} of wave ${m.wave + 1} committed`);
      if (m.wave >= w) t.true(installs.find((i) => i.id === id)!.at >= opened);
    }
  }
});

test('a wave with a silent member waits for it, or opens the next wave after --wave-wait', (t) => {
  const silent = (id: string, r: Rollout) => r.members[id].wave === 0 && id === Object.keys(r.members).find((x) => r.members[x].wave === 0);
  const stuck = simulate({ waves: parseWaves('10%,100%') as never }, { dead: silent });
  t.is(stuck.r.state, 'running');
  t.is(stuck.r.openWave, 0, 'without --wave-wait the next wave waits for every member');
  const hour = 3_600_000;
  const waited = simulate({ waves: parseWaves('10%,100%') as never, waveWaitMs: hour }, { dead: silent });
  t.is(waited.r.state, 'completed');
  const firstInstall = Math.min(...waited.installs.map((i) => i.at));
  t.true(waited.r.openedAt[1] - firstInstall >= hour, 'the wait counts from the first install in the wave');
  t.is(waited.installs.length, 199);
});

test('the state file parser refuses odd shapes without throwing', (t) => {
  const r = createRollout(spec(), fleet(2), 0);
  for (const waves of ['25%,100%', 42, null, [{ kind: 'share', upto: '100' }], [[1]]]) {
    t.is(typeof parseRollout(Buffer.from(JSON.stringify({ ...r, waves }))), 'string', JSON.stringify(waves));
  }
});

test('the agent follows the rollout while it runs, then the channel again', async (t) => {
  const { promises: fs } = await import('node:fs');
  const path = await import('node:path');
  const { RolloutFollower } = await import('../src/agent/install');
  const { ServerAccess } = await import('../src/net/server-access');
  const { silentLogger } = await import('../src/util/log');
  const { tmpdir } = await import('./helpers/fleet');
  const dir = await tmpdir(t);
  const fol = new RolloutFollower({ storageDir: dir, server: new ServerAccess({ url: 'http://127.0.0.1:1', plainHttp: true }), group: 'g', trustedKeys: [], hooks: () => ({ hookTimeoutMs: 1000, healthTimeoutMs: 1000 }), log: silentLogger, signal: new AbortController().signal });
  const NEXT = 'c'.repeat(32);
  t.is(await fol.target(PREV), PREV, 'no rollout: the channel');
  const r = createRollout(spec({ waves: parseWaves('100%') as never }), fleet(1), 0);
  fol.directive = directive(r, 'm0', 'site-a', 0);
  t.is(await fol.target(PREV), REL, 'running: stage the new release at once');
  t.true(fol.owns(REL));
  r.state = 'halted';
  fol.directive = directive(r, 'm0', 'site-a', 0);
  t.is(await fol.target(PREV), PREV, 'halted before installing: stay on the previous release');
  await fs.mkdir(path.join(dir, REL));
  await fs.writeFile(path.join(dir, REL, 'install.json'), JSON.stringify({ version: 1, release: REL, rollout: r.id, state: 'committed', reason: null, rollbackRan: false, path: '/x' }));
  t.is(await fol.target(PREV), REL, 'halted after committing: stay on the new release');
  t.is(await fol.target(NEXT), NEXT, 'a channel moved on by a plain publish wins');
  r.state = 'completed';
  fol.directive = directive(r, 'm0', 'site-a', 0);
  t.is(await fol.target(NEXT), NEXT, 'after completion the channel leads');
  t.is(await fol.target(REL), REL);
});

test('member ids like __proto__ and constructor are plain ids', (t) => {
  const r = createRollout(spec({ waves: parseWaves('100%') as never }), [{ id: 'constructor', group: 'g' }], 0);
  t.is(directive(r, '__proto__', 'g', 1).wave, 0);
  report(r, '__proto__', 'g', 'failed', 'x', 2);
  t.is(r.members['__proto__' as string].state, 'failed');
  t.is(r.members['constructor' as string].state, 'pending');
  t.is(({} as Record<string, unknown>).state, undefined, 'Object.prototype is untouched');
  const back = parseRollout(Buffer.from(JSON.stringify(r))) as Rollout;
  t.is(back.members['__proto__' as string].state, 'failed');
  t.is(Object.keys(back.members).length, 2);
});
