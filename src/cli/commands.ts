import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createSecureContext } from 'node:tls';
import { Agent } from '../agent/agent';
import { resolveInterface } from '../net/interface';
import { IgmpQuerier } from '../net/igmp';
import { ServerAccess } from '../net/server-access';
import { generateKeyPair, loadPrivateKey, loadPublicKey } from '../release/keys';
import { isReleaseId } from '../release/manifest';
import { publishRelease } from '../release/publish';
import { FleetcastServer } from '../server/server';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { createLogger, Level } from '../util/log';
import { sdNotify } from '../util/sd-notify';
import { checks, CommandSpec, FlagValue, ParsedArgs, resolveFlags, splitHostPort } from './args';
import { formatBytes, ProgressBar, RateMeter, transferLine, verifiedBytes } from './progress';
import { loadConfigFile } from '../config/config';
import { AgentDaemon } from '../agent/daemon';
import { setChannel, CHANNEL_RE } from '../release/channels';
import { Policy, POLICIES, StartPolicy, START_POLICIES, writeDistribution } from '../release/distribution';
import { serveMetrics } from '../util/metrics';
import { startWatchdog, statusNotifier } from '../util/sd-notify';
import { Logger } from '../util/log';
import { parseWindow } from '../wire/rollout';

export interface Command {
  spec: CommandSpec;
  /** `args.flags` are resolved (file, flags, defaults); `cliFlags` are only what the command line gave. */
  run(args: ParsedArgs & { cliFlags: Record<string, FlagValue> }): Promise<number>;
}

const out = (s: string) => process.stdout.write(s + '\n');

export const keygen: Command = {
  spec: {
    name: 'keygen',
    summary: 'Create an Ed25519 key pair for signing releases: DIR/server.key (private) and DIR/server.pub (give this to agents).',
    usage: 'keygen --out DIR',
    flags: { out: { type: 'string', arg: 'DIR', help: 'directory for server.key and server.pub', required: true } },
  },
  async run(a) {
    const { keyPath, pubPath } = await generateKeyPair(String(a.flags.out));
    out(`private key: ${keyPath}`);
    out(`public key:  ${pubPath}`);
    return ExitCode.OK;
  },
};

export const publish: Command = {
  spec: {
    name: 'publish',
    summary: 'Split FILE into units, hash and sign them, and store the release for the server. Prints the release id last.',
    usage: 'publish FILE --store DIR --key KEYFILE [--name NAME] [--unit-size BYTES] [--channel NAME]',
    positionals: [{ name: 'FILE', required: true }],
    flags: {
      store: { type: 'string', arg: 'DIR', help: "the server's store directory", required: true },
      key: { type: 'string', arg: 'KEYFILE', help: 'Ed25519 private key (from fleetcast keygen)', required: true },
      name: { type: 'string', arg: 'NAME', help: 'release name, also the file name on agents (default: the file name)' },
      'unit-size': { type: 'number', arg: 'BYTES', help: 'unit size in bytes', default: 1048576, integer: true, min: 1024, max: 1 << 30 },
      channel: { type: 'string', arg: 'NAME', help: "make the release this channel's current one (agents following it move to it)", check: channelCheck },
      encrypt: { type: 'boolean', help: 'encrypt the content (AES-256-GCM per unit); the key goes to --content-keys, never into the store' },
      policy: { type: 'string', arg: 'POLICY', help: 'distribution: wide (one copy per wide-area group), group (one per LAN group) or representative (each group\'s best member fetches all)', choices: POLICIES },
      start: { type: 'string', arg: 'WHEN', help: 'LAN exchange: immediate (as units arrive) or all-fetched (once every unit is held)', choices: START_POLICIES },
      'content-keys': { type: 'string', arg: 'DIR', help: "with --encrypt: directory for the release's key (the server's content_keys)" },
    },
    validate: (f) => {
      if (f.encrypt && f['content-keys'] === undefined) return { flag: 'content-keys', problem: 'is required with --encrypt: where the key is kept, outside the store' };
      if (!f.encrypt && f['content-keys'] !== undefined) return { flag: 'content-keys', problem: 'only goes with --encrypt' };
      return null;
    },
  },
  async run(a) {
    const key = await loadPrivateKey(String(a.flags.key));
    const bar = new ProgressBar('publish');
    const m = await publishRelease(a.positionals[0], String(a.flags.store), key, {
      name: a.flags.name as string | undefined,
      unitSize: a.flags['unit-size'] as number,
      onProgress: (d, t) => bar.update(d, t, formatBytes(d)),
      contentKeysDir: a.flags.encrypt ? String(a.flags['content-keys']) : undefined,
    });
    bar.finish();
    out(`published ${m.name}: ${formatBytes(m.size)} in ${m.unitCount} units of ${formatBytes(m.unitSize)}, sha256 ${m.sha256}${m.enc ? ` (encrypted; plaintext sha256 ${m.plainSha256}, key in ${a.flags['content-keys']})` : ''}`);
    if (a.flags.policy || a.flags.start) {
      await writeDistribution(path.join(String(a.flags.store), 'releases', m.id), { policy: a.flags.policy as Policy | undefined, start: a.flags.start as StartPolicy | undefined });
      out(`distribution: policy ${a.flags.policy ?? '(server default)'}, start ${a.flags.start ?? '(server default)'}`);
    }
    if (a.flags.channel) {
      await setChannel(String(a.flags.store), { channel: String(a.flags.channel), release: m.id, name: m.name, publishedAt: Date.now() });
      out(`channel ${a.flags.channel} now points at ${m.id}`);
    }
    out(m.id);
    return ExitCode.OK;
  },
};

function channelCheck(s: string): string | null {
  return CHANNEL_RE.test(s) ? null : `must be 1–64 letters, digits or . _ -, not ${JSON.stringify(s)}`;
}

const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
const configFlag = { type: 'string', arg: 'FILE', help: 'YAML config file (see systemd/*.yaml.example)', cliOnly: true } as const;
const logLevelFlag = { type: 'string', arg: 'LEVEL', help: 'error, warn, info or debug', default: 'info', choices: LOG_LEVELS, reload: true } as const;
const metricsFlag = { type: 'string', arg: 'HOST:PORT', help: 'serve Prometheus metrics at http://HOST:PORT/metrics', check: checks.hostPort } as const;

async function startMetrics(spec: CommandSpec, addr: string | undefined, render: () => string, log: Logger): Promise<() => void> {
  if (!addr) return () => undefined;
  const hp = splitHostPort(addr) as { host: string; port: number };
  try {
    const srv = await serveMetrics(hp.host, hp.port, render, log);
    log.info(`metrics at http://${addr}/metrics`);
    return () => srv.close();
  } catch (err) {
    throw new FleetcastError('LISTEN', `${spec.name}: cannot serve metrics on ${addr}: ${(err as Error).message}`, ExitCode.UNAVAILABLE);
  }
}

/**
 * SIGHUP: read the config file again and hand the result to `apply`. A file that does
 * not load or validate leaves the running config as it is and says why.
 */
function onReload(
  spec: CommandSpec,
  a: { flags: Record<string, FlagValue>; cliFlags: Record<string, FlagValue> },
  log: Logger,
  apply: (f: Record<string, FlagValue>) => string[],
  prepare?: (f: Record<string, FlagValue>) => Promise<string>,
): () => void {
  const handler = () => {
    const file = a.cliFlags.config;
    if (file === undefined) {
      log.warn('SIGHUP: no --config file to reload');
      return;
    }
    sdNotify('RELOADING=1');
    loadConfigFile(String(file), spec)
      .then(async (cfg) => {
        const next = resolveFlags(spec, a.cliFlags, cfg);
        const prepared = prepare ? await prepare(next) : null;
        const changed = apply(next);
        if (prepared) changed.push(prepared);
        const fixed = Object.keys(spec.flags).filter((k) => !spec.flags[k].reload && !spec.flags[k].cliOnly && JSON.stringify(next[k]) !== JSON.stringify(a.flags[k]));
        for (const k of Object.keys(spec.flags)) if (spec.flags[k].reload) a.flags[k] = next[k];
        log.info(`reloaded ${file}: ${changed.length ? `changed ${changed.join(', ')}` : 'nothing to change'}`);
        if (fixed.length) log.warn(`reloaded ${file}: ${fixed.join(', ')} changed but only take effect after a restart`);
      })
      .catch((err: Error) => log.error(`SIGHUP: ${err.message}; keeping the running config`))
      .finally(() => sdNotify('READY=1'));
  };
  process.on('SIGHUP', handler);
  return () => process.off('SIGHUP', handler);
}

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
      'tls-cert': { type: 'string', arg: 'PEMFILE', help: 'serve HTTPS with this certificate (chain)' },
      'tls-key': { type: 'string', arg: 'PEMFILE', help: "the certificate's private key" },
      'plain-http': { type: 'boolean', help: 'serve plain HTTP (tokens and unencrypted releases cross the network in the clear)' },
      tokens: { type: 'list', arg: 'NAME:TOKEN[,...]', help: 'bearer tokens allowed in, per fleet or per device (none: anyone may join)', check: tokenEntryCheck, reload: true },
      'tokens-file': { type: 'string', arg: 'FILE', help: 'more tokens, one "NAME TOKEN" per line (# comments)', reload: true },
      'shared-tokens': { type: 'boolean', help: 'let one token serve many member ids (per-fleet tokens); by default a token names one device' },
      'content-keys': { type: 'string', arg: 'DIR', help: 'keys of encrypted releases (from publish --encrypt), released only to token holders' },
      policy: { type: 'string', arg: 'POLICY', help: 'default distribution policy: wide, group or representative (publish --policy sets one per release)', default: 'wide', choices: POLICIES },
      start: { type: 'string', arg: 'WHEN', help: 'default start policy: immediate or all-fetched', default: 'immediate', choices: START_POLICIES },
      metrics: metricsFlag,
      'log-level': logLevelFlag,
    },
    validate: (f) => {
      if ((f['tls-cert'] === undefined) !== (f['tls-key'] === undefined)) return { flag: f['tls-cert'] === undefined ? 'tls-key' : 'tls-cert', problem: 'needs tls_cert and tls_key together' };
      if (f['tls-cert'] !== undefined && f['plain-http']) return { flag: 'plain-http', problem: 'and tls_cert are both set: serve HTTPS or plain HTTP, not both' };
      if (f['tls-cert'] === undefined && !f['plain-http']) return { flag: 'tls-cert', problem: 'is required (with tls_key) to serve HTTPS; set plain_http: true (--plain-http) to serve plain HTTP on purpose' };
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
    const s = new FleetcastServer({ storeDir: String(a.flags.store), host, port, heartbeatMs: a.flags['heartbeat-ms'] as number, idleHeartbeatMs: a.flags['idle-heartbeat-ms'] as number | undefined, logger: log, tls, tokens, sharedTokens: Boolean(a.flags['shared-tokens']), contentKeysDir: a.flags['content-keys'] as string | undefined, policy: a.flags.policy as Policy, start: a.flags.start as StartPolicy });
    if (!tokens) log.warn('no tokens configured: any client that reaches the server can join and fetch releases');
    else if (a.flags['shared-tokens']) log.warn('shared_tokens: one token may serve many member ids, so any holder of a token can act as any member of that token (per-device tokens bind each member id to its own)');
    let addr;
    try {
      addr = await s.start();
    } catch (err) {
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

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

/** Where `fleetcast status` finds the agent: systemd's RuntimeDirectory, else /run/fleetcast. */
export function defaultStatusSocket(env: NodeJS.ProcessEnv = process.env): string {
  const rt = env.RUNTIME_DIRECTORY?.split(':')[0];
  return path.join(rt || '/run/fleetcast', 'agent.sock');
}

export const agent: Command = {
  spec: {
    name: 'agent',
    summary:
      "Run an agent: join the group, fetch the units leased to it over the WAN, multicast them to the LAN, take peers' copies, repair gaps with NACKs, verify and store the release. Follows a channel, or stays on one release.",
    usage: 'agent [--config FILE] --server URL --group NAME --interface NAME|ADDR --multicast ADDR:PORT --storage DIR --trust PUBFILE (--release ID | --channel NAME) [--once]',
    flags: {
      config: configFlag,
      server: { type: 'string', arg: 'URL', help: 'origin server, e.g. https://origin.example:7600', required: true, check: checks.httpUrl },
      token: { type: 'string', arg: 'TOKEN', help: 'bearer token for the server (prefer token_file)' },
      'token-file': { type: 'string', arg: 'FILE', help: 'file holding the bearer token' },
      ca: { type: 'string', arg: 'PEMFILE', help: "CA certificate(s) the server's HTTPS certificate must chain to (default: the system's)" },
      'plain-http': { type: 'boolean', help: 'allow a plain http:// server URL (the token and release metadata travel in the clear)' },
      group: { type: 'string', arg: 'NAME', help: 'LAN group name (agents on one multicast LAN share it)', required: true, check: checks.name },
      'wide-group': { type: 'string', arg: 'NAME', help: 'wide-area group of several LAN groups: each unit leaves the server once for all of them (policy wide)', check: checks.name },
      interface: { type: 'string', arg: 'NAME|ADDR', help: 'LAN interface name or address', required: true, check: checks.nonEmpty },
      multicast: { type: 'string', arg: 'ADDR:PORT', help: "the group's multicast address and port", required: true, check: checks.multicast },
      storage: { type: 'string', arg: 'DIR', help: 'where releases are stored', required: true, check: checks.nonEmpty },
      trust: { type: 'list', arg: 'PUBFILE[,PUBFILE]', help: 'public key(s) whose signatures are trusted', required: true },
      release: { type: 'string', arg: 'ID', help: 'stay on this release id (printed by fleetcast publish)', check: (s) => (isReleaseId(s) ? null : `must be a release id (32 hex characters), not ${JSON.stringify(s)}`) },
      channel: { type: 'string', arg: 'NAME', help: "follow this channel: move to each new current release by itself", check: channelCheck, reload: true },
      'allow-downgrade': { type: 'boolean', help: 'follow the channel back to an older release (refused by default: it could be a replay)', reload: true },
      keep: { type: 'number', arg: 'N', help: 'completed releases to keep on disk (older ones and superseded partials are removed)', default: 2, integer: true, min: 1, max: 1000, reload: true },
      'on-complete': { type: 'string', arg: 'COMMAND', help: 'run COMMAND (via /bin/sh) once per verified release; FLEETCAST_FILE etc. in its environment', reload: true },
      'hook-timeout': { type: 'number', arg: 'SECONDS', help: 'kill the hook after this long', default: 600, min: 1, max: 86400, reload: true },
      'on-rollback': { type: 'string', arg: 'COMMAND', help: 'rollouts: run COMMAND when an install or its health check fails (or on abort --rollback); FLEETCAST_PREVIOUS_FILE is the previous release' },
      'health-check': { type: 'string', arg: 'COMMAND', help: 'rollouts: after the install hook, the release is committed once COMMAND exits 0 (it may run again after a reboot)' },
      'health-timeout': { type: 'number', arg: 'SECONDS', help: 'rollouts: a health check running longer fails', default: 600, min: 1, max: 86400 },
      'install-window': { type: 'string', arg: 'WINDOW', help: 'rollouts: install only inside this window, local time ("Mon-Fri 02:00-04:00"); overrides the rollout\'s --window', check: (s) => { const w = parseWindow(s); return typeof w === 'string' ? w : null; } },
      once: { type: 'boolean', help: 'exit 0 once the release is complete and verified, printing its path' },
      member: { type: 'string', arg: 'ID', help: 'member id (default: kept in STORAGE/member-id)', check: checks.name },
      rate: { type: 'number', arg: 'MBIT', help: 'LAN send rate limit in Mbit/s', default: 500, min: 0, minExclusive: true, max: 100000, reload: true },
      'cross-rate': { type: 'number', arg: 'MBIT', help: "wide-area groups: cap on copies to other sites' gateways; under it the pace of each path is learned from the receiving gateway's feedback", default: 100, min: 0, minExclusive: true, max: 100000 },
      linger: { type: 'number', arg: 'SECONDS', help: 'with --once: keep answering NACKs until the group is complete, at most this long', default: 60, min: 0, max: 86400 },
      timeout: { type: 'number', arg: 'SECONDS', help: 'with --once: give up after this long (0 = never)', default: 0, min: 0 },
      report: { type: 'string', arg: 'FILE', help: 'with --once: write a JSON report of the transfer to FILE' },
      'channel-poll': { type: 'number', arg: 'SECONDS', help: 'how often to ask the server for the channel\'s current release', default: 10, min: 0.05, max: 3600 },
      'status-socket': { type: 'string', arg: 'PATH', help: "unix socket for 'fleetcast status' (default: $RUNTIME_DIRECTORY/agent.sock or /run/fleetcast/agent.sock; 'none' to disable)" },
      metrics: metricsFlag,
      'igmp-querier': { type: 'boolean', help: 'send IGMP general queries on the LAN when no lower-addressed querier does (needs CAP_NET_RAW)' },
      'igmp-interval': { type: 'number', arg: 'SECONDS', help: 'IGMP query interval', default: 125, min: 0.2, max: 3175 },
      loss: { type: 'number', arg: 'PCT', help: 'testing: drop this share of received datagrams', default: 0, min: 0, max: 99.999 },
      'wan-rate': { type: 'number', arg: 'MBIT', help: 'testing: cap this agent\'s downloads from the server (a slow uplink)', min: 0, minExclusive: true, max: 100000 },
      'fragment-bytes': { type: 'number', arg: 'BYTES', help: 'fragment payload size (default: from the interface MTU)', integer: true, min: 64, max: 65467 },
      'log-level': logLevelFlag,
    },
    validate: (f) => {
      if (String(f.server).startsWith('http:') && !f['plain-http']) return { flag: 'server', problem: 'is plain HTTP: use https://, or set plain_http: true (--plain-http) on purpose' };
      if (f.token !== undefined && f['token-file'] !== undefined) return { flag: 'token', problem: 'and token_file are both set: give one' };
      if (f.release !== undefined && f.channel !== undefined) return { flag: 'channel', problem: 'and release are both set: follow a channel or stay on one release, not both' };
      if (f.release === undefined && f.channel === undefined) return { flag: 'release', problem: 'or channel is required: which release to fetch' };
      return null;
    },
  },
  async run(a) {
    const f = a.flags;
    const log = createLogger({ level: f['log-level'] as Level });
    const mc = splitHostPort(String(f.multicast)) as { host: string; port: number };
    const trustedKeys = await Promise.all((f.trust as string[]).map((p) => loadPublicKey(p)));
    const bar = new ProgressBar('agent');
    const meter = new RateMeter();
    const notifyStatus = statusNotifier();
    let barRelease: string | null = null;
    const daemon = new AgentDaemon({
      agent: {
        server: ServerAccess.fromFiles({ url: String(f.server), token: f.token as string | undefined, tokenFile: f['token-file'] as string | undefined, caFile: f.ca as string | undefined, plainHttp: Boolean(f['plain-http']) }),
        group: String(f.group),
        wideGroup: f['wide-group'] as string | undefined,
        member: f.member as string | undefined,
        interface: String(f.interface),
        multicast: { address: mc.host, port: mc.port },
        storageDir: String(f.storage),
        trustedKeys,
        rateBytesPerSec: ((f.rate as number) * 1e6) / 8,
        crossRateBytesPerSec: ((f['cross-rate'] as number) * 1e6) / 8,
        lossPct: f.loss as number,
        wanRateBytesPerSec: f['wan-rate'] ? ((f['wan-rate'] as number) * 1e6) / 8 : undefined,
        fragmentBytes: f['fragment-bytes'] as number | undefined,
        lingerMs: (f.linger as number) * 1000,
      },
      release: f.release as string | undefined,
      channel: f.channel as string | undefined,
      keep: f.keep as number,
      onComplete: f['on-complete'] as string | undefined,
      hookTimeoutMs: (f['hook-timeout'] as number) * 1000,
      channelPollMs: (f['channel-poll'] as number) * 1000,
      allowDowngrade: Boolean(f['allow-downgrade']),
      install: {
        onRollback: f['on-rollback'] as string | undefined,
        healthCheck: f['health-check'] as string | undefined,
        healthTimeoutMs: (f['health-timeout'] as number) * 1000,
        installWindow: f['install-window'] as string | undefined,
      },
      logger: log,
      onProgress: (d) => {
        const ag = d.current;
        if (!ag) return;
        const p = ag.progress;
        const m = ag.manifest;
        if (barRelease !== d.currentRelease) {
          bar.relabel(m.name);
          barRelease = d.currentRelease;
        }
        const done = verifiedBytes(p, m.size, m.unitSize);
        meter.add(done);
        bar.update(done, m.size, transferLine({ done, total: m.size, bytesPerSec: meter.rate() }));
        if (p.verified === p.total) bar.finish();
        const pct = p.total ? Math.floor((100 * p.verified) / p.total) : 100;
        notifyStatus(`${ag.manifest.name}: ${p.verified}/${p.total} units verified (${pct}%)`, p.verified === p.total);
      },
      onState: (d) => {
        const name = d.current?.manifest?.name ?? d.currentRelease ?? '';
        const line = { starting: 'starting', fetching: `fetching ${name}`, complete: `${name} complete; serving repairs to the group`, waiting: 'waiting for a release', retrying: `retrying: ${d.lastErrors.at(-1)?.message ?? ''}`, stopped: 'stopping' }[d.state];
        notifyStatus(line, true);
      },
    });
    const socketFlag = f['status-socket'] as string | undefined;
    const socketPath = socketFlag === undefined ? defaultStatusSocket() : socketFlag === 'none' || socketFlag === '' ? null : socketFlag;
    // In the background: the agent's start waits on nothing but its config and the server.
    if (socketPath) {
      void daemon.serveStatus(socketPath).then(
        () => log.debug(`status on ${socketPath}`),
        (err: Error) => log.warn(`no status socket at ${socketPath}: ${err.message} ('fleetcast status' will not reach this agent)`),
      );
    }
    const stopMetrics = await startMetrics(agent.spec, f.metrics as string | undefined, () => daemon.metrics(), log);
    const querier = f['igmp-querier'] ? startQuerier(String(f.interface), (f['igmp-interval'] as number) * 1000, log) : null;
    if (querier) {
      daemon.statusExtras = () => ({
        igmpQuerier: querier.q
          ? { querying: querier.q.querying, queriesSent: querier.q.queriesSent, queriesHeard: querier.q.queriesHeard, otherQuerier: querier.q.otherQuerier, error: null }
          : { querying: false, error: querier.error },
      });
    }
    const stopReload = onReload(agent.spec, a, log, (n) =>
      daemon.reload({
        rateBytesPerSec: ((n.rate as number) * 1e6) / 8,
        channel: n.channel as string | undefined,
        keep: n.keep as number,
        onComplete: n['on-complete'] as string | undefined,
        hookTimeoutMs: (n['hook-timeout'] as number) * 1000,
        allowDowngrade: Boolean(n['allow-downgrade']),
        logLevel: n['log-level'] as Level,
      }).concat(n['log-level'] !== f['log-level'] ? ['log_level'] : []),
    );
    const stopWatchdog = startWatchdog();
    sdNotify('READY=1');
    let stopping = false;
    const onSignal = () => {
      if (stopping) return;
      stopping = true;
      sdNotify('STOPPING=1');
      void daemon.stop().finally(() => process.exit(ExitCode.OK));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const cleanup = () => {
      querier?.q?.stop();
      stopWatchdog();
      stopReload();
      stopMetrics();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    };
    if (!f.once) {
      try {
        await daemon.runForever();
      } finally {
        // An error no retry fixes (an untrusted certificate) ends the service here too.
        await daemon.stop();
        cleanup();
      }
      return ExitCode.OK;
    }
    const timeoutS = f.timeout as number;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      if (timeoutS > 0) {
        timer = setTimeout(() => {
          const p = daemon.current?.progress ?? { verified: 0, total: 0 };
          reject(new FleetcastError('TIMEOUT', `gave up after ${timeoutS} s: ${p.verified} of ${p.total} units verified`, ExitCode.TEMPFAIL));
        }, timeoutS * 1000);
      }
    });
    try {
      const { agent: ag, path: finalPath } = await Promise.race([daemon.runOnce(), timedOut]);
      bar.finish();
      await Promise.race([ag.linger(), timedOut]);
      if (f.report) await writeReport(String(f.report), ag, finalPath, true);
      await daemon.stop();
      out(finalPath);
      return ExitCode.OK;
    } catch (err) {
      bar.finish();
      if (f.report && daemon.current) await writeReport(String(f.report), daemon.current, null, false).catch(() => undefined);
      await daemon.stop();
      throw err;
    } finally {
      if (timer) clearTimeout(timer);
      cleanup();
    }
  },
};

/** The IGMP querier, or why it is not running (the transfer goes on without it). */
function startQuerier(iface: string, intervalMs: number, log: Logger): { q: IgmpQuerier | null; error: string | null } {
  try {
    const i = resolveInterface(iface, 4);
    if (!i.name) throw new Error(`no interface has address ${iface}`);
    const q = new IgmpQuerier({ interfaceName: i.name, interfaceAddress: i.address, intervalMs, log: log.child('igmp') });
    q.start();
    return { q, error: null };
  } catch (err) {
    const m = `igmp_querier is on but cannot run: ${(err as Error).message}`;
    log.error(m);
    return { q: null, error: m };
  }
}

async function writeReport(file: string, ag: Agent, finalPath: string | null, ok: boolean): Promise<void> {
  const report = { ok, path: finalPath, sha256: ok ? ag.manifest.sha256 : null, ...ag.stats, transportInfo: ag.transportInfo ?? null };
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await fs.writeFile(file, JSON.stringify(report, null, 2) + '\n');
}
