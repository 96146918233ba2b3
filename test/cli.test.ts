import test from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { runCli, tmpdir } from './helpers/fleet';
import { loadNativeAddon } from '../src/transport/binding';

for (const cmd of ['keygen', 'publish', 'server', 'agent', 'status', 'fleet', 'config', 'doctor', 'demo', 'version']) {
  test(`${cmd} --help prints usage and exits 0`, async (t) => {
    const r = await runCli([cmd, '--help']);
    t.is(r.code, 0);
    t.regex(r.stdout, new RegExp(`^Usage: fleetcast ${cmd}`));
    t.regex(r.stdout, /--help/);
  });
}

test('no command prints the command list and exits 64; an unknown one suggests a close match', async (t) => {
  const none = await runCli([]);
  t.is(none.code, 64);
  t.regex(none.stdout, /Commands:/);
  const typo = await runCli(['pubish']);
  t.is(typo.code, 64);
  t.regex(typo.stderr, /did you mean publish/);
});

test('bad flags: unknown (with a suggestion), missing value, missing required, bad number', async (t) => {
  let r = await runCli(['keygen', '--outt', 'x']);
  t.is(r.code, 64);
  t.regex(r.stderr, /unknown option --outt \(did you mean --out\?\)/);
  r = await runCli(['keygen', '--out']);
  t.regex(r.stderr, /--out needs a value/);
  r = await runCli(['keygen']);
  t.regex(r.stderr, /--out is required/);
  r = await runCli(['demo', '--agents', 'many']);
  t.is(r.code, 64);
  t.regex(r.stderr, /--agents must be a number/);
  r = await runCli(['agent', '--server', 'http://x', '--group', 'g', '--interface', 'lo', '--multicast', '10.0.0.1:5000', '--storage', 's', '--trust', 'k', '--release', 'a'.repeat(32)]);
  t.is(r.code, 64);
  t.regex(r.stderr, /not a multicast address/);
  t.notRegex(r.stderr, /at .*\.js:\d+/);
});

test('keygen, publish (release id last), and keygen refuses to overwrite a key', async (t) => {
  const dir = await tmpdir(t);
  const k = await runCli(['keygen', '--out', path.join(dir, 'k')]);
  t.is(k.code, 0);
  const again = await runCli(['keygen', '--out', path.join(dir, 'k')]);
  t.is(again.code, 73);
  t.regex(again.stderr, /refusing to overwrite/);
  await fs.writeFile(path.join(dir, 'fw.img'), Buffer.alloc(300_000, 1));
  const p = await runCli(['publish', path.join(dir, 'fw.img'), '--store', path.join(dir, 's'), '--key', path.join(dir, 'k', 'server.key'), '--unit-size', '65536']);
  t.is(p.code, 0, p.stderr);
  const id = p.stdout.trim().split('\n').pop()!;
  t.regex(id, /^[0-9a-f]{32}$/);
  t.regex(p.stdout, /5 units/);
  const manifest = await fs.readFile(path.join(dir, 's', 'releases', id, 'manifest'), 'utf8');
  t.regex(manifest, /"fleetcast":"manifest"/);
  const missing = await runCli(['publish', path.join(dir, 'nope'), '--store', path.join(dir, 's'), '--key', path.join(dir, 'k', 'server.key')]);
  t.is(missing.code, 66);
  t.regex(missing.stderr, /no such file/);
  const badKey = await runCli(['publish', path.join(dir, 'fw.img'), '--store', path.join(dir, 's'), '--key', path.join(dir, 'fw.img')]);
  t.is(badKey.code, 65);
  t.regex(badKey.stderr, /not a PEM private key/);
});

test('demo --json reports every agent verified, with the fields scripts rely on', async (t) => {
  const r = await runCli(['demo', '--agents', '3', '--size', String(3 * 1024 * 1024 + 7), '--json'], { timeoutMs: 90_000 });
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.releaseBytes, 3 * 1024 * 1024 + 7);
  t.true(j.serverEgressBytes >= j.releaseBytes);
  t.true(j.seconds > 0);
  t.is(j.agents.length, 3);
  for (const a of j.agents) {
    t.true(a.ok);
    t.is(a.sha256, j.releaseSha256);
    t.is(typeof a.wanBytes, 'number');
    t.is(typeof a.lanBytes, 'number');
  }
  // The loader's choice: native when the addon loads, unless forced.
  const expected = process.env.FLEETCAST_TRANSPORT ?? (loadNativeAddon()?.UdpSocket ? 'native' : 'dgram');
  t.is(j.transport, expected);
  if (expected === 'native') t.true(j.transportFeatures.includes('recvmmsg') && j.transportFeatures.includes('sendmmsg'));
  else t.deepEqual(j.transportFeatures, []);
});
