import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { BIN, runCli, tmpdir } from './fleet';
import { restartablePort } from './ports';
import { generateKeyPair, loadPrivateKey } from '../../src/release/keys';
import { Manifest } from '../../src/release/manifest';
import { publishRelease } from '../../src/release/publish';
import { setChannel } from '../../src/release/channels';
import { FleetcastServer } from '../../src/server/server';

/**
 * A channel `stable` on release A (current) with release B published next to it, a
 * server on 127.0.0.1, and agents following the channel in LAN groups of their own
 * multicast address. Hooks append to files in `dir`, so a test counts what ran.
 * Every agent and the server stop when the test ends, pass or fail.
 */
export interface RolloutFleet {
  dir: string;
  a: Manifest;
  b: Manifest;
  bBytes: Buffer;
  server: FleetcastServer;
  url: string;
  port: number;
  agents: Map<string, ChildProcess>;
  /** The last 20,000 characters each agent logged. */
  logs: Map<string, () => string>;
  spawnAgent(id: string, group: string, extra?: string[]): ChildProcess;
  restartServer(): Promise<void>;
  cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  lines(file: string): Promise<string[]>;
  /** Poll `cond` every 200 ms up to `ms`; the last value when it holds, else throw `what`. */
  until<T>(what: string, cond: () => Promise<T | null | undefined | false>, ms?: number): Promise<T>;
}

export const HOOK = (dir: string) =>
  // Waits for the test's go-RELEASE (so it can mark the members that fail first), logs, fails where told.
  `while [ ! -e ${dir}/go-$FLEETCAST_RELEASE_ID ]; do sleep 0.1; done; echo "$FLEETCAST_RELEASE_ID $FLEETCAST_MEMBER" >> ${dir}/installs.log; ` +
  `if [ -e ${dir}/fail-$FLEETCAST_MEMBER ]; then echo "flash write failed" >&2; exit 3; fi`;
export const ROLLBACK = (dir: string) => `echo "$FLEETCAST_MEMBER $FLEETCAST_PREVIOUS_FILE $FLEETCAST_ROLLBACK_REASON" >> ${dir}/rollbacks.log`;

/** `now`: the server's clock (default Date.now), so a test can move it on. */
export async function startRolloutFleet(t: ExecutionContext, opts: { size?: number; now?: () => number } = {}): Promise<RolloutFleet> {
  const dir = await tmpdir(t);
  const store = path.join(dir, 'store');
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const key = await loadPrivateKey(keyPath);
  const size = opts.size ?? 192 * 1024;
  await fs.writeFile(path.join(dir, 'fw-1.img'), randomBytes(size));
  const a = await publishRelease(path.join(dir, 'fw-1.img'), store, key, { name: 'fw-1.img', unitSize: 64 * 1024 });
  await new Promise((r) => setTimeout(r, 5)); // B is created after A: not a downgrade
  const bBytes = randomBytes(size);
  await fs.writeFile(path.join(dir, 'fw-2.img'), bBytes);
  const b = await publishRelease(path.join(dir, 'fw-2.img'), store, key, { name: 'fw-2.img', unitSize: 64 * 1024 });
  await setChannel(store, { channel: 'stable', release: a.id, name: a.name, publishedAt: Date.now() });
  await fs.writeFile(path.join(dir, `go-${a.id}`), ''); // release A installs at once
  // Every agent here, and the test's own CLI calls, come from 127.0.0.1: one "client" to
  // the server's per-client connection cap (64), which guards against one real box.
  const mk = (port: number) =>
    new FleetcastServer({ storeDir: store, host: '127.0.0.1', port, heartbeatMs: 200, allocator: { memberTimeoutMs: 3000 }, limits: { maxConnectionsPerClient: 1024 }, ...(opts.now ? { now: opts.now } : {}) });
  // Below the ephemeral range: restartServer() listens on it again (restartablePort).
  let server = mk(await restartablePort());
  const { url, port } = await server.start();
  const agents = new Map<string, ChildProcess>();
  const logs = new Map<string, () => string>();
  const multicast = new Map<string, string>();
  const stopAll = async () => {
    await Promise.all(
      [...agents.values()].map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
          }),
      ),
    );
    await server.stop();
  };
  t.teardown(stopAll);
  const f: RolloutFleet = {
    dir,
    a,
    b,
    bBytes,
    get server() {
      return server;
    },
    url,
    port,
    agents,
    logs,
    spawnAgent(id, group, extra = []) {
      if (!multicast.has(group)) multicast.set(group, `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}:${randomInt(20000, 60000)}`);
      const args = [
        BIN, 'agent', '--server', url, '--plain-http', '--group', group, '--interface', '127.0.0.1', '--multicast', multicast.get(group)!,
        '--status-socket', 'none', '--storage', path.join(dir, 'agents', id), '--trust', pubPath, '--channel', 'stable', '--member', id,
        '--channel-poll', '0.2', '--keep', '3', '--on-complete', HOOK(dir), '--on-rollback', ROLLBACK(dir), '--log-level', 'info', ...extra,
      ];
      const c = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr!.on('data', (d) => (err = (err + d).slice(-20000)));
      c.once('exit', (code, sig) => {
        if (code !== null && code !== 0) t.log(`agent ${id} exited ${code}: ${err.slice(-2000)}`);
        void sig;
      });
      agents.set(id, c);
      logs.set(id, () => err);
      return c;
    },
    async restartServer() {
      await server.stop();
      server = mk(port);
      await server.start();
    },
    cli: (args) => runCli([...args, '--server', url, '--plain-http']),
    async lines(file) {
      return (await fs.readFile(path.join(dir, file), 'utf8').catch(() => '')).split('\n').filter(Boolean);
    },
    async until(what, cond, ms = 90_000) {
      const end = Date.now() + ms;
      for (;;) {
        const v = await cond();
        if (v) return v as never;
        if (Date.now() > end) {
          const tails = [...logs.entries()].map(([id, log]) => `--- ${id}:\n${log().slice(-600)}`).join('\n');
          throw new Error(`timed out waiting for ${what}; server limits hit: ${JSON.stringify(server.stats.limits)}\n${tails}`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    },
  };
  return f;
}
