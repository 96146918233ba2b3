import test from 'ava';
import { spawn } from 'node:child_process';
import { spawnSync } from './helpers/sync';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { EXIT_STATUS_TABLE } from '../src/util/errors';
import { BIN, runCli, startFleet, tmpdir } from './helpers/fleet';

const ROOT = path.join(__dirname, '..', '..');
const COMMANDS = ['keygen', 'publish', 'server', 'agent', 'status', 'fleet', 'config', 'doctor', 'demo', 'version'];
const noStack = /at .*\.js:\d+|internal error/;

/** `| 64 | meaning |` rows of the README's "Exit status" section. */
async function readmeTable(): Promise<[number, string][]> {
  const readme = await fs.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const sec = readme.split(/^## /m).find((s) => s.startsWith('Exit status'))!;
  return [...sec.matchAll(/^\| (\d+) \| (.+) \|$/gm)].map((m) => [Number(m[1]), m[2]]);
}

test('one exit-status table: the README and every command\'s --help print the same one', async (t) => {
  const table = await readmeTable();
  t.deepEqual(table, EXIT_STATUS_TABLE.map(([c, m]) => [c, m]));
  for (const cmd of [...COMMANDS, null]) {
    const r = await runCli(cmd ? [cmd, '--help'] : ['--help']);
    t.is(r.code, 0);
    const printed = [...r.stdout.split('Exit status (sysexits):\n')[1].matchAll(/^ +(\d+) {2}(.+)$/gm)].map((m) => [Number(m[1]), m[2]]);
    t.deepEqual(printed, table, `${cmd ?? 'fleetcast'} --help`);
  }
});

test('fleetcast version and --version print the package version', async (t) => {
  const pkg = JSON.parse(await fs.readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const v = await runCli(['version']);
  t.is(v.code, 0);
  t.is(v.stdout, `fleetcast ${pkg.version} (node ${process.versions.node})\n`);
  const j = await runCli(['version', '--json']);
  t.deepEqual(JSON.parse(j.stdout), { version: pkg.version, node: process.versions.node });
  t.is((await runCli(['--version'])).stdout, `fleetcast ${pkg.version}\n`);
});

test('a missing config file is 66 for every command that takes one, naming the file', async (t) => {
  const dir = await tmpdir(t);
  const missing = path.join(dir, 'nope-agent.yaml');
  for (const args of [['agent', '--config', missing], ['server', '--config', missing], ['config', 'check', missing], ['doctor', '--config', missing]]) {
    const r = await runCli(args);
    t.is(r.code, 66, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, /nope-agent\.yaml: cannot read config file: no such file/);
    t.notRegex(r.stderr, noStack);
  }
});

test('server: a missing store is refused with 66 unless --create, which starts it empty', async (t) => {
  const dir = await tmpdir(t);
  const store = path.join(dir, 'no-such-store');
  const r = await runCli(['server', '--plain-http', '--store', store, '--listen', '127.0.0.1:0']);
  t.is(r.code, 66);
  t.regex(r.stderr, /store .*no-such-store does not exist: .*--create/);
  await t.throwsAsync(fs.stat(store), undefined, 'nothing created');

  const srv = spawn(process.execPath, [BIN, 'server', '--plain-http', '--create', '--store', store, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (srv.exitCode === null) srv.kill('SIGKILL');
  });
  let err = '';
  srv.stderr.on('data', (d) => (err += d));
  for (let i = 0; i < 600 && !/listening/.test(err); i++) await new Promise((res) => setTimeout(res, 50));
  t.regex(err, /created an empty store/);
  t.regex(err, /listening on http:\/\/127\.0\.0\.1:\d+ with 0 release/);
  t.true((await fs.stat(store)).isDirectory());
  srv.kill('SIGTERM');
  t.is(await new Promise((res) => srv.on('exit', res)), 0);
});

test('server: a TLS certificate and a key that do not belong together is one line and 78', async (t) => {
  if (spawnSync('openssl', ['version']).status !== 0) return t.fail('openssl is needed to make test certificates');
  const dir = await tmpdir(t);
  for (const n of ['a', 'b']) {
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.pem`, '-days', '1', '-subj', `/CN=${n}`], { cwd: dir });
    t.is(r.status, 0);
  }
  await fs.mkdir(path.join(dir, 'store'));
  const r = await runCli(['server', '--store', path.join(dir, 'store'), '--listen', '127.0.0.1:0', '--tls-cert', path.join(dir, 'a.pem'), '--tls-key', path.join(dir, 'b.key')]);
  t.is(r.code, 78);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /the key .*b\.key does not belong to the certificate .*a\.pem/);
  t.notRegex(r.stderr, noStack);
});

test('fleet agrees with the agent: plain http:// without --plain-http is 64, a refused token 77', async (t) => {
  const f = await startFleet(t, { size: 4096, server: { tokens: { box1: 'exit-status-token-0123456789' } } });
  const plain = await runCli(['fleet', '--server', f.url]);
  t.is(plain.code, 64);
  t.regex(plain.stderr, /--server is plain HTTP/);
  const refused = await runCli(['fleet', '--server', f.url, '--plain-http']);
  t.is(refused.code, 77);
  t.regex(refused.stderr, /refused the token \(401\)/);
  const agent = await runCli(f.agentArgs('a', ['--timeout', '20']));
  t.is(agent.code, 77, agent.stderr);
  t.regex(agent.stderr, /refused our token \(401\)/);
});
