import test from 'ava';
import * as path from 'node:path';
import { Agent, AGENT_DEFAULTS } from '../src/agent/agent';
import { ServerAccess } from '../src/net/server-access';
import { loadPublicKey } from '../src/release/keys';
import { unitLength } from '../src/release/manifest';
import { sha256File } from '../src/storage/partial-store';
import { RecvBatch, Transport, TransportInfo, TransportStats } from '../src/transport/transport';
import { sealControl } from '../src/wire/auth';
import { encodeAnnounce, encodeData, encodeNack, fragmentCountFor } from '../src/wire/packet';
import { startFleet } from './helpers/fleet';

/**
 * An agent in this process behind a transport the test feeds directly: forged copies
 * under a real sender id (issue 13, 5) and the replay table (issue 13, 2) without
 * sockets in the way. ava runs each file in its own worker, so the knobs changed here
 * change nothing elsewhere.
 */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class FeedTransport implements Transport {
  readonly info: TransportInfo = { kind: 'dgram', recvBufferBytes: 0, sendBufferBytes: 0, features: [] };
  readonly stats: TransportStats = { datagramsReceived: 0, bytesReceived: 0, datagramsDroppedByLoss: 0, datagramsTruncated: 0, datagramsSent: 0, bytesSent: 0, sendErrors: 0 };
  readonly groupEndpoint = { address: '239.255.0.1', port: 9 };
  private handler: ((b: RecvBatch) => void) | null = null;
  async open(): Promise<void> {}
  onBatch(h: (b: RecvBatch) => void): void {
    this.handler = h;
  }
  sendBatch(d: readonly Uint8Array[]): number {
    this.stats.datagramsSent += d.length;
    return d.length;
  }
  onWritable(): void {}
  async close(): Promise<void> {}
  feed(list: Uint8Array[]): void {
    this.handler?.({ count: list.length, data: (i) => list[i], address: () => '127.0.0.1', port: () => 1 });
  }
}

test('forged copies under a real sender id: assemblies stay within their byte budget, idle ones age out, the transfer completes', async (t) => {
  AGENT_DEFAULTS.assemblyMaxBytes = 1024 * 1024;
  AGENT_DEFAULTS.assemblyMaxIdleMs = 800;
  AGENT_DEFAULTS.peerTimeoutMs = 300;
  AGENT_DEFAULTS.maxPeers = 40;
  const unitSize = 128 * 1024;
  const f = await startFleet(t, { size: 32 * unitSize, unitSize });
  // A member's group key (as any member gets it) to seal the peer's control packets.
  const hb = await fetch(`${f.url}/v1/heartbeat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ release: f.manifest.id, group: 'g1', member: 'peer' }) });
  const key = Buffer.from(((await hb.json()) as { groupKey: string }).groupKey, 'base64');
  const tr = new FeedTransport();
  const fragmentBytes = 8192;
  const agent = new Agent({
    server: new ServerAccess({ url: f.url, plainHttp: true }),
    group: 'g1',
    member: 'victim',
    interface: '127.0.0.1',
    multicast: { address: '239.255.0.1', port: 9 },
    storageDir: path.join(f.dir, 'victim'),
    trustedKeys: [await loadPublicKey(f.pubPath)],
    releaseId: f.manifest.id,
    fragmentBytes,
    // Slow enough that the attack lands while most units are missing.
    wanRateBytesPerSec: 1024 * 1024,
    lingerMs: 0,
    transport: () => tr,
  });
  t.teardown(() => agent.close());
  const done = agent.run();
  const internals = agent as unknown as { assemblies: Map<number, unknown>; groupKey: Buffer | null };
  for (let i = 0; i < 200 && !internals.groupKey; i++) await sleep(10);
  const rid = f.manifest.idBytes;
  let seq = BigInt(Date.now()) * 1000n;
  const sender = 0x5eed;
  const announce = (s: number) => sealControl(encodeAnnounce({ sender: s, releaseId: rid, firstUnit: 0, unitCount: 0, complete: false, have: new Uint8Array(0) }), key, ++seq);
  tr.feed([announce(sender)]);
  // Forged copies for every unit, one fragment each: an assembly per unit if nothing bounded them.
  const forged: Uint8Array[] = [];
  for (let u = 0; u < f.manifest.unitCount; u++) {
    const fc = fragmentCountFor(unitLength(f.manifest, u), fragmentBytes);
    forged.push(encodeData({ sender, releaseId: rid, repair: false, unit: u, fragment: 0, fragmentCount: fc, fragmentBytes, payload: new Uint8Array(fragmentBytes) }));
  }
  tr.feed(forged);
  const budget = AGENT_DEFAULTS.assemblyMaxBytes / unitSize;
  t.true(internals.assemblies.size <= budget, `${internals.assemblies.size} assemblies, budget ${budget}`);
  t.true(internals.assemblies.size * unitSize <= AGENT_DEFAULTS.assemblyMaxBytes);
  t.true((agent.stats.drops['assembly-evicted'] ?? 0) > 0, 'evictions are counted');
  // Nothing more arrives: the forged assemblies age out and free their buffers.
  for (let i = 0; i < 100 && internals.assemblies.size > 0; i++) await sleep(50);
  t.is(internals.assemblies.size, 0);
  t.true((agent.stats.drops['assembly-aged'] ?? 0) > 0, 'aged assemblies are counted');

  // Replays: the peer goes silent past peerTimeoutMs (its liveness record goes), and its
  // old NACK comes back: still refused, because the replay record lasts the release.
  const fc0 = fragmentCountFor(unitLength(f.manifest, 0), fragmentBytes);
  const old = sealControl(encodeNack({ sender, releaseId: rid, unit: 0, fragmentCount: fc0, fragmentBytes, missing: new Uint8Array(Math.ceil(fc0 / 8)).fill(0xff) }), key, 1n);
  await sleep(AGENT_DEFAULTS.peerTimeoutMs + 500);
  const replayedBefore = agent.stats.drops.replayed ?? 0;
  tr.feed([old]);
  t.is((agent.stats.drops.replayed ?? 0) - replayedBefore, 1);
  // A full replay table refuses new senders rather than forgetting old ones.
  tr.feed(Array.from({ length: 60 }, (_, i) => announce(0x10000 + i)));
  t.true((agent.stats.drops['too-many-peers'] ?? 0) >= 60 - AGENT_DEFAULTS.maxPeers + 1);
  tr.feed([old]);
  t.is((agent.stats.drops.replayed ?? 0) - replayedBefore, 2, 'the old record is still there');

  const file = await done;
  t.is(await sha256File(file), f.manifest.sha256);
  t.true(f.server.stats.unitBytesSent <= 1.02 * f.manifest.size);
});
