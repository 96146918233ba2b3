import test from 'ava';
import { randomBytes, randomInt } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { decodeBitmapFile } from '../src/storage/bitmap-file';
import { sha256File } from '../src/storage/partial-store';
import { encodeData, encodeNack, getBit } from '../src/wire/packet';
import { startFleet } from './helpers/fleet';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('SIGKILL at random points, 20 times: the agent completes with the right hash, no verified unit is fetched again, interrupted units resume', async (t) => {
  const f = await startFleet(t, { size: 8 * 1024 * 1024 + 999, unitSize: 256 * 1024 });
  const bitmapPath = path.join(f.dir, 'solo', f.manifest.id, 'data.bitmap');
  const total = f.manifest.unitCount;
  const verifiedNow = async (): Promise<Set<number>> => {
    const raw = await fs.readFile(bitmapPath).catch(() => null);
    const s = new Set<number>();
    if (!raw) return s;
    const d = decodeBitmapFile(raw, f.manifest.idBytes, total);
    if (d.ok) for (let u = 0; u < total; u++) if (getBit(d.bits, u)) s.add(u);
    return s;
  };
  const fetchesOf = () => Array.from({ length: total }, (_, u) => f.server.fetchCount(f.manifest.id, 'g1', 'solo', u));
  let killed = 0;
  for (let i = 0; i < 20; i++) {
    const a = f.spawnAgent('solo', ['--rate', '8']);
    await sleep(randomInt(300, 900));
    const before = await verifiedNow();
    const counts = fetchesOf();
    a.child.kill('SIGKILL');
    await a.exit;
    if (before.size === total) break;
    killed++;
    // Units verified before this kill are never asked for again (checked at the end).
    t.context = { ...(t.context as object), [`round${i}`]: { before: [...before], counts } };
  }
  const last = f.spawnAgent('solo', ['--rate', '50']);
  t.is(await last.exit, 0, last.stderr());
  t.is(await sha256File(last.stdout().trim()), f.manifest.sha256);
  const final = fetchesOf();
  for (const [, r] of Object.entries(t.context as Record<string, { before: number[]; counts: number[] }>)) {
    for (const u of r.before) t.is(final[u], r.counts[u], `verified unit ${u} was fetched again after a kill`);
  }
  for (let u = 0; u < total; u++) t.true(final[u] <= 1, `unit ${u} fetched from its start ${final[u]} times`);
  const served = f.server.bytesSentTo(f.manifest.id, 'g1', 'solo');
  t.log(`${killed} kills; server sent ${served} unit bytes for a ${f.manifest.size}-byte release (${(served / f.manifest.size).toFixed(3)}x)`);
  t.true(killed >= 10, `only ${killed} kills landed before completion`);
});

test('a flood of 100,000 spoofed NACKs, forged copies and random datagrams: the transfer completes, the flood shows in drop counters, repairs stay within the rate', async (t) => {
  const f = await startFleet(t, { size: 6 * 1024 * 1024, unitSize: 256 * 1024 });
  const [group, portStr] = f.multicast.split(':');
  const port = Number(portStr);
  const sock = dgram.createSocket({ type: 'udp4' });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  sock.setMulticastInterface('127.0.0.1');
  t.teardown(() => sock.close());
  const rateMbit = 10;
  const ids = ['a', 'b', 'c'];
  const agents = ids.map((id) => f.spawnAgent(id, ['--rate', String(rateMbit), '--loss', '2', '--report', path.join(f.dir, `${id}.json`)]));
  const started = Date.now();
  const joined = () => (f.server.fleet() as { groups: { members: unknown[] }[] }).groups[0]?.members.length ?? 0;
  for (let i = 0; i < 400 && joined() < ids.length; i++) await sleep(25);
  // 100,000 datagrams in bursts: well-formed NACKs for every fragment of every unit
  // (with no valid MAC), forged DATA and random bytes.
  const fc = 200;
  const allMissing = new Uint8Array(Math.ceil(fc / 8)).fill(0xff);
  let sent = 0;
  while (sent < 100_000) {
    for (let k = 0; k < 500; k++, sent++) {
      const kind = sent % 4;
      let d: Uint8Array;
      if (kind <= 1) d = encodeNack({ sender: randomInt(1, 2 ** 32), releaseId: f.manifest.idBytes, unit: randomInt(0, f.manifest.unitCount), fragmentCount: fc, fragmentBytes: 1432, missing: allMissing });
      else if (kind === 2) d = encodeData({ sender: randomInt(1, 2 ** 32), releaseId: f.manifest.idBytes, repair: true, unit: randomInt(0, f.manifest.unitCount), fragment: 0, fragmentCount: fc, fragmentBytes: 1432, payload: randomBytes(1432) });
      else d = randomBytes(randomInt(1, 1500));
      sock.send(d, port, group);
    }
    await sleep(2);
  }
  t.true(agents.every((a) => a.child.exitCode === null), 'the flood hit a transfer in progress');
  const codes = await Promise.all(agents.map((a) => a.exit));
  const seconds = (Date.now() - started) / 1000;
  const drops: Record<string, number> = {};
  for (const [i, id] of ids.entries()) {
    t.is(codes[i], 0, agents[i].stderr());
    const rep = JSON.parse(await fs.readFile(path.join(f.dir, `${id}.json`), 'utf8'));
    t.is(await sha256File(rep.path), f.manifest.sha256, id);
    for (const [r, n] of Object.entries(rep.drops as Record<string, number>)) drops[r] = (drops[r] ?? 0) + n;
    // The bound (docs/protocol.md): repair bytes at most the send rate over the run, plus the burst.
    const bound = ((rateMbit * 1e6) / 8) * seconds + 256 * 1024;
    t.true(rep.repairBytesSent <= bound, `${id} sent ${rep.repairBytesSent} repair bytes in ${seconds.toFixed(1)} s (bound ${Math.round(bound)})`);
    t.is(rep.unitsRejected, 0, 'forged copies from unknown senders never reach an assembly');
  }
  t.log(`drops across agents: ${JSON.stringify(drops)}`);
  t.true((drops['bad-mac'] ?? 0) > 10_000, 'spoofed NACKs are counted');
  t.true((drops['unknown-sender'] ?? 0) > 5_000, 'forged copies are counted');
  t.true((drops.magic ?? 0) + (drops.short ?? 0) + (drops.version ?? 0) > 5_000, 'random datagrams are counted');
});
