import { describeFetchError } from '../agent/control-client';
import { ServerAccess } from '../net/server-access';
import { CHANNEL_RE } from '../release/channels';
import { isReleaseId, isRolloutId } from '../wire/ids';
import { parseDuration, parseMaxFailures, parseWaves, parseWindow, summary } from '../server/rollout';
import { ExitCode, FleetcastError } from '../util/errors';
import { checks, usageError } from './args';
import { Command } from './command';

/**
 * `fleetcast rollout start|status|pause|resume|abort`: the operator's side of rollouts
 * (docs/rollouts.md). Everything goes through the server's API, which owns the state;
 * input is checked here first, so a bad wave list or window changes nothing (exit 64).
 */
const out = (s: string) => process.stdout.write(s + '\n');
const err = (check: (s: string) => unknown) => (s: string) => {
  const r = check(s);
  return typeof r === 'string' ? r : null;
};

type Summary = ReturnType<typeof summary>;

export const rollout: Command = {
  spec: {
    name: 'rollout',
    summary: 'Roll a release out to a channel wave by wave, with a failure threshold, an install window and rollback; or show, pause, resume or abort a rollout.',
    usage: [
      'rollout start --channel NAME --release ID [--waves 1%,10%,50%,100% | --waves site-a,site-b,*] [--max-failures N|N%] [--wave-wait DURATION] [--window "Mon-Fri 02:00-04:00"]',
      '       fleetcast rollout status [ID] [--json]',
      '       fleetcast rollout pause|resume ID',
      '       fleetcast rollout abort ID [--rollback]',
    ].join('\n'),
    positionals: [
      { name: 'ACTION', required: true },
      { name: 'ID', required: false },
    ],
    flags: {
      server: { type: 'string', arg: 'URL', help: 'origin server', default: 'https://127.0.0.1:7600', check: checks.httpUrl },
      'token-file': { type: 'string', arg: 'FILE', help: 'bearer token for the server' },
      ca: { type: 'string', arg: 'PEMFILE', help: "CA the server's certificate must chain to" },
      'plain-http': { type: 'boolean', help: 'allow a plain http:// server URL' },
      channel: { type: 'string', arg: 'NAME', help: 'start: the channel whose members get the release', check: (s) => (CHANNEL_RE.test(s) ? null : `must be a channel name (letters, digits, . _ -), not ${JSON.stringify(s)}`) },
      release: { type: 'string', arg: 'ID', help: 'start: the release to roll out (printed by fleetcast publish)', check: (s) => (isReleaseId(s) ? null : `must be a release id (32 hex characters), not ${JSON.stringify(s)}`) },
      waves: { type: 'string', arg: 'LIST', help: "start: cumulative shares of the channel's members (1%,10%,100%) or LAN groups ending with * (site-a,*)", default: '100%', check: err(parseWaves) },
      'max-failures': { type: 'string', arg: 'N|N%', help: 'start: halt when a wave has more failures than this (a count, or a share of the wave)', default: '0', check: err(parseMaxFailures) },
      'wave-wait': { type: 'string', arg: 'DURATION', help: "start: open the next wave this long after the open wave's first install even if not all of it committed (90s, 30m, 2h)", check: err(parseDuration) },
      window: { type: 'string', arg: 'WINDOW', help: "start: install only inside this window, in each agent's local time (\"Mon-Fri 02:00-04:00\"; an agent's install_window overrides it)", check: err(parseWindow) },
      rollback: { type: 'boolean', help: 'abort: members already on the new release roll back too' },
      json: { type: 'boolean', help: 'print the JSON' },
    },
  },
  async run(a) {
    const [action, id] = a.positionals;
    const f = a.flags;
    const actions = ['start', 'status', 'pause', 'resume', 'abort'];
    if (!actions.includes(action)) throw usageError(rollout.spec, `unknown action ${JSON.stringify(action)} (one of ${actions.join(', ')})`);
    if (action === 'start') {
      if (id !== undefined) throw usageError(rollout.spec, 'start takes no ID: the server names the rollout');
      if (f.channel === undefined) throw usageError(rollout.spec, 'start needs --channel NAME');
      if (f.release === undefined) throw usageError(rollout.spec, 'start needs --release ID');
    } else if (action !== 'status' && id === undefined) throw usageError(rollout.spec, `${action} needs the rollout ID (see fleetcast rollout status)`);
    if (id !== undefined && !isRolloutId(id)) throw usageError(rollout.spec, `${JSON.stringify(id)} is not a rollout id (r- and 12 hex digits)`);
    if (f.rollback && action !== 'abort') throw usageError(rollout.spec, '--rollback goes only with abort');
    for (const k of ['channel', 'release', 'wave-wait', 'window'] as const) {
      if (action !== 'start' && a.cliFlags[k] !== undefined) throw usageError(rollout.spec, `--${k} goes only with start`);
    }
    const access = ServerAccess.fromFiles({ url: String(f.server), tokenFile: f['token-file'] as string | undefined, caFile: f.ca as string | undefined, plainHttp: Boolean(f['plain-http']) });
    const call = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> => {
      let res: Response;
      try {
        res = await access.fetch(path, { method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(15_000) });
      } catch (e) {
        throw new FleetcastError('UNREACHABLE', `cannot reach the server at ${f.server}: ${describeFetchError(e)}`, ExitCode.UNAVAILABLE);
      }
      const text = await res.text();
      let j: { error?: string; message?: string } = {};
      try {
        j = JSON.parse(text) as typeof j;
      } catch {
        /* below */
      }
      if (res.status === 401) throw new FleetcastError('UNAUTHORIZED', 'the server refused the token (401): give --token-file', ExitCode.NOPERM);
      if (res.status === 400) throw new FleetcastError(j.error ?? 'BAD_REQUEST', `the server refused it: ${j.message ?? text.slice(0, 200)}`, ExitCode.USAGE);
      // Unknown channel, release or rollout, or a rollout in the wrong state: bad input data, nothing changed.
      if (res.status === 404 || res.status === 409) throw new FleetcastError(j.error ?? 'REFUSED', j.message ?? text.slice(0, 200), ExitCode.DATAERR);
      if (!res.ok) throw new FleetcastError('BAD_RESPONSE', `the server answered ${res.status}: ${text.slice(0, 200)}`, ExitCode.UNAVAILABLE);
      return JSON.parse(text);
    };
    if (action === 'start') {
      const s = (await call('POST', '/v1/rollouts', {
        channel: f.channel,
        release: f.release,
        waves: f.waves,
        maxFailures: f['max-failures'],
        ...(f['wave-wait'] !== undefined ? { waveWait: f['wave-wait'] } : {}),
        ...(f.window !== undefined ? { window: f.window } : {}),
      })) as Summary;
      if (f.json) out(JSON.stringify(s));
      else {
        out(`rollout ${s.id} started: ${s.release} on channel ${s.channel} (which stays on ${s.previous} until it completes)`);
        out(`${s.members} member(s) known: ${s.waves.map((w) => `wave ${w.wave} (${w.spec}) ${w.members}`).join(', ')}`);
        out(s.id);
      }
      return ExitCode.OK;
    }
    if (action === 'status') {
      if (id) {
        const s = (await call('GET', `/v1/rollouts/${id}`)) as Summary;
        if (f.json) out(JSON.stringify(s));
        else show(s);
      } else {
        const all = (await call('GET', '/v1/rollouts')) as { rollouts: Summary[] };
        if (f.json) out(JSON.stringify(all));
        else if (all.rollouts.length === 0) out('no rollouts');
        else for (const s of all.rollouts) show(s);
      }
      return ExitCode.OK;
    }
    const s = (await call('POST', `/v1/rollouts/${id}/${action}`, action === 'abort' ? { rollback: Boolean(f.rollback) } : {})) as Summary;
    if (f.json) out(JSON.stringify(s));
    else out(`rollout ${s.id} is now ${s.state}${s.rollback ? ' (members on the new release roll back)' : ''}`);
    return ExitCode.OK;
  },
};

function show(s: Summary): void {
  out(`rollout ${s.id}: ${s.state}${s.reason ? ` (${s.reason})` : ''}`);
  out(`  release ${s.release} on channel ${s.channel}, previous ${s.previous}; max failures ${s.maxFailures}${s.window ? `, window ${s.window}` : ''}${s.waveWaitSeconds !== null ? `, wave wait ${s.waveWaitSeconds} s` : ''}`);
  const rows = [['WAVE', 'OPEN', 'MEMBERS', 'PENDING', 'STAGED', 'INSTALLED', 'COMMITTED', 'FAILED', 'ROLLED-BACK']];
  for (const w of s.waves) rows.push([`${w.wave} (${w.spec})`, w.open ? 'yes' : 'no', ...[w.members, w.pending, w.staged, w.installed, w.committed, w.failed, w.rolledBack].map(String)]);
  const width = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) out('  ' + r.map((c, i) => c.padEnd(width[i])).join('  ').trimEnd());
  if (s.failures.length) {
    out(`  failures (${s.failures.length}):`);
    for (const x of s.failures) out(`    ${x.member} (${x.group}, wave ${x.wave}, now ${x.state}): ${x.reason}`);
  }
}
