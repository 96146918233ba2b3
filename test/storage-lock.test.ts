import test from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { runCli, startFleet } from './helpers/fleet';
import { sha256File } from '../src/storage/partial-store';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('one agent per storage directory: a second one exits 73 naming the holder; after a SIGKILL the lock is free again', async (t) => {
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 256 * 1024 });
  const first = f.spawnAgent('a', ['--rate', '1']);
  const pidFile = path.join(f.dir, 'a', 'agent.pid');
  for (let i = 0; i < 600 && !(await fs.readFile(pidFile, 'utf8').catch(() => '')); i++) await sleep(50);
  const second = await runCli(f.agentArgs('a', ['--member', 'a2']));
  t.is(second.code, 73, second.stderr);
  t.regex(second.stderr, new RegExp(`storage .*/a is in use by process ${first.child.pid} \\(another fleetcast agent\\): give each agent its own --storage`));
  t.notRegex(second.stderr, /at .*\.js:\d+/, 'no stack trace');
  first.child.kill('SIGKILL');
  await first.exit;
  // The kernel released the lock with the process; a stale pid file does not block.
  const again = await runCli(f.agentArgs('a', ['--linger', '0']));
  t.is(again.code, 0, again.stderr);
  t.is(await sha256File(again.stdout.trim()), f.manifest.sha256);
});
