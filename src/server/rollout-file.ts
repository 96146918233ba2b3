import { CHANNEL_RE } from '../release/channels';
import { isName, isReleaseId, isRolloutId } from '../wire/ids';
import { parseJsonObject } from '../wire/json-object';
import { parseWindow, RolloutState } from '../wire/rollout';
import { MAX_REASON_CHARS, MAX_ROLLOUT_MEMBERS, MAX_WAVES, MaxFailures, MemberRecord, MemberState, Rollout } from './rollout-model';
import { parseWaves } from './rollout-waves';

/** The rollout's state file, `<store>/rollouts/<id>.json` (rollout-api.ts writes it as JSON of a Rollout). */

export { isRolloutId };

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
