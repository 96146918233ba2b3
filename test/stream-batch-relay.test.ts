import test, { ExecutionContext } from 'ava';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { feed, streamSetup } from './helpers/stream-server';
import { signBatch, StreamBatch } from '../src/release/stream-manifest';
import { StreamPublisher } from '../src/release/stream-publish';
import type { StreamAgent, StreamAgentOptions } from '../src/agent/stream-agent';
import { BATCH_OVERHEAD_BYTES, BatchPacket, decodeBatchPacket, encodeBatchPacket } from '../src/wire/stream-packet';
import { sealControl } from '../src/wire/auth';
import { BatchFollower, FollowerHost, LAN_BATCH_VERIFIES_PER_S } from '../src/agent/stream-follow';
import { silentLogger } from '../src/util/log';

/*
 * Batches on the LAN (docs/protocol.md section 15, "Batches on the LAN"): one member of a
 * LAN group polls the server for the stream's signed batches and multicasts them; the
 * others take them from the LAN. Bounds are on counts of batches, never on time.
 */

const UNIT = 64 * 1024;

const sum = (agents: StreamAgent[], k: 'fromServer' | 'fromLan' | 'relayed' | 'refused' | 'fallbacks' | 'across' | 'forwarded') => agents.reduce((n, a) => n + a.follower.counts[k], 0);

async function sinksEqual(t: { true(c: boolean, m: string): void }, dir: string, ids: string[], source: Buffer): Promise<void> {
  for (const id of ids) t.true((await fs.readFile(path.join(dir, `${id}.bin`))).equals(source), `agent ${id}: sink equals the source`);
}

/**
 * A stream of `bytes` random bytes whose first 10 KB are published, and agents `ids` running
 * on it, each with `opts(id, multicast)` (`multicast`: the setup's LAN group).
 */
async function started(t: ExecutionContext, name: string, bytes: number, ids: string[], opts: (id: string, multicast: { address: string; port: number }) => Partial<StreamAgentOptions> = () => ({})) {
  const s = await streamSetup(t);
  const source = randomBytes(bytes);
  const pub = await StreamPublisher.open(s.store, name, s.key, { unitSize: UNIT, flushMs: 100 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush(); // the stream exists (its head) before the agents ask for it
  const agents = ids.map((id) => s.agent(name, id, opts(id, s.multicast)));
  return { s, source, pub, ids, agents, runs: agents.map((a) => a.run()) };
}

test('4 agents of one LAN group take each batch over the WAN about once, not 4 times; forged BATCH packets are refused and change nothing', async (t) => {
  const { s, source, pub, ids, agents, runs } = await started(t, 'cam', 3_000_000, ['a', 'b', 'c', 'd']);
  // Two LAN attackers, as sender 1 (smaller than any agent's id, so a packet taken as a relay
  // would make the agents stop polling). An outsider sees the batches but not the group key:
  // it sends the newest batch again, the next batch signed by its own key, and junk; none has
  // a MAC that verifies. An insider holds the group key (a lying member): it sends the same
  // forged next batch and junk with a good MAC, which only the publisher's signature refuses.
  const other = generateKeyPairSync('ed25519').privateKey;
  const sock = dgram.createSocket({ type: 'udp4' });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  sock.setMulticastInterface('127.0.0.1');
  t.teardown(() => sock.close());
  let seq = BigInt(Date.now()) * 1000n;
  const sent = { outsider: 0, insider: 0 };
  const send = (p: Uint8Array) => sock.send(p, s.multicast.port, s.multicast.address);
  const forge = (last: StreamBatch, key: Buffer | null) => {
    const next = last.batch + 1;
    const body = { ...last, batch: next, first: last.first + last.count, offset: last.offset + (last.count - 1) * last.unitSize + last.lastLength, count: 1, units: ['f'.repeat(64)], lastLength: 100, prev: last.hash, final: undefined };
    const { hash: _h, raw: _r, ...b } = body;
    const files = [signBatch(JSON.parse(JSON.stringify(b)), other).raw, Buffer.from('{"fleetcast":"stream-batch","v":1}'), randomBytes(200)];
    const rid = Buffer.from(last.id, 'hex');
    send(encodeBatchPacket({ sender: 1, releaseId: rid, batch: last.batch, file: last.raw }));
    sent.outsider++;
    for (const file of files) {
      send(encodeBatchPacket({ sender: 1, releaseId: rid, batch: next, file }));
      sent.outsider++;
      if (!key) continue;
      send(sealControl(encodeBatchPacket({ sender: 1, releaseId: rid, batch: next, file }), key, ++seq));
      sent.insider++;
    }
  };
  await feed(pub, source.subarray(10_000), 10_000, () => {
    const d = agents[0].delivery;
    if (d) forge(d.lastBatch, agents[0].core.peers.groupKey);
  });
  await Promise.all(runs);
  await sinksEqual(t, s.dir, ids, source);
  const batches = agents[0].delivery.lastBatch.batch + 1;
  const fromServer = sum(agents, 'fromServer');
  const fromLan = sum(agents, 'fromLan');
  const badMac = agents.map((a) => a.core.stats.drops['bad-mac'] ?? 0);
  t.log(
    `${batches} batches; from the server ${fromServer} (per agent ${agents.map((a) => a.follower.counts.fromServer).join(', ')}), from the LAN ${fromLan}, relayed ${sum(agents, 'relayed')}, fallbacks ${sum(agents, 'fallbacks')}; ` +
      `forged packets: outsider ${sent.outsider} (dropped for their MAC, per agent: ${badMac.join(', ')}), insider ${sent.insider} (refused ${sum(agents, 'refused')})`,
  );
  // Polling each, the four took 4 x batches. Allowed: a first answer per agent, the batches before
  // the others heard the relay, and a fetch per fallback.
  t.true(fromServer <= 1.5 * batches + 12, `batches from the server ${fromServer} <= 1.5 x ${batches} + 12 (4 x ${batches} when each agent polls)`);
  t.true(fromLan >= batches, `the others took batches from the LAN: ${fromLan} >= ${batches}`);
  t.true(sent.insider > 0 && sum(agents, 'refused') > 0, "the insider's forged batches were refused");
  t.true(badMac.every((n) => n > 0), "every agent dropped the outsider's packets for their MAC");
  t.true(badMac.every((n) => n <= sent.outsider), 'no packet of ours was dropped for its MAC');
  t.is(agents.filter((a) => !a.follower.passive).length >= 1, true, 'one member still polled at the end');
});

test('the member that polls for the group leaves mid-stream: the others go back to the server and every sink still equals the source', async (t) => {
  const { s, source, pub, ids, agents, runs } = await started(t, 'feed', 2_500_000, ['a', 'b', 'c']);
  let gone: StreamAgent | null = null;
  await feed(pub, source.subarray(10_000), 10_000, async (sent) => {
    if (gone || sent < 1_000_000) return;
    const polling = agents.filter((a) => a.follower && !a.follower.passive);
    if (polling.length !== 1) return; // not settled yet: try on the next tick
    gone = polling[0];
    await gone.close();
  });
  t.truthy(gone, 'one member polled for the group, and it left');
  await Promise.all(runs);
  const rest = agents.filter((a) => a !== gone);
  await sinksEqual(t, s.dir, ids.filter((_, i) => agents[i] !== gone), source);
  const fallbacks = sum(rest, 'fallbacks');
  t.log(`fallbacks ${fallbacks}; from the server ${rest.map((a) => a.follower.counts.fromServer).join(', ')}, from the LAN ${rest.map((a) => a.follower.counts.fromLan).join(', ')}`);
  t.true(fallbacks >= 1, 'a member went back to the server when the relay stopped');
  t.true(rest.some((a) => a.follower.counts.fromLan > 0 && a.follower.counts.fromServer > 0), 'a member took batches from both');
});

// docs/protocol.md, "Batches across sites": the polling member also sends each batch to the
// other LAN groups' gateways, which multicast it on their LANs, so a wide-area group of two
// sites takes each batch over the WAN about once, not once per site.
test('a wide-area group of two LAN groups of two: one member polls for both sites; the other site takes the batches from its gateway', async (t) => {
  // The second LAN group (b1, b2): a multicast group of its own on loopback.
  const site = (id: string, mc: { address: string; port: number }) =>
    id.startsWith('a') ? { group: 'g1', wideGroup: 'w' } : { group: 'g2', wideGroup: 'w', multicast: { address: mc.address === '239.255.0.1' ? '239.255.0.2' : '239.255.0.1', port: mc.port } };
  const { s, source, pub, ids, agents, runs } = await started(t, 'wide', 6_000_000, ['a1', 'a2', 'b1', 'b2'], site);
  await feed(pub, source.subarray(10_000), 10_000);
  await Promise.all(runs);
  await sinksEqual(t, s.dir, ids, source);
  const batches = agents[0].delivery.lastBatch.batch + 1;
  const fromServer = sum(agents, 'fromServer');
  const c = (k: keyof BatchFollower['counts']) => agents.map((a) => a.follower.counts[k]).join(', ');
  t.log(`${batches} batches; per agent (${ids.join(', ')}): from the server ${c('fromServer')}, from the LAN ${c('fromLan')}, sent to other sites ${c('across')}, forwarded ${c('forwarded')}, fallbacks ${c('fallbacks')}`);
  // One poller per site took 2 x batches. Allowed: each agent's first answer, the batches before
  // the election settled, and a fetch per fallback.
  t.true(fromServer <= 1.4 * batches + 16, `batches from the server ${fromServer} <= 1.4 x ${batches} + 16 (2 x ${batches} with a poller per site)`);
  t.true(agents.some((a) => a.follower.counts.forwarded >= batches / 2), 'a gateway multicast the other site\'s batches on its LAN');
  t.true(agents.some((a) => a.follower.counts.across >= batches / 2), "a poller sent its batches to the other site's gateway");
});

test('BATCH packets past the signature-check budget are dropped unchecked and counted, and count as evidence of a missed batch', (t) => {
  const key = generateKeyPairSync('ed25519');
  const b0 = signBatch({ v: 1, stream: 'cam', id: 'ab'.repeat(16), batch: 0, first: 0, offset: 0, count: 1, units: ['c'.repeat(64)], lastLength: 100, unitSize: 4096, prev: '0'.repeat(64), time: '2026-12-02T00:00:00Z' }, key.privateKey);
  const core = { onBatchPacket: null as null | ((p: BatchPacket, now: number) => void), window: { unitCount: 1 }, relayBatch: () => false };
  const host = { http: null, core, trusted: [key.publicKey], log: silentLogger, last: () => b0, take: () => t.fail('nothing valid was sent'), finished: () => false, kick: () => undefined } as unknown as FollowerHost;
  const f = new BatchFollower(host, 1000);
  const junk = { sender: 7, releaseId: Buffer.from(b0.id, 'hex'), batch: 1, file: Buffer.from('{"fleetcast":"stream-batch","v":1}') };
  for (let i = 0; i < 3 * LAN_BATCH_VERIFIES_PER_S; i++) core.onBatchPacket!(junk, 0);
  f.close();
  t.is(f.counts.refused, LAN_BATCH_VERIFIES_PER_S, 'checked in one moment: the budget, no more');
  t.is(f.counts.refused + f.counts.limited, 3 * LAN_BATCH_VERIFIES_PER_S);
  t.is(f.counts.limited, 2 * LAN_BATCH_VERIFIES_PER_S);
  // A second later the budget is back.
  const g = new BatchFollower(host, 1000);
  for (let i = 0; i < LAN_BATCH_VERIFIES_PER_S; i++) core.onBatchPacket!(junk, 0);
  core.onBatchPacket!(junk, 0);
  core.onBatchPacket!(junk, 1000);
  g.close();
  t.deepEqual([g.counts.refused, g.counts.limited], [LAN_BATCH_VERIFIES_PER_S + 1, 1]);
});

test('a forwarded BATCH packet (flags 1) carries its origin before the file; flags other than 0 and 1 are refused', (t) => {
  const rid = Buffer.alloc(16, 0xab);
  const file = Buffer.from('{"fleetcast":"stream-batch","v":1}');
  const plain = encodeBatchPacket({ sender: 9, releaseId: rid, batch: 4, file });
  const fwd = encodeBatchPacket({ sender: 9, releaseId: rid, batch: 4, origin: 0xfffffffe, file });
  t.is(fwd.length, plain.length + 4);
  t.deepEqual([plain[4], fwd[4]], [0, 1], 'flags');
  t.is(Buffer.from(fwd).readUInt32BE(32), 0xfffffffe, 'the origin at offset 32');
  const r = decodeBatchPacket(fwd);
  t.true(r.ok && r.packet.origin === 0xfffffffe && r.packet.sender === 9 && Buffer.from(r.packet.file).equals(file));
  const p = decodeBatchPacket(plain);
  t.true(p.ok && p.packet.origin === undefined && Buffer.from(p.packet.file).equals(file));
  const other = Uint8Array.from(fwd);
  other[4] = 2;
  t.deepEqual(decodeBatchPacket(other), { ok: false, reason: 'reserved' });
  // Flags 1 with room for the origin but no file byte.
  const short = Uint8Array.from(fwd.subarray(0, BATCH_OVERHEAD_BYTES + 4));
  t.deepEqual(decodeBatchPacket(short), { ok: false, reason: 'short' });
});
