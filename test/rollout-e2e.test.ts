import test from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { readChannel } from '../src/release/channels';
import { summary } from '../src/server/rollout';
import { startRolloutFleet } from './helpers/rollout-fleet';
import { runCli } from './helpers/fleet';

type Summary = ReturnType<typeof summary>;

/**
 * Loopback end-to-end rollouts with real agent processes (run under the heavy lock:
 * `flock /tmp/fleetcast-heavy.lock npx ava dist/test/rollout-e2e.test.js`).
 */
test.serial('a rollout halts after its first wave when 2 of its members fail; they roll back, nobody else installs, everyone keeps the release staged', async (t) => {
  const f = await startRolloutFleet(t);
  const ids = Array.from({ length: 8 }, (_, i) => `m${i}`);
  ids.forEach((id, i) => f.spawnAgent(id, i < 4 ? 'site-a' : 'site-b'));
  // Everyone on release A (installed once by on_complete) and known to the server as a channel member.
  await f.until('8 installs of A', async () => (await f.lines('installs.log')).filter((l) => l.startsWith(f.a.id)).length === 8);
  await f.until('8 channel members', async () => {
    const r = await f.cli(['rollout', 'status', '--json']);
    return (JSON.parse(r.stdout) as { channelMembers: Record<string, number> }).channelMembers.stable === 8;
  });

  const start = await f.cli(['rollout', 'start', '--channel', 'stable', '--release', f.b.id, '--waves', '25%,100%', '--max-failures', '1', '--json']);
  t.is(start.code, 0, start.stderr);
  const s0 = JSON.parse(start.stdout) as Summary;
  t.deepEqual(s0.waves.map((w) => w.members), [2, 6]);
  const first = Object.entries(s0.memberStates).filter(([, m]) => m.wave === 1).map(([id]) => id);
  // Both members of the first wave fail their install hook.
  for (const id of first) await fs.writeFile(path.join(f.dir, `fail-${id}`), '');
  // Every agent pre-stages B at once, whatever its wave.
  await f.until('all 8 staged B', async () => {
    const s = JSON.parse((await f.cli(['rollout', 'status', s0.id, '--json'])).stdout) as Summary;
    return Object.values(s.memberStates).filter((m) => m.state !== 'pending').length === 8;
  });
  await fs.writeFile(path.join(f.dir, `go-${f.b.id}`), '');

  const halted = await f.until('halted with 2 rolled back', async () => {
    const s = JSON.parse((await f.cli(['rollout', 'status', s0.id, '--json'])).stdout) as Summary;
    return s.state === 'halted' && s.failures.length === 2 && s.failures.every((x) => x.state === 'rolled-back') ? s : null;
  });
  // Give the second wave a dozen polls to (wrongly) install.
  await new Promise((r) => setTimeout(r, 3000));

  t.is(halted.state, 'halted');
  t.regex(halted.reason!, /wave 1 has 2 failure\(s\) of 2 member\(s\), more than the 1 allowed/);
  t.deepEqual(halted.failures.map((x) => x.member).sort(), [...first].sort());
  for (const x of halted.failures) t.is(x.reason, 'install hook: exit status 3');
  t.false(halted.waves[1].open);
  const installsOfB = (await f.lines('installs.log')).filter((l) => l.startsWith(f.b.id)).map((l) => l.split(' ')[1]);
  t.deepEqual(installsOfB.sort(), [...first].sort(), 'only the first wave ran its install hook, once each');
  const rollbacks = (await f.lines('rollbacks.log')).map((l) => l.split(' '));
  t.deepEqual(rollbacks.map((r) => r[0]).sort(), [...first].sort());
  for (const r of rollbacks) t.is(r[1], path.join(f.dir, 'agents', r[0], f.a.id, f.a.name), 'FLEETCAST_PREVIOUS_FILE is the kept release A');
  // All 8 still hold B, verified, pre-staged.
  for (const id of ids) t.true((await fs.readFile(path.join(f.dir, 'agents', id, f.b.id, f.b.name))).equals(f.bBytes), `${id} holds B`);
  // The channel still installs A; the fleet, the metrics and the status say halted.
  t.is((await readChannel(path.join(f.dir, 'store'), 'stable'))!.release, f.a.id);
  const fleet = JSON.parse((await f.cli(['fleet', '--json'])).stdout) as { rollouts: { id: string; state: string }[] };
  // Staging B everywhere cost about one copy per LAN group from the origin, not one per agent.
  const fromOrigin = ids.reduce((n, id, i) => n + f.server.bytesSentTo(f.b.id, i < 4 ? 'site-a' : 'site-b', id), 0);
  t.log(`origin bytes for staging B on 8 agents in 2 LAN groups: ${fromOrigin} (${(fromOrigin / f.bBytes.length).toFixed(2)}x the release)`);
  t.true(fromOrigin >= 2 * f.bBytes.length && fromOrigin <= 3 * f.bBytes.length, `origin sent ${fromOrigin} bytes of B for 2 LAN groups of a ${f.bBytes.length}-byte release`);
  t.deepEqual(fleet.rollouts.map((r) => [r.id, r.state]), [[s0.id, 'halted']]);
  t.regex(f.server.metrics(), /fleetcast_server_rollouts\{state="halted"\} 1/);
  t.regex((await f.cli(['fleet'])).stdout, new RegExp(`rollout ${s0.id} on stable \\(${f.b.id}\\): halted, wave 1/2: wave 1 has 2 failure`));
  const human = await f.cli(['rollout', 'status', s0.id]);
  t.regex(human.stdout, /halted/);
  t.regex(human.stdout, /install hook: exit status 3/);
});

test.serial('restarts: a server restarted mid-rollout and an agent killed between installed and committed continue; no hook runs twice', async (t) => {
  const f = await startRolloutFleet(t);
  const ids = ['n0', 'n1', 'n2', 'n3'];
  // The health check waits for the test's "healthy" file: the agent sits between installed and committed.
  const health = ['--health-check', `while [ ! -e ${f.dir}/healthy ]; do sleep 0.1; done`];
  for (const id of ids) f.spawnAgent(id, 'site-a', health);
  await f.until('4 installs of A', async () => (await f.lines('installs.log')).filter((l) => l.startsWith(f.a.id)).length === 4);
  await f.until('4 channel members', async () => (JSON.parse((await f.cli(['rollout', 'status', '--json'])).stdout) as { channelMembers: Record<string, number> }).channelMembers.stable === 4);
  const start = await f.cli(['rollout', 'start', '--channel', 'stable', '--release', f.b.id, '--waves', '50%,100%', '--json']);
  t.is(start.code, 0, start.stderr);
  const s0 = JSON.parse(start.stdout) as Summary;
  await fs.writeFile(path.join(f.dir, `go-${f.b.id}`), '');
  const first = Object.entries(s0.memberStates).filter(([, m]) => m.wave === 1).map(([id]) => id);
  t.is(first.length, 2);
  await f.until('first wave installed', async () => {
    const s = JSON.parse((await f.cli(['rollout', 'status', s0.id, '--json'])).stdout) as Summary;
    return first.every((id) => s.memberStates[id].state === 'installed');
  });
  // Kill one first-wave agent mid health check, restart the server, then let health pass.
  const victim = first[0];
  const c = f.agents.get(victim)!;
  await new Promise<void>((resolve) => {
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
  await f.restartServer();
  const after = JSON.parse((await f.cli(['rollout', 'status', s0.id, '--json'])).stdout) as Summary;
  t.is(after.state, 'running', 'the rollout survived the restart');
  t.is(after.memberStates[victim].wave, 1, 'and so did the waves');
  t.is(after.memberStates[victim].state, 'installed');
  await fs.writeFile(path.join(f.dir, 'healthy'), '');
  f.spawnAgent(victim, 'site-a', health);
  const done = await f.until('completed', async () => {
    const s = JSON.parse((await f.cli(['rollout', 'status', s0.id, '--json'])).stdout) as Summary;
    return s.state === 'completed' ? s : null;
  }, 90_000);
  t.is(done.totals.committed, 4);
  const installs = (await f.lines('installs.log')).filter((l) => l.startsWith(f.b.id)).map((l) => l.split(' ')[1]);
  t.deepEqual(installs.slice(0, 2).sort(), [...first].sort(), 'the second wave installed only after the first committed');
  t.deepEqual(installs.sort(), [...ids].sort(), 'each member ran the install hook for B exactly once');
  t.deepEqual(await f.lines('rollbacks.log'), []);
  t.is((await readChannel(path.join(f.dir, 'store'), 'stable'))!.release, f.b.id, 'the channel moved to B on completion');
});

test.serial('bad input exits 64 or 65 with a clear message and changes nothing', async (t) => {
  const f = await startRolloutFleet(t);
  const cases: [string[], number, RegExp][] = [
    [['--channel', 'nosuch', '--release', f.b.id], 65, /channel nosuch does not exist/],
    [['--channel', 'stable', '--release', f.b.id, '--waves', '10%,50%'], 64, /--waves ends at 50%: the last wave must reach 100%/],
    [['--channel', 'stable', '--release', f.b.id, '--waves', 'site-a,site-b'], 64, /does not reach 100%/],
    [['--channel', 'stable', '--release', f.b.id, '--window', 'Mon-Fri 2-4'], 64, /--window "Mon-Fri 2-4" is not a window/],
    [['--channel', 'stable', '--release', f.b.id, '--window', 'Funday 02:00-04:00'], 64, /not a day/],
    [['--channel', 'stable', '--release', f.b.id, '--max-failures', 'lots'], 64, /--max-failures/],
    [['--channel', 'stable', '--release', 'f'.repeat(32)], 65, /release f{32} is not on this server/],
    [['--channel', 'stable', '--release', f.a.id], 65, /already on release/],
    [['--channel', 'stable', '--release', f.b.id], 65, /no agent has asked about channel stable/],
  ];
  for (const [args, code, msg] of cases) {
    const r = await f.cli(['rollout', 'start', ...args]);
    t.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, msg);
    t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  }
  const missing = await f.cli(['rollout', 'pause', 'r-000000000000']);
  t.is(missing.code, 65);
  t.regex(missing.stderr, /no rollout r-000000000000/);
  t.is((await f.cli(['rollout', 'frobnicate'])).code, 64);
  const list = JSON.parse((await f.cli(['rollout', 'status', '--json'])).stdout) as { rollouts: unknown[] };
  t.deepEqual(list.rollouts, []);
  t.deepEqual(await fs.readdir(path.join(f.dir, 'store', 'rollouts')).catch(() => []), [], 'no rollout file was written');
  t.is((await readChannel(path.join(f.dir, 'store'), 'stable'))!.release, f.a.id);
});

test.serial("a closed window holds installs back, an agent's install_window overrides it, and abort --rollback rolls back who installed", async (t) => {
  const f = await startRolloutFleet(t);
  const open = ['w0', 'w1'];
  const held = ['w2', 'w3'];
  for (const id of open) f.spawnAgent(id, 'site-a', ['--install-window', '00:00-24:00']);
  for (const id of held) f.spawnAgent(id, 'site-a', ['--status-socket', path.join(f.dir, `${id}.sock`)]); // the last --status-socket wins
  await f.until('4 installs of A', async () => (await f.lines('installs.log')).filter((l) => l.startsWith(f.a.id)).length === 4);
  await f.until('4 channel members', async () => (JSON.parse((await f.cli(['rollout', 'status', '--json'])).stdout) as { channelMembers: Record<string, number> }).channelMembers.stable === 4);
  // A window three days from today (local time): closed now, whatever the hour.
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][(new Date().getDay() + 3) % 7];
  await fs.writeFile(path.join(f.dir, `go-${f.b.id}`), '');
  const start = await f.cli(['rollout', 'start', '--channel', 'stable', '--release', f.b.id, '--window', `${day} 00:00-24:00`, '--json']);
  t.is(start.code, 0, start.stderr);
  const id = (JSON.parse(start.stdout) as Summary).id;
  const status = async () => JSON.parse((await f.cli(['rollout', 'status', id, '--json'])).stdout) as Summary;
  await f.until('the overriding agents committed and the others staged', async () => {
    const s = await status();
    return open.every((m) => s.memberStates[m].state === 'committed') && held.every((m) => s.memberStates[m].state === 'staged');
  });
  await new Promise((r) => setTimeout(r, 2000)); // a dozen polls with the wave open and the window closed
  const s1 = await status();
  for (const m of held) t.is(s1.memberStates[m].state, 'staged', `${m} waits for its window`);
  t.deepEqual((await f.lines('installs.log')).filter((l) => l.startsWith(f.b.id)).map((l) => l.split(' ')[1]).sort(), open);
  const st = await runCli(['status', '--socket', path.join(f.dir, 'w2.sock')]);
  t.regex(st.stdout, new RegExp(`rollout  ${id} of ${f.b.id}: running, wave 1 open; here staged`), st.stderr);

  const pa = await f.cli(['rollout', 'pause', id]);
  t.is(pa.code, 0, pa.stderr);
  t.regex(pa.stdout, /is now paused/);
  t.is((await status()).state, 'paused');
  t.is((await f.cli(['rollout', 'pause', id])).code, 65, 'pausing twice is refused');
  t.is((await f.cli(['rollout', 'resume', id])).code, 0);
  t.is((await status()).state, 'running');
  const ab = await f.cli(['rollout', 'abort', id, '--rollback']);
  t.is(ab.code, 0, ab.stderr);
  await f.until('rolled back', async () => {
    const s = await status();
    return open.every((m) => s.memberStates[m].state === 'rolled-back');
  });
  const rollbacks = (await f.lines('rollbacks.log')).map((l) => l.split(' '));
  t.deepEqual(rollbacks.map((r) => r[0]).sort(), open);
  for (const r of rollbacks) t.is(r.slice(2).join(' '), 'rollout aborted with --rollback');
  const s2 = await status();
  t.is(s2.state, 'aborted');
  for (const m of held) t.is(s2.memberStates[m].state, 'staged', `${m} never installed`);
  t.is((await readChannel(path.join(f.dir, 'store'), 'stable'))!.release, f.a.id);
  t.is((await f.cli(['rollout', 'resume', id])).code, 65, 'an aborted rollout does not resume');
  // Those that rolled back go back to A (not refused as a downgrade).
  for (const m of open) await f.until(`${m} back on A`, async () => f.logs.get(m)!().includes(`moving from release ${f.b.id} to ${f.a.id}`));
  for (const m of open) t.notRegex(f.logs.get(m)!(), /refusing release/);
});

test.serial('an agent killed while its install hook runs does not run it again: the install counts as failed and rolls back', async (t) => {
  const f = await startRolloutFleet(t);
  // For B the hook notes its start, then waits as long as the agent lives (so it ends with it).
  const hook = `echo "$FLEETCAST_RELEASE_ID $FLEETCAST_MEMBER" >> ${f.dir}/started.log; if [ "$FLEETCAST_RELEASE_ID" = "${f.b.id}" ]; then while kill -0 $PPID 2>/dev/null; do sleep 0.1; done; fi`;
  const args = ['--on-complete', hook];
  f.spawnAgent('k0', 'site-a', args);
  await f.until('A installed', async () => (await f.lines('started.log')).some((l) => l.startsWith(f.a.id)));
  await f.until('1 channel member', async () => (JSON.parse((await f.cli(['rollout', 'status', '--json'])).stdout) as { channelMembers: Record<string, number> }).channelMembers.stable === 1);
  const start = await f.cli(['rollout', 'start', '--channel', 'stable', '--release', f.b.id, '--json']);
  t.is(start.code, 0, start.stderr);
  const id = (JSON.parse(start.stdout) as Summary).id;
  await f.until('the install hook of B started', async () => (await f.lines('started.log')).some((l) => l.startsWith(f.b.id)));
  const c = f.agents.get('k0')!;
  await new Promise<void>((resolve) => {
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
  f.spawnAgent('k0', 'site-a', args);
  const s = await f.until('rolled back', async () => {
    const x = JSON.parse((await f.cli(['rollout', 'status', id, '--json'])).stdout) as Summary;
    return x.memberStates.k0.state === 'rolled-back' ? x : null;
  });
  t.regex(s.memberStates.k0.reason!, /install hook was interrupted/);
  t.is(s.state, 'halted', '1 failure is more than --max-failures 0');
  await new Promise((r) => setTimeout(r, 1000));
  t.is((await f.lines('started.log')).filter((l) => l.startsWith(f.b.id)).length, 1, 'the install hook ran once');
  t.is((await f.lines('rollbacks.log')).length, 1);
});
