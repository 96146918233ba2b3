import test from 'ava';
import { BatchFollower, FollowerHost } from '../src/agent/stream-follow';

/*
 * The batch follower aborts its own long poll when a LAN peer relays the batches, and on
 * close. When the stream has ended by then (its final batch came from the LAN), that abort
 * is not a failure: run() ends quietly. (A stream-lan run saw the agent exit with
 * "internal error: AbortError" from exactly this race.)
 */
test('a long poll the follower aborted itself, after the stream finished, ends run() without an error', async (t) => {
  let finished = false;
  let polls = 0;
  const host = {
    http: {
      batches: (_q: string, signal: AbortSignal) => {
        polls++;
        return new Promise<unknown[]>((_, reject) => signal.addEventListener('abort', () => reject(Object.assign(new Error('The operation was aborted'), { name: 'AbortError' }))));
      },
    },
    core: {},
    trusted: [],
    log: { debug: () => undefined },
    last: () => ({ batch: 3, stream: 's' }),
    take: () => undefined,
    finished: () => finished,
    kick: () => undefined,
  } as unknown as FollowerHost;
  const f = new BatchFollower(host, 7);
  const run = f.run();
  await new Promise((r) => setTimeout(r, 10));
  t.is(polls, 1, 'polling');
  finished = true; // the final batch arrived from the LAN
  f.close(); // aborts the poll
  await t.notThrowsAsync(run);
  t.is(polls, 1, 'and no new poll');
});
