import test, { ExecutionContext } from 'ava';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { tmpdir } from './helpers/fleet';
import { generateKeyPair, loadPrivateKey, loadPublicKey } from '../src/release/keys';
import { StreamPublisher } from '../src/release/stream-publish';
import { FleetcastServer } from '../src/server/server';
import { ServerAccess } from '../src/net/server-access';
import { StreamAgent, StreamAgentOptions } from '../src/agent/stream-agent';

/*
 * Streams on the LAN (issue 19): a stream published in this process at a few Mbit/s, the
 * server allocating its units to the agents of one LAN group, the agents multicasting
 * and repairing them on loopback and delivering them to file sinks. Bounds are on
 * bytes and counts, never on time.
 */

const UNIT = 64 * 1024;

async function setup(t: ExecutionContext) {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const store = path.join(dir, 'store');
  await fs.mkdir(store);
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0 });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  const key = await loadPrivateKey(keyPath);
  const trusted = [await loadPublicKey(pubPath)];
  const multicast = { address: `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`, port: randomInt(20000, 60000) };
  const agents: StreamAgent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  const agent = (name: string, id: string, extra: Partial<StreamAgentOptions> = {}) => {
    const a = new StreamAgent({
      server: new ServerAccess({ url, plainHttp: true }),
      stream: name,
      group: 'g1',
      member: id,
      interface: '127.0.0.1',
      multicast,
      storageDir: path.join(dir, `agent-${id}`),
      trustedKeys: trusted,
      start: 'beginning',
      sink: path.join(dir, `${id}.bin`),
      ...extra,
    });
    agents.push(a);
    return a;
  };
  return { dir, store, key, agent };
}

/** Push `source` into a publisher at `bytesPerTick` every 20 ms, then end the stream. */
async function feed(p: StreamPublisher, source: Buffer, bytesPerTick: number, onProgress?: (sent: number) => void | Promise<void>): Promise<void> {
  for (let off = 0; off < source.length; off += bytesPerTick) {
    await p.push(source.subarray(off, off + bytesPerTick));
    await onProgress?.(off + bytesPerTick);
    await new Promise((r) => setTimeout(r, 20));
  }
  await p.end();
  await p.close();
}

test('a stream fed at ~4 Mbit/s reaches 4 agents of one LAN group: every sink equals the source, and the server sends each unit about once', async (t) => {
  const s = await setup(t);
  const source = randomBytes(5_000_000); // ~10 s at 10 KB every 20 ms
  const pub = await StreamPublisher.open(s.store, 'cam', s.key, { unitSize: UNIT, flushMs: 200 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush(); // the stream exists (its head) before the agents ask for it
  const agents = ['a', 'b', 'c', 'd'].map((id) => s.agent('cam', id));
  const runs = agents.map((a) => a.run());
  await feed(pub, source.subarray(10_000), 10_000);
  await Promise.all(runs);
  let wan = 0;
  let lan = 0;
  for (const [i, a] of agents.entries()) {
    const got = await fs.readFile(path.join(s.dir, `${'abcd'[i]}.bin`));
    t.is(got.length, source.length, `agent ${'abcd'[i]}: sink length`);
    t.true(got.equals(source), `agent ${'abcd'[i]}: sink equals the source`);
    wan += a.stats.wanBytes;
    lan += a.stats.lanBytes;
  }
  t.log(`server unit bytes ${wan} for a ${source.length}-byte stream (${(wan / source.length).toFixed(3)}x); LAN bytes ${lan}`);
  t.true(wan <= 1.05 * source.length, `server unit bytes per group ${wan} <= 1.05 x ${source.length}`);
  t.true(lan > source.length, 'the agents shared units on the LAN');
});
