import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CHANNEL_RE } from '../release/channels';
import { isName } from '../wire/ids';
import { ReleaseStore } from '../release/store';
import { writeAtomic } from '../storage/files';
import { Logger } from '../util/log';
import { MetricsRegistry } from '../util/metrics';
import { OneAtATime } from '../util/one-at-a-time';
import { abort, createRollout, directive, isActiveRollout, isRolloutId, parseRollout, pause, report, ReportedState, resume, Rollout, summary, tick } from './rollout';
import { ApiError, parsePollBody, parseStartBody, readJson } from './rollout-bodies';
import type { ChannelBook } from './channel-book';
import type { SharedRollouts } from './rollout-shared';
import { FLEET_PAGE } from './fleet-page';

/**
 * The rollout endpoints (docs/protocol.md, "Rollouts") and their durable state:
 * `<store>/rollouts/<id>.json`, one file per rollout, and `<store>/rollouts/members.json`,
 * the members seen following each channel. Every file is replaced atomically
 * (write, fsync, rename). A state change (a wave opens, a halt, an operator's command)
 * is written before the answer goes out; members' reports are written within
 * SAVE_INTERVAL_MS, and agents repeat their state on every poll, so a restart loses
 * nothing an agent cannot tell again.
 */
export interface RolloutServiceOptions {
  storeDir: string;
  store: ReleaseStore;
  log: Logger;
  now: () => number;
  channels: ChannelBook;
  /**
   * Several coordinators: rollouts are kept in the shared engine too, and this instance
   * holds (and moves along) only those of the channels it owns (server-cluster.ts).
   */
  shared?: SharedRollouts;
}

const SAVE_INTERVAL_MS = 500;
/** A channel's members are those seen polling within this long (the same memory as members.json). */
const CHANNEL_MEMBER_MEMORY_MS = 10 * 60 * 1000;
const MAX_CHANNEL_MEMBERS = 200_000;
/** members.json is rewritten for members' times alone at most this often (a restart's followers poll again within seconds). */
const SEEN_REFRESH_MS = 60_000;

/** A member seen following a channel, as members.json keeps it: channel -> member -> this. */
type SavedSeen = Pick<Seen, 'group' | 'lastSeen'>;

/** A member seen following a channel. */
interface Seen {
  group: string;
  lastSeen: number;
  held: number;
}

export class RolloutService {
  private readonly rollouts = new Map<string, Rollout>();
  /** channel -> member -> { group, lastSeen, held: its channel polls held now (1.7, not saved) } */
  private readonly seen = new Map<string, Map<string, Seen>>();
  private readonly dirty = new Set<string>();
  private seenDirty = false;
  /** Only members' times moved since members.json was written (SEEN_REFRESH_MS), and when it was. */
  private seenStale = false;
  private seenSavedAt = -Infinity;
  private timer: NodeJS.Timeout | null = null;
  private readonly saving = new OneAtATime();
  /** Counted for the metrics. */
  readonly halts = { total: 0 };

  constructor(private readonly o: RolloutServiceOptions) {}

  private get dir(): string {
    return path.join(this.o.storeDir, 'rollouts');
  }

  async load(): Promise<void> {
    let names: string[] = [];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      /* no rollouts yet */
    }
    const fromFiles: Rollout[] = [];
    for (const n of names) {
      if (!n.endsWith('.json') || !isRolloutId(n.slice(0, -5))) continue;
      const file = path.join(this.dir, n);
      const r = parseRollout(await fs.readFile(file));
      if (typeof r === 'string') this.o.log.warn(`ignoring ${file}: ${r}`);
      else fromFiles.push(r);
    }
    // Several coordinators: the store's rollouts go to the engine (if it lacks them), and a
    // channel's rollouts come back from there when this instance takes the channel (adopt).
    if (this.o.shared) await this.o.shared.import(fromFiles);
    else for (const r of fromFiles) this.rollouts.set(r.id, r);
    try {
      const j = JSON.parse(await fs.readFile(path.join(this.dir, 'members.json'), 'utf8')) as Record<string, Record<string, SavedSeen>>;
      for (const [ch, members] of Object.entries(j)) {
        if (!CHANNEL_RE.test(ch) || typeof members !== 'object' || members === null) continue;
        const m = new Map<string, Seen>();
        for (const [id, v] of Object.entries(members)) if (isName(id) && v && isName(v.group) && typeof v.lastSeen === 'number') m.set(id, { group: v.group, lastSeen: v.lastSeen, held: 0 });
        this.seen.set(ch, m);
      }
    } catch {
      /* none yet, or damaged: members poll again within seconds */
    }
    const active = [...this.rollouts.values()].filter(isActiveRollout);
    if (active.length) this.o.log.info(`rollouts: continuing ${active.map((r) => `${r.id} (${r.channel}, ${r.state}, wave ${r.openWave + 1}/${r.waves.length})`).join(', ')}`);
    this.timer = setInterval(() => void this.periodic(), SAVE_INTERVAL_MS);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.seenStale) this.seenDirty = true;
    await this.flush();
  }

  /** --wave-wait passes with time, not only with reports. */
  private async periodic(): Promise<void> {
    const now = this.o.now();
    for (const r of this.rollouts.values()) if (r.state === 'running') await this.after(r, tick(r, now));
    if (this.seenStale && now - this.seenSavedAt >= SEEN_REFRESH_MS) this.seenDirty = true;
    await this.flush();
    await this.o.shared?.put([]); // what the engine refused before (it was down)
  }

  /** Log what happened; on a state change write the rollout now, and move the channel on completion. */
  private async after(r: Rollout, lines: string[]): Promise<void> {
    if (lines.length === 0) return;
    for (const l of lines) (/halted|failed/.test(l) ? this.o.log.warn : this.o.log.info)(l);
    if (r.state === 'halted' && lines.some((l) => l.includes(' halted: '))) this.halts.total++;
    if (r.state === 'completed' && lines.some((l) => l.includes(' completed: '))) {
      const rel = await this.o.store.get(r.release);
      await this.o.channels.set({ channel: r.channel, release: r.release, name: rel?.manifest.name ?? r.release, publishedAt: this.o.now() });
    }
    this.dirty.add(r.id);
    await this.flush();
  }

  /** Write what changed; one writer at a time. */
  flush(): Promise<void> {
    return this.saving.run(async () => {
      if (this.dirty.size === 0 && !this.seenDirty) return;
      try {
        await fs.mkdir(this.dir, { recursive: true });
        const changed: Rollout[] = [];
        for (const id of [...this.dirty]) {
          this.dirty.delete(id);
          const r = this.rollouts.get(id);
          if (r) await writeAtomic(path.join(this.dir, `${id}.json`), Buffer.from(JSON.stringify(r) + '\n'));
          if (r) changed.push(r);
        }
        await this.o.shared?.put(changed);
        if (this.seenDirty) {
          this.seenDirty = false;
          this.seenStale = false;
          this.seenSavedAt = this.o.now();
          const out: Record<string, Record<string, SavedSeen>> = {};
          for (const [ch, m] of this.seen) out[ch] = Object.fromEntries([...m].map(([id, v]) => [id, { group: v.group, lastSeen: v.lastSeen }]));
          await writeAtomic(path.join(this.dir, 'members.json'), Buffer.from(JSON.stringify(out)));
        }
      } catch (err) {
        this.o.log.error(`cannot save rollout state in ${this.dir}: ${(err as Error).message}`);
      }
    });
  }

  /** The latest rollout of a channel, if any (among this instance's, unless given others). */
  private latest(channel: string, among: Iterable<Rollout> = this.rollouts.values()): Rollout | null {
    let best: Rollout | null = null;
    for (const r of among) if (r.channel === channel && (!best || r.createdAt > best.createdAt)) best = r;
    return best;
  }

  /**
   * The channel's rollout token (protocol 1.6, docs/protocol.md section 18): changes
   * whenever what a poll of the channel's rollout would answer may change for some member
   * (a rollout starts; its state, open wave or rollback flag moves), so a held channel
   * poll ends then and the agent asks about the rollout at once. '-' without a rollout.
   * With several coordinators, a channel run elsewhere is read as the engine had it at the
   * last cluster tick. Opaque to agents: they only send back the one they got.
   */
  token(channel: string): string {
    const best = this.latest(channel, this.all());
    if (!best) return '-';
    return `${best.id}.${best.state}.${best.openWave}.${best.rollback ? 1 : 0}`;
  }

  private channelMembers(channel: string, now: number): { id: string; group: string }[] {
    const m = this.seen.get(channel);
    if (!m) return [];
    return [...m.entries()].filter(([, v]) => v.held > 0 || now - v.lastSeen <= CHANNEL_MEMBER_MEMORY_MS).map(([id, v]) => ({ id, group: v.group }));
  }

  /** This instance's rollouts and, with several coordinators, the others' (as the engine had them at the last refresh). */
  private all(): Rollout[] {
    const mine = [...this.rollouts.values()];
    if (!this.o.shared) return mine;
    // The engine's copy of a channel run here is older than ours.
    const here = new Set(mine.map((r) => r.channel));
    return mine.concat(this.o.shared.others().filter((r) => !this.rollouts.has(r.id) && !here.has(r.channel)));
  }

  /** The channel of a rollout held here or known from the engine (several coordinators route by it). */
  channelOf(id: string): string | null {
    return this.rollouts.get(id)?.channel ?? this.o.shared?.others().find((r) => r.id === id)?.channel ?? null;
  }

  /** This instance took `channel` (several coordinators): its rollouts, as the engine has them, are run from here now. */
  adopt(channel: string, rollouts: Rollout[]): void {
    this.forgetChannel(channel);
    for (const r of rollouts) if (r.channel === channel) this.rollouts.set(r.id, r);
  }

  /** Another instance runs `channel`'s rollouts now. */
  forgetChannel(channel: string): void {
    for (const [id, r] of this.rollouts) if (r.channel === channel) this.rollouts.delete(id);
  }

  /** A rollout of `channel` is running or paused here (its channel is not given up while it is). */
  runsOn(channel: string): boolean {
    return [...this.rollouts.values()].some((r) => r.channel === channel && isActiveRollout(r));
  }

  list(now = this.o.now()): ReturnType<typeof summary>[] {
    return this.all().sort((a, b) => b.createdAt - a.createdAt).map((r) => summary(r, now));
  }

  /** One line per rollout for `fleetcast fleet` and GET /v1/fleet. */
  brief(): { id: string; channel: string; release: string; state: string; wave: string; reason: string | null }[] {
    return this.all()
      .sort((a, b) => b.createdAt - a.createdAt)
      .map((r) => ({ id: r.id, channel: r.channel, release: r.release, state: r.state, wave: `${r.openWave + 1}/${r.waves.length}`, reason: r.reason }));
  }

  metrics(reg: MetricsRegistry): void {
    const states = ['running', 'paused', 'halted', 'aborted', 'completed'];
    reg.gauge('rollouts', 'Rollouts by state', states.map((s) => [{ state: s }, [...this.rollouts.values()].filter((r) => r.state === s).length]));
    const members: [Record<string, string>, number][] = [];
    for (const r of this.rollouts.values()) {
      if (!isActiveRollout(r) && r.state !== 'halted') continue;
      const s = summary(r, this.o.now());
      for (const [state, n] of Object.entries(s.totals)) members.push([{ rollout: r.id, channel: r.channel, state }, n]);
    }
    reg.gauge('rollout_members', 'Members of running, paused and halted rollouts by reported state', members);
    reg.counter('rollout_halts_total', 'Rollouts halted by their failure threshold since the server started', [[{}, this.halts.total]]);
  }

  // ------------------------------------------------------------------ HTTP

  /** Serve the request if it is ours (/v1/rollouts..., /ui/); false otherwise. Auth has been checked. */
  /**
   * `authorize` checks that the request's token may speak for a member id (device
   * identity, docs/security.md); `operator` that it may change rollouts; both throw when not.
   * `preRead`: the body, when the coordinators' routing read it to find the channel.
   */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL, authorize: (member: string) => void = () => undefined, operator: () => void = () => undefined, preRead?: Buffer): Promise<boolean> {
    const p = url.pathname;
    if (p === '/ui' || p === '/ui/' || p === '/ui/index.html') {
      if (req.method !== 'GET') throw new ApiError(405, 'METHOD', `method ${req.method} is not allowed`);
      const body = Buffer.from(FLEET_PAGE);
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'content-length': body.length,
        // Nothing external: the page's script and style are inline, and it fetches only this origin.
        'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        'cache-control': 'no-store',
      });
      res.end(body);
      return true;
    }
    if (!p.startsWith('/v1/rollouts')) return false;
    const parts = p.split('/').filter(Boolean); // v1 rollouts [id] [action]
    const now = this.o.now();
    if (parts.length === 2 && req.method === 'GET') {
      const channel = url.searchParams.get('channel');
      const members: Record<string, number> = {};
      for (const ch of this.seen.keys()) members[ch] = this.channelMembers(ch, now).length;
      return this.json(res, 200, { rollouts: this.list(now).filter((r) => !channel || r.channel === channel), channelMembers: members });
    }
    if (parts.length === 2 && req.method === 'POST') {
      operator(); // a device's token reads rollouts; only an operator's changes them
      return this.json(res, 201, await this.start(await readJson(req, preRead), now));
    }
    if (parts.length === 3 && parts[2] === 'poll') {
      if (req.method !== 'POST') throw new ApiError(405, 'METHOD', `method ${req.method} is not allowed on ${p}`);
      return this.json(res, 200, await this.poll(await readJson(req, preRead), now, authorize));
    }
    if (parts.length >= 3) {
      if (parts.length === 4 && req.method === 'POST') operator(); // before the lookup: the answer says nothing about a rollout to a device
      const r = this.rollouts.get(parts[2]);
      if (!r) throw new ApiError(404, 'NO_ROLLOUT', `no rollout ${parts[2]} on this server`);
      if (parts.length === 3 && req.method === 'GET') return this.json(res, 200, summary(r, now));
      if (parts.length === 4 && req.method === 'POST' && ['pause', 'resume', 'abort'].includes(parts[3])) {
        const b = await readJson(req, preRead);
        for (const k of Object.keys(b)) if (k !== 'rollback') throw new ApiError(400, 'BAD_BODY', `unknown field "${k}"`);
        if (b.rollback !== undefined && typeof b.rollback !== 'boolean') throw new ApiError(400, 'BAD_BODY', 'rollback must be a boolean');
        if (b.rollback && parts[3] !== 'abort') throw new ApiError(400, 'BAD_BODY', 'rollback goes only with abort');
        const err = parts[3] === 'pause' ? pause(r, now) : parts[3] === 'resume' ? resume(r, now) : abort(r, Boolean(b.rollback), now);
        if (err) throw new ApiError(409, 'BAD_STATE', err);
        this.o.log.warn(`rollout ${r.id}: ${parts[3]}${b.rollback ? ' with rollback' : ''} by hand; now ${r.state}`);
        await this.after(r, parts[3] === 'resume' ? [`rollout ${r.id} resumed`, ...tick(r, now)] : [`rollout ${r.id} ${r.state}`]);
        return this.json(res, 200, summary(r, now));
      }
    }
    if (req.method !== 'GET' && req.method !== 'POST') throw new ApiError(405, 'METHOD', `method ${req.method} is not allowed`);
    throw new ApiError(404, 'NOT_FOUND', `no such endpoint: ${req.method} ${p}`);
  }

  private async start(b: Record<string, unknown>, now: number): Promise<unknown> {
    const { channel, release, waves, maxFailures, waveWaitMs, window } = parseStartBody(b);
    const head = await this.o.channels.read(channel);
    if (!head) throw new ApiError(404, 'NO_CHANNEL', `channel ${channel} does not exist on this server (publish a release to it first)`);
    if (!(await this.o.store.get(release))) throw new ApiError(404, 'NO_RELEASE', `release ${release} is not on this server`);
    if (head.release === release) throw new ApiError(409, 'SAME_RELEASE', `channel ${channel} is already on release ${release}`);
    const busy = [...this.rollouts.values()].find((r) => r.channel === channel && isActiveRollout(r));
    if (busy) throw new ApiError(409, 'ROLLOUT_ACTIVE', `rollout ${busy.id} is ${busy.state} on channel ${channel}: abort it first`);
    const members = this.channelMembers(channel, now);
    // Empty waves open at once: with nobody known, the rollout would complete (and move the channel) before anyone installed.
    if (members.length === 0) throw new ApiError(409, 'NO_MEMBERS', `no agent has asked about channel ${channel} in the last ${CHANNEL_MEMBER_MEMORY_MS / 60_000} minutes: start the rollout once the agents follow it`);
    const id = `r-${randomBytes(6).toString('hex')}`;
    const r = createRollout({ id, channel, release, previous: head.release, waves, maxFailures, waveWaitMs, window, createdAt: now }, members, now);
    this.rollouts.set(id, r);
    const s = summary(r, now);
    this.o.log.info(`rollout ${id} of ${release} on ${channel} started: ${s.members} member(s) in waves ${s.waves.map((w) => `${w.spec}=${w.members}`).join(', ')}; the channel stays on ${head.release} until it completes`);
    await this.after(r, tick(r, now).concat([`rollout ${id} started`]));
    return summary(r, now);
  }

  /**
   * `member` of LAN group `group` follows `channel` (a rollout poll, or a 1.7 channel poll
   * naming it: docs/protocol.md section 19). members.json is written at the next save when
   * a member is new or changed group, and for times alone at most every SEEN_REFRESH_MS: at
   * 100,000 followers a whole file for every save was most of an idle server's work.
   */
  noteFollowing(channel: string, member: string, group: string, now: number): Seen | null {
    let seen = this.seen.get(channel);
    if (!seen) this.seen.set(channel, (seen = new Map()));
    const prev = seen.get(member);
    if (!prev || prev.group !== group) this.seenDirty = true;
    else if (now - prev.lastSeen > 60_000) this.seenStale = true;
    if (prev) {
      prev.group = group;
      prev.lastSeen = now;
      return prev;
    }
    if (seen.size >= MAX_CHANNEL_MEMBERS) return null;
    const v = { group, lastSeen: now, held: 0 };
    seen.set(member, v);
    return v;
  }

  /**
   * A 1.7 channel poll naming `member` (section 19): noted as a rollout poll would be, and
   * the member counts as seen until the returned end (the answer, or the connection
   * closing), however long the poll is held.
   */
  holdFollowing(channel: string, member: string, group: string, now: number): (at: number) => void {
    const v = this.noteFollowing(channel, member, group, now);
    if (!v) return () => undefined;
    v.held++;
    let ended = false;
    return (at) => {
      if (ended) return;
      ended = true;
      v.held--;
      v.lastSeen = Math.max(v.lastSeen, at);
    };
  }

  private async poll(raw: Record<string, unknown>, now: number, authorize: (member: string) => void): Promise<unknown> {
    const b = parsePollBody(raw);
    authorize(b.member); // a box reports only for itself
    const channel = b.channel;
    this.noteFollowing(channel, b.member, b.group, now);
    const r = this.latest(channel);
    if (!r) return { rollout: null };
    if (b.state !== undefined && b.release === r.release) {
      const before = JSON.stringify(r.members[b.member] ?? null);
      const lines = report(r, b.member, b.group, b.state as ReportedState, (b.reason as string | undefined) ?? null, now);
      if (JSON.stringify(r.members[b.member] ?? null) !== before) this.dirty.add(r.id);
      await this.after(r, lines);
    }
    const known = r.members[b.member] !== undefined;
    const d = directive(r, b.member, b.group, now);
    if (!known && r.members[b.member]) this.dirty.add(r.id); // a member the start did not know: its wave is kept
    return { rollout: d };
  }

  private json(res: http.ServerResponse, status: number, v: unknown): true {
    const body = Buffer.from(JSON.stringify(v));
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
    return true;
  }
}
