import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { fragmentBytesForMtu, readMtu, resolveInterface } from '../net/interface';
import { batchFromObject, checkChain, coversUnit, parseBatch, parseStreamHead, StreamBatch, unitHash } from '../release/stream-manifest';
import { BATCH_WAIT_MS, BatchFollower } from './stream-follow';
import { DirLock, lockStorage } from '../storage/dir-lock';
import { makeDir } from '../storage/make-dir';
import type { Transport } from '../transport/transport';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { Logger, silentLogger } from '../util/log';
import type { StreamBeatAnswer } from '../wire/stream-control';
import { openTransports, persistentMemberId } from './agent-setup';
import { newAgentStats } from './agent-types';
import type { AgentStats, MemberOptions } from './agent-types';
import { sleep } from './control-client';
import { CoreDriver } from './core-driver';
import { AGENT_DEFAULTS } from './core/defaults';
import { leaseWaiting, MapTokens, streamHave } from './stream-beat';
import { StreamCore, StreamWindow } from './stream-core';
import { StreamDisk } from './stream-disk';
import { StreamDelivery, StreamDeliveryOptions } from './stream-delivery';
import { StreamHttp } from './stream-http';
import { StreamStages } from './stream-stages';

export interface StreamAgentOptions extends StreamDeliveryOptions, MemberOptions {
  stream: string;
  /** live (the newest batch), beginning (the first unit retained) or a unit number; ignored when resuming. */
  start: 'live' | 'beginning' | number;
}

/** Downloads of leased units at once. */
const FETCH_WORKERS = 3;
/**
 * After the end, how long an agent that holds every unit stays to answer its peers' NACKs
 * while some LAN peer has not announced that it holds them all.
 */
const STREAM_LINGER_MS = 10_000;

/**
 * `fleetcast agent --stream NAME`: takes a stream on its LAN as the release agent
 * (agent.ts) takes a release. A driver around the same LAN core (stream-core.ts): it
 * follows the stream's signed batches (stream-follow.ts: a long poll, or a LAN peer's
 * BATCH packets; each verified and chained), beats to the
 * stream's allocator (server/stream-alloc.ts) for units to fetch and who holds what,
 * downloads its leased units (multicast on the LAN as they arrive, cut-through), and takes
 * the rest from its peers with NACK repair. Verified units go to disk (stream-disk.ts);
 * stream-delivery.ts writes them to the sink in order, exactly once.
 */
export class StreamAgent {
  readonly stats: AgentStats;
  member = '';
  core!: StreamCore;
  delivery!: StreamDelivery;
  private disk!: StreamDisk;
  private http!: StreamHttp;
  private driver: CoreDriver | null = null;
  follower!: BatchFollower;
  private lan: Transport | null = null;
  private cross: Transport | null = null;
  private lock: DirLock | null = null;
  private readonly abort = new AbortController();
  private readonly log: Logger;
  private cur!: StreamBatch;
  /** Per-unit stage times (stream-stages.ts). */
  readonly stages = new StreamStages();
  private ended = false;
  private closed = false;
  private address = '';
  private dataPort = 0;
  private beatWanted = false;
  private joined = false;
  private readonly tokens = new MapTokens();
  private beatWake: (() => void) | null = null;
  private fetchWake: (() => void) | null = null;
  private readonly inFlight = new Map<number, number>();
  private readonly receipts: { unit: number; at: number }[] = [];
  private done!: { resolve: () => void; reject: (e: Error) => void };
  private readonly finished: Promise<void>;
  /** Where delivery started in this run: the unit, and its byte in the stream (null until its batch is known). */
  startedAt: { unit: number; byte: number | null } | null = null;
  /** The last heartbeat answer (status, tests). */
  lastAnswer: StreamBeatAnswer | null = null;

  constructor(private readonly opts: StreamAgentOptions) {
    this.log = opts.logger ?? silentLogger;
    this.stats = newAgentStats();
    this.finished = new Promise((resolve, reject) => (this.done = { resolve, reject }));
    this.finished.catch(() => undefined);
  }

  get group(): string {
    return this.opts.group;
  }
  get wideGroup(): string | undefined {
    return this.opts.wideGroup;
  }
  get streamName(): string {
    return this.opts.stream;
  }
  get serverUrl(): string {
    return this.opts.server.url;
  }

  /** Resolves once the stream ended and every unit up to its end is delivered, or the agent was closed. */
  async run(): Promise<void> {
    await this.setup();
    return this.finished;
  }

  private fail(err: Error): void {
    if (!this.closed) this.done.reject(err);
  }

  private async setup(): Promise<void> {
    const o = this.opts;
    const startedMs = Date.now();
    const dir = path.join(o.storageDir, 'streams', o.stream);
    await makeDir(dir).catch((err) => {
      throw fromSystemError(err, `creating ${dir}`);
    });
    this.lock = await lockStorage(dir);
    this.member = o.member ?? (await persistentMemberId(o.storageDir));
    this.stats.member = this.member;
    this.disk = await StreamDisk.open(o.storageDir, o.stream);
    this.http = new StreamHttp(o.server, o.stream, this.abort.signal, this.log);
    const pos = await this.disk.position();
    let first: unknown[] = [];
    let next: number;
    if (pos) {
      if (pos.stream !== o.stream) throw new FleetcastError('BAD_POSITION', `${this.disk.positionFile} belongs to stream ${pos.stream}, not ${o.stream}`, ExitCode.DATAERR);
      this.cur = parseBatch(Buffer.from(pos.batch), o.trustedKeys);
      if (this.cur.stream !== o.stream || this.cur.id !== pos.id) throw new FleetcastError('BAD_POSITION', `${this.disk.positionFile}: its batch is not of stream ${o.stream}`, ExitCode.DATAERR);
      next = pos.nextUnit;
      this.log.info(`stream ${o.stream}: resuming at unit ${next} (sink byte ${pos.sinkBytes})`);
      this.startedAt = { unit: next, byte: null };
    } else {
      const head = parseStreamHead(await this.http.get(''));
      const q = o.start === 'live' ? `from=${head.lastBatch}` : `unit=${o.start === 'beginning' ? head.firstUnit : o.start}`;
      do first = await this.http.batches(`${q}&waitMs=${BATCH_WAIT_MS}`);
      while (first.length === 0 && !this.http.lastEnded);
      if (first.length === 0) throw new FleetcastError('NO_BATCH', `stream ${o.stream} ended before unit ${o.start}`, ExitCode.DATAERR);
      this.cur = batchFromObject(first.shift(), o.trustedKeys);
      if (this.cur.stream !== o.stream) throw new FleetcastError('BAD_BATCH', `the server answered a batch of stream ${this.cur.stream} for ${o.stream}`, ExitCode.DATAERR);
      next = o.start === 'live' ? this.cur.first : o.start === 'beginning' ? head.firstUnit : o.start;
      if (this.cur.first > next) throw new FleetcastError('GONE', `stream ${o.stream}: units ${next} to ${this.cur.first - 1} were dropped (retention) before they could be taken`, ExitCode.UNAVAILABLE);
      const at = coversUnit(this.cur, next) ? ` (stream byte ${this.cur.offset + (next - this.cur.first) * this.cur.unitSize})` : ', once it is published';
      this.log.info(`stream ${o.stream}: starting at unit ${next}${at}`);
      this.startedAt = { unit: next, byte: coversUnit(this.cur, next) ? this.cur.offset + (next - this.cur.first) * this.cur.unitSize : null };
    }
    const now = Date.now();
    const iface = resolveInterface(o.interface, o.multicast.address.includes(':') ? 6 : 4);
    this.address = iface.address;
    const fragmentBytes = o.fragmentBytes ?? fragmentBytesForMtu(await readMtu(iface.name), o.multicast.address.includes(':'));
    const window = new StreamWindow(this.cur.id, this.cur.unitSize);
    const random = o.random ?? Math.random;
    const senderId = randomBytes(4).readUInt32BE(0) || 1;
    const rate = o.rateBytesPerSec ?? AGENT_DEFAULTS.rateBytesPerSec;
    this.core = new StreamCore({ member: this.member, group: o.group, wideGroup: o.wideGroup, senderId, fragmentBytes, rateBytesPerSec: rate, crossRateBytesPerSec: AGENT_DEFAULTS.crossRateBytesPerSec, controlSeqStart: BigInt(now) * 1000n, random, logger: this.log, stats: this.stats }, window, now);
    if (this.stages.enabled) this.core.repairTrace.sink = (u, ev, t, n) => this.stages.repair(u, ev, t, n);
    this.core.batchVerified(this.cur);
    this.stages.known(this.cur.first, this.cur.count, Date.parse(this.cur.time), Date.now());
    this.disk.onHeld = (u) => this.stages.held(u, Date.now());
    this.core.skipBefore(next);
    for (const u of this.disk.held) this.core.heldOnDisk(u);
    this.delivery = await StreamDelivery.open(o, this.disk, this.core, this.cur, next, pos?.sinkBytes ?? null, this.log);
    this.delivery.onDelivered = (u) => this.stages.delivered(u, Date.now());
    this.delivery.latencyFrom = startedMs;
    const t = await openTransports({ ...o, releaseId: '', multicast: o.multicast } as never, iface.address, fragmentBytes, random, this.log);
    this.lan = t.lan;
    this.cross = t.cross;
    this.stats.transport = t.lan.info.kind;
    this.dataPort = t.cross.localPort?.() ?? 0;
    this.driver = new CoreDriver(this.core, t.lan, t.cross, {
      store: this.disk,
      readBuffer: (u) => this.core.takeBuffer(window.lengths[u] ?? window.unitSize),
      log: this.log,
      stored: () => this.delivery.pump(),
      fail: (err) => this.fail(err),
      relay: () => undefined, // no relays for streams yet: the LAN repairs, and leases hedge
      wake: () => this.fetchWake?.(),
      complete: () => undefined, // every known unit held: nothing to finish for a stream
      afterFlush: () => undefined,
    });
    this.delivery.finished.then(() => this.linger(), (err: Error) => this.fail(err));
    for (const b of first) this.take(batchFromObject(b, o.trustedKeys));
    if (this.cur.final) this.endAt();
    this.follower = new BatchFollower(
      { http: this.http, core: this.core, trusted: o.trustedKeys, log: this.log, last: () => this.delivery.lastBatch, take: (b) => this.take(b), finished: () => this.closed || this.ended, kick: () => this.driver?.kick() },
      senderId,
    );
    void this.follower.run().catch((err: Error) => this.fail(err));
    void this.beatLoop().catch((err: Error) => this.fail(err));
    for (let i = 0; i < FETCH_WORKERS; i++) void this.fetchLoop().catch((err: Error) => this.fail(err));
    this.driver.kick();
  }

  /**
   * The stream ended and every unit up to its end is delivered: say so on the LAN (the
   * announce's complete flag), then stay while a LAN peer still lacks units and may NACK
   * them, up to STREAM_LINGER_MS. Without it, the last units' holders left at once and a
   * peer that missed a fragment of one waited the core's orphanRepairMs (1 s) for another
   * holder to answer: the stream's whole latency tail at 3% loss was its last units.
   */
  private async linger(): Promise<void> {
    this.stages.flush();
    if (this.ended && !this.closed) {
      this.core.fileComplete(Date.now());
      this.driver?.kick();
      const limit = Date.now() + STREAM_LINGER_MS;
      const alone = () => (this.lastAnswer?.members.filter((m) => m.group === this.opts.group).length ?? 0) <= 1;
      while (!this.closed && Date.now() < limit && !alone() && !this.core.lanPeersComplete(Date.now())) await sleep(50, this.abort.signal).catch(() => undefined);
    }
    this.done.resolve();
  }

  /** A verified batch after the current one: chained (BAD_CHAIN throws), its units known to the core. */
  private take(b: StreamBatch): void {
    checkChain(this.delivery.lastBatch, b);
    this.delivery.addBatch(b);
    this.core.batchVerified(b);
    this.stages.known(b.first, b.count, Date.parse(b.time), Date.now());
    if (b.final) this.endAt();
    this.beatSoon();
    this.delivery.pump();
  }

  private endAt(): void {
    this.ended = true;
    this.delivery.endAt(this.core.window.unitCount);
  }

  private beatSoon(): void {
    this.beatWanted = true;
    this.beatWake?.();
  }

  /** Heartbeats: at the interval the server asks, and at once on a new batch, or a download that ended while a unit waits for a lessee. */
  private async beatLoop(): Promise<void> {
    let ms = 1000;
    while (!this.closed) {
      this.beatWanted = false;
      const a = await this.beat();
      if (a) ms = a.heartbeatMs;
      if (this.beatWanted) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, ms);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.beatWake = done;
      });
      this.beatWake = null;
    }
  }

  private async beat(): Promise<StreamBeatAnswer | null> {
    const { from, have } = streamHave(this.disk.held, this.delivery.next);
    const receipts = this.receipts.splice(0, 256);
    const now = Date.now();
    const fetching = [...this.inFlight.keys()];
    const want = (this.ended && this.core.window.unitCount <= this.delivery.next) || this.delivery.full ? 0 : Math.max(0, FETCH_WORKERS + 1 - this.inFlight.size - this.core.leasedCount);
    const body = {
      v: 1,
      group: this.opts.group,
      member: this.member,
      ...(this.opts.wideGroup ? { wideGroup: this.opts.wideGroup } : {}),
      address: this.address,
      ...(this.dataPort ? { dataPort: this.dataPort } : {}),
      haveFrom: from,
      have: Buffer.from(have).toString('base64'),
      receipts: receipts.map((r) => r.unit),
      receiptAgesMs: receipts.map((r) => Math.max(0, now - r.at)),
      fetching,
      fetchingBytes: fetching.map((u) => this.inFlight.get(u) ?? 0),
      forwarded: this.stats.fragmentsForwarded,
      lanBytes: this.stats.lanBytes,
      lease: want,
      ...(this.joined ? {} : { join: true }),
      ...this.tokens.field(),
    };
    let a: StreamBeatAnswer;
    try {
      a = this.tokens.parse(await this.http.post('/heartbeat', body));
    } catch (err) {
      const again = this.tokens.refused(err, this.log);
      if (err instanceof FleetcastError && !again) throw err;
      this.receipts.unshift(...receipts); // they go with the next one
      if (again) return this.beat();
      this.log.warn(`stream heartbeat: ${(err as Error).message}`);
      await sleep(500, this.abort.signal).catch(() => undefined);
      return null;
    }
    this.lastAnswer = a;
    this.joined = true;
    this.follower.answer(a);
    const t = Date.now();
    // Holders by absolute unit; entries outside the window are left out (no holder).
    const holders: number[] = [];
    a.holders.forEach((h, i) => (holders[a.holdersFrom + i] = h));
    this.core.setSplitMap({ members: a.members, holders, groupComplete: false, groupKey: a.groupKey, lanStart: true, copyTo: a.copyTo }, t);
    if (a.firstUnit > this.core.skipped) this.delivery.retained(a.firstUnit);
    const units = a.lease.units.filter((u) => u >= this.delivery.next && !this.core.has(u));
    // The copy destinations go with the grant (as a release lease answer carries them): without them every
    // grant cleared the map's copyTo, and a wide-area group's units crossed only by NACK repair, a second late.
    if (units.length) this.core.leaseGranted({ units, copyTo: a.copyTo }, t);
    for (const u of units) this.stages.leased(u, t);
    this.driver?.kick();
    return a;
  }

  /** One download worker: leased units from the server, multicast as they arrive, verified, stored. */
  private async fetchLoop(): Promise<void> {
    while (!this.closed) {
      const u = this.core.takeLeased();
      if (u === undefined) {
        await new Promise<void>((resolve) => {
          const prev = this.fetchWake;
          this.fetchWake = () => {
            prev?.();
            resolve();
          };
        });
        this.fetchWake = null;
        continue;
      }
      // Leased from the head the server read: our batch follower may be a moment behind it.
      for (let i = 0; i < 500 && !this.closed && !this.core.window.known(u) && u >= this.core.skipped; i++) await sleep(10, this.abort.signal).catch(() => undefined);
      if (this.core.has(u) || !this.core.window.known(u)) continue;
      // The receipt rides the next beat (with its age, so the overhead sample is the same): a beat of its own
      // only when a unit waits for a lessee, or the fetch failed (not a heartbeat per own unit on top of one per batch).
      if (!(await this.fetchUnit(u)) || leaseWaiting(this.lastAnswer, this.delivery.next, (x) => !this.core.has(x) && !this.inFlight.has(x))) this.beatSoon();
    }
  }

  /** Downloads, verifies and stores leased unit u; true when it is ours now. */
  private async fetchUnit(u: number): Promise<boolean> {
    const w = this.core.window;
    const len = w.lengths[u];
    const buf = this.core.takeBuffer(len);
    let off = 0;
    this.inFlight.set(u, 0);
    this.core.fetchStarted(u, Date.now());
    let ok = false;
    try {
      const status = await this.http.unit(u, this.member, (chunk) => {
        if (off + chunk.length > len) throw new Error(`unit ${u} is longer than its signed ${len} bytes`);
        buf.set(chunk, off);
        off += chunk.length;
        this.stats.wanBytes += chunk.length;
        this.inFlight.set(u, off);
        this.core.fetchProgress(u, buf, off, Date.now());
        this.driver?.kick();
      });
      if (status === 410) this.log.warn(`stream ${this.opts.stream}: unit ${u} was dropped by retention before it was fetched`);
      else if (off !== len || unitHash(buf.subarray(0, len)) !== w.units[u]) {
        this.stats.unitsRejected++;
        this.log.warn(`stream ${this.opts.stream}: unit ${u} from the server does not match its signed hash; discarded`);
      } else {
        this.stages.fetched(u, Date.now());
        await this.disk.writeUnit(u, buf.subarray(0, len));
        ok = true;
      }
    } catch (err) {
      if (this.closed) return false;
      if (err instanceof FleetcastError && err.exitCode !== ExitCode.UNAVAILABLE) throw err;
      this.log.warn(`stream ${this.opts.stream}: fetching unit ${u}: ${(err as Error).message}`);
    } finally {
      this.inFlight.delete(u);
      this.core.fetchEnded(u, Date.now());
    }
    if (ok) {
      this.core.unitFetched(u, buf, Date.now());
      this.receipts.push({ unit: u, at: Date.now() });
      this.delivery.pump();
    } else this.core.giveBuffer(buf);
    this.driver?.kick();
    return ok;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.done.resolve(); // stopped: run() ends (a restart goes on from the saved position)
    this.beatWake?.();
    this.fetchWake?.();
    this.driver?.close();
    this.follower?.close();
    this.abort.abort();
    this.stages.flush();
    await this.delivery?.close().catch(() => undefined);
    await this.cross?.close();
    await this.lan?.close();
    await this.lock?.release();
  }
}
