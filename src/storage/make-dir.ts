import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/**
 * `mkdir -p` that gives up: Node's `fs.mkdir(dir, { recursive: true })` never settles
 * when the parent exists but refuses the child with ENOENT (a path under /proc, say),
 * so an agent given `storage: /proc/fc` hung without a word. This walks up one level at
 * a time and throws the kernel's answer instead.
 */
export async function makeDir(dir: string, mode?: number): Promise<void> {
  try {
    await fs.mkdir(dir, { mode });
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if ((await fs.stat(dir)).isDirectory()) return;
      throw err;
    }
    if (code !== 'ENOENT') throw err;
  }
  const parent = path.dirname(dir);
  if (parent === dir) throw Object.assign(new Error(`ENOENT: no such directory, mkdir '${dir}'`), { code: 'ENOENT' });
  await makeDir(parent, mode);
  try {
    await fs.mkdir(dir, { mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}
