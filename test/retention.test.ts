import test from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { markCompleted, prune } from '../src/agent/retention';
import { silentLogger } from '../src/util/log';
import { tmpdir } from './helpers/fleet';

const id = (n: number) => n.toString(16).padStart(32, '0');

async function release(dir: string, n: number, state: 'partial' | 'complete', completedAt = 0): Promise<void> {
  const d = path.join(dir, id(n));
  await fs.mkdir(d, { recursive: true });
  await fs.writeFile(path.join(d, 'manifest'), '{}');
  if (state === 'partial') await fs.writeFile(path.join(d, 'data.part'), 'x');
  else {
    await fs.writeFile(path.join(d, 'fw.bin'), 'x');
    await markCompleted(dir, id(n), completedAt);
  }
}

test('prune keeps the newest N completed releases and the current one, and removes superseded partials', async (t) => {
  const dir = await tmpdir(t);
  await release(dir, 1, 'complete', 1000);
  await release(dir, 2, 'complete', 3000);
  await release(dir, 3, 'complete', 2000);
  await release(dir, 4, 'partial');
  await release(dir, 5, 'partial');
  await fs.writeFile(path.join(dir, 'member-id'), 'm1');
  const removed = await prune(dir, id(5), 2, silentLogger);
  t.deepEqual(removed.sort(), [id(1), id(4)]);
  const left = (await fs.readdir(dir)).sort();
  t.deepEqual(left, [id(2), id(3), id(5), 'member-id'], 'newest two complete, the current partial, and files that are not releases');
});

test('the current release counts among the kept ones when it is complete, even if not the newest', async (t) => {
  const dir = await tmpdir(t);
  await release(dir, 1, 'complete', 1000);
  await release(dir, 2, 'complete', 3000);
  await release(dir, 3, 'complete', 2000);
  await prune(dir, id(1), 1, silentLogger);
  t.deepEqual((await fs.readdir(dir)).sort(), [id(1)]);
});
