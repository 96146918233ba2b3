import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { rollout } from '../src/cli/rollout';
import { summary } from '../src/server/rollout';
import { runAsWritten } from './helpers/as-written';
import { commandBlocks, scriptBlocks, section } from './helpers/doc-blocks';
import { run } from './helpers/run';
import { namespaceTest } from './helpers/netns';

type Summary = ReturnType<typeof summary>;

/**
 * docs/rollouts.md's command block runs as written, on the machine the README's "Using it"
 * and "Running a fleet" set up (the origin with its server, box1's agent following
 * `stable`; helpers/as-written.ts stands in for the rest). Its other ```sh blocks are hook
 * scripts shown in full (first line `#!`): they are files to install, not commands to
 * type, so they are checked for syntax with `sh -n` and for naming their path and hook;
 * running them needs rauc, systemd and an app, which is the operator's.
 */

const ROOT = path.join(__dirname, '..', '..');
const doc = () => fs.readFile(path.join(ROOT, 'docs', 'rollouts.md'), 'utf8');
const START = 'Starting and watching one';

/**
 * A zone in which it is about noon now (local = UTC + h, |h| <= 12): the block's window
 * "Mon-Fri 02:00-04:00" is then closed whatever the hour the test runs, so the rollout is
 * still running (box1 staged, not installed) when pause, resume and abort come.
 */
function noonZone(): string {
  const h = 12 - new Date().getUTCHours();
  return h === 0 ? 'Etc/GMT' : h > 0 ? `Etc/GMT-${h}` : `Etc/GMT+${-h}`; // POSIX sign: Etc/GMT-5 is UTC+5
}

test('rollouts.md: the command block parses into runnable lines (no placeholders), and its options are the table\'s and the CLI\'s', async (t) => {
  const text = section(await doc(), START);
  const blocks = commandBlocks(text);
  t.is(blocks.length, 1);
  const lines = blocks[0];
  t.is(lines.length, 7);
  t.regex(lines[0], /^ID=\$\(fleetcast publish .* \| tail -n 1\)$/);
  t.regex(lines[1], /^ROLLOUT=\$\(fleetcast rollout start .*--release "\$ID" .* \| tail -n 1\)$/);
  for (const l of lines) {
    t.false(/<[A-Z]+>/.test(l), `a placeholder in: ${l}`);
    t.false(l.includes('#'), `a comment left in: ${l}`);
  }
  for (const a of ['status', 'pause', 'resume', 'abort']) t.true(lines.some((l) => l.startsWith(`fleetcast rollout ${a} `)), a);
  // Every option the start line gives beyond the connection is in the table, and the CLI knows it.
  const table = new Set([...text.matchAll(/^\| `(--[a-z-]+)/gm)].map((m) => m[1]));
  const used = [...lines[1].matchAll(/ (--[a-z-]+)/g)].map((m) => m[1]).filter((o) => !['--server', '--ca', '--token-file'].includes(o));
  t.deepEqual(used.filter((o) => !table.has(o)), []);
  t.deepEqual([...table].filter((o) => !(o.slice(2) in rollout.spec.flags)), []);
  t.true(table.size >= 6, [...table].join(' '));
});

test('rollouts.md: the hook scripts are shell files that parse (sh -n) and name their path and hook', async (t) => {
  const md = await doc();
  const scripts = scriptBlocks(md);
  t.is(scripts.length, 4);
  const names: string[] = [];
  for (const s of scripts) {
    const [shebang, where] = s.split('\n');
    t.is(shebang, '#!/bin/sh');
    const m = /^# (\/usr\/local\/sbin\/[a-z-]+): (on_complete|health_check|on_rollback)\b/.exec(where);
    t.truthy(m, `second line names the file and its hook: ${where}`);
    if (m) names.push(m[1]);
    const r = await run('sh', ['-n', '-c', s]);
    t.is(r.code, 0, `sh -n ${m?.[1]}: ${r.stderr}`);
  }
  t.deepEqual(names, ['/usr/local/sbin/fw-healthy', '/usr/local/sbin/app-install', '/usr/local/sbin/app-healthy', '/usr/local/sbin/app-rollback']);
  // The scripts are not among the command blocks.
  t.false(commandBlocks(md).flat().some((l) => l.startsWith('#!') || l.includes('mark-good')));
});

test('sh -n catches a broken script (the check above can fail)', async (t) => {
  const r = await run('sh', ['-n', '-c', '#!/bin/sh\nif [ x ]; then echo\n']);
  t.not(r.code, 0);
});

// The rollout commands involve no transport: npm test's second pass (FLEETCAST_TRANSPORT=dgram)
// skips this rather than run the README's setup again (readme.test.ts runs it in both).
const nsTitle = 'docs/rollouts.md "Starting and watching one" runs as written after the README: started, status shows it, pause, resume, abort --rollback';
if (process.env.FLEETCAST_TRANSPORT === 'dgram') test.skip(`${nsTitle} [skipped: no transport involved; runs in the first pass of npm test]`, () => {});
else namespaceTest(nsTitle, async (t) => {
  t.timeout(6 * 60_000); // the README's setup first; on a busy box that takes a while
  const readme = await fs.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const setup = [...commandBlocks(section(readme, 'Using it')), ...commandBlocks(section(readme, 'Running a fleet'))].flat();
  const mine = commandBlocks(section(await doc(), START)).flat();
  const at = (re: RegExp) => setup.length + mine.findIndex((l) => re.test(l));
  const after = `echo "$ID" > "$T/id"; echo "$ROLLOUT" > "$T/rollout"
fleetcast rollout status "$ROLLOUT" --json --server https://origin.example:7600 --ca origin/ca.pem --token-file origin/operator.token > "$T/final.json"`;
  const r = await runAsWritten(t, [...setup, ...mine], { 'fw.img': randomBytes(1024 * 1024 + 5), 'fw-2.4.img': randomBytes(1024 * 1024 + 7), 'fw-2.5.img': randomBytes(1024 * 1024 + 9) }, { after, env: { TZ: noonZone() }, timeoutMs: 300_000 });
  const id = (await r.log('id')).trim();
  const ro = (await r.log('rollout')).trim();
  t.regex(id, /^[0-9a-f]{32}$/, 'publish printed the release id last');
  t.regex(ro, /^r-[0-9a-f]{12}$/, 'rollout start printed the rollout id last');
  // The release the channel was on: what the README's publish of fw-2.4.img printed last.
  const prev = r.output(setup.findIndex((l) => / fw-2\.4\.img .*--channel stable/.test(l))).trim().split('\n').at(-1);
  t.regex(prev ?? '', /^[0-9a-f]{32}$/);

  // status (every rollout): this one, running, on stable.
  const all = r.output(at(/^fleetcast rollout status --server/));
  t.regex(all, new RegExp(`^rollout ${ro}: running$`, 'm'));
  t.regex(all, new RegExp(`release ${id} on channel stable, previous ${prev}; max failures 2%, window Mon-Fri 02:00-04:00, wave wait 7200 s`));
  // status ID --json: the same, with box1 known and in the first wave.
  const s = JSON.parse(r.output(at(/^fleetcast rollout status "\$ROLLOUT" --json/))) as Summary;
  t.like(s, { id: ro, channel: 'stable', release: id, previous: prev, state: 'running', maxFailures: '2%', waveWaitSeconds: 7200, window: 'Mon-Fri 02:00-04:00', members: 1 });
  t.deepEqual(s.waves.map((w) => w.spec), ['1%', '10%', '50%', '100%']);
  t.is(s.memberStates.box1?.wave, 1);
  // pause, resume, abort --rollback answer with the new state.
  t.is(r.output(at(/^fleetcast rollout pause /)).trim(), `rollout ${ro} is now paused`);
  t.is(r.output(at(/^fleetcast rollout resume /)).trim(), `rollout ${ro} is now running`);
  t.is(r.output(at(/^fleetcast rollout abort /)).trim(), `rollout ${ro} is now aborted (members on the new release roll back)`);
  // Afterwards the server keeps it aborted with rollback; box1 never installed (the abort
  // came seconds after the start, and the closed window would have held the install back).
  const f = JSON.parse(await r.log('final.json')) as Summary;
  t.like(f, { id: ro, state: 'aborted', rollback: true });
  t.true(['pending', 'staged'].includes(f.memberStates.box1?.state ?? ''), JSON.stringify(f.memberStates));
});
