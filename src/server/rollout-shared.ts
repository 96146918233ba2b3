import { Logger } from '../util/log';
import { CoordinationEngine } from './engine';
import { Rollout } from './rollout-model';
import { parseRollout } from './rollout-file';

/** Rollouts read back from the engine at most (a bound on a query's size and on memory). */
export const MAX_SHARED_ROLLOUTS = 1000;

/**
 * Rollouts with several coordinators (docs/scale-out.md). A channel's rollouts are run by
 * the instance that owns the channel (its key `channel:NAME`, leased like an allocation):
 * it holds them in memory, answers the channel's polls and commands, and writes every
 * change to the engine as it does to its store's files. The other instances list them
 * from the engine (others(), refreshed each cluster tick) and route requests about them
 * to the owner. When the owner dies, the next instance that gets one of the channel's
 * requests takes the channel and reads its rollouts back from the engine.
 */
export class SharedRollouts {
  private foreign: Rollout[] = [];
  private readAt = -Infinity;
  /** Rollouts whose last write to the engine failed: written again with the next change. */
  private readonly unsent = new Map<string, Rollout>();
  /** Changes handed to put() per rollout: a write covers those made before it started. */
  private readonly changes = new Map<string, number>();
  private warned = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly engine: CoordinationEngine,
    private readonly log: Logger,
  ) {}

  /** Rollouts of a store's files that the engine does not have yet (a single server's store, now one of several). */
  async import(fromFiles: Rollout[]): Promise<void> {
    if (!fromFiles.length) return;
    const have = new Set((await this.engine.rollouts(null, MAX_SHARED_ROLLOUTS)).map((r) => r.id));
    const rows = fromFiles.filter((r) => !have.has(r.id));
    await this.put(rows);
    if (rows.length) this.log.info(`rollouts: ${rows.length} from this store passed on to ${this.engine.name}`);
  }

  /** Write rollouts' state (the owner, after each change, and with none every save interval: what failed is retried). */
  put(changed: Rollout[]): Promise<void> {
    // One write at a time, so an older state never lands after a newer one.
    this.writing = this.writing.then(() => this.write(changed));
    return this.writing;
  }

  private async write(changed: Rollout[]): Promise<void> {
    for (const r of changed) {
      this.unsent.set(r.id, r);
      this.changes.set(r.id, (this.changes.get(r.id) ?? 0) + 1);
    }
    if (!this.unsent.size) return;
    const at = new Map([...this.unsent.keys()].map((id) => [id, this.changes.get(id)]));
    const rows = [...this.unsent.values()].map((r) => ({ id: r.id, channel: r.channel, doc: JSON.stringify(r) }));
    try {
      await this.engine.putRollouts(rows);
      // A rollout changed again while this write ran stays for the next one.
      for (const [id, n] of at) if (this.changes.get(id) === n) this.unsent.delete(id);
      if (this.warned) this.log.info(`rollouts: ${rows.length} rollout(s) written to ${this.engine.name} again`);
      this.warned = false;
    } catch (err) {
      if (!this.warned) this.log.warn(`rollouts: cannot write ${rows.length} rollout(s) to ${this.engine.name} (${(err as Error).message}); kept here and written again until it answers`);
      this.warned = true;
    }
  }

  /** A channel's rollouts as the engine has them (the instance taking the channel runs them from here). */
  async load(channel: string): Promise<Rollout[]> {
    return this.parse(await this.engine.rollouts(channel, MAX_SHARED_ROLLOUTS));
  }

  /**
   * Read every channel's rollouts again (the cluster tick; a request for an id not known
   * here, with `minAgeMs`: not if the last read is younger, so unknown ids cannot make an
   * instance read the table at their own rate): what others() answers until the next.
   */
  async refresh(minAgeMs = 0): Promise<void> {
    if (Date.now() - this.readAt < minAgeMs) return;
    this.readAt = Date.now();
    this.foreign = this.parse(await this.engine.rollouts(null, MAX_SHARED_ROLLOUTS));
  }

  others(): Rollout[] {
    return this.foreign;
  }

  private parse(rows: { id: string; doc: string }[]): Rollout[] {
    const out: Rollout[] = [];
    for (const row of rows) {
      // The engine's rows are parsed like a state file: one damaged row is skipped, not trusted.
      const r = parseRollout(Buffer.from(row.doc));
      if (typeof r === 'string') this.log.warn(`rollouts: ignoring ${row.id} in ${this.engine.name}: ${r}`);
      else out.push(r);
    }
    return out;
  }
}
