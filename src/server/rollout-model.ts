import { RolloutState } from '../wire/rollout';

/** What a rollout is: its spec, its members' records, the states and the limits (rollout.ts moves it along). */

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
