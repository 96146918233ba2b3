import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { isReleaseId } from '../release/manifest';
import { Logger } from '../util/log';

/**
 * What an agent keeps on disk under `<storage>/<release id>/`: the release it works on,
 * and the last `keep` completed releases (by completion time, the current one counted).
 * Partials of releases it moved away from are superseded and removed.
 */
export const COMPLETED_MARKER = 'completed.json';

export async function markCompleted(storageDir: string, id: string, now = Date.now()): Promise<void> {
  const file = path.join(storageDir, id, COMPLETED_MARKER);
  try {
    await fs.access(file);
  } catch {
    await fs.writeFile(file, JSON.stringify({ completedAt: now }) + '\n');
  }
}

interface Entry {
  id: string;
  complete: boolean;
  completedAt: number;
}

async function entries(storageDir: string): Promise<Entry[]> {
  let names: string[];
  try {
    names = await fs.readdir(storageDir);
  } catch {
    return [];
  }
  const out: Entry[] = [];
  for (const id of names) {
    if (!isReleaseId(id)) continue;
    const dir = path.join(storageDir, id);
    let completedAt = 0;
    try {
      const j = JSON.parse(await fs.readFile(path.join(dir, COMPLETED_MARKER), 'utf8')) as { completedAt?: unknown };
      completedAt = typeof j.completedAt === 'number' ? j.completedAt : 0;
    } catch {
      /* not complete, or completed by an older fleetcast */
    }
    const partial = await fs.access(path.join(dir, 'data.part')).then(
      () => true,
      () => false,
    );
    if (!partial && completedAt === 0) {
      // Completed without a marker (e.g. --once runs): the directory's own time.
      completedAt = (await fs.stat(dir).catch(() => null))?.mtimeMs ?? 0;
    }
    out.push({ id, complete: !partial, completedAt });
  }
  return out;
}

/** Remove superseded partials and completed releases beyond the newest `keep`. Returns removed ids. */
export async function prune(storageDir: string, currentId: string | null, keep: number, log: Logger): Promise<string[]> {
  const all = await entries(storageDir);
  const removed: string[] = [];
  const done = all.filter((e) => e.complete).sort((a, b) => b.completedAt - a.completedAt);
  // The newest `keep` completed releases, the current one first among them when complete.
  const cur = done.findIndex((e) => e.id === currentId);
  if (cur > 0) done.unshift(...done.splice(cur, 1));
  const kept = new Set<string>(done.slice(0, keep).map((e) => e.id));
  for (const e of all) {
    if (kept.has(e.id) || e.id === currentId) continue;
    await fs.rm(path.join(storageDir, e.id), { recursive: true, force: true });
    removed.push(e.id);
    log.info(`removed ${e.complete ? 'old release' : 'superseded partial'} ${e.id}`);
  }
  return removed;
}
