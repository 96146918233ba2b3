import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { unitLength } from '../src/release/manifest';
import { nginxBinary, startNginx } from './helpers/nginx';

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
