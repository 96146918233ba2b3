/**
 * What the server keeps outsiders and members from growing (issue 13, docs/security.md
 * "Exhaustion"): pure bookkeeping, given the clock, so tests drive it without sockets.
 * Each limit has a counter, reported in /v1/stats and the metrics.
 */

/** Tuning knobs of the server's limits: one home, units in the names. */
export const LIMIT_DEFAULTS = {
  /** Open connections, all clients together (the process has 4,096 descriptors by default). */
  maxConnections: 2048,
  /** Open connections from one client address. */
  maxConnectionsPerClient: 64,
  /** A request's headers must be in within this long (slowloris, `slowhttptest -H`). */
  headersTimeoutMs: 10_000,
  /** A request body must be in within this long (slow bodies, `slowhttptest -B`). */
  bodyTimeoutMs: 10_000,
  /** Idle keep-alive connections close after this long. */
  keepAliveTimeoutMs: 30_000,
  /** LAN groups (allocators) one release may have. */
  maxGroupsPerRelease: 1024,
  /** Live members one release may have, all groups together. */
  maxMembersPerRelease: 16_384,
  /** Member ids one token may be bound to (shared tokens; a device token has one). */
  maxMembersPerToken: 4096,
  /** Groups one token's members may be in, per release. */
  maxGroupsPerToken: 64,
  /** members.json is rewritten at most this often. */
  membersWriteMinMs: 5000,
  /** Wrong tokens one client address may try per minute before it is refused outright. */
  authFailuresPerMinute: 20,
  /** A client's auth failures are logged at most once per this long. */
  authLogEveryMs: 60_000,
  /** Clients whose auth failures are tracked (the oldest are forgotten past it). */
  authClientsTracked: 10_000,
};

export type LimitName =
  | 'body_too_large'
  | 'json_too_deep'
  | 'connections_total'
  | 'connections_per_client'
  | 'header_timeout'
  | 'body_timeout'
  | 'groups_per_release'
  | 'empty_groups_reclaimed'
  | 'members_per_release'
  | 'members_per_token'
  | 'groups_per_token'
  | 'members_file_writes_deferred'
  | 'units_per_release'
  | 'auth_throttled'
  | 'member_of_other_token'
  | 'token_bound_to_other_member';

export function emptyLimitCounters(): Record<LimitName, number> {
  return {
    body_too_large: 0,
    json_too_deep: 0,
    connections_total: 0,
    connections_per_client: 0,
    header_timeout: 0,
    body_timeout: 0,
    groups_per_release: 0,
    empty_groups_reclaimed: 0,
    members_per_release: 0,
    members_per_token: 0,
    groups_per_token: 0,
    members_file_writes_deferred: 0,
    units_per_release: 0,
    auth_throttled: 0,
    member_of_other_token: 0,
    token_bound_to_other_member: 0,
  };
}

/** Open connections per client address, against a total and a per-client cap. */
export class ConnectionCounter {
  private readonly byClient = new Map<string, number>();
  private total = 0;
  constructor(private readonly maxTotal: number, private readonly maxPerClient: number) {}

  /** Admit a new connection from `client`, or say which cap it hits. */
  open(client: string): 'ok' | 'connections_total' | 'connections_per_client' {
    if (this.total >= this.maxTotal) return 'connections_total';
    const n = this.byClient.get(client) ?? 0;
    if (n >= this.maxPerClient) return 'connections_per_client';
    this.byClient.set(client, n + 1);
    this.total++;
    return 'ok';
  }

  close(client: string): void {
    const n = this.byClient.get(client);
    if (n === undefined) return;
    if (n <= 1) this.byClient.delete(client);
    else this.byClient.set(client, n - 1);
    this.total--;
  }

  get open_(): number {
    return this.total;
  }
}

/**
 * Auth failures per client address: a fixed one-minute window of at most
 * `perMinute` failures, after which the client's requests are refused (429) until the
 * window ends; and a log line at most once per client per `logEveryMs`.
 */
export class AuthThrottle {
  private readonly clients = new Map<string, { windowStart: number; failures: number; lastLog: number; unlogged: number }>();
  constructor(private readonly perMinute: number, private readonly logEveryMs: number, private readonly maxClients: number) {}

  /** True when `client` has used up its failures for the current minute. */
  blocked(client: string, now: number): boolean {
    const c = this.clients.get(client);
    return !!c && now - c.windowStart < 60_000 && c.failures >= this.perMinute;
  }

  /**
   * Record a failure. Returns the number of failures to log now (this one plus those
   * not logged since the last line), or 0 when this client was logged within the period.
   */
  fail(client: string, now: number): number {
    let c = this.clients.get(client);
    if (!c) {
      if (this.clients.size >= this.maxClients) {
        // The oldest entry goes (Map keeps insertion order).
        const first = this.clients.keys().next().value;
        if (first !== undefined) this.clients.delete(first);
      }
      c = { windowStart: now, failures: 0, lastLog: -Infinity, unlogged: 0 };
      this.clients.set(client, c);
    }
    if (now - c.windowStart >= 60_000) {
      c.windowStart = now;
      c.failures = 0;
    }
    c.failures++;
    c.unlogged++;
    if (now - c.lastLog < this.logEveryMs) return 0;
    c.lastLog = now;
    const n = c.unlogged;
    c.unlogged = 0;
    return n;
  }
}

/**
 * Device identity: which token (by name) each member id belongs to. A member id is
 * bound to the first token that used it and is refused with any other. Unless tokens
 * are shared on purpose, a token is bound to one member id too: it names one device.
 */
export class IdentityBindings {
  /** member id -> token name. */
  private readonly owner = new Map<string, string>();
  /** token name -> member ids bound to it. */
  private readonly members = new Map<string, Set<string>>();
  /** Names of the configured tokens: a member id equal to one belongs to that token from the start. */
  private tokenNames = new Set<string>();
  dirty = false;

  /**
   * Name per-device tokens after their member ids and no other token can claim those
   * ids first (first-use binding alone would let any token holder squat the ids of
   * devices not seen yet).
   */
  setTokenNames(names: Iterable<string>): void {
    this.tokenNames = new Set(names);
  }

  constructor(private readonly shared: boolean, private readonly maxMembersPerToken: number) {}

  /** Check (and on first use make) the binding of `member` to `token`. */
  bind(token: string, member: string): { ok: true } | { ok: false; limit: LimitName; message: string } {
    const owner = this.owner.get(member) ?? (this.tokenNames.has(member) ? member : undefined);
    if (owner !== undefined) {
      if (owner === token) {
        // A reserved id in use for the first time: record it, so the token counts as bound.
        if (!this.owner.has(member)) this.record(token, member);
        return { ok: true };
      }
      return { ok: false, limit: 'member_of_other_token', message: `member id ${member} belongs to another token: use that device's own token` };
    }
    const mine = this.members.get(token);
    if (mine && mine.size > 0 && !this.shared) {
      const first = mine.values().next().value as string;
      return {
        ok: false,
        limit: 'token_bound_to_other_member',
        message: `token ${token} names device ${first}: a token names one device, so give this box its own token (tokens_file), or set shared_tokens: true on the server to let one token serve many members`,
      };
    }
    if (mine && mine.size >= this.maxMembersPerToken) {
      return { ok: false, limit: 'members_per_token', message: `token ${token} already has ${mine.size} member ids (the most one token may have)` };
    }
    this.record(token, member);
    return { ok: true };
  }

  private record(token: string, member: string): void {
    this.owner.set(member, token);
    const mine = this.members.get(token);
    if (mine) mine.add(member);
    else this.members.set(token, new Set([member]));
    this.dirty = true;
  }

  /** Serialisable form (`<store>/identities.json`). */
  toJSON(): Record<string, string> {
    return Object.fromEntries(this.owner);
  }

  /** Restore bindings saved by toJSON (untrusted file: shape-checked, capped). */
  load(j: unknown, maxEntries: number): number {
    if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error('not an object of member -> token name');
    let n = 0;
    for (const [member, token] of Object.entries(j as Record<string, unknown>)) {
      if (typeof token !== 'string' || n >= maxEntries) continue;
      this.owner.set(member, token);
      const s = this.members.get(token);
      if (s) s.add(member);
      else this.members.set(token, new Set([member]));
      n++;
    }
    return n;
  }
}
