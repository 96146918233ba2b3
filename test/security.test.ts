import test from 'ava';
import { spawn } from 'node:child_process';
import { spawnSync } from './helpers/sync';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { sha256File } from '../src/storage/partial-store';
import { BIN, runCli, tmpdir } from './helpers/fleet';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A CA and a certificate for 127.0.0.1 signed by it, made with openssl. */
async function makeCerts(dir: string): Promise<{ ca: string; cert: string; key: string; otherCa: string }> {
  const sh = (cmd: string) => {
    const r = spawnSync('sh', ['-ec', cmd], { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  };
  sh('openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=fleetcast-test-ca 2>/dev/null');
  sh('openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other-ca.pem -days 2 -subj /CN=someone-else 2>/dev/null');
  sh('openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null');
  await fs.writeFile(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  sh('openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null');
  return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key'), otherCa: path.join(dir, 'other-ca.pem') };
}

test('HTTPS with tokens: an agent with the CA and a token completes; no token, a wrong one or a wrong CA gets nowhere; revoking a token by reload locks it out', async (t) => {
  if (spawnSync('openssl', ['version']).status !== 0) return t.fail('openssl is needed to make test certificates');
  const dir = await tmpdir(t);
  const certs = await makeCerts(dir);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const src = path.join(dir, 'fw.bin');
  await fs.writeFile(src, randomBytes(1024 * 1024 + 3));
  const m = await publishRelease(src, path.join(dir, 'store'), await loadPrivateKey(keyPath), { unitSize: 256 * 1024 });
  const goodToken = randomBytes(24).toString('hex');
  const otherToken = randomBytes(24).toString('hex');
  const tokensFile = path.join(dir, 'tokens');
  await fs.writeFile(tokensFile, `# per device\nbox-1 ${goodToken}\nbox-2 ${otherToken}\n`);
  const port = randomInt(20000, 32000);
  const cfg = path.join(dir, 'server.yaml');
  await fs.writeFile(cfg, `store: ${path.join(dir, 'store')}\nlisten: 127.0.0.1:${port}\ntls_cert: ${certs.cert}\ntls_key: ${certs.key}\ntokens_file: ${tokensFile}\nheartbeat_ms: 200\n`);
  const srv = spawn(process.execPath, [BIN, 'server', '--config', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (srv.exitCode === null) srv.kill('SIGKILL');
  });
  let srvErr = '';
  srv.stderr.on('data', (d) => (srvErr += d));
  const url = `https://127.0.0.1:${port}`;
  const ca = await fs.readFile(certs.ca);
  const get = (p: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      https.get(`${url}${p}`, { ca, headers }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      }).on('error', reject);
    });
  for (let i = 0; i < 600; i++) {
    if (await get('/v1/releases').then(() => true, () => false)) break;
    await sleep(50);
  }
  // No token, a wrong one: 401 and nothing else, whatever the path.
  for (const p of ['/v1/releases', `/v1/releases/${m.id}/manifest`, '/v1/fleet', '/v1/nosuch']) {
    const r = await get(p);
    t.is(r.status, 401, p);
    t.is(r.body, '{"error":"UNAUTHORIZED"}', p);
    t.is((await get(p, { authorization: `Bearer ${'x'.repeat(40)}` })).status, 401, `${p} with a wrong token`);
  }
  t.is((await get('/v1/releases', { authorization: `Bearer ${goodToken}` })).status, 200);

  const tokenFile = path.join(dir, 'box-1.token');
  await fs.writeFile(tokenFile, goodToken + '\n');
  const agentArgs = (id: string, extra: string[]) => [
    'agent', '--server', url, '--group', 'g', '--interface', '127.0.0.1', '--multicast', `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}:${randomInt(20000, 60000)}`,
    '--storage', path.join(dir, id), '--trust', pubPath, '--release', m.id, '--once', '--member', id, '--linger', '0', '--timeout', '60', '--status-socket', 'none', ...extra,
  ];
  const ok = await runCli(agentArgs('a', ['--ca', certs.ca, '--token-file', tokenFile]));
  t.is(ok.code, 0, ok.stderr);
  t.is(await sha256File(ok.stdout.trim()), m.sha256);

  const noToken = await runCli(agentArgs('b', ['--ca', certs.ca]));
  t.is(noToken.code, 77, 'not permitted: the same status as fleet');
  t.regex(noToken.stderr, /the server refused our token \(401\)/);

  const wrongCa = await runCli(agentArgs('c', ['--ca', certs.otherCa, '--token-file', tokenFile, '--timeout', '3']));
  t.is(wrongCa.code, 78, 'an untrusted certificate is a config error, not retried');
  t.regex(wrongCa.stderr, /not trusted: .*set ca: \(--ca\)/);
  t.notRegex(wrongCa.stderr, /gave up/);

  const plain = await runCli(agentArgs('d', []).map((x) => (x === url ? `http://127.0.0.1:${port}` : x)));
  t.is(plain.code, 64, "a usage error on the command line (78 from a config file)");
  t.regex(plain.stderr, /--server is plain HTTP: use https:\/\/, or set plain_http: true/);

  // Revoke box-1: edit the tokens file, reload. Its token no longer opens anything.
  await fs.writeFile(tokensFile, `box-2 ${otherToken}\n`);
  srv.kill('SIGHUP');
  for (let i = 0; i < 50 && !/reloaded .*1 token\(s\)/.test(srvErr); i++) await sleep(100);
  t.regex(srvErr, /reloaded .*1 token\(s\)/);
  t.is((await get('/v1/releases', { authorization: `Bearer ${goodToken}` })).status, 401);
  t.is((await get('/v1/releases', { authorization: `Bearer ${otherToken}` })).status, 200);
  // A broken tokens file on reload keeps the tokens in force.
  await fs.writeFile(tokensFile, 'just-a-name\n');
  srv.kill('SIGHUP');
  for (let i = 0; i < 50 && !/keeping the running config/.test(srvErr); i++) await sleep(100);
  t.regex(srvErr, /tokens:1:1: expected "NAME TOKEN".*keeping the running config/);
  t.is((await get('/v1/releases', { authorization: `Bearer ${otherToken}` })).status, 200);
  srv.kill('SIGTERM');
});

test('the server will not serve plain HTTP unless told to', async (t) => {
  const r = await runCli(['server', '--store', '/tmp/x']);
  t.is(r.code, 64);
  t.regex(r.stderr, /--tls-cert is required \(with tls_key\) to serve HTTPS; set plain_http: true \(--plain-http\) to serve plain HTTP on purpose/);
});

test('an encrypted release: ciphertext in the store and on the LAN, the key only for token holders, plaintext on the agents', async (t) => {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const marker = Buffer.from('FLEETCAST-PLAINTEXT-MARKER-0123456789');
  const plain = Buffer.concat(Array.from({ length: 30_000 }, (_, i) => (i % 7 === 0 ? marker : randomBytes(40))));
  const src = path.join(dir, 'secret.img');
  await fs.writeFile(src, plain);
  const store = path.join(dir, 'store');
  const keys = path.join(dir, 'content-keys');
  const pub = await runCli(['publish', src, '--store', store, '--key', keyPath, '--unit-size', '131072', '--encrypt', '--content-keys', keys]);
  t.is(pub.code, 0, pub.stderr);
  const id = pub.stdout.trim().split('\n').at(-1)!;
  t.regex(pub.stdout, /\(encrypted; plaintext sha256 [0-9a-f]{64}, key in /);
  const stored = await fs.readFile(path.join(store, 'releases', id, 'data'));
  t.is(stored.indexOf(marker), -1, 'the store holds no plaintext');
  t.is((await fs.readdir(store)).includes('content-keys'), false);
  t.is((await fs.stat(path.join(keys, `${id}.key`))).mode & 0o077, 0, 'the key file is private');

  const token = randomBytes(20).toString('hex');
  const port = randomInt(20000, 32000);
  const startServer = (extra: string[]) => {
    const s = spawn(process.execPath, [BIN, 'server', '--plain-http', '--store', store, '--listen', `127.0.0.1:${port}`, '--heartbeat-ms', '200', ...extra], { stdio: 'ignore' });
    t.teardown(() => {
      if (s.exitCode === null) s.kill('SIGKILL');
    });
    return s;
  };
  const waitUp = async () => {
    // A loaded CI box can take seconds to start a node process.
    for (let i = 0; i < 600; i++) {
      const ok = await fetch(`http://127.0.0.1:${port}/v1/releases`).then(() => true, () => false);
      if (ok) return;
      await sleep(50);
    }
    throw new Error(`the server on port ${port} did not start in 30 s`);
  };
  // Without tokens the server will not hand out content keys at all.
  let srv = startServer(['--content-keys', keys]);
  await waitUp();
  const noAuth = await fetch(`http://127.0.0.1:${port}/v1/releases/${id}/key`);
  t.is(noAuth.status, 403);
  srv.kill('SIGTERM');
  await new Promise((r) => srv.on('exit', r));
  // One token for both boxes: a per-fleet token, which must be asked for.
  srv = startServer(['--content-keys', keys, '--tokens', `fleet:${token}`, '--shared-tokens']);
  await waitUp();
  t.is((await fetch(`http://127.0.0.1:${port}/v1/releases/${id}/key`)).status, 401);

  // Listen on the LAN while two agents fetch it.
  const group = `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`;
  const mport = randomInt(20000, 60000);
  // A socket buffer for the whole exchange (~2.4 MB on the wire): each agent multicasts its
  // units in a burst, and a busy test process that is late to read drops what the default
  // 208 KiB cannot hold (a CI run counted 520,524 bytes, one agent's share, and failed).
  const sniff = dgram.createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: 4 * 1024 * 1024 });
  const seen: Buffer[] = [];
  sniff.on('message', (m) => seen.push(m));
  await new Promise<void>((r) => sniff.bind(mport, () => (sniff.addMembership(group, '127.0.0.1'), r())));
  t.teardown(() => sniff.close());
  const tokenFile = path.join(dir, 'token');
  await fs.writeFile(tokenFile, token);
  const agent = (mid: string) =>
    runCli(['agent', '--server', `http://127.0.0.1:${port}`, '--plain-http', '--token-file', tokenFile, '--group', 'g', '--interface', '127.0.0.1', '--multicast', `${group}:${mport}`,
      '--storage', path.join(dir, mid), '--trust', pubPath, '--release', id, '--once', '--member', mid, '--linger', '5', '--timeout', '60', '--status-socket', 'none']);
  const results = await Promise.all([agent('a'), agent('b')]);
  const plainSha = createHash('sha256').update(plain).digest('hex');
  for (const r of results) {
    t.is(r.code, 0, r.stderr);
    t.is(await sha256File(r.stdout.trim()), plainSha, 'the agent holds the plaintext');
    t.true(r.stdout.trim().endsWith('/secret.img'));
  }
  const lan = Buffer.concat(seen);
  t.true(lan.length > plain.length / 2, `the LAN carried ${lan.length} bytes`);
  t.is(lan.indexOf(marker), -1, 'no plaintext on the LAN');
});

test('one token for two boxes without shared_tokens: the second agent exits 77 saying what to do; with it, the server warns at start', async (t) => {
  const { startFleet } = await import('./helpers/fleet');
  const token = randomBytes(20).toString('hex');
  const f = await startFleet(t, { size: 300_000, unitSize: 65536, server: { tokens: { fleet: token } } });
  const tokenFile = path.join(f.dir, 'token');
  await fs.writeFile(tokenFile, token);
  const first = await runCli(f.agentArgs('a', ['--token-file', tokenFile, '--linger', '0']));
  t.is(first.code, 0, first.stderr);
  const second = await runCli(f.agentArgs('b', ['--token-file', tokenFile, '--linger', '0']));
  t.is(second.code, 77, second.stderr);
  t.regex(second.stderr, /the server refused member b: token fleet names device a: .*give this box its own token \(tokens_file\), or set shared_tokens: true/);
  t.notRegex(second.stderr, /at .*\.js:\d+/, 'no stack trace');
  t.true(f.server.stats.limits.token_bound_to_other_member >= 1, 'counted (the join, and the leave on the way out)');

  const port = randomInt(20000, 32000);
  const srv = spawn(process.execPath, [BIN, 'server', '--plain-http', '--store', path.join(f.dir, 'store'), '--listen', `127.0.0.1:${port}`, '--tokens', `fleet:${token}`, '--shared-tokens'], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (srv.exitCode === null) srv.kill('SIGKILL');
  });
  let err = '';
  srv.stderr.on('data', (d) => (err += d));
  for (let i = 0; i < 600 && !/listening/.test(err); i++) await sleep(50);
  t.regex(err, /shared_tokens: one token may serve many member ids/);
  srv.kill('SIGTERM');
  await new Promise((r) => srv.on('exit', r));
});

test('only an operator token changes rollouts: a device token is refused with 403 NOT_OPERATOR, may still read them; operator_tokens names others', async (t) => {
  const { startFleet } = await import('./helpers/fleet');
  const device = 'd'.repeat(32);
  const op = 'o'.repeat(32);
  const ops2 = 'p'.repeat(32);
  for (const [operatorTokens, allowed] of [[undefined, op], [['ops-team'], ops2]] as const) {
    const f = await startFleet(t, { size: 300_000, unitSize: 65536, server: { tokens: { 'box-1': device, operator: op, 'ops-team': ops2 }, ...(operatorTokens ? { operatorTokens: [...operatorTokens] } : {}) } });
    const call = (token: string, p: string, body?: unknown) =>
      fetch(f.url + p, { method: body === undefined ? 'GET' : 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    const start = { channel: 'stable', release: f.manifest.id, waves: ['100%'] };
    const refused = await call(device, '/v1/rollouts', start);
    t.is(refused.status, 403);
    t.regex(await refused.text(), /NOT_OPERATOR/);
    const other = allowed === op ? ops2 : op;
    t.is((await call(other, '/v1/rollouts', start)).status, 403, 'a token not named in operator_tokens is refused too');
    t.is((await call(device, '/v1/rollouts')).status, 200, 'a device token may read the rollouts');
    // The operator gets past the check, to the request's own checks (no channel "stable" here).
    const r = await call(allowed, '/v1/rollouts', start);
    const text = await r.text();
    t.true(r.status === 400 || r.status === 404, `${r.status} ${text}`);
    t.notRegex(text, /NOT_OPERATOR|UNAUTHORIZED/);
    t.is((await call(device, '/v1/rollouts/r-000000000000/abort', { rollback: true })).status, 403, 'nor abort');
  }
});
