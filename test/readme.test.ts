import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { commandBlocks, section } from './helpers/doc-blocks';
import { runAsWritten } from './helpers/as-written';
import { namespaceTest } from './helpers/netns';

/**
 * The README's "Using it" and "Running a fleet" run as written, as a new operator would
 * (issue 14: they did not run); so do docs/operations.md's blocks. The machine around the
 * lines (namespaces, stand-ins for sudo, npm and systemctl) is described in
 * helpers/as-written.ts.
 */

const ROOT = path.join(__dirname, '..', '..');

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

namespaceTest('README "Using it" then "Running a fleet", every command as written, deliver both releases', async (t) => {
  const readme = await fs.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const lines = [...commandBlocks(section(readme, 'Using it')), ...commandBlocks(section(readme, 'Running a fleet'))].flat();
  t.true(lines.length >= 10, `${lines.length} command lines`);
  const fw = randomBytes(3 * 1024 * 1024 + 5);
  const fw2 = randomBytes(2 * 1024 * 1024 + 7);
  // The unit's agent moves to the release published on its channel: wait for it, then
  // hand out what the box holds.
  const after = `for _ in $(seq 600); do
  fleetcast status --json > "$T/status.json" 2>/dev/null && grep -q '"name":"fw-2.4.img"' "$T/status.json" && grep -q '"complete":true' "$T/status.json" && break
  sleep 0.2
done
find /var/lib/fleetcast -type f \\( -name fw.img -o -name fw-2.4.img \\) -exec sha256sum {} + > "$T/sums"`;
  const r = await runAsWritten(t, lines, { 'fw.img': fw, 'fw-2.4.img': fw2 }, { after });
  // agent --once printed the path of the verified file.
  t.regex(r.stdout, /^\/var\/lib\/fleetcast\/[0-9a-f]{32}\/fw\.img$/m);
  // config check (as the service user) and doctor passed on the installed agent.yaml; fleet saw box1's group.
  t.regex(r.stdout, /agent\.yaml: valid agent config/);
  t.regex(r.stdout, /^OK +server +https:\/\/origin\.example:7600 answers/m);
  t.regex(r.stdout, /fw(-2\.4)?\.img \([0-9a-f]{32}\) group site-a/);
  // Both releases on the box, byte for byte.
  const sums = (await r.log('sums')).trim().split('\n').map((l) => l.split(/\s+/));
  const byName = new Map(sums.map(([h, p]) => [path.basename(p), h]));
  t.is(byName.get('fw.img'), sha256(fw));
  t.is(byName.get('fw-2.4.img'), sha256(fw2), `status: ${await r.log('status.json')}\n${await r.log('unit-agent.log')}`);
});

namespaceTest('docs/operations.md: every command block runs as written (install, init, bring your own PKI)', async (t) => {
  const doc = await fs.readFile(path.join(ROOT, 'docs', 'operations.md'), 'utf8');
  const lines = commandBlocks(doc).flat();
  t.true(lines.some((l) => l.startsWith('fleetcast init server')));
  t.true(lines.some((l) => l.startsWith('openssl x509 -req')));
  const r = await runAsWritten(t, lines, {});
  t.regex(r.stdout, /origin\/server\.yaml: valid server config/);
  t.regex(r.stdout, /^server\.yaml: valid server config/m);
});

test('the README command blocks parse into the lines the namespace test runs', async (t) => {
  const readme = await fs.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const using = commandBlocks(section(readme, 'Using it')).flat();
  t.true(using.some((l) => l.startsWith('fleetcast init server ')));
  t.true(using.some((l) => /^fleetcast server --config /.test(l)));
  t.true(using.some((l) => /fleetcast agent --config .* --once$/.test(l)));
  const fleet = commandBlocks(section(readme, 'Running a fleet')).flat();
  t.true(fleet.some((l) => /^fleetcast fleet --server https:\S+ --ca \S+ --token-file \S+$/.test(l)));
  t.false([...using, ...fleet].some((l) => l.includes('#')), 'comments are stripped');
});
