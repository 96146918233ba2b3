import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { isIP } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CHANNEL_RE } from '../release/channels';
import { generateKeyPair } from '../release/keys';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { checks, splitHostPort, usageError } from './args';
import { Command } from './command';

/**
 * `fleetcast init server DIR` and `fleetcast init device DIR NAME...`: everything TLS and
 * tokens need, in one step instead of six by hand.
 *
 * DIR (the origin's side):
 *   server.key, server.pub   release signing key (fleetcast keygen's names)
 *   ca.key, ca.pem           a self-signed CA (keep ca.key offline; agents trust ca.pem)
 *   tls.key, tls.pem         the server's certificate, signed by the CA, with every --name
 *                            as a subjectAltName (DNS or IP)
 *   tokens                   one "NAME TOKEN" line per device (the server's tokens_file),
 *                            and one for operator.token (fleetcast fleet --token-file)
 *   server.yaml              a ready config: fleetcast server --config DIR/server.yaml
 *   init.json                what `init device` needs to make more devices like these
 *   devices/NAME/            per device: agent.yaml, token, ca.pem, server.pub; copy the
 *                            folder to the box's /etc/fleetcast (or --etc)
 *
 * The certificates are made with the openssl command (node:crypto makes keys but not
 * X.509 certificates). Nothing that exists is overwritten.
 */

const INIT_FILE = 'init.json';
/** The token name of operator.token, for fleetcast fleet. */
const OPERATOR = 'operator';

interface DeviceDefaults {
  url: string;
  group: string;
  interface: string;
  multicast: string;
  storage: string;
  channel: string;
  etc: string;
}

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new FleetcastError('NO_OPENSSL', 'init needs the openssl command to make certificates: install it (apt-get install openssl), or bring your own (docs/operations.md)', ExitCode.UNAVAILABLE);
  }
  if (r.status !== 0) throw new FleetcastError('OPENSSL', `openssl ${args[0]} failed: ${(r.stderr || '').trim().split('\n').slice(-2).join(' ')}`, ExitCode.SOFTWARE);
}

/** `DNS:name` or `IP:addr` for a subjectAltName. */
const san = (n: string) => (isIP(n) ? `IP:${n}` : `DNS:${n}`);

/** The host part of a URL: IPv6 in brackets. */
const urlHost = (n: string) => (isIP(n) === 6 ? `[${n}]` : n);

async function writeNew(file: string, data: string, mode: number): Promise<void> {
  try {
    await fs.writeFile(file, data, { mode, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new FleetcastError('EEXIST', `${file} already exists; refusing to overwrite it`, ExitCode.CANTCREAT);
    throw fromSystemError(err, `writing ${file}`);
  }
}

/** A bearer token: 256 random bits, base64url (43 printable characters). */
export const newToken = (): string => randomBytes(32).toString('base64url');

function agentYaml(name: string, d: DeviceDefaults): string {
  const etc = (f: string) => path.posix.join(d.etc, f);
  return [
    `# /etc/fleetcast/agent.yaml for ${name}, made by fleetcast init. Every key is a flag of`,
    '# `fleetcast agent --help`; `fleetcast config check` checks the file, the files it names and the interface.',
    `server: ${d.url}`,
    `# The member id: the same name as this device's line in the server's tokens file.`,
    `member: ${name}`,
    `group: ${d.group}`,
    `interface: ${d.interface}`,
    `multicast: ${d.multicast}`,
    `storage: ${d.storage}`,
    'trust:',
    `  - ${etc('server.pub')}`,
    `ca: ${etc('ca.pem')}`,
    `token_file: ${etc('token')}`,
    `channel: ${d.channel}`,
    '',
  ].join('\n');
}

async function readTokens(file: string): Promise<Map<string, string>> {
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? '' : Promise.reject(fromSystemError(err, `reading ${file}`))));
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z0-9._@-]{1,64})\s+(\S+)\s*$/.exec(line);
    if (m && !line.trim().startsWith('#')) out.set(m[1], m[2]);
  }
  return out;
}

/** Tokens and per-device folders for `names`; refuses a name the tokens file already has. */
async function addDevices(dir: string, names: string[], d: DeviceDefaults): Promise<string[]> {
  const tokensFile = path.join(dir, 'tokens');
  const have = await readTokens(tokensFile);
  const dup = names.find((n, i) => have.has(n) || n === OPERATOR || names.indexOf(n) !== i);
  if (dup) throw new FleetcastError('EEXIST', `device ${dup} already has a token in ${tokensFile}; pick another name (or remove its line to replace it)`, ExitCode.CANTCREAT);
  const made: string[] = [];
  const ca = await fs.readFile(path.join(dir, 'ca.pem'), 'utf8').catch((err) => Promise.reject(fromSystemError(err, `reading ${path.join(dir, 'ca.pem')} (run fleetcast init server ${dir} first)`)));
  const pub = await fs.readFile(path.join(dir, 'server.pub'), 'utf8').catch((err) => Promise.reject(fromSystemError(err, `reading ${path.join(dir, 'server.pub')}`)));
  let lines = '';
  for (const name of names) {
    const token = newToken();
    const dev = path.join(dir, 'devices', name);
    await fs.mkdir(dev, { recursive: true, mode: 0o700 }).catch((err) => Promise.reject(fromSystemError(err, `creating ${dev}`)));
    await writeNew(path.join(dev, 'token'), token + '\n', 0o600);
    await writeNew(path.join(dev, 'ca.pem'), ca, 0o644);
    await writeNew(path.join(dev, 'server.pub'), pub, 0o644);
    await writeNew(path.join(dev, 'agent.yaml'), agentYaml(name, d), 0o644);
    lines += `${name} ${token}\n`;
    made.push(dev);
  }
  try {
    await fs.appendFile(tokensFile, lines, { mode: 0o600 });
  } catch (err) {
    throw fromSystemError(err, `writing ${tokensFile}`);
  }
  return made;
}

const deviceFlags = {
  group: { type: 'string', arg: 'NAME', help: "the devices' LAN group", default: 'site-a', check: checks.name },
  interface: { type: 'string', arg: 'NAME', help: "the devices' LAN interface", default: 'eth0', check: checks.nonEmpty },
  multicast: { type: 'string', arg: 'ADDR:PORT', help: "the group's multicast address and port", default: '239.192.0.1:7601', check: checks.multicast },
  storage: { type: 'string', arg: 'DIR', help: 'where the devices keep releases', default: '/var/lib/fleetcast' },
  channel: { type: 'string', arg: 'NAME', help: 'the channel the devices follow', default: 'stable', check: (v: string) => (CHANNEL_RE.test(v) ? null : `must be 1–64 letters, digits or . _ -, not ${JSON.stringify(v)}`) },
  etc: { type: 'string', arg: 'DIR', help: "where the device's folder will be on the box (agent.yaml names its files there)", default: '/etc/fleetcast' },
} as const;

export const init: Command = {
  spec: {
    name: 'init',
    summary:
      "Make what a TLS fleet with per-device tokens needs. 'init server DIR': a release signing key, a self-signed CA and a server certificate for every --name, a tokens file, server.yaml, and for each of --devices an agent.yaml with ca and token_file. 'init device DIR NAME...': more devices later.",
    usage: 'init server DIR [--name HOST[,HOST]] [--devices NAME[,NAME]] [--listen HOST:PORT] | init device DIR NAME...',
    positionals: [
      { name: 'WHAT', required: true },
      { name: 'DIR', required: true },
      ...Array.from({ length: 64 }, () => ({ name: 'NAME', required: false })),
    ],
    flags: {
      name: { type: 'list', arg: 'HOST[,HOST]', help: "names agents reach the server by: DNS names or IP addresses, all in the certificate's subjectAltName; the first goes into the agents' server URL (default: this host's name)" },
      devices: { type: 'list', arg: 'NAME[,NAME]', help: 'init server: devices to make a token and an agent.yaml for', check: checks.name },
      listen: { type: 'string', arg: 'HOST:PORT', help: "the server's listen address; its port goes into the agents' URL", default: '0.0.0.0:7600', check: checks.hostPort },
      store: { type: 'string', arg: 'DIR', help: "the server's store (default: DIR/store)" },
      days: { type: 'number', arg: 'N', help: 'validity of the CA and server certificate in days', default: 825, integer: true, min: 1, max: 36500 },
      ...deviceFlags,
    },
  },
  async run(a) {
    const [what, dirArg, ...names] = a.positionals;
    const dir = path.resolve(dirArg);
    const f = a.flags;
    if (what === 'device') {
      if (names.length === 0) throw usageError(init.spec, 'init device needs at least one device NAME');
      for (const n of names) {
        const p = checks.name(n);
        if (p) throw usageError(init.spec, `device name ${p}`);
      }
      const saved = await fs.readFile(path.join(dir, INIT_FILE), 'utf8').then(
        (t) => JSON.parse(t) as DeviceDefaults,
        (err) => Promise.reject(fromSystemError(err, `reading ${path.join(dir, INIT_FILE)} (run fleetcast init server ${dirArg} first)`)),
      );
      // Flags given now override what init server recorded.
      const d: DeviceDefaults = { ...saved };
      for (const k of Object.keys(deviceFlags) as (keyof typeof deviceFlags)[]) if (a.cliFlags[k] !== undefined) d[k] = String(f[k]);
      for (const dev of await addDevices(dir, names, d)) process.stdout.write(`device: ${dev}/ (copy to ${d.etc} on the box)\n`);
      process.stdout.write(`tokens added to ${path.join(dir, 'tokens')}: reload the server (systemctl reload fleetcast-server) to let them in\n`);
      return ExitCode.OK;
    }
    if (what !== 'server') throw usageError(init.spec, `unknown ${JSON.stringify(what)}: init server DIR, or init device DIR NAME...`);
    if (names.length) throw usageError(init.spec, `unexpected argument ${JSON.stringify(names[0])} (devices go in --devices)`);
    const hostNames = (f.name as string[] | undefined) ?? [os.hostname()];
    for (const n of hostNames) if (!/^[A-Za-z0-9.:-]{1,253}$/.test(n)) throw usageError(init.spec, `--name ${JSON.stringify(n)} is neither a DNS name nor an IP address`);
    const { port } = splitHostPort(String(f.listen)) as { host: string; port: number };
    const devices = (f.devices as string[] | undefined) ?? [];

    await fs.mkdir(dir, { recursive: true }).catch((err) => Promise.reject(fromSystemError(err, `creating ${dir}`)));
    for (const existing of ['server.yaml', 'tokens', 'ca.pem', 'tls.pem', 'server.key']) {
      if (await fs.stat(path.join(dir, existing)).then(() => true, () => false)) throw new FleetcastError('EEXIST', `${path.join(dir, existing)} already exists; refusing to overwrite (use an empty DIR, or init device to add devices)`, ExitCode.CANTCREAT);
    }
    await generateKeyPair(dir);
    const days = String(f.days);
    const cn = hostNames[0];
    // The CA: constrained to signing certificates.
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', days, '-subj', `/CN=fleetcast CA for ${cn}`, '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
    // The server's certificate, every name in its subjectAltName (clients match only those).
    await writeNew(path.join(dir, 'tls.ext'), `subjectAltName=${hostNames.map(san).join(',')}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`, 0o644);
    openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'tls.key', '-out', 'tls.csr', '-subj', `/CN=${cn}`], dir);
    openssl(['x509', '-req', '-in', 'tls.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', `0x${randomBytes(16).toString('hex')}`, '-out', 'tls.pem', '-days', days, '-extfile', 'tls.ext'], dir);
    await fs.rm(path.join(dir, 'tls.csr'), { force: true });
    await fs.rm(path.join(dir, 'tls.ext'), { force: true });
    await fs.chmod(path.join(dir, 'ca.key'), 0o600);
    await fs.chmod(path.join(dir, 'tls.key'), 0o600);

    const store = f.store ? path.resolve(String(f.store)) : path.join(dir, 'store');
    await writeNew(
      path.join(dir, 'server.yaml'),
      [
        `# fleetcast server --config ${path.join(dir, 'server.yaml')}: made by fleetcast init.`,
        `store: ${store}`,
        'create: true',
        `listen: ${f.listen}`,
        `tls_cert: ${path.join(dir, 'tls.pem')}`,
        `tls_key: ${path.join(dir, 'tls.key')}`,
        '# One "NAME TOKEN" line per device; add devices with fleetcast init device, then reload.',
        `tokens_file: ${path.join(dir, 'tokens')}`,
        '',
      ].join('\n'),
      0o644,
    );
    // The operator's own token (fleetcast fleet), apart from every device's.
    const operatorToken = newToken();
    await writeNew(path.join(dir, 'operator.token'), operatorToken + '\n', 0o600);
    await writeNew(path.join(dir, 'tokens'), `# NAME TOKEN: one line per device (fleetcast init device adds more)\n${OPERATOR} ${operatorToken}\n`, 0o600);
    const d: DeviceDefaults = {
      url: `https://${urlHost(hostNames[0])}:${port}`,
      group: String(f.group),
      interface: String(f.interface),
      multicast: String(f.multicast),
      storage: String(f.storage),
      channel: String(f.channel),
      etc: String(f.etc),
    };
    await writeNew(path.join(dir, INIT_FILE), JSON.stringify(d, null, 2) + '\n', 0o644);
    const made = await addDevices(dir, devices, d);
    const o = (s: string) => process.stdout.write(s + '\n');
    o(`signing key:  ${path.join(dir, 'server.key')} (keep; publish --key), ${path.join(dir, 'server.pub')} (agents' trust)`);
    o(`CA:           ${path.join(dir, 'ca.pem')} (agents' ca), ${path.join(dir, 'ca.key')} (keep offline)`);
    o(`server cert:  ${path.join(dir, 'tls.pem')} for ${hostNames.join(', ')}`);
    o(`tokens:       ${path.join(dir, 'tokens')} (${devices.length} device(s)); ${path.join(dir, 'operator.token')} for fleetcast fleet`);
    o(`server:       fleetcast server --config ${path.join(dir, 'server.yaml')}`);
    for (const dev of made) o(`device:       ${dev}/ (copy to ${d.etc} on the box)`);
    return ExitCode.OK;
  },
};
