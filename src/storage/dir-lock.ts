import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ExitCode, FleetcastError } from '../util/errors';

/**
 * One agent process per storage directory (issue 13: two agents on one `--storage`
 * broke each other's `data.bitmap.tmp`).
 *
 * The lock is a listening unix socket in Linux's abstract namespace, named after the
 * directory's real path: binding it is atomic, only one process can hold it, and the
 * kernel releases it when the process dies however it dies (SIGKILL, power loss leaves
 * nothing stale). `<storage>/agent.pid` names the holder for the error message only.
 * Limit: abstract sockets belong to a network namespace, so two agents in different
 * network namespaces sharing one directory are not stopped (docs/security.md).
 *
 * Agents of one process share the lock (the daemon runs one Agent per release in turn).
 */
interface Held {
  server: net.Server;
  refs: number;
}
const held = new Map<string, Held>();

export interface DirLock {
  release(): Promise<void>;
}

export async function lockStorage(dir: string): Promise<DirLock> {
  const real = await fs.realpath(dir);
  let h = held.get(real);
  if (!h) {
    const name = '\0fleetcast-storage-' + createHash('sha256').update(real).digest('hex').slice(0, 32);
    const server = net.createServer((c) => c.destroy());
    const ok = await new Promise<boolean>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(false) : reject(err)));
      server.listen({ path: name, exclusive: true }, () => resolve(true));
    }).catch((err: Error) => {
      throw new FleetcastError('LOCK', `cannot lock storage ${dir}: ${err.message}`, ExitCode.CANTCREAT);
    });
    if (!ok) {
      const pid = await fs.readFile(path.join(real, 'agent.pid'), 'utf8').catch(() => '');
      const who = /^\d+$/.test(pid.trim()) ? `process ${pid.trim()}` : 'another process';
      throw new FleetcastError('LOCKED', `storage ${dir} is in use by ${who} (another fleetcast agent): give each agent its own --storage`, ExitCode.CANTCREAT);
    }
    server.unref();
    h = { server, refs: 0 };
    held.set(real, h);
    await fs.writeFile(path.join(real, 'agent.pid'), `${process.pid}\n`).catch(() => undefined);
  }
  h.refs++;
  let released = false;
  const entry = h;
  return {
    async release() {
      if (released) return;
      released = true;
      if (--entry.refs > 0) return;
      held.delete(real);
      await fs.rm(path.join(real, 'agent.pid'), { force: true }).catch(() => undefined);
      await new Promise<void>((resolve) => entry.server.close(() => resolve()));
    },
  };
}
