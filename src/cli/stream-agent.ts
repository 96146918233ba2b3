import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { dropsText } from '../agent/core/repair-flow';
import { StreamAgent } from '../agent/stream-agent';
import { streamMetrics, streamStatus } from '../agent/stream-status';
import { ExitCode } from '../util/errors';
import type { Logger } from '../util/log';
import { sdNotify, startWatchdog, statusNotifier } from '../util/sd-notify';
import { dropFilePagesAfterStart, START_FILE_PAGES_DROP_MS } from '../util/memory-tuning';
import type { CommandSpec } from './args';
import { memberOptions } from './member-flags';
import { startMetrics } from './service';

/** `--start`: live, beginning or a unit number. */
export function checkStreamStart(s: string): string | null {
  return /^(live|beginning|\d{1,15})$/.test(s) ? null : `must be live, beginning or a unit number, not ${JSON.stringify(s)}`;
}

/** How often the systemd status line is refreshed. */
const STATUS_EVERY_MS = 2000;

/**
 * `fleetcast agent --stream NAME --sink SINK`: the agent for a stream instead of a
 * release (agent/stream-agent.ts). Runs until the stream's end marker is delivered (exit
 * 0), or until SIGTERM/SIGINT (exit 0; a restart goes on from the saved position).
 */
export async function runStreamAgent(spec: CommandSpec, f: Record<string, unknown>, log: Logger, statusSocket: string | null): Promise<number> {
  const start = String(f.start ?? 'live');
  const a = new StreamAgent({
    ...(await memberOptions(f, log)),
    stream: String(f.stream),
    sink: String(f.sink),
    start: start === 'live' || start === 'beginning' ? start : Number(start),
    bufferMaxBytes: f['sink-buffer'] !== undefined ? (f['sink-buffer'] as number) * 1024 * 1024 : undefined,
    onFull: f['sink-full'] as 'block' | 'skip' | undefined,
  });
  const stopMetrics = await startMetrics(spec, f.metrics as string | undefined, () => streamMetrics(a), log);
  const status = statusSocket ? await serveStreamStatus(statusSocket, a, log) : null;
  const stopWatchdog = startWatchdog();
  const notify = statusNotifier();
  const timer = setInterval(() => {
    const s = streamStatus(a);
    if (s.stream) notify(`stream ${s.stream.name}: unit ${s.stream.nextUnit}, ${s.stream.sinkBytes} bytes delivered, ${s.stream.gaps} gaps`, true);
  }, STATUS_EVERY_MS);
  timer.unref();
  const stop = () => {
    sdNotify('STOPPING=1');
    void a.close();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  try {
    const running = a.run();
    sdNotify('READY=1');
    dropFilePagesAfterStart(START_FILE_PAGES_DROP_MS); // started: see agent-command.ts
    await running;
    const st = a.stats;
    log.info(`stream ${a.streamName}: WAN ${st.wanBytes} bytes, LAN ${st.lanBytes} bytes, ${st.nacksSent} NACKs sent, ${st.repairBytesSent} repair bytes sent, ${st.unitsRejected} units rejected`);
    const b = a.follower.counts;
    log.info(`stream ${a.streamName}: batches ${b.fromServer} from the server (${b.compact} compact), ${b.fromLan} from LAN peers, ${b.relayed} relayed, ${b.across} sent to other sites, ${b.forwarded} forwarded from other sites, ${b.fallbacks} fallbacks, ${b.refused} refused`);
    const h = a.core.aheadBuf.counts;
    if (h.held) log.info(`stream ${a.streamName}: ${h.held} LAN datagrams came before their batch: ${h.replayed} handled once it came, ${h.expired + h.full} dropped`);
    const drops = dropsText(st.drops);
    if (drops) log.info(`stream ${a.streamName}: datagrams dropped: ${drops}`);
    return ExitCode.OK;
  } finally {
    clearInterval(timer);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await a.close();
    stopWatchdog();
    stopMetrics();
    status?.close();
  }
}

/** `fleetcast status` for a stream agent: GET /status on the unix socket. */
async function serveStreamStatus(socketPath: string, a: StreamAgent, log: Logger): Promise<http.Server | null> {
  try {
    await fs.mkdir(path.dirname(socketPath), { recursive: true });
    await fs.rm(socketPath, { force: true });
    const srv = http.createServer((req, res) => {
      const body = req.url === '/status' ? JSON.stringify(streamStatus(a)) : JSON.stringify({ error: 'NOT_FOUND' });
      res.writeHead(req.url === '/status' ? 200 : 404, { 'content-type': 'application/json' });
      res.end(body);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(socketPath, resolve);
    });
    srv.unref();
    await fs.chmod(socketPath, 0o660).catch(() => undefined);
    return srv;
  } catch (err) {
    log.warn(`no status socket at ${socketPath}: ${(err as Error).message} ('fleetcast status' will not reach this agent)`);
    return null;
  }
}

