import test from 'ava';
import { spawn } from 'node:child_process';
import * as path from 'node:path';

test('`npm run demo` (4 agents, 64 MiB) completes and every agent verifies', async (t) => {
  const root = path.join(__dirname, '..', '..');
  const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const c = spawn('npm', ['run', '--silent', 'demo', '--', '--json'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), 110_000);
    c.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
  t.is(r.code, 0, r.err);
  const j = JSON.parse(r.out.trim().split('\n').pop()!);
  t.is(j.releaseBytes, 64 * 1024 * 1024);
  t.is(j.agents.length, 4);
  t.true(j.agents.every((a: { ok: boolean; sha256: string }) => a.ok && a.sha256 === j.releaseSha256));
  t.true(j.serverEgressBytes <= 1.02 * j.releaseBytes);
});
