import test from 'ava';
import { ChannelHead, readChannel, setChannel } from '../src/release/channels';
import { CHANNEL_FILE_CACHE_MS, FileChannels, SharedChannels } from '../src/server/channel-book';
import { CoordinationEngine } from '../src/server/engine';
import { silentLogger } from '../src/util/log';
import { tmpdir } from './helpers/fleet';

/** The engine's channel table alone (docs/scale-out.md): later publishedAt wins, as PostgresEngine.putChannel does. */
function fakeEngine() {
  const heads = new Map<string, ChannelHead>();
  const calls = { channels: 0, puts: 0 };
  let down = false;
  const e = {
    name: 'fake',
    async channels() {
      calls.channels++;
      if (down) throw new Error('connection refused');
      return [...heads.values()];
    },
    async putChannel(h: ChannelHead) {
      calls.puts++;
      if (down) throw new Error('connection refused');
      const old = heads.get(h.channel);
      if (!old || old.publishedAt < h.publishedAt) heads.set(h.channel, h);
    },
  } as unknown as CoordinationEngine;
  return { e, heads, calls, setDown: (d: boolean) => (down = d) };
}

const R1 = '1'.repeat(32);
const R2 = '2'.repeat(32);
const R3 = '3'.repeat(32);
const head = (release: string, publishedAt: number, channel = 'stable'): ChannelHead => ({ channel, release, name: `fw-${release[0]}`, publishedAt });

test('a newer head in the store goes to the engine; a newer head in the engine wins over the store', async (t) => {
  const dir = await tmpdir(t);
  const f = fakeEngine();
  let clock = 0;
  const book = new SharedChannels(dir, f.e, silentLogger, () => clock);
  t.is(await book.read('stable'), null);
  await setChannel(dir, head(R1, 100)); // `fleetcast publish --channel stable` on this instance's store
  clock += 1000;
  t.is((await book.read('stable'))?.release, R1);
  t.is(f.heads.get('stable')?.release, R1, 'passed on to the engine');
  f.heads.set('stable', head(R2, 200)); // another instance moved it
  clock += 1000;
  t.is((await book.read('stable'))?.release, R2);
  t.is((await readChannel(dir, 'stable'))?.release, R1, 'the store keeps what was published on it');
  // An older publish on this store does not win over the engine's later one.
  await setChannel(dir, head(R3, 150));
  clock += 1000;
  t.is((await book.read('stable'))?.release, R2);
  t.deepEqual((await book.list()).map((h) => h.release), [R2]);
});

test('the engine is read once per cache period, however many reads; while it is down the store answers, and set() keeps the head for later', async (t) => {
  const dir = await tmpdir(t);
  const f = fakeEngine();
  let clock = 0;
  const book = new SharedChannels(dir, f.e, silentLogger, () => clock);
  f.heads.set('stable', head(R1, 100));
  await Promise.all(Array.from({ length: 50 }, () => book.read('stable')));
  for (let i = 0; i < 50; i++) await book.read('stable');
  t.is(f.calls.channels, 1, 'one query for 100 reads within the cache period');
  clock += 1000;
  f.setDown(true);
  await setChannel(dir, head(R2, 200));
  t.is((await book.read('stable'))?.release, R2, 'the store answers while the engine is down');
  await book.set(head(R3, 300)); // a rollout completed meanwhile: the file has it
  t.is((await readChannel(dir, 'stable'))?.release, R3);
  f.setDown(false);
  clock += 1000;
  await book.sync();
  t.is(f.heads.get('stable')?.release, R3, 'passed on once the engine is back');
});

test('one server reads a channel file at most once per cache period; its own moves and a new channel are seen at once', async (t) => {
  const dir = await tmpdir(t);
  let clock = 0;
  const book = new FileChannels(dir, () => clock);
  t.is(await book.read('stable'), null);
  await setChannel(dir, head(R1, 100)); // `fleetcast publish --channel stable` from another process
  t.is((await book.read('stable'))?.release, R1, 'a channel that did not exist is read again at once');
  await setChannel(dir, head(R2, 200));
  clock += CHANNEL_FILE_CACHE_MS - 1;
  t.is((await book.read('stable'))?.release, R1, 'within the cache period: the head read before');
  clock += 1;
  t.is((await book.read('stable'))?.release, R2, 'after it: read again');
  await book.set(head(R3, 300)); // a rollout completing moves it through the book
  t.is((await book.read('stable'))?.release, R3, 'a move through the book is seen at once');
});
