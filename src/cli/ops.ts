import { spawnSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { loadConfigFile } from '../config/config';
import { ExitCode, FleetcastError } from '../util/errors';
import { checks, resolveFlags, usageError } from './args';
import { agent, defaultStatusSocket } from './agent-command';
import { Command } from './command';
import { server } from './server-command';
import { formatBytes, transferLine } from './progress';
import { checkReferences } from './config-check';
import { ServerAccess } from '../net/server-access';
import { describeFetchError, tlsTrustProblem } from '../agent/control-client';
import { dropsText } from '../agent/core/repair-flow';
import type { FleetMemberRecord } from '../wire/http-bodies';

const out = (s: string) => process.stdout.write(s + '\n');

/** GET over a unix socket (the agent's status API). */
function getUnix(socketPath: string, urlPath: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: urlPath, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
  });
}

const rate = (bytesPerSec: number) => `${((bytesPerSec * 8) / 1e6).toFixed(1)} Mbit/s`;

export const status: Command = {
  spec: {
    name: 'status',
    summary: 'Show what the local agent is doing: release, progress, rates, peers on the LAN, role, transport and recent errors.',
    usage: 'status [--socket PATH] [--json]',
    flags: {
      socket: { type: 'string', arg: 'PATH', help: "the agent's status socket (default: $RUNTIME_DIRECTORY/agent.sock or /run/fleetcast/agent.sock)" },
      json: { type: 'boolean', help: 'print the raw JSON' },
    },
  },
  async run(a) {
    const sock = (a.flags.socket as string | undefined) ?? defaultStatusSocket();
    let r;
    try {
      r = await getUnix(sock, '/status');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const hint = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? ' Is the agent running (systemctl status fleetcast-agent)?' : e.code === 'EACCES' ? ' Run as root or as the fleetcast user.' : '';
      throw new FleetcastError('UNREACHABLE', `cannot reach the agent at ${sock}: ${e.code ?? e.message}.${hint}`, ExitCode.UNAVAILABLE);
    }
    if (r.status !== 200) throw new FleetcastError('BAD_RESPONSE', `the agent at ${sock} answered ${r.status}`, ExitCode.UNAVAILABLE);
    if (a.flags.json) {
      out(r.body);
      return ExitCode.OK;
    }
    const s = JSON.parse(r.body) as StatusJson;
    const rel = s.release;
    // The role only where it means something: a gateway of a wide-area group takes the other groups' copies.
    out(`agent ${s.member ?? '(not joined yet)'} in group ${s.group}${s.wideGroup ? ` of wide-area group ${s.wideGroup}, role ${s.role}` : ''}, state ${s.state}, up ${s.uptimeSeconds} s`);
    out(`server   ${s.server}${s.channel ? `, following channel ${s.channel}` : ''}`);
    if (rel) {
      const pct = rel.units ? ((100 * rel.verifiedUnits) / rel.units).toFixed(1) : rel.units === 0 ? '100.0' : '?';
      out(`release  ${rel.name ?? '?'} (${rel.id})${rel.size !== null ? `, ${formatBytes(rel.size)}` : ''}`);
      out(`progress ${rel.verifiedUnits}/${rel.units ?? '?'} units (${pct}%)${rel.complete ? `, complete: ${rel.path}` : ''}`);
      if (rel.verifiedBytes !== undefined && rel.size !== null && !rel.complete) out(`         ${transferLine({ done: rel.verifiedBytes, total: rel.size, bytesPerSec: rel.bytesPerSec ?? null })}`);
    } else if (s.stream) {
      const st = s.stream;
      const ms = (x: number | null) => (x === null ? '?' : `${Math.round(x)} ms`);
      out(`stream   ${st.name}: next unit ${st.nextUnit} of ${st.publishedUnits ?? '?'} published${st.ended ? ' (ended)' : ''}, ${formatBytes(st.sinkBytes)} to the ${st.sinkKind} sink, ${formatBytes(st.bufferBytes)} buffered`);
      out(`latency  publish to delivery p50 ${ms(st.latencyMsP50)}, p99 ${ms(st.latencyMsP99)}; gaps ${st.gaps} (${st.gapUnits} units)`);
      const b = st.batches;
      out(`repairs  ${st.nacksSent ?? 0} NACKs sent (${st.nackEchoes ?? 0} echoes)${st.held ? `; ${st.held.held} datagrams held before they could be taken, ${st.held.replayed} of them taken` : ''}; dropped ${dropsText(st.drops ?? {}) || 'none'}`);
      if (b) out(`batches  ${b.fromServer} from the server, ${b.fromLan} from LAN peers, ${b.relayed} relayed${b.across ? `, ${b.across} sent to other sites` : ''}${b.forwarded ? `, ${b.forwarded} forwarded from other sites` : ''}; ${b.polling ? 'polling the server' : 'a LAN peer relays them'} (${b.fallbacks} fallbacks, ${b.refused} refused, ${b.limited} over the check budget)`);
    } else out('release  none yet');
    out(`rates    WAN ${rate(s.rates.wanBytesPerSec)}, LAN in ${rate(s.rates.lanBytesPerSec)}, sending ${rate(s.rates.sentBytesPerSec)} (limit ${s.rates.limitBytesPerSec ? rate(s.rates.limitBytesPerSec) : '?'})`);
    const members = s.members ?? [];
    out(`members  ${members.length ? members.map((m) => `${m.id}${m.group !== s.group ? ` (${m.group})` : ''} ${m.complete ? 'done' : `${m.verifiedUnits}/${rel?.units ?? '?'}`}`).join(', ') : 'none besides this one'} (the server's view, as in fleetcast fleet)`);
    out(`peers    ${s.peers.length} heard on the LAN in the last 5 s`);
    out(`transport ${s.transport ? `${s.transport.kind}${s.transport.features.length ? ` (${s.transport.features.join(', ')})` : ''}` : 'not open'}`);
    if (s.rollout) out(`rollout  ${s.rollout.rollout} of ${s.rollout.release}: ${s.rollout.state}, wave ${s.rollout.wave + 1} ${s.rollout.waveOpen ? 'open' : 'not open yet'}; here ${s.rollout.local ?? 'not staged yet'}${s.rollout.reason ? ` (${s.rollout.reason})` : ''}`);
    if (s.hook) out(`hook     release ${s.hook.release}: ${s.hook.exitCode !== undefined ? `exit ${s.hook.exitCode}` : (s.hook.signal ?? s.hook.error)} after ${s.hook.durationMs} ms`);
    if (s.lastErrors.length) {
      out('recent errors:');
      for (const e of s.lastErrors.slice(-5)) out(`  ${e.at}  ${e.message}`);
    }
    return ExitCode.OK;
  },
};

/**
 * `config check --as`: the same check in a child process with the user's uid and
 * groups (setpriv from util-linux), so a file the service cannot read shows up here.
 */
function checkAs(as: string, file: string, kind: string): number {
  if (process.getuid?.() !== 0) throw new FleetcastError('NOPERM', 'config check --as needs root (to take the user\'s uid)', ExitCode.NOPERM);
  const [user, groupList] = as.split(':');
  const groups = groupList?.split(',');
  const known = spawnSync('id', ['-u', user]).status === 0;
  const ids = groups ? ['--regid', groups[0], '--groups', groups.join(',')] : known ? ['--regid', String(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout.trim()), '--init-groups'] : ['--regid', user, '--clear-groups'];
  if (!known && !/^\d+$/.test(user)) throw usageError(config.spec, `--as: no user ${JSON.stringify(user)} (give a name from /etc/passwd or a numeric uid)`);
  const bin = realpathSync(process.argv[1]);
  const r = spawnSync('setpriv', ['--reuid', user, ...ids, '--', process.execPath, bin, 'config', 'check', file, '--kind', kind], { stdio: 'inherit', cwd: '/' });
  if (r.error) throw new FleetcastError('NO_SETPRIV', `config check --as needs setpriv (util-linux): ${r.error.message}`, ExitCode.UNAVAILABLE);
  if (r.status === null) throw new FleetcastError('SIGNAL', `the check as ${as} ended by ${r.signal}`, ExitCode.SOFTWARE);
  // setpriv's own failures (an unknown group) exit 1; the check's are sysexits.
  if (r.status === 1) throw usageError(config.spec, `--as ${as}: setpriv could not take that user and groups`);
  return r.status;
}

interface StatusJson {
  uptimeSeconds: number;
  state: string;
  member: string | null;
  group: string;
  server: string;
  channel: string | null;
  role: string;
  wideGroup: string | null;
  release: { id: string; name: string | null; size: number | null; units: number | null; verifiedUnits: number; verifiedBytes?: number; bytesPerSec?: number | null; etaSeconds?: number | null; complete: boolean; path: string | null } | null;
  members?: { id: string; group: string; verifiedUnits: number; complete: boolean }[];
  rates: { wanBytesPerSec: number; lanBytesPerSec: number; sentBytesPerSec: number; limitBytesPerSec: number | null };
  peers: { sender: string; complete: boolean }[];
  transport: { kind: string; features: string[] } | null;
  hook: { release: string; exitCode?: number; signal?: string; error?: string; durationMs: number } | null;
  /** A stream agent (agent --stream): where its sink is, latency, gaps. */
  stream?: { name: string; nextUnit: number; publishedUnits: number | null; ended: boolean; sinkKind: string; sinkBytes: number; bufferBytes: number; latencyMsP50: number | null; latencyMsP99: number | null; gaps: number; gapUnits: number; nacksSent?: number; nackEchoes?: number; held?: { held: number; replayed: number } | null; drops?: Record<string, number>; batches?: { fromServer: number; fromLan: number; relayed: number; across?: number; forwarded?: number; refused: number; fallbacks: number; limited: number; polling: boolean } | null } | null;
  rollout?: { rollout: string; release: string; state: string; wave: number; waveOpen: boolean; local: string | null; reason: string | null } | null;
  lastErrors: { at: string; message: string }[];
}

/** Member fields a server before 1.1 (or before wide-area groups) does not send. */
type OlderServersOmit = 'group' | 'role' | 'badUnits' | 'undeliveredClaims' | 'dataPort' | 'forwarded' | 'lanBytes' | 'gatewayDemotions' | 'originBytes' | 'leases';

interface FleetJson {
  rollouts?: { id: string; channel: string; release: string; state: string; wave: string; reason: string | null }[];
  groups: {
    release: string;
    name: string | null;
    units: number | null;
    group: string;
    missingUnits: number;
    groupComplete: boolean;
    /** Units the origin sent again to this group, by reason (absent from older servers). */
    resentUnits?: Record<string, number>;
    wide?: boolean;
    /** The wire's member record; what older servers may leave out is optional here. */
    members: (Omit<FleetMemberRecord, OlderServersOmit> & Partial<Pick<FleetMemberRecord, OlderServersOmit>>)[];
  }[];
}

export const fleet: Command = {
  spec: {
    name: 'fleet',
    summary: 'Ask the server for every group and member: release, progress, overhead, role, hook result, last seen.',
    usage: 'fleet [--server URL] [--json]',
    flags: {
      server: { type: 'string', arg: 'URL', help: 'origin server', default: 'https://127.0.0.1:7600', check: checks.httpUrl },
      'token-file': { type: 'string', arg: 'FILE', help: 'bearer token for the server' },
      ca: { type: 'string', arg: 'PEMFILE', help: "CA the server's certificate must chain to" },
      'plain-http': { type: 'boolean', help: 'allow a plain http:// server URL' },
      json: { type: 'boolean', help: 'print the raw JSON' },
    },
    // The same rule, and exit status (64), as the agent's.
    validate: (f) => (String(f.server).startsWith('http:') && !f['plain-http'] ? { flag: 'server', problem: 'is plain HTTP: use https://, or give --plain-http on purpose' } : null),
  },
  async run(a) {
    const access = ServerAccess.fromFiles({ url: String(a.flags.server), tokenFile: a.flags['token-file'] as string | undefined, caFile: a.flags.ca as string | undefined, plainHttp: Boolean(a.flags['plain-http']) });
    let res: Response;
    try {
      res = await access.fetch('/v1/fleet', { signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      throw tlsTrustProblem(err, String(a.flags.server)) ?? new FleetcastError('UNREACHABLE', `cannot reach the server at ${a.flags.server}: ${describeFetchError(err)}`, ExitCode.UNAVAILABLE);
    }
    const body = await res.text();
    if (res.status === 401) throw new FleetcastError('UNAUTHORIZED', 'the server refused the token (401): check --token-file', ExitCode.NOPERM);
    if (!res.ok) throw new FleetcastError('BAD_RESPONSE', `the server answered ${res.status}: ${body.slice(0, 200)}`, ExitCode.UNAVAILABLE);
    if (a.flags.json) {
      out(body);
      return ExitCode.OK;
    }
    const f = JSON.parse(body) as FleetJson;
    for (const r of f.rollouts ?? []) out(`rollout ${r.id} on ${r.channel} (${r.release}): ${r.state}, wave ${r.wave}${r.reason ? `: ${r.reason}` : ''}`);
    if (f.groups.length === 0) out('no groups yet: no agent has joined');
    for (const g of f.groups) {
      const resent = Object.entries(g.resentUnits ?? {}).filter(([, n]) => n > 0);
      out(
        `${g.name ?? '?'} (${g.release}) ${g.wide ? 'wide-area group' : 'group'} ${g.group}: ${g.members.length} member(s), ${g.groupComplete ? 'complete' : `${g.missingUnits} unit(s) nobody holds yet`}` +
          `; origin re-sends: ${resent.length ? resent.map(([r, n]) => `${n} ${r}`).join(', ') : 'none'}`,
      );
      // LAN group and role mean something only in a wide-area group (the gateway takes
      // the other groups' copies); in a plain group every member is alike but for rank.
      const rows = [['MEMBER', ...(g.wide ? ['LAN GROUP', 'ROLE'] : []), 'RANK', 'UNITS', 'OVERHEAD', 'HOOK', 'LAST SEEN']];
      for (const m of g.members) {
        const hook = m.hook ? (m.hook.exitCode !== null ? `exit ${m.hook.exitCode}` : (m.hook.signal ?? m.hook.error ?? 'failed')) : '-';
        rows.push([
          m.id,
          ...(g.wide ? [m.group || g.group, m.role ?? 'member'] : []),
          `#${m.rank}`,
          `${m.verifiedUnits}/${g.units ?? '?'}${m.complete ? ' done' : ''}`,
          m.overheadMsPerMiB === null ? '-' : `${m.overheadMsPerMiB.toFixed(1)} ms/MiB${m.overheadBeforeRestart ? '*' : ''}`,
          hook,
          `${(m.lastSeenMsAgo / 1000).toFixed(1)} s ago`,
        ]);
      }
      const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
      for (const r of rows) out('  ' + r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd());
      for (const m of g.members) {
        if (m.undeliveredClaims) out(`  ! ${m.id}: ${m.undeliveredClaims} unit(s) it claimed to hold never reached its LAN group; the claims expired and the units were leased again`);
      }
      for (const m of g.members) for (const b of m.badUnits ?? []) out(`  ! ${m.id}: unit ${b.unit} from the server failed verification ${b.failures} times in a row (check the server's store)`);
    }
    if (f.groups.length) {
      out('');
      out('UNITS: verified / all units of the release. OVERHEAD: how long the member takes per MiB, from the');
      out("server sending a unit to the member's receipt of it (ms/MiB, smoothed; lower is faster; - until measured).");
      out('RANK: by overhead, #1 lowest; faster members get more units. HOOK: the on_complete exit status.');
      if (f.groups.some((g) => g.members.some((m) => m.overheadBeforeRestart))) out('*: measured before the server restarted; not measured again yet.');
    }
    return ExitCode.OK;
  },
};

export const config: Command = {
  spec: {
    name: 'config',
    summary:
      'Check a YAML config file the way the agent or server would load it, and what it names: the trust, CA and token files, the interface, the TLS certificate and key (a pair?), the tokens file, the store. Exits 0 when all is well, 78 when not (77 when only permissions are wrong, 66 when the file is missing).',
    usage: 'config check FILE [--kind agent|server] [--as USER[:GROUP,...]]',
    positionals: [
      { name: 'ACTION', required: true },
      { name: 'FILE', required: true },
    ],
    flags: {
      kind: { type: 'string', arg: 'KIND', help: 'agent or server (default: from the file name)', choices: ['agent', 'server'] },
      as: { type: 'string', arg: 'USER[:GROUP,...]', help: "check as this user (name or uid) with these groups (the first is the primary; default: the user's own), as the service will read the files: e.g. nobody:nogroup,fleetcast for a unit with DynamicUser= and SupplementaryGroups=fleetcast (needs root)", check: (v) => (/^[A-Za-z0-9._-]+(:[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*)?$/.test(v) ? null : `must be USER or USER:GROUP[,GROUP...], not ${JSON.stringify(v)}`) },
    },
  },
  async run(a) {
    const [action, file] = a.positionals;
    if (action !== 'check') throw usageError(config.spec, `unknown action ${JSON.stringify(action)} (the only one is check)`);
    const base = path.basename(file);
    const kind = (a.flags.kind as string | undefined) ?? (base.includes('server') ? 'server' : base.includes('agent') ? 'agent' : undefined);
    if (!kind) throw usageError(config.spec, `cannot tell from the name ${JSON.stringify(base)} whether this is an agent or server config: give --kind`);
    if (a.flags.as !== undefined) return checkAs(String(a.flags.as), path.resolve(file), kind);
    const spec = kind === 'server' ? server.spec : agent.spec;
    const values = await loadConfigFile(file, spec);
    const flags = resolveFlags(spec, {}, values);
    const { problems, notes } = await checkReferences(kind as 'agent' | 'server', flags, values);
    const at = (w: { file: string; line: number; col: number }) => `${w.file}:${w.line}:${w.col}`;
    for (const n of notes) out(`${at(n.at)}: note: ${n.message}`);
    for (const p of problems) process.stderr.write(`${at(p.at)}: ${p.message}\n`);
    if (problems.length) {
      const perms = problems.every((p) => p.permission);
      throw new FleetcastError(perms ? 'NOPERM' : 'CONFIG', `${file}: ${problems.length} problem(s) with what the config names (above)${perms ? '; fix the owner or mode of those files' : ''}`, perms ? ExitCode.NOPERM : ExitCode.CONFIG);
    }
    out(`${file}: valid ${kind} config (${Object.keys(values.values).length} key(s)); the files it names, the ${kind === 'agent' ? 'interface' : 'TLS pair and store'} check out${process.getuid?.() === 0 ? ' (as root: give --as to check as the service user)' : ''}`);
    return ExitCode.OK;
  },
};
