import { Logger } from '../util/log';
import { FOLLOWING_MAX_MS, MAX_FOLDED_RECEIPTS } from '../wire/http-bodies';
import { MapMirror } from '../wire/map-mirror';
import type { CopyDestination, HeartbeatAnswer14 } from '../wire/http-bodies';
import { ControlClient, ControlError, LeaseResponse, SplitMapResponse } from './control-client';

/** The most units one folded lease request asks for: the server grants up to the member's depth anyway. */
const FOLDED_LEASE_UNITS = 64;
/** A kicked heartbeat (a lease request) waits this long for others to join it. */
const KICK_DELAY_MS = 5;
/** The longest heartbeat interval an answer can set (protocol 1.8, section 20: an idle member whose channel poll is held; an hour in 1.7, 900 s in 1.6). */
export const MAX_HEARTBEAT_MS = FOLLOWING_MAX_MS;
/** The longest interval an idle member is asked for without a held poll (section 18). */
export const MAX_IDLE_HEARTBEAT_MS = 900_000;

/**
 * What rides on the next heartbeat (protocol 1.4, docs/protocol.md section 14): receipt
 * notices, and a lease request whose grant comes back in the answer. The fetch side
 * (wan-fetch.ts) hands them here instead of posting /v1/receipt and /v1/lease.
 */
export class HeartbeatFold {
  /** The server answered in the 1.4 form: folding is on. */
  active = false;
  private receipts: { unit: number; at: number }[] = [];
  private waiters: { resolve: (g: LeaseResponse) => void; reject: (err: unknown) => void }[] = [];
  constructor(private readonly kick: () => void) {}

  /** The unit is verified: the notice goes with the next heartbeat, with its age. */
  receipt(unit: number, at = Date.now()): void {
    this.receipts.push({ unit, at });
  }

  /** Ask for units: a heartbeat goes out at once with the request, and its answer grants them. */
  lease(): Promise<LeaseResponse> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  /** Heartbeats stopped: lease requests waiting for one get an empty grant. */
  cancel(): void {
    for (const w of this.waiters.splice(0)) w.resolve({ units: [], retryAfterMs: 0, exhausted: false });
  }

  /** The fields for one heartbeat; `settle` is called with its answer (or error). */
  take(now: number): { fields: Record<string, unknown>; settle: (a: HeartbeatAnswer14 | null, copyTo: CopyDestination[], err?: unknown) => void } {
    const rs = this.receipts.splice(0, MAX_FOLDED_RECEIPTS);
    const ws = this.waiters.splice(0);
    const fields: Record<string, unknown> = {};
    if (rs.length) {
      fields.receipts = rs.map((r) => r.unit);
      fields.receiptAgesMs = rs.map((r) => Math.max(0, now - r.at));
    }
    if (ws.length) fields.lease = FOLDED_LEASE_UNITS;
    return {
      fields,
      settle: (a, copyTo, err) => {
        if (err !== undefined || !a) {
          this.receipts.unshift(...rs); // they go with the next beat
          for (const w of ws) w.reject(err);
          return;
        }
        const g = a.lease ?? { units: [], retryAfterMs: 0, exhausted: false };
        const origin = typeof g.origin === 'string' ? { origin: g.origin } : {}; // an HTTP range origin for the units (docs/scale-out.md)
        for (const w of ws) w.resolve({ units: g.units, hedged: g.hedged, retryAfterMs: g.retryAfterMs, exhausted: g.exhausted, copyTo, ...origin });
      },
    };
  }
}

/**
 * The agent's heartbeats (docs/protocol.md, join/heartbeat): `join` on start and after
 * the server forgot us, then one heartbeat per interval. The server picks the interval by
 * phase (fast while the group transfers, slow when all is done) and, in 1.4, by load:
 * every answer may change it. With a 1.4 server the answers carry only what changed in
 * the split map since the version we saw (MapMirror keeps the whole map), and receipts
 * and lease requests ride on the heartbeats (HeartbeatFold). A 1.3 server refuses the
 * 1.4 fields (400, unknown field): we then speak 1.3 to it.
 */
export class Heartbeats {
  ms = 1000;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** Speak 1.4 (until a server refuses its fields). */
  private v14 = true;
  private mirror = new MapMirror();
  /** What 1.4 answers send only when they change. */
  private kept: { groupKey?: string; policy?: HeartbeatAnswer14['policy']; start?: HeartbeatAnswer14['start']; copyTo: CopyDestination[]; copyTree?: number } = { copyTo: [] };
  /** A 1.4 server refused `copyTree` (400, unknown field): no copy trees with it. */
  private treeRefused = false;
  /** Beats run one at a time; a kick during one makes one more. */
  private running: Promise<unknown> = Promise.resolve();
  private kickTimer: NodeJS.Timeout | null = null;
  readonly fold: HeartbeatFold;

  constructor(
    private readonly client: ControlClient,
    private readonly log: Logger,
    /** What this member tells the server each time. */
    private readonly body: () => Record<string, unknown>,
    /** The server's answer: the split map. */
    private readonly answer: (map: SplitMapResponse) => void,
  ) {
    this.fold = new HeartbeatFold(() => this.kick());
    client.fold = this.fold;
  }

  /** A beat soon, outside the interval (a lease request is waiting). */
  private kick(): void {
    if (this.kickTimer || this.stopped) return;
    this.kickTimer = setTimeout(() => {
      this.kickTimer = null;
      this.beat().catch((err) => this.failed(err));
    }, KICK_DELAY_MS);
  }

  beat(join = false): Promise<SplitMapResponse | null> {
    const next = this.running.catch(() => undefined).then(() => this.beatNow(join));
    this.running = next;
    return next;
  }

  private async beatNow(join: boolean): Promise<SplitMapResponse | null> {
    if (this.stopped) return null;
    const path = join ? '/v1/join' : '/v1/heartbeat';
    const body = this.body();
    if (this.treeRefused) delete body.copyTree;
    if (!this.v14) return this.took(await this.client.post<SplitMapResponse>(path, body));
    const fold = this.fold.take(Date.now());
    const version = this.mirror.epoch !== undefined && this.mirror.version !== undefined ? { mapEpoch: this.mirror.epoch, mapVersion: this.mirror.version } : { mapVersion: 0 };
    let raw: HeartbeatAnswer14;
    try {
      raw = await this.client.post<HeartbeatAnswer14>(path, { ...body, ...version, ...fold.fields });
    } catch (err) {
      fold.settle(null, this.kept.copyTo, err);
      if (err instanceof ControlError && err.status === 400 && /unknown field "copyTree"/.test(err.message) && !this.treeRefused) {
        this.log.info(`the server speaks protocol 1.4 (${err.message}): copies to every other site's gateway, no copy trees`);
        this.treeRefused = true;
        return this.beatNow(join);
      }
      if (err instanceof ControlError && err.status === 400 && /unknown field "(mapVersion|mapEpoch|receipts|receiptAgesMs|lease)"/.test(err.message)) {
        this.log.info(`the server speaks protocol 1.3 (${err.message}): whole maps and separate lease and receipt requests from now on`);
        this.v14 = false;
        this.fold.active = false;
        return this.beatNow(join);
      }
      throw err;
    }
    let map: SplitMapResponse;
    try {
      if (raw.full) this.kept = { groupKey: raw.groupKey, policy: raw.policy, start: raw.start, copyTo: raw.copyTo ?? [], copyTree: raw.copyTree };
      else if (raw.copyTo) Object.assign(this.kept, { copyTo: raw.copyTo, copyTree: raw.copyTree }); // 1.5: copyTree goes with copyTo
      const view = this.mirror.apply(raw);
      map = { ...view, heartbeatMs: raw.heartbeatMs, groupKey: this.kept.groupKey, policy: this.kept.policy, start: this.kept.start, lanStart: raw.lanStart !== false, copyTo: this.kept.copyTo, ...(this.kept.copyTree ? { copyTree: this.kept.copyTree } : {}) };
    } catch (err) {
      // A malformed answer or a delta we cannot apply: ask for the whole map next time.
      this.mirror.reset();
      fold.settle(null, this.kept.copyTo, err);
      throw new Error(`heartbeat answer: ${(err as Error).message}`);
    }
    this.fold.active = true;
    fold.settle(raw, this.kept.copyTo);
    return this.took(map);
  }

  private took(map: SplitMapResponse): SplitMapResponse {
    // 1.8: up to a day (an idle member seen through its held channel poll); 1.7: an hour; 1.6: 900 s; 50 … 60,000 before.
    const every = Math.min(MAX_HEARTBEAT_MS, Math.max(50, Number(map.heartbeatMs) || 1000));
    if (every !== this.ms) {
      this.ms = every;
      if (this.timer && !this.stopped) this.start();
    }
    this.answer(map);
    return map;
  }

  private failed(err: unknown): Promise<unknown> | undefined {
    // The server forgot us, or remembers that we left: join again.
    if (err instanceof ControlError && err.code === 'NOT_JOINED') {
      this.mirror.reset();
      return this.beat(true).catch(() => undefined);
    }
    this.log.debug(`heartbeat: ${(err as Error).message}`);
    return undefined;
  }

  /**
   * 1.7 (section 19): the held channel poll that kept us alive ended without doing so (it
   * failed, or its answer left out `member`, as after a server restart): an interval past
   * the idle one of section 18 no longer holds, so beat within a second until an answer
   * sets one again (a restarted server then has us join at once, not in an hour).
   */
  unheld(): void {
    if (this.stopped || this.ms <= MAX_IDLE_HEARTBEAT_MS) return;
    this.ms = 1000;
    if (this.timer) this.start();
  }

  start(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => {
      this.beat().catch((err) => this.failed(err));
    }, this.ms);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.kickTimer) clearTimeout(this.kickTimer);
    this.kickTimer = null;
    this.fold.cancel();
  }
}
