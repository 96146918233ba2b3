import test from 'ava';
import { createHash } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { runDemo } from '../src/cli/demo';
import { readPersistedBitmap, sha256File } from '../src/storage/partial-store';
import { encodeData, fragmentCountFor, getBit } from '../src/wire/packet';
import { fragmentBytesForMtu } from '../src/net/interface';
import { startFleet } from './helpers/fleet';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('4 agents on loopback with 5% injected loss all end with the source hash; server egress <= 1.02x', async (t) => {
  const r = await runDemo({ agents: 4, sizeBytes: 24 * 1024 * 1024 + 12345, lossPct: 5, timeoutS: 100 });
  t.true(r.ok, JSON.stringify(r.agents.filter((a) => !a.ok)));
  for (const a of r.agents) t.is(a.sha256, r.releaseSha256, `${a.id}`);
  t.true(r.serverEgressBytes <= 1.02 * r.releaseBytes, `egress ${r.serverEgressBytes} for ${r.releaseBytes}`);
  // Loss really happened and was repaired over the LAN.
  t.true(r.agents.reduce((s, a) => s + a.nacksSent, 0) > 0);
  t.true(r.agents.reduce((s, a) => s + a.repairPacketsSent, 0) > 0);
  // Each agent took most of the release from its peers, not the WAN.
  for (const a of r.agents) t.true(a.lanBytes > 0 && a.wanBytes < r.releaseBytes, `${a.id} wan ${a.wanBytes}`);
});

test('an agent SIGKILLed halfway resumes from its bitmap and fetches no verified unit again', async (t) => {
  const f = await startFleet(t, { size: 16 * 1024 * 1024, unitSize: 256 * 1024 });
  // A low LAN rate paces the downloads (backpressure), so there is a "halfway".
  const first = f.spawnAgent('solo', ['--rate', '30']);
  const bitmapPath = path.join(f.dir, 'solo', f.manifest.id, 'data.bitmap');
  const total = f.manifest.unitCount;
  let before: Uint8Array | null = null;
  for (let i = 0; i < 600 && !before; i++) {
    await new Promise((r) => setTimeout(r, 25));
    const bits = await readPersistedBitmap(path.dirname(bitmapPath), f.manifest.idBytes, total);
    if (!bits) continue;
    let n = 0;
    for (let u = 0; u < total; u++) if (getBit(bits, u)) n++;
    if (n >= total / 3) {
      first.child.kill('SIGKILL');
      await first.exit;
      // Read again after the kill: the bitmap on disk is what the restart sees.
      before = await readPersistedBitmap(path.dirname(bitmapPath), f.manifest.idBytes, total);
    }
  }
  if (!before) return t.fail('agent never got a third of the way');
  const verifiedBefore = [...Array(total).keys()].filter((u) => getBit(before!, u));
  t.true(verifiedBefore.length < total, 'killed before the end');
  const second = f.spawnAgent('solo');
  t.is(await second.exit, 0, second.stderr());
  const finalPath = second.stdout().trim().split('\n').pop()!;
  t.is(await sha256File(finalPath), sha(f.source));
  for (const u of verifiedBefore) t.is(f.server.fetchCount(f.manifest.id, 'g1', 'solo', u), 1, `unit ${u} fetched again`);
});

test('forged copy packets on the LAN are rejected by the unit hash and never stored', async (t) => {
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 256 * 1024 });
  const [group, portStr] = f.multicast.split(':');
  const port = Number(portStr);
  const fb = fragmentBytesForMtu(65536, false);
  const sock = dgram.createSocket({ type: 'udp4' });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  sock.setMulticastInterface('127.0.0.1');
  t.teardown(() => sock.close());
  // Agents paced slowly enough that the transfer outlasts the flood.
  const agents = ['a', 'b'].map((id) => f.spawnAgent(id, ['--rate', '12', '--report', path.join(f.dir, `${id}.json`)]));
  // Their sockets are open once they have joined (the transport opens first).
  const joined = () => (f.server.fleet() as { groups: { members: unknown[] }[] }).groups[0]?.members.length ?? 0;
  for (let i = 0; i < 400 && joined() < 2; i++) await new Promise((r) => setTimeout(r, 25));
  // Learn a real member's sender id from the group, as an attacker on the LAN could.
  const sniff = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  t.teardown(() => sniff.close());
  const spoofed = await new Promise<number>((resolve) => {
    sniff.on('message', (m) => m.length >= 12 && resolve(m.readUInt32BE(8)));
    sniff.bind(port, () => sniff.addMembership(group, '127.0.0.1'));
  });
  // Flood well-formed DATA packets with garbage payloads for 1.5 s: half from an unknown
  // sender (dropped before assembly), half under the spoofed member's id (they get into
  // assemblies, and the unit hash rejects what they polluted).
  let stop = false;
  const floodEnd = Date.now() + 1500;
  const flood = (async () => {
    const garbage = Buffer.alloc(fb, 0xa5);
    while (!stop && Date.now() < floodEnd) {
      for (let u = 0; u < f.manifest.unitCount; u++) {
        const fc = fragmentCountFor(f.manifest.unitSize, fb);
        for (let i = 0; i < fc; i++) {
          const len = i === fc - 1 ? f.manifest.unitSize - i * fb : fb;
          const sender = i % 2 === 0 ? 0x0badf00d : spoofed;
          sock.send(encodeData({ sender, releaseId: f.manifest.idBytes, repair: false, unit: u, fragment: i, fragmentCount: fc, fragmentBytes: fb, payload: garbage.subarray(0, len) }), port, group);
        }
      }
      await new Promise((r) => setTimeout(r, 30));
    }
  })();
  const codes = await Promise.all(agents.map((a) => a.exit));
  stop = true;
  await flood;
  let rejected = 0;
  for (const [i, a] of agents.entries()) {
    t.is(codes[i], 0, a.stderr());
    const rep = JSON.parse(await fs.readFile(path.join(f.dir, `${['a', 'b'][i]}.json`), 'utf8'));
    rejected += rep.unitsRejected;
    t.true((rep.drops['unknown-sender'] ?? 0) > 0, 'packets from a sender that never authenticated are dropped');
    t.is(await sha256File(rep.path), sha(f.source));
  }
  t.true(rejected > 0, 'the forged units reached verification and were rejected');
});

test('a manifest signed by an untrusted key is refused with a clear error and exit 65', async (t) => {
  const f = await startFleet(t, { size: 100_000 });
  const { generateKeyPair } = await import('../src/release/keys');
  const other = await generateKeyPair(path.join(f.dir, 'other-keys'));
  const args = f.agentArgs('x').map((a) => (a === f.pubPath ? other.pubPath : a));
  const { runCli } = await import('./helpers/fleet');
  const r = await runCli(args);
  t.is(r.code, 65);
  t.regex(r.stderr, /not among the 1 trusted key/);
  t.notRegex(r.stderr, /at .*\.js:\d+/); // no stack trace
});

test('a tampered manifest on the server is refused: bad signature, exit 65', async (t) => {
  const f = await startFleet(t, { size: 100_000 });
  const mpath = path.join(f.dir, 'store', 'releases', f.manifest.id, 'manifest');
  const outer = JSON.parse(await fs.readFile(mpath, 'utf8'));
  const body = JSON.parse(Buffer.from(outer.body, 'base64').toString());
  body.units[0] = 'f'.repeat(64);
  outer.body = Buffer.from(JSON.stringify(body)).toString('base64');
  // Serve the tampered manifest under the original id (a malicious mirror would).
  (f.server.store as unknown as { releases: Map<string, { manifest: { raw: Buffer } }> }).releases.get(f.manifest.id)!.manifest.raw = Buffer.from(JSON.stringify(outer));
  const { runCli } = await import('./helpers/fleet');
  const r = await runCli(f.agentArgs('x'));
  t.is(r.code, 65);
  t.regex(r.stderr, /signature does not verify/);
});

test('a late joiner takes what its LAN already has from its peers', async (t) => {
  const f = await startFleet(t, { size: 12 * 1024 * 1024, unitSize: 512 * 1024 });
  const early = ['e1', 'e2'].map((id) => f.spawnAgent(id, ['--rate', '12', '--report', path.join(f.dir, `${id}.json`)]));
  // Join once an early agent holds a third of the release.
  for (let i = 0; i < 400; i++) {
    await new Promise((r) => setTimeout(r, 25));
    const fleet = f.server.fleet() as { groups: { members: { verifiedUnits: number }[] }[] };
    const held = Math.max(0, ...(fleet.groups[0]?.members ?? []).map((m) => m.verifiedUnits));
    if (held >= f.manifest.unitCount / 3) break;
  }
  const late = f.spawnAgent('late', ['--rate', '12', '--report', path.join(f.dir, 'late.json')]);
  const codes = await Promise.all([...early, late].map((a) => a.exit));
  t.deepEqual(codes, [0, 0, 0], late.stderr());
  const rep = JSON.parse(await fs.readFile(path.join(f.dir, 'late.json'), 'utf8'));
  t.is(await sha256File(rep.path), sha(f.source));
  t.true(rep.wanBytes <= f.manifest.size / 2, `late joiner fetched ${rep.wanBytes} of ${f.manifest.size} over the WAN`);
  t.true(rep.lanBytes >= f.manifest.size / 2);
  t.true(f.server.stats.unitBytesSent <= 1.02 * f.manifest.size);
});

test('server restarted mid-transfer: agents retry, the rebuilt allocation never re-sends what they hold', async (t) => {
  const f = await startFleet(t, { size: 12 * 1024 * 1024, unitSize: 256 * 1024 });
  const ids = ['r1', 'r2', 'r3'];
  const agents = ids.map((id) => f.spawnAgent(id, ['--rate', '40']));
  const total = f.manifest.unitCount;
  const heldUnits = async () => {
    const held = new Set<number>();
    for (const id of ids) {
      const bits = await readPersistedBitmap(path.join(f.dir, id, f.manifest.id), f.manifest.idBytes, total);
      if (bits) for (let u = 0; u < total; u++) if (getBit(bits, u)) held.add(u);
    }
    return held;
  };
  for (let i = 0; i < 400 && (await heldUnits()).size < total / 3; i++) await new Promise((r) => setTimeout(r, 25));
  await f.server.stop();
  const heldAtRestart = await heldUnits();
  t.true(heldAtRestart.size < total, 'restarted before the end');
  await new Promise((r) => setTimeout(r, 700));
  const { FleetcastServer } = await import('../src/server/server');
  const port = Number(new URL(f.url).port);
  // Default rebuild grace: members report what they hold before anything is leased.
  const again = new FleetcastServer({ storeDir: path.join(f.dir, 'store'), host: '127.0.0.1', port, heartbeatMs: 200, allocator: { memberTimeoutMs: 2000 } });
  await again.start();
  t.teardown(() => again.stop());
  const codes = await Promise.all(agents.map((a) => a.exit));
  t.deepEqual(codes, [0, 0, 0], agents.map((a) => a.stderr()).join('\n'));
  for (const a of agents) t.is(await sha256File(a.stdout().trim().split('\n').pop()!), sha(f.source));
  // Held anywhere in the group at the restart -> never sent again by the new server.
  for (const u of heldAtRestart) for (const id of ids) t.is(again.fetchCount(f.manifest.id, 'g1', id, u), 0, `unit ${u} re-sent to ${id}`);
});

test('a fragment grid larger than the default datagram size still gets through (--fragment-bytes 20000)', async (t) => {
  const f = await startFleet(t, { size: 3 * 1024 * 1024, unitSize: 256 * 1024 });
  const agents = ['a', 'b'].map((id) => f.spawnAgent(id, ['--fragment-bytes', '20000', '--report', path.join(f.dir, `${id}.json`)]));
  t.deepEqual(await Promise.all(agents.map((a) => a.exit)), [0, 0]);
  for (const id of ['a', 'b']) {
    const rep = JSON.parse(await fs.readFile(path.join(f.dir, `${id}.json`), 'utf8'));
    t.is(await sha256File(rep.path), sha(f.source));
    t.true(rep.lanBytes > 0, `${id} took nothing from the LAN`);
  }
});

test('an empty release (0 bytes, no units) completes on every agent', async (t) => {
  const r = await runDemo({ agents: 2, sizeBytes: 0, lossPct: 0, timeoutS: 30 });
  t.true(r.ok, JSON.stringify(r.agents));
  t.is(r.units, 0);
  for (const a of r.agents) t.is(a.sha256, r.releaseSha256);
});
