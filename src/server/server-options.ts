import { AllocatorOptions, ResendReason } from './allocator';
import { Logger } from '../util/log';
import { Policy, StartPolicy } from '../release/distribution';
import { LIMIT_DEFAULTS, LimitName } from './guard';
import type { CoordinationEngine } from './engine';

/**
 * The origin server's HTTP API (docs/protocol.md, "HTTP API"). Allocation state
 * lives in one GroupAllocator per (release, group) and is soft: it is rebuilt from
 * the agents' heartbeats after a restart.
 */
export interface ServerOptions {
  storeDir: string;
  host: string;
  port: number;
  heartbeatMs?: number;
  /**
   * The heartbeat interval asked of a member with nothing left to do: it holds the whole
   * release and so does every member of its group (allocator.idle()). Default 5 x heartbeatMs.
   */
  idleHeartbeatMs?: number;
  /**
   * After a restart, a group's leases wait until every member seen shortly before
   * it has rejoined and reported what it holds (soft state), but at most this long.
   * Default max(3 heartbeats, 2 s, an idle heartbeat + a heartbeat). A fresh store has
   * nobody to wait for.
   */
  rebuildGraceMs?: number;
  allocator?: Partial<Omit<AllocatorOptions, 'unitCount' | 'unitBytes'>>;
  logger?: Logger;
  /** Injected clock, for tests. */
  now?: () => number;
  /** Serve HTTPS with this certificate chain and key (PEM); plain HTTP without. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Bearer tokens allowed in, by name (per fleet or per device). None: anyone may. */
  tokens?: Record<string, string>;
  /**
   * Let one token serve many member ids (a per-fleet token). Off by default: a token
   * names one device, and the first member id it uses is the only one it may use.
   */
  sharedTokens?: boolean;
  /**
   * Names of the tokens that may start, pause, resume and abort rollouts (docs/security.md,
   * "Operators"). Default: `operator` (the token `fleetcast init` writes to operator.token).
   * A device's token may only report for itself. Without any token the server is open.
   */
  operatorTokens?: string[];
  /**
   * 1.4 agents: the heartbeats per second the server aims at, all members together. With
   * more live members than this, each is asked to beat every members / rate seconds instead
   * of every heartbeatMs (never slower than 60 s). Default 5,000.
   */
  heartbeatsPerSec?: number;
  /**
   * Idle members (their whole group holds the release): the heartbeats per second the
   * server aims at from all of them together. With more idle members than
   * idleHeartbeatMs allows at this rate, each is asked to beat every idle members / rate
   * seconds (never slower than 900 s; 1.5 and older agents clamp it to 60 s). Default 100:
   * 100,000 idle members beat every 900 s, 1 % of a core (issue 17).
   */
  idleHeartbeatsPerSec?: number;
  /**
   * Idle time (ms) before TCP keepalive probes on the connection of a follower's held
   * channel poll (docs/protocol.md section 19, "Keepalive"). Default HELD_KEEPALIVE_MS (60 s).
   */
  heldKeepaliveMs?: number;
  /**
   * HTTP range origins that serve unit bytes instead of this server, for releases whose
   * `publish --origin` names none (docs/scale-out.md).
   */
  origins?: string[];
  /** Override the limits of LIMIT_DEFAULTS (tests, unusual fleets). */
  limits?: Partial<typeof LIMIT_DEFAULTS>;
  /** Units a release may have to be served (at most MAX_UNITS). */
  maxUnitsPerRelease?: number;
  /** Where `publish --encrypt` put the content keys; released only to token holders. */
  contentKeysDir?: string;
  /** Defaults for releases without their own distribution.json. */
  policy?: Policy;
  start?: StartPolicy;
  /**
   * Several coordinators on a shared engine (docs/scale-out.md): the engine, and the URL
   * other instances reach this one at. Unset: one server, everything in this process.
   */
  cluster?: { engine: CoordinationEngine; instanceUrl: string; peerCa?: string | Buffer };
}

export interface ServerStats {
  /** Unit bytes written to agents, all releases and groups. */
  unitBytesSent: number;
  unitBytesSentByGroup: Record<string, number>;
  unitRequests: number;
  requests: number;
  badRequests: number;
  /** Those by "status CODE" (e.g. "400 BAD_BODY"; codes are the server's own, a fixed set): what agents were refused. */
  badRequestCodes: Record<string, number>;
  /** Requests refused for a missing or unknown token. */
  unauthorized: number;
  /** Unit bytes sent under hedge leases (a second member fetching a straggler's unit). */
  hedgedBytes: number;
  /** Units leased again because a LAN group could not get them from its wide-area group. */
  relayedUnits: number;
  /**
   * Every re-send from the origin, by reason: units sent again to a group that already
   * held or leased them, and their bytes (docs/wide-area.md, "Re-sends").
   */
  resent: Record<ResendReason, { units: number; bytes: number }>;
  /** Times each limit refused or cut something (docs/security.md, "Exhaustion"). */
  limits: Record<LimitName, number>;
  /** Units agents reported as failing verification again and again from this server. */
  badUnitReports: number;
  /** 1.4: receipts and lease requests that came folded into heartbeats; whole and delta map answers. */
  foldedReceipts: number;
  foldedLeases: number;
  fullMaps: number;
  deltaMaps: number;
  /** Units granted with an HTTP range origin to fetch them from (docs/scale-out.md). */
  originGrants: number;
  /** What the load-chosen heartbeat interval is stretched by now (1 to 3; docs/protocol.md section 14). */
  loadFactor: number;
}
