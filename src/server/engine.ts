import type { ChannelHead } from '../release/channels';

/**
 * The engine several `fleetcast server` instances share (docs/scale-out.md, "Several
 * coordinators"): who owns each allocation key (release + LAN or wide-area group), and the
 * durable fleet state every instance can read (the member registry, hook results, channel
 * heads and rollouts). One server alone
 * needs none: ServerOptions.engine unset keeps everything in the process, as before.
 */

/** An allocation key's owner, as the engine says. */
export type Claim = { mine: true } | { mine: false; owner: string; url: string; msLeft: number };

/** One member as the registry keeps it: written by the instance that owns its key. */
export interface MemberRow {
  release: string;
  member: string;
  /** Its LAN group. */
  group: string;
  /** The allocation key it is in ("release/group" or "release/*wide"). */
  key: string;
  /** URL of the instance that wrote the row. */
  instance: string;
  complete: boolean;
  verifiedUnits: number;
  address: string | null;
  /** Milliseconds since the owner last heard from it, by the engine's clock. */
  msAgo: number;
}

/** An on_complete hook's result as an agent reported it (POST /v1/hook), with when (engine clock, ms since the epoch). */
export interface HookRow {
  release: string;
  group: string;
  member: string;
  exitCode?: number;
  signal?: string;
  error?: string;
  durationMs: number;
  at: number;
}

/** A rollout as the engine keeps it: its state file's JSON (rollout-file.ts parses it, untrusted), by id and channel. */
export interface RolloutRow {
  id: string;
  channel: string;
  doc: string;
}

/** The engine could not be reached or answered an error: the message says which and why. */
export class EngineUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineUnavailable';
  }
}

export interface CoordinationEngine {
  /** What to call it in log lines and errors (no password). */
  readonly name: string;
  /** Connect, create the tables if missing, and return the fleet's shared secret (the first instance's). */
  open(localSecret: Buffer): Promise<Buffer>;
  /** Take `key` if nobody holds an unexpired lease on it (or renew it if we do), for ttlMs by the engine's clock. */
  claim(key: string, ttlMs: number): Promise<Claim>;
  /** Renew our leases; returns the keys we still hold (a key missing was taken by another instance). */
  renew(keys: string[], ttlMs: number): Promise<Set<string>>;
  /** Instances holding an unexpired lease now (at least those serving members). */
  liveInstances(): Promise<number>;
  /** Give the keys up (clean shutdown), so another instance takes them at once. */
  release(keys: string[]): Promise<void>;
  /** Write what the owner knows of its members (last_seen is the engine's now()). */
  putMembers(rows: Omit<MemberRow, 'msAgo'>[]): Promise<void>;
  /** Members of `key` heard from in the last `withinMs` (the new owner awaits them). */
  membersOf(key: string, withinMs: number): Promise<string[]>;
  /** Every member heard from in the last `withinMs`, at most `limit`. */
  members(withinMs: number, limit: number): Promise<MemberRow[]>;
  /** Keep a hook result (the instance that received it may die before anyone reads it). */
  putHook(h: Omit<HookRow, 'at'>): Promise<void>;
  /** Hook results of a release's LAN group (several groups of a wide-area key: call per group), newest first, at most `limit`. */
  hooks(release: string, groups: string[] | null, limit: number): Promise<HookRow[]>;
  /** Keep a channel's head unless the engine has one published later (a publish made on any instance's store wins by time). */
  putChannel(head: ChannelHead): Promise<void>;
  /** Every channel's head. */
  channels(): Promise<ChannelHead[]>;
  /** Keep rollouts' state (written by the instance that owns their channel). */
  putRollouts(rows: RolloutRow[]): Promise<void>;
  /** The rollouts of a channel, or of every channel (null), at most `limit`. */
  rollouts(channel: string | null, limit: number): Promise<RolloutRow[]>;
  close(): Promise<void>;
}
