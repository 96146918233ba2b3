import { Directive, RolloutState } from '../wire/rollout';
import { MaxFailures, MAX_REASON_CHARS, MAX_ROLLOUT_MEMBERS, MemberRecord, MemberState, ReportedState, Rollout, RolloutSpec } from './rollout-model';
import { assignWaves, lateWave } from './rollout-waves';

export { Directive, parseWindow, RolloutState, windowAllows, windowAllowsAt, WindowPart } from '../wire/rollout';
export * from './rollout-model';
export * from './rollout-waves';
export * from './rollout-file';

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
 *
 * This file is the state machine. The rollout's types and limits are in rollout-model.ts,
 * the --waves syntax and wave assignment in rollout-waves.ts, the state file's parser in
 * rollout-file.ts; all are re-exported here.
 */

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
