import type { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { StreamAgent, StreamAgentOptions } from '../../src/agent/stream-agent';
import { ServerAccess } from '../../src/net/server-access';
import { generateKeyPair } from '../../src/release/keys';
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
