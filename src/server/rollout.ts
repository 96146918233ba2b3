import { createHash } from 'node:crypto';
import { CHANNEL_RE } from '../release/channels';
import { isName, isReleaseId } from '../wire/ids';
import { Directive, parseWindow, RolloutState } from '../wire/rollout';
import { parseJsonObject } from '../wire/json-object';

export { Directive, parseWindow, RolloutState, windowAllows, windowAllowsAt, WindowPart } from '../wire/rollout';

/**
 * Rollouts: a release moves onto a channel's members wave by wave (docs/rollouts.md).
 * Pure logic, no I/O: every function takes `now` (ms since the epoch) as an argument
 * and returns what happened as log lines, so tests drive it with a fake clock and the
 * HTTP layer (rollout-api.ts) owns the files and the sockets.
 *
 * Borrowed shapes, with credit:
 * - hawkBit's rollout management: deployment groups that start in cascade when the
 *   previous group succeeded, an error threshold per group that stops the rollout
 *   ("emergency shutdown"), and a manual stop.
 *   https://eclipse.dev/hawkbit/concepts/rollout-management
 * - AWS IoT Jobs' abort criteria (a failure count or share that cancels the job).
 * - Mender's ArtifactInstall -> ArtifactCommit / ArtifactRollback states become the
 *   member states installed -> committed, or failed -> rolled-back.
 *   https://docs.mender.io/artifacts/state-scripts
 */

/** What a member reported last (`pending`: nothing yet). */
export type MemberState = 'pending' | 'staged' | 'installed' | 'committed' | 'failed' | 'rolled-back';
export const REPORTED_STATES = ['staged', 'installed', 'committed', 'failed', 'rolled-back'] as const;
export type ReportedState = (typeof REPORTED_STATES)[number];

/** One wave: members up to a cumulative share (`upto` percent), or the members of named LAN groups (`*`: every other group). */
export type WaveSpec = { kind: 'share'; upto: number } | { kind: 'groups'; groups: string[] };

export type MaxFailures = { count: number } | { percent: number };

export interface RolloutSpec {
  id: string;
  channel: string;
  release: string;
  /** The channel's release when the rollout started: what the channel installs until it completes. */
  previous: string;
  waves: WaveSpec[];
  maxFailures: MaxFailures;
  /**
   * Open the next wave (or complete after the last) this long after the first install
   * in the open wave, even if not all of it has committed; null: wait for all of it.
   */
  waveWaitMs: number | null;
  /** Install window (read in each agent's local time), e.g. "Mon-Fri 02:00-04:00"; null: any time. */
  window: string | null;
  createdAt: number;
}

export interface MemberRecord {
  group: string;
  wave: number;
  state: MemberState;
  /** Failed (and maybe rolled back since): counts against the threshold. */
  failed: boolean;
  reason: string | null;
  at: number;
  /** When it first reported an install attempt (installed, committed or failed); starts its wave's --wave-wait. */
  installedAt: number | null;
}

export interface Rollout extends RolloutSpec {
  version: 1;
  state: RolloutState;
  /** Waves 0..openWave are open. */
  openWave: number;
  /** When each open wave opened. */
  openedAt: number[];
  /** Why it halted, paused or was aborted. */
  reason: string | null;
  /** abort --rollback: members on the new release roll back. */
  rollback: boolean;
  endedAt: number | null;
  members: Record<string, MemberRecord>;
}

export const MAX_WAVES = 32;
export const MAX_REASON_CHARS = 512;
/** Members per rollout the server keeps track of (a bound for a hostile or broken fleet). */
export const MAX_ROLLOUT_MEMBERS = 200_000;

// ---------------------------------------------------------------- parsing (CLI and API input)

/** "1%,10%,50%,100%" (cumulative shares) or "site-a,site-b,*" (LAN groups). Returns the waves or what is wrong. */
export function parseWaves(s: string): WaveSpec[] | string {
  const items = s.split(',').map((x) => x.trim());
  if (items.length === 0 || items.some((x) => x === '')) return 'must be a comma-separated list, e.g. 1%,10%,100% or site-a,site-b,*';
  if (items.length > MAX_WAVES) return `has ${items.length} waves; at most ${MAX_WAVES}`;
  const shares = items.filter((x) => x.endsWith('%'));
  if (shares.length && shares.length !== items.length) return 'mixes shares (N%) and LAN group names: use one or the other';
  if (shares.length) {
    const out: WaveSpec[] = [];
    let last = 0;
    for (const x of items) {
      const m = /^(\d{1,3}(?:\.\d{1,3})?)%$/.exec(x);
      const v = m ? Number(m[1]) : NaN;
      if (!(v > 0 && v <= 100)) return `${JSON.stringify(x)} is not a share between 0% and 100%`;
      if (v <= last) return `shares are cumulative and must grow: ${x} after ${last}%`;
      last = v;
      out.push({ kind: 'share', upto: v });
    }
    if (last !== 100) return `ends at ${last}%: the last wave must reach 100%`;
    return out;
  }
  const seen = new Set<string>();
  for (const x of items) {
    if (x !== '*' && !isName(x)) return `${JSON.stringify(x)} is not a LAN group name (or * for every other group)`;
    if (seen.has(x)) return `names ${x} twice`;
    seen.add(x);
  }
  if (!seen.has('*')) return 'does not reach 100%: end the list with * (every other LAN group)';
  if (items.at(-1) !== '*') return '* (every other LAN group) must be the last wave';
  return items.map((x) => ({ kind: 'groups', groups: [x] }));
}

/** "5%" or "3". */
export function parseMaxFailures(s: string): MaxFailures | string {
  const t = s.trim();
  let m = /^(\d{1,3}(?:\.\d{1,3})?)%$/.exec(t);
  if (m && Number(m[1]) <= 100) return { percent: Number(m[1]) };
  m = /^\d{1,9}$/.exec(t);
  if (m) return { count: Number(t) };
  return `${JSON.stringify(s)} is neither a share (5%) nor a count (3)`;
}

/** "90s", "30m", "2h", "1d", "1h30m"; ms, or what is wrong. */
export function parseDuration(s: string): number | string {
  const t = s.trim();
  if (!/^(\d{1,6}(ms|s|m|h|d))+$/.test(t)) return `${JSON.stringify(s)} is not a duration like 90s, 30m, 2h or 1h30m`;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  let ms = 0;
  for (const m of t.matchAll(/(\d+)(ms|s|m|h|d)/g)) ms += Number(m[1]) * unit[m[2]];
  return ms;
}

// ---------------------------------------------------------------- waves

/** A point in [0, 1) from the member and rollout ids: the member's place, stable across restarts. */
export function memberPoint(rolloutId: string, member: string): number {
  const h = createHash('sha256').update(rolloutId).update('\0').update(member).digest();
  return h.readUIntBE(0, 6) / 2 ** 48;
}

/**
 * Waves for the members known when the rollout starts. Shares: members sorted by their
 * point, the first ceil(share x n) of them up to each wave (so 25% of 8 is exactly 2).
 * Groups: the wave naming the member's LAN group, else the `*` wave.
 */
export function assignWaves(spec: Pick<RolloutSpec, 'id' | 'waves'>, members: { id: string; group: string }[]): Map<string, number> {
  const out = new Map<string, number>();
  if (spec.waves[0]?.kind === 'share') {
    const sorted = [...members].map((m) => ({ ...m, p: memberPoint(spec.id, m.id) })).sort((a, b) => a.p - b.p || (a.id < b.id ? -1 : 1));
    const n = sorted.length;
    let w = 0;
    sorted.forEach((m, k) => {
      while (w < spec.waves.length - 1 && k >= Math.ceil(((spec.waves[w] as { upto: number }).upto * n) / 100)) w++;
      out.set(m.id, w);
    });
    return out;
  }
  for (const m of members) out.set(m.id, groupWave(spec.waves, m.group));
  return out;
}

function groupWave(waves: WaveSpec[], group: string): number {
  const i = waves.findIndex((w) => w.kind === 'groups' && w.groups.includes(group));
  return i >= 0 ? i : waves.findIndex((w) => w.kind === 'groups' && w.groups.includes('*'));
}

/** The wave of a member that was not known at the start: by its point against the shares, or by its group. */
export function lateWave(spec: Pick<RolloutSpec, 'id' | 'waves'>, member: string, group: string): number {
  if (spec.waves[0]?.kind !== 'share') return groupWave(spec.waves, group);
  const p = memberPoint(spec.id, member) * 100;
  const i = spec.waves.findIndex((w) => w.kind === 'share' && p < w.upto);
  return i >= 0 ? i : spec.waves.length - 1;
}

// ---------------------------------------------------------------- the rollout

export function createRollout(spec: RolloutSpec, members: { id: string; group: string }[], now: number): Rollout {
  // Member ids come from the network: no prototype, so "__proto__" or "constructor" are just ids.
  const r: Rollout = { version: 1, ...spec, state: 'running', openWave: 0, openedAt: [now], reason: null, rollback: false, endedAt: null, members: Object.create(null) as Record<string, MemberRecord> };
  for (const [id, wave] of assignWaves(spec, members.slice(0, MAX_ROLLOUT_MEMBERS))) {
    const group = members.find((m) => m.id === id)!.group;
    r.members[id] = { group, wave, state: 'pending', failed: false, reason: null, at: now, installedAt: null };
  }
  return r;
}

/** Failures a wave of `size` members may have before the rollout halts (it halts when failures exceed this). */
export function allowedFailures(m: MaxFailures, size: number): number {
  return 'count' in m ? m.count : Math.floor((m.percent * size) / 100);
}

const isActive = (s: RolloutState) => s === 'running' || s === 'paused';
const settled = (m: MemberRecord) => m.state === 'committed' || m.failed;

/** The member's record, made on first contact (a member unknown at the start gets its late wave). */
export function memberOf(r: Rollout, member: string, group: string, now: number): MemberRecord | null {
  let m = r.members[member];
  if (!m) {
    if (Object.keys(r.members).length >= MAX_ROLLOUT_MEMBERS) return null;
    m = r.members[member] = { group, wave: lateWave(r, member, group), state: 'pending', failed: false, reason: null, at: now, installedAt: null };
  }
  return m;
}

/**
 * A member reports its state. Returns log lines. Reports move forward only
 * (a late `installed` after `committed` is ignored); `failed` and `rolled-back` keep the reason.
 */
export function report(r: Rollout, member: string, group: string, state: ReportedState, reason: string | null, now: number): string[] {
  const m = memberOf(r, member, group, now);
  if (!m || m.state === state) return [];
  // Forward only: a repeated or stale report (the agent re-sends its state on every poll) changes nothing.
  const order: Record<MemberState, number> = { pending: 0, staged: 1, installed: 2, committed: 3, failed: 4, 'rolled-back': 5 };
  if (order[state] <= order[m.state]) return [];
  const lines: string[] = [];
  const was = m.state;
  m.state = state;
  m.at = now;
  if (m.installedAt === null && state !== 'staged') m.installedAt = now;
  // A rollback heard before its failure (both happened between two polls) is a failure too; after a commit it is an abort's.
  if (state === 'failed' || (state === 'rolled-back' && !m.failed && was !== 'committed')) {
    m.failed = true;
    m.reason = (reason ?? 'no reason given').slice(0, MAX_REASON_CHARS);
    lines.push(`rollout ${r.id}: member ${member} (${m.group}, wave ${m.wave + 1}) failed: ${m.reason}`);
  } else if (state === 'rolled-back') {
    if (reason && !m.reason) m.reason = reason.slice(0, MAX_REASON_CHARS);
    lines.push(`rollout ${r.id}: member ${member} (${m.group}) rolled back`);
  }
  return lines.concat(tick(r, now));
}

export interface WaveCounts {
  members: number;
  pending: number;
  staged: number;
  installed: number;
  committed: number;
  failed: number;
  rolledBack: number;
}

export function waveCounts(r: Rollout, wave: number): WaveCounts {
  const c: WaveCounts = { members: 0, pending: 0, staged: 0, installed: 0, committed: 0, failed: 0, rolledBack: 0 };
  for (const m of Object.values(r.members)) {
    if (m.wave !== wave) continue;
    c.members++;
    if (m.state === 'rolled-back') c.rolledBack++;
    else if (m.state === 'failed') c.failed++;
    else c[m.state]++;
  }
  return c;
}

/** Failures (failed, or failed then rolled back) among the members of `wave`. */
function waveFailures(r: Rollout, wave: number): number {
  let n = 0;
  for (const m of Object.values(r.members)) if (m.wave === wave && m.failed) n++;
  return n;
}

/**
 * Advance the rollout: halt when an open wave has more failures than allowed, open
 * the next wave once every member of the open ones has committed (or failed within
 * the threshold) or `waveWaitMs` has passed, complete after the last. Returns log lines.
 */
export function tick(r: Rollout, now: number): string[] {
  if (r.state !== 'running') return [];
  const lines: string[] = [];
  for (let w = 0; w <= r.openWave; w++) {
    const size = waveCounts(r, w).members;
    const failures = waveFailures(r, w);
    const allowed = allowedFailures(r.maxFailures, size);
    if (failures > allowed) {
      r.state = 'halted';
      r.endedAt = now;
      r.reason = `wave ${w + 1} has ${failures} failure(s) of ${size} member(s), more than the ${allowed} allowed (--max-failures ${'count' in r.maxFailures ? r.maxFailures.count : `${r.maxFailures.percent}%`})`;
      lines.push(`rollout ${r.id} halted: ${r.reason}; the channel ${r.channel} stays on ${r.previous}`);
      return lines;
    }
  }
  for (;;) {
    const members = Object.values(r.members).filter((m) => m.wave <= r.openWave);
    const done = members.every(settled);
    const first = Math.min(...members.filter((m) => m.wave === r.openWave && m.installedAt !== null).map((m) => m.installedAt!));
    const waited = r.waveWaitMs !== null && Number.isFinite(first) && now - first >= r.waveWaitMs;
    if (!done && !waited) break;
    if (r.openWave === r.waves.length - 1) {
      r.state = 'completed';
      r.endedAt = now;
      lines.push(`rollout ${r.id} completed: channel ${r.channel} moves to ${r.release}`);
      break;
    }
    r.openWave++;
    r.openedAt.push(now);
    lines.push(`rollout ${r.id}: wave ${r.openWave + 1} of ${r.waves.length} opens (${waveCounts(r, r.openWave).members} member(s))${done ? '' : ' after --wave-wait'}`);
  }
  return lines;
}

/** What one member should do now. */
export function directive(r: Rollout, member: string, group: string, now: number): Directive {
  const m = memberOf(r, member, group, now);
  const wave = m?.wave ?? lateWave(r, member, group);
  const waveOpen = r.state === 'completed' || (isActive(r.state) && wave <= r.openWave);
  const onNew = m !== null && (m.state === 'installed' || m.state === 'committed');
  return {
    rollout: r.id,
    release: r.release,
    previous: r.previous,
    state: r.state,
    wave,
    waveOpen,
    stage: r.state !== 'halted' && r.state !== 'aborted',
    install: waveOpen && (r.state === 'running' || r.state === 'completed'),
    rollback: r.state === 'aborted' && r.rollback && onNew,
    window: r.window,
  };
}

export function pause(r: Rollout, now: number): string | null {
  if (r.state !== 'running') return `rollout ${r.id} is ${r.state}, not running`;
  r.state = 'paused';
  r.reason = `paused by hand at ${new Date(now).toISOString()}`;
  return null;
}

export function resume(r: Rollout, now: number): string | null {
  if (r.state !== 'paused') return `rollout ${r.id} is ${r.state}: only a paused rollout resumes${r.state === 'halted' ? ' (a halted one can be aborted, or a new rollout started)' : ''}`;
  r.state = 'running';
  r.reason = null;
  // Time spent paused counts toward --wave-wait: after a long pause the next tick may open the next wave at once.
  void now;
  return null;
}

export function abort(r: Rollout, rollback: boolean, now: number): string | null {
  if (r.state === 'completed' || r.state === 'aborted') {
    if (r.state === 'aborted' && rollback && !r.rollback) {
      r.rollback = true;
      return null;
    }
    return `rollout ${r.id} is already ${r.state}`;
  }
  r.state = 'aborted';
  r.rollback = rollback;
  r.endedAt = r.endedAt ?? now;
  r.reason = `aborted by hand${rollback ? ' with rollback' : ''}`;
  return null;
}

export function isActiveRollout(r: Rollout): boolean {
  return isActive(r.state);
}

/** The JSON of `rollout status --json` and GET /v1/rollouts/ID. */
export function summary(r: Rollout, now: number) {
  const totals: Record<MemberState, number> = { pending: 0, staged: 0, installed: 0, committed: 0, failed: 0, 'rolled-back': 0 };
  for (const m of Object.values(r.members)) totals[m.state]++;
  return {
    id: r.id,
    channel: r.channel,
    release: r.release,
    previous: r.previous,
    state: r.state,
    reason: r.reason,
    rollback: r.rollback,
    createdAt: new Date(r.createdAt).toISOString(),
    endedAt: r.endedAt === null ? null : new Date(r.endedAt).toISOString(),
    maxFailures: 'count' in r.maxFailures ? String(r.maxFailures.count) : `${r.maxFailures.percent}%`,
    waveWaitSeconds: r.waveWaitMs === null ? null : r.waveWaitMs / 1000,
    window: r.window,
    members: Object.keys(r.members).length,
    totals,
    waves: r.waves.map((w, i) => {
      const c = waveCounts(r, i);
      return {
        wave: i + 1,
        spec: w.kind === 'share' ? `${w.upto}%` : w.groups.join(','),
        open: r.state === 'completed' || i <= r.openWave,
        openedAt: r.openedAt[i] === undefined ? null : new Date(r.openedAt[i]).toISOString(),
        allowedFailures: allowedFailures(r.maxFailures, c.members),
        ...c,
      };
    }),
    failures: Object.entries(r.members)
      .filter(([, m]) => m.failed)
      .map(([id, m]) => ({ member: id, group: m.group, wave: m.wave + 1, state: m.state, reason: m.reason, at: new Date(m.at).toISOString() })),
    memberStates: Object.fromEntries(Object.entries(r.members).map(([id, m]) => [id, { group: m.group, wave: m.wave + 1, state: m.state, reason: m.reason }])),
    asOf: new Date(now).toISOString(),
  };
}

// ---------------------------------------------------------------- the state file

const ROLLOUT_ID_RE = /^r-[0-9a-f]{12}$/;
export const isRolloutId = (s: string) => ROLLOUT_ID_RE.test(s);

/** Parse `<store>/rollouts/<id>.json` (untrusted bytes: a fuzz target). Returns the rollout or what is wrong. */
export function parseRollout(bytes: Uint8Array): Rollout | string {
  const o = parseJsonObject(bytes);
  if (typeof o === 'string') return o;
  if (o.version !== 1) return `unknown version ${JSON.stringify(o.version)}`;
  if (typeof o.id !== 'string' || !isRolloutId(o.id)) return 'id must be a rollout id (r- and 12 hex digits)';
  if (typeof o.channel !== 'string' || !CHANNEL_RE.test(o.channel)) return 'channel must be a channel name';
  if (typeof o.release !== 'string' || !isReleaseId(o.release)) return 'release must be a release id';
  if (typeof o.previous !== 'string' || !isReleaseId(o.previous)) return 'previous must be a release id';
  if (!['running', 'paused', 'halted', 'aborted', 'completed'].includes(o.state as string)) return 'state is not a rollout state';
  if (!Array.isArray(o.waves) || o.waves.length > MAX_WAVES) return `waves must be a list of at most ${MAX_WAVES}`;
  const wavesText = (o.waves as unknown[]).map((w) => {
    const x = w as Record<string, unknown>;
    return x && x.kind === 'share' && typeof x.upto === 'number' ? `${x.upto}%` : x && x.kind === 'groups' && Array.isArray(x.groups) ? (x.groups as unknown[]).join(',') : '?';
  });
  const waves = parseWaves(wavesText.join(','));
  if (typeof waves === 'string') return `waves: ${waves}`;
  const mf = o.maxFailures as Record<string, unknown> | null;
  let maxFailures: MaxFailures;
  if (mf && typeof mf === 'object' && Number.isSafeInteger(mf.count) && (mf.count as number) >= 0) maxFailures = { count: mf.count as number };
  else if (mf && typeof mf === 'object' && typeof mf.percent === 'number' && mf.percent >= 0 && mf.percent <= 100) maxFailures = { percent: mf.percent };
  else return 'maxFailures must be {count} or {percent}';
  const num = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x >= 0;
  if (o.waveWaitMs !== null && !num(o.waveWaitMs)) return 'waveWaitMs must be a number or null';
  if (o.window !== null && (typeof o.window !== 'string' || typeof parseWindow(o.window) === 'string')) return 'window must be a window or null';
  if (!num(o.createdAt)) return 'createdAt must be a number';
  if (!Number.isSafeInteger(o.openWave) || (o.openWave as number) < 0 || (o.openWave as number) >= waves.length) return 'openWave is out of range';
  if (!Array.isArray(o.openedAt) || o.openedAt.length !== (o.openWave as number) + 1 || !o.openedAt.every(num)) return 'openedAt must hold a time per open wave';
  if (o.reason !== null && typeof o.reason !== 'string') return 'reason must be a string or null';
  if (typeof o.rollback !== 'boolean') return 'rollback must be a boolean';
  if (o.endedAt !== null && !num(o.endedAt)) return 'endedAt must be a number or null';
  if (typeof o.members !== 'object' || o.members === null || Array.isArray(o.members)) return 'members must be an object';
  const members: Record<string, MemberRecord> = Object.create(null) as Record<string, MemberRecord>;
  const states: MemberState[] = ['pending', 'staged', 'installed', 'committed', 'failed', 'rolled-back'];
  let n = 0;
  for (const [id, x] of Object.entries(o.members as Record<string, unknown>)) {
    if (++n > MAX_ROLLOUT_MEMBERS) return `more than ${MAX_ROLLOUT_MEMBERS} members`;
    const m = x as Record<string, unknown>;
    if (!isName(id) || typeof m !== 'object' || m === null) return `member ${JSON.stringify(id.slice(0, 64))} is malformed`;
    if (typeof m.group !== 'string' || !isName(m.group)) return `member ${id}: group must be a group name`;
    if (!Number.isSafeInteger(m.wave) || (m.wave as number) < 0 || (m.wave as number) >= waves.length) return `member ${id}: wave is out of range`;
    if (!states.includes(m.state as MemberState)) return `member ${id}: state is not a member state`;
    if (typeof m.failed !== 'boolean') return `member ${id}: failed must be a boolean`;
    if (m.reason !== null && (typeof m.reason !== 'string' || m.reason.length > MAX_REASON_CHARS)) return `member ${id}: reason must be a short string or null`;
    if (!num(m.at)) return `member ${id}: at must be a number`;
    if (m.installedAt !== null && !num(m.installedAt)) return `member ${id}: installedAt must be a number or null`;
    members[id] = { group: m.group, wave: m.wave as number, state: m.state as MemberState, failed: m.failed, reason: m.reason as string | null, at: m.at as number, installedAt: m.installedAt as number | null };
  }
  return {
    version: 1,
    id: o.id,
    channel: o.channel,
    release: o.release,
    previous: o.previous,
    waves,
    maxFailures,
    waveWaitMs: o.waveWaitMs as number | null,
    window: o.window as string | null,
    createdAt: o.createdAt as number,
    state: o.state as RolloutState,
    openWave: o.openWave as number,
    openedAt: o.openedAt as number[],
    reason: o.reason as string | null,
    rollback: o.rollback,
    endedAt: o.endedAt as number | null,
    members,
  };
}
