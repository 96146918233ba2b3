import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import { feed, streamSetup as setup } from './helpers/stream-server';
import { BIN, runCli } from './helpers/fleet';
import { StreamPublisher } from '../src/release/stream-publish';
import { streamRoutes } from '../src/server/stream-routes';
import { StreamAgent } from '../src/agent/stream-agent';
import { streamStatus } from '../src/agent/stream-status';

/*
 * Streams on the LAN (issue 19): a stream published in this process at a few Mbit/s, the
 * server allocating its units to the agents of one LAN group, the agents multicasting
 * and repairing them on loopback and delivering them to file sinks. Bounds are on
 * bytes and counts, never on time.
 */

const UNIT = 64 * 1024;

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
  const served = streamRoutes(s.store).alloc.unitBytesSent.get('cam') ?? 0;
  t.true(served >= wan, 'the server counts at least what the agents received');
  t.true(served <= 1.05 * source.length, `server unit bytes for the group ${served} <= 1.05 x ${source.length}`);
  t.log(`server unit bytes ${served} (agents received ${wan}) for a ${source.length}-byte stream (${(wan / source.length).toFixed(3)}x); LAN bytes ${lan}`);
  t.true(wan <= 1.05 * source.length, `server unit bytes per group ${wan} <= 1.05 x ${source.length}`);
  t.true(lan > source.length, 'the agents shared units on the LAN');
});

test('at 3% loss a late joiner at the live edge, one from the beginning and a restarted agent each get the source from their start, no byte twice or missing', async (t) => {
  const s = await setup(t);
  const source = randomBytes(4_000_000);
  const pub = await StreamPublisher.open(s.store, 'feed', s.key, { unitSize: UNIT, flushMs: 200 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush();
  const lossy = { lossPct: 3 };
  const a = s.agent('feed', 'a', lossy);
  let b = s.agent('feed', 'b', lossy);
  const runs = [a.run(), b.run().catch(() => undefined)];
  let live: StreamAgent | null = null;
  let late: StreamAgent | null = null;
  let restarted = false;
  let signedBeforeLate = 0;
  await feed(pub, source.subarray(10_000), 10_000, async (sent) => {
    if (!live && sent >= 1_500_000) {
      // Every push so far is signed and stored (push resolves then): d's history. A unit the
      // flush timer cut during the last push may still wait for its batch: at most one.
      signedBeforeLate = pub.position.unit;
      live = s.agent('feed', 'c', { ...lossy, start: 'live' });
      late = s.agent('feed', 'd', { ...lossy, start: 'beginning' });
      runs.push(live.run(), late.run());
    }
    if (!restarted && sent >= 2_500_000) {
      restarted = true;
      t.true(b.delivery.next > 0, 'b delivered units before its restart');
      await b.close();
      b = s.agent('feed', 'b', lossy);
      runs.push(b.run());
    }
  });
  await Promise.all(runs);
  const sink = (id: string) => fs.readFile(path.join(s.dir, `${id}.bin`));
  t.true((await sink('a')).equals(source), 'a: the whole source');
  t.true((await sink('d')).equals(source), 'd (joined late, --start beginning): the whole source');
  const liveStart = live!.startedAt!.byte!;
  t.true(liveStart > 0, 'c started at the live edge, not at the beginning');
  t.true((await sink('c')).equals(source.subarray(liveStart)), `c (--start live): the source from byte ${liveStart}`);
  t.true(b.startedAt!.unit > 0, 'the restarted b resumed from its position');
  t.true((await sink('b')).equals(source), 'b (restarted): the whole source, no byte twice or missing');
  const nacks = [a, b, live!, late!].reduce((n, x) => n + x.stats.nacksSent, 0);
  t.true(nacks > 0, 'loss was repaired with NACKs');
  // Latency counts the units signed after an agent started: all but the first for a (its batch
  // was signed before a started), not the ~37% of the stream d took from before it joined.
  // The count of units is the stream's own: on a loaded machine the 200 ms flush timer cuts
  // short units between 20 ms ticks, so it is more than the source's length over UNIT.
  const units = pub.position.unit;
  const counted = (x: StreamAgent) => x.delivery.latenciesMs.length;
  t.log(`latency samples: a ${counted(a)}, d (from the beginning) ${counted(late!)}, of ${units} units (${signedBeforeLate} signed before d started)`);
  t.true(signedBeforeLate >= Math.floor(1_500_000 / UNIT), `${signedBeforeLate} units signed before d started`);
  t.true(counted(a) >= units - 2, `a: latency of ${counted(a)} of ${units} units`);
  t.true(counted(late!) <= units - signedBeforeLate + 1, `d: latency of ${counted(late!)} units, not of the ${signedBeforeLate} of history it took`);
});

/** A stream of `units` full units, in batches of 4, ended; its source bytes. */
async function publishWhole(s: Awaited<ReturnType<typeof setup>>, name: string, units: number): Promise<Buffer> {
  const source = randomBytes(units * UNIT);
  const pub = await StreamPublisher.open(s.store, name, s.key, { unitSize: UNIT });
  for (let off = 0; off < source.length; off += 4 * UNIT) await pub.push(source.subarray(off, off + 4 * UNIT));
  await pub.end();
  await pub.close();
  return source;
}

async function until(cond: () => boolean, what: string, limitMs = 60_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('units the server serves out of order (swapped in its store) are refused: nothing unverified reaches a sink', async (t) => {
  const s = await setup(t);
  const source = await publishWhole(s, 'swapped', 16);
  const units = path.join(s.store, 'streams', 'swapped', 'units');
  await fs.rename(path.join(units, '9'), path.join(units, 'x'));
  await fs.rename(path.join(units, '10'), path.join(units, '9'));
  await fs.rename(path.join(units, 'x'), path.join(units, '10'));
  const agents = ['a', 'b'].map((id) => s.agent('swapped', id));
  for (const a of agents) void a.run().catch(() => undefined);
  await until(() => agents.every((a) => a.delivery?.next === 9) && agents.reduce((n, a) => n + a.stats.unitsRejected, 0) >= 2, 'both swapped units refused');
  for (const id of ['a', 'b']) t.true((await fs.readFile(path.join(s.dir, `${id}.bin`))).equals(source.subarray(0, 9 * UNIT)), `${id}: the units before the swapped ones, and nothing else`);
});

test('batches the server serves out of order are refused (BAD_CHAIN, exit 65) before their units reach the sink', async (t) => {
  const s = await setup(t);
  const source = await publishWhole(s, 'reordered', 16);
  const batches = path.join(s.store, 'streams', 'reordered', 'batches');
  await fs.rename(path.join(batches, '2'), path.join(batches, 'x'));
  await fs.rename(path.join(batches, '3'), path.join(batches, '2'));
  await fs.rename(path.join(batches, 'x'), path.join(batches, '3'));
  const a = s.agent('reordered', 'a');
  const err = await t.throwsAsync(a.run());
  t.is((err as { code?: string }).code, 'BAD_CHAIN');
  t.is((err as { exitCode?: number }).exitCode, 65);
  const got = await fs.readFile(path.join(s.dir, 'a.bin'));
  t.true(got.length <= 8 * UNIT && got.equals(source.subarray(0, got.length)), 'at most the units of the batches before the swap');
});

test('agent --stream from the command line: sinks -, unix:PATH and exec:CMD get the stream; a slow sink past --sink-buffer skips with a GAP marker while the others finish; fleetcast status shows the stream', async (t) => {
  const s = await setup(t);
  const source = randomBytes(48 * UNIT);
  const pub = await StreamPublisher.open(s.store, 'tv', s.key, { unitSize: UNIT });
  await pub.push(source.subarray(0, 4 * UNIT));
  const sockPath = path.join(s.dir, 'sink.sock');
  const received: Buffer[] = [];
  const slowGot: Buffer[] = [];
  let slowConn: net.Socket | null = null;
  const srv = net.createServer((c) => c.on('data', (d) => received.push(d)));
  await new Promise<void>((r) => srv.listen(sockPath, r));
  t.teardown(() => srv.close());
  const slowSock = path.join(s.dir, 'slow.sock');
  const slowSrv = net.createServer((c) => {
    slowConn = c;
    c.pause();
    c.on('data', (d) => slowGot.push(d));
  });
  await new Promise<void>((r) => slowSrv.listen(slowSock, r));
  t.teardown(() => slowSrv.close());
  const base = ['agent', '--server', s.url, '--plain-http', '--group', 'g1', '--interface', '127.0.0.1', '--multicast', `${s.multicast.address}:${s.multicast.port}`, '--trust', s.pubPath, '--stream', 'tv', '--start', 'beginning'];
  const spawnAgent = (id: string, sink: string, extra: string[] = []) => {
    const child = spawn(process.execPath, [BIN, ...base, '--member', id, '--storage', path.join(s.dir, `cli-${id}`), '--sink', sink, '--status-socket', path.join(s.dir, `${id}.status`), ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const out: Buffer[] = [];
    let err = '';
    child.stdout!.on('data', (d) => out.push(d));
    child.stderr!.on('data', (d) => {
      err += d;
      if (process.env.STREAM_DEBUG) process.stderr.write(`${id}: ${d}`);
    });
    const exit = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    return { out, stderr: () => err, exit };
  };
  const std = spawnAgent('std', '-');
  const unix = spawnAgent('unix', `unix:${sockPath}`);
  const exec = spawnAgent('exec', `exec:cat > ${path.join(s.dir, 'exec.bin')}`);
  const slow = spawnAgent('slow', `unix:${slowSock}`, ['--sink-buffer', '1', '--sink-full', 'skip']);
  for (let off = 4 * UNIT; off < source.length; off += 4 * UNIT) {
    await pub.push(source.subarray(off, off + 4 * UNIT));
    await new Promise((r) => setTimeout(r, 100));
  }
  let st = await runCli(['status', '--socket', path.join(s.dir, 'std.status')]);
  for (let i = 0; i < 100 && !/latency {2}publish to delivery p50 \d+ ms/.test(st.stdout); i++) {
    await new Promise((r) => setTimeout(r, 100));
    st = await runCli(['status', '--socket', path.join(s.dir, 'std.status')]);
  }
  t.is(st.code, 0, st.stderr);
  t.regex(st.stdout, /stream {3}tv: next unit \d+ of \d+ published/);
  t.regex(st.stdout, /latency {2}publish to delivery p50 \d+ ms/);
  t.regex(st.stdout, /repairs {2}\d+ NACKs sent \(\d+ echoes\); \d+ datagrams held before they could be taken, \d+ of them taken; dropped (none|[a-z-]+ \d+)/);
  await pub.end();
  await pub.close();
  for (const [name, p] of Object.entries({ std, unix, exec })) t.is(await p.exit, 0, `${name}: ${p.stderr()}`);
  t.true(Buffer.concat(std.out).equals(source), 'the - sink (stdout) got the stream');
  t.true(Buffer.concat(received).equals(source), 'the unix: sink got the stream');
  t.true((await fs.readFile(path.join(s.dir, 'exec.bin'))).equals(source), 'the exec: sink got the stream');
  // The slow sink: read now. It skipped units with a marker, and what it got are whole units of the source in order.
  (slowConn as net.Socket | null)?.resume();
  t.is(await slow.exit, 0, slow.stderr());
  t.regex(slow.stderr(), /GAP units \d+ to \d+ skipped: the sink is slower than the stream/);
  const gaps = (await fs.readFile(path.join(s.dir, 'cli-slow', 'streams', 'tv', 'gaps'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { fromUnit: number; toUnit: number });
  t.true(gaps.length >= 1);
  const expect: Buffer[] = [];
  let u = 0;
  for (const g of gaps) {
    expect.push(source.subarray(u * UNIT, g.fromUnit * UNIT));
    u = g.toUnit;
  }
  expect.push(source.subarray(u * UNIT));
  t.true(Buffer.concat(slowGot).equals(Buffer.concat(expect)), 'the slow sink got the source minus the units its gap markers name');
});

test('a sink that stops reading does not stall the LAN: past its buffer cap (block) its agent takes no leases, the others finish, and it delivers everything once the sink reads again', async (t) => {
  const s = await setup(t);
  const source = randomBytes(3_000_000);
  const pub = await StreamPublisher.open(s.store, 'slow', s.key, { unitSize: UNIT, flushMs: 200 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush();
  const sockPath = path.join(s.dir, 'stuck.sock');
  const got: Buffer[] = [];
  let conn: net.Socket | null = null;
  const srv = net.createServer((c) => {
    conn = c;
    c.pause();
    c.on('data', (d) => got.push(d));
  });
  await new Promise<void>((r) => srv.listen(sockPath, r));
  t.teardown(() => srv.close());
  const others = ['a', 'b', 'c'].map((id) => s.agent('slow', id));
  const stuck = s.agent('slow', 'stuck', { sink: `unix:${sockPath}`, bufferMaxBytes: 512 * 1024, onFull: 'block' });
  const runs = others.map((a) => a.run());
  const stuckRun = stuck.run();
  let fullSeen = false;
  await feed(pub, source.subarray(10_000), 10_000, () => {
    fullSeen ||= stuck.delivery?.full === true;
  });
  await Promise.all(runs);
  for (const id of ['a', 'b', 'c']) t.true((await fs.readFile(path.join(s.dir, `${id}.bin`))).equals(source), `${id}: the whole source while one sink was stuck`);
  t.true(fullSeen, 'the stuck agent reached its buffer cap');
  const share = stuck.stats.wanBytes / source.length;
  t.true(share < 0.25, `the stuck agent fetched ${(share * 100).toFixed(1)}% of the stream from the server (its peers took its share)`);
  (conn as net.Socket | null)?.resume();
  await stuckRun;
  t.true(Buffer.concat(got).equals(source), 'block: once the sink reads again, every byte arrives, none skipped');
  t.is(stuck.delivery.gaps, 0);
});

test('a wide-area group of two LAN groups: each unit leaves the server once and its lessee copies it to the other group\'s gateway (no NACK per unit)', async (t) => {
  const s = await setup(t);
  const source = randomBytes(3_000_000); // ~6 s at 10 KB every 20 ms
  const pub = await StreamPublisher.open(s.store, 'cam', s.key, { unitSize: UNIT, flushMs: 200 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush();
  // Two LAN groups (multicast groups of their own on loopback), one agent each, one wide-area group.
  const other = { address: s.multicast.address === '239.255.0.1' ? '239.255.0.2' : '239.255.0.1', port: s.multicast.port };
  const a = s.agent('cam', 'a', { group: 'g1', wideGroup: 'w' });
  const b = s.agent('cam', 'b', { group: 'g2', wideGroup: 'w', multicast: other });
  const runs = [a.run(), b.run()];
  // Both have joined the wide-area group's allocator before the stream runs, so neither takes everything at first.
  while (streamRoutes(s.store).alloc.memberCount('cam') < 2) await new Promise((r) => setTimeout(r, 10));
  await feed(pub, source.subarray(10_000), 10_000);
  await Promise.all(runs);
  for (const id of ['a', 'b']) t.true((await fs.readFile(path.join(s.dir, `${id}.bin`))).equals(source), `agent ${id}: sink equals the source`);
  const units = pub.position.unit; // the stream's own count: a loaded machine's flush timer cuts short units
  const served = streamRoutes(s.store).alloc.unitBytesSent.get('cam') ?? 0;
  const wan = a.stats.wanBytes + b.stats.wanBytes;
  const crossIn = a.stats.crossGroupBytes + b.stats.crossGroupBytes;
  const nacks = a.stats.nacksSent + b.stats.nacksSent;
  t.log(`server unit bytes ${served} for a ${source.length}-byte stream; WAN a ${a.stats.wanBytes} b ${b.stats.wanBytes}; cross-group sent ${a.stats.crossGroupBytesSent + b.stats.crossGroupBytesSent}, new bytes received ${crossIn}; NACKs ${nacks} for ${units} units`);
  t.true(served <= 1.05 * source.length, `server unit bytes for the wide-area group ${served} <= 1.05 x ${source.length}`);
  t.true(Math.min(a.stats.wanBytes, b.stats.wanBytes) > 0.1 * source.length, 'both groups took a share from the server');
  t.true(crossIn >= 0.9 * (2 * source.length - wan), `the units each group did not download came across from the other group (${crossIn} bytes)`);
  // Copies arrive without being asked for; a unit that had to be NACKed across groups costs at least one NACK.
  t.true(nacks <= units / 4, `NACKs ${nacks} <= a quarter of the ${units} units: the other group's units came as copies, not by repair`);
  // fleetcast status shows each agent's pace to the other group's gateway.
  for (const [id, ag] of [['a', a], ['b', b]] as const) {
    const paths = streamStatus(ag).crossPaths;
    t.log(`agent ${id}: ${JSON.stringify(paths)}`);
    t.true(paths.length === 1 && paths[0].rateBytesPerSec > 0 && paths[0].congestionEvents >= paths[0].appLimitedCuts, `agent ${id}: one path to the other group's gateway in its status`);
  }
});

test('a heartbeat per batch, not one more per downloaded unit: the receipt rides the next beat', async (t) => {
  const s = await setup(t);
  const pub = await StreamPublisher.open(s.store, 'cam', s.key, { unitSize: UNIT, flushMs: 200 });
  const source = randomBytes(24 * UNIT);
  await pub.push(source.subarray(0, UNIT));
  await pub.flush();
  const a = s.agent('cam', 'a');
  const run = a.run();
  const alloc = streamRoutes(s.store).alloc;
  while (alloc.memberCount('cam') < 1) await new Promise((r) => setTimeout(r, 10));
  // One unit per batch, spaced so that each download ends well before the next batch.
  for (let u = 1; u < 24; u++) {
    await new Promise((r) => setTimeout(r, 150));
    await pub.push(source.subarray(u * UNIT, (u + 1) * UNIT));
    await pub.flush();
  }
  await pub.end();
  await pub.close();
  await run;
  t.true((await fs.readFile(path.join(s.dir, 'a.bin'))).equals(source), 'the sink equals the source');
  const beats = alloc.heartbeats.get('cam') ?? 0;
  t.log(`${beats} heartbeats for 24 batches of one unit`);
  // Per batch one beat (it asks for the new unit), plus the join, the end and the 1 s interval
  // beats of a run of a few seconds; a beat after each download as well made it about 48 and more.
  t.true(beats <= 24 + 12, `heartbeats ${beats} <= 36 for 24 one-unit batches`);
});
