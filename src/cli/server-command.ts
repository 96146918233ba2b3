import { promises as fs } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { MAX_ORIGINS, Policy, POLICIES, StartPolicy, START_POLICIES } from '../release/distribution';
import { FleetcastServer, ServerOptions } from '../server/server';
import { LIMIT_DEFAULTS } from '../server/guard';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { createLogger, Level, Logger } from '../util/log';
import { sdNotify, startWatchdog } from '../util/sd-notify';
import { checks, FlagValue, splitHostPort } from './args';
import { Command } from './command';
import { configFlag, logLevelFlag, metricsFlag, onReload, startMetrics, waitForSignal } from './service';

export const server: Command = {
  spec: {
    name: 'server',
    summary: 'Run the origin server: serves manifests and unit bytes over HTTP and allocates units to agents.',
    usage: 'server [--config FILE] --store DIR [--listen HOST:PORT]',
    flags: {
      config: configFlag,
      store: { type: 'string', arg: 'DIR', help: 'store directory (releases written by fleetcast publish); must exist unless --create', required: true },
      create: { type: 'boolean', help: 'create the store directory when it does not exist (otherwise refused: a typo would serve 0 releases)' },
      listen: { type: 'string', arg: 'HOST:PORT', help: 'address to listen on', default: '127.0.0.1:7600', check: checks.hostPort },
      'heartbeat-ms': { type: 'number', arg: 'MS', help: 'heartbeat interval asked of agents while their group transfers', default: 1000, integer: true, min: 50, max: 60000 },
      'idle-heartbeat-ms': { type: 'number', arg: 'MS', help: 'heartbeat interval asked of agents whose whole group holds the release (default 5 x heartbeat_ms)', integer: true, min: 50, max: 60000 },
      'heartbeats-per-sec': { type: 'number', arg: 'N', help: 'heartbeats a second the server aims at, all agents together: past it, agents (protocol 1.4) are asked to beat more slowly (default 5000)', integer: true, min: 1, max: 1000000 },
      'idle-heartbeats-per-sec': { type: 'number', arg: 'N', help: 'heartbeats a second the server aims at from idle agents together: past it, they are asked to beat more slowly, at most every 900 s (default 100)', integer: true, min: 1, max: 1000000 },
      'held-keepalive-ms': { type: 'number', arg: 'MS', help: "idle time before TCP keepalive probes on a follower's held channel poll: a follower gone without closing its connection ends its hold after this plus the kernel's probes (default 60000)", integer: true, min: 1000, max: 3_600_000 },
      'max-members-per-release': { type: 'number', arg: 'N', help: 'live members one release may have, all groups together (default 16384; a 100,000-box fleet needs more)', integer: true, min: 1, max: 10000000 },
      'max-groups-per-release': { type: 'number', arg: 'N', help: 'LAN groups one release may have (default 1024)', integer: true, min: 1, max: 1000000 },
      'max-connections': { type: 'number', arg: 'N', help: 'open connections, all clients together (default 2048; keep it under the open-files limit)', integer: true, min: 1, max: 1000000 },
      'max-connections-per-client': { type: 'number', arg: 'N', help: 'open connections from one client address (default 64)', integer: true, min: 1, max: 1000000 },
      'tls-cert': { type: 'string', arg: 'PEMFILE', help: 'serve HTTPS with this certificate (chain)' },
      'tls-key': { type: 'string', arg: 'PEMFILE', help: "the certificate's private key" },
      'plain-http': { type: 'boolean', help: 'serve plain HTTP (tokens and unencrypted releases cross the network in the clear)' },
      tokens: { type: 'list', arg: 'NAME:TOKEN[,...]', help: 'bearer tokens allowed in, per fleet or per device (none: anyone may join)', check: tokenEntryCheck, reload: true },
      'tokens-file': { type: 'string', arg: 'FILE', help: 'more tokens, one "NAME TOKEN" per line (# comments)', reload: true },
      'operator-tokens': { type: 'list', arg: 'NAME[,NAME]', help: 'names of the tokens that may start, pause, resume and abort rollouts (a device token only reports for itself)', default: 'operator', check: checks.name },
      'shared-tokens': { type: 'boolean', help: 'let one token serve many member ids (per-fleet tokens); by default a token names one device' },
      'content-keys': { type: 'string', arg: 'DIR', help: 'keys of encrypted releases (from publish --encrypt), released only to token holders' },
      policy: { type: 'string', arg: 'POLICY', help: 'default distribution policy: wide, group or representative (publish --policy sets one per release)', default: 'wide', choices: POLICIES },
      start: { type: 'string', arg: 'WHEN', help: 'default start policy: immediate or all-fetched', default: 'immediate', choices: START_POLICIES },
      origin: { type: 'list', arg: 'URL[,URL]', help: `HTTP range origins that serve unit bytes instead of this server (a copy of the store: URL/releases/ID/data; docs/scale-out.md), for releases whose publish --origin names none; at most ${MAX_ORIGINS}`, check: checks.originUrl },
      engine: { type: 'string', arg: 'embedded|URL', help: 'where ownership of each (release, group) and the member registry live: embedded (this process, one server) or a PostgreSQL URL shared by several coordinators (docs/scale-out.md)', default: 'embedded', check: checks.engine },
      'instance-url': { type: 'string', arg: 'URL', help: 'with --engine: the URL other instances reach this one at (requests for groups it owns are proxied there)', check: checks.httpUrl },
      'peer-ca': { type: 'string', arg: 'PEMFILE', help: 'with --engine: CA certificate(s) the other instances\' HTTPS certificates chain to (default: the system\'s)' },
      'min-members': { type: 'number', arg: 'N', help: 'lease nothing to a group (LAN or wide-area) until N members joined it, or until --max-wait after its first (0: start at once)', default: 0, integer: true, min: 0, max: 1_000_000 },
      'max-wait': { type: 'number', arg: 'SECONDS', help: 'how long --min-members holds a group after its first member joined', default: 30, min: 0, max: 86_400 },
      'copy-tree-degree': { type: 'number', arg: 'K', help: 'wide-area groups whose agents all speak protocol 1.5: each copy goes to at most K other sites\' gateways, which pass it on down a tree (0: every member copies to every other site\'s gateway)', default: 4, integer: true, min: 0, max: 64 },
      metrics: metricsFlag,
      'log-level': logLevelFlag,
    },
    validate: (f) => {
      if (Array.isArray(f.origin) && f.origin.length > MAX_ORIGINS) return { flag: 'origin', problem: `names ${f.origin.length} origins; at most ${MAX_ORIGINS}` };
      if ((f['tls-cert'] === undefined) !== (f['tls-key'] === undefined)) return { flag: f['tls-cert'] === undefined ? 'tls-key' : 'tls-cert', problem: 'needs tls_cert and tls_key together' };
      if (f['tls-cert'] !== undefined && f['plain-http']) return { flag: 'plain-http', problem: 'and tls_cert are both set: serve HTTPS or plain HTTP, not both' };
      if (f['tls-cert'] === undefined && !f['plain-http']) return { flag: 'tls-cert', problem: 'is required (with tls_key) to serve HTTPS; set plain_http: true (--plain-http) to serve plain HTTP on purpose' };
      if (f.engine !== undefined && f.engine !== 'embedded' && f['instance-url'] === undefined) return { flag: 'instance-url', problem: 'is required with a shared engine: the other instances proxy requests for the groups this one owns to it' };
      return null;
    },
  },
  async run(a) {
    const { host, port } = splitHostPort(String(a.flags.listen)) as { host: string; port: number };
    const log = createLogger({ level: a.flags['log-level'] as Level });
    const tls = a.flags['tls-cert'] ? { cert: await readConfigFile(String(a.flags['tls-cert']), 'tls_cert'), key: await readConfigFile(String(a.flags['tls-key']), 'tls_key') } : undefined;
    if (tls) checkTlsPair(tls, String(a.flags['tls-cert']), String(a.flags['tls-key']));
    await checkStore(String(a.flags.store), Boolean(a.flags.create), log);
    const tokens = await loadTokens(a.flags);
    const s = new FleetcastServer({ storeDir: String(a.flags.store), host, port, heartbeatMs: a.flags['heartbeat-ms'] as number, idleHeartbeatMs: a.flags['idle-heartbeat-ms'] as number | undefined, logger: log, tls, tokens, sharedTokens: Boolean(a.flags['shared-tokens']), contentKeysDir: a.flags['content-keys'] as string | undefined, policy: a.flags.policy as Policy, start: a.flags.start as StartPolicy, heartbeatsPerSec: a.flags['heartbeats-per-sec'] as number | undefined, idleHeartbeatsPerSec: a.flags['idle-heartbeats-per-sec'] as number | undefined, heldKeepaliveMs: a.flags['held-keepalive-ms'] as number | undefined, limits: serverLimits(a.flags),
      origins: (a.flags.origin as string[] | undefined) ?? [],
      operatorTokens: a.flags['operator-tokens'] as string[],
      cluster: await clusterOptions(a.flags, log),
      allocator: { minMembers: a.flags['min-members'] as number, maxWaitMs: Math.round((a.flags['max-wait'] as number) * 1000), copyTreeDegree: a.flags['copy-tree-degree'] as number } });
    if (!tokens) log.warn('no tokens configured: any client that reaches the server can join and fetch releases');
    else if (a.flags['shared-tokens']) log.warn('shared_tokens: one token may serve many member ids, so any holder of a token can act as any member of that token (per-device tokens bind each member id to its own)');
    let addr;
    try {
      addr = await s.start();
    } catch (err) {
      if (err instanceof FleetcastError) throw err;
      const e = err as NodeJS.ErrnoException;
      throw new FleetcastError(e.code ?? 'LISTEN', `cannot listen on ${host}:${port}: ${e.message}`, ExitCode.UNAVAILABLE);
    }
    const stopMetrics = await startMetrics(server.spec, a.flags.metrics as string | undefined, () => s.metrics(), log);
    // Handlers first, then the line that says we listen: a SIGTERM sent on reading it
    // must not find the default action (the process would die by the signal, not exit 0).
    const signalled = waitForSignal();
    log.info(`fleetcast server listening on ${addr.url} with ${s.store.list().length} release(s) from ${s.store.dir}`);
    const stopReload = onReload(server.spec, a, log, (f) => {
      const changed: string[] = [];
      if (f['log-level'] !== a.flags['log-level']) {
        log.setLevel(f['log-level'] as Level);
        changed.push('log_level');
      }
      return changed;
    }, async (f) => {
      // Tokens are read before anything changes: a bad tokens file keeps the old ones.
      const next = await loadTokens(f);
      s.setTokens(next);
      return `${Object.keys(next ?? {}).length} token(s)`;
    });
    sdNotify(`READY=1\nSTATUS=serving ${s.store.list().length} release(s) on ${addr.url}`);
    const stopWatchdog = startWatchdog();
    await signalled;
    sdNotify('STOPPING=1');
    stopWatchdog();
    stopReload();
    stopMetrics();
    await s.stop();
    return ExitCode.OK;
  },
};

/** --engine URL: the shared engine and this instance's URL; undefined for embedded (one server). */
async function clusterOptions(f: Record<string, FlagValue | undefined>, log: Logger): Promise<ServerOptions['cluster']> {
  const engine = String(f.engine ?? 'embedded');
  if (engine === 'embedded') return undefined;
  const instanceUrl = String(f['instance-url']).replace(/\/+$/, '');
  const { PostgresEngine } = require('../server/engine-postgres') as typeof import('../server/engine-postgres');
  const pg = new PostgresEngine(engine, PostgresEngine.ownerId(instanceUrl), instanceUrl, (err) => log.warn(`shared engine: connection lost: ${err.message}`));
  return { engine: pg, instanceUrl, ...(f['peer-ca'] ? { peerCa: await readConfigFile(String(f['peer-ca']), 'peer_ca') } : {}) };
}

/** The limits set on the command line or in the config (the rest keep LIMIT_DEFAULTS). */
function serverLimits(f: Record<string, FlagValue | undefined>): Partial<typeof LIMIT_DEFAULTS> {
  const out: Partial<typeof LIMIT_DEFAULTS> = {};
  const map = { 'max-members-per-release': 'maxMembersPerRelease', 'max-groups-per-release': 'maxGroupsPerRelease', 'max-connections': 'maxConnections', 'max-connections-per-client': 'maxConnectionsPerClient' } as const;
  for (const [flag, key] of Object.entries(map)) if (f[flag] !== undefined) out[key] = f[flag] as number;
  return out;
}

/**
 * The certificate and key must load and belong together: one line and exit 78, where
 * Node's TLS layer would throw deep inside createServer.
 */
export function checkTlsPair(tls: { cert: string; key: string }, certFile: string, keyFile: string): void {
  try {
    createSecureContext({ cert: tls.cert, key: tls.key });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { reason?: string };
    const mismatch = e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH' || /key values mismatch/i.test(e.message);
    const why = mismatch ? `the key ${keyFile} does not belong to the certificate ${certFile}` : `cannot use ${certFile} with ${keyFile}: ${e.reason ?? e.message}`;
    throw new FleetcastError('TLS_PAIR', `${why}; give tls_cert and tls_key from the same pair`, ExitCode.CONFIG);
  }
}

/** A store that is not there is refused (66) unless --create: a typo would serve nothing, quietly. */
async function checkStore(dir: string, create: boolean, log: Logger): Promise<void> {
  const st = await fs.stat(dir).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : Promise.reject(fromSystemError(err, `store ${dir}`))));
  if (st && !st.isDirectory()) throw new FleetcastError('NOT_A_DIR', `store ${dir} is not a directory`, ExitCode.NOINPUT);
  if (st) return;
  if (!create) throw new FleetcastError('NO_STORE', `store ${dir} does not exist: check the path, publish a release into it (fleetcast publish --store ${dir}), or give --create (create: true) to start empty`, ExitCode.NOINPUT);
  await fs.mkdir(dir, { recursive: true }).catch((err) => Promise.reject(fromSystemError(err, `creating store ${dir}`)));
  log.info(`created an empty store at ${dir}`);
}

function tokenEntryCheck(s: string): string | null {
  return /^[A-Za-z0-9._@-]{1,64}:[\x21-\x7e]{16,512}$/.test(s) ? null : 'entries must be NAME:TOKEN, the token 16-512 printable characters';
}

async function readConfigFile(file: string, key: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new FleetcastError('CONFIG', `${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, ExitCode.CONFIG);
  }
}

/** tokens (NAME:TOKEN entries) and tokens_file ("NAME TOKEN" lines) as name -> token; undefined when none. */
export async function loadTokens(f: Record<string, FlagValue>): Promise<Record<string, string> | undefined> {
  const out: Record<string, string> = {};
  for (const e of (f.tokens as string[] | undefined) ?? []) {
    const i = e.indexOf(':');
    out[e.slice(0, i)] = e.slice(i + 1);
  }
  if (f['tokens-file']) {
    const file = String(f['tokens-file']);
    const text = await readConfigFile(file, 'tokens_file');
    for (const [i, raw] of text.split('\n').entries()) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const m = /^([A-Za-z0-9._@-]{1,64})\s+([\x21-\x7e]{16,512})$/.exec(line);
      if (!m) throw new FleetcastError('CONFIG', `${file}:${i + 1}:1: expected "NAME TOKEN" (token of 16-512 printable characters)`, ExitCode.CONFIG);
      out[m[1]] = m[2];
    }
  }
  return Object.keys(out).length ? out : undefined;
}
