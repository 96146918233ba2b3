import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Logger } from '../util/log';
import { writeAtomic } from '../storage/files';

/*
 * What the daemon keeps on disk and in its log beside the releases: the newest release it
 * completed (a channel's move back to an older one is refused), and the recent warnings
 * and errors that `fleetcast status` shows.
 */

export interface Newest {
  release: string;
  name: string;
  /** The manifest's `created`, ms since the epoch. */
  created: number;
}

const NEWEST_FILE = 'newest.json';

/** The newest release (by its signed `created` time) this agent has completed. */
export async function readNewest(storageDir: string): Promise<Newest | null> {
  try {
    const j = JSON.parse(await fs.readFile(path.join(storageDir, NEWEST_FILE), 'utf8')) as Newest;
    return typeof j.created === 'number' && typeof j.release === 'string' ? j : null;
  } catch {
    return null;
  }
}

export async function noteNewest(storageDir: string, n: Newest): Promise<void> {
  const cur = await readNewest(storageDir);
  if (cur && cur.created >= n.created) return;
  await writeAtomic(path.join(storageDir, NEWEST_FILE), Buffer.from(JSON.stringify(n) + '\n'));
}

/** A logger that also remembers warnings and errors for `fleetcast status`. */
export function recordingLogger(inner: Logger, note: (m: string) => void): Logger {
  return {
    error: (m) => {
      note(m);
      inner.error(m);
    },
    warn: (m) => {
      note(m);
      inner.warn(m);
    },
    info: (m) => inner.info(m),
    debug: (m) => inner.debug(m),
    child: (p) => recordingLogger(inner.child(p), (m) => note(`${p}: ${m}`)),
    setLevel: (l) => inner.setLevel(l),
  };
}
