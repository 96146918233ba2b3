import test from 'ava';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { AgentDaemon } from '../src/agent/daemon';
import { ServerAccess } from '../src/net/server-access';
import { silentLogger } from '../src/util/log';
import { tmpdir } from './helpers/fleet';

/** A daemon that never runs an agent: enough to serve `fleetcast status`. */
function daemon(member: string): AgentDaemon {
  return new AgentDaemon({
    agent: {
      server: new ServerAccess({ url: 'http://127.0.0.1:9', plainHttp: true }),
      group: member,
      interface: '127.0.0.1',
      multicast: { address: '239.255.0.1', port: 7601 },
      storageDir: '/nonexistent',
      trustedKeys: [],
      rateBytesPerSec: 1e6,
    },
    release: '0'.repeat(32),
    keep: 1,
    hookTimeoutMs: 1000,
    channelPollMs: 1000,
    logger: silentLogger,
  });
}

function getStatus(socketPath: string): Promise<{ group: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath, path: '/status' }, (res) => {
        let b = '';
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve(JSON.parse(b) as { group: string }));
      })
      .on('error', reject);
  });
}

// Agents on one box (or in namespaces sharing a file system) may share one status socket
// path. Exactly one of them may serve it; the others are told so and run without one.
// Before, each probed, removed the path and bound its own socket, so several "won" and
// removed each other's socket (and a loser's exit unlinked the winner's path).
test('agents starting at once on one status socket path: exactly one serves it, the others are refused and remove nothing', async (t) => {
  const dir = await tmpdir(t);
  for (let round = 0; round < 20; round++) {
    const sock = path.join(dir, `r${round}`, 'agent.sock');
    const ds = Array.from({ length: 6 }, (_, i) => daemon(`m${i}`));
    t.teardown(() => Promise.all(ds.map((d) => d.stop())).then(() => undefined));
    const results = await Promise.allSettled(ds.map((d) => d.serveStatus(sock)));
    const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    t.is(winners.length, 1, `round ${round}: ${winners.length} daemons bound ${sock}`);
    for (const r of results) if (r.status === 'rejected') t.regex((r.reason as Error).message, /another agent is answering on it/);
    t.is((await getStatus(sock)).group, `m${winners[0]}`, 'the path answers for the one that bound it');
    // The losers stopping must leave the winner's socket in place.
    await Promise.all(ds.filter((_, i) => i !== winners[0]).map((d) => d.stop()));
    t.is((await getStatus(sock)).group, `m${winners[0]}`, 'still answering after the others stopped');
    await ds[winners[0]].stop();
  }
});

test('a stale status socket (its agent was killed) is replaced; a live one is left alone', async (t) => {
  const dir = await tmpdir(t);
  const sock = path.join(dir, 'agent.sock');
  // A socket file nobody listens on any more, as SIGKILL leaves it.
  const stale = http.createServer();
  await new Promise<void>((r) => stale.listen(sock, r));
  const a = daemon('a');
  const b = daemon('b');
  t.teardown(async () => {
    await a.stop();
    await b.stop();
  });
  // Close it and keep its file: libuv unlinks the path on close, so keep a second link.
  await fs.link(sock, sock + '.keep');
  await new Promise<void>((r) => stale.close(() => r()));
  await fs.rename(sock + '.keep', sock);
  await a.serveStatus(sock);
  t.is((await getStatus(sock)).group, 'a');
  await t.throwsAsync(b.serveStatus(sock), { message: /another agent is answering on it/ });
  t.is((await getStatus(sock)).group, 'a');
});
