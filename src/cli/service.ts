import { loadConfigFile } from '../config/config';
import { ExitCode, FleetcastError } from '../util/errors';
import { Logger } from '../util/log';
import { serveMetrics } from '../util/metrics';
import { sdNotify } from '../util/sd-notify';
import { checks, CommandSpec, FlagValue, resolveFlags, splitHostPort } from './args';

/**
 * What the long-running commands (server, agent) share: the --config, --log-level and
 * --metrics options, the metrics listener, SIGHUP reloads and waiting for a signal.
 */
export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export const configFlag = { type: 'string', arg: 'FILE', help: 'YAML config file (see systemd/*.yaml.example)', cliOnly: true } as const;
export const logLevelFlag = { type: 'string', arg: 'LEVEL', help: 'error, warn, info or debug', default: 'info', choices: LOG_LEVELS, reload: true } as const;
export const metricsFlag = { type: 'string', arg: 'HOST:PORT', help: 'serve Prometheus metrics at http://HOST:PORT/metrics', check: checks.hostPort } as const;

export async function startMetrics(spec: CommandSpec, addr: string | undefined, render: () => string, log: Logger): Promise<() => void> {
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
export function onReload(
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

export function waitForSignal(): Promise<NodeJS.Signals> {
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
