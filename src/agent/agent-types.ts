import type { KeyObject } from 'node:crypto';
import type { ServerAccess } from '../net/server-access';
import type { Transport, TransportOptions } from '../transport/transport';
import type { Logger } from '../util/log';
import type { CrossPaths } from './cross-paths';
import type { Agent } from './agent';
import type { CoreStats } from './core/types';
import { emptyStats } from './core/repair-flow';

/** What any member on a LAN is built from: a release's Agent and a stream's StreamAgent. */
export interface MemberOptions {
  server: ServerAccess;
  group: string;
  /** Member id; default: read from (or created in) `<storage>/member-id`. */
  member?: string;
  /** Interface name (e.g. eth0, lo) or local IPv4/IPv6 address. */
  interface: string;
  multicast: { address: string; port: number };
  storageDir: string;
  trustedKeys: KeyObject[];
  /** The wide-area group this LAN group belongs to (policy `wide` spans LAN groups). */
  wideGroup?: string;
  rateBytesPerSec?: number;
  /** Fragment payload bytes; default from the interface MTU. Must match across the group. */
  fragmentBytes?: number;
  lossPct?: number;
  logger?: Logger;
  random?: () => number;
  transport?: (opts: TransportOptions) => Transport;
}

/** What an Agent is built from and what it counts (agent.ts is the driver that uses them). */
export interface AgentOptions extends MemberOptions {
  releaseId: string;
  /** Testing: share (0–100) of received cross-group (unicast) datagrams dropped, like lossPct on the LAN. */
  crossLossPct?: number;
  /**
   * Pace of what this member sends to other LAN groups (copies and repairs to their
   * gateways), which crosses the site's WAN uplink: keep the members' sum under it.
   */
  crossRateBytesPerSec?: number;
  /** Testing: cap this agent's WAN download rate (a slow uplink, a straggler). */
  wanRateBytesPerSec?: number;
  /** After completing, keep serving repairs until the group is complete, at most this long. */
  lingerMs?: number;
  onProgress?: (a: Agent) => void;
}

/** The core's counters (core/types.ts) and the driver's own: WAN bytes, resumes, reports, timing. */
export interface AgentStats extends CoreStats {
  member: string;
  wanBytes: number;
  /** Bytes of partly downloaded units found in the spool at restart (not fetched again). */
  wanBytesResumed: number;
  unitsResumed: number;
  /** Reports sent to the server of a unit that kept failing verification from it. */
  badUnitReports: number;
  /** Of wanBytes, those from an HTTP range origin rather than the server (docs/scale-out.md). */
  originBytes: number;
  /** Origin requests that failed (error, stall, bad range or bytes): the unit came from the server instead. */
  originFailures: number;
  /** Times a download in flight paused for the copy backlog (LAN or cross-group), the milliseconds it spent so, and the longest pause. */
  downloadPauses: number;
  downloadPausedMs: number;
  downloadPauseMaxMs: number;
  /** Times a fetch worker waited for the copy backlog before asking for a new lease, and the milliseconds it spent so. */
  leaseHolds: number;
  leaseHeldMs: number;
  seconds: number;
  /** When the verified file was in place (ms since the epoch); 0 until then. */
  completedAtMs: number;
  transport: string;
}

/** Per other group's gateway we send to: the learned pace, what its reports said, what left and what waits (live: Agent.crossPaths()). */
export type CrossPathView = ReturnType<CrossPaths['view']>;

/** The counters of AgentStats (what a daemon sums across releases). */
export type AgentCounters = Omit<AgentStats, 'member' | 'drops' | 'seconds' | 'completedAtMs' | 'transport' | 'downloadPauseMaxMs'>;

export function zeroCounters(): AgentCounters {
  const { drops: _drops, ...core } = emptyStats();
  return { ...core, wanBytes: 0, wanBytesResumed: 0, unitsResumed: 0, badUnitReports: 0, originBytes: 0, originFailures: 0, downloadPauses: 0, downloadPausedMs: 0, leaseHolds: 0, leaseHeldMs: 0 };
}

/** A new agent's (or stream agent's) stats, all zero. */
export function newAgentStats(): AgentStats {
  return { member: '', ...zeroCounters(), downloadPauseMaxMs: 0, drops: {}, seconds: 0, completedAtMs: 0, transport: '' };
}
