import test from 'ava';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { readPersistedBitmap, sha256File } from '../src/storage/partial-store';
import { encodeData, encodeNack, getBit } from '../src/wire/packet';
import { spawn } from 'node:child_process';
import { spawnSync } from './helpers/sync';
import { loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { setChannel } from '../src/release/channels';
import { BIN, runCli, startFleet } from './helpers/fleet';
import { rootTest } from './helpers/netns';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('SIGKILL at random points, 20 times: the agent completes with the right hash, no verified unit is fetched again, interrupted units resume', async (t) => {
  const f = await startFleet(t, { size: 8 * 1024 * 1024 + 999, unitSize: 256 * 1024 });
  const bitmapPath = path.join(f.dir, 'solo', f.manifest.id, 'data.bitmap');
  const total = f.manifest.unitCount;
  const verifiedNow = async (): Promise<Set<number>> => {
    const bits = await readPersistedBitmap(path.dirname(bitmapPath), f.manifest.idBytes, total);
    const s = new Set<number>();
    if (bits) for (let u = 0; u < total; u++) if (getBit(bits, u)) s.add(u);
    return s;
  };
  const fetchesOf = () => Array.from({ length: total }, (_, u) => f.server.fetchCount(f.manifest.id, 'g1', 'solo', u));
  let killed = 0;
  for (let i = 0; i < 20; i++) {
    const a = f.spawnAgent('solo', ['--rate', '3']);
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
  // A unit is fetched from its start again only when a kill landed after the request
  // and before its first byte reached the spool (the server had already written bytes
  // the agent never read); at most once per kill and fetch worker (2).
  const restarts = final.reduce((s, n) => s + Math.max(0, n - 1), 0);
  t.true(restarts <= 2 * killed, `${restarts} units fetched from the start again in ${killed} kills`);
  const served = f.server.bytesSentTo(f.manifest.id, 'g1', 'solo');
  t.log(`${killed} kills, ${restarts} unit(s) restarted from byte 0, the rest resumed; server sent ${served} unit bytes for a ${f.manifest.size}-byte release (${(served / f.manifest.size).toFixed(3)}x)`);
  t.true(killed >= 10, `only ${killed} kills landed before completion`);
});

test('a flood of 100,000 spoofed NACKs, forged copies and random datagrams: the transfer completes, the flood shows in drop counters, repairs stay within the rate', async (t) => {
  // The start gate holds the transfer until a fourth agent joins, and the test starts that
  // one only once half the flood is out: the flood overlaps the transfer by construction,
  // not because the transfer outlasted it (ci runs on a busy box saw the first agents
  // finish after 41,000 and 45,000 datagrams).
  const f = await startFleet(t, { size: 6 * 1024 * 1024, unitSize: 256 * 1024, allocator: { minMembers: 4, maxWaitMs: 600_000 } });
  const [group, portStr] = f.multicast.split(':');
  const port = Number(portStr);
  const sock = dgram.createSocket({ type: 'udp4' });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  sock.setMulticastInterface('127.0.0.1');
  t.teardown(() => sock.close());
  // The LAN rate keeps the transfer long in bytes: each agent multicasts its quarter
  // (1.5 MiB) at this rate, >= 8 s, while the second half of the flood goes out.
  const rateMbit = 1.5;
  const ids = ['a', 'b', 'c', 'd'];
  const spawn = (id: string) => f.spawnAgent(id, ['--rate', String(rateMbit), '--loss', '2', '--report', path.join(f.dir, `${id}.json`)]);
  const agents = ids.slice(0, 3).map(spawn);
  const started = Date.now();
  const joined = () => (f.server.fleet() as { groups: { members: unknown[] }[] }).groups[0]?.members.length ?? 0;
  for (let i = 0; i < 400 && joined() < 3; i++) await sleep(25);
  // 100,000 datagrams in bursts: well-formed NACKs for every fragment of every unit
  // (with no valid MAC), forged DATA and random bytes.
  const fc = 200;
  const allMissing = new Uint8Array(Math.ceil(fc / 8)).fill(0xff);
  let sent = 0;
  let sentWhileRunning = 0;
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
    if (sent >= 50_000 && agents.length < ids.length) agents.push(spawn(ids[3]));
    if (sentWhileRunning === 0 && agents.some((a) => a.child.exitCode !== null)) sentWhileRunning = sent;
  }
  if (sentWhileRunning === 0) sentWhileRunning = sent;
  t.true(sentWhileRunning >= 50_000, `only ${sentWhileRunning} datagrams were sent before the first agent finished`);
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

test('replay: a channel pointed back at an older signed release is refused, until allow_downgrade is set on purpose', async (t) => {
  const f = await startFleet(t, { size: 600_000, unitSize: 256 * 1024 });
  const store = path.join(f.dir, 'store');
  await sleep(20);
  const src2 = path.join(f.dir, 'newer.bin');
  await fs.writeFile(src2, randomBytes(700_000));
  const newer = await publishRelease(src2, store, await loadPrivateKey(f.keyPath), { name: 'newer.bin', unitSize: 256 * 1024 });
  t.true(Date.parse(newer.created) > Date.parse(f.manifest.created));
  await setChannel(store, { channel: 'stable', release: newer.id, name: newer.name, publishedAt: Date.now() });
  const hooks = path.join(f.dir, 'hooks');
  const cfg = path.join(f.dir, 'agent.yaml');
  const yaml = (downgrade: boolean) =>
    [
      `server: ${f.url}`, 'plain_http: true', 'group: g1', 'interface: 127.0.0.1', `multicast: ${f.multicast}`, `storage: ${path.join(f.dir, 'a')}`,
      `trust: ${f.pubPath}`, 'channel: stable', 'channel_poll: 0.2', `status_socket: ${path.join(f.dir, 'a.sock')}`, 'log_level: warn',
      `on_complete: echo "$FLEETCAST_RELEASE_ID" >> ${hooks}`, `allow_downgrade: ${downgrade}`, '',
    ].join('\n');
  await fs.writeFile(cfg, yaml(false));
  const a = spawn(process.execPath, [BIN, 'agent', '--config', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (a.exitCode === null) a.kill('SIGKILL');
  });
  let err = '';
  a.stderr.on('data', (d) => (err += d));
  const hookLines = async () => (await fs.readFile(hooks, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  for (let i = 0; i < 300 && (await hookLines()).length < 1; i++) await sleep(100);
  t.deepEqual(await hookLines(), [newer.id]);

  // A hostile mirror (or a mistake) points the channel back at the older release.
  await setChannel(store, { channel: 'stable', release: f.manifest.id, name: f.manifest.name, publishedAt: Date.now() });
  for (let i = 0; i < 100 && !/refusing release/.test(err); i++) await sleep(100);
  t.regex(err, new RegExp(`refusing release release\\.bin \\(${f.manifest.id}\\) from channel stable: created .* before newer\\.bin`));
  await sleep(600);
  const st = await runCli(['status', '--socket', path.join(f.dir, 'a.sock'), '--json']);
  const s = JSON.parse(st.stdout) as { release: { id: string; complete: boolean }; lastErrors: { message: string }[] };
  t.is(s.release.id, newer.id, 'still on the newer release, serving it');
  t.true(s.release.complete);
  t.true(s.lastErrors.some((e) => /A replay of an old release\?/.test(e.message)));
  t.deepEqual(await hookLines(), [newer.id], 'the old release was not fetched or installed');

  // Rolling back on purpose: allow_downgrade, applied with a reload.
  await fs.writeFile(cfg, yaml(true));
  a.kill('SIGHUP');
  for (let i = 0; i < 300 && (await hookLines()).length < 2; i++) await sleep(100);
  t.deepEqual(await hookLines(), [newer.id, f.manifest.id]);
  a.kill('SIGTERM');
});

rootTest('disk full mid-transfer (a small tmpfs): a clear error, the partial state stays sound, and the agent completes once space is freed', async (t) => {
  const f = await startFleet(t, { size: 3 * 1024 * 1024 + 5, unitSize: 256 * 1024 });
  const mnt = path.join(f.dir, 'small');
  await fs.mkdir(mnt);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt], { encoding: 'utf8' });
  t.is(m.status, 0, m.stderr);
  t.teardown(() => {
    spawnSync('umount', ['-l', mnt]);
  });
  const filler = path.join(mnt, 'filler');
  const storage = path.join(mnt, 'a');
  const sock = path.join(f.dir, 'a.sock');
  const args = ['agent', '--server', f.url, '--plain-http', '--group', 'g1', '--interface', '127.0.0.1', '--multicast', f.multicast, '--status-socket', sock, '--storage', storage, '--trust', f.pubPath, '--release', f.manifest.id, '--member', 'a', '--log-level', 'warn', '--rate', '4'];
  const a = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (a.exitCode === null) a.kill('SIGKILL');
  });
  let err = '';
  a.stderr!.on('data', (d) => (err += d));
  a.stdout!.resume();
  // Once a few units are stored, something else on the box fills the disk.
  const bitmapFile = path.join(storage, f.manifest.id, 'data.bitmap');
  for (let i = 0; i < 300; i++) {
    const bits = await readPersistedBitmap(path.dirname(bitmapFile), f.manifest.idBytes, f.manifest.unitCount);
    if (bits && [...Array(f.manifest.unitCount).keys()].filter((u) => getBit(bits, u)).length >= 2) break;
    await sleep(50);
  }
  const st = await fs.statfs(mnt);
  await fs.writeFile(filler, Buffer.alloc(Math.max(0, st.bavail * st.bsize - 64 * 1024))).catch(() => undefined);
  for (let i = 0; i < 300 && !/no space left on device/.test(err); i++) await sleep(100);
  t.regex(err, /storing unit \d+ of release\.bin: no space left on device; trying again in \d+ s/);
  t.notRegex(err, /at .*\.js:\d+/, 'no stack trace');
  // What is on disk is sound: every unit the bitmap marks holds its verified bytes.
  const persisted = await readPersistedBitmap(path.join(storage, f.manifest.id), f.manifest.idBytes, f.manifest.unitCount);
  t.truthy(persisted, 'the bitmap and its journal parse');
  const d = { ok: !!persisted, bits: persisted ?? new Uint8Array(0) };
  const part = await fs.readFile(path.join(storage, f.manifest.id, 'data.part'));
  let marked = 0;
  if (d.ok) {
    for (let u = 0; u < f.manifest.unitCount; u++) {
      if (!getBit(d.bits, u)) continue;
      marked++;
      const bytes = part.subarray(u * f.manifest.unitSize, Math.min(f.manifest.size, (u + 1) * f.manifest.unitSize));
      t.is(createHash('sha256').update(bytes).digest('hex'), f.manifest.units[u], `unit ${u} on disk`);
    }
  }
  t.true(marked < f.manifest.unitCount, 'the disk filled before the release was complete');
  // Free the space: the agent retries by itself and completes.
  await fs.rm(filler);
  let state = '';
  let emptyStatus = 0;
  for (let i = 0; i < 400 && state !== 'complete'; i++) {
    await sleep(100);
    const r = await runCli(['status', '--socket', sock, '--json']);
    try {
      if (r.code === 0) state = (JSON.parse(r.stdout) as { state: string }).state;
    } catch {
      emptyStatus++; // seen once under CI load: exit 0 with no output; counted, and polled again
    }
  }
  if (emptyStatus) t.log(`${emptyStatus} status answer(s) could not be parsed`);
  t.is(state, 'complete', err);
  t.is(await sha256File(path.join(storage, f.manifest.id, 'release.bin')), f.manifest.sha256);
  a.kill('SIGTERM');
});
