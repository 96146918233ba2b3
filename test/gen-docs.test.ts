import test from 'ava';
import { spawnSync } from './helpers/sync';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { BIN, tmpdir } from './helpers/fleet';

/** scripts/gen-docs.js: man pages and bash completion made from --help, as the Debian package ships them. */

const root = path.join(__dirname, '..', '..');
const help = (args: string[]) => spawnSync(process.execPath, [BIN, ...args, '--help'], { encoding: 'utf8' }).stdout;

test('one man page per command --help lists, every option of a command in its page, the exit status table as a section', async (t) => {
  const out = await tmpdir(t);
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'gen-docs.js'), out], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const commands = [...help([]).matchAll(/^ {2}([a-z]+) {2,}/gm)].map((m) => m[1]);
  t.true(commands.includes('agent') && commands.includes('server'), commands.join(' '));
  const pages = (await fs.readdir(path.join(out, 'man1'))).sort();
  t.deepEqual(pages, ['fleetcast.1', ...commands.map((c) => `fleetcast-${c}.1`)].sort());

  const agent = await fs.readFile(path.join(out, 'man1', 'fleetcast-agent.1'), 'utf8');
  t.regex(agent, /^\.TH FLEETCAST-AGENT 1 /m);
  const flags = [...help(['agent']).matchAll(/^ {2}(--[a-z0-9-]+)/gm)].map((m) => m[1]);
  t.true(flags.length > 10);
  for (const f of flags) t.true(agent.includes(`.B ${f.replace(/-/g, '\\-')}`), `${f} in fleetcast-agent.1`);
  const top = await fs.readFile(path.join(out, 'man1', 'fleetcast.1'), 'utf8');
  t.regex(top, /^\.SH EXIT STATUS\n\.TP\n\.B 0\n/m);
  t.regex(top, /^\.B 78\nconfiguration error/m);
  // groff accepts every page without a warning.
  const groff = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z', path.join(out, 'man1', 'fleetcast-agent.1')], { encoding: 'utf8' });
  if (groff.error) t.log('groff not installed: pages not rendered');
  else t.is(groff.stderr, '', 'groff warnings');
});

test('bash completion: commands, a command\'s flags, files after a file flag', async (t) => {
  const out = await tmpdir(t);
  t.is(spawnSync(process.execPath, [path.join(root, 'scripts', 'gen-docs.js'), out]).status, 0);
  const comp = path.join(out, 'bash-completion', 'fleetcast');
  await fs.writeFile(path.join(out, 'server.pub'), '');
  const complete = (words: string[]) =>
    spawnSync('bash', ['-c', `cd ${JSON.stringify(out)}; . ${JSON.stringify(comp)}; COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(' ')}); COMP_CWORD=${words.length - 1}; _fleetcast; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' }).stdout.trim().split('\n');
  t.deepEqual(complete(['fleetcast', 'ag']), ['agent']);
  t.deepEqual(complete(['fleetcast', 'agent', '--tr']), ['--trust']);
  t.deepEqual(complete(['fleetcast', 'agent', '--trust', 'ser']), ['server.pub']);
  t.deepEqual(complete(['fleetcast', 'config', 'ch']), ['check']);
});
