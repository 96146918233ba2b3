import test, { ExecutionContext } from 'ava';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { unitLength } from '../src/release/manifest';
import { nginxBinary, startNginx } from './helpers/nginx';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { originProblem, OriginError, RangeOrigins } from '../src/net/origin';
import { writeDistribution } from '../src/release/distribution';
import { sha256File } from '../src/storage/partial-store';
import { AgentProc, Fleet, startFleet } from './helpers/fleet';
import { commandBlocks } from './helpers/doc-blocks';
import { run } from './helpers/run';

/**
 * Unit bytes from any HTTP range origin (docs/scale-out.md): a store written by
 * `fleetcast publish` is laid out so a static web server can serve it as it is.
 */
const hasNginx = nginxBinary() !== null;
const originTest = hasNginx || process.env.CI ? test : test.skip;
if (!hasNginx) console.log(process.env.CI ? 'nginx is missing: under CI this fails (.ci/run installs it)' : 'skipping: nginx is not installed (apt-get install nginx)');

originTest('nginx serving the store directory answers Range requests with exactly the units the signed manifest names', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-origin-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const keys = await generateKeyPair(path.join(dir, 'keys'));
  const file = path.join(dir, 'release.bin');
  await fs.writeFile(file, randomBytes(3 * 256 * 1024 + 77));
  const m = await publishRelease(file, path.join(dir, 'store'), await loadPrivateKey(keys.keyPath), { name: 'release.bin', unitSize: 256 * 1024 });
  const ngx = await startNginx(t, path.join(dir, 'store'));
  for (let u = 0; u < m.unitCount; u++) {
    const start = u * m.unitSize;
    const end = start + unitLength(m, u) - 1;
    const res = await fetch(`${ngx.url}/releases/${m.id}/data?group=g1&member=a${u}`, { headers: { range: `bytes=${start}-${end}` } });
    t.is(res.status, 206);
    const body = Buffer.from(await res.arrayBuffer());
    t.is(createHash('sha256').update(body).digest('hex'), m.units[u], `unit ${u}`);
  }
  const reqs = (await ngx.requests()).filter((r) => r.uri.startsWith('/releases/')); // not the harness's readiness probe
  t.is(reqs.length, m.unitCount);
  t.is(reqs.reduce((s, r) => s + r.bytes, 0), m.size, 'the access log counts every byte served');
  t.deepEqual(reqs.map((r) => r.args.get('member')), Array.from({ length: m.unitCount }, (_, u) => `a${u}`));
});

test('streamRange takes exactly the asked range from nginx, and refuses what a broken or hostile origin sends', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-origin-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const data = randomBytes(200_000);
  await fs.mkdir(path.join(dir, 'releases', 'r1'), { recursive: true });
  await fs.writeFile(path.join(dir, 'releases', 'r1', 'data'), data);
  // A short stall bound only where a stall is what is tested: on a busy machine any request's
  // first byte can take longer than 500 ms (a CI run saw /lies fail so, not for its Content-Range).
  const origins = new RangeOrigins({ plainHttp: true, stallMs: 30_000 });
  const impatient = new RangeOrigins({ plainHttp: true, stallMs: 500 });
  t.teardown(() => origins.close());
  t.teardown(() => impatient.close());
  const ac = new AbortController();
  const take = async (origin: string, start: number, end: number, via = origins) => {
    const parts: Buffer[] = [];
    const n = await via.streamRange(origin, 'releases/r1/data', { group: 'g', member: 'm' }, start, end, (c) => void parts.push(Buffer.from(c)), ac.signal);
    return { n, bytes: Buffer.concat(parts) };
  };
  if (hasNginx) {
    const ngx = await startNginx(t, dir);
    const got = await take(ngx.url + '/', 1000, 70_999);
    t.is(got.n, 70_000);
    t.true(got.bytes.equals(data.subarray(1000, 71_000)));
    const logged = (await ngx.requests()).filter((r) => r.uri === '/releases/r1/data');
    t.is(logged[0].range, 'bytes=1000-70999');
    t.is(logged[0].args.get('member'), 'm', 'who asked is in the access log');
  }
  // Hostile or broken origins on loopback: ignores Range (sends the whole file), stalls, lies in Content-Range.
  const srv = http.createServer((req, res) => {
    if (req.url!.startsWith('/whole/')) {
      res.writeHead(200, { 'content-length': data.length });
      res.end(data);
    } else if (req.url!.startsWith('/stall/')) {
      res.writeHead(206, { 'content-range': 'bytes 0-99/200000', 'content-length': 100 });
      res.write(data.subarray(0, 10)); // and nothing more
    } else {
      res.writeHead(206, { 'content-range': 'bytes 5-104/200000', 'content-length': 100 });
      res.end(data.subarray(5, 105));
    }
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  await t.throwsAsync(take(base + '/whole', 0, 99), { instanceOf: OriginError, message: /got status 200/ });
  await t.throwsAsync(take(base + '/stall', 0, 99, impatient), { instanceOf: OriginError, message: /no byte for 500 ms/ });
  await t.throwsAsync(take(base + '/lies', 0, 99), { instanceOf: OriginError, message: /Content-Range/ });
  const closed = await new Promise<number>((r) => { const s = http.createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => r(p)); }); });
  await t.throwsAsync(take(`http://127.0.0.1:${closed}`, 0, 99), { instanceOf: OriginError, message: /ECONNREFUSED/ });
  const strict = new RangeOrigins({ plainHttp: false });
  await t.throwsAsync(strict.streamRange(base, 'releases/r1/data', {}, 0, 9, () => undefined, ac.signal), { instanceOf: OriginError, message: /plain HTTP/ });
  t.is(originProblem('https://user:pw@cdn.example/x', false), 'must not carry credentials, a query or a fragment');
});

/** Two LAN groups of 3 agents on loopback, each group its own multicast group, one allocation per LAN group. */
function startTwoGroups(f: Fleet): { id: string; group: string; a: AgentProc }[] {
  const base = randomInt(20000, 50000);
  const out: { id: string; group: string; a: AgentProc }[] = [];
  for (const [gi, group] of ['east', 'west'].entries()) {
    const mc = `239.253.${randomInt(0, 256)}.${gi + 1}:${base + gi}`;
    for (let i = 1; i <= 3; i++) {
      const id = `${group}${i}`;
      out.push({ id, group, a: f.spawnAgent(id, ['--group', group, '--multicast', mc, '--rate', '200', '--log-level', 'info', '--report', path.join(f.dir, `${id}.json`)]) }); // info: a failure quotes their origin and relay lines
    }
  }
  return out;
}

async function allVerify(t: ExecutionContext, f: Fleet, agents: { id: string; a: AgentProc }[]): Promise<Record<string, number>[]> {
  const codes = await Promise.all(agents.map((x) => x.a.exit));
  t.deepEqual(codes, agents.map(() => 0), agents.map((x) => `${x.id}: ${x.a.stderr().slice(-400)}`).join('\n'));
  const reps = await Promise.all(agents.map(async (x) => JSON.parse(await fs.readFile(path.join(f.dir, `${x.id}.json`), 'utf8')) as Record<string, number> & { path: string }));
  for (const r of reps) t.is(await sha256File(r.path), f.manifest.sha256);
  return reps;
}

originTest('unit bytes from nginx: 2 LAN groups x 3 agents, 32 MiB; all verify, the server sends no unit byte, nginx at most 1.02x per group', async (t) => {
  const f = await startFleet(t, { size: 32 * 1024 * 1024, unitSize: 1024 * 1024, server: { policy: 'group' }, allocator: { minMembers: 3, maxWaitMs: 60_000 } });
  const ngx = await startNginx(t, path.join(f.dir, 'store'));
  // As `fleetcast publish --origin` writes it, before any agent joins.
  await writeDistribution(path.join(f.dir, 'store', 'releases', f.manifest.id), { origins: [ngx.url] });
  const agents = startTwoGroups(f);
  const reps = await allVerify(t, f, agents);
  t.is(f.server.stats.unitBytesSent, 0, 'the server sent no unit byte');
  t.true(f.server.stats.originGrants >= f.manifest.unitCount * 2, `${f.server.stats.originGrants} units granted with the origin`);
  const served = (await ngx.requests()).filter((r) => r.uri === `/releases/${f.manifest.id}/data`);
  for (const group of ['east', 'west']) {
    const bytes = served.filter((r) => r.args.get('group') === group).reduce((s, r) => s + r.bytes, 0);
    t.log(`${group}: nginx served ${(bytes / f.manifest.size).toFixed(3)}x the release`);
    const twice = [...new Set(served.filter((r) => r.args.get('group') === group).map((r) => r.args.get('unit')))].filter((u) => served.filter((r) => r.args.get('group') === group && r.args.get('unit') === u).length > 1);
    t.true(bytes >= f.manifest.size && bytes <= 1.02 * f.manifest.size, `${group}: ${(bytes / f.manifest.size).toFixed(3)}x from nginx; units asked more than once: ${twice.join(', ') || 'none'}; server re-sends ${JSON.stringify(f.server.stats.resent)}\n${agents.filter((x) => x.group === group).map((x) => `${x.id}: ${x.a.stderr().split('\n').filter((l: string) => /origin|relay|hedg|verif|lease/i.test(l)).slice(-4).join(' | ')}`).join('\n')}`);
  }
  t.is(reps.reduce((s, r) => s + r.originBytes, 0), served.reduce((s, r) => s + r.bytes, 0), "the agents' origin bytes are what nginx logged");
  t.is(reps.reduce((s, r) => s + r.originFailures, 0), 0);
});

test('an origin that does not answer: agents fall back to the server and every one verifies', async (t) => {
  const f = await startFleet(t, { size: 6 * 1024 * 1024 + 3, unitSize: 256 * 1024, server: { policy: 'group' }, allocator: { minMembers: 3, maxWaitMs: 60_000 } });
  const dead = await new Promise<number>((r) => { const s = http.createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => r(p)); }); });
  await writeDistribution(path.join(f.dir, 'store', 'releases', f.manifest.id), { origins: [`http://127.0.0.1:${dead}`] });
  const agents = startTwoGroups(f);
  const reps = await allVerify(t, f, agents);
  t.true(reps.reduce((s, r) => s + r.originFailures, 0) > 0, 'the origin was tried');
  t.is(reps.reduce((s, r) => s + r.originBytes, 0), 0);
  for (const group of ['east', 'west']) {
    const sent = f.server.stats.unitBytesSentByGroup[group] ?? 0;
    t.true(sent >= f.manifest.size && sent <= 1.05 * f.manifest.size, `${group}: the server sent ${(sent / f.manifest.size).toFixed(3)}x; server re-sends ${JSON.stringify(f.server.stats.resent)}\n${agents.filter((x) => x.group === group).map((x) => `${x.id}: ${x.a.stderr().split('\n').filter((l: string) => /origin|relay|hedg|stall|lease|retry|abort/i.test(l)).slice(-6).join(' | ')}`).join('\n')}`);
  }
});

test('docs/scale-out.md: its command block runs as written and names the origin in distribution.json', async (t) => {
  const root = path.join(__dirname, '..', '..');
  const blocks = commandBlocks(await fs.readFile(path.join(root, 'docs', 'scale-out.md'), 'utf8'));
  t.is(blocks.length, 1);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-scaleout-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.mkdir(path.join(dir, '.bin'));
  await fs.writeFile(path.join(dir, '.bin', 'fleetcast'), `#!/bin/sh\nexec "${process.execPath}" "${path.join(root, 'bin', 'fleetcast.js')}" "$@"\n`, { mode: 0o755 });
  let last = '';
  for (const line of blocks[0]) {
    const r = await run('bash', ['-e', '-o', 'pipefail', '-c', line], { cwd: dir, env: { PATH: `${path.join(dir, '.bin')}:${process.env.PATH}` } });
    t.is(r.code, 0, `${line}\n${r.stdout}${r.stderr}`);
    last = r.stdout;
  }
  t.deepEqual(JSON.parse(last), { origins: ['https://cdn.example.com/fleet'] });
});

test('an origin that serves wrong bytes (right range, right length): they fail verification, the units come from the server, every agent verifies', async (t) => {
  const f = await startFleet(t, { size: 4 * 1024 * 1024 + 3, unitSize: 256 * 1024, server: { policy: 'group' }, allocator: { minMembers: 3, maxWaitMs: 60_000 } });
  let served = 0;
  const liar = http.createServer((req, res) => {
    const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
    if (!m) return void res.writeHead(400).end();
    const [a, b] = [Number(m[1]), Number(m[2])];
    served++;
    res.writeHead(206, { 'content-range': `bytes ${a}-${b}/${f.manifest.size}`, 'content-length': b - a + 1 });
    res.end(randomBytes(b - a + 1));
  });
  await new Promise<void>((r) => liar.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => { liar.closeAllConnections(); liar.close(() => r()); }));
  await writeDistribution(path.join(f.dir, 'store', 'releases', f.manifest.id), { origins: [`http://127.0.0.1:${(liar.address() as AddressInfo).port}`] });
  const agents = startTwoGroups(f);
  const reps = await allVerify(t, f, agents);
  t.true(served > 0, 'the origin was asked');
  t.true(reps.reduce((s, r) => s + r.originFailures, 0) > 0, 'its bytes were counted as failures');
  t.true(reps.reduce((s, r) => s + r.unitsRejected, 0) > 0, 'and rejected on their hash');
  for (const group of ['east', 'west']) t.true((f.server.stats.unitBytesSentByGroup[group] ?? 0) >= f.manifest.size * 0.9, `${group}: the server sent the units instead`);
});
