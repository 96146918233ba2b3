import test from 'ava';
import { WanFetch, WanFetchContext } from '../src/agent/wan-fetch';

/*
 * A download in flight meets the copy backlog (copies of its bytes waiting to be sent):
 * it holds until the backlog drains, and the agent counts the holds and their time
 * (downloadPauses, downloadPausedMs; fleetcast_agent_download_pause*). Driven through
 * the chunk step alone, with a stand-in core and download: whether a real transfer meets
 * the backlog depends on how fast disk, WAN and LAN are at that moment.
 */

type Chunk = (dl: unknown, chunk: Uint8Array) => Promise<void> | undefined;

test('a download chunk that meets the copy backlog holds until it drains; the hold and its time are counted', async (t) => {
  const core = { backlogged: false, drained: true };
  const stats = { wanBytes: 0, downloadPauses: 0, downloadPausedMs: 0 };
  const wf = new WanFetch({ core, stats, kick: () => undefined } as unknown as WanFetchContext);
  const chunk = (wf as unknown as { chunk: Chunk }).chunk.bind(wf);
  const dl = { unit: 3, off: 0, push(c: Uint8Array) { this.off += c.length; return undefined; } };

  t.is(chunk(dl, new Uint8Array(100)), undefined, 'no backlog: the download goes on');
  t.is(stats.downloadPauses, 0);

  Object.assign(core, { backlogged: true, drained: false });
  const held = chunk(dl, new Uint8Array(100));
  t.truthy(held, 'backlog: the download holds');
  t.is(stats.downloadPauses, 1);
  let done = false;
  void held!.then(() => (done = true));
  await new Promise((r) => setTimeout(r, 30));
  wf.resume();
  await Promise.resolve();
  t.false(done, 'still held while the backlog has not drained');

  Object.assign(core, { backlogged: false, drained: true });
  wf.resume();
  await held;
  t.true(stats.downloadPausedMs >= 25, `held ${stats.downloadPausedMs} ms, at least the 30 ms it waited`);
  t.is(stats.wanBytes, 200);
  t.is(dl.off, 200);
});
