import test from 'ava';
import { spawn } from 'node:child_process';
import { spawnSync } from './helpers/sync';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sha256File } from '../src/storage/partial-store';
import { BIN, runCli, tmpdir } from './helpers/fleet';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('init server makes keys, a CA, a server certificate for its names, tokens and configs that run as made', async (t) => {
  if (spawnSync('openssl', ['version']).status !== 0) return t.fail('openssl is needed (init makes certificates with it)');
  const dir = await tmpdir(t);
  const pki = path.join(dir, 'origin');
  const port = randomInt(20000, 32000);
  const dev = (n: string) => path.join(pki, 'devices', n);
  // --etc: where each device folder sits on "its box" (here, where init made it).
  const made = await runCli(['init', 'server', pki, '--name', '127.0.0.1,origin.test', '--listen', `127.0.0.1:${port}`, '--devices', 'box1', '--etc', dev('box1'), '--interface', '127.0.0.1']);
  t.is(made.code, 0, made.stderr);
  const more = await runCli(['init', 'device', pki, 'box2', '--etc', dev('box2')]);
  t.is(more.code, 0, more.stderr);

  // The certificate: signed by the CA, every --name in its subjectAltName, for servers only.
  const text = spawnSync('openssl', ['x509', '-in', path.join(pki, 'tls.pem'), '-noout', '-ext', 'subjectAltName,extendedKeyUsage'], { encoding: 'utf8' }).stdout;
  t.regex(text, /IP Address:127\.0\.0\.1, DNS:origin\.test/);
  t.regex(text, /TLS Web Server Authentication/);
  t.is(spawnSync('openssl', ['verify', '-CAfile', path.join(pki, 'ca.pem'), path.join(pki, 'tls.pem')]).status, 0);
  // Secrets are private; what agents get is readable.
  for (const f of ['server.key', 'ca.key', 'tls.key', 'tokens', 'operator.token', 'devices/box1/token']) t.is((await fs.stat(path.join(pki, f))).mode & 0o077, 0, f);

  // One "NAME TOKEN" line per device, the same token as in the device's folder.
  const tokens = (await fs.readFile(path.join(pki, 'tokens'), 'utf8')).split('\n').filter((l) => l && !l.startsWith('#'));
  t.is(tokens.length, 3);
  t.true(tokens.includes(`operator ${(await fs.readFile(path.join(pki, 'operator.token'), 'utf8')).trim()}`));
  for (const n of ['box1', 'box2']) t.true(tokens.includes(`${n} ${(await fs.readFile(path.join(dev(n), 'token'), 'utf8')).trim()}`), n);
  const a2 = await fs.readFile(path.join(dev('box2'), 'agent.yaml'), 'utf8');
  t.regex(a2, /^server: https:\/\/127\.0\.0\.1:\d+$/m);
  t.regex(a2, /^ca: .*box2\/ca\.pem$/m);
  t.regex(a2, /^token_file: .*box2\/token$/m);
  t.regex(a2, /^member: box2$/m);
  // init device took the interface init server was given.
  t.regex(a2, /^interface: 127\.0\.0\.1$/m);

  // Nothing is overwritten: init server again, or a device name twice.
  const again = await runCli(['init', 'server', pki]);
  t.is(again.code, 73);
  t.regex(again.stderr, /already exists; refusing to overwrite/);
  const dup = await runCli(['init', 'device', pki, 'box1']);
  t.is(dup.code, 73);
  t.regex(dup.stderr, /box1 already has a token/);

  // The server runs from server.yaml as made; a release goes out on the channel the agents follow.
  await fs.writeFile(path.join(dir, 'fw.img'), randomBytes(300_000));
  const pub = await runCli(['publish', path.join(dir, 'fw.img'), '--store', path.join(pki, 'store'), '--key', path.join(pki, 'server.key'), '--unit-size', '65536', '--channel', 'stable']);
  t.is(pub.code, 0, pub.stderr);
  const srv = spawn(process.execPath, [BIN, 'server', '--config', path.join(pki, 'server.yaml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (srv.exitCode === null) srv.kill('SIGKILL');
  });
  let srvErr = '';
  srv.stderr.on('data', (d) => (srvErr += d));
  for (let i = 0; i < 600 && !/listening/.test(srvErr); i++) await sleep(50);
  t.regex(srvErr, /listening on https:\/\/127\.0\.0\.1/);

  // The device's agent.yaml as made: only the LAN and storage are this test's.
  const mc = `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}:${randomInt(20000, 60000)}`;
  const ag = await runCli(['agent', '--config', path.join(dev('box1'), 'agent.yaml'), '--multicast', mc, '--storage', path.join(dir, 'box1'), '--status-socket', 'none', '--once', '--linger', '0', '--timeout', '60']);
  t.is(ag.code, 0, ag.stderr);
  t.is(await sha256File(ag.stdout.trim()), spawnSync('sha256sum', [path.join(dir, 'fw.img')], { encoding: 'utf8' }).stdout.split(' ')[0]);

  // fleet with the CA and the operator token gets the fleet view (box1 has left: no
  // groups); without the CA: 78 and the hint.
  const fl = await runCli(['fleet', '--server', `https://127.0.0.1:${port}`, '--ca', path.join(pki, 'ca.pem'), '--token-file', path.join(pki, 'operator.token'), '--json']);
  t.is(fl.code, 0, fl.stderr);
  t.true(Array.isArray((JSON.parse(fl.stdout) as { groups: unknown }).groups));
  const noCa = await runCli(['fleet', '--server', `https://127.0.0.1:${port}`, '--token-file', path.join(dev('box2'), 'token')]);
  t.is(noCa.code, 78);
  t.regex(noCa.stderr, /not trusted: .*set ca: \(--ca\)/);
  // A name the certificate is not for: the hint says so.
  const wrongName = await runCli(['fleet', '--server', `https://localhost:${port}`, '--ca', path.join(pki, 'ca.pem'), '--token-file', path.join(dev('box2'), 'token')]);
  t.is(wrongName.code, 78, wrongName.stderr);
  t.regex(wrongName.stderr, /subjectAltName/);
  srv.kill('SIGTERM');
});
