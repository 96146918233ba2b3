import test from 'ava';
import { WanFetch, WanFetchContext } from '../src/agent/wan-fetch';

/*
 * The WAN side meets the copy backlog (copies of downloaded bytes waiting to be sent).
 * A download in flight holds only past the hard bound (crossQueueHardMaxBytes: paused
 * mid-unit, its LAN peers would wait on half a unit); a fetch worker asks for no new
 * lease past the soft one. The agent counts both (downloadPauses, downloadPausedMs,
 * downloadPauseMaxMs; leaseHolds, leaseHeldMs; fleetcast_agent_download_pause*,
 * fleetcast_agent_lease_held*). Driven through the chunk step and the worker loop, with a
 * stand-in core: whether a real transfer meets the backlog depends on how fast disk, WAN
 * and LAN are at that moment.
 */

type Chunk = (dl: unknown, chunk: Uint8Array) => Promise<void> | undefined;

/** A stand-in core whose backlog is `soft` (past the new-download cap) or `hard` (past the in-flight one). */
function backlog() {
  const level = { soft: false, hard: false };
  const core = {
    backlogged: (inFlight = false) => (inFlight ? level.hard : level.soft),
    drained: (inFlight = false) => (inFlight ? !level.hard : !level.soft),
  };
  return { level, core };
}

const stats = () => ({ wanBytes: 0, downloadPauses: 0, downloadPausedMs: 0, downloadPauseMaxMs: 0, leaseHolds: 0, leaseHeldMs: 0 });
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a download in flight goes on past the soft backlog, holds past the hard one until it drains; counted with its longest hold', async (t) => {
  const { level, core } = backlog();
  const s = stats();
  const wf = new WanFetch({ core, stats: s, kick: () => undefined } as unknown as WanFetchContext);
  const chunk = (wf as unknown as { chunk: Chunk }).chunk.bind(wf);
  const dl = { unit: 3, off: 0, push(c: Uint8Array) { this.off += c.length; return undefined; } };

  t.is(chunk(dl, new Uint8Array(100)), undefined, 'no backlog: the download goes on');
  level.soft = true;
  t.is(chunk(dl, new Uint8Array(100)), undefined, 'past the soft bound only: a unit once started is finished');
  t.is(s.downloadPauses, 0);

  level.hard = true;
  const held = chunk(dl, new Uint8Array(100));
  t.truthy(held, 'past the hard bound: the download holds');
  t.is(s.downloadPauses, 1);
  let done = false;
  void held!.then(() => (done = true));
  await tick(30);
  wf.resume();
  await Promise.resolve();
  t.false(done, 'still held while the backlog has not drained');

  level.hard = false; // drained below the hard bound's half; the soft one still over
  wf.resume();
  await held;
  t.true(s.downloadPausedMs >= 25, `held ${s.downloadPausedMs} ms, at least the 30 ms it waited`);
  t.is(s.downloadPauseMaxMs, s.downloadPausedMs, 'one hold: the longest is it');
  t.is(s.leaseHolds, 0);
  t.is(s.wanBytes, 300);
  t.is(dl.off, 300);
});

test('a chunk that waits on its disk write still holds for the hard backlog once the write is done', async (t) => {
  const { level, core } = backlog();
  const s = stats();
  const wf = new WanFetch({ core, stats: s, kick: () => undefined } as unknown as WanFetchContext);
  const chunk = (wf as unknown as { chunk: Chunk }).chunk.bind(wf);
  let written!: () => void;
  const dl = { unit: 4, off: 0, push(c: Uint8Array) { this.off += c.length; return new Promise<void>((r) => (written = r)); } };
  level.hard = level.soft = true;
  let done = false;
  void chunk(dl, new Uint8Array(10))!.then(() => (done = true));
  written();
  await tick(10);
  t.false(done, 'written, and held for the backlog');
  t.is(s.downloadPauses, 1);
  level.hard = level.soft = false;
  wf.resume();
  await tick(0);
  t.true(done);
});

/** A WanFetch whose worker loop runs against a stand-in core and server: lease requests are recorded. */
function workerRig(grant: (body: { want?: number[] }) => { units: number[] }) {
  const { level, core: base } = backlog();
  const leased: number[] = [];
  const asked: { want?: number[] }[] = [];
  let stop = false;
  const core = {
    ...base,
    leasedCount: 0,
    takeLeased: () => leased.shift(),
    leaseGranted: (g: { units: number[] }) => leased.push(...g.units),
    has: () => true, // a leased unit is "already held": fetchUnit only sends its receipt
    relayFailed: () => undefined,
  };
  const client = {
    post: async (route: string, body: { want?: number[] }) => {
      if (route === '/v1/lease') {
        asked.push(body);
        return { retryAfterMs: 0, exhausted: true, ...grant(body) };
      }
      return {};
    },
  };
  const s = stats();
  const ctx = { core, client, stats: s, kick: () => undefined, stopped: () => stop, heartbeatMs: () => 10, ref: {}, log: { warn: () => undefined, debug: () => undefined } };
  const wf = new WanFetch(ctx as unknown as WanFetchContext);
  const run = (wf as unknown as { worker: () => Promise<void> }).worker.bind(wf);
  return { wf, level, asked, s, run, stop: () => ((stop = true), wf.close()) };
}

test('a fetch worker asks for no new lease while the copy backlog is over the soft bound; it asks once it drained', async (t) => {
  const rig = workerRig(() => ({ units: [] }));
  rig.level.soft = true;
  const loop = rig.run();
  await tick(40);
  t.is(rig.asked.length, 0, 'no lease request while backlogged');
  t.is(rig.s.leaseHolds, 1, 'one hold, not one per wake-up');
  rig.level.soft = false;
  rig.wf.resume();
  for (let i = 0; i < 100 && rig.asked.length === 0; i++) await tick(5);
  t.true(rig.asked.length >= 1, 'drained: it asks');
  t.true(rig.s.leaseHeldMs >= 35, `held ${rig.s.leaseHeldMs} ms`);
  rig.stop();
  await loop;
});

test('a relay our LAN asked for is not held behind the copy backlog', async (t) => {
  const rig = workerRig((b) => ({ units: b.want ?? [] }));
  rig.level.soft = true;
  const loop = rig.run();
  await tick(20);
  t.is(rig.asked.length, 0);
  rig.wf.relay([7], 'relayed');
  for (let i = 0; i < 100 && rig.s.leaseHolds < 2; i++) await tick(5);
  // The worker was let go: it took unit 7 (held already: a receipt), then held again for the backlog.
  t.deepEqual(rig.asked.map((b) => b.want), [[7]], 'only the relay request went out');
  t.is(rig.s.leaseHolds, 2, 'released for the relay, then held again');
  rig.stop();
  await loop;
});
