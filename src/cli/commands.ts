import { promises as fs } from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import { Agent } from '../agent/agent';
import { generateKeyPair, loadPrivateKey, loadPublicKey } from '../release/keys';
import { isReleaseId } from '../release/manifest';
import { publishRelease } from '../release/publish';
import { FleetcastServer } from '../server/server';
import { ExitCode, FleetcastError } from '../util/errors';
import { createLogger, Level } from '../util/log';
import { sdNotify } from '../util/sd-notify';
import { CommandSpec, ParsedArgs, parseHostPort, usageError } from './args';
import { formatBytes, ProgressBar } from './progress';

export interface Command {
  spec: CommandSpec;
  run(args: ParsedArgs): Promise<number>;
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
    usage: 'publish FILE --store DIR --key KEYFILE [--name NAME] [--unit-size BYTES]',
    positionals: [{ name: 'FILE', required: true }],
    flags: {
      store: { type: 'string', arg: 'DIR', help: "the server's store directory", required: true },
      key: { type: 'string', arg: 'KEYFILE', help: 'Ed25519 private key (from fleetcast keygen)', required: true },
      name: { type: 'string', arg: 'NAME', help: 'release name, also the file name on agents (default: the file name)' },
      'unit-size': { type: 'number', arg: 'BYTES', help: 'unit size in bytes', default: 1048576 },
    },
  },
  async run(a) {
    const key = await loadPrivateKey(String(a.flags.key));
    const bar = new ProgressBar('publish');
    const m = await publishRelease(a.positionals[0], String(a.flags.store), key, {
      name: a.flags.name as string | undefined,
      unitSize: a.flags['unit-size'] as number,
      onProgress: (d, t) => bar.update(d, t, formatBytes(d)),
    });
    bar.finish();
    out(`published ${m.name}: ${formatBytes(m.size)} in ${m.unitCount} units of ${formatBytes(m.unitSize)}, sha256 ${m.sha256}`);
    out(m.id);
    return ExitCode.OK;
  },
};

export const server: Command = {
  spec: {
    name: 'server',
    summary: 'Run the origin server: serves manifests and unit bytes over HTTP and allocates units to agents.',
    usage: 'server --store DIR --listen HOST:PORT',
    flags: {
      store: { type: 'string', arg: 'DIR', help: 'store directory (releases written by fleetcast publish)', required: true },
      listen: { type: 'string', arg: 'HOST:PORT', help: 'address to listen on', default: '127.0.0.1:7600' },
      'heartbeat-ms': { type: 'number', arg: 'MS', help: 'heartbeat interval asked of agents', default: 1000 },
      'log-level': { type: 'string', arg: 'LEVEL', help: 'error, warn, info or debug', default: 'info' },
    },
  },
  async run(a) {
    const { host, port } = parseHostPort(server.spec, 'listen', String(a.flags.listen));
    const hb = a.flags['heartbeat-ms'] as number;
    if (!Number.isInteger(hb) || hb < 50 || hb > 60000) throw usageError(server.spec, '--heartbeat-ms must be an integer from 50 to 60000');
    const log = createLogger({ level: logLevel(server.spec, a) });
    const s = new FleetcastServer({ storeDir: String(a.flags.store), host, port, heartbeatMs: hb, logger: log });
    let addr;
    try {
      addr = await s.start();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new FleetcastError(e.code ?? 'LISTEN', `cannot listen on ${host}:${port}: ${e.message}`, ExitCode.UNAVAILABLE);
    }
    log.info(`fleetcast server listening on ${addr.url} with ${s.store.list().length} release(s) from ${s.store.dir}`);
    sdNotify(`READY=1\nSTATUS=serving ${s.store.list().length} release(s) on ${addr.url}`);
    await waitForSignal();
    sdNotify('STOPPING=1');
    await s.stop();
    return ExitCode.OK;
  },
};

function logLevel(spec: CommandSpec, a: ParsedArgs): Level {
  const l = String(a.flags['log-level']);
  if (!['error', 'warn', 'info', 'debug'].includes(l)) throw usageError(spec, `--log-level must be error, warn, info or debug, not ${JSON.stringify(l)}`);
  return l as Level;
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

export function parseMulticast(spec: CommandSpec, s: string): { address: string; port: number } {
  const { host, port } = parseHostPort(spec, 'multicast', s);
  const v = isIP(host);
  const ok = v === 4 ? Number(host.split('.')[0]) >= 224 && Number(host.split('.')[0]) <= 239 : v === 6 && host.toLowerCase().startsWith('ff');
  if (!ok) throw usageError(spec, `--multicast ${host} is not a multicast address (224.0.0.0/4 or ff00::/8)`);
  if (port === 0) throw usageError(spec, '--multicast needs a non-zero port');
  return { address: host, port };
}

export const agent: Command = {
  spec: {
    name: 'agent',
    summary:
      'Run an agent: join the group, fetch the units leased to it over the WAN, multicast them to the LAN, take peers\' copies, repair gaps with NACKs, verify and store the release.',
    usage: 'agent --server URL --group NAME --interface NAME|ADDR --multicast ADDR:PORT --storage DIR --trust PUBFILE --release ID [--once]',
    flags: {
      server: { type: 'string', arg: 'URL', help: 'origin server, e.g. http://10.0.0.1:7600', required: true },
      group: { type: 'string', arg: 'NAME', help: 'LAN group name (agents on one multicast LAN share it)', required: true },
      interface: { type: 'string', arg: 'NAME|ADDR', help: 'LAN interface name or address', required: true },
      multicast: { type: 'string', arg: 'ADDR:PORT', help: "the group's multicast address and port", required: true },
      storage: { type: 'string', arg: 'DIR', help: 'where releases are stored', required: true },
      trust: { type: 'string', arg: 'PUBFILE[,PUBFILE]', help: 'public key(s) whose signatures are trusted', required: true },
      release: { type: 'string', arg: 'ID', help: 'release id (printed by fleetcast publish)', required: true },
      once: { type: 'boolean', help: 'exit 0 once the release is complete and verified, printing its path' },
      member: { type: 'string', arg: 'ID', help: 'member id (default: kept in STORAGE/member-id)' },
      rate: { type: 'number', arg: 'MBIT', help: 'LAN send rate limit in Mbit/s', default: 500 },
      linger: { type: 'number', arg: 'SECONDS', help: 'with --once: keep answering NACKs until the group is complete, at most this long', default: 60 },
      timeout: { type: 'number', arg: 'SECONDS', help: 'with --once: give up after this long (0 = never)', default: 0 },
      report: { type: 'string', arg: 'FILE', help: 'with --once: write a JSON report of the transfer to FILE' },
      loss: { type: 'number', arg: 'PCT', help: 'testing: drop this share of received datagrams', default: 0 },
      'fragment-bytes': { type: 'number', arg: 'BYTES', help: 'fragment payload size (default: from the interface MTU)' },
      'log-level': { type: 'string', arg: 'LEVEL', help: 'error, warn, info or debug', default: 'info' },
    },
  },
  async run(a) {
    const spec = agent.spec;
    const f = a.flags;
    const multicast = parseMulticast(spec, String(f.multicast));
    if (!isReleaseId(String(f.release))) throw usageError(spec, `--release must be a release id (32 hex characters), not ${JSON.stringify(f.release)}`);
    try {
      new URL(String(f.server));
    } catch {
      throw usageError(spec, `--server must be a URL like http://HOST:PORT, not ${JSON.stringify(f.server)}`);
    }
    if (!/^[A-Za-z0-9._:@-]{1,128}$/.test(String(f.group))) throw usageError(spec, '--group must be 1–128 letters, digits or . _ : @ -');
    if (f.member !== undefined && !/^[A-Za-z0-9._:@-]{1,128}$/.test(String(f.member))) throw usageError(spec, '--member must be 1–128 letters, digits or . _ : @ -');
    const rate = f.rate as number;
    if (!(rate > 0 && rate <= 100000)) throw usageError(spec, '--rate must be more than 0 and at most 100000 Mbit/s');
    const loss = f.loss as number;
    if (!(loss >= 0 && loss < 100)) throw usageError(spec, '--loss must be from 0 to less than 100');
    const fb = f['fragment-bytes'] as number | undefined;
    if (fb !== undefined && (!Number.isInteger(fb) || fb < 64 || fb > 65467)) throw usageError(spec, '--fragment-bytes must be an integer from 64 to 65467');
    const log = createLogger({ level: logLevel(spec, a) });
    const trustedKeys = await Promise.all(String(f.trust).split(',').map((p) => loadPublicKey(p.trim())));
    const bar = new ProgressBar('agent');
    const ag = new Agent({
      serverUrl: String(f.server),
      group: String(f.group),
      member: f.member as string | undefined,
      interface: String(f.interface),
      multicast,
      storageDir: String(f.storage),
      trustedKeys,
      releaseId: String(f.release),
      rateBytesPerSec: (rate * 1e6) / 8,
      lossPct: loss,
      fragmentBytes: fb,
      lingerMs: (f.linger as number) * 1000,
      logger: log,
      onProgress: (x) => {
        const p = x.progress;
        bar.update(p.verified, p.total, `${p.verified}/${p.total} units`);
        sdNotify(`STATUS=${p.verified}/${p.total} units verified`);
      },
    });
    let stopping = false;
    const onSignal = () => {
      if (stopping) return;
      stopping = true;
      sdNotify('STOPPING=1');
      void ag.leave().finally(() => ag.close().finally(() => process.exit(ExitCode.OK)));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const timeoutS = f.timeout as number;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      if (f.once && timeoutS > 0) {
        timer = setTimeout(() => {
          const p = ag.progress;
          reject(new FleetcastError('TIMEOUT', `gave up after ${timeoutS} s: ${p.verified} of ${p.total} units verified`, ExitCode.TEMPFAIL));
        }, timeoutS * 1000);
      }
    });
    try {
      const finalPath = await Promise.race([ag.run(), timedOut]);
      bar.finish();
      sdNotify(`READY=1\nSTATUS=complete: ${finalPath}`);
      if (!f.once) {
        log.info('serving repairs to the group; Ctrl-C to stop');
        await new Promise(() => undefined); // until a signal
      }
      await Promise.race([ag.linger(), timedOut]);
      if (f.report) await writeReport(String(f.report), ag, finalPath, true);
      await ag.close();
      out(finalPath);
      return ExitCode.OK;
    } catch (err) {
      bar.finish();
      if (f.report) await writeReport(String(f.report), ag, null, false).catch(() => undefined);
      await ag.close();
      throw err;
    } finally {
      if (timer) clearTimeout(timer);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};

async function writeReport(file: string, ag: Agent, finalPath: string | null, ok: boolean): Promise<void> {
  const report = { ok, path: finalPath, sha256: ok ? ag.manifest.sha256 : null, ...ag.stats, transportInfo: ag.transportInfo ?? null };
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await fs.writeFile(file, JSON.stringify(report, null, 2) + '\n');
}

