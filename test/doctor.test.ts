import test from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { runCli, startFleet } from './helpers/fleet';

const EXAMPLE = path.join(__dirname, '..', '..', 'systemd', 'agent.yaml.example');
const TOKEN = 'doctor-test-token-0123456789';

interface Finding {
  check: string;
  verdict: string;
  detail: string;
  fix?: string;
}
const finding = (stdout: string, check: string): Finding => (JSON.parse(stdout) as { findings: Finding[] }).findings.find((f) => f.check === check)!;

// Issue 14: doctor --config rejected every key but server, interface and multicast.
test('doctor --config takes the shipped agent example, and reaches the server with its token_file', async (t) => {
  const f = await startFleet(t, { size: 4096, server: { tokens: { box1: TOKEN } } });
  await fs.writeFile(path.join(f.dir, 'token'), TOKEN + '\n');
  await fs.writeFile(path.join(f.dir, 'wrong-token'), 'not-the-right-token-at-all\n');
  // The example as shipped, with only what an operator edits: server, interface, token path.
  const example = await fs.readFile(EXAMPLE, 'utf8');
  const cfg = example
    .replace(/^server: .*$/m, `server: ${f.url}\nplain_http: true`)
    .replace(/^interface: .*$/m, 'interface: 127.0.0.1')
    .replace(/^multicast: .*$/m, `multicast: ${f.multicast}`)
    .replace('/etc/fleetcast/token', path.join(f.dir, 'token'));
  t.regex(cfg, /^group: /m);
  t.regex(cfg, /^channel: /m);
  const file = path.join(f.dir, 'agent.yaml');
  await fs.writeFile(file, cfg);

  const r = await runCli(['doctor', '--config', file, '--wait', '0.3', '--json']);
  t.not(r.code, 78, r.stderr);
  t.is(finding(r.stdout, 'interface').verdict, 'ok');
  t.is(finding(r.stdout, 'server').verdict, 'ok', finding(r.stdout, 'server').detail);

  // --token-file overrides the file's; a wrong token is a failed check with the fix, not a crash.
  const wrong = await runCli(['doctor', '--config', file, '--token-file', path.join(f.dir, 'wrong-token'), '--wait', '0.3', '--json']);
  t.is(wrong.code, 1, wrong.stderr);
  t.is(finding(wrong.stdout, 'server').verdict, 'fail');
  t.regex(finding(wrong.stdout, 'server').fix ?? '', /token/);

  // A token file that is not there: the server check fails and says which file.
  const missing = await runCli(['doctor', '--config', file, '--token-file', path.join(f.dir, 'nope'), '--wait', '0.3', '--json']);
  t.is(missing.code, 1, missing.stderr);
  t.regex(finding(missing.stdout, 'server').detail, /nope/);

  // An unreadable --ca is named the same way.
  const ca = await runCli(['doctor', '--config', file, '--ca', path.join(f.dir, 'no-ca.pem'), '--server', f.url.replace('http:', 'https:'), '--wait', '0.3', '--json']);
  t.regex(finding(ca.stdout, 'server').detail, /no-ca\.pem/);
});

test('doctor --config still refuses what the agent refuses: a typo is exit 78 with file:line:column', async (t) => {
  const f = await startFleet(t, { size: 4096 });
  const file = path.join(f.dir, 'agent.yaml');
  await fs.writeFile(file, `server: ${f.url}\nplain_http: true\ngroup: a\ninterface: 127.0.0.1\nmulticast: ${f.multicast}\nstorage: s\ntrust: k.pub\nchanel: stable\n`);
  const r = await runCli(['doctor', '--config', file, '--wait', '0.3']);
  t.is(r.code, 78);
  t.regex(r.stderr, /agent\.yaml:8:1: unknown key chanel \(did you mean channel\?\)/);
  t.notRegex(r.stderr, /at .*\.js:\d+/);
});
