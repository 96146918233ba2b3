import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
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
  const origins = new RangeOrigins({ plainHttp: true, stallMs: 500 });
  t.teardown(() => origins.close());
  const ac = new AbortController();
  const take = async (origin: string, start: number, end: number) => {
    const parts: Buffer[] = [];
    const n = await origins.streamRange(origin, 'releases/r1/data', { group: 'g', member: 'm' }, start, end, (c) => void parts.push(Buffer.from(c)), ac.signal);
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
  await t.throwsAsync(take(base + '/stall', 0, 99), { instanceOf: OriginError, message: /no byte for 500 ms/ });
  await t.throwsAsync(take(base + '/lies', 0, 99), { instanceOf: OriginError, message: /Content-Range/ });
  const closed = await new Promise<number>((r) => { const s = http.createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => r(p)); }); });
  await t.throwsAsync(take(`http://127.0.0.1:${closed}`, 0, 99), { instanceOf: OriginError, message: /ECONNREFUSED/ });
  const strict = new RangeOrigins({ plainHttp: false });
  await t.throwsAsync(strict.streamRange(base, 'releases/r1/data', {}, 0, 9, () => undefined, ac.signal), { instanceOf: OriginError, message: /plain HTTP/ });
  t.is(originProblem('https://user:pw@cdn.example/x', false), 'must not carry credentials, a query or a fragment');
});
