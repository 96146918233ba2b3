import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Agent } from '../agent/agent';
import { AgentDaemon } from '../agent/daemon';
import { IgmpQuerier } from '../net/igmp';
import { resolveInterface } from '../net/interface';
import { isReleaseId } from '../release/manifest';
import { ExitCode, FleetcastError } from '../util/errors';
import { createLogger, Level, Logger } from '../util/log';
import { sdNotify, startWatchdog, statusNotifier } from '../util/sd-notify';
import { dropFilePagesAfterStart, START_FILE_PAGES_DROP_MS } from '../util/memory-tuning';
import { parseWindow } from '../wire/rollout';
import { checks } from './args';
import { channelCheck, Command, out } from './command';
import { memberOptions } from './member-flags';
import { ProgressBar, RateMeter, transferLine, verifiedBytes } from './progress';
import { checkStreamStart, runStreamAgent } from './stream-agent';
import { checkSinkSpec } from '../agent/stream-sink';
import { configFlag, logLevelFlag, metricsFlag, onReload, startMetrics } from './service';

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
    usage: 'agent [--config FILE] --server URL --group NAME --interface NAME|ADDR --multicast ADDR:PORT --storage DIR --trust PUBFILE (--release ID | --channel NAME | --stream NAME --sink FILE|-|unix:PATH|exec:CMD [--start live|beginning|UNIT]) [--once]',
    flags: {
      config: configFlag,
      server: { type: 'list', arg: 'URL[,URL]', help: 'origin server, e.g. https://origin.example:7600; several coordinators of one fleet as a list (or --server again): the next is tried when one fails', required: true, check: checks.httpUrl },
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
      stream: { type: 'string', arg: 'NAME', help: 'take this live stream instead of a release, delivering its bytes to --sink in order (docs/streams.md); exits 0 after its end marker', check: checks.name },
      sink: { type: 'string', arg: 'FILE|-|unix:PATH|exec:CMD', help: "with --stream: where the stream's bytes go", check: checkSinkSpec },
      start: { type: 'string', arg: 'live|beginning|UNIT', help: 'with --stream: where a first run starts (a restart goes on from its saved position)', default: 'live', check: checkStreamStart },
      'sink-buffer': { type: 'number', arg: 'MIB', help: 'with --stream: verified bytes buffered on disk for a slow sink', default: 256, min: 1, max: 1048576 },
      'sink-full': { type: 'string', arg: 'block|skip', help: 'with --stream: past --sink-buffer, take no more leases and let the sink catch up (block), or skip the oldest units with a gap marker (skip)', default: 'block', check: (s) => (s === 'block' || s === 'skip' ? null : `must be block or skip, not ${JSON.stringify(s)}`) },
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
      if ((f.server as string[]).some((u) => u.startsWith('http:')) && !f['plain-http']) return { flag: 'server', problem: 'is plain HTTP: use https://, or set plain_http: true (--plain-http) on purpose' };
      if (f.token !== undefined && f['token-file'] !== undefined) return { flag: 'token', problem: 'and token_file are both set: give one' };
      if (f.stream !== undefined) return f.release !== undefined || f.channel !== undefined ? { flag: 'stream', problem: 'is set with release or channel: an agent takes a stream or a release' } : f.sink === undefined ? { flag: 'sink', problem: 'is required with stream: where its bytes go' } : null;
      if (f.release !== undefined && f.channel !== undefined) return { flag: 'channel', problem: 'and release are both set: follow a channel or stay on one release, not both' };
      if (f.release === undefined && f.channel === undefined) return { flag: 'release', problem: 'or channel is required: which release to fetch' };
      return null;
    },
  },
  async run(a) {
    const f = a.flags;
    const log = createLogger({ level: f['log-level'] as Level });
    const sock = f['status-socket'] as string | undefined;
    if (f.stream !== undefined) return runStreamAgent(agent.spec, f, log, sock === undefined ? defaultStatusSocket() : sock === 'none' || sock === '' ? null : sock);
    const bar = new ProgressBar('agent');
    const meter = new RateMeter();
    const notifyStatus = statusNotifier();
    let barRelease: string | null = null;
    const daemon = new AgentDaemon({
      agent: {
        ...(await memberOptions(f, log)),
        crossRateBytesPerSec: ((f['cross-rate'] as number) * 1e6) / 8,
        wanRateBytesPerSec: f['wan-rate'] ? ((f['wan-rate'] as number) * 1e6) / 8 : undefined,
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
    // Started: what starting touched of node's files leaves the resident set soon, not only
    // once a transfer's data path first checks (an idle follower may wait for days).
    dropFilePagesAfterStart(START_FILE_PAGES_DROP_MS);
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
  // crossPaths as they stand when the report is written (the linger after completion still sends).
  const report = { ok, path: finalPath, sha256: ok ? ag.manifest.sha256 : null, ...ag.stats, crossPaths: ag.crossPaths(), transportInfo: ag.transportInfo ?? null };
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await fs.writeFile(file, JSON.stringify(report, null, 2) + '\n');
}
