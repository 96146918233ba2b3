import test from 'ava';
import { run } from './helpers/run';
import * as path from 'node:path';

test('`npm run demo` (4 agents, 64 MiB) completes and every agent verifies', async (t) => {
  const root = path.join(__dirname, '..', '..');
  const r = await run('npm', ['run', '--silent', 'demo', '--', '--json'], { cwd: root, timeoutMs: 110_000 });
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.is(j.releaseBytes, 64 * 1024 * 1024);
  t.is(j.agents.length, 4);
  t.true(j.agents.every((a: { ok: boolean; sha256: string }) => a.ok && a.sha256 === j.releaseSha256));
  t.true(j.serverEgressBytes <= 1.02 * j.releaseBytes);
});
