import test, { ExecutionContext } from 'ava';
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { startStreamServer } from './helpers/stream-server';
import { BIN, runCli, tmpdir, until } from './helpers/fleet';
import { commandBlocks } from './helpers/doc-blocks';
import { run } from './helpers/run';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { StreamPublisher } from '../src/release/stream-publish';
import { StreamStore } from '../src/release/stream-store';
import { checkChain, StreamBatch, unitHash } from '../src/release/stream-manifest';
import { FleetcastServer } from '../src/server/server';
import { streamRoutes } from '../src/server/stream-routes';

/*
 * Streams end to end on loopback (issue 19, first slice): `stream publish` fed from stdin
 * at a few Mbit/s, `fleetcast server` serving the stream endpoints, `stream fetch`
 * receivers over HTTP. No assertion on time: bytes, counts and exit statuses.
 */

const UNIT = 64 * 1024;

interface Proc {
  child: ChildProcess;
  stderr(): string;
  exit: Promise<number | null>;
}

function spawnCli(t: ExecutionContext, args: string[], stdin: 'pipe' | 'ignore' = 'ignore'): Proc {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: [stdin, 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.resume();
  const exit = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  return { child, stderr: () => err, exit };
}

async function setup(t: ExecutionContext) {
  const { dir, keyPath, pubPath, store, url } = await startStreamServer(t);
  const fetchArgs = (name: string, sink: string, extra: string[] = []) => ['stream', 'fetch', name, '--server', url, '--plain-http', '--trust', pubPath, '--sink', sink, ...extra];
  return { dir, keyPath, pubPath, store, url, fetchArgs };
}

/** Feed `source` to a publisher's stdin at about `bytesPerTick` every 20 ms; then close stdin (the end marker). */
async function feed(p: Proc, source: Buffer, bytesPerTick: number, onProgress?: (sent: number) => void | Promise<void>): Promise<void> {
  p.child.stdin!.on('error', () => undefined); // EPIPE once a killed publisher is gone
  for (let off = 0; off < source.length; off += bytesPerTick) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return;
    const chunk = source.subarray(off, off + bytesPerTick);
    await new Promise<void>((resolve) => (p.child.stdin!.write(chunk) ? resolve() : (p.child.stdin!.once('drain', resolve), p.child.once('exit', () => resolve()))));
    await onProgress?.(off + chunk.length);
    await new Promise((r) => setTimeout(r, 20));
  }
  p.child.stdin!.end();
}

const startByte = (stderr: string): number => Number(/stream byte (\d+)/.exec(stderr)?.[1] ?? NaN);

test('a stream published from stdin reaches an early and a late receiver, and a restarted one, each byte exactly once', async (t) => {
  const s = await setup(t);
  // ~4 Mbit/s (10 KB every 20 ms) for ~3 s.
  const source = randomBytes(1_500_000);
  const pub = spawnCli(t, ['stream', 'publish', 'cam', '--key', s.keyPath, '--store', s.store, '--unit-size', String(UNIT), '--flush-ms', '100'], 'pipe');
  pub.child.stdin!.write(source.subarray(0, 10_000));
  // Receivers start once the stream exists (a fetch of a stream the server does not have exits 69).
  const st = new StreamStore(s.store, 'cam');
  for (let i = 0; i < 3000 && !(await st.head().catch(() => null)); i++) await new Promise((r) => setTimeout(r, 20));
  const early = spawnCli(t, s.fetchArgs('cam', path.join(s.dir, 'early.bin'), ['--start', 'beginning']));
  const restartedSink = path.join(s.dir, 'restarted.bin');
  const state = path.join(s.dir, 'restarted.state');
  let restarted = spawnCli(t, s.fetchArgs('cam', restartedSink, ['--start', 'beginning', '--state', state]));
  let late: Proc | null = null;
  let killed = false;
  const feeding = feed(pub, source.subarray(10_000), 10_000, async (sent) => {
    // The late joiner comes once a third is published; the other is killed, once it has written
    // a unit, from a quarter on, and restarted.
    sent += 10_000;
    if (!late && sent >= source.length / 3) late = spawnCli(t, s.fetchArgs('cam', path.join(s.dir, 'late.bin'), ['--start', 'live']));
    if (!killed && sent >= source.length / 4) {
      // Not started yet: kill it once it has recorded a unit written.
      if (!(await fs.access(state).then(() => true, () => false))) return;
      killed = true;
      restarted.child.kill('SIGKILL');
      await restarted.exit;
      restarted = spawnCli(t, s.fetchArgs('cam', restartedSink, ['--start', 'beginning', '--state', state]));
    }
  });
  await feeding;
  t.is(await pub.exit, 0, pub.stderr());
  t.is(await early.exit, 0, early.stderr());
  await until(() => late !== null, 'late receiver started');
  t.is(await late!.exit, 0, late!.stderr());
  t.is(await restarted.exit, 0, restarted.stderr());
  t.true(killed, 'the receiver was killed mid-stream');

  t.true((await fs.readFile(path.join(s.dir, 'early.bin'))).equals(source), 'early sink equals the source');
  const from = startByte(late!.stderr());
  t.true(from > 0 && from < source.length, `late receiver started at byte ${from}`);
  t.true((await fs.readFile(path.join(s.dir, 'late.bin'))).equals(source.subarray(from)), 'late sink equals the source from its start');
  t.regex(restarted.stderr(), /resuming at unit \d+/);
  t.true((await fs.readFile(restartedSink)).equals(source), 'restarted sink: no duplicate, no missing byte');
  // Units were cut and batched as data came, not at the end.
  const head = (await new StreamStore(s.store, 'cam').head())!;
  t.true(head.ended);
  t.is(head.bytes, source.length);
  t.true(head.lastBatch >= 3, `${head.lastBatch + 1} batches`);
  // The receivers' long polls took the batches after their first in compact form (docs/protocol.md, "Compact batches").
  t.true(streamRoutes(s.store).compactBatches >= head.lastBatch, `${streamRoutes(s.store).compactBatches} compact batches for ${head.lastBatch + 1}`);
});

test('a forged unit, a forged batch and a reordered batch in the store are refused by the receiver', async (t) => {
  const s = await setup(t);
  const source = randomBytes(10 * UNIT);
  const file = path.join(s.dir, 'src.bin');
  await fs.writeFile(file, '');
  // --from follows the file as it grows (a unit at a time here: a batch or so per unit); SIGTERM ends it.
  const pub = spawnCli(t, ['stream', 'publish', 'cam', '--key', s.keyPath, '--store', s.store, '--unit-size', String(UNIT), '--from', file]);
  const st = new StreamStore(s.store, 'cam');
  for (let u = 0; u < 10; u++) {
    await fs.appendFile(file, source.subarray(u * UNIT, (u + 1) * UNIT));
    for (let i = 0; i < 3000 && ((await st.head().catch(() => null))?.bytes ?? 0) < (u + 1) * UNIT; i++) await new Promise((r) => setTimeout(r, 10));
  }
  pub.child.kill('SIGTERM');
  t.is(await pub.exit, 0, pub.stderr());
  const head = (await st.head())!;
  t.true(head.ended, 'follow mode ends on SIGTERM with the end marker');
  t.is(head.bytes, source.length);

  const good = await runCli(s.fetchArgs('cam', path.join(s.dir, 'good.bin'), ['--start', 'beginning']));
  t.is(good.code, 0, good.stderr);
  t.true((await fs.readFile(path.join(s.dir, 'good.bin'))).equals(source));

  // A forged unit: its bytes changed on the server. Refused (65); nothing of it reaches the sink.
  const b2 = (await st.readBatch(await st.batchFor(2, head) as number))!;
  const u2 = await fs.readFile(st.unitPath(2));
  await fs.writeFile(st.unitPath(2), Buffer.concat([Buffer.from([u2[0] ^ 1]), u2.subarray(1)]));
  const forgedUnit = await runCli(s.fetchArgs('cam', path.join(s.dir, 'fu.bin'), ['--start', 'beginning']));
  t.is(forgedUnit.code, 65, forgedUnit.stderr);
  t.regex(forgedUnit.stderr, /unit 2 .*failed verification/);
  t.true((await fs.readFile(path.join(s.dir, 'fu.bin'))).equals(source.subarray(0, b2.offset + (2 - b2.first) * UNIT)));
  await fs.writeFile(st.unitPath(2), u2);

  // A forged batch: a unit hash changed, the signature kept.
  const i5 = (await st.batchFor(5, head))!;
  const raw5 = await fs.readFile(st.batchPath(i5));
  const env = JSON.parse(raw5.toString());
  const body = JSON.parse(Buffer.from(env.body, 'base64').toString());
  body.units[0] = 'f'.repeat(64);
  await fs.writeFile(st.batchPath(i5), JSON.stringify({ ...env, body: Buffer.from(JSON.stringify(body)).toString('base64') }));
  const forgedBatch = await runCli(s.fetchArgs('cam', path.join(s.dir, 'fb.bin'), ['--start', 'beginning']));
  t.is(forgedBatch.code, 65, forgedBatch.stderr);
  t.regex(forgedBatch.stderr, /signature does not verify/);
  await fs.writeFile(st.batchPath(i5), raw5);

  // Reordered: batches 3 and 4 swapped (each validly signed, neither in its place).
  const [r3, r4] = await Promise.all([fs.readFile(st.batchPath(3)), fs.readFile(st.batchPath(4))]);
  await fs.writeFile(st.batchPath(3), r4);
  await fs.writeFile(st.batchPath(4), r3);
  const reordered = await runCli(s.fetchArgs('cam', path.join(s.dir, 'ro.bin'), ['--start', 'beginning']));
  t.is(reordered.code, 65, reordered.stderr);
  t.regex(reordered.stderr, /does not follow batch 2/);
  const ro = await fs.readFile(path.join(s.dir, 'ro.bin'));
  t.true(ro.length < source.length && ro.equals(source.subarray(0, ro.length)), 'only the units of batches 0-2 were written');
});

test('a publisher killed mid-stream leaves only batches whose units are on disk, and a restart continues the chain', async (t) => {
  const s = await setup(t);
  const first = randomBytes(600_000);
  const args = ['stream', 'publish', 'cam', '--key', s.keyPath, '--store', s.store, '--unit-size', '4096', '--flush-ms', '5'];
  const p1 = spawnCli(t, args, 'pipe');
  const st = new StreamStore(s.store, 'cam');
  let killedAt = 0;
  await feed(p1, first, 8192, async (sent) => {
    if (killedAt === 0 && sent >= first.length / 2) {
      killedAt = sent;
      p1.child.kill('SIGKILL');
    }
  }).catch(() => undefined);
  await p1.exit;
  // Every batch on disk names units that are on disk and match.
  const check = async () => {
    const h = (await st.head())!;
    let prev: StreamBatch | null = null;
    const parts: Buffer[] = [];
    for (let i = 0; i <= h.lastBatch; i++) {
      const b = (await st.readBatch(i))!;
      if (prev) checkChain(prev, b);
      for (let u = b.first; u < b.first + b.count; u++) {
        const bytes = await fs.readFile(st.unitPath(u));
        t.is(unitHash(bytes), b.units[u - b.first], `unit ${u}`);
        parts.push(bytes);
      }
      prev = b;
    }
    return { h, bytes: Buffer.concat(parts) };
  };
  const before = await check();
  t.true(before.h.bytes > 0 && before.h.bytes <= killedAt, `${before.h.bytes} of ${killedAt} bytes were batched`);
  t.true(before.bytes.equals(first.subarray(0, before.h.bytes)));
  const second = randomBytes(50_000);
  const p2 = spawnCli(t, args, 'pipe');
  p2.child.stdin!.end(second);
  t.is(await p2.exit, 0, p2.stderr());
  t.regex(p2.stderr(), /continuing at batch \d+/);
  const after = await check();
  t.true(after.h.ended);
  t.true(after.bytes.equals(Buffer.concat([first.subarray(0, before.h.bytes), second])), 'the restarted chain holds the first run units, then the second run units');
});

test('the stream endpoints: head, retention refusals, bad queries; publish errors carry the README exit codes', async (t) => {
  const s = await setup(t);
  const pub = spawnCli(t, ['stream', 'publish', 'cam', '--key', s.keyPath, '--store', s.store, '--unit-size', '4096', '--retain', '4'], 'pipe');
  pub.child.stdin!.end(randomBytes(20 * 4096));
  t.is(await pub.exit, 0, pub.stderr());
  const get = (p: string) => fetch(s.url + p);
  const head = (await (await get('/v1/streams/cam')).json()) as Record<string, unknown>;
  t.like(head, { stream: 'cam', firstUnit: 16, nextUnit: 20, ended: true, bytes: 20 * 4096 });
  // Retention bounds the disk: 4 units kept.
  const st = new StreamStore(s.store, 'cam');
  t.true((await st.unitBytesOnDisk()) <= 4 * 4096);
  t.is((await get('/v1/streams/cam/units/3')).status, 410);
  t.is((await get('/v1/streams/cam/units/17')).status, 200);
  t.is((await get('/v1/streams/cam/units/99')).status, 404);
  t.is((await get('/v1/streams/cam/batches?from=0')).status, 410);
  t.is((await get('/v1/streams/cam/batches?unit=1')).status, 410);
  const batches = (await (await get('/v1/streams/cam/batches?unit=17')).json()) as { batches: unknown[]; ended: boolean };
  t.true(batches.batches.length >= 1 && batches.ended);
  t.is((await get('/v1/streams/cam/batches?from=x')).status, 400);
  t.is((await get('/v1/streams/cam/batches')).status, 400);
  t.is((await get('/v1/streams/nope')).status, 404);
  t.is((await get('/v1/streams/.bad')).status, 400);
  // A receiver that asks for dropped units is told so (69), not stalled.
  const gone = await runCli(s.fetchArgs('cam', path.join(s.dir, 'g.bin'), ['--start', '1']));
  t.is(gone.code, 69, gone.stderr);
  t.regex(gone.stderr, /dropped \(retention\)/);

  const again = await runCli(['stream', 'publish', 'cam', '--key', s.keyPath, '--store', s.store]);
  t.is(again.code, 64, again.stderr);
  t.regex(again.stderr, /has ended/);
  const badRetain = await runCli(['stream', 'publish', 'x', '--key', s.keyPath, '--store', s.store, '--retain', '5 weeks']);
  t.is(badRetain.code, 64);
  t.regex(badRetain.stderr, /--retain must be a unit count/);
  const noKey = await runCli(['stream', 'publish', 'x', '--key', path.join(s.dir, 'missing.key'), '--store', s.store]);
  t.is(noKey.code, 66);
  const noFile = await runCli(['stream', 'publish', 'x', '--key', s.keyPath, '--store', s.store, '--from', path.join(s.dir, 'missing')]);
  t.is(noFile.code, 66, noFile.stderr);
  t.notRegex(noFile.stderr + badRetain.stderr + noKey.stderr, /\n\s+at /, 'no stack traces');
  const help = await runCli(['stream', 'fetch', '--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /Units come from the server only; `fleetcast agent --stream` shares a stream on the LAN/);
});

test('docs/streams.md: every command block runs as written', async (t) => {
  const dir = await tmpdir(t);
  const lines = commandBlocks(await fs.readFile(path.join(__dirname, '..', '..', 'docs', 'streams.md'), 'utf8')).flat();
  t.true(lines.some((l) => l.startsWith('fleetcast stream publish')) && lines.some((l) => l.startsWith('fleetcast stream fetch')), lines.join('\n'));
  // `fleetcast` on PATH, as npm link would put it.
  await fs.mkdir(path.join(dir, 'bin'));
  await fs.writeFile(path.join(dir, 'bin', 'fleetcast'), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} "$@"\n`, { mode: 0o755 });
  const work = path.join(dir, 'work');
  await fs.mkdir(work);
  let stopped = false;
  t.teardown(async () => {
    // The block stops its server; if a line failed before that, this does.
    if (stopped) return;
    const pid = Number(await fs.readFile(path.join(work, 'server.pid'), 'utf8').catch(() => ''));
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
  for (const line of lines) {
    const r = await run('bash', ['-e', '-o', 'pipefail', '-c', line], { cwd: work, env: { PATH: `${path.join(dir, 'bin')}:${process.env.PATH}` }, timeoutMs: 60_000 });
    t.is(r.code, 0, `${line}\n${r.stdout}${r.stderr}`);
    if (line.startsWith('kill ') && r.code === 0) stopped = true;
  }
});

test('with tokens the stream endpoints need one; a receiver asked to start past the live edge waits for that unit', async (t) => {
  const dir = await tmpdir(t);
  const { keyPath, pubPath } = await generateKeyPair(path.join(dir, 'keys'));
  const store = path.join(dir, 'store');
  await fs.mkdir(store);
  const token = randomBytes(16).toString('hex');
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0, tokens: { box1: token } });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  await fs.writeFile(path.join(dir, 'token'), token + '\n');
  const source = randomBytes(40 * 4096);
  const pub = spawnCli(t, ['stream', 'publish', 'cam', '--key', keyPath, '--store', store, '--unit-size', '4096'], 'pipe');
  pub.child.stdin!.write(source.subarray(0, 10 * 4096));
  const st = new StreamStore(store, 'cam');
  for (let i = 0; i < 3000 && ((await st.head().catch(() => null))?.nextUnit ?? 0) < 10; i++) await new Promise((r) => setTimeout(r, 20));
  t.is((await fetch(`${url}/v1/streams/cam`)).status, 401);
  t.is((await fetch(`${url}/v1/streams/cam/units/0`)).status, 401);
  t.is((await fetch(`${url}/v1/streams/cam`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
  const args = ['stream', 'fetch', 'cam', '--server', url, '--plain-http', '--trust', pubPath, '--sink', path.join(dir, 'out.bin'), '--token-file', path.join(dir, 'token'), '--start', '30'];
  const noToken = await runCli(args.slice(0, -4).concat(['--start', '30']));
  t.is(noToken.code, 77, noToken.stderr);
  const rx = spawnCli(t, args);
  // Unit 30 is not published yet: the receiver waits for it, then takes it and what follows.
  await new Promise((r) => setTimeout(r, 300));
  pub.child.stdin!.end(source.subarray(10 * 4096));
  t.is(await pub.exit, 0, pub.stderr());
  t.is(await rx.exit, 0, rx.stderr());
  t.regex(rx.stderr(), /starting at unit 30\b/);
  t.true((await fs.readFile(path.join(dir, 'out.bin'))).equals(source.subarray(30 * 4096)));
});

test('a batches request for the next batch is held until the publisher appends it (long poll)', async (t) => {
  const dir = await tmpdir(t);
  const keys = await generateKeyPair(path.join(dir, 'keys'));
  const store = path.join(dir, 'store');
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0 });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  const pub = await StreamPublisher.open(store, 'cam', await loadPrivateKey(keys.keyPath), { unitSize: 4096 });
  t.teardown(() => pub.close());
  await pub.push(Buffer.alloc(4096, 1));
  // Without waitMs: answered at once, with no batch.
  const now = (await (await fetch(`${url}/v1/streams/cam/batches?from=1`)).json()) as { batches: unknown[] };
  t.is(now.batches.length, 0);
  let answered = false;
  const held = fetch(`${url}/v1/streams/cam/batches?from=1&waitMs=60000`).then(async (r) => {
    answered = true;
    return { header: r.headers.get('x-fleetcast-long-poll'), body: (await r.json()) as { batches: { body: string }[]; lastBatch: number } };
  });
  await new Promise((r) => setTimeout(r, 200));
  t.false(answered, 'held while batch 1 does not exist');
  await pub.push(Buffer.alloc(4096, 2));
  const got = await held;
  t.is(got.header, '60000');
  t.is(got.body.batches.length, 1);
  t.is(JSON.parse(Buffer.from(got.body.batches[0].body, 'base64').toString()).batch, 1);
});

test('SIGTERM stops a publish from stdin without ending the stream (its bytes so far in a batch); the next run continues and ends it', async (t) => {
  const s = await setup(t);
  const args = ['stream', 'publish', 'cam', '--key', s.keyPath, '--store', s.store, '--unit-size', '4096', '--flush-ms', '60000'];
  const p1 = spawnCli(t, args, 'pipe');
  const a = randomBytes(3 * 4096 + 500);
  p1.child.stdin!.write(a);
  const st = new StreamStore(s.store, 'cam');
  for (let i = 0; i < 3000 && ((await st.head().catch(() => null))?.nextUnit ?? 0) < 3; i++) await new Promise((r) => setTimeout(r, 20));
  p1.child.kill('SIGTERM');
  t.is(await p1.exit, 0, p1.stderr());
  t.regex(p1.stderr(), /stopped \(run again to continue it\)/);
  const h1 = (await st.head())!;
  t.false(h1.ended);
  t.is(h1.bytes, a.length, 'the partial unit was flushed, not lost');
  const b = randomBytes(5000);
  const p2 = spawnCli(t, args, 'pipe');
  p2.child.stdin!.end(b);
  t.is(await p2.exit, 0, p2.stderr());
  const r = await runCli(s.fetchArgs('cam', path.join(s.dir, 'out.bin'), ['--start', 'beginning']));
  t.is(r.code, 0, r.stderr);
  t.true((await fs.readFile(path.join(s.dir, 'out.bin'))).equals(Buffer.concat([a, b])));
});

test('follow mode: a publisher killed and started again on the same file goes on from the byte the stream reached', async (t) => {
  const s = await setup(t);
  const file = path.join(s.dir, 'log.bin');
  const source = randomBytes(12 * 4096);
  await fs.writeFile(file, source.subarray(0, 5 * 4096));
  const args = ['stream', 'publish', 'log', '--key', s.keyPath, '--store', s.store, '--unit-size', '4096', '--from', file];
  const st = new StreamStore(s.store, 'log');
  const reached = async (bytes: number) => {
    for (let i = 0; i < 3000 && ((await st.head().catch(() => null))?.bytes ?? 0) < bytes; i++) await new Promise((r) => setTimeout(r, 10));
  };
  const p1 = spawnCli(t, args);
  await reached(5 * 4096);
  p1.child.kill('SIGKILL');
  await p1.exit;
  t.false((await st.head())!.ended);
  await fs.appendFile(file, source.subarray(5 * 4096));
  const p2 = spawnCli(t, args);
  await reached(source.length);
  p2.child.kill('SIGTERM');
  t.is(await p2.exit, 0, p2.stderr());
  t.regex(p2.stderr(), new RegExp(`continuing at batch \\d+, unit 5, byte ${5 * 4096}`));
  const r = await runCli(s.fetchArgs('log', path.join(s.dir, 'out.bin'), ['--start', 'beginning']));
  t.is(r.code, 0, r.stderr);
  t.true((await fs.readFile(path.join(s.dir, 'out.bin'))).equals(source));
});

test("a stream heartbeat binds its member id to the token, as release heartbeats do: another device's token may not speak for it (403)", async (t) => {
  const dir = await tmpdir(t);
  const store = path.join(dir, 'store');
  await fs.mkdir(store);
  const tokens = { box1: randomBytes(16).toString('hex'), box2: randomBytes(16).toString('hex') };
  const server = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port: 0, tokens });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  const beat = (token: string) =>
    fetch(`${url}/v1/streams/cam/heartbeat`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ v: 1, group: 'g', member: 'm1', haveFrom: 0, have: '' }) });
  const first = await beat(tokens.box1);
  t.not(first.status, 403, 'the first token to use m1 may');
  const other = await beat(tokens.box2);
  t.is(other.status, 403);
  t.regex(await other.text(), /NOT_YOUR_MEMBER/);
  t.not((await beat(tokens.box1)).status, 403, 'm1 stays usable with its own token');
});
