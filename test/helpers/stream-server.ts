import type { ExecutionContext } from 'ava';
import { randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { StreamAgent, StreamAgentOptions } from '../../src/agent/stream-agent';
import { ServerAccess } from '../../src/net/server-access';
import { generateKeyPair, loadPrivateKey, loadPublicKey } from '../../src/release/keys';
import type { StreamPublisher } from '../../src/release/stream-publish';
import { createLogger } from '../../src/util/log';
import { FleetcastServer } from '../../src/server/server';
import { tmpdir } from './fleet';

/** A release key pair and an empty store in a temp dir, served by an in-process server (plain HTTP), stopped at the end. */
export async function startStreamServer(t: ExecutionContext) {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const store = path.join(dir, 'store');
  await fs.mkdir(store);
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0 });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  return { dir, keyPath, pubPath, store, server, url };
}

/**
 * A stream agent of LAN group g1 on loopback, from the beginning, with its store in
 * DIR/agent-ID and a file sink DIR/ID.bin; `extra` overrides any option.
 */
export function loopbackStreamAgent(o: { url: string; dir: string; stream: string; id: string; multicast: { address: string; port: number }; trusted: StreamAgentOptions['trustedKeys'] }, extra: Partial<StreamAgentOptions> = {}): StreamAgent {
  return new StreamAgent({
    server: new ServerAccess({ url: o.url, plainHttp: true }),
    stream: o.stream,
    group: 'g1',
    member: o.id,
    interface: '127.0.0.1',
    multicast: o.multicast,
    storageDir: path.join(o.dir, `agent-${o.id}`),
    trustedKeys: o.trusted,
    start: 'beginning',
    sink: path.join(o.dir, `${o.id}.bin`),
    ...extra,
  });
}

/**
 * A stream server (startStreamServer), its key, a random multicast group on loopback, and
 * `agent(stream, id, extra)`: a loopback stream agent of that group, closed at the end.
 */
export async function streamSetup(t: ExecutionContext) {
  const { dir, keyPath, pubPath, store, url } = await startStreamServer(t);
  const key = await loadPrivateKey(keyPath);
  const trusted = [await loadPublicKey(pubPath)];
  const multicast = { address: `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`, port: randomInt(20000, 60000) };
  const agents: StreamAgent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  const agent = (name: string, id: string, extra: Partial<StreamAgentOptions> = {}) => {
    const a = loopbackStreamAgent(
      { url, dir, stream: name, id, multicast, trusted },
      { ...(process.env.STREAM_DEBUG ? { logger: createLogger({ level: 'debug', prefix: `${id} ` }) } : {}), ...extra },
    );
    agents.push(a);
    return a;
  };
  return { dir, store, key, agent, url, pubPath, multicast };
}

/** Push `source` into a publisher at `bytesPerTick` every 20 ms, then end the stream. */
export async function feed(p: StreamPublisher, source: Buffer, bytesPerTick: number, onProgress?: (sent: number) => void | Promise<void>): Promise<void> {
  for (let off = 0; off < source.length; off += bytesPerTick) {
    await p.push(source.subarray(off, off + bytesPerTick));
    await onProgress?.(off + bytesPerTick);
    await new Promise((r) => setTimeout(r, 20));
  }
  await p.end();
  await p.close();
}
