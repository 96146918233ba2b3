import { randomBytes } from 'node:crypto';
import type { Pool as PgPool } from 'pg';
import { ChannelHead, parseChannelHead } from '../release/channels';
import { Claim, CoordinationEngine, EngineUnavailable, HookRow, MemberRow, RolloutRow } from './engine';

/**
 * The shared engine on PostgreSQL (docs/scale-out.md says why PostgreSQL and not Redis).
 * Ownership of an allocation key is a row in fleetcast_leases taken with one upsert that
 * only succeeds when the row is ours or expired, and renewed by its owner about every
 * second. Every time comes from the database's now(), never from the instances' clocks,
 * so instances whose clocks disagree still agree on who owns what.
 * Tables (created on first connection, under an advisory lock so two instances starting
 * together do not race):
 *   fleetcast_leases(key PK, owner, url, expires_at, taken_at)
 *   fleetcast_members(release, member PK, grp, key, instance, last_seen, complete, verified, address)
 *   fleetcast_hooks(release, grp, member PK, result jsonb, at): on_complete results
 *   fleetcast_secret(id PK = 1, secret): the fleet's secret for LAN group keys, so a group
 *     keeps its key when its owner changes.
 *   fleetcast_channels(channel PK, head, published_at): each channel's head, as its file
 *     in a store would hold it (parsed like one when read back).
 *   fleetcast_rollouts(id PK, channel, created_at, doc, updated_at): each rollout's state,
 *     its state file's JSON, written by the owner of its channel.
 */
export const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS fleetcast_leases (key text PRIMARY KEY, owner text NOT NULL, url text NOT NULL, expires_at timestamptz NOT NULL, taken_at timestamptz NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS fleetcast_members (release text NOT NULL, member text NOT NULL, grp text NOT NULL, key text NOT NULL, instance text NOT NULL, last_seen timestamptz NOT NULL, complete boolean NOT NULL, verified integer NOT NULL, address text, PRIMARY KEY (release, member))`,
  `CREATE INDEX IF NOT EXISTS fleetcast_members_key ON fleetcast_members (key, last_seen)`,
  `CREATE TABLE IF NOT EXISTS fleetcast_hooks (release text NOT NULL, grp text NOT NULL, member text NOT NULL, result jsonb NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (release, grp, member))`,
  `CREATE TABLE IF NOT EXISTS fleetcast_secret (id integer PRIMARY KEY CHECK (id = 1), secret bytea NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS fleetcast_channels (channel text PRIMARY KEY, head text NOT NULL, published_at double precision NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS fleetcast_rollouts (id text PRIMARY KEY, channel text NOT NULL, doc text NOT NULL, updated_at timestamptz NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS fleetcast_rollouts_channel ON fleetcast_rollouts (channel)`,
];

/** Time a query (or a connection) may take before the engine counts as unreachable. */
export const ENGINE_QUERY_TIMEOUT_MS = 2000;
/** Registry rows per upsert (~0.1-0.2 s each at 100,000 members on 2 busy cores). */
export const MEMBER_ROWS_PER_STATEMENT = 5000;

export class PostgresEngine implements CoordinationEngine {
  readonly name: string;
  private pool: PgPool | null = null;

  /** `owner` names this run of this instance (its URL and a random suffix: a restart is a new owner). */
  constructor(private readonly connectionString: string, readonly owner: string, private readonly url: string, private readonly onIdleError: (err: Error) => void = () => {}) {
    const u = new URL(connectionString);
    this.name = `postgres://${u.host}${u.pathname}`;
  }

  static ownerId(url: string): string {
    return `${url}#${randomBytes(6).toString('hex')}`;
  }

  private async q<T>(text: string, values: unknown[] = []): Promise<T[]> {
    if (!this.pool) throw new EngineUnavailable(`${this.name}: not connected`);
    try {
      return (await this.pool.query(text, values)).rows as T[];
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new EngineUnavailable(`${this.name}: ${e.code && !e.message.includes(e.code) ? `${e.code} ` : ''}${e.message}`);
    }
  }

  async open(localSecret: Buffer): Promise<Buffer> {
    // Loaded here: a single server (no engine) never parses the driver.
    const { Pool } = require('pg') as typeof import('pg');
    this.pool = new Pool({ connectionString: this.connectionString, max: 4, connectionTimeoutMillis: ENGINE_QUERY_TIMEOUT_MS, query_timeout: ENGINE_QUERY_TIMEOUT_MS, idleTimeoutMillis: 30_000, application_name: 'fleetcast' });
    // An idle connection cut by the server (it stopped) is reported here; unhandled, it would end the process.
    this.pool.on('error', (err) => this.onIdleError(err));
    const client = await this.pool.connect().catch((err: Error) => Promise.reject(new EngineUnavailable(`${this.name}: ${err.message}`)));
    try {
      await client.query('BEGIN');
      await client.query(`SELECT pg_advisory_xact_lock(7600018)`);
      for (const s of SCHEMA) await client.query(s);
      await client.query(`INSERT INTO fleetcast_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING`, [localSecret]);
      const r = await client.query(`SELECT secret FROM fleetcast_secret WHERE id = 1`);
      await client.query('COMMIT');
      return r.rows[0].secret as Buffer;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw new EngineUnavailable(`${this.name}: ${(err as Error).message}`);
    } finally {
      client.release();
    }
  }

  async claim(key: string, ttlMs: number): Promise<Claim> {
    const won = await this.q<{ owner: string }>(
      `INSERT INTO fleetcast_leases AS l (key, owner, url, expires_at, taken_at) VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', now())
       ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, url = EXCLUDED.url, expires_at = EXCLUDED.expires_at,
         taken_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.taken_at ELSE now() END
       WHERE l.expires_at < now() OR l.owner = EXCLUDED.owner
       RETURNING owner`,
      [key, this.owner, this.url, ttlMs],
    );
    if (won.length) return { mine: true };
    const held = await this.q<{ owner: string; url: string; ms_left: number }>(`SELECT owner, url, GREATEST(0, EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::float8 AS ms_left FROM fleetcast_leases WHERE key = $1`, [key]);
    // Released between the two statements: try once more on the next request.
    if (!held.length) return { mine: false, owner: '', url: '', msLeft: 0 };
    return { mine: false, owner: held[0].owner, url: held[0].url, msLeft: Math.ceil(Number(held[0].ms_left)) };
  }

  async renew(keys: string[], ttlMs: number): Promise<Set<string>> {
    if (!keys.length) return new Set();
    const rows = await this.q<{ key: string }>(`UPDATE fleetcast_leases SET expires_at = now() + $3 * interval '1 millisecond' WHERE owner = $1 AND key = ANY($2::text[]) RETURNING key`, [this.owner, keys, ttlMs]);
    return new Set(rows.map((r) => r.key));
  }

  async liveInstances(): Promise<number> {
    const r = await this.q<{ n: number }>(`SELECT count(DISTINCT owner)::int AS n FROM fleetcast_leases WHERE expires_at > now()`);
    return Number(r[0]?.n ?? 0);
  }

  async release(keys: string[]): Promise<void> {
    if (keys.length) await this.q(`DELETE FROM fleetcast_leases WHERE owner = $1 AND key = ANY($2::text[])`, [this.owner, keys]);
  }

  async putMembers(all: Omit<MemberRow, 'msAgo'>[]): Promise<void> {
    // In statements of MEMBER_ROWS_PER_STATEMENT: one of 100,000 rows took 1.4-2 s on a busy
    // box, past ENGINE_QUERY_TIMEOUT_MS, and failed every time.
    for (let i = 0; i < all.length; i += MEMBER_ROWS_PER_STATEMENT) await this.putMemberRows(all.slice(i, i + MEMBER_ROWS_PER_STATEMENT));
  }

  private async putMemberRows(rows: Omit<MemberRow, 'msAgo'>[]): Promise<void> {
    const col = <K extends keyof Omit<MemberRow, 'msAgo'>>(k: K) => rows.map((r) => r[k]);
    await this.q(
      `INSERT INTO fleetcast_members (release, member, grp, key, instance, last_seen, complete, verified, address)
       SELECT r, m, g, k, i, now(), c, v, a FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[], $7::int[], $8::text[]) AS t(r, m, g, k, i, c, v, a)
       ON CONFLICT (release, member) DO UPDATE SET grp = EXCLUDED.grp, key = EXCLUDED.key, instance = EXCLUDED.instance, last_seen = now(),
         complete = EXCLUDED.complete, verified = EXCLUDED.verified, address = EXCLUDED.address`,
      [col('release'), col('member'), col('group'), col('key'), col('instance'), col('complete'), col('verifiedUnits'), col('address')],
    );
  }

  async membersOf(key: string, withinMs: number): Promise<string[]> {
    const rows = await this.q<{ member: string }>(`SELECT member FROM fleetcast_members WHERE key = $1 AND last_seen > now() - $2 * interval '1 millisecond' LIMIT 100000`, [key, withinMs]);
    return rows.map((r) => r.member);
  }

  async members(withinMs: number, limit: number): Promise<MemberRow[]> {
    const rows = await this.q<{ release: string; member: string; grp: string; key: string; instance: string; complete: boolean; verified: number; address: string | null; ms_ago: number }>(
      `SELECT release, member, grp, key, instance, complete, verified, address, (EXTRACT(EPOCH FROM (now() - last_seen)) * 1000)::float8 AS ms_ago
       FROM fleetcast_members WHERE last_seen > now() - $1 * interval '1 millisecond' ORDER BY key, member LIMIT $2`,
      [withinMs, limit],
    );
    return rows.map((r) => ({ release: r.release, member: r.member, group: r.grp, key: r.key, instance: r.instance, complete: r.complete, verifiedUnits: r.verified, address: r.address, msAgo: Math.round(Number(r.ms_ago)) }));
  }

  async putHook(h: Omit<HookRow, 'at'>): Promise<void> {
    const result = { durationMs: h.durationMs, ...(h.exitCode !== undefined ? { exitCode: h.exitCode } : {}), ...(h.signal !== undefined ? { signal: h.signal } : {}), ...(h.error !== undefined ? { error: h.error } : {}) };
    await this.q(
      `INSERT INTO fleetcast_hooks (release, grp, member, result, at) VALUES ($1, $2, $3, $4, now())
       ON CONFLICT (release, grp, member) DO UPDATE SET result = EXCLUDED.result, at = now()`,
      [h.release, h.group, h.member, JSON.stringify(result)],
    );
  }

  async hooks(release: string, groups: string[] | null, limit: number): Promise<HookRow[]> {
    const rows = await this.q<{ grp: string; member: string; result: { durationMs?: unknown; exitCode?: unknown; signal?: unknown; error?: unknown }; at_ms: number }>(
      `SELECT grp, member, result, (EXTRACT(EPOCH FROM at) * 1000)::float8 AS at_ms FROM fleetcast_hooks
       WHERE release = $1 AND ($2::text[] IS NULL OR grp = ANY($2::text[])) ORDER BY at DESC LIMIT $3`,
      [release, groups, limit],
    );
    return rows.map((r) => ({
      release, group: r.grp, member: r.member, at: Number(r.at_ms),
      durationMs: typeof r.result.durationMs === 'number' ? r.result.durationMs : 0,
      ...(typeof r.result.exitCode === 'number' ? { exitCode: r.result.exitCode } : {}),
      ...(typeof r.result.signal === 'string' ? { signal: r.result.signal } : {}),
      ...(typeof r.result.error === 'string' ? { error: r.result.error } : {}),
    }));
  }

  async putChannel(head: ChannelHead): Promise<void> {
    await this.q(
      `INSERT INTO fleetcast_channels AS c (channel, head, published_at) VALUES ($1, $2, $3)
       ON CONFLICT (channel) DO UPDATE SET head = EXCLUDED.head, published_at = EXCLUDED.published_at WHERE c.published_at < EXCLUDED.published_at`,
      [head.channel, JSON.stringify(head), head.publishedAt],
    );
  }

  async channels(): Promise<ChannelHead[]> {
    const rows = await this.q<{ head: string }>(`SELECT head FROM fleetcast_channels ORDER BY channel LIMIT 10000`);
    // Parsed like a channel file: a row written by anything else is skipped, not trusted.
    return rows.map((r) => parseChannelHead(Buffer.from(r.head))).filter((h): h is ChannelHead => typeof h !== 'string');
  }

  async putRollouts(rows: RolloutRow[]): Promise<void> {
    if (!rows.length) return;
    await this.q(
      `INSERT INTO fleetcast_rollouts (id, channel, doc, updated_at) SELECT i, c, d, now() FROM unnest($1::text[], $2::text[], $3::text[]) AS t(i, c, d)
       ON CONFLICT (id) DO UPDATE SET channel = EXCLUDED.channel, doc = EXCLUDED.doc, updated_at = now()`,
      [rows.map((r) => r.id), rows.map((r) => r.channel), rows.map((r) => r.doc)],
    );
  }

  async rollouts(channel: string | null, limit: number): Promise<RolloutRow[]> {
    return this.q<RolloutRow>(`SELECT id, channel, doc FROM fleetcast_rollouts WHERE $1::text IS NULL OR channel = $1 ORDER BY id LIMIT $2`, [channel, limit]);
  }

  async close(): Promise<void> {
    const p = this.pool;
    this.pool = null;
    await p?.end().catch(() => {});
  }
}
