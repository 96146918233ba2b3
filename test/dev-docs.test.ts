import test from 'ava';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { commandBlocks } from './helpers/doc-blocks';
import { run } from './helpers/run';

/**
 * The developers' command blocks (CONTRIBUTING.md, docs/simulator.md) run as written, in
 * a checkout of their own: a copy of the sources with this tree's node_modules and
 * addon linked in, so their `tsc` writes that copy's dist/ and not the one this suite
 * is running from. Nothing here depends on the transport: npm test's second pass
 * (FLEETCAST_TRANSPORT=dgram) skips it rather than run the same commands again.
 */

const ROOT = path.join(__dirname, '..', '..');
const dgramPass = process.env.FLEETCAST_TRANSPORT === 'dgram';

async function checkout(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-devdocs-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  for (const f of ['src', 'test', 'bench', 'scripts', 'bin', 'docs', 'package.json', 'tsconfig.json', 'CONTRIBUTING.md', 'README.md']) {
    await fs.cp(path.join(ROOT, f), path.join(dir, f), { recursive: true });
  }
  await fs.symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  await fs.symlink(path.join(ROOT, 'build'), path.join(dir, 'build')).catch(() => undefined);
  return dir;
}

const title = 'CONTRIBUTING.md and docs/simulator.md: every command block runs as written';
(dgramPass ? test.skip : test)(dgramPass ? `${title} [skipped: no transport involved; runs in the first pass of npm test]` : title, async (t) => {
  t.timeout(10 * 60_000);
  const blocks = [
    ...commandBlocks(await fs.readFile(path.join(ROOT, 'CONTRIBUTING.md'), 'utf8')),
    ...commandBlocks(await fs.readFile(path.join(ROOT, 'docs', 'simulator.md'), 'utf8')),
  ];
  const lines = blocks.flat();
  t.true(lines.includes('npm run check-layers'), lines.join('\n'));
  t.true(lines.some((l) => l.includes('dist/test/sim/protocol.test.js')), lines.join('\n'));
  const dir = await checkout(t);
  for (const line of lines) {
    const r = await run('bash', ['-e', '-o', 'pipefail', '-c', line], { cwd: dir, env: { CI: '' }, timeoutMs: 5 * 60_000 });
    t.is(r.code, 0, `${line}\n${r.stdout.slice(-10_000)}${r.stderr.slice(-10_000)}`);
  }
});
