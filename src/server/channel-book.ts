import { ChannelHead, listChannels, readChannel, setChannel } from '../release/channels';
import { Logger } from '../util/log';
import { CoordinationEngine } from './engine';

/**
 * Where the server reads and moves channel heads (`GET /v1/channels/NAME`, the long polls'
 * watch, rollouts). One server: the files in its store (`<store>/channels/NAME.json`,
 * which `fleetcast publish --channel` writes). Several coordinators: the shared engine
 * as well (docs/scale-out.md).
 */
export interface ChannelBook {
  read(name: string): Promise<ChannelHead | null>;
  set(head: ChannelHead): Promise<void>;
  list(): Promise<ChannelHead[]>;
  /** Several coordinators: pass what this store has on to the engine. */
  sync?(): Promise<void>;
}

/** A channel file is read again at most this often (every reader in between shares the read). */
export const CHANNEL_FILE_CACHE_MS = 250;

/**
 * The store's channel files, each read at most every CHANNEL_FILE_CACHE_MS: `fleetcast
 * publish --channel` writes them from another process, so they are read again rather than
 * watched, but not once per request: at 3,000 idle followers the open/fstat/read/close of
 * the file for every channel poll was about a fifth of the server's busy time (bench/results/idle-fleet.md).
 * A move is seen within CHANNEL_FILE_CACHE_MS (a held poll is checked every 500 ms anyway).
 */
export class FileChannels implements ChannelBook {
  private readonly cache = new Map<string, { at: number; head: Promise<ChannelHead | null> }>();
  constructor(
    private readonly storeDir: string,
    private readonly now: () => number = Date.now,
  ) {}
  read(name: string): Promise<ChannelHead | null> {
    const c = this.cache.get(name);
    if (c && this.now() - c.at < CHANNEL_FILE_CACHE_MS) return c.head;
    const head = readChannel(this.storeDir, name);
    // Names come from requests: keep only channels that exist, and not without bound.
    if (this.cache.size >= 1024) this.cache.clear();
    this.cache.set(name, { at: this.now(), head });
    head.then((h) => h === null && this.cache.delete(name), () => this.cache.delete(name));
    return head;
  }
  async set(head: ChannelHead): Promise<void> {
    this.cache.delete(head.channel);
    await setChannel(this.storeDir, head);
    this.cache.delete(head.channel);
  }
  list(): Promise<ChannelHead[]> {
    return listChannels(this.storeDir);
  }
}

/** The engine's heads are read at most this often per instance (every reader in between shares one query). */
export const SHARED_CHANNELS_CACHE_MS = 500;

/**
 * Channel heads for several coordinators. The engine holds each channel's head; an
 * instance's own store may hold a newer one (`fleetcast publish --channel` ran against
 * it), which then goes to the engine: of the two, the later `publishedAt` wins, so a
 * publish on any instance's store reaches every instance within a sync (sync() runs
 * every cluster tick, and every read compares). The engine's heads are cached for
 * SHARED_CHANNELS_CACHE_MS: an idle fleet's long polls (100,000 agents) cost one query
 * per half second, not one per poll. Without the engine the files alone answer.
 */
export class SharedChannels implements ChannelBook {
  private cache: { at: number; heads: Map<string, ChannelHead> } | null = null;
  private loading: Promise<Map<string, ChannelHead> | null> | null = null;
  private warned = false;
  private readonly files: FileChannels;

  constructor(
    private readonly storeDir: string,
    private readonly engine: CoordinationEngine,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.files = new FileChannels(storeDir, now);
  }

  /** The engine's heads (cached), or null while it cannot be reached. */
  private shared(): Promise<Map<string, ChannelHead> | null> {
    if (this.cache && this.now() - this.cache.at < SHARED_CHANNELS_CACHE_MS) return Promise.resolve(this.cache.heads);
    this.loading ??= this.engine
      .channels()
      .then((list) => {
        this.cache = { at: this.now(), heads: new Map(list.map((h) => [h.channel, h])) };
        this.warned = false;
        return this.cache.heads;
      })
      .catch((err: Error) => {
        if (!this.warned) this.log.warn(`channels: the shared engine cannot be read (${err.message}); answering from this instance's store`);
        this.warned = true;
        return null;
      })
      .finally(() => (this.loading = null));
    return this.loading;
  }

  /** The later of the two heads; a newer local one is passed on to the engine. */
  private async pick(local: ChannelHead | null, heads: Map<string, ChannelHead> | null, name: string): Promise<ChannelHead | null> {
    const shared = heads?.get(name) ?? null;
    if (!heads || !local || (shared && shared.publishedAt >= local.publishedAt)) return shared ?? local;
    await this.engine.putChannel(local).then(
      () => heads.set(name, local),
      (err: Error) => this.log.warn(`channel ${name}: cannot pass its head on to the shared engine: ${err.message}`),
    );
    return local;
  }

  async read(name: string): Promise<ChannelHead | null> {
    const [local, heads] = await Promise.all([this.files.read(name), this.shared()]);
    return this.pick(local, heads, name);
  }

  async set(head: ChannelHead): Promise<void> {
    await this.files.set(head);
    await this.engine.putChannel(head).then(
      () => this.cache?.heads.set(head.channel, head),
      // The file has it: sync() passes it on once the engine is back.
      (err: Error) => this.log.warn(`channel ${head.channel}: cannot keep its head in the shared engine (${err.message}); it goes there once the engine is back`),
    );
  }

  async list(): Promise<ChannelHead[]> {
    const [local, heads] = await Promise.all([listChannels(this.storeDir), this.shared()]);
    const names = new Set([...local.map((h) => h.channel), ...(heads?.keys() ?? [])]);
    const byName = new Map(local.map((h) => [h.channel, h]));
    const out: ChannelHead[] = [];
    for (const n of [...names].sort()) {
      const h = await this.pick(byName.get(n) ?? null, heads, n);
      if (h) out.push(h);
    }
    return out;
  }

  /** Pass this store's newer heads on to the engine (a publish made here while nobody asked us about it). */
  async sync(): Promise<void> {
    await this.list();
  }
}
