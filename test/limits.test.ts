import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { startFleet } from './helpers/fleet';
import { parseRange } from '../src/server/server';
import { AuthThrottle, ConnectionCounter, IdentityBindings } from '../src/server/guard';
import { jsonDepthExceeds, maxBodyBytes, parseBody, SCHEMAS } from '../src/wire/http-bodies';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function post(url: string, p: string, body: unknown, token?: string, raw = false) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url + p, { method: 'POST', headers, body: raw ? (body as string) : JSON.stringify(body) });
  const text = await res.text();
  let j: Record<string, unknown> = {};
  try {
    j = JSON.parse(text) as Record<string, unknown>;
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: j };
}

test('suffix ranges are answered with the last bytes; malformed and unsatisfiable ones get null (416)', (t) => {
  t.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
  t.deepEqual(parseRange('bytes=-1000', 100), { start: 0, end: 99 }, 'a suffix longer than the unit is all of it');
  t.deepEqual(parseRange('bytes=5-', 100), { start: 5, end: 99 });
  t.deepEqual(parseRange('bytes=5-500', 100), { start: 5, end: 99 });
  for (const bad of ['bytes=-0', 'bytes=-', 'bytes=100-', 'bytes=9-3', 'bytes=1-2,4-5', 'items=1-2', 'bytes=99999999999999999-']) t.is(parseRange(bad, 100), null, bad);
});

test('a suffix range over HTTP: 206 with the last bytes of the unit', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  t.is((await post(f.url, '/v1/join', ref)).status, 200);
  const u = ((await post(f.url, '/v1/lease', ref)).body.units as number[])[0];
  const res = await fetch(`${f.url}/v1/releases/${f.manifest.id}/units/${u}?group=g&member=m1`, { headers: { range: 'bytes=-10' } });
  t.is(res.status, 206);
  t.is(res.headers.get('content-range'), `bytes 16374-16383/16384`);
  t.deepEqual(Buffer.from(await res.arrayBuffer()), f.source.subarray(u * 16384 + 16374, u * 16384 + 16384));
});

test('deeply nested JSON is refused by a linear scan before it is parsed, and counted', async (t) => {
  const deep = Buffer.from('['.repeat(1_000_000) + ']'.repeat(1_000_000));
  t.true(jsonDepthExceeds(deep, 4));
  t.false(jsonDepthExceeds(Buffer.from('{"a":"[[[[[[[[","b":[1,2]}'), 4), 'brackets inside strings do not count');
  t.false(jsonDepthExceeds(Buffer.from('{"a":"\\"[[[[[[","b":[1]}'), 4), 'escaped quotes do not end a string');
  const p = parseBody(deep, SCHEMAS.heartbeat);
  t.false(p.ok);
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  // 4 MiB of nesting, as in issue 13: refused by its size before it is even read whole.
  const big = await post(f.url, '/v1/heartbeat', '['.repeat(2 << 20) + ']'.repeat(2 << 20), undefined, true);
  t.is(big.status, 413);
  t.true(f.server.stats.limits.body_too_large >= 1);
  // Small but deep: refused by depth.
  const r = await post(f.url, '/v1/heartbeat', '['.repeat(5000) + ']'.repeat(5000), undefined, true);
  t.is(r.status, 400);
  t.regex(String(r.body.message), /nests deeper than 4 levels/);
  t.is(f.server.stats.limits.json_too_deep, 1);
  t.regex(f.server.metrics(), /^fleetcast_server_limit_hits_total\{limit="json_too_deep"\} 1$/m, 'in the metrics too');
});

test('body caps follow the release: a heartbeat may carry its bitmap and a small constant, other bodies only the constant', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384 });
  const ref = { release: f.manifest.id, group: 'g', member: 'm1' };
  t.is(maxBodyBytes(f.manifest.unitCount), 32 * 1024 + 4);
  const big = Array.from({ length: 1024 }, () => 4294967295);
  const pad = { ...ref, member: 'm'.repeat(128), group: 'g'.repeat(128), address: 'x'.repeat(256), fetching: big, fetchingBytes: big, forwarded: 4294967295, wideGroup: 'w'.repeat(128), dataPort: 65535 };
  t.is((await post(f.url, '/v1/heartbeat', pad)).status, 200, 'the largest legitimate heartbeat passes');
  t.true(JSON.stringify(pad).length > 22_000);
  const r = await post(f.url, '/v1/lease', { ...ref, pad: 'x'.repeat(40_000) });
  t.is(r.status, 413);
  t.true(f.server.stats.limits.body_too_large >= 1);
});

test('device identity: a member id works only with the token that first used it, and a token names one device unless shared', async (t) => {
  const tokA = randomBytes(16).toString('hex');
  const tokB = randomBytes(16).toString('hex');
  const f = await startFleet(t, { size: 50_000, unitSize: 16384, server: { tokens: { 'box-a': tokA, 'box-b': tokB } } });
  const ref = { release: f.manifest.id, group: 'g', member: 'a' };
  t.is((await post(f.url, '/v1/join', ref, tokA)).status, 200);
  // A spoofed join or heartbeat under a's id with b's token: refused, a's state untouched.
  const leases = (await post(f.url, '/v1/lease', ref, tokA)).body.units as number[];
  t.true(leases.length > 0);
  const spoof = await post(f.url, '/v1/join', ref, tokB);
  t.is(spoof.status, 403);
  t.regex(String(spoof.body.message), /member id a belongs to another token/);
  t.is((await post(f.url, '/v1/heartbeat', { ...ref, have: Buffer.alloc(1, 0xff).toString('base64') }, tokB)).status, 403, 'no lying heartbeat under another member id');
  const unit = await fetch(`${f.url}/v1/releases/${f.manifest.id}/units/${leases[0]}?group=g&member=a`, { headers: { authorization: `Bearer ${tokB}` } });
  t.is(unit.status, 403, 'nor its unit bytes');
  const fleet = (await (await fetch(`${f.url}/v1/fleet`, { headers: { authorization: `Bearer ${tokA}` } })).json()) as { groups: { members: { id: string; leases: number; verifiedUnits: number }[] }[] };
  t.is(fleet.groups[0].members[0].leases, leases.length, "the spoofed join did not abort a's leases");
  t.is(fleet.groups[0].members[0].verifiedUnits, 0, 'the lying have was not taken');
  // Box b's token names one device: a second member id under it is refused with the way out.
  t.is((await post(f.url, '/v1/join', { ...ref, member: 'b' }, tokB)).status, 200);
  const second = await post(f.url, '/v1/join', { ...ref, member: 'b2' }, tokB);
  t.is(second.status, 403);
  t.regex(String(second.body.message), /token box-b names device b: .*own token.*shared_tokens: true/);
  t.is(f.server.stats.limits.member_of_other_token, 3);
  t.is(f.server.stats.limits.token_bound_to_other_member, 1);
  // Bindings survive a restart (no window to claim ids while members rejoin).
  await f.server.stop();
  const { FleetcastServer } = await import('../src/server/server');
  const s2 = new FleetcastServer({ storeDir: path.join(f.dir, 'store'), host: '127.0.0.1', port: 0, tokens: { 'box-a': tokA, 'box-b': tokB } });
  const { url } = await s2.start();
  t.teardown(() => s2.stop());
  t.is((await post(url, '/v1/join', ref, tokB)).status, 403);
  t.is((await post(url, '/v1/join', ref, tokA)).status, 200);
  t.truthy(JSON.parse(await fs.readFile(path.join(f.dir, 'store', 'identities.json'), 'utf8')).a);
});

test('shared tokens on purpose: one token serves many member ids, still not another token\'s ids', async (t) => {
  const fleetTok = randomBytes(16).toString('hex');
  const other = randomBytes(16).toString('hex');
  const f = await startFleet(t, { size: 50_000, unitSize: 16384, server: { tokens: { fleet: fleetTok, other }, sharedTokens: true } });
  const ref = { release: f.manifest.id, group: 'g', member: 'a' };
  for (const m of ['a', 'b', 'c']) t.is((await post(f.url, '/v1/join', { ...ref, member: m }, fleetTok)).status, 200);
  t.is((await post(f.url, '/v1/join', ref, other)).status, 403);
});

test('groups and members per release and per token are capped, with counters', async (t) => {
  const tok = randomBytes(16).toString('hex');
  const f = await startFleet(t, { size: 50_000, unitSize: 16384, server: { tokens: { fleet: tok }, sharedTokens: true, limits: { maxGroupsPerRelease: 5, maxMembersPerRelease: 8, maxGroupsPerToken: 3 } } });
  const ref = { release: f.manifest.id, group: 'g', member: 'a' };
  const codes: number[] = [];
  for (let i = 0; i < 10; i++) codes.push((await post(f.url, '/v1/heartbeat', { ...ref, group: `lie${i}`, member: `m${i}` }, tok)).status);
  t.deepEqual(codes, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429], 'one token reaches 3 groups');
  t.is(f.server.stats.limits.groups_per_token, 7);
  // Without tokens, the release caps: at most 5 groups and 8 live members.
  const g = await startFleet(t, { size: 50_000, unitSize: 16384, server: { limits: { maxGroupsPerRelease: 5, maxMembersPerRelease: 8 } } });
  const gref = { release: g.manifest.id, group: 'g', member: 'a' };
  let ok = 0;
  for (let i = 0; i < 10; i++) if ((await post(g.url, '/v1/heartbeat', { ...gref, group: `lie${i}`, member: `m${i}` })).status === 200) ok++;
  t.is(ok, 5);
  t.is(g.server.stats.limits.groups_per_release, 5);
  for (let i = 10; i < 20; i++) if ((await post(g.url, '/v1/heartbeat', { ...gref, group: 'lie0', member: `m${i}` })).status === 200) ok++;
  t.is(ok, 8);
  t.is(g.server.stats.limits.members_per_release, 7);
  t.true((JSON.stringify(g.server.fleet())).length < 8 * 1024, 'the fleet view stays small');
  // A member that moves to another group leaves the old one: it is in one group per release.
  t.is((await post(g.url, '/v1/heartbeat', { ...gref, group: 'lie1', member: 'm0' })).status, 200);
  const groups = (g.server.fleet() as { groups: { group: string; members: { id: string }[] }[] }).groups;
  t.deepEqual(groups.filter((x) => x.members.some((m) => m.id === 'm0')).map((x) => x.group), ['lie1']);
});

test('members.json is rewritten at most once per membersWriteMinMs however fast members join', async (t) => {
  const f = await startFleet(t, { size: 50_000, unitSize: 16384, heartbeatMs: 100, server: { limits: { membersWriteMinMs: 60_000 } } });
  const ref = { release: f.manifest.id, group: 'g', member: 'a' };
  const file = path.join(f.dir, 'store', 'members.json');
  for (let i = 0; i < 5; i++) t.is((await post(f.url, '/v1/heartbeat', { ...ref, member: `m${i}` })).status, 200);
  for (let i = 0; i < 20 && !(await fs.stat(file).catch(() => null)); i++) await sleep(50);
  const first = await fs.stat(file);
  for (let i = 5; i < 30; i++) {
    t.is((await post(f.url, '/v1/heartbeat', { ...ref, member: `m${i}` })).status, 200);
    await sleep(20);
  }
  const after = await fs.stat(file);
  t.is(after.mtimeMs, first.mtimeMs, 'no second write within the minute');
  t.true(f.server.stats.limits.members_file_writes_deferred > 0);
});

test('auth failures: a client is refused after its allowance for the minute, and logged once a minute', async (t) => {
  const good = randomBytes(16).toString('hex');
  const lines: string[] = [];
  const logger = { debug: () => undefined, info: () => undefined, warn: (m: string) => lines.push(m), error: (m: string) => lines.push(m) };
  const f = await startFleet(t, { size: 50_000, unitSize: 16384, server: { tokens: { box: good }, logger: logger as never, limits: { authFailuresPerMinute: 10 } } });
  const statuses: number[] = [];
  for (let i = 0; i < 200; i++) statuses.push((await fetch(`${f.url}/v1/releases`, { headers: { authorization: `Bearer ${randomBytes(16).toString('hex')}` } })).status);
  t.is(statuses.filter((s) => s === 401).length, 10);
  t.is(statuses.filter((s) => s === 429).length, 190);
  t.is((await fetch(`${f.url}/v1/releases`, { headers: { authorization: `Bearer ${good}` } })).status, 429, 'the client stays refused for the rest of the minute');
  t.is(f.server.stats.limits.auth_throttled, 191);
  t.is(lines.filter((l) => /wrong token/.test(l)).length, 1, lines.join('\n'));
  // Pure: the window ends, the log allows a line again.
  const th = new AuthThrottle(2, 60_000, 3);
  t.is(th.fail('x', 0), 1);
  t.is(th.fail('x', 1), 0);
  t.true(th.blocked('x', 2));
  t.false(th.blocked('x', 60_001));
  t.is(th.fail('x', 60_002), 2, 'the next line says how many went unlogged');
  for (const c of ['a', 'b', 'c', 'd']) th.fail(c, 1);
  t.false(th.blocked('x', 60_003), 'tracking is bounded: the oldest client is forgotten');
});

test('connections: per-client and total caps close the excess at once; idle header senders are cut by the header timeout', async (t) => {
  const c = new ConnectionCounter(3, 2);
  t.is(c.open('a'), 'ok');
  t.is(c.open('a'), 'ok');
  t.is(c.open('a'), 'connections_per_client');
  t.is(c.open('b'), 'ok');
  t.is(c.open('c'), 'connections_total');
  c.close('a');
  t.is(c.open('c'), 'ok');

  const f = await startFleet(t, { size: 50_000, unitSize: 16384, server: { limits: { maxConnectionsPerClient: 20, headersTimeoutMs: 1000, bodyTimeoutMs: 1000 } } });
  const { port } = new URL(f.url);
  const socks: net.Socket[] = [];
  t.teardown(() => socks.forEach((s) => s.destroy()));
  let closedEarly = 0;
  for (let i = 0; i < 50; i++) {
    const s = net.connect(Number(port), '127.0.0.1');
    s.on('error', () => undefined);
    s.on('close', () => closedEarly++);
    s.resume();
    s.write('GET /v1/releases HTTP/1.1\r\nhost: x\r\n'); // headers never end (slowloris)
    socks.push(s);
  }
  for (let i = 0; i < 100 && f.server.stats.limits.connections_per_client < 30; i++) await sleep(20);
  t.is(f.server.stats.limits.connections_per_client, 30);
  // A legitimate request from elsewhere would still get in; here the same client waits until the slow ones are cut.
  for (let i = 0; i < 300 && f.server.stats.limits.header_timeout < 20; i++) await sleep(50);
  t.is(f.server.stats.limits.header_timeout, 20, 'every slow connection was cut by the header timeout');
  for (let i = 0; i < 100 && closedEarly < 50; i++) await sleep(20);
  t.is(closedEarly, 50);
  // The server counts a cut connection closed when its own socket's 'close' runs, which on a
  // busy box can come after this side saw it close: until then a new connection from this
  // client still meets the per-client cap. Try again while it does (a wait on progress).
  let res: Response | null = null;
  for (let i = 0; i < 100 && !res; i++) res = await fetch(`${f.url}/v1/releases`).catch(() => sleep(50).then(() => null));
  t.is(res?.status, 200, 'and the server serves again');
  // A slow body: headers complete, body never does.
  const s = net.connect(Number(port), '127.0.0.1');
  socks.push(s);
  s.on('error', () => undefined);
  s.resume();
  const closed = new Promise((r) => s.on('close', r));
  s.write(`POST /v1/heartbeat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"rel`);
  await closed;
  t.is(f.server.stats.limits.body_timeout + f.server.stats.limits.header_timeout, 21, 'the slow body was cut too');
});

test('identity bindings are pure: first use binds, caps per token hold', (t) => {
  const b = new IdentityBindings(true, 2);
  t.true(b.bind('t', 'a').ok);
  t.true(b.bind('t', 'b').ok);
  const r = b.bind('t', 'c');
  t.false(r.ok);
  if (!r.ok) t.is(r.limit, 'members_per_token');
  const strict = new IdentityBindings(false, 100);
  t.true(strict.bind('t', 'a').ok);
  t.true(strict.bind('t', 'a').ok);
  t.false(strict.bind('t', 'b').ok);
  t.false(strict.bind('u', 'a').ok);
  // A token named after its device: the id is reserved, and once used the token is bound to it.
  const named = new IdentityBindings(false, 100);
  named.setTokenNames(['box-1', 'box-2']);
  t.false(named.bind('box-2', 'box-1').ok, 'nobody else may take box-1 first');
  t.true(named.bind('box-1', 'box-1').ok);
  t.false(named.bind('box-1', 'other').ok, 'box-1 names one device');
});

test('TLS: only forward-secret AEAD suites; RSA key exchange, CBC and SHA-1 suites are refused', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const tls = await import('node:tls');
  const { tmpdir } = await import('./helpers/fleet');
  const dir = await tmpdir(t);
  const r = spawnSync('sh', ['-ec', 'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem -days 2 -subj /CN=127.0.0.1 2>/dev/null'], { cwd: dir });
  if (r.status !== 0) return t.fail('openssl is needed to make a test certificate');
  const f = await startFleet(t, { size: 50_000, unitSize: 16384, server: { tls: { cert: await fs.readFile(path.join(dir, 'c.pem')), key: await fs.readFile(path.join(dir, 'k.pem')) } } });
  const port = Number(new URL(f.url).port);
  const handshake = (opts: import('node:tls').ConnectionOptions) =>
    new Promise<string>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts }, () => {
        const c = s.getCipher().name;
        s.destroy();
        resolve(c);
      });
      s.on('error', () => resolve('refused'));
    });
  for (const weak of ['AES128-SHA', 'AES128-GCM-SHA256', 'ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES128-SHA256', 'ECDHE-ECDSA-AES128-CCM8', 'ECDHE-ECDSA-ARIA128-GCM-SHA256']) {
    t.is(await handshake({ maxVersion: 'TLSv1.2', ciphers: weak }), 'refused', weak);
  }
  t.is(await handshake({ maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }), 'refused', 'TLS 1.0/1.1');
  t.is(await handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' }), 'ECDHE-ECDSA-AES128-GCM-SHA256');
  t.is(await handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' }), 'ECDHE-ECDSA-CHACHA20-POLY1305');
  t.regex(await handshake({}), /^TLS_(AES|CHACHA20)/, 'TLS 1.3 by default');
});

test('unit count per release: publish refuses more than MAX_UNITS, the server refuses releases above its own cap, counted', async (t) => {
  const { MAX_UNITS } = await import('../src/release/manifest');
  const { runCli, tmpdir } = await import('./helpers/fleet');
  const dir = await tmpdir(t);
  const big = path.join(dir, 'big.img');
  await fs.writeFile(big, '');
  await fs.truncate(big, (MAX_UNITS + 1) * 4096); // sparse
  const keys = await runCli(['keygen', '--out', path.join(dir, 'keys')]);
  t.is(keys.code, 0, keys.stderr);
  const pub = await runCli(['publish', big, '--store', path.join(dir, 'store'), '--key', path.join(dir, 'keys', 'server.key'), '--unit-size', '4096']);
  t.is(pub.code, 64);
  t.regex(pub.stderr, new RegExp(`would have more than ${MAX_UNITS} units; raise --unit-size`));
  // A server may set a lower cap: a release above it gets a clear refusal.
  const f = await startFleet(t, { size: 50_000, unitSize: 4096, server: { maxUnitsPerRelease: 10 } });
  const r = await post(f.url, '/v1/heartbeat', { release: f.manifest.id, group: 'g', member: 'a' });
  t.is(r.status, 413);
  t.regex(String(r.body.message), /has 13 units; this server serves at most 10/);
  t.is(f.server.stats.limits.units_per_release, 1);
});
